"""The deployment path: a real Dagster daemon (what `dagster dev` and a production service
run) evaluates `delivery_sensor`, queues a run for each complete delivery, and launches it
in a process of its own, where the writer pool keeps the loads one at a time. Every other
test runs jobs in-process, as `sdv` does; this one is what the schedules and sensors do
on a server."""

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb

from pipelines.settings import PROJECT_ROOT
from synth.generate import generate_county
from warehouse.sources import DEFAULT_CONFIG_DIR

SOURCES = {"council_csc", "council_eh", "health", "police", "school"}
DEADLINE_SECONDS = 300  # five runs, each a process start and import; about 30 s here


def _finished_runs(home: Path) -> list[dg.DagsterRun]:
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        done = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]
        # The sensor's runs only: a schedule whose time falls inside the test adds its own.
        by_sensor = dg.RunsFilter(statuses=done, tags={"sdv/trigger": "delivery"})
        return list(instance.get_runs(filters=by_sensor))
    finally:
        instance.dispose()


def test_the_daemon_loads_every_complete_delivery_through_the_sensor(tmp_path):
    generate_county(30, 3, date(2026, 11, 20), tmp_path / "county")
    data = tmp_path / "data"
    home = data / "dagster"
    home.mkdir(parents=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SDV_DATA_DIR": str(data),
        "SDV_LANDING": str(tmp_path / "county" / "landing"),
        "SDV_CONFIG_DIR": str(DEFAULT_CONFIG_DIR),
    }
    daemon = Path(sys.executable).with_name("dagster-daemon")
    with (tmp_path / "daemon.log").open("wb") as log:
        process = subprocess.Popen(
            [str(daemon), "run", "-m", "pipelines.definitions"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its run processes go with it at the end
        )
        try:
            deadline = time.monotonic() + DEADLINE_SECONDS
            runs = _finished_runs(home)
            while len(runs) < len(SOURCES) and time.monotonic() < deadline:
                assert process.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                time.sleep(2)
                runs = _finished_runs(home)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    log_tail = (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]
    assert len(runs) == len(SOURCES), log_tail
    assert {run.tags["sdv/source"] for run in runs} == SOURCES
    failed = [r.tags["sdv/source"] for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
    assert not failed, (failed, log_tail)
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        loaded = con.execute(
            "SELECT source, extract_date::VARCHAR FROM meta.deliveries WHERE status = 'loaded'"
        ).fetchall()
    finally:
        con.close()
    assert sorted(loaded) == sorted((source, "2026-11-20") for source in SOURCES)
