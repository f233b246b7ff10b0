"""The API load generator (``benchmarks.api_load``) against a real HTTP server.

The API benchmark's figures are only as good as the generator's count: every request it
reports must have reached the server (and been audited there), and a refused token or a
server that is not there must stop it with a readable reason instead of a table of errors.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from benchmarks import api_load, calibrate
from pipelines.serve_cli import app_from_settings
from pipelines.settings import Settings
from warehouse import audit
from warehouse.sources import DEFAULT_CONFIG_DIR

TOKEN = "demo-social-worker-token"  # config/api_users.yaml: a social worker sees everyone
PREFIX = "/family-view"  # the API mounted under a path, as behind a reverse proxy


class Served:
    def __init__(self, county, api: Any, url: str) -> None:
        self.county = county
        self.api = api
        self.url = url

    def audited(self) -> int:
        return audit.head(self.county.engine())[0]

    def load(self, *args: str, url: str | None = None) -> int:
        return api_load.main(
            [
                "--url",
                url or self.url,
                "--data-dir",
                str(self.county.data),
                "--timeout",
                "30",
                *args,
            ]
        )


@contextmanager
def _serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free port, in a thread; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(published_county, tmp_path_factory, monkeypatch_module) -> Iterator[Served]:
    """The API over a copy of the published county (requests are audited into its store)."""
    county = published_county.copy(tmp_path_factory.mktemp("api_load") / "county")
    monkeypatch_module.delenv("SDV_API_USERS", raising=False)
    api = app_from_settings(
        Settings(
            data_dir=county.data,
            landing=county.data / "landing",
            warehouse=county.warehouse,
            config_dir=DEFAULT_CONFIG_DIR,
        )
    )
    with _serving(api) as url:
        yield Served(county, api, url)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_every_request_reported_reached_the_server_and_was_answered(
    served: Served, tmp_path: Path, capsys
):
    before = served.audited()
    out = tmp_path / "report.json"
    code = served.load(
        "--token", TOKEN, "--clients", "3", "--requests", "45", "--warmup", "0",
        "--sample", "20", "--out", str(out),
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    report = json.loads(out.read_text())
    overall = report["overall"]
    assert overall["requests"] == 45
    assert overall["errors"] == 0
    assert overall["statuses"] == {"200": 45}
    assert set(report["endpoints"]) == set(api_load.ENDPOINTS)
    assert sum(e["requests"] for e in report["endpoints"].values()) == 45
    assert 0 < overall["p50_ms"] <= overall["p95_ms"] <= overall["p99_ms"] <= overall["max_ms"]
    # The 45 measured requests and the two probes (/health is not audited: it reads nothing).
    assert served.audited() - before == 45 + 1
    # The machine's speed, before and after, beside the figures it qualifies.
    for when in ("start", "end"):
        probed = report[f"machine_probe_at_{when}"]
        assert probed["python_s"] > 0 and probed["native_s"] > 0
    printed = capsys.readouterr().out
    assert "overall" in printed
    assert calibrate.describe(report["machine_probe_at_start"], report["machine_probe_at_end"]) in (
        printed
    )


def test_an_api_served_under_a_path_is_loaded_there(served: Served, tmp_path: Path):
    out = tmp_path / "report.json"
    with _serving(Starlette(routes=[Mount(PREFIX, app=served.api)])) as url:
        code = served.load(
            "--token", TOKEN, "--clients", "2", "--requests", "9", "--warmup", "0",
            "--sample", "5", "--out", str(out), url=url + PREFIX,
        )  # fmt: skip
    assert code == 0
    assert json.loads(out.read_text())["overall"]["statuses"] == {"200": 9}


def test_a_refused_token_stops_the_run_before_any_load(served: Served, capsys):
    before = served.audited()
    code = served.load("--token", "not-a-token", "--requests", "30", "--warmup", "0")
    assert code == 1
    assert "the token is refused: 401" in capsys.readouterr().err
    assert served.audited() - before == 1  # the refused probe, and nothing after it


def test_a_server_that_is_not_there_is_named(published_county, capsys):
    code = api_load.main(
        [
            "--url", "http://127.0.0.1:9", "--token", TOKEN,
            "--data-dir", str(published_county.data), "--timeout", "5",
        ]
    )  # fmt: skip
    assert code == 1
    assert "the API at http://127.0.0.1:9 is not answering" in capsys.readouterr().err


def test_errors_are_counted_not_hidden(served: Served, tmp_path: Path, capsys):
    """People outside the caller's scope answer 404: each is an error, and the run's exit
    status says so (2), so a benchmark under the wrong role cannot pass for a fast one."""
    out = tmp_path / "report.json"
    code = served.load(
        "--token", "demo-school-dsl-token", "--clients", "2", "--requests", "12", "--warmup", "0",
        "--sample", "5", "--mix", "child=1", "--out", str(out),
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert code == 2, capsys.readouterr()
    assert report["overall"]["requests"] == 12
    statuses = report["overall"]["statuses"]
    assert report["overall"]["errors"] == 12 - statuses.get("200", 0) > 0
    assert set(statuses) <= {"200", "404"}
