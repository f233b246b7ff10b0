"""A fixed piece of work, timed when a benchmark starts and ends: how fast the machine is.

The machines this project is measured on are shared, and their speed drifts by the hour.
On 2026-11-21 the same code ran every stage of `make bench` about 40% slower in one hour
than in the next, and the API's p95 went from 45 ms to 67 ms; without a measure of the
hour, that reads as a slow change. So both benchmarks time this same work before they
start and after they finish, and report it beside their figures: two runs compare only
when their probes agree (or scaled by them), and a probe that differs between start and
end says the run's own figures straddle a change of speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

ROUNDS = 3


def _python() -> None:
    """Interpreter work like the pipeline's own Python and Dagster's: dicts, strings, calls."""
    seen: dict[str, int] = {}
    for i in range(1_200_000):
        key = f"k{i % 5_000}"
        seen[key] = seen.get(key, 0) + len(key)


def _native() -> None:
    """Columnar work like the DuckDB and Polars stages: a sort and a group-by, threaded."""
    import polars as pl  # here, so that importing this module (every benchmark child) is free

    frame = pl.DataFrame({"k": pl.int_range(0, 8_000_000, eager=True) * 7_919 % 100_003})
    frame.sort("k").group_by("k").len()


def _best(work: Callable[[], None]) -> float:
    """Best of ``ROUNDS``: the machine's speed, not a passing interruption."""
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return round(min(times), 3)


def probe() -> dict[str, float]:
    """Seconds for the fixed work: ``python_s`` (the interpreter) and ``native_s``
    (Polars on every core). Smaller is faster; about a second in all."""
    return {"python_s": _best(_python), "native_s": _best(_native)}


def describe(start: dict[str, float], end: dict[str, float] | None = None) -> str:
    """One line for a benchmark's report."""

    def seconds(probed: dict[str, float]) -> str:
        return f"python {probed['python_s']:.3f} s, native {probed['native_s']:.3f} s"

    text = f"machine probe (fixed work, best of {ROUNDS}): at start {seconds(start)}"
    return text if end is None else f"{text}; at end {seconds(end)}"
