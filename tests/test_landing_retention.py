"""Retention of the landing zone: a delivery folder goes on the day its source's
``landing_keep_days`` after it was loaded or rejected ends, and not the day before; a
folder not yet loaded, re-sent since, or mended since its rejection stays; each one
destroyed is recorded without its content; `sdv retention` and the nightly asset do it;
loading a destroyed folder again says what happened to it and rejects nothing."""

from __future__ import annotations

import os
from datetime import date, timedelta

import dagster as dg
import pytest
from conftest import police_tables, write_delivery
from typer.testing import CliRunner

from pipelines.cli import app
from warehouse import audit, landing_retention
from warehouse.audit_config import AuditConfig
from warehouse.landing import Delivery, DeliveryError, DeliveryGone
from warehouse.operational import engine_for, ensure_schema
from warehouse.store import connect, load_delivery

POLICE_DAY = "2026-11-19"


@pytest.fixture
def zone(tmp_path, sources):
    """A landing zone and warehouse with police's 2026-11-19 delivery loaded; returns the
    connection, the landing zone, the loaded folder and the date its load was recorded."""
    landing = tmp_path / "landing"
    folder = write_delivery(landing, sources["police"], POLICE_DAY, police_tables(3))
    con = connect(tmp_path / "data" / "warehouse.duckdb")
    load_delivery(
        con, Delivery("police", date.fromisoformat(POLICE_DAY), folder), sources["police"]
    )
    loaded_on = con.execute("SELECT recorded_at FROM meta.deliveries").fetchall()[0][0].date()
    yield con, landing, folder, loaded_on
    con.close()


def _names(folders) -> list[str]:
    return [f"{f.delivery.source} {f.delivery.extract_date} {f.outcome}" for f in folders]


def test_a_loaded_folder_goes_on_the_day_its_keep_period_ends(zone, sources):
    con, landing, folder, loaded_on = zone
    keep = sources["police"].landing_keep_days
    assert keep == 14  # the shipped default
    day_before = loaded_on + timedelta(days=keep - 1)
    assert landing_retention.expired(con, landing, sources, day_before) == []

    due = landing_retention.expired(con, landing, sources, loaded_on + timedelta(days=keep))
    assert _names(due) == [f"police {POLICE_DAY} loaded"]
    files = sorted(p for p in folder.iterdir())
    assert due[0].files == len(files) == 4  # three tables and the manifest
    assert due[0].bytes == sum(p.stat().st_size for p in files)
    raw_before = con.execute('SELECT count(*) FROM raw."police__persons"').fetchall()

    leftover = landing / "police" / ".purging-2026-11-01-run-0"  # a run killed mid-delete
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "persons.csv").write_text("N1,Alfie")
    landing_retention.destroy(con, "run-1", due)
    assert not folder.exists() and not leftover.exists()
    assert list((landing / "police").iterdir()) == []
    recorded = con.execute(
        "SELECT run_id, source, extract_date::VARCHAR, outcome, files, bytes "
        "FROM meta.landing_purges"
    ).fetchall()
    assert recorded == [("run-1", "police", POLICE_DAY, "loaded", 4, due[0].bytes)]
    # The warehouse keeps every record as delivered: nothing of it goes with the folder.
    assert con.execute('SELECT count(*) FROM raw."police__persons"').fetchall() == raw_before


def test_the_keep_period_is_the_sources_own(zone, sources):
    con, landing, _, loaded_on = zone
    brief = {**sources, "police": sources["police"].model_copy(update={"landing_keep_days": 0})}
    assert _names(landing_retention.expired(con, landing, brief, loaded_on)) == [
        f"police {POLICE_DAY} loaded"
    ]
    assert landing_retention.expired(con, landing, sources, loaded_on) == []


def test_folders_not_loaded_as_they_stand_are_never_touched(zone, sources):
    """Waiting to be loaded, re-sent with other files after loading, or not a delivery
    folder at all: none of them is the warehouse's yet, so none may go."""
    con, landing, folder, loaded_on = zone
    write_delivery(landing, sources["police"], "2026-11-20", police_tables(2))  # not loaded
    (landing / "police" / "tmp").mkdir()  # agencies leave such folders around
    (landing / "police" / "tmp" / "persons.csv").write_text("x")
    (landing / "unknown_source" / POLICE_DAY).mkdir(parents=True)
    far = loaded_on + timedelta(days=365)
    assert _names(landing_retention.expired(con, landing, sources, far)) == [
        f"police {POLICE_DAY} loaded"
    ]

    write_delivery(landing, sources["police"], POLICE_DAY, police_tables(4))  # re-sent
    assert landing_retention.expired(con, landing, sources, far) == []
    assert folder.exists()


def test_loading_a_destroyed_folder_again_says_so_and_rejects_nothing(zone, sources):
    con, landing, folder, loaded_on = zone
    due = landing_retention.expired(con, landing, sources, loaded_on + timedelta(days=14))
    landing_retention.destroy(con, "run-1", due)
    purged_on = con.execute("SELECT purged_at FROM meta.landing_purges").fetchall()[0][0]

    with pytest.raises(DeliveryGone) as gone:
        load_delivery(
            con, Delivery("police", date.fromisoformat(POLICE_DAY), folder), sources["police"]
        )
    assert gone.value.path == str(folder)
    assert gone.value.reason == (
        f"the delivery folder was destroyed by landing retention on {purged_on.date()}, "
        f"after it was loaded on {loaded_on}: the warehouse keeps the records it delivered; "
        "to load it again the agency must send it again"
    )
    assert con.execute("SELECT status FROM meta.deliveries").fetchall() == [("loaded",)]
    assert con.execute('SELECT count(*) FROM current."police__persons"').fetchall() == [(3,)]


def test_a_folder_that_never_came_is_named_and_rejects_nothing(tmp_path, sources):
    con = connect(tmp_path / "warehouse.duckdb")
    folder = tmp_path / "landing" / "police" / POLICE_DAY
    try:
        with pytest.raises(DeliveryGone, match="no such delivery folder") as gone:
            load_delivery(
                con, Delivery("police", date.fromisoformat(POLICE_DAY), folder), sources["police"]
            )
        assert gone.value.path == str(folder)
        assert con.execute("SELECT count(*) FROM meta.deliveries").fetchall() == [(0,)]
    finally:
        con.close()


def test_a_rejected_folder_goes_after_its_keep_period_unless_mended_since(tmp_path, sources):
    landing = tmp_path / "landing"
    folder = write_delivery(landing, sources["police"], "2026-11-20", police_tables(3))
    persons = folder / "persons.csv"
    persons.write_bytes(persons.read_bytes() + b"N9,X,Y,,,,,,,\r\n")  # manifest disagrees
    con = connect(tmp_path / "warehouse.duckdb")
    try:
        with pytest.raises(DeliveryError):
            load_delivery(con, Delivery("police", date(2026, 11, 20), folder), sources["police"])
        rejected_on = con.execute("SELECT recorded_at FROM meta.deliveries").fetchall()[0][0]
        keep = timedelta(days=sources["police"].landing_keep_days)
        day_before = rejected_on.date() + keep - timedelta(days=1)
        assert landing_retention.expired(con, landing, sources, day_before) == []
        due = landing_retention.expired(con, landing, sources, rejected_on.date() + keep)
        assert _names(due) == ["police 2026-11-20 rejected"]

        mended = rejected_on.timestamp() + 3600  # the agency mends the file in place
        os.utime(persons, (mended, mended))
        assert landing_retention.expired(con, landing, sources, rejected_on.date() + keep) == []

        os.utime(persons, (rejected_on.timestamp() - 60,) * 2)  # not mended after all
        landing_retention.destroy(con, "run-1", due)
        with pytest.raises(
            DeliveryGone,
            match=f"after it was rejected on {rejected_on.date()}: nothing of it was loaded;",
        ):
            load_delivery(con, Delivery("police", date(2026, 11, 20), folder), sources["police"])
        assert con.execute("SELECT status FROM meta.deliveries").fetchall() == [("rejected",)]
    finally:
        con.close()


def _sdv_retention(data_dir, landing, *args: str):
    return CliRunner().invoke(
        app, ["retention", "--data-dir", str(data_dir), "--landing", str(landing), *args]
    )


def test_sdv_retention_lists_then_destroys_expired_folders_and_audits_them(zone, tmp_path):
    con, landing, folder, loaded_on = zone
    con.close()
    data = tmp_path / "data"
    as_of = (loaded_on + timedelta(days=14)).isoformat()  # police keeps records 6 years

    dry = _sdv_retention(data, landing, "--dry-run", "--as-of", as_of)
    assert dry.exit_code == 0, dry.output
    assert "1 delivery folder(s) would go" in dry.output
    assert f"police {POLICE_DAY} (loaded " in dry.output
    assert folder.exists()

    real = _sdv_retention(data, landing, "--as-of", as_of, "--by", "dpo1")
    assert real.exit_code == 0, real.output
    assert "1 delivery folder(s) destroyed" in real.output and not folder.exists()
    again = _sdv_retention(data, landing, "--as-of", as_of)
    assert "no delivery folder past its keep period" in again.output
    engine = engine_for(f"sqlite:///{data / 'operational.db'}")
    ensure_schema(engine)
    events = [
        e for e in audit.events(engine, limit=50) if e.action == "retention" and e.user_id == "dpo1"
    ]
    assert len(events) == 1
    recorded = events[0].detail["landing_folders"]
    assert recorded["police"]["folders"] == 1 and recorded["police"]["files"] == 4


def test_the_nightly_asset_destroys_expired_folders(zone, tmp_path, sources):
    from assets.resources import FamilyViewSettings, LandingZone, OperationalStore, Warehouse
    from assets.retention import build_retention_asset

    con, landing, folder, loaded_on = zone
    con.close()
    data = tmp_path / "data"
    as_of = (loaded_on + timedelta(days=14)).isoformat()
    result = dg.materialize(
        [build_retention_asset(sources, AuditConfig())],
        resources={
            "warehouse": Warehouse(path=str(data / "warehouse.duckdb")),
            "landing": LandingZone(path=str(landing)),
            "operational": OperationalStore(url=f"sqlite:///{data / 'operational.db'}"),
            "family_view": FamilyViewSettings(
                published_dir=str(data / "published"), data_dir=str(data)
            ),
        },
        run_config={"ops": {"retention": {"config": {"as_of": as_of}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("retention")[0].metadata
    destroyed = meta["landing_folders_destroyed"].value
    assert destroyed["police"]["folders"] == 1 and destroyed["police"]["files"] == 4
    assert not folder.exists()
    check = connect(data / "warehouse.duckdb")
    try:
        purges = check.execute("SELECT source, outcome FROM meta.landing_purges").fetchall()
    finally:
        check.close()
    assert purges == [("police", "loaded")]
