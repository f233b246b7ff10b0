"""The pipeline benchmark (``make bench``) still runs end to end, on a tiny county.

It runs every job in child processes through the real code paths, so this is the test that
notices when a job's metadata or the ``sdv`` plumbing it relies on changes under it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks.pipeline import NIGHTS, STAGES, main
from warehouse.stages import StageClock, process_peak_mib


def test_stage_clock_records_seconds_and_own_peak_per_stage():
    clock = StageClock()
    with clock.stage("big"):
        block = bytearray(64 * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
        del block
    with clock.stage("small"):
        sum(range(1000))
    assert set(clock.seconds) == {"big", "small"}
    assert all(v >= 0 for v in clock.seconds.values())
    if sys.platform.startswith("linux") and clock.peak_mib["big"] is not None:
        # each stage's peak is its own: the 64 MiB block counts in "big" only
        assert clock.peak_mib["big"] - clock.peak_mib["small"] > 48
        assert process_peak_mib() >= clock.peak_mib["big"]


def test_benchmark_runs_both_nights_on_a_tiny_county(tmp_path: Path, capsys):
    assert main(["--sizes", "30", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "pipeline.json").read_text())
    (size,) = report["sizes"]
    assert size["households"] == 30
    for night in NIGHTS:
        stages = size[night]["stages"]
        assert list(stages) == list(STAGES)
        for name, stage in stages.items():
            assert stage["wall_seconds"] > 0, (night, name)
            assert stage["rows"] > 0 and stage["rows_per_second"] > 0, (night, name)
            assert stage["peak_rss_mib"] > 0, (night, name)
        assert size[night]["total_wall_seconds"] == pytest.approx(
            sum(s["wall_seconds"] for s in stages.values()), abs=0.1
        )
        assert size[night]["max_peak_rss_mib"] >= max(s["peak_rss_mib"] for s in stages.values())
    # the second night re-scores only what the second delivery changed
    assert 0 < size["night_2"]["changed_records_scored"] < size["night_2"]["person_level_rows"]
    assert size["train"]["wall_seconds"] > 0 and size["generate"]["wall_seconds"] > 0
    assert size["second_night_ratio"] > 0
    assert "second_night_under_quarter" in report["targets"]
    assert len(report["load_average_at_start"]) == 3
    assert not (tmp_path / "work" / "30").exists()  # data removed without --keep
    assert "TOTAL" in capsys.readouterr().out
