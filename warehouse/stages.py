"""Wall time and peak memory per named stage of one job.

A nightly job (linkage, the Family View build) runs several stages in one process, so the
process's own peak memory cannot say which stage needed it. On Linux the kernel's
high-water mark (``VmHWM``) can be reset to the current resident size by writing ``5`` to
``/proc/self/clear_refs``; resetting it as a stage starts and reading it as the stage ends
gives that stage's own peak. Elsewhere (or where the file cannot be written) only seconds
are recorded and peaks are ``None``.

Resetting the mark lowers what the process later reports as its maximum resident size
(``getrusage``, ``wait4``), so the highest mark seen before any reset is kept and
:func:`process_peak_mib` gives the true peak for the whole process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_seen_peak_kib = 0  # highest VmHWM read in this process before any reset


def _hwm_kib() -> int | None:
    """The process's resident high-water mark in KiB, or None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Start a new high-water mark at the current resident size; False if not possible."""
    global _seen_peak_kib
    before = _hwm_kib()
    if before is None:
        return False
    _seen_peak_kib = max(_seen_peak_kib, before)
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def process_peak_mib() -> float | None:
    """This process's peak resident memory so far (MiB), counting marks reset by stages."""
    now = _hwm_kib()
    if now is None:
        return None
    return round(max(_seen_peak_kib, now) / 1024, 1)


class StageClock:
    """Records ``seconds[name]`` and ``peak_mib[name]`` for each ``with clock.stage(name)``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_mib: dict[str, float | None] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        can_reset = _reset_hwm()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            peak = _hwm_kib() if can_reset else None
            if peak is not None:
                previous = self.peak_mib.get(name) or 0.0
                self.peak_mib[name] = max(previous, round(peak / 1024, 1))
            else:
                self.peak_mib.setdefault(name, None)

    def rounded_seconds(self) -> dict[str, float]:
        # Milliseconds: a stage of a small run can take less than a hundredth of a second.
        return {name: round(value, 3) for name, value in self.seconds.items()}
