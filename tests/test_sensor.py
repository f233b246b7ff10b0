"""The delivery sensor starts a run for a complete delivery and never for a partial one."""

import json
import os
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from conftest import police_tables, write_delivery

from assets.resources import LandingZone
from pipelines.definitions import build_defs
from pipelines.settings import Settings
from warehouse.sources import DEFAULT_CONFIG_DIR


@pytest.fixture
def landing(tmp_path):
    return tmp_path / "landing"


@pytest.fixture
def evaluate(tmp_path, landing):
    settings = Settings(tmp_path, landing, tmp_path / "w.duckdb", DEFAULT_CONFIG_DIR)
    sensor = build_defs(settings).resolve_sensor_def("delivery_sensor")
    instance = dg.DagsterInstance.ephemeral()

    def _evaluate(cursor=None) -> dg.SensorResult:
        # Contexts are exited: one left open keeps the Dagster instance it opened installed
        # as the process's current one, and a later `sdv load` in the same process then
        # fails on that instance once it is garbage collected.
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"landing": LandingZone(path=str(landing))}
        ) as context:
            return sensor(context)

    return _evaluate


def age(folder, seconds=3600):
    """Make a delivery's files look as if written ``seconds`` ago."""
    past = time.time() - seconds
    for path in folder.iterdir():
        os.utime(path, (past, past))


def requested(result):
    return [(r.job_name, r.partition_key) for r in result.run_requests]


def test_complete_delivery_with_manifest_starts_one_run(evaluate, landing, sources):
    write_delivery(landing, sources["police"], "2026-11-20", police_tables())
    result = evaluate()
    assert requested(result) == [("ingest_police_job", "2026-11-20")]
    assert [
        (r.partitions_def_name, r.partition_keys) for r in result.dynamic_partitions_requests
    ] == [("police_deliveries", ["2026-11-20"])]
    again = evaluate(result.cursor)
    assert requested(again) == []


def test_manifest_listing_an_unwritten_file_does_not_start(evaluate, landing, sources):
    folder = write_delivery(landing, sources["police"], "2026-11-20", police_tables())
    (folder / "involvements.csv").unlink()  # still being copied
    age(folder)
    assert requested(evaluate()) == []


def test_file_still_being_written_does_not_start_until_settled(evaluate, landing, sources):
    folder = write_delivery(landing, sources["police"], "2026-11-20", police_tables())
    path = folder / "persons.csv"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # half written: checksum differs, fresh mtime
    assert requested(evaluate()) == []
    path.write_bytes(data)  # writer finishes
    assert requested(evaluate()) == [("ingest_police_job", "2026-11-20")]


def test_stale_mismatch_starts_a_run_so_it_is_rejected_loudly(evaluate, landing, sources):
    folder = write_delivery(landing, sources["police"], "2026-11-20", police_tables())
    (folder / "persons.csv").write_bytes(b"nominal_id\r\n")
    age(folder)
    assert requested(evaluate()) == [("ingest_police_job", "2026-11-20")]


def test_delivery_without_manifest_waits_for_all_files_and_quiet(evaluate, landing, sources):
    folder = write_delivery(
        landing,
        sources["police"],
        "2026-11-20",
        {"persons": police_tables()["persons"], "incidents": police_tables()["incidents"]},
        manifest=False,
    )
    age(folder)
    assert requested(evaluate()) == []  # involvements.csv has not arrived
    write_delivery(landing, sources["police"], "2026-11-20", police_tables(), manifest=False)
    assert requested(evaluate()) == []  # just written: not yet quiet
    age(folder)
    assert requested(evaluate()) == [("ingest_police_job", "2026-11-20")]


def test_replaced_delivery_is_requested_again(evaluate, landing, sources):
    write_delivery(landing, sources["police"], "2026-11-20", police_tables(2))
    first = evaluate()
    time.sleep(0.01)
    write_delivery(landing, sources["police"], "2026-11-20", police_tables(3))
    second = evaluate(first.cursor)
    assert requested(second) == [("ingest_police_job", "2026-11-20")]
    assert second.run_requests[0].run_key != first.run_requests[0].run_key
    assert json.loads(second.cursor).keys() == {"police/2026-11-20"}


def test_folders_that_are_not_dates_are_ignored(evaluate, landing, sources):
    write_delivery(landing, sources["police"], "2026-11-20", police_tables())
    (landing / "police" / "archive").mkdir()
    (landing / "police" / "2026-02-30").mkdir()
    (landing / "unknown_agency" / "2026-11-20").mkdir(parents=True)
    assert requested(evaluate()) == [("ingest_police_job", "2026-11-20")]


TONIGHT = datetime(2026, 11, 21, 1, 30, tzinfo=ZoneInfo("Europe/London"))


def test_nightly_schedule_loads_the_newest_complete_delivery(tmp_path, landing, sources):
    settings = Settings(tmp_path, landing, tmp_path / "w.duckdb", DEFAULT_CONFIG_DIR)
    schedule = next(s for s in build_defs(settings).schedules if s.name == "nightly_police")
    resources = {"landing": LandingZone(path=str(landing))}
    with dg.instance_for_test() as instance:  # schedules need a persistent instance

        def evaluate():
            with dg.build_schedule_context(
                instance=instance, resources=resources, scheduled_execution_time=TONIGHT
            ) as context:
                return schedule(context)

        assert isinstance(evaluate(), dg.SkipReason)
        write_delivery(landing, sources["police"], "2026-11-19", police_tables())
        write_delivery(landing, sources["police"], "2026-11-20", police_tables())
        unfinished = write_delivery(landing, sources["police"], "2026-11-21", police_tables())
        (unfinished / "persons.csv").unlink()
        write_delivery(landing, sources["police"], "2999-01-01", police_tables())  # mistyped
        request = evaluate()
        assert request.partition_key == "2026-11-20"
        assert instance.has_dynamic_partition("police_deliveries", "2026-11-20")


def test_nightly_schedule_names_a_landing_zone_that_is_not_there(tmp_path, sources):
    gone = tmp_path / "share" / "landing"
    settings = Settings(tmp_path, gone, tmp_path / "w.duckdb", DEFAULT_CONFIG_DIR)
    schedule = next(s for s in build_defs(settings).schedules if s.name == "nightly_police")
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(
            instance=instance,
            resources={"landing": LandingZone(path=str(gone))},
            scheduled_execution_time=TONIGHT,
        ) as context,
    ):
        skipped = schedule(context)
    assert isinstance(skipped, dg.SkipReason)
    assert f"the landing zone {gone} is not there" in skipped.skip_message


def test_the_sensor_names_a_landing_zone_that_is_not_there(evaluate, landing, sources):
    skipped = evaluate()
    assert isinstance(skipped, dg.SkipReason)
    assert f"the landing zone {landing} is not there" in skipped.skip_message
    folder = write_delivery(landing, sources["police"], "2026-11-20", police_tables())
    age(folder)
    assert requested(evaluate()) == [("ingest_police_job", "2026-11-20")]
