"""The deployment path: a real Dagster daemon (what `dagster dev` and a production service
run) evaluates `delivery_sensor`, queues a run for each complete delivery and launches it
in a process of its own, where the writer pool keeps the steps that open the warehouse one
at a time; then a `link_and_publish` run queued from the command line, as the 03:30
schedule queues it, links and publishes. Every other test runs jobs in-process, as `sdv`
does; this is what the schedules and sensors do on a server."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb

from pipelines.settings import PROJECT_ROOT
from synth.generate import generate_county
from warehouse.sources import DEFAULT_CONFIG_DIR

SOURCES = {"council_csc", "council_eh", "health", "police", "school"}
DEADLINE_SECONDS = 300  # each wait; five loads take about 60 s here, the night's link 30 s
DONE = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]


def _finished(home: Path, filters: dg.RunsFilter) -> list[dg.DagsterRun]:
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        return list(instance.get_runs(filters=filters))
    finally:
        instance.dispose()


def _wait(
    process: subprocess.Popen, log: Path, until: Callable[[], list[dg.DagsterRun]], count: int
) -> list[dg.DagsterRun]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    runs = until()
    while len(runs) < count and time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(2)
        runs = until()
    return runs


def test_the_daemon_loads_every_delivery_then_links_and_publishes(tmp_path):
    generate_county(30, 3, date(2026, 11, 20), tmp_path / "county")
    data = tmp_path / "data"
    home = data / "dagster"
    home.mkdir(parents=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        # Not another test's settings: `sdv` commands run in this process export theirs.
        **{k: v for k, v in os.environ.items() if not k.startswith(("SDV_", "DAGSTER_"))},
        "DAGSTER_HOME": str(home),
        "SDV_DATA_DIR": str(data),
        "SDV_LANDING": str(tmp_path / "county" / "landing"),
        "SDV_CONFIG_DIR": str(DEFAULT_CONFIG_DIR),
    }
    bin_dir = Path(sys.executable).parent
    log = tmp_path / "daemon.log"
    # The sensor's runs only: a schedule whose time falls inside the test adds its own.
    loads = dg.RunsFilter(statuses=DONE, tags={"sdv/trigger": "delivery"})
    nights = dg.RunsFilter(statuses=DONE, job_name="link_and_publish")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(bin_dir / "dagster-daemon"), "run", "-m", "pipelines.definitions"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its run processes go with it at the end
        )
        try:
            runs = _wait(process, log, lambda: _finished(home, loads), len(SOURCES))
            launch = ["job", "launch", "-m", "pipelines.definitions", "-j", "link_and_publish"]
            launched = subprocess.run(
                [str(bin_dir / "dagster"), *launch],
                cwd=PROJECT_ROOT,
                env=env,
                capture_output=True,
                timeout=120,
            )
            assert launched.returncode == 0, launched.stderr.decode()[-3000:]
            night = _wait(process, log, lambda: _finished(home, nights), 1)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    log_tail = log.read_text(errors="replace")[-3000:]
    assert len(runs) == len(SOURCES), log_tail
    assert {run.tags["sdv/source"] for run in runs} == SOURCES
    failed = [r.tags["sdv/source"] for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
    assert not failed, (failed, log_tail)
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        loaded = con.execute(
            "SELECT source, extract_date::VARCHAR FROM meta.deliveries WHERE status = 'loaded'"
        ).fetchall()
        persons = con.execute("SELECT count(DISTINCT person_id) FROM linked.person_records")
        persons = persons.fetchall()[0][0]
    finally:
        con.close()
    assert sorted(loaded) == sorted((source, "2026-11-20") for source in SOURCES)
    assert [run.status for run in night] == [dg.DagsterRunStatus.SUCCESS], log_tail
    assert persons > 0
    pointer = json.loads((data / "published" / "CURRENT.json").read_text(encoding="utf-8"))
    assert (data / "published" / "snapshots" / pointer["snapshot"]).is_file()
