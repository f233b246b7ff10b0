"""Retention: exactly the expired rows go, from every layer and every delivery, on the
expiry date and not the day before; person rows outlive the rows that name them; shared
rows wait for everyone; unknown dates are reported, never silently destroyed."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest
from conftest import police_person
from test_config import write_config
from test_load import snapshot
from typer.testing import CliRunner

from pipelines.cli import app
from warehouse import audit, purge, retention
from warehouse.audit_config import AuditConfig
from warehouse.landing import Delivery
from warehouse.operational import engine_for, ensure_schema
from warehouse.serving import serving_path
from warehouse.sources import DEFAULT_CONFIG_DIR, ConfigError, load_source
from warehouse.store import connect, load_delivery, per_delivery_sql
from warehouse.subjects import INGEST_SCHEMAS

D = date.fromisoformat


@pytest.fixture
def warehouse(tmp_path, delivery_writer, sources):
    """A warehouse in ``tmp_path/data`` and a loader of hand-written deliveries into it."""
    con = connect(tmp_path / "data" / "warehouse.duckdb")

    def load(source: str, day: str, tables: dict) -> None:
        folder = delivery_writer(source, day, tables)
        load_delivery(con, Delivery(source, D(day), folder), sources[source])

    yield con, load
    con.close()


def keys(con, source: str, table: str, column: str) -> dict[str, list[str]]:
    """Per layer, the sorted values of ``column`` still stored, one per row of each
    delivery (raw and staged hold a record once, ``delivered`` each delivery of it)."""
    found = {}
    name = f"{source}__{table}"
    for layer in INGEST_SCHEMAS:
        relation = (
            f'quarantine."{name}"'
            if layer == "quarantine"
            else (f"({per_delivery_sql(layer, name)})")
        )
        rows = con.execute(f'select "{column}" from {relation}').fetchall()
        found[layer] = sorted(str(r[0]) for r in rows)
    # No delivery is left naming a record that is gone.
    (delivered,) = con.execute(f'select count(*) from delivered."{name}"').fetchall()[0]
    assert delivered == len(found["raw"]), name
    return found


def destroyed(plan, source: str, table: str) -> dict[str, int]:
    rows = plan.counts.filter((pl.col("source") == source) & (pl.col("table") == table))
    return dict(rows.select("layer", "destroy").iter_rows())


# --- school: until the 25th birthday; contacts follow their pupil ------------------------


def pupil(upn: str, dob: str) -> dict:
    return {
        "upn": upn,
        "school_urn": "100001",
        "legal_forename": "Test",
        "legal_surname": "Pupil",
        "dob": dob,
        "entry_date": "2006-09-01",
    }


def school_tables(pupils: dict[str, str]) -> dict:
    """Pupils (upn -> dob), a contact each, a good attendance row each and, for the first
    pupil, one attendance row staging quarantines (sessions not a number)."""
    first = next(iter(pupils))
    attendance = [
        {"upn": u, "school_urn": "100001", "term": "2012-AUT", "sessions_possible": "140"}
        for u in pupils
    ]
    attendance.append(
        {"upn": first, "school_urn": "100001", "term": "2012-SPR", "sessions_possible": "x"}
    )
    return {
        "pupils": [pupil(u, dob) for u, dob in pupils.items()],
        "contacts": [
            {"upn": u, "contact_forename": "Pat", "contact_surname": "Carer", "priority": "1"}
            for u in pupils
        ],
        "attendance": attendance,
        "exclusions": [],
    }


SCHOOL = {"A900000000001": "2001-11-20", "A900000000002": "2001-11-21"}


def test_school_rows_go_on_the_25th_birthday_in_every_layer_and_delivery(warehouse, sources):
    con, load = warehouse
    load("school", "2026-10-01", school_tables(SCHOOL))
    load("school", "2026-11-01", school_tables(SCHOOL))  # the same records again
    before = snapshot(con)

    day_before = retention.plan(con, {"school": sources["school"]}, D("2026-11-19"))
    assert day_before.destroyed == 0 and day_before.targets == {}

    on_birthday = retention.plan(con, {"school": sources["school"]}, D("2026-11-20"))
    assert snapshot(con) == before  # planning is a dry run
    # raw and staged hold each record once; quarantine holds each delivery's rows.
    assert destroyed(on_birthday, "school", "pupils") == {"raw": 1, "staged": 1, "quarantine": 0}
    assert destroyed(on_birthday, "school", "contacts") == {"raw": 1, "staged": 1, "quarantine": 0}
    assert destroyed(on_birthday, "school", "attendance") == {
        "raw": 2,
        "staged": 1,
        "quarantine": 2,
    }
    assert on_birthday.expired_records == (
        "school|contacts|A900000000001|1",
        "school|pupils|A900000000001",
    )
    retention.apply(con, on_birthday)

    survivor = "A900000000002"
    for table in ("pupils", "contacts", "attendance"):
        left = keys(con, "school", table, "upn")
        assert left["raw"] == [survivor, survivor], table
        assert left["staged"] == [survivor, survivor], table
        assert survivor not in left["quarantine"] and not left["quarantine"]
    assert con.execute('select upn from current."school__pupils"').fetchall() == [(survivor,)]
    untouched = retention.plan(con, {"school": sources["school"]}, D("2026-11-20"))
    assert untouched.destroyed == 0  # a second run on the same date finds nothing more


@pytest.mark.parametrize(
    ("as_of", "gone"), [("2029-02-28", False), ("2029-03-01", True), ("2028-02-29", False)]
)
def test_a_leap_day_birthday_is_reached_on_1_march_in_a_common_year(
    warehouse, sources, as_of, gone
):
    con, load = warehouse
    load("school", "2026-11-01", school_tables({"A900000000003": "2004-02-29"}))
    plan = retention.plan(con, {"school": sources["school"]}, D(as_of))
    assert bool(plan.expired_records) is gone
    assert destroyed(plan, "school", "pupils")["staged"] == (1 if gone else 0)


def test_anniversary_adds_whole_years_and_never_lands_early():
    frame = pl.DataFrame({"d": [D("2004-02-29"), D("2004-02-29"), D("2001-11-20")]})
    got = frame.select(
        a=retention.anniversary(pl.col("d"), 25), b=retention.anniversary(pl.col("d"), 24)
    )
    assert got["a"].to_list() == [D("2029-03-01"), D("2029-03-01"), D("2026-11-20")]
    assert got["b"].to_list()[:2] == [D("2028-02-29"), D("2028-02-29")]


def test_attendance_terms_date_a_pupil_at_the_terms_end(warehouse, tmp_path):
    """Under a years rule the school's clock reads terms (2012-AUT ends 31 Dec 2012), raw
    text included: the latest event is the autumn term, after the 2012-SPR row staging
    quarantined and the 2006 entry date."""
    con, load = warehouse
    load("school", "2026-11-01", school_tables({"A900000000001": "2001-11-20"}))
    years = {"rule": "years_after_last_event", "years": 1}
    school = load_source(
        write_config(tmp_path, "school", lambda d: d["agreement"].update(retention=years))
    )
    assert retention.plan(con, {"school": school}, D("2013-12-30")).destroyed == 0
    plan = retention.plan(con, {"school": school}, D("2013-12-31"))
    assert destroyed(plan, "school", "attendance") == {"raw": 2, "staged": 1, "quarantine": 1}


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (
            lambda d: d["tables"]["incidents"].update(event_dates=["incident_type"]),
            "event_dates names 'incident_type', not a date or timestamp column",
        ),
        (
            lambda d: d["tables"]["persons"].pop("dob_column"),
            "kept until_age but no person table it is about has a dob_column",
        ),
        (
            lambda d: d["tables"]["incidents"].update(dob_column="occurred_at"),
            "dob_column is only for person_level tables",
        ),
    ],
    ids=["event-not-a-date", "age-without-birth-date", "dob-on-event-table"],
)
def test_retention_config_mistakes_are_refused_naming_the_table(tmp_path, mutate, problem):
    def change(data):
        data["agreement"]["retention"] = {"rule": "until_age", "age": 18}
        mutate(data)

    path = write_config(tmp_path, "police", change)
    with pytest.raises(ConfigError, match=problem):
        load_source(path)


# --- police: six years after the last event; shared incidents wait for everyone ----------


def police_tables() -> dict:
    """N1 and N2 at INC1 (10 Mar 2019); N2 also at INC2 (1 May 2021); N3 at nothing."""
    persons = [police_person(n, pnc_id=None) for n in ("N1", "N2", "N3")]
    incidents = [
        {"incident_ref": "INC1", "occurred_at": "2019-03-10T22:15:00", "incident_type": "crime"},
        {"incident_ref": "INC2", "occurred_at": "2021-05-01T08:00:00", "incident_type": "asb"},
    ]
    involvements = [
        {"incident_ref": "INC1", "nominal_id": "N1", "role": "victim"},
        {"incident_ref": "INC1", "nominal_id": "N2", "role": "suspect"},
        {"incident_ref": "INC2", "nominal_id": "N2", "role": "suspect"},
    ]
    return {"persons": persons, "incidents": incidents, "involvements": involvements}


def test_police_rows_go_six_years_after_the_persons_last_incident(warehouse, sources):
    con, load = warehouse
    load("police", "2026-11-20", police_tables())
    police = {"police": sources["police"]}

    assert retention.plan(con, police, D("2025-03-09")).destroyed == 0
    first = retention.plan(con, police, D("2025-03-10"))
    assert first.expired_records == ("police|persons|N1",)
    retention.apply(con, first)
    assert keys(con, "police", "persons", "nominal_id")["staged"] == ["N2", "N3"]
    assert keys(con, "police", "involvements", "nominal_id")["raw"] == ["N2", "N2"]
    # INC1 is about N2 as well, who is still within their six years: it stays.
    assert keys(con, "police", "incidents", "incident_ref")["staged"] == ["INC1", "INC2"]
    assert retention.plan(con, police, D("2025-03-10")).destroyed == 0

    assert retention.plan(con, police, D("2027-04-30")).destroyed == 0
    last = retention.plan(con, police, D("2027-05-01"))
    assert last.expired_records == ("police|persons|N2",)
    retention.apply(con, last)
    assert keys(con, "police", "incidents", "incident_ref")["staged"] == []
    assert keys(con, "police", "persons", "nominal_id")["staged"] == ["N3"]


def test_a_record_with_no_event_is_undetermined_and_dated_by_its_last_delivery(warehouse, sources):
    con, load = warehouse
    load("police", "2026-11-20", police_tables())
    police = {"police": sources["police"]}
    plan = retention.plan(con, police, D("2032-11-19"))
    persons = plan.counts.filter(pl.col("table") == "persons", pl.col("layer") == "staged")
    assert persons["undetermined"].to_list() == [1]  # N3: involved in nothing
    assert "police|persons|N3" not in plan.expired_records
    fallback = retention.plan(con, police, D("2032-11-20"))  # extract date + 6 years
    assert "police|persons|N3" in fallback.expired_records


def test_a_leap_day_event_expires_on_1_march(warehouse, sources):
    con, load = warehouse
    tables = police_tables()
    tables["incidents"][0]["occurred_at"] = "2024-02-29T23:30:00"
    tables["incidents"][1]["occurred_at"] = "2024-02-29T01:00:00"
    load("police", "2026-11-20", tables)
    police = {"police": sources["police"]}
    assert "police|persons|N1" not in retention.plan(con, police, D("2030-02-28")).expired_records
    assert {"police|persons|N1", "police|persons|N2"} <= set(
        retention.plan(con, police, D("2030-03-01")).expired_records
    )


# --- health: a child's record to 25, an adult's 8 years after the last encounter ---------


def patient(patient_id: str, dob: str) -> dict:
    return {
        "local_patient_id": patient_id,
        "given_name": "Test",
        "family_name": "Patient",
        "birth_date": dob,
    }


def test_health_keeps_a_record_until_the_later_of_25th_birthday_and_8_years(warehouse, sources):
    con, load = warehouse
    tables = {
        # A: 25 on 2030-01-10, last seen 2010: the birthday is later.
        # B: an adult seen on 2026-05-05: kept to 2034-05-05 though long past 25.
        "patients": [patient("A", "2005-01-10"), patient("B", "1980-06-01")],
        "encounters": [
            {
                "encounter_id": "E1",
                "local_patient_id": "A",
                "encounter_type": "ed_attendance",
                "encounter_date": "2010-03-03",
            },
            {
                "encounter_id": "E2",
                "local_patient_id": "B",
                "encounter_type": "ed_attendance",
                "encounter_date": "2026-05-05",
            },
        ],
    }
    load("health", "2026-11-20", tables)
    health = {"health": sources["health"]}
    assert retention.plan(con, health, D("2026-11-20")).expired_records == ()
    assert retention.plan(con, health, D("2030-01-09")).expired_records == ()
    assert retention.plan(con, health, D("2030-01-10")).expired_records == ("health|patients|A",)
    assert retention.plan(con, health, D("2034-05-04")).expired_records == ("health|patients|A",)
    assert retention.plan(con, health, D("2034-05-05")).expired_records == (
        "health|patients|A",
        "health|patients|B",
    )


# --- social care: episodes to the 75th birthday keep the person row ----------------------


def csc_person(person_id: str, dob: str | None, updated: str) -> dict:
    return {
        "csc_person_id": person_id,
        "forename": "Test",
        "surname": "Person",
        "dob": dob,
        "updated_at": updated,
    }


def csc_tables() -> dict:
    return {
        "people": [
            csc_person("C1", "1951-06-01", "1990-01-01T00:00:00"),
            csc_person("C2", None, "1990-01-01T00:00:00"),
        ],
        "episodes": [
            {
                "episode_id": f"E{n}",
                "csc_person_id": f"C{n}",
                "episode_type": "looked_after",
                "start_date": "1960-01-01",
                "end_date": "1970-01-01",
            }
            for n in (1, 2)
        ],
        "relationships": [],
    }


def test_looked_after_episodes_go_on_the_75th_birthday_and_hold_the_person(warehouse, sources):
    con, load = warehouse
    load("council_csc", "2026-01-05", csc_tables())
    csc = {"council_csc": sources["council_csc"]}
    # The person row's own clock (updated 1990 + 25 years) ran out in 2015; the episode
    # still names them, so it is kept with the episode.
    assert retention.plan(con, csc, D("2016-01-01")).destroyed == 0
    assert retention.plan(con, csc, D("2026-05-31")).destroyed == 0
    plan = retention.plan(con, csc, D("2026-06-01"))
    assert destroyed(plan, "council_csc", "episodes") == {"raw": 1, "staged": 1, "quarantine": 0}
    assert destroyed(plan, "council_csc", "people") == {"raw": 1, "staged": 1, "quarantine": 0}
    assert plan.expired_records == ("council_csc|people|C1",)
    # C2 has no date of birth: the episode can never be aged, so it is reported and kept,
    # and it keeps C2's person row.
    far = retention.plan(con, csc, D("2200-01-01"))
    assert "council_csc|people|C2" not in far.expired_records
    episodes = far.counts.filter(pl.col("table") == "episodes")
    assert dict(episodes.select("layer", "undetermined").iter_rows()) == {
        "raw": 1,
        "staged": 1,
        "quarantine": 0,
    }


# --- early help: the family's episode is shared ------------------------------------------


def test_a_family_episode_stays_until_every_member_has_expired(warehouse, sources):
    con, load = warehouse
    people = [
        {"eh_person_id": p, "family_id": "F1", "forename": "T", "surname": "F", "updated_at": u}
        for p, u in (("A", "2010-01-01T00:00:00"), ("B", "2018-03-01T00:00:00"))
    ]
    episode = {"eh_episode_id": "X1", "family_id": "F1", "start_date": "2009-05-01"}
    load("council_eh", "2026-11-20", {"people": people, "episodes": [{**episode}]})
    eh = {"council_eh": sources["council_eh"]}
    # A's last event is the family episode's start (2009-05-01) or their update (2010-01-01).
    assert retention.plan(con, eh, D("2016-12-31")).destroyed == 0
    first = retention.plan(con, eh, D("2017-01-01"))
    assert first.expired_records == ("council_eh|people|A",)
    assert destroyed(first, "council_eh", "episodes") == {"raw": 0, "staged": 0, "quarantine": 0}
    retention.apply(con, first)
    assert retention.plan(con, eh, D("2025-02-28")).destroyed == 0
    last = retention.plan(con, eh, D("2025-03-01"))
    assert destroyed(last, "council_eh", "episodes") == {"raw": 1, "staged": 1, "quarantine": 0}
    assert last.expired_records == ("council_eh|people|B",)


# --- the record of destruction, the command line, a whole county -------------------------


def test_apply_records_counts_per_source_table_and_layer_without_identifiers(warehouse, sources):
    con, load = warehouse
    load("school", "2026-11-01", school_tables(SCHOOL))
    plan = retention.plan(con, {"school": sources["school"]}, D("2026-11-20"))
    done = retention.apply(con, plan)
    recorded = retention.runs(con)
    assert set(recorded["run_id"]) == {done.run_id}
    assert recorded.height == 12  # 4 tables x 3 layers, zero counts included
    pupils = recorded.filter(pl.col("table_name") == "pupils", pl.col("layer") == "staged")
    assert pupils.select("as_of", "rule", "rows_destroyed").row(0) == (
        D("2026-11-20"),
        "until_age 25",
        1,
    )
    text = " ".join(str(v) for row in recorded.iter_rows() for v in row)
    assert "A900000000001" not in text and "Pupil" not in text
    assert purge.targeted_rows(done.destroyed) == plan.destroyed == 8
    # ... and the deliveries that carried those records: one delivery here.
    delivered = {k: v for k, v in done.destroyed.items() if ":delivered." in k}
    assert delivered == {
        "warehouse.duckdb:delivered.school__attendance": 2,
        "warehouse.duckdb:delivered.school__contacts": 1,
        "warehouse.duckdb:delivered.school__pupils": 1,
    }


def test_apply_refuses_a_plan_the_warehouse_has_moved_on_from(warehouse, sources):
    con, load = warehouse
    load("school", "2026-11-01", school_tables(SCHOOL))
    plan = retention.plan(con, {"school": sources["school"]}, D("2026-11-20"))
    load("school", "2026-11-02", school_tables(SCHOOL))
    before = snapshot(con)
    with pytest.raises(retention.RetentionError, match="changed since retention was planned"):
        retention.apply(con, plan)
    assert snapshot(con) == before


def sdv(data, *args: str):
    return CliRunner().invoke(app, ["retention", *args, "--data-dir", str(data)])


def test_cli_dry_run_reports_and_changes_nothing_then_applies_and_audits(warehouse, tmp_path):
    con, load = warehouse
    load("school", "2026-11-01", school_tables(SCHOOL))
    before = snapshot(con)
    con.close()
    data = tmp_path / "data"

    dry = sdv(data, "--dry-run", "--as-of", "2026-11-20")
    assert dry.exit_code == 0, dry.output
    assert "would go" in dry.output and "Nothing changed" in dry.output
    assert "8 rows and 2 person-level records would go" in dry.output
    check = connect(data / "warehouse.duckdb")
    assert snapshot(check) == before
    check.close()

    default_day = sdv(data, "--dry-run")  # as of the newest extract: nothing has expired
    assert "as of 2026-11-01: 0 rows" in default_day.output
    assert not (data / "operational.db").exists()  # a dry run records nothing, anywhere

    real = sdv(data, "--as-of", "2026-11-20", "--by", "dpo1")
    assert real.exit_code == 0, real.output
    assert "destroyed 8 rows" in real.output
    check = connect(data / "warehouse.duckdb")
    assert keys(check, "school", "pupils", "upn")["staged"] == ["A900000000002"]
    check.close()
    engine = engine_for(f"sqlite:///{data / 'operational.db'}")
    ensure_schema(engine)
    events = [e for e in audit.events(engine, limit=50) if e.action == "retention"]
    assert len(events) == 1
    assert events[0].user_id == "dpo1" and events[0].person_ids == ()
    detail = events[0].detail
    assert detail["per_source"]["school"] == {"destroy": 8, "undetermined": 0}
    # Counts only: nothing was published yet, and the landing folder is inside its keep.
    assert detail["records_expired"] == 2
    assert detail["published_rows"] == 0 and detail["landing_folders"] == {}
    assert detail["as_of"] == "2026-11-20"


def audited(data, *moments: str):
    """``data``'s operational store, with a practitioner's read of P1 recorded at each of
    ``moments`` (ISO, UTC)."""
    engine = engine_for(f"sqlite:///{data / 'operational.db'}")
    ensure_schema(engine)
    for moment in moments:
        audit.append(
            engine,
            audit.AuditEvent(
                user_id="alice",
                role="social_worker",
                purpose="safeguarding",
                action="read",
                outcome="allowed",
                person_ids=["P1"],
            ),
            at=datetime.fromisoformat(moment).replace(tzinfo=UTC),
        )
    return engine


def test_cli_cuts_the_audit_trail_past_keep_years_and_verify_accepts_the_cut(
    warehouse, tmp_path, monkeypatch
):
    con, load = warehouse
    load("school", "2026-11-01", school_tables(SCHOOL))
    con.close()
    data = tmp_path / "data"
    config = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, config)
    (config / "audit.yaml").write_text("keep_years: 2\n")
    monkeypatch.setenv("SDV_CONFIG_DIR", str(config))
    # Two years before 20 November 2026, and a day less.
    engine = audited(data, "2024-11-20T23:00:00", "2024-11-21T08:00:00")
    window = "kept 2 year(s): events recorded before 2024-11-21 00:00 UTC"

    dry = sdv(data, "--dry-run", "--as-of", "2026-11-20")
    assert dry.exit_code == 0, dry.output
    assert f"Audit trail ({window}): 1 event(s) would go." in dry.output
    assert len(audit.events(engine)) == 2

    real = sdv(data, "--as-of", "2026-11-20", "--by", "dana")
    assert real.exit_code == 0, real.output
    assert f"Audit trail ({window}): destroyed 1 event(s)" in real.output
    kept = audit.events(engine)
    assert [(e.seq, e.action) for e in kept] == [
        (2, "read"),
        (3, "audit_retention"),
        (4, "retention"),
    ]
    assert kept[1].user_id == "dana" and kept[2].detail["audit_events"] == 1
    verified = CliRunner().invoke(app, ["audit", "verify", "--data-dir", str(data)])
    assert verified.exit_code == 0, verified.output
    assert "retention destroyed seq 1 to 1" in verified.output
    engine.dispose()

    # Without keep_years the trail is kept in full, and the run says so.
    (config / "audit.yaml").write_text("# kept in full\n")
    kept_all = sdv(data, "--as-of", "2030-01-01")
    assert kept_all.exit_code == 0, kept_all.output
    assert (
        "Audit trail: no keep_years in config/audit.yaml, so every event is kept."
        in kept_all.output
    )


def test_a_tampered_audit_trail_is_kept_and_reported_after_the_rows_go(
    warehouse, tmp_path, monkeypatch
):
    """Retention never destroys audit events that fail verification (that would destroy
    the evidence): the run destroys the expired rows, records that as usual, keeps the
    trail and exits 1 naming the problem."""
    con, load = warehouse
    load("school", "2026-11-01", school_tables(SCHOOL))
    con.close()
    data = tmp_path / "data"
    engine = audited(data, "2019-01-01", "2019-01-02")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_events SET user_id = 'mallory' WHERE seq = 1")

    run = sdv(data, "--as-of", "2026-11-20")
    assert run.exit_code == 1
    assert "do not verify, so none were destroyed" in run.output and "seq 1" in run.output
    check = connect(data / "warehouse.duckdb")
    assert keys(check, "school", "pupils", "upn")["staged"] == ["A900000000002"]
    check.close()
    kept = audit.events(engine)
    assert [(e.seq, e.action) for e in kept] == [(1, "read"), (2, "read"), (3, "retention")]
    assert kept[2].detail["per_source"]["school"]["destroy"] == 8
    assert "do not verify" in kept[2].detail["audit_trail_refused"]
    assert kept[2].detail["audit_events"] is None
    engine.dispose()


def test_cli_explains_bad_input(tmp_path):
    bad = sdv(tmp_path, "--as-of", "20/11/2026")
    assert bad.exit_code != 0 and "is not a date (YYYY-MM-DD)" in bad.output
    missing = sdv(tmp_path / "nowhere", "--dry-run")
    assert missing.exit_code == 1 and "no warehouse" in missing.output


def test_a_county_run_is_idempotent_and_covers_every_relation(published_county, tmp_path):
    """On a date when police and health records have expired, every ingest relation of
    every source is planned, exactly the planned rows leave each one (and the deliveries
    naming them), the counts are recorded per source, and a second run finds nothing."""
    from warehouse.sources import load_sources
    from warehouse.store import relation_name

    county = published_county.copy(tmp_path / "county")
    as_of = D("2031-06-01")
    con = connect(county.warehouse)
    try:
        sources = load_sources()
        assert retention.plan(con, sources).as_of == D("2026-11-20")  # the newest extract
        plan = retention.plan(con, sources, as_of)
        assert plan.as_of == as_of
        stored = {
            (schema, name)
            for schema, name in con.execute(
                "select schema_name, table_name from duckdb_tables() "
                "where schema_name in ('raw', 'staged', 'quarantine')"
            ).fetchall()
        }
        planned = {(r.schema, relation_name(r.source, r.table)) for r in plan.rows_seen}
        assert planned == stored and plan.counts.height == len(stored) == 42
        assert plan.destroyed > 0 and plan.expired_records, "the county needs expired rows"

        def count(name: str) -> int:
            return con.execute(f"select count(*) from {name}").fetchall()[0][0]

        before = {rel: count(rel.name) for rel in plan.rows_seen}
        assert before == plan.rows_seen

        done = retention.apply(con, plan)

        for rel, rows in before.items():
            gone = len(plan.targets.get(rel, ()))
            assert count(rel.name) == rows - gone, rel.name
        for source in sources.values():  # no delivery still names a destroyed record
            for table in source.tables:
                name = relation_name(source.name, table)
                if ("raw", name) in stored:
                    assert count(f'delivered."{name}"') == count(f'raw."{name}"'), name
        ingest = {k: v for k, v in done.destroyed.items() if ":linked." not in k}
        assert sum(n for k, n in ingest.items() if ":delivered." not in k) == plan.destroyed
        assert any(":linked." in k for k in done.destroyed), "linkage's copies go too"
        again = retention.plan(con, sources, as_of)
        assert again.destroyed == 0 and again.targets == {} and not again.expired_records
        assert not any(retention.apply(con, again).destroyed.values())  # a second run
        assert {rel: count(rel.name) for rel in before} == again.rows_seen
        after = dict(
            con.execute(
                "select source, sum(rows_destroyed) from meta.retention_runs group by 1"
            ).fetchall()
        )
        assert after == {s: v["destroy"] for s, v in plan.per_source().items()}
        assert after["police"] > 0
    finally:
        con.close()


def test_the_nightly_asset_destroys_and_reports_counts_per_source(warehouse, tmp_path, sources):
    import dagster as dg

    from assets.resources import FamilyViewSettings, LandingZone, OperationalStore, Warehouse
    from assets.retention import build_retention_asset

    con, load = warehouse
    load("school", "2026-11-01", school_tables(SCHOOL))
    con.close()
    data = tmp_path / "data"
    engine = audited(data, "2020-11-01")  # more than six years before 20 November 2026
    result = dg.materialize(
        [build_retention_asset(sources, AuditConfig(keep_years=6))],
        resources={
            "warehouse": Warehouse(path=str(data / "warehouse.duckdb")),
            "landing": LandingZone(path=str(tmp_path / "landing")),
            "operational": OperationalStore(url=f"sqlite:///{data / 'operational.db'}"),
            "family_view": FamilyViewSettings(
                published_dir=str(data / "published"), data_dir=str(data)
            ),
        },
        run_config={"ops": {"retention": {"config": {"as_of": "2026-11-20"}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("retention")[0].metadata
    assert meta["rows_destroyed"].value == 8
    assert meta["per_source"].value == {"school": {"destroy": 8, "undetermined": 0}}
    # Loaded today (the wall clock), so its folder is well inside the keep period.
    assert meta["landing_folders_destroyed"].value == {}
    assert meta["audit_events_destroyed"].value == 1
    assert (tmp_path / "landing" / "school" / "2026-11-01").is_dir()
    check = connect(data / "warehouse.duckdb")
    assert keys(check, "school", "pupils", "upn")["raw"] == ["A900000000002"]
    check.close()
    # The same audit events as `sdv retention`, the scheduler as the actor.
    events = [e for e in audit.events(engine, limit=50) if e.purpose == "retention"]
    assert [(e.action, e.user_id, e.role) for e in events] == [
        ("audit_retention", "dagster", "system"),
        ("retention", "dagster", "system"),
    ]
    assert audit.verify(engine).base_seq == 1
    assert events[1].detail["run_id"] == meta["run_id"].value
    assert events[1].detail["per_source"] == meta["per_source"].value


PUPIL_GONE, PUPIL_KEPT = "school|pupils|A900000000001", "school|pupils|A900000000002"


def operational_records(engine) -> dict[str, list[list[str]]]:
    """Per operational table about records, the records each row names, in row order."""
    from warehouse.rectification import rectifications
    from warehouse.restriction import restrictions
    from warehouse.review import person_split_records, review_decisions, review_pairs

    with engine.connect() as conn:
        return {
            "review_pairs": [
                [r.record_id_l, r.record_id_r] for r in conn.execute(review_pairs.select())
            ],
            "review_decisions": [
                [r.record_id_l, r.record_id_r] for r in conn.execute(review_decisions.select())
            ],
            "person_split_records": [
                [r.record_id] for r in conn.execute(person_split_records.select())
            ],
            "restrictions": [json.loads(r.record_ids) for r in conn.execute(restrictions.select())],
            "rectifications": [
                json.loads(r.record_ids) for r in conn.execute(rectifications.select())
            ],
        }


def test_operational_rows_about_expired_records_go_with_them_and_are_counted(
    warehouse, tmp_path, sources
):
    """On the first pupil's 25th birthday, what people recorded about their record in the
    operational store (a review pair with its decision, a split's group, a restriction, a
    correction) goes with it, counted in the run; the second pupil's rows, still in their
    period, stay. A dry run counts the same and changes nothing."""
    from warehouse import rectification, review
    from warehouse.restriction import restrict

    con, load = warehouse
    load("school", "2026-11-01", school_tables(SCHOOL))
    con.close()
    data = tmp_path / "data"
    engine = engine_for(f"sqlite:///{data / 'operational.db'}")
    ensure_schema(engine)
    shown = json.dumps({"forename": "Test", "surname": "Pupil", "dob": "2001-11-20"})
    pairs = [(PUPIL_GONE, "health|patients|H1"), (PUPIL_KEPT, "health|patients|H2")]
    review.enqueue(
        engine,
        pl.DataFrame(
            [
                {"record_id_l": left, "record_id_r": right, "match_probability": 0.5,
                 "match_weight": 0.0, "levels": "{}", "record_l": shown, "record_r": shown}
                for left, right in pairs
            ]
        ),
        "run-1",
    )  # fmt: skip
    for (left, right), upn in zip(pairs, SCHOOL, strict=True):
        review.decide_records(engine, left, right, "reject", "rev1", "different people")
        restrict(engine, f"P-{upn}", [left], "objection pending", "dpo1")
        rectification.rectify(
            engine, person_id=f"P-{upn}", record_ids=[left], field="dob", old=SCHOOL[upn],
            new="2001-01-01", current=SCHOOL[upn], field_source=None,
            reason="birth certificate seen", requester="the pupil", recorded_by="dpo1",
        )  # fmt: skip
    review.split_person(engine, "P-9", [[PUPIL_GONE], [PUPIL_KEPT]], "rev1", "two pupils")
    before = operational_records(engine)
    assert all(any(PUPIL_GONE in names for names in rows) for rows in before.values())

    def run(dry_run: bool) -> retention.Enforced:
        return retention.enforce(
            data / "warehouse.duckdb",
            tmp_path / "landing",
            sources,
            published_dir=data / "published",
            data_dir=data,
            operational=engine,
            actor=("dpo1", "operator"),
            as_of=D("2026-11-20"),
            dry_run=dry_run,
        )

    due = {
        "review_pairs": 1,
        "review_decisions": 1,
        "person_split_records": 1,
        "person_splits": 0,  # it still holds the second pupil's group
        "restrictions": 1,
        "rectifications": 1,
    }
    dry = run(dry_run=True)
    assert PUPIL_GONE in dry.plan.expired_records and PUPIL_KEPT not in dry.plan.expired_records
    assert dry.operational == due
    assert operational_records(engine) == before

    done = run(dry_run=False)
    assert done.operational == due
    assert operational_records(engine) == {
        table: [names for names in rows if PUPIL_GONE not in names]
        for table, rows in before.items()
    }
    check = connect(data / "warehouse.duckdb", read_only=True)
    try:
        recorded = retention.runs(check).filter(pl.col("layer") == "operational")
    finally:
        check.close()
    assert dict(recorded.select("table_name", "rows_destroyed").iter_rows()) == due
    assert set(recorded["run_id"]) == {done.done.run_id}
    (event,) = [e for e in audit.events(engine, limit=50) if e.action == "retention"]
    assert event.detail["operational_rows"] == due


def values(con, sql: str) -> set:
    return {r for (r,) in con.execute(sql).fetchall()}


def test_retention_reaches_the_linked_layer_every_snapshot_and_the_file_bytes(
    published_county, tmp_path, monkeypatch
):
    """Police records six years after the person's last incident: gone from raw, staged,
    quarantine, linked, every kept snapshot and every analysts' file, and from the files'
    bytes; incidents still in their period stay everywhere."""
    from family_view_county import PSEUDONYM_KEY

    from warehouse.pseudonymise import pseudonym
    from warehouse.sources import load_sources

    # The key the county's analysts' files were built with (the CLI reads it from here).
    monkeypatch.setenv("SDV_PSEUDONYM_KEY", PSEUDONYM_KEY.hex())
    county = published_county.copy(tmp_path / "county")
    county.publish()  # two kept snapshots: both must be purged
    as_of = D("2031-06-01")
    con = connect(county.warehouse, read_only=True)
    try:
        police = {"police": load_sources()["police"]}
        plan = retention.plan(con, police, as_of)
        refs = {
            rel.schema: {
                r
                for (r,) in con.execute(
                    f"select incident_ref from {rel.name} where rowid in "
                    f"(select unnest(?::bigint[]))",
                    [sorted(rowids)],
                ).fetchall()
            }
            for rel, rowids in plan.targets.items()
            if rel.table == "incidents"
        }
        kept = values(con, "select incident_ref from staged.police__incidents") - refs["staged"]
    finally:
        con.close()
    gone = set().union(*refs.values())
    assert plan.expired_records and gone and kept, "the county needs expired and kept incidents"
    # The people holding an expired police record, and those whose police records are all
    # still in their period, by their keyed hash: what the analysts' files know them by.
    expired, in_period = set(), set()
    for path in county.published.rglob("family-view-*.duckdb"):
        snap = duckdb.connect(str(path), read_only=True)
        try:
            for person, record in snap.execute(
                "select person_id, record_id from person_records where record_id like 'police|%'"
            ).fetchall():
                (expired if record in plan.expired_records else in_period).add(person)
        finally:
            snap.close()
    in_period -= expired
    expired = sorted(pseudonym(p, PSEUDONYM_KEY) for p in expired)
    in_period = sorted(pseudonym(p, PSEUDONYM_KEY) for p in in_period)

    def police_rows(path, people: list[str]) -> dict[str, int]:
        """Per table, the analysts' file's police rows about ``people``."""
        analyst = duckdb.connect(str(path), read_only=True)
        try:
            counts = {
                table: analyst.execute(
                    f"select count(*) from {table} where agency = 'police' "
                    "and person_key in (select unnest(?::varchar[]))",
                    [people],
                ).fetchall()[0][0]
                for table in ("timeline", "involvement")
            }
            counts["person"] = analyst.execute(
                "select count(*) from person where list_contains(string_split(sources, ','), "
                "'police') and person_key in (select unnest(?::varchar[]))",
                [people],
            ).fetchall()[0][0]
        finally:
            analyst.close()
        return counts

    analysts = sorted(county.published.rglob("analyst-*.duckdb"))
    assert len(analysts) == 2

    def stem(path: Path) -> str:
        return path.name.split(".")[0]  # a rewritten file is named <stem>.eXXXXXX

    kept_rows = {stem(p): police_rows(p, in_period) for p in analysts}
    for path in analysts:
        assert all(police_rows(path, expired).values()), f"{path.name} must hold them before"
        assert all(kept_rows[stem(path)].values()), path.name

    result = CliRunner().invoke(
        app, ["retention", "--as-of", "2031-06-01", "--data-dir", str(county.data)]
    )
    assert result.exit_code == 0, result.output

    con = connect(county.warehouse, read_only=True)
    try:
        for layer in INGEST_SCHEMAS:
            left = {
                r
                for (r,) in con.execute(
                    f"select incident_ref from {layer}.police__incidents"
                ).fetchall()
            }
            assert not left & gone, layer
        assert kept <= {
            r
            for (r,) in con.execute("select incident_ref from staged.police__incidents").fetchall()
        }
        linked = {
            r for (r,) in con.execute("select record_id from linked.person_records").fetchall()
        }
        assert not linked & set(plan.expired_records)
    finally:
        con.close()
    snapshots = sorted(county.published.rglob("family-view-*.duckdb"))
    assert len(snapshots) == 2
    for path in snapshots:
        snap = duckdb.connect(str(path), read_only=True)
        try:
            events = {
                r
                for (r,) in snap.execute(
                    "select source_key from timeline where source = 'police'"
                ).fetchall()
            }
            records = {
                r for (r,) in snap.execute("select record_id from person_records").fetchall()
            }
        finally:
            snap.close()
        assert not events & gone and kept & events, path.name
        assert not records & set(plan.expired_records), path.name
    # Every kept analysts' file (rewritten under a new name): no police row about the
    # people whose police records expired, every one about people still in their period.
    after = sorted(county.published.rglob("analyst-*.duckdb"))
    assert sorted(stem(p) for p in after) == sorted(kept_rows)
    assert not {p.name for p in after} & {p.name for p in analysts}
    for path in after:
        assert police_rows(path, in_period) == kept_rows[stem(path)], path.name
        assert police_rows(path, expired) == {"timeline": 0, "involvement": 0, "person": 0}
        analyst = duckdb.connect(str(path), read_only=True)
        try:  # they stay, with their other sources' rows
            people = analyst.execute(
                "select count(*) from person where person_key in (select unnest(?::varchar[]))",
                [expired],
            ).fetchall()[0][0]
        finally:
            analyst.close()
        assert people == len(expired), path.name
    copies = [serving_path(p) for p in snapshots]  # the API's copies go the same way
    for path in [county.warehouse, *snapshots, *copies]:
        data = path.read_bytes()
        assert not [r for r in sorted(gone) if r.encode() in data], path.name


# --- rows that go while their person stays: what the kept snapshots made of them ------------


def snapshot_files(county) -> tuple[list[Path], list[Path]]:
    folder = county.published / "snapshots"
    return sorted(folder.glob("family-view-*.duckdb")), sorted(folder.glob("analyst-*.duckdb"))


def enforce_county(
    county, tmp_path: Path, sources: dict, as_of: date, *, dry_run: bool = False
) -> retention.Enforced:
    """A retention run over a published county's warehouse and kept snapshots."""
    return retention.enforce(
        county.warehouse,
        tmp_path / "landing",
        sources,
        published_dir=county.published,
        data_dir=county.data,
        operational=county.engine(),
        actor=("dpo1", "operator"),
        as_of=as_of,
        dry_run=dry_run,
    )


def read(path: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def people_of(path: Path, records: set[str]) -> set[str]:
    """The person ids a snapshot file gives these records."""
    sql = "select person_id from person_records where record_id in (select unnest(?::varchar[]))"
    return {p for (p,) in read(path, sql, [sorted(records)])}


def lone_encounters(county, health: dict, as_of: date) -> tuple[set[str], set[str]]:
    """The encounters retention destroys on ``as_of`` while their patients stay, and the
    patients' records."""
    con = connect(county.warehouse, read_only=True)
    try:
        plan = retention.plan(con, health, as_of)
        rowids = next(
            ids
            for rel, ids in plan.targets.items()
            if (rel.schema, rel.table) == ("staged", "encounters")
        )
        gone = con.execute(
            "select encounter_id, local_patient_id from staged.health__encounters "
            "where rowid in (select unnest(?::bigint[]))",
            [sorted(rowids)],
        ).fetchall()
    finally:
        con.close()
    assert gone and not plan.expired_records, "the county needs an encounter going alone"
    return {e for e, _ in gone}, {f"health|patients|{p}" for _, p in gone}


def test_an_expired_encounter_leaves_every_kept_snapshot_while_its_patient_stays(
    published_county, tmp_path, monkeypatch
):
    """A child's health encounter goes eight years after their last one while their record
    is kept to their 25th birthday. Every kept snapshot (the one `sdv rollback` would serve
    too) and every analysts' file loses the timeline event made from it, down to the files'
    bytes, and keeps the child, their record and every other row about them; the counts are
    reported; a dry run changes nothing."""
    import stat

    from family_view_county import PSEUDONYM_KEY

    from warehouse.pseudonymise import pseudonym
    from warehouse.sources import load_sources

    monkeypatch.setenv("SDV_PSEUDONYM_KEY", PSEUDONYM_KEY.hex())
    county = published_county.copy(tmp_path / "county")
    county.publish()  # two kept snapshots: the current one and the one rollback serves
    health = {"health": load_sources()["health"]}
    as_of = D("2031-06-01")
    encounters, records = lone_encounters(county, health, as_of)
    snapshots, analysts = snapshot_files(county)
    assert len(snapshots) == len(analysts) == 2

    def about(path: Path) -> dict:
        """The patients' people in one snapshot: their events, records and other rows."""
        people = people_of(path, records)
        ids = sorted(people)
        return {
            "people": people,
            "events": set(
                read(
                    path,
                    "select person_id, source, source_key from timeline "
                    "where person_id in (select unnest(?::varchar[]))",
                    [ids],
                )
            ),
            "records": set(
                read(
                    path,
                    "select person_id, record_id from person_records "
                    "where person_id in (select unnest(?::varchar[]))",
                    [ids],
                )
            ),
            **{
                table: sorted(
                    read(
                        path,
                        f"select * from {table} where person_id in (select unnest(?::varchar[]))",
                        [ids],
                    ),
                    key=repr,
                )
                for table in ("involvement", "person", "child_summary")
            },
        }

    def analyst_rows(path: Path, keys: list[str]) -> dict[str, list[tuple]]:
        return {
            table: sorted(
                read(
                    path,
                    f"select * from {table} where person_key in (select unnest(?::varchar[]))",
                    [keys],
                ),
                key=repr,
            )
            for table in ("person", "timeline", "involvement", "child_summary")
        }

    before = {p.name.split(".")[0]: about(p) for p in snapshots}
    for name, seen in before.items():
        made = {(person, "health", e) for person in seen["people"] for e in encounters}
        assert seen["people"] and made <= seen["events"], f"{name} must hold it before"
    people = set().union(*(seen["people"] for seen in before.values()))
    hashed = sorted(pseudonym(p, PSEUDONYM_KEY) for p in people)
    analysts_before = {p.name.split(".")[0]: analyst_rows(p, hashed) for p in analysts}
    files_before = {p.name: p.read_bytes() for p in (county.published / "snapshots").iterdir()}

    def run(dry_run: bool) -> retention.Enforced:
        return enforce_county(county, tmp_path, health, as_of, dry_run=dry_run)

    dry = run(dry_run=True)
    assert dry.published == {}
    assert {p.name: p.read_bytes() for p in (county.published / "snapshots").iterdir()} == (
        files_before
    )

    done = run(dry_run=False)

    snapshots, analysts = snapshot_files(county)
    assert len(snapshots) == len(analysts) == 2
    for path in snapshots:
        seen, was = about(path), before[path.name.split(".")[0]]
        made = {(person, "health", e) for person in was["people"] for e in encounters}
        # The event made from the encounter is gone; the child, their records, their other
        # events, services and summary are all still there.
        assert seen["events"] == was["events"] - made, path.name
        assert seen["people"] == was["people"] and seen["records"] == was["records"]
        for table in ("person", "involvement", "child_summary"):
            assert seen[table] == was[table], (path.name, table)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for copy in (path, serving_path(path)):  # the API's copy too, and no free block
            data = copy.read_bytes()
            assert not [e for e in encounters if e.encode() in data], copy.name
    for path in analysts:
        seen, was = analyst_rows(path, hashed), analysts_before[path.name.split(".")[0]]
        assert {t: rows for t, rows in seen.items() if t != "timeline"} == {
            t: rows for t, rows in was.items() if t != "timeline"
        }, path.name
        health_rows = [r for r in was["timeline"] if r[1] == "health"]
        assert len(seen["timeline"]) == len(was["timeline"]) - len(encounters), path.name
        assert [r for r in seen["timeline"] if r[1] != "health"] == [
            r for r in was["timeline"] if r[1] != "health"
        ]
        assert len([r for r in seen["timeline"] if r[1] == "health"]) == len(health_rows) - len(
            encounters
        )
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # no more readable than before

    # Counted per file and table, and reported the same way in the audit trail.
    expected = len(encounters)
    assert purge.per_table(done.published) == {"timeline": 4 * expected}
    assert all(n == expected for n in done.published.values())
    (event,) = [
        e
        for e in audit.events(county.engine(), limit=50, newest_first=True)
        if e.action == "retention"
    ]
    assert event.detail["published_rows"] == 4 * expected
    assert event.detail["published_tables"] == {"timeline": 4 * expected}


def test_episodes_kept_shorter_than_their_people_leave_services_and_summaries(
    published_county, tmp_path, monkeypatch
):
    """An agreement keeping social care episodes one year after the child's last event, and
    the people themselves 25: once the episodes go, the kept snapshot and its analysts' file
    lose the timeline events and the services made from them, and each child summary made
    from them says what the rest says (no open plan, no key worker); everyone stays."""
    from family_view_county import PSEUDONYM_KEY

    from warehouse.pseudonymise import pseudonym
    from warehouse.sources import RetentionYearsAfterLastEvent, load_sources

    monkeypatch.setenv("SDV_PSEUDONYM_KEY", PSEUDONYM_KEY.hex())
    county = published_county.copy(tmp_path / "county")
    csc = load_sources()["council_csc"]
    shorter = RetentionYearsAfterLastEvent(rule="years_after_last_event", years=1)
    agreement = csc.agreement.model_copy(update={"table_retention": {"episodes": shorter}})
    sources = {"council_csc": csc.model_copy(update={"agreement": agreement})}
    (snapshot_path,), (analyst_path,) = snapshot_files(county)

    def csc_rows(path: Path) -> tuple[int, int]:
        return read(
            path,
            "select (select count(*) from timeline where agency = 'council_csc'), "
            "(select count(*) from involvement where agency = 'council_csc')",
        )[0]

    in_care = dict(
        read(
            snapshot_path,
            "select person_id, social_care_status from child_summary "
            "where social_care_status <> 'none'",
        )
    )
    assert in_care and all(csc_rows(snapshot_path)), "the county needs children in care"
    assert all(csc_rows(analyst_path))
    people = read(snapshot_path, "select count(*) from person")[0][0]
    summaries = read(snapshot_path, "select * from child_summary order by person_id")

    done = enforce_county(county, tmp_path, sources, D("2031-06-01"))
    assert not done.plan.expired_records  # every child's record is kept

    (snapshot_path,), (analyst_path,) = snapshot_files(county)
    assert csc_rows(snapshot_path) == csc_rows(analyst_path) == (0, 0)
    assert read(snapshot_path, "select count(*) from person")[0][0] == people
    after = read(snapshot_path, "select * from child_summary order by person_id")
    assert len(after) == len(summaries)
    columns = [
        c for (c,) in read(snapshot_path, "select column_name from (describe child_summary)")
    ]
    changed = {}
    for old, new in zip(summaries, after, strict=True):
        old, new = dict(zip(columns, old, strict=True)), dict(zip(columns, new, strict=True))
        assert old["person_id"] == new["person_id"]
        if old != new:
            changed[new["person_id"]] = new
    assert set(changed) == set(in_care)
    for row in changed.values():
        assert row["social_care_status"] == "none" and not row["cin_open"]
        assert not row["looked_after"] and not row["cp_open"]
        assert "council_csc" not in row["key_workers"]
    keys = sorted(pseudonym(p, PSEUDONYM_KEY) for p in in_care)
    statuses = read(
        analyst_path,
        "select distinct social_care_status from child_summary "
        "where person_key in (select unnest(?::varchar[]))",
        [keys],
    )
    assert statuses == [("none",)]
    counts = purge.per_table(done.published)
    assert counts["child_summary"] == 2 * len(in_care)
    assert counts["timeline"] > 0 and counts["involvement"] > 0


def test_a_curated_query_that_cannot_be_traced_stops_retention_before_anything_goes(
    warehouse, tmp_path, sources
):
    """Retention finds what the kept snapshots made of a row before destroying it: if a
    curated query cannot be run over the rows, it refuses rather than destroy rows whose
    copies in the snapshots it could not find."""
    from warehouse.curated_config import load_curated_config

    con, load = warehouse
    load(
        "health",
        "2026-11-20",
        {
            "patients": [patient("A", "2005-01-10")],  # 25 in 2030: kept
            "encounters": [
                {
                    "encounter_id": "E1",
                    "local_patient_id": "A",
                    "encounter_type": "ed_attendance",
                    "encounter_date": "2010-03-03",  # gone in 2018
                }
            ],
        },
    )
    before = snapshot(con)
    con.close()
    data = tmp_path / "data"
    (data / "published").mkdir()
    config = load_curated_config()
    broken = [
        q.model_copy(update={"sql": 'select no_such_column from "current".health__encounters'})
        if q.agency == "health"
        else q
        for q in config.timeline
    ]
    with pytest.raises(retention.RetentionError, match="timeline query of health"):
        retention.enforce(
            data / "warehouse.duckdb",
            tmp_path / "landing",
            {"health": sources["health"]},
            published_dir=data / "published",
            data_dir=data,
            operational=engine_for(f"sqlite:///{data / 'operational.db'}"),
            actor=("dpo1", "operator"),
            as_of=D("2026-11-20"),
            curated=config.model_copy(update={"timeline": broken}),
        )
    check = connect(data / "warehouse.duckdb", read_only=True)
    try:
        assert snapshot(check) == before
    finally:
        check.close()


def earlier_health_query(config, key_sql: str):
    """``config`` as it was when the health timeline query keyed encounters by ``key_sql``."""
    timeline = [
        q.model_copy(
            update={"sql": q.sql.replace("encounter_id as event_key", f"{key_sql} as event_key")}
        )
        if q.agency == "health"
        else q
        for q in config.timeline
    ]
    assert timeline != config.timeline, "the health query no longer reads encounter_id"
    return config.model_copy(update={"timeline": timeline})


def stored_info(path: Path) -> dict:
    return {k: json.loads(v) for k, v in read(path, "select key, value from snapshot_info")}


def test_each_kept_snapshot_is_traced_with_the_queries_it_was_built_under(
    published_county, tmp_path, monkeypatch
):
    """The health timeline query keyed each encounter another way when an older kept
    snapshot was built: that snapshot loses the events its own query made of an expired
    encounter, and so does its analysts' file, while the snapshot built under today's
    query loses today's, and one built before snapshots kept their configuration is traced
    with today's. Each snapshot keeps the configuration it was built under through the
    purge; the analysts' files hold only their as-of date."""
    from family_view_county import PSEUDONYM_KEY

    from warehouse.curated_config import load_curated_config
    from warehouse.pseudonymise import pseudonym
    from warehouse.sources import load_sources

    monkeypatch.setenv("SDV_PSEUDONYM_KEY", PSEUDONYM_KEY.hex())
    county = published_county.copy(tmp_path / "county")
    today = load_curated_config()
    earlier = earlier_health_query(today, "'enc-' || encounter_id")
    (legacy,), _ = snapshot_files(county)
    assert stored_info(legacy)["curated_config"] == today.model_dump(mode="json")
    con = duckdb.connect(str(legacy))  # as built before snapshots kept their configuration
    try:
        con.execute("delete from snapshot_info where key = 'curated_config'")
    finally:
        con.close()
    county.publish(earlier)
    county.publish()  # tonight's, under today's query
    health = {"health": load_sources()["health"]}
    as_of = D("2031-06-01")
    encounters, records = lone_encounters(county, health, as_of)
    snapshots, analysts = snapshot_files(county)
    assert len(snapshots) == len(analysts) == 3  # oldest first, each with its analysts' file
    prefixes = ["", "enc-", ""]  # how each snapshot's health query keyed an encounter

    def events(path: Path) -> tuple[set[str], set[tuple]]:
        people = people_of(path, records)
        return people, set(
            read(
                path,
                "select person_id, source, source_key from timeline "
                "where person_id in (select unnest(?::varchar[]))",
                [sorted(people)],
            )
        )

    def analyst_timeline(path: Path, people: set[str]) -> list[tuple]:
        keys = sorted(pseudonym(p, PSEUDONYM_KEY) for p in people)
        return read(
            path,
            "select agency from timeline where person_key in (select unnest(?::varchar[]))",
            [keys],
        )

    before = []
    for path, analyst, prefix in zip(snapshots, analysts, prefixes, strict=True):
        people, seen = events(path)
        made = {(p, "health", prefix + e) for p in people for e in encounters}
        other = "" if prefix else "enc-"  # the other query's key: not in this snapshot
        assert people and made <= seen, path.name
        assert not {(p, "health", other + e) for p in people for e in encounters} & seen
        before.append((people, seen, made, analyst_timeline(analyst, people)))

    done = enforce_county(county, tmp_path, health, as_of)

    snapshots, analysts = snapshot_files(county)
    for path, analyst, (people, seen, made, rows) in zip(snapshots, analysts, before, strict=True):
        assert events(path) == (people, seen - made), path.name
        after = analyst_timeline(analyst, people)
        assert len(after) == len(rows) - len(encounters), analyst.name
        assert sorted(a for (a,) in after if a != "health") == sorted(
            a for (a,) in rows if a != "health"
        )
        assert set(stored_info(analyst)) == {"as_of"}, analyst.name
    assert "curated_config" not in stored_info(snapshots[0])
    assert stored_info(snapshots[1])["curated_config"] == earlier.model_dump(mode="json")
    assert stored_info(snapshots[2])["curated_config"] == today.model_dump(mode="json")
    expected = len(encounters)
    assert purge.per_table(done.published) == {"timeline": 6 * expected}
    assert len(done.published) == 6 and all(n == expected for n in done.published.values())


@pytest.mark.parametrize("stored", ["unreadable", "invalid", "unrunnable"])
def test_a_snapshot_whose_configuration_cannot_be_traced_stops_retention_before_anything_goes(
    published_county, tmp_path, stored
):
    """A kept snapshot's stored configuration that is not JSON, not a valid configuration,
    or whose queries cannot be run over the rows leaves what that snapshot made of them
    unknown: retention refuses, naming the snapshot, before destroying anything."""
    import re

    from warehouse.curated_config import load_curated_config
    from warehouse.sources import load_sources

    county = published_county.copy(tmp_path / "county")
    today = load_curated_config().model_dump(mode="json")
    value = {
        "unreadable": "{not json",
        "invalid": json.dumps(today | {"timeline": [{"agency": "health"}]}),
        "unrunnable": earlier_health_query(
            load_curated_config(), "no_such_column"
        ).model_dump_json(),
    }[stored]
    (path,), _ = snapshot_files(county)
    con = duckdb.connect(str(path))
    try:
        con.execute("update snapshot_info set value = ? where key = 'curated_config'", [value])
    finally:
        con.close()
    health = {"health": load_sources()["health"]}
    as_of = D("2031-06-01")
    lone_encounters(county, health, as_of)  # there are rows to trace
    check = connect(county.warehouse, read_only=True)
    try:
        warehouse_before = snapshot(check)
    finally:
        check.close()
    folder = county.published / "snapshots"
    files_before = {p.name: p.read_bytes() for p in folder.iterdir()}

    with pytest.raises(retention.RetentionError, match=re.escape(path.name)):
        enforce_county(county, tmp_path, health, as_of)

    check = connect(county.warehouse, read_only=True)
    try:
        assert snapshot(check) == warehouse_before
    finally:
        check.close()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files_before


def test_an_analysts_file_loses_as_many_equal_rows_as_its_snapshot_lost():
    """The analysts' file has no event keys: equal rows are interchangeable, so exactly as
    many go as were removed from the snapshot, and no more."""
    from warehouse.derived import _delete_matching

    con = duckdb.connect()
    con.execute("create table timeline (person_key varchar, event_month varchar, role varchar)")
    con.execute(
        "insert into timeline values ('k1', '2022-10', null), ('k1', '2022-10', null), "
        "('k1', '2022-10', null), ('k1', '2022-11', null), ('k2', '2022-10', null)"
    )
    gone = pl.DataFrame(
        {"person_key": ["k1", "k1"], "event_month": ["2022-10", "2022-10"], "role": [None, None]},
        schema={"person_key": pl.String, "event_month": pl.String, "role": pl.String},
    )
    assert _delete_matching(con, "timeline", gone) == 2
    assert sorted(con.execute("select person_key, event_month from timeline").fetchall()) == [
        ("k1", "2022-10"),
        ("k1", "2022-11"),
        ("k2", "2022-10"),
    ]
