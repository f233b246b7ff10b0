"""Records a source stopped sending are still the person's: a pupil's temporary UPN replaced
by a permanent one leaves the old record's rows in ``raw``, and erasure and subject access
must reach them (``warehouse.retired``)."""

from __future__ import annotations

import csv
from datetime import date

import duckdb
import pytest
from conftest import write_delivery
from family_view_county import EXTRACT_DATE, PSEUDONYM_KEY
from test_config import write_config

from assets.linkage import run_linkage
from matching.config import load_linkage_config
from matching.identifiers import upn_check_letter
from warehouse import erasure, retired, sar
from warehouse.landing import Delivery
from warehouse.linked import earlier_ids, ensure_linked_schema
from warehouse.sources import ConfigError, load_source
from warehouse.store import connect, load_delivery, per_delivery_sql

NEW_DAY = "2026-11-21"


def upn(serial: int) -> str:
    """A valid permanent UPN (check letter right), distinct per serial."""
    twelve = f"999{serial:09d}"
    return upn_check_letter(twelve) + twelve


def pupil(key: str, former: str | None = None) -> dict:
    return {
        "upn": key,
        "former_upn": former,
        "school_urn": "100001",
        "legal_forename": "Test",
        "legal_surname": "Pupil",
        "dob": "2015-03-04",
    }


def school(*pupils: dict) -> dict:
    """The pupils, and one attendance row each (about the pupil through their UPN)."""
    attendance = [
        {"upn": p["upn"], "school_urn": "100001", "term": "2025-AUT", "sessions_possible": "140"}
        for p in pupils
    ]
    return {"pupils": list(pupils), "contacts": [], "attendance": attendance, "exclusions": []}


@pytest.fixture
def load(tmp_path, delivery_writer, sources):
    con = connect(tmp_path / "warehouse.duckdb")

    def _load(day: str, *pupils: dict) -> duckdb.DuckDBPyConnection:
        folder = delivery_writer("school", day, school(*pupils))
        load_delivery(con, Delivery("school", date.fromisoformat(day), folder), sources["school"])
        return con

    yield _load
    con.close()


TEMP, FIRST, SECOND = upn(1)[:-1] + "A", upn(2), upn(3)


def test_former_keys_lead_back_through_every_earlier_key(load, sources):
    """A temporary UPN replaced, then the replacement corrected: tonight's record leads to
    both earlier ones, whatever case and spacing the source wrote the former UPN in."""
    load("2026-09-01", pupil(TEMP))
    load("2026-10-01", pupil(FIRST, former=f" {TEMP.lower()} "))
    con = load("2026-11-01", pupil(SECOND, former=FIRST))
    current = {f"school|pupils|{SECOND}"}
    assert retired.predecessors(con, sources, current) == {
        f"school|pupils|{FIRST}",
        f"school|pupils|{TEMP}",
    }
    assert retired.records_of(con, sources, "P1", current) == {
        f"school|pupils|{FIRST}",
        f"school|pupils|{TEMP}",
    }
    # A record with no former key has no predecessors.
    assert retired.predecessors(con, sources, {f"school|pupils|{TEMP}"}) == set()


def test_a_former_key_no_delivery_carried_leads_nowhere(load, sources):
    """Nothing is held under a key never delivered: no record to erase, none to tombstone."""
    con = load("2026-11-01", pupil(FIRST, former=upn(99)))
    assert retired.predecessors(con, sources, {f"school|pupils|{FIRST}"}) == set()


def test_a_former_key_linkage_gives_to_someone_else_is_not_taken(load, sources):
    """The old UPN is still delivered and linkage put it with another person: it is theirs."""
    con = load("2026-11-01", pupil(TEMP), pupil(FIRST, former=TEMP))
    ensure_linked_schema(con)
    con.execute(
        "create table linked.person_records as select * from (values "
        f"('school|pupils|{TEMP}', 'P2'), ('school|pupils|{FIRST}', 'P1')) t(record_id, person_id)"
    )
    assert retired.records_of(con, sources, "P1", {f"school|pupils|{FIRST}"}) == set()
    assert retired.records_of(con, sources, "P2", {f"school|pupils|{TEMP}"}) == set()


def test_retired_records_follow_merges_but_not_splits(load, sources):
    con = load("2026-11-01", pupil(FIRST))
    ensure_linked_schema(con)
    con.execute(
        "insert into linked.retired_records values "
        "('school|pupils|R1', 'P1', 'run1'), ('school|pupils|R2', 'P2', 'run1'), "
        "('school|pupils|R3', 'P3', 'run1'), ('school|pupils|R4', 'P4', 'run1')"
    )
    con.execute(
        "insert into linked.person_events values "
        "('run2', 'merge', 'P1', ['P1', 'P2'], 5), ('run3', 'merge', 'P2', ['P2', 'P3'], 3), "
        "('run3', 'split', 'P5', ['P1'], 1), ('run4', 'merge', 'P6', ['P4', 'P6'], 2)"
    )
    # P3 went into P2, P2 into P1: all three ids' retired records are P1's now.
    assert earlier_ids(con, "P1", merges_only=True) == {"P2", "P3"}
    assert retired.records_of(con, sources, "P1", set()) == {
        "school|pupils|R1",
        "school|pupils|R2",
        "school|pupils|R3",
    }
    # P5 split from P1: which of the two an old record was is not known, so neither gives it
    # to P5.
    assert retired.records_of(con, sources, "P5", set()) == set()


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (
            lambda d: d["tables"]["attendance"].update(former_keys={"upn": "upn"}),
            "former_keys is only for person_level tables",
        ),
        (
            lambda d: d["tables"]["pupils"].update(former_keys={"old_upn": "upn"}),
            "former_keys names 'old_upn', not in columns",
        ),
        (
            lambda d: d["tables"]["pupils"].update(former_keys={"former_upn": "school_urn"}),
            "former_keys maps 'former_upn' to 'school_urn', not a local_key column",
        ),
        (
            lambda d: d["tables"]["contacts"].update(former_keys={"upn": "upn"}),
            "former_keys must give every local_key column once",
        ),
    ],
    ids=["not-a-person-table", "unknown-column", "not-a-key", "part-of-a-key"],
)
def test_former_keys_mistakes_are_refused_naming_the_table(tmp_path, mutate, problem):
    path = write_config(tmp_path, "school", mutate)
    with pytest.raises(ConfigError, match=problem):
        load_source(path)


# --- the whole path: a replaced UPN in a linked, published county -------------------------


def _rewritten_school(county, sources, old: str, new: str) -> None:
    """The school's delivery again, a day later, with one pupil's UPN replaced: every row
    keyed ``old`` now ``new``, the pupil row saying ``former_upn: old``."""
    generated = county.root / "generated" / "landing" / "school" / EXTRACT_DATE.isoformat()
    source = sources["school"]
    tables = {}
    for table in source.tables:
        with (generated / source.file_name(table)).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            if row["upn"] == old:
                row["upn"] = new
                if table == "pupils":
                    row["former_upn"] = old
        tables[table] = rows
    folder = write_delivery(county.root / "landing2", source, NEW_DAY, tables)
    con = connect(county.warehouse)
    try:
        load_delivery(con, Delivery("school", date.fromisoformat(NEW_DAY), folder), source)
        run_linkage(con, county.engine(), load_linkage_config(), county.data / "models")
    finally:
        con.close()
    county.publish()


def _raw_upns(county, table: str) -> set[str]:
    con = county.connect()
    try:
        rows = con.execute(f"select upn from ({per_delivery_sql('raw', f'school__{table}')})")
        return {r for (r,) in rows.fetchall()}
    finally:
        con.close()


def test_erasure_and_subject_access_reach_a_replaced_upn(published_county, tmp_path, sources):
    county = published_county.copy(tmp_path / "county")
    con = county.connect()
    try:
        old = con.execute(
            "select p.upn from current.school__pupils p "
            "join current.school__attendance a using (upn) "
            "where p.former_upn is null order by p.upn limit 1"
        ).fetchall()[0][0]
    finally:
        con.close()
    new = upn(424242)
    _rewritten_school(county, sources, old, new)

    con = county.connect()
    try:
        (person,) = con.execute(
            "select person_id from linked.person_records where record_id = ?",
            [f"school|pupils|{new}"],
        ).fetchall()[0]
        retired_rows = dict(
            con.execute(
                "select record_id, person_id from linked.retired_records where record_id like ?",
                [f"school|%|{old}%"],
            ).fetchall()
        )
    finally:
        con.close()
    assert f"school|pupils|{old}" in retired_rows  # no longer delivered, its person kept

    gathered = sar.gather(
        warehouse=county.warehouse,
        store=county.store(),
        engine=county.engine(),
        sources=sources,
        person_id=person,
        by="dpo1",
        reason="SAR-21",
    )
    assert f"school|pupils|{old}" in gathered.subject.retired_record_ids
    raw_pupils = {
        row["upn"]
        for b in gathered.blocks
        if (b.layer, b.source, b.table) == ("raw", "school", "pupils")
        for row in b.rows.to_dicts()
    }
    assert {old, new} <= raw_pupils
    assert old in {
        row["upn"]
        for b in gathered.section(sar.MAIN)
        if (b.layer, b.source, b.table) == ("raw", "school", "attendance")
        for row in b.rows.to_dicts()
    }
    linked = {
        row["record_id"]
        for b in gathered.blocks
        if (b.layer, b.table) == ("linked", "retired_records")
        for row in b.rows.to_dicts()
    }
    assert f"school|pupils|{old}" in linked

    assert old in _raw_upns(county, "pupils") and old in _raw_upns(county, "attendance")
    report = erasure.erase(
        person_id=person,
        reason="Art. 17 request upheld",
        upheld_by="dpo1",
        recorded_by="dpo1",
        warehouse=county.warehouse,
        store=county.store(),
        engine=county.engine(),
        sources=sources,
        key=PSEUDONYM_KEY,
    )
    assert report.records >= 2
    for table in ("pupils", "attendance"):
        assert not {old, new} & _raw_upns(county, table), table
    con = county.connect()
    try:
        left = con.execute(
            "select count(*) from linked.retired_records where record_id like ?",
            [f"%{old}%"],
        ).fetchall()[0][0]
    finally:
        con.close()
    assert left == 0
