"""The pipeline benchmark (``make bench``) still runs end to end, on a tiny county.

The jobs run through the real code paths (``sdv load``'s ingest, the Dagster
``link_and_publish`` job), so this notices when a job's metadata or the plumbing the
benchmark relies on changes under it. To stay quick the three nights run their jobs in
this process (eight fresh interpreters importing Dagster would cost more than the jobs
themselves); one job runs as a real child process to cover ``os.wait4`` and the peak
memory it reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from benchmarks import calibrate, pipeline
from benchmarks.pipeline import (
    LINK_STAGES,
    LINK_WRITE_STAGES,
    NIGHTS,
    STAGES,
    Measured,
    child_argv,
    child_main,
    main,
    redelivery,
    run_child,
)
from warehouse.sources import DEFAULT_CONFIG_DIR
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
    if not _can_reset_peak():
        assert clock.peak_mib == {"big": None, "small": None}
        pytest.skip("no writable /proc/self/clear_refs here: stages record no peak")
    # each stage's peak is its own: the 64 MiB block counts in "big" only
    assert clock.peak_mib["big"] is not None and clock.peak_mib["small"] is not None
    assert clock.peak_mib["big"] - clock.peak_mib["small"] > 48
    assert process_peak_mib() >= clock.peak_mib["big"]


def _can_reset_peak() -> bool:
    """Whether a process here may reset its memory high-water mark (Linux, and a
    /proc/self/clear_refs it can write): tried in a child, so this process's mark stays."""
    if not sys.platform.startswith("linux"):
        return False
    tried = subprocess.run(
        [sys.executable, "-c", "open('/proc/self/clear_refs', 'w').write('5')"],
        capture_output=True,
        check=False,
    )
    return tried.returncode == 0


def test_a_child_job_reports_its_own_time_and_peak_memory(tmp_path: Path):
    measured = run_child(
        "generate",
        tmp_path / "logs",
        "generate",
        county=tmp_path / "county",
        households=5,
        seed=1,
        extract_date="2026-11-20",
    )
    assert measured.wall_seconds > 0 and measured.cpu_seconds > 0
    assert measured.peak_mib > 10  # an interpreter with polars loaded, at least
    assert measured.result["extract_dates"] == ["2026-11-19", "2026-11-20"]
    assert len(measured.load_before) == 3


def _in_process(job: str, log_dir: Path, label: str, **options: Any) -> Measured:
    """``run_child`` without the child process: same arguments, same result file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    result_file = log_dir / f"{label}.result.json"
    started, cpu = time.perf_counter(), time.process_time()
    child_main(child_argv(job, result_file, options))
    result = json.loads(result_file.read_text())
    return Measured(
        job=job,
        wall_seconds=round(time.perf_counter() - started, 3),
        cpu_seconds=round(time.process_time() - cpu, 3),
        peak_mib=result["process_peak_mib"] or 1.0,
        load_before=[0.0, 0.0, 0.0],
        load_after=[0.0, 0.0, 0.0],
        result=result,
    )


def test_benchmark_runs_its_three_nights_on_a_tiny_county(tmp_path: Path, capsys, monkeypatch):
    # The jobs point Dagster and the settings at their data directory through the
    # environment: let monkeypatch put it back afterwards.
    for name in ("SDV_DATA_DIR", "SDV_LANDING", "SDV_WAREHOUSE"):
        monkeypatch.setenv(name, str(tmp_path / "unused"))
    # The real configuration, wherever settings are read from the environment (the code
    # location's lazy ``defs``, and anything else that asks for Settings.from_env()).
    monkeypatch.setenv("SDV_CONFIG_DIR", str(DEFAULT_CONFIG_DIR))
    monkeypatch.setenv("SDV_OPERATIONAL_URL", "")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    monkeypatch.delenv("SDV_TRUTH_DIR", raising=False)
    monkeypatch.setattr(pipeline, "run_child", _in_process)
    assert main(["--sizes", "30", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "pipeline.json").read_text())
    (size,) = report["sizes"]
    assert size["households"] == 30
    for night in NIGHTS:
        stages = size[night]["stages"]
        assert list(stages) == list(STAGES)
        for name, stage in stages.items():
            # Seconds are rounded to milliseconds: a tiny county's stage may show 0.
            assert stage["wall_seconds"] >= 0, (night, name)
            assert stage["rows"] > 0, (night, name)
            assert stage["rows_per_second"] is None or stage["rows_per_second"] > 0
            assert stage["peak_rss_mib"] > 0, (night, name)
        # The linkage and Family View stages report what the runs recorded for them.
        recorded = size[night]["linkage_recorded_seconds"]
        for name in LINK_STAGES:
            assert stages[name]["wall_seconds"] == pytest.approx(recorded[name], abs=1e-3)
        assert stages["link_write"]["wall_seconds"] == pytest.approx(
            sum(recorded[n] for n in LINK_WRITE_STAGES), abs=1e-3
        )
        curate = size[night]["family_view_recorded_seconds"]["curate"]
        assert stages["curate"]["wall_seconds"] == pytest.approx(curate, abs=1e-3)
        assert size[night]["total_wall_seconds"] == pytest.approx(
            sum(s["wall_seconds"] for s in stages.values()), abs=0.1
        )
        assert size[night]["max_peak_rss_mib"] >= max(s["peak_rss_mib"] for s in stages.values())
        # the retention run between the two jobs, timed apart from the night's total
        retention = size[night]["retention"]
        assert retention["job"] == "retention" and retention["wall_seconds"] > 0
        assert retention["result"]["rows_destroyed"] == 0  # a fresh county: nothing expired
    # the second night re-scores only what the second delivery changed; the third (the
    # same files again, the next day) is loaded as a delivery of its own and re-scores none
    assert 0 < size["night_2"]["changed_records_scored"] < size["night_2"]["person_level_rows"]
    assert size["night_3"]["changed_records_scored"] == 0
    assert size["night_3"]["rows_delivered"] == size["night_2"]["rows_delivered"]
    assert size["unchanged_night_ratio"] > 0
    assert size["train"]["wall_seconds"] > 0 and size["generate"]["wall_seconds"] > 0
    assert size["second_night_ratio"] > 0
    assert set(size["job_ratios"]) == {"ingest", "link_and_publish"}
    ratio = size["job_ratios"]["link_and_publish"]
    jobs = [size[n]["jobs"]["link_and_publish"]["wall_seconds"] for n in ("night_1", "night_2")]
    assert ratio == pytest.approx(jobs[1] / jobs[0], abs=1e-3)
    # the linkage's own work, from what linked.runs recorded each night
    work = [sum(size[n]["linkage_recorded_seconds"].values()) for n in ("night_1", "night_2")]
    assert size["linkage_work_ratio"] == pytest.approx(work[1] / work[0], abs=1e-3)
    nights = [size[n]["total_wall_seconds"] + size[n]["retention"]["wall_seconds"] for n in NIGHTS]
    assert size["second_night_ratio_with_retention"] == pytest.approx(
        nights[1] / nights[0], abs=1e-3
    )
    assert "second_night_under_quarter" in report["targets"]
    assert len(report["load_average_at_start"]) == 3
    for when in ("start", "end"):
        probed = report[f"machine_probe_at_{when}"]
        assert probed["python_s"] > 0 and probed["native_s"] > 0
    assert not (tmp_path / "work" / "30").exists()  # data removed without --keep
    printed = capsys.readouterr().out
    assert "TOTAL" in printed and "per job, night 2 / night 1: ingest" in printed
    assert "the linkage's own work (standardise to hard-rule check), night 2 / night 1" in printed
    assert "night 3 (night 2's files again, nothing changed) / night 1" in printed
    assert printed.count("(retention)") == len(NIGHTS)
    assert "with each night's retention run (its own job, not in TOTAL)" in printed
    probes = (report["machine_probe_at_start"], report["machine_probe_at_end"])
    assert calibrate.describe(*probes) in printed


def test_a_redelivery_is_the_same_files_under_the_next_date(tmp_path: Path):
    county = tmp_path / "county"
    first = county / "police" / "2026-11-20"
    first.mkdir(parents=True)
    (first / "persons.csv").write_text("id,name\n1,Ann\n", encoding="utf-8")
    manifest = {"source": "police", "extract_date": "2026-11-20", "files": {"persons.csv": {}}}
    (first / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (county / "police" / "2026-11-19").mkdir()  # an older delivery is not repeated

    landing = redelivery(county, "2026-11-20", "2026-11-21", tmp_path / "landing")

    again = landing / "police" / "2026-11-21"
    assert sorted(p.name for p in (landing / "police").iterdir()) == ["2026-11-21"]
    assert (again / "persons.csv").read_bytes() == (first / "persons.csv").read_bytes()
    moved = json.loads((again / "manifest.json").read_text(encoding="utf-8"))
    assert moved == {**manifest, "extract_date": "2026-11-21"}
    assert json.loads((first / "manifest.json").read_text(encoding="utf-8")) == manifest


def test_the_extract_date_must_leave_room_for_the_third_night(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        main(["--sizes", "30", "--out", str(tmp_path), "--extract-date", date.today().isoformat()])
    assert "must be before today" in capsys.readouterr().err


def test_the_machine_probe_is_the_best_of_its_rounds(monkeypatch):
    """A passing interruption (the slow first round) does not count; the work is timed.

    The clock is the test's: each round of work moves it on by a set amount."""
    now = [1000.0]
    rounds = {"python": iter([0.200, 0.030, 0.060]), "native": iter([0.500, 0.750, 0.250])}

    def work(kind: str) -> Callable[[], None]:
        def run() -> None:
            now[0] += next(rounds[kind])

        return run

    monkeypatch.setattr(calibrate, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(calibrate, "_python", work("python"))
    monkeypatch.setattr(calibrate, "_native", work("native"))
    probed = calibrate.probe()
    assert probed == {"python_s": 0.030, "native_s": 0.250}
    for left in rounds.values():  # every round ran, and no more
        assert next(left, None) is None
    assert calibrate.describe(probed, {"python_s": 0.5, "native_s": 0.25}) == (
        "machine probe (fixed work, best of 3): at start python 0.030 s, native 0.250 s; "
        "at end python 0.500 s, native 0.250 s"
    )
