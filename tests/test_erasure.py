"""Erasure where upheld: after ``sdv erase`` no DuckDB file holds the person's identifiers
(by table and by raw bytes), everyone else is untouched, the access layer no longer finds
them, the audit records the fact, and a redelivery of their records is quarantined instead
of bringing them back."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
import sqlalchemy as sa
from conftest import police_tables, sdv_load
from family_view_county import PSEUDONYM_KEY
from typer.testing import CliRunner

from assets.linkage import run_linkage
from matching.config import load_linkage_config
from pipelines.cli import app
from warehouse import audit, erasure, purge, rectification, review
from warehouse.access import AccessLayer, NotFound, User
from warehouse.policy import load_policy
from warehouse.pseudonymise import pseudonym
from warehouse.reader import RawTable, parse_csv
from warehouse.restriction import restrict, restrictions
from warehouse.serving import SUFFIX as SERVING_SUFFIX
from warehouse.staging import ERASED, stage_table
from warehouse.store import connect
from warehouse.tombstone import Tombstones, record_hash

NEW_DATE = "2026-11-21"


@pytest.fixture
def county(published_county, tmp_path, monkeypatch):
    monkeypatch.setenv("SDV_PSEUDONYM_KEY", PSEUDONYM_KEY.hex())
    return published_county.copy(tmp_path / "county")


@dataclass(frozen=True)
class Identity:
    person_id: str
    record_ids: list[str]
    tokens: set[str]  # person id and its keyed hash, local keys, UPNs: never a whole token
    nhs_numbers: set[str]  # digits only
    name_dob: tuple[str, str, str]  # forename, surname, dob (ISO)


def _child(county) -> str:
    """A child with records in several sources, one of them a school pupil record (so
    other people's school contact rows name them too)."""
    with county.store().reader() as con:
        return con.sql(
            """
            select r.person_id from person_records r join child_summary c using (person_id)
            group by r.person_id
            having count(distinct split_part(r.record_id, '|', 1)) >= 4
               and bool_or(r.record_id like 'school|pupils|%')
            order by count(*) desc, r.person_id limit 1
            """
        ).fetchall()[0][0]


def _identity(county, person_id: str) -> Identity:
    """Everything identifying the person, gathered before the erasure."""
    with county.store().reader() as con:
        records = [
            r
            for (r,) in con.sql(
                "select record_id from person_records where person_id = ?", params=[person_id]
            ).fetchall()
        ]
        forename, surname, dob = con.sql(
            "select forename, surname, cast(dob as varchar) from person where person_id = ?",
            params=[person_id],
        ).fetchall()[0]
    # The analysts' files know the person only by the keyed hash of their id (person_key).
    tokens = {person_id, pseudonym(person_id, PSEUDONYM_KEY)}
    nhs: set[str] = set()
    con = county.connect()
    try:
        for record in records:  # a contact's key is UPN|priority: the priority is no id
            tokens.update(p for p in record.split("|", 2)[2].split("|") if len(p) > 3)
        for table, column in (
            ("council_csc__people", "nhs_number"),
            ("council_eh__people", "nhs_number"),
            ("health__patients", "nhs_number"),
            ("council_csc__people", "upn"),
            ("council_eh__people", "upn"),
            ("school__pupils", "upn"),
        ):
            source = table.split("__")[0]
            key = {
                "council_csc": "csc_person_id",
                "council_eh": "eh_person_id",
                "health": "local_patient_id",
                "school": "upn",
            }[source]
            keys = [r.split("|")[2] for r in records if r.startswith(f"{source}|")]
            values = con.sql(
                f'select distinct "{column}" from raw.{table} where "{key}" in '
                "(select unnest(?::varchar[]))",
                params=[keys],
            ).fetchall()
            for (value,) in values:
                if value and column == "nhs_number":
                    nhs.add(value.replace(" ", ""))
                elif value:
                    tokens.add(value.strip().upper())
    finally:
        con.close()
    return Identity(person_id, records, tokens, nhs, (forename, surname, dob))


def _files(data: Path) -> list[Path]:
    """Every DuckDB file and every snapshot's serving copy (SQLite) under ``data``."""
    found = [*data.rglob("*.duckdb"), *data.rglob(f"*{SERVING_SUFFIX}")]
    return sorted(p for p in found if p.is_file() and not p.is_symlink())


def _from_sqlite(path: Path, wanted: Callable[[str], bool] = lambda _: True):
    """A SQLite file (a serving copy, the operational store) loaded into an in-memory DuckDB,
    every value as text, so the same scan reads every kind of file; only the ``wanted``
    tables."""
    con = duckdb.connect()
    source = sqlite3.connect(path)
    try:
        names = [r for (r,) in source.execute("select name from sqlite_master where type='table'")]
        for name in filter(wanted, names):
            cursor = source.execute(f'select * from "{name}"')
            columns = [d[0] for d in cursor.description]
            rows = [[None if v is None else str(v) for v in row] for row in cursor.fetchall()]
            frame = pl.DataFrame(rows, schema=dict.fromkeys(columns, pl.String), orient="row")
            con.register("_serving", frame.to_arrow())
            con.execute(f'create table "{name}" as select * from _serving')
            con.unregister("_serving")
    finally:
        source.close()
    return con


def _open(path: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection on ``path``; a serving copy (SQLite) is loaded into memory."""
    if not path.name.endswith(SERVING_SUFFIX):
        return duckdb.connect(str(path), read_only=True)
    return _from_sqlite(path)


def _operational_hits(county, who: Identity) -> list[str]:
    """Tables of the operational store holding any of the person's identifiers, but for
    what an erasure keeps on purpose (warehouse.erasure): its own row (who upheld what,
    when; linkage never issues the id again) and the audit trail's ids. The trail names
    the person by id (its person columns, a read's detail) but holds none of their values:
    it is scanned for everything else."""
    path = county.data / "operational.db"
    ids = {who.person_id, pseudonym(who.person_id, PSEUDONYM_KEY)}
    trail = _from_sqlite(path, lambda name: name.startswith("audit_"))
    rest = _from_sqlite(path, lambda name: not name.startswith("audit_") and name != "erasures")
    return [
        *_hits(path, replace(who, tokens=who.tokens - ids), trail),
        *_hits(path, who, rest),
    ]


def _hits(path: Path, who: Identity, con: duckdb.DuckDBPyConnection | None = None) -> list[str]:
    """Tables of one file (or of ``con``, its contents loaded) holding any of the person's
    identifiers in any column."""
    found = []
    con = con or _open(path)
    try:
        tables = con.sql(
            "select schema_name, table_name from duckdb_tables() where not internal"
        ).fetchall()
        forename, surname, dob = (v.lower() for v in who.name_dob)
        for schema, table in tables:
            columns = [
                c
                for (c,) in con.sql(
                    "select column_name from duckdb_columns() where schema_name = ? "
                    "and table_name = ?",
                    params=[schema, table],
                ).fetchall()
            ]
            row = " || ' ' || ".join(f"coalesce(cast(\"{c}\" as varchar), '')" for c in columns)
            tokens = f"regexp_split_to_array(lower({row}), '[^a-z0-9]+')"
            hit = con.sql(
                f"""
                select count(*) from "{schema}"."{table}"
                where list_has_any({tokens}, ?::varchar[])
                   or exists (select 1 from unnest(?::varchar[]) n(v)
                              where contains(replace({row}, ' ', ''), n.v))
                   or (list_contains({tokens}, ?) and list_contains({tokens}, ?)
                       and contains({row}, ?))
                """,
                params=[
                    sorted(t.lower() for t in who.tokens),
                    sorted(who.nhs_numbers),
                    forename,
                    surname,
                    dob,
                ],
            ).fetchall()[0][0]
            if hit:
                found.append(f"{path.name}:{schema}.{table} ({hit})")
    finally:
        con.close()
    return found


def _in_bytes(path: Path, who: Identity) -> set[str]:
    data = path.read_bytes()
    return {v for v in who.tokens | who.nhs_numbers if len(v) >= 7 and v.encode() in data}


def _counts(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {
            f"{s}.{t}": con.sql(f'select count(*) from "{s}"."{t}"').fetchall()[0][0]
            for s, t in con.sql(
                "select schema_name, table_name from duckdb_tables() where not internal"
            ).fetchall()
        }
    finally:
        con.close()


def _landing(county) -> Path:
    return county.root / "generated" / "landing"


def _erase(county, person_id: str, *extra: str):
    return CliRunner().invoke(
        app,
        [
            "erase",
            person_id,
            "--reason",
            "Art. 17 request upheld",
            "--upheld-by",
            "dpo1",
            "--by",
            "dpo1",
            *extra,
            "--data-dir",
            str(county.data),
        ],
    )


def _redeliver(county, outbox: Path) -> Path:
    """Every source's delivery again, as a new extract (a full snapshot, as agencies send),
    from the agencies' own copies (``outbox``)."""
    landing = _landing(county)
    for source in sorted(p for p in outbox.iterdir() if p.is_dir()):
        old = sorted(p for p in source.iterdir() if p.is_dir())[-1]
        new = landing / source.name / NEW_DATE
        shutil.copytree(old, new)
        manifest = new / "manifest.json"
        if manifest.exists():
            data = json.loads(manifest.read_text())
            manifest.write_text(json.dumps({**data, "extract_date": NEW_DATE}))
    return landing


def test_erasure_leaves_no_trace_and_a_redelivery_is_quarantined(county):
    county.publish()  # two kept snapshots (and analysts' files): both must be purged
    child = _child(county)
    who = _identity(county, child)
    engine = county.engine()
    with county.store().reader() as con:
        a, b, c = (r for (r,) in con.sql(
            "select min(record_id) from person_records where person_id <> ? "
            "group by person_id order by 1 limit 3", params=[child]).fetchall())  # fmt: skip
    review.decide_records(engine, who.record_ids[0], a, "reject", "rev1", "different people")
    review.decide_records(engine, b, c, "reject", "rev1", "different people")
    assert len({r.split("|")[0] for r in who.record_ids}) >= 4
    before_files = _files(county.data)
    assert any(_hits(p, who) for p in before_files), "the scan must see the person before"
    assert _in_bytes(county.warehouse, who), "the byte scan must see the person before"
    serving = [p for p in before_files if p.name.endswith(SERVING_SUFFIX)]
    assert len(serving) == 2 and all(_hits(p, who) for p in serving), "the API's copies too"
    analysts = [p for p in before_files if p.name.startswith("analyst-")]
    assert len(analysts) == 2, "both kept analysts' files are scanned"
    for path in analysts:  # by the keyed hash alone: no name, NHS number or local key there
        assert _hits(path, who) and _in_bytes(path, who), f"{path.name} must hold them before"
    with county.store().reader() as con:
        other = con.sql(
            "select * from person where person_id <> ? order by person_id limit 1",
            params=[child],
        ).pl()
        people_before = con.sql("select count(*) from person").fetchall()[0][0]
    snapshot_before = _counts(county.store().current_path())
    access = AccessLayer(county.store(), load_policy(), county.engine())
    social = User("sw", "social_worker")
    assert access.person(social, "safeguarding", child)["person_id"] == child
    restrict(county.engine(), child, who.record_ids, "objection pending", "dpo1")
    dob = who.name_dob[2]
    rectification.rectify(
        engine, person_id=child, record_ids=who.record_ids, field="dob", old=dob,
        new=(date.fromisoformat(dob) - timedelta(days=1)).isoformat(), current=dob,
        field_source=None, reason="birth certificate seen", requester="the child's mother",
        recorded_by="dpo1",
    )  # fmt: skip
    held = {h.split(" ")[0] for h in _operational_hits(county, who)}
    assert {f"operational.db:main.{t}" for t in ("rectifications", "restrictions")} <= held
    landing = _landing(county)
    outbox = shutil.copytree(landing, county.root / "outbox")  # what the agencies keep
    delivered = sorted(p for p in landing.rglob("*.csv"))
    assert any(_in_bytes(p, who) for p in delivered), "the landing scan must see them before"

    result = _erase(county, child, "--yes", "--landing", str(landing))
    assert result.exit_code == 0, result.output
    assert "warehouse.duckdb" in result.output and "raw.school__pupils" in result.output
    # The delivery folders of every source holding them are gone (loaded, so the warehouse
    # held all they said); the rest of the landing zone stays.
    holding = {r.split("|")[0] for r in who.record_ids}
    for source in (p for p in landing.iterdir() if p.is_dir()):
        assert (source.name in holding) == (not any(source.iterdir())), source.name
    assert all(_in_bytes(p, who) == set() for p in landing.rglob("*.csv"))
    school_day = sorted((outbox / "school").iterdir())[-1].name
    assert f"school/{school_day}" in result.output  # counted, folder by folder

    after_files = _files(county.data)
    assert len([p for p in after_files if p.name.startswith("analyst-")]) == 2
    # The operational store keeps the erasure and the audit's ids, nothing else of them:
    # their corrections (old and new values) went, and are counted.
    assert _operational_hits(county, who) == []
    assert re.search(r"operational\s.*rectifications\s.*1", result.output)
    (row,) = _erasure_rows(county)
    assert json.loads(row.counts)["operational:rectifications"] == 1
    for path in after_files:  # the analysts' files included: no row has their keyed hash
        assert _hits(path, who) == [], path
        assert _in_bytes(path, who) == set(), path
    # No delivery still says it carried an erased record (raw holds each record once;
    # ``delivered`` names it by hash for every delivery).
    con = connect(county.warehouse, read_only=True)
    try:
        delivered = [t for (t,) in con.sql(
            "select table_name from duckdb_tables() where schema_name = 'delivered'"
        ).fetchall()]  # fmt: skip
        assert len(delivered) == 14
        for table in delivered:
            orphans = con.sql(
                f'select count(*) from delivered."{table}" d anti join raw."{table}" r '
                "on r._record_id = d._record_id"
            ).fetchall()[0][0]
            assert orphans == 0, table
    finally:
        con.close()
    # Each rewritten snapshot has a rewritten serving copy; the old copies are gone.
    serving_after = {p.name for p in after_files if p.name.endswith(SERVING_SUFFIX)}
    assert serving_after == {
        p.name.removesuffix(".duckdb") + SERVING_SUFFIX
        for p in after_files
        if p.name.startswith("family-view-") and p.suffix == ".duckdb"
    }
    assert not serving_after & {p.name for p in serving}
    # Everyone else is untouched: only the person's rows went.
    snapshot = county.store().current_path()
    after = _counts(snapshot)
    assert after["main.person"] == people_before - 1
    assert all(after[t] <= n for t, n in snapshot_before.items())
    assert after["main.source_deliveries"] == snapshot_before["main.source_deliveries"]
    with county.store().reader() as con:
        assert (
            con.sql("select * from person where person_id = ?", params=[other["person_id"][0]])
            .pl()
            .equals(other)
        )
    # The access layer (opened before) re-reads the pointer and no longer finds them.
    with pytest.raises(NotFound):
        access.person(social, "safeguarding", child)
    with pytest.raises(NotFound):
        access.person(User("dpo1", "dpo"), "subject_rights", child)
    # So does the snapshot before it, should readers be rolled back.
    county.store().rollback()
    with pytest.raises(NotFound):
        access.person(social, "safeguarding", child)
    # Reviewers' decisions naming the records are gone; others stay.
    decided = review.decision_history(engine)
    assert decided.select("record_id_l", "record_id_r").rows() == [tuple(sorted((b, c)))]
    # The operational store keeps the erasure, tombstones as keyed hashes, no record ids.
    with engine.connect() as conn:
        stones = {r for (r,) in conn.execute(sa.select(erasure.erasure_tombstones.c.record_hash))}
        kept = conn.execute(sa.select(restrictions)).one()
        corrected = conn.execute(sa.select(rectification.rectifications)).all()
    assert {record_hash(r, PSEUDONYM_KEY) for r in who.record_ids} <= stones
    assert json.loads(kept.record_ids) == [] and kept.lifted_at is not None
    assert kept.person_id == "" and kept.lift_reason.endswith("(erasure #1)")
    assert corrected == []
    assert erasure.erased_person_ids(engine) == {child}
    events = [e for e in audit.events(engine) if e.action == "erase"]
    assert [(e.purpose, e.person_ids, sorted(e.detail)) for e in events] == [
        ("subject_rights", (child,), ["counts", "reason"])
    ]
    assert audit.verify(engine).ok

    # A later delivery of the same records: quarantined as erased, never staged or linked.
    assert sdv_load(_redeliver(county, outbox), county.data).exit_code == 0
    con = connect(county.warehouse, read_only=True)
    try:
        held = con.sql(
            "select _reason_code, count(*) from quarantine.school__pupils "
            "where upper(upn) in (select unnest(?::varchar[])) group by all",
            params=[sorted(who.tokens)],
        ).fetchall()
        staged = con.sql(
            "select count(*) from staged.school__pupils where upn in (select unnest(?::varchar[]))",
            params=[sorted(who.tokens)],
        ).fetchall()[0][0]
    finally:
        con.close()
    assert held == [(ERASED, 1)] and staged == 0
    con = connect(county.warehouse)
    try:
        run_linkage(con, engine, load_linkage_config(), county.data / "models")
    finally:
        con.close()
    _, checks, _ = county.publish()
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    with county.store().reader() as con:
        back = con.sql(
            "select count(*) from person_records where record_id in (select unnest(?::varchar[]))",
            params=[who.record_ids],
        ).fetchall()[0][0]
        assert back == 0
        assert not con.sql(
            "select person_id from person where nhs_number in (select unnest(?::varchar[]))",
            params=[sorted(who.nhs_numbers)],
        ).fetchall()


def test_erase_refuses_unconfirmed_unknown_or_while_the_warehouse_is_in_use(county):
    child = _child(county)
    declined = CliRunner().invoke(
        app,
        ["erase", child, "--reason", "r", "--upheld-by", "dpo", "--data-dir", str(county.data)],
        input="n\n",
    )
    assert declined.exit_code == 1
    assert f"Erase {child} from the warehouse" in declined.output
    assert "cannot be undone" in declined.output and "Aborted" in declined.output
    with county.store().reader() as con:
        assert con.sql(
            "select count(*) from person where person_id = ?", params=[child]
        ).fetchall() == [(1,)]
    unknown = _erase(county, "PNOSUCHPERSON", "--yes")
    assert unknown.exit_code == 1 and "no records found" in unknown.output
    blank = CliRunner().invoke(
        app,
        ["erase", child, "--reason", " ", "--upheld-by", "dpo", "--yes", "--data-dir",
         str(county.data)],
    )  # fmt: skip
    assert blank.exit_code == 1 and "reason" in blank.output

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ready', flush=True);"
         " time.sleep(60)", str(county.warehouse)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        busy = _erase(county, child, "--yes")
    finally:
        holder.kill()
        holder.wait()
    assert busy.exit_code == 1 and "in use" in busy.output
    with county.store().reader() as con:
        assert (
            con.sql("select count(*) from person where person_id = ?", params=[child]).fetchall()[
                0
            ][0]
            == 1
        )


def test_staging_quarantines_rows_reaching_an_erased_record_directly(sources):
    """The person row and their involvement go to quarantine as erased, whatever else is
    wrong with them; the shared incident and everyone else are staged."""
    tables = police_tables(3)
    tables["persons"][0]["dob"] = "not a date"
    stones = Tombstones.of([record_hash("police|persons|N1", b"k" * 32)], b"k" * 32)

    def staged(table: str):
        columns = list(sources["police"].tables[table].columns)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows([[row.get(c) or "" for c in columns] for row in tables[table]])
        data = buffer.getvalue().encode()
        frame = parse_csv(data, Path(f"{table}.csv"), sources["police"], table)
        raw = RawTable("police", table, f"{table}.csv", "sha", frame)
        return stage_table(raw, sources["police"], stones)

    persons = staged("persons")
    assert persons.quarantine.select("nominal_id", "_reason_code").rows() == [("N1", ERASED)]
    assert sorted(persons.staged["nominal_id"]) == ["N2", "N3"]
    involvements = staged("involvements")
    assert involvements.quarantine["nominal_id"].to_list() == ["N1"]
    assert staged("incidents").quarantine.is_empty()


def test_purging_some_records_keeps_the_person_without_what_came_from_them(county):
    """The retention caller: one source's record of a person goes; the person stays, with
    nothing derived from that source, in the snapshot and the analysts' file."""
    store = county.store()
    with store.reader() as con:
        person, record = con.sql(
            """
            select person_id, max(record_id) filter (where record_id like 'health|%')
            from person_records group by person_id
            having count(*) filter (where record_id like 'health|%') = 1
               and count(distinct split_part(record_id, '|', 1)) >= 3
               and person_id in (select person_id from timeline where source = 'health')
            order by person_id limit 1
            """
        ).fetchall()[0]
    counts = purge.purge_published(county.published, [record], PSEUDONYM_KEY)
    assert counts and all(n > 0 for n in counts.values())
    with store.reader() as con:
        row = con.sql(
            "select sources, field_sources from person where person_id = ?", params=[person]
        ).fetchall()
        assert len(row) == 1
        sources, provenance = row[0]
        assert "health" not in sources and "health.patients" not in json.loads(provenance).values()
        assert con.sql(
            "select count(*) from timeline where person_id = ? and source = 'health'",
            params=[person],
        ).fetchall() == [(0,)]
        assert con.sql(
            "select count(*) from person_records where record_id = ?", params=[record]
        ).fetchall() == [(0,)]
    analyst = duckdb.connect(str(county.published / "analyst.duckdb"), read_only=True)
    try:
        key = pseudonym(person, PSEUDONYM_KEY)
        assert analyst.sql(
            "select sources from person where person_key = ?", params=[key]
        ).fetchall()[0][0].split(",") == [s for s in sources]
        assert analyst.sql(
            "select count(*) from timeline where person_key = ? and agency = 'health'",
            params=[key],
        ).fetchall() == [(0,)]
    finally:
        analyst.close()


def _backup(county, folder: Path) -> Path:
    """The warehouse and the published folder, copied as a nightly backup would."""
    folder.mkdir()
    shutil.copy2(county.warehouse, folder / county.warehouse.name)
    shutil.copytree(county.published, folder / "published", symlinks=True)
    return folder


def _restore(county, folder: Path) -> None:
    shutil.copy2(folder / county.warehouse.name, county.warehouse)
    shutil.rmtree(county.published)
    shutil.copytree(folder / "published", county.published, symlinks=True)


def _nightly_retention(county):
    import dagster as dg

    from assets.resources import FamilyViewSettings, LandingZone, OperationalStore, Warehouse
    from assets.retention import build_retention_asset
    from warehouse.audit_config import AuditConfig
    from warehouse.sources import load_sources

    result = dg.materialize(
        [build_retention_asset(load_sources(), AuditConfig())],
        resources={
            "warehouse": Warehouse(path=str(county.warehouse)),
            "landing": LandingZone(path=str(_landing(county))),
            "operational": OperationalStore(url=county.operational_url),
            "family_view": FamilyViewSettings(
                published_dir=str(county.published), data_dir=str(county.data)
            ),
        },
    )
    assert result.success
    return result.asset_materializations_for_node("retention")[0].metadata


def _reapplied(engine) -> list:
    return [e for e in audit.events(engine, limit=500) if e.action == erasure.REAPPLY_ACTION]


def test_a_restored_backup_does_not_bring_an_erased_person_back(county, monkeypatch):
    """Warehouse and published folder restored from last night's backup, taken before the
    erasure: the nightly retention run finds the records by their tombstones and destroys
    them again everywhere, before anything is linked or published from them."""
    child = _child(county)
    who = _identity(county, child)
    engine = county.engine()
    saved = _backup(county, county.root / "backup")
    assert _erase(county, child, "--yes").exit_code == 0
    _restore(county, saved)
    restored = [p for p in _files(county.data) if _hits(p, who)]
    assert county.warehouse in restored and len(restored) >= 3, "the backup holds them"
    landing = _landing(county)
    assert any(_in_bytes(p, who) for p in landing.rglob("*.csv"))

    dry = CliRunner().invoke(
        app,
        ["retention", "--dry-run", "--landing", str(landing), "--data-dir", str(county.data)],
    )
    assert dry.exit_code == 0, dry.output
    found = int(re.search(r"Erased records found again: (\d+) \(erasure #1\)", dry.output)[1])
    assert found >= len(who.record_ids) and "would be destroyed again" in dry.output
    assert [p for p in _files(county.data) if _hits(p, who)] == restored  # nothing changed
    assert _reapplied(engine) == []

    meta = _nightly_retention(county)
    assert meta["erased_records_destroyed_again"].value == found
    for path in _files(county.data):
        assert _hits(path, who) == [], path
        assert _in_bytes(path, who) == set(), path
    assert all(_in_bytes(p, who) == set() for p in landing.rglob("*.csv"))
    (event,) = _reapplied(engine)
    assert (event.user_id, event.role, event.purpose, event.person_ids) == (
        "dagster",
        "system",
        "subject_rights",
        (child,),
    )
    assert event.detail["erasures"] == [1] and event.detail["records"] == found
    assert event.detail["counts"]["warehouse.duckdb:raw.school__pupils"] >= 1
    assert audit.verify(engine).ok

    # The next night finds nothing more to do, and tonight's snapshot is built without them.
    assert _nightly_retention(county)["erased_records_destroyed_again"].value == 0
    assert len(_reapplied(engine)) == 1
    _, checks, _ = county.publish()
    assert all(c.passed for c in checks)
    assert _hits(county.store().current_path(), who) == []

    # Under another key the tombstones cannot be matched: refused, not passed over.
    monkeypatch.setenv("SDV_PSEUDONYM_KEY", (b"x" * 32).hex())
    refused = CliRunner().invoke(
        app, ["retention", "--dry-run", "--landing", str(landing), "--data-dir", str(county.data)]
    )
    assert refused.exit_code == 1 and "another pseudonymisation key" in refused.output


def test_sdv_nightly_after_a_restore_publishes_without_the_erased_person(county, monkeypatch):
    """``sdv nightly`` applies retention between the loads and linkage, as the schedules
    do: run straight after restoring a backup from before an erasure, it destroys the
    person again and publishes tonight's Family View without them."""
    child = _child(county)
    who = _identity(county, child)
    saved = _backup(county, county.root / "backup")
    assert _erase(county, child, "--yes").exit_code == 0
    _restore(county, saved)
    before = county.store().current_path()
    assert _hits(county.warehouse, who) and _hits(before, who), "the backup holds them"

    landing = _landing(county)
    result = CliRunner().invoke(
        app, ["nightly", "--landing", str(landing), "--data-dir", str(county.data)]
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "Erased records found again and destroyed" in output
    assert re.search(r"Retention as of \S+: [\d,]+ rows destroyed", output)
    assert output.index("Retention as of") < output.index("Linked ")
    published = county.store().current_path()
    assert published != before and _hits(published, who) == []
    assert _hits(county.warehouse, who) == []
    with pytest.raises(NotFound):
        AccessLayer(county.store(), load_policy(), county.engine()).person(
            User("sw", "social_worker"), "safeguarding", child
        )

    # Retention that cannot run (the tombstones are under another key) stops the night
    # before linkage: readers keep the snapshot they have.
    monkeypatch.setenv("SDV_PSEUDONYM_KEY", (b"x" * 32).hex())
    refused = CliRunner().invoke(
        app, ["nightly", "--landing", str(landing), "--data-dir", str(county.data)]
    )
    assert refused.exit_code == 1, refused.output
    said = " ".join(refused.output.split())
    assert "Retention failed" in said and "another pseudonymisation key" in said
    assert "Linked " not in said
    assert county.store().current_path() == published


def test_a_restored_published_folder_alone_is_purged_again(county):
    """Only the published folder restored (the warehouse kept): the erased person is found
    in the kept snapshots themselves and purged from them and their analysts' files."""
    child = _child(county)
    who = _identity(county, child)
    saved = county.root / "published-backup"
    shutil.copytree(county.published, saved, symlinks=True)
    assert _erase(county, child, "--yes").exit_code == 0
    shutil.rmtree(county.published)
    shutil.copytree(saved, county.published, symlinks=True)
    snapshots = county.published / "snapshots"
    assert any(_hits(p, who) for p in _files(snapshots))
    assert not _hits(county.warehouse, who)

    result = CliRunner().invoke(
        app, ["retention", "--landing", str(_landing(county)), "--data-dir", str(county.data)]
    )
    assert result.exit_code == 0, result.output
    assert "Erased records found again" in result.output
    for path in _files(snapshots):
        assert _hits(path, who) == [], path
        assert _in_bytes(path, who) == set(), path
    with pytest.raises(NotFound):
        AccessLayer(county.store(), load_policy(), county.engine()).person(
            User("sw", "social_worker"), "safeguarding", child
        )


def _sqlite_copy(source: Path, target: Path) -> None:
    """Copy a SQLite store as its backup would (SQLite's backup API: the WAL included),
    over ``target`` if it exists."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _erasures(county, *extra: str):
    return CliRunner().invoke(app, ["erasures", *extra, "--data-dir", str(county.data)])


def _erasure_rows(county) -> list:
    with county.engine().connect() as conn:
        return conn.execute(sa.select(erasure.erasures).order_by(erasure.erasures.c.id)).all()


def test_an_operational_store_restored_from_before_an_erasure_stops_the_loads(county):
    """The tombstones went with the restore, so a delivery would bring the person back: the
    warehouse's own register of erasures notices, and loads stop until the DPO decides."""
    child = _child(county)
    who = _identity(county, child)
    landing = _landing(county)
    outbox = shutil.copytree(landing, county.root / "outbox")
    store = county.data / "operational.db"
    _sqlite_copy(store, county.root / "operational-backup.db")
    assert _erase(county, child, "--yes").exit_code == 0
    assert _erasures(county).exit_code == 0
    _sqlite_copy(county.root / "operational-backup.db", store)
    # Another erasure after the restore takes the same number, #1: still not the lost one.
    with county.store().reader() as con:
        ((other,),) = con.sql(
            "select person_id from person where person_id <> ? order by person_id limit 1",
            params=[child],
        ).fetchall()
    assert _erase(county, other, "--yes").exit_code == 0
    assert [(e.id, e.person_id) for e in _erasure_rows(county)] == [(1, other)]
    listed = _erasures(county)
    assert listed.exit_code == 1 and "Lost: erasure #1, recorded" in listed.output

    loaded = sdv_load(_redeliver(county, outbox), county.data)
    assert loaded.exit_code == 1, loaded.output
    assert "no longer holds erasure #1" in " ".join(loaded.output.split())
    assert _hits(county.warehouse, who) == [], "nothing of the delivery was loaded"

    unexplained = _erasures(county, "--forget-lost", "1")
    assert unexplained.exit_code == 1 and "reason" in unexplained.output
    forgotten = _erasures(
        county, "--forget-lost", "1", "--reason", "no newer backup", "--by", "dpo1"
    )
    assert forgotten.exit_code == 0, forgotten.output
    assert "No lost erasures" in forgotten.output
    (event,) = [e for e in audit.events(county.engine()) if e.action == "erasure_forgotten"]
    assert event.user_id == "dpo1" and event.detail["erasure_id"] == 1
    # As the message says: loads resume, and the person is back until erased again.
    assert sdv_load(landing, county.data).exit_code == 0
    assert _hits(county.warehouse, who) != []


def _rectify(engine, person_id: str, records: list[str], old: str, new: str):
    return rectification.rectify(
        engine, person_id=person_id, record_ids=records, field="surname", old=old, new=new,
        current=old, field_source=None, reason="deed poll seen", requester="the person",
        recorded_by="dpo1",
    )  # fmt: skip


def test_the_operational_purge_strikes_records_from_rectifications_and_restrictions(engine):
    """Corrections hold the values corrected: one of the purged records alone goes, one also
    naming a kept record only loses the purged ids. A restriction of the purged records
    alone keeps who, when and why under an erasure, lifted, naming neither records nor
    person; under retention (no erasure) it goes."""
    gone, also_gone, kept = "health|patients|H1", "school|pupils|A900000000001", "police|persons|N9"
    _rectify(engine, "P1", [gone, also_gone], "Smith", "Smyth")
    _rectify(engine, "P2", [gone, kept], "Jones", "Joans")
    restrict(engine, "P1", [gone, also_gone], "objection pending", "dpo1")
    restrict(engine, "P2", [kept, gone], "objection pending", "dpo1")

    def stored(table) -> list[tuple]:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(table).order_by(table.c.id)).all()
        return [(r.person_id, json.loads(r.record_ids)) for r in rows]

    with engine.connect() as conn:  # retention's share (no erasure) first, rolled back
        trial = conn.begin()
        counts = erasure.purge_operational(conn, {gone, also_gone}, (), None)
        left = conn.execute(sa.select(restrictions.c.person_id, restrictions.c.record_ids)).all()
        trial.rollback()
    assert counts == {"operational:restrictions": 2, "operational:rectifications": 2}
    assert left == [("P2", json.dumps([kept]))]

    with engine.begin() as conn:
        counts = erasure.purge_operational(conn, {gone, also_gone}, {"P1"}, "dpo1", [7])
    assert counts == {"operational:restrictions": 2, "operational:rectifications": 2}
    assert stored(rectification.rectifications) == [("P2", [kept])]
    assert [r.old_value for r in rectification.listed(engine)] == ["Jones"]
    assert stored(restrictions) == [("", []), ("P2", [kept])]
    with engine.connect() as conn:
        emptied, other = conn.execute(sa.select(restrictions).order_by(restrictions.c.id)).all()
    assert (emptied.reason, emptied.recorded_by, emptied.lifted_by) == (
        "objection pending",
        "dpo1",
        "dpo1",
    )
    assert emptied.lift_reason == "the restricted records were erased (erasure #7)"
    assert other.lifted_at is None
