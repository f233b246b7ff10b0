# Two commands on a fresh machine with only Python 3.11+ and make:
#   make demo   set up, generate a 5,000-household synthetic county, load it nightly-style
#               (make demo HOUSEHOLDS=20000 for a larger county)
#   make test   set up and run the whole test suite
#   make bench  time the nightly load at 5,000, 20,000 and 100,000 households into bench/
#               (make bench SIZES=5000 for one size)
PYTHON ?= python3
HOUSEHOLDS ?= 5000
SIZES ?= 5000,20000,100000
BENCH_OUT ?= bench
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
STAMP := $(VENV)/.synced
BENCH_STAMP := $(VENV)/.synced-bench
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON := $(shell command -v $(PYTHON))
export UV_NO_PROGRESS := 1
# Install dependencies compiled to bytecode: each job process then starts in about half
# the time (importing Dagster, Splink and Polars from source took ~2 s of every job).
export UV_COMPILE_BYTECODE := 1

.PHONY: setup demo test lint format dev check-defs clean bench

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# Install exactly what uv.lock pins (fails if the lockfile is stale), with the `spark`
# extra (pyspark) so linkage on Spark is tested too; Spark also needs Java 17+.
$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --extra spark
	@touch $(STAMP)

setup: $(STAMP)

# The benchmark's chart needs matplotlib (the "bench" dependency group), nothing else does.
# The spark extra stays: `uv sync` removes what it is not asked for, and `make test` needs it.
$(BENCH_STAMP): $(STAMP)
	$(UV) sync --frozen --extra spark --group bench
	@touch $(BENCH_STAMP)

demo: $(STAMP)
	$(VENV)/bin/sdv demo --data-dir data --households $(HOUSEHOLDS)

# The project's own modules are compiled up front too, as they would be in a deployment.
bench: $(BENCH_STAMP)
	$(VENV)/bin/python -m compileall -q assets matching warehouse pipelines api synth benchmarks
	$(VENV)/bin/python -m benchmarks.pipeline --sizes $(SIZES) --out $(BENCH_OUT)

test: $(STAMP)
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

check-defs: $(STAMP)
	SDV_DATA_DIR=data $(VENV)/bin/dg check defs

dev: $(STAMP)
	$(VENV)/bin/sdv dev --data-dir data

clean:
	rm -rf data .pytest_cache
