"""Destroying records, provably: the primitives erasure and retention share.

Three places hold a person's records and everything derived from them:

* the ingest layers of the warehouse (``raw``, ``staged``, ``quarantine``):
  :func:`erasure_targets` finds the rows (by DuckDB ``rowid``, through
  :mod:`warehouse.subjects`) and :func:`purge_ingest` deletes them;
* the ``linked`` schema (:func:`purge_linked`): record-keyed and person-keyed tables;
* the published folder (:func:`purge_published`): every snapshot file and analysts' file,
  including, for retention, the curated rows made from destroyed rows that were not person
  rows (:mod:`warehouse.derived`).

Each returns how many rows it removed or rewrote per ``"<file name>:<schema.table>"`` so the
caller can record and show exactly what was destroyed.

**Deleted is not gone.** DuckDB marks deleted rows and leaves their bytes in free blocks of
the file until they happen to be overwritten, so a ``DELETE`` alone would leave an erased
NHS number readable with ``strings``. Every modified DuckDB file is therefore rewritten:
its live contents are copied (``COPY FROM DATABASE``, which keeps tables, views, constraints
and catalog comments) into a fresh file that replaces the old one atomically
(``os.replace``). The warehouse keeps its path (:func:`rewrite_database`, done while the
caller still holds the writer, so no load can slip in between). Snapshots get a *new* file
name and the pointer, history and analysts' link are moved to it: readers re-open the
pointer and find the new file, a reader holding the old one keeps reading it until it closes
(POSIX keeps an unlinked file alive for its open handles), and DuckDB's in-process instance
cache, keyed by path, cannot hand a new reader the old file. What a filesystem or backup
keeps of the old blocks is outside this module: backups need their own retention.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from warehouse import file_modes
from warehouse.curated_schema import TABLES
from warehouse.derived import Removed, Traced, remove_from_analyst, remove_from_snapshot
from warehouse.pseudonymise import pseudonym
from warehouse.publish import (
    ANALYST_LINK,
    ANALYST_PREFIX,
    HISTORY,
    POINTER,
    file_stem,
    snapshot_files,
)
from warehouse.serving import serving_path, write_serving_from
from warehouse.sources import Source
from warehouse.store import RECORD_ID, relation_name, table_exists
from warehouse.subjects import Relation, key_sql, relations, row_subjects

Counts = dict[str, int]

# Golden fields of ``person`` and the columns each one fills (``field_sources`` keys).
_FIELD_COLUMNS: dict[str, tuple[str, ...]] = {
    "address": ("address_line_1", "address_line_2", "town", "postcode", "postcode_district",
                "uprn", "address_as_of"),
    "dob": ("dob", "dob_estimated", "age", "is_child"),
    "date_of_death": ("date_of_death", "deceased"),
}  # fmt: skip


class PurgeError(RuntimeError):
    """A file cannot be purged (missing, unreadable, or not what it claims to be)."""


# --- shared helpers ---------------------------------------------------------------------


def _file_label(con: duckdb.DuckDBPyConnection) -> str:
    rows = con.sql(
        "select path from duckdb_databases() where database_name = current_database()"
    ).fetchall()
    path = rows[0][0] if rows else None
    return Path(path).name if path else "memory"


def _register_ids(con: duckdb.DuckDBPyConnection, name: str, values: Iterable[str]) -> None:
    con.register(name, pl.DataFrame({"id": sorted(set(values))}, schema={"id": pl.String}))


def _changed(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> int:
    """Run a DELETE or UPDATE and return how many rows it touched."""
    rows = con.execute(sql, params or []).fetchall()
    return int(rows[0][0]) if rows else 0


def rewrite_database(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Replace the file behind ``con`` (open read-write, the only writer) with a fresh copy
    of its live contents, so no deleted row survives in a free block.

    The copy is made and moved into place while ``con`` still holds the file's lock, so no
    other writer can open the old file in between; close ``con`` straight afterwards.
    """
    path = Path(path)
    fresh = path.with_name(path.name + ".purging")
    fresh.unlink(missing_ok=True)
    Path(str(fresh) + ".wal").unlink(missing_ok=True)
    name = con.sql("select current_database()").fetchall()[0][0]
    con.execute("checkpoint")
    con.execute(f"attach '{_sql_text(str(fresh))}' as _purge_fresh")
    file_modes.like(fresh, path)
    try:
        con.execute(f'copy from database "{name}" to _purge_fresh')
        con.execute("checkpoint _purge_fresh")
    finally:
        con.execute("detach _purge_fresh")
    os.replace(fresh, path)


def _sql_text(value: str) -> str:
    return value.replace("'", "''")


# --- ingest layers ----------------------------------------------------------------------


def erasure_targets(
    con: duckdb.DuckDBPyConnection, sources: Mapping[str, Source], record_ids: Collection[str]
) -> dict[Relation, list[int]]:
    """Rows of ``raw``, ``staged`` and ``quarantine`` to destroy with ``record_ids``.

    A row goes when it reaches one of the records directly (the record's own row, an
    episode carrying its key, a contact naming the pupil), or when every record it is about
    is going (a family's early help episode once the whole family is erased, an incident
    once everyone involved is). A shared row about anyone else stays: it is theirs too.
    """
    erased = sorted(set(record_ids))
    targets: dict[Relation, list[int]] = {}
    for relation in relations(con, dict(sources)):
        subjects = row_subjects(con, sources[relation.source], relation)
        if subjects.is_empty():
            continue
        hit = pl.col("record_id").is_in(erased)
        rows = (
            subjects.group_by("_rowid")
            .agg(((hit & pl.col("direct")).any() | hit.all()).alias("_purge"))
            .filter(pl.col("_purge"))["_rowid"]
            .sort()
            .to_list()
        )
        if rows:
            targets[relation] = rows
    return targets


def target_records(
    con: duckdb.DuckDBPyConnection,
    sources: Mapping[str, Source],
    targets: Mapping[Relation, Collection[int]],
) -> set[str]:
    """Record ids of the person-level rows among ``targets``: the records a purge destroys,
    including other people's records that named the erased one (a parent's school contact
    row carries their child's UPN in its key)."""
    found: set[str] = set()
    for relation, rowids in targets.items():
        spec = sources[relation.source].tables[relation.table]
        if not spec.person_level or not rowids:
            continue
        con.register("_purge_rowids", pl.DataFrame({"_rowid": sorted(rowids)}))
        try:
            rows = con.sql(
                f"select distinct '{relation.source}|{relation.table}|' || "
                f"{key_sql(spec.local_key, 't', spec)} from {relation.name} t "
                "where t.rowid in (select _rowid from _purge_rowids)"
            ).fetchall()
        finally:
            con.unregister("_purge_rowids")
        found.update(r for (r,) in rows)
    return found


def purge_ingest(
    con: duckdb.DuckDBPyConnection, targets: Mapping[Relation, Collection[int]]
) -> Counts:
    """Delete ``targets`` (rowids per relation, from :func:`erasure_targets` or a retention
    rule). Run it inside the caller's transaction, before anything else changes rowids.

    A record is held once in ``raw`` and ``staged`` and its deliveries in ``delivered``
    (:mod:`warehouse.store`): once a record's raw row is gone, so are the ``delivered``
    rows naming it, which would otherwise say it was delivered and when.
    """
    label = _file_label(con)
    counts: Counts = {}
    raw_purged: set[str] = set()
    for relation, rowids in targets.items():
        if not rowids:
            continue
        con.register("_purge_rowids", pl.DataFrame({"_rowid": sorted(set(rowids))}))
        try:
            removed = _changed(
                con,
                f"delete from {relation.name} where rowid in (select _rowid from _purge_rowids)",
            )
        finally:
            con.unregister("_purge_rowids")
        name = relation_name(relation.source, relation.table)
        counts[f"{label}:{relation.schema}.{name}"] = removed
        if relation.schema == "raw":
            raw_purged.add(name)
    for name in sorted(raw_purged):
        if table_exists(con, "delivered", name):
            counts[f"{label}:delivered.{name}"] = _changed(
                con,
                f'delete from delivered."{name}" d where not exists (select 1 from raw."{name}" '
                f"r where r.{RECORD_ID} = d.{RECORD_ID})",
            )
    return counts


def per_table(counts: Counts) -> Counts:
    """``"<file>:<table>"`` counts summed per table, sorted by table: what a report shows
    (which kinds of rows left the published files), without the file names."""
    totals: Counts = {}
    for key, n in counts.items():
        table = key.rpartition(":")[2]
        totals[table] = totals.get(table, 0) + n
    return dict(sorted(totals.items()))


def targeted_rows(counts: Counts) -> int:
    """Rows :func:`purge_ingest` deleted by rowid, leaving out the ``delivered`` rows that
    went with them: what a caller compares with the rows it asked to destroy."""
    return sum(n for key, n in counts.items() if not key.partition(":")[2].startswith("delivered."))


# --- the linked schema --------------------------------------------------------------------

# Table -> WHERE clause over ``_purge_records`` / ``_purge_persons`` naming its rows to delete.
_LINKED_DELETES: dict[str, str] = {
    "person_records": "record_id in (select id from _purge_records) "
    "or person_id in (select id from _purge_persons)",
    "scored_pairs": "unique_id_l in (select id from _purge_records) "
    "or unique_id_r in (select id from _purge_records)",
    "record_fingerprints": "unique_id in (select id from _purge_records)",
    "retired_records": "record_id in (select id from _purge_records) "
    "or person_id in (select id from _purge_persons)",
    # A region losing a record is not the region stored: all of it is clustered again.
    "record_regions": "region in (select region from linked.record_regions "
    "where record_id in (select id from _purge_records))",
    "ambiguous_pairs": "unique_id_l in (select id from _purge_records) "
    "or unique_id_r in (select id from _purge_records)",
    "household_members": "person_id in (select id from _purge_persons) "
    "or household_id in (select 'H-' || id from _purge_persons)",
    "person_relationships": "person_id in (select id from _purge_persons) "
    "or related_person_id in (select id from _purge_persons)",
    "person_events": "person_id in (select id from _purge_persons)",
    # The registry of issued ids: see purge_linked on why the id itself goes too.
    "person_ids": "person_id in (select id from _purge_persons)",
}


def purge_linked(
    con: duckdb.DuckDBPyConnection, record_ids: Collection[str], person_ids: Collection[str]
) -> Counts:
    """Remove ``record_ids`` and the people ``person_ids`` from the ``linked`` schema.

    Record-keyed tables (``person_records``, ``scored_pairs``, ``record_fingerprints``,
    ``retired_records``) lose the records; person-keyed ones (households, relationships
    either side, events, the ``person_ids`` registry) lose the people; a merge or split
    event of someone else keeps its row with the purged id taken out of
    ``previous_person_ids``. ``runs`` holds counts only and is left alone.

    ``linked.person_ids`` exists so an id is never issued twice. Keeping the purged id
    there, even as a keyed hash, would either keep the identifier or protect nothing (the
    minting compares plain ids), so the id leaves the warehouse and the caller keeps it
    where it must be kept anyway: erasure's own record in the operational store, beside the
    audit events that name it, which linkage reads as ids already used
    (``warehouse.erasure.erased_person_ids``). A caller passing ``person_ids`` takes on that
    duty; pass none to leave people to the next linkage run (their records gone, linkage
    retires the id and keeps it in the registry).

    Run it inside the caller's transaction.
    """
    if not any(table_exists(con, "linked", t) for t in _LINKED_DELETES):
        return {}
    label = _file_label(con)
    _register_ids(con, "_purge_records", record_ids)
    _register_ids(con, "_purge_persons", person_ids)
    counts: Counts = {}
    try:
        for table, where in _LINKED_DELETES.items():
            if table_exists(con, "linked", table):
                counts[f"{label}:linked.{table}"] = _changed(
                    con, f"delete from linked.{table} where {where}"
                )
        if person_ids and table_exists(con, "linked", "person_events"):
            ids = sorted(set(person_ids))
            counts[f"{label}:linked.person_events"] += _changed(
                con,
                "update linked.person_events set previous_person_ids = "
                "list_filter(previous_person_ids, lambda v: not list_contains(?, v)) "
                "where list_has_any(previous_person_ids, ?)",
                [ids, ids],
            )
    finally:
        con.unregister("_purge_records")
        con.unregister("_purge_persons")
    return {k: v for k, v in counts.items() if v}


# --- published snapshots -------------------------------------------------------------------


@dataclass
class _Plan:
    """Who in one snapshot loses what: people losing every record, and people losing some
    records (the tables and sources none of their remaining records come from)."""

    full: set[str] = field(default_factory=set)
    partial_tables: dict[str, set[str]] = field(default_factory=dict)  # person -> source.table
    partial_sources: dict[str, set[str]] = field(default_factory=dict)  # person -> source
    partial_records: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.full or self.partial_records)

    def merge(self, other: _Plan) -> None:
        self.full |= other.full
        for person, tables in other.partial_tables.items():
            self.partial_tables.setdefault(person, set()).update(tables)
        for person, sources in other.partial_sources.items():
            self.partial_sources.setdefault(person, set()).update(sources)
        self.partial_records.update(other.partial_records)


def _plan(con: duckdb.DuckDBPyConnection, record_ids: set[str]) -> _Plan:
    if not table_exists(con, "main", "person_records"):
        return _Plan()
    records = con.sql("select person_id, record_id from person_records").pl()
    parts = records["record_id"].str.split("|")
    records = records.with_columns(
        parts.list.get(0).alias("source"),
        (parts.list.get(0) + "." + parts.list.get(1)).alias("table"),
        pl.col("record_id").is_in(sorted(record_ids)).alias("purged"),
    )
    touched = records.filter(pl.col("purged"))["person_id"].unique()
    records = records.filter(pl.col("person_id").is_in(touched.implode()))
    plan = _Plan()
    for (person,), rows in records.group_by("person_id"):
        if rows["purged"].all():
            plan.full.add(person)
            continue
        kept, gone = rows.filter(~pl.col("purged")), rows.filter(pl.col("purged"))
        plan.partial_tables[person] = set(gone["table"]) - set(kept["table"])
        plan.partial_sources[person] = set(gone["source"]) - set(kept["source"])
        plan.partial_records[person] = gone.height
    return plan


def _person_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    present = {r[0] for r in con.sql("select table_name from duckdb_tables()").fetchall()}
    return [
        name
        for name, table in TABLES.items()
        if table.person_column and not table.aggregate and name in present
    ]


def _recount_households(
    con: duckdb.DuckDBPyConnection, households: list[str], member: str, child: str
) -> int:
    """Members and children of ``households`` after people left; empty ones removed."""
    if not households:
        return 0
    key = "household_id" if member == "person_id" else "household_key"
    _register_ids(con, "_purge_households", households)
    try:
        changed = _changed(
            con,
            f"update household h set members = (select count(*) from household_members m "
            f"where m.{key} = h.{key}), children = (select count(*) from household_members m "
            f"join person p on p.{member} = m.{member} where m.{key} = h.{key} and {child}) "
            f"where h.{key} in (select id from _purge_households)",
        )
        _changed(con, "delete from household where members = 0")
    finally:
        con.unregister("_purge_households")
    return changed


def _purge_snapshot(con: duckdb.DuckDBPyConnection, plan: _Plan, record_ids: set[str]) -> Counts:
    """Apply ``plan`` to a curated snapshot loaded in ``con``; rows changed per table."""
    counts: Counts = {}
    _register_ids(con, "_purge_records", record_ids)
    _register_ids(con, "_purge_persons", plan.full)
    try:
        counts["person_records"] = _changed(
            con, "delete from person_records where record_id in (select id from _purge_records)"
        )
        households = [
            h
            for (h,) in con.sql(
                "select distinct household_id from household_members "
                "where person_id in (select id from _purge_persons)"
            ).fetchall()
        ]
        for table in _person_tables(con):
            where = "person_id in (select id from _purge_persons)"
            if table == "relationships":
                where += " or related_person_id in (select id from _purge_persons)"
            counts[table] = counts.get(table, 0) + _changed(
                con, f'delete from "{table}" where {where}'
            )
        counts["household"] = _recount_households(con, households, "person_id", "p.is_child")
        for person, sources in plan.partial_sources.items():
            for source in sorted(sources):
                counts["timeline"] = counts.get("timeline", 0) + _changed(
                    con, "delete from timeline where person_id = ? and source = ?", [person, source]
                )
                counts["involvement"] = counts.get("involvement", 0) + _changed(
                    con,
                    "delete from involvement where person_id = ? and agency = ?",
                    [person, source],
                )
        counts["person"] = counts.get("person", 0) + _rewrite_partial_people(con, plan)
    finally:
        con.unregister("_purge_records")
        con.unregister("_purge_persons")
    return counts


def _rewrite_partial_people(con: duckdb.DuckDBPyConnection, plan: _Plan) -> int:
    """Golden records of people who lost some records: golden fields taken only from a
    purged table become null (with what they imply: age from dob, district from address),
    ``sources`` and ``record_count`` drop the purged ones. Other names cannot be traced to
    the record they came from and wait for the next publish to be rebuilt."""
    if not plan.partial_records:
        return 0
    _register_ids(con, "_purge_partial", plan.partial_records)
    try:
        people = con.sql(
            "select * from person where person_id in (select id from _purge_partial)"
        ).pl()
    finally:
        con.unregister("_purge_partial")
    if people.is_empty():
        return 0
    rows = []
    for row in people.to_dicts():
        person = row["person_id"]
        gone_tables = plan.partial_tables.get(person, set())
        gone_sources = plan.partial_sources.get(person, set())
        provenance = json.loads(row["field_sources"] or "{}")
        for name, table in list(provenance.items()):
            if table in gone_tables:
                for column in _FIELD_COLUMNS.get(name, (name,)):
                    row[column] = None
                del provenance[name]
        row["field_sources"] = json.dumps(provenance, sort_keys=True)
        row["sources"] = [s for s in row["sources"] or [] if s not in gone_sources]
        row["record_count"] = max(0, (row["record_count"] or 0) - plan.partial_records[person])
        row["dob_estimated"] = bool(row["dob_estimated"])
        row["deceased"] = bool(row["deceased"])
        rows.append(row)
    frame = pl.DataFrame(rows, schema=people.schema)
    con.register("_purge_people", frame)
    try:
        changed = _changed(
            con, "delete from person where person_id in (select person_id from _purge_people)"
        )
        con.execute("insert into person by name select * from _purge_people")
        if table_exists(con, "main", "child_summary"):
            con.execute(
                "update child_summary c set forename = p.forename, surname = p.surname, "
                "dob = p.dob from _purge_people p where p.person_id = c.person_id"
            )
    finally:
        con.unregister("_purge_people")
    return changed


def _purge_analyst(con: duckdb.DuckDBPyConnection, plan: _Plan, key: bytes) -> Counts:
    """Apply ``plan`` to an analysts' file: the same people, by their keyed-hash ids."""
    counts: Counts = {}
    _register_ids(con, "_purge_keys", (pseudonym(p, key) for p in plan.full))
    try:
        households = [
            h
            for (h,) in con.sql(
                "select distinct household_key from household_members "
                "where person_key in (select id from _purge_keys)"
            ).fetchall()
        ]
        present = {r[0] for r in con.sql("select table_name from duckdb_tables()").fetchall()}
        for table in ("person", "household_members", "relationships", "involvement",
                      "timeline", "child_summary"):  # fmt: skip
            if table not in present:
                continue
            where = "person_key in (select id from _purge_keys)"
            if table == "relationships":
                where += " or related_person_key in (select id from _purge_keys)"
            counts[table] = _changed(con, f'delete from "{table}" where {where}')
        counts["household"] = _recount_households(con, households, "person_key", "p.is_child")
        for person, sources in plan.partial_sources.items():
            hashed = pseudonym(person, key)
            for source in sorted(sources):
                for table in ("timeline", "involvement"):
                    counts[table] = counts.get(table, 0) + _changed(
                        con,
                        f"delete from {table} where person_key = ? and agency = ?",
                        [hashed, source],
                    )
            if sources:
                counts["person"] = counts.get("person", 0) + _changed(
                    con,
                    "update person set sources = array_to_string(list_filter("
                    "string_split(sources, ','), lambda s: not list_contains(?, s)), ',') "
                    "where person_key = ?",
                    [sorted(sources), hashed],
                )
    finally:
        con.unregister("_purge_keys")
    return counts


def _load_copy(path: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory copy of a published file, opened without taking it from its readers."""
    con = duckdb.connect()
    try:
        con.execute(f"attach '{_sql_text(str(path))}' as _purge_old (read_only)")
        con.execute("copy from database _purge_old to memory")
        con.execute("detach _purge_old")
    except duckdb.Error as err:
        con.close()
        raise PurgeError(f"cannot read published file {path}: {err}") from err
    return con


def _write_copy(con: duckdb.DuckDBPyConnection, original: Path, path: Path) -> None:
    """Write ``con``'s database to ``path``, the purged copy of ``original``, readable by
    whoever could read the original (:func:`warehouse.file_modes.like`)."""
    building = path.with_name(path.name + ".building")
    building.unlink(missing_ok=True)
    con.execute(f"attach '{_sql_text(str(building))}' as _purge_new")
    file_modes.like(building, original)
    try:
        con.execute("copy from database memory to _purge_new")
        con.execute("checkpoint _purge_new")
    finally:
        con.execute("detach _purge_new")
    os.replace(building, path)


def _new_name(name: str) -> str:
    return f"{file_stem(name)}.e{secrets.token_hex(3)}.duckdb"


def _pairs(root: Path) -> dict[str, str]:
    """Analysts' file -> the snapshot it was published with (from the history)."""
    try:
        lines = (root / HISTORY).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    pairs = {}
    for line in lines:
        if line.strip():
            entry = json.loads(line)
            if entry.get("analyst"):
                pairs[entry["analyst"]] = entry["snapshot"]
    return pairs


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.purge.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _rename_everywhere(root: Path, renamed: dict[str, str]) -> None:
    """Point the history, the pointer and the analysts' link at the rewritten files, then
    delete the old files (readers holding one keep it until they close)."""

    def rename(entry: dict) -> dict:
        for field_name in ("snapshot", "analyst"):
            if entry.get(field_name) in renamed:
                entry[field_name] = renamed[entry[field_name]]
        return entry

    history = root / HISTORY
    if history.exists():
        lines = history.read_text(encoding="utf-8").splitlines()
        text = "".join(
            json.dumps(rename(json.loads(line)), sort_keys=True) + "\n"
            for line in lines
            if line.strip()
        )
        _write_atomically(history, text)
    pointer = root / POINTER
    current: dict | None = None
    if pointer.exists():
        current = rename(json.loads(pointer.read_text(encoding="utf-8")))
        _write_atomically(pointer, json.dumps(current, sort_keys=True))
    if current and current.get("analyst"):
        link = root / f".{ANALYST_LINK}.{os.getpid()}.purge.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(Path("snapshots") / current["analyst"])
        os.replace(link, root / ANALYST_LINK)
    for old in renamed:
        (root / "snapshots" / old).unlink(missing_ok=True)
        serving_path(root / "snapshots" / old).unlink(missing_ok=True)


def _add(counts: Counts, more: Counts) -> Counts:
    for table, n in more.items():
        counts[table] = counts.get(table, 0) + n
    return counts


def purge_published(
    published_dir: Path,
    record_ids: Collection[str],
    key: bytes,
    derived: Traced | None = None,
) -> Counts:
    """Remove ``record_ids`` and what was derived from them from every published file.

    In each snapshot the people holding the records are found from that snapshot's own
    ``person_records`` (ids may differ between nights). A person all of whose records go
    loses every row in every person table (person, child_summary, household_members,
    relationships either side, person_names, person_organisations, timeline, involvement,
    person_records) and leaves their household's counts. A person losing only some records
    (the retention case, or a parent whose school contact row named an erased child) loses
    those ``person_records`` rows, the timeline and involvement rows of every source none of
    their remaining records comes from, and the golden fields ``field_sources`` says came
    only from a purged table (see :func:`_rewrite_partial_people`); other names and
    organisations cannot be traced to one record and are rebuilt by the next publish.
    Aggregates hold suppressed counts, no identifiers, and are left alone.

    ``derived`` (retention: :func:`warehouse.derived.trace`) names, per snapshot, the
    timeline and involvement rows made from destroyed rows that were not person rows, whose
    people stay, as the queries that snapshot was built under made them: those rows go too,
    and the child summaries made from them are computed again under its own rules
    (:func:`warehouse.derived.remove_from_snapshot`).

    The analysts' file of each snapshot gets the same, by keyed-hash ids (``key`` must be
    the key the file was built with). Rewritten files get new names (module docstring).
    """
    root = Path(published_dir)
    folder = root / "snapshots"
    wanted = set(record_ids)
    derived = derived if derived is not None else Traced()
    if not (wanted or derived) or not folder.exists():
        return {}
    analysts = {p.name for p in folder.glob(f"{ANALYST_PREFIX}*.duckdb") if p.is_file()}
    plans: dict[str, _Plan] = {}
    removals: dict[str, Removed] = {}
    counts: Counts = {}
    renamed: dict[str, str] = {}
    for path in snapshot_files(root):
        con = _load_copy(path)
        try:
            plan = _plan(con, wanted)
            plans[path.name] = plan
            changed = _purge_snapshot(con, plan, wanted) if plan else {}
            more, removals[path.name] = remove_from_snapshot(con, derived.of(path.name))
            changed = _add(changed, more)
            if not plan and not any(more.values()):
                continue
            renamed[path.name] = _new_name(path.name)
            _write_copy(con, path, folder / renamed[path.name])
        finally:
            con.close()
        write_serving_from(folder / renamed[path.name])  # the API's copy, rebuilt from it
        counts |= {f"{renamed[path.name]}:{t}": n for t, n in changed.items() if n}
    everyone = _Plan()
    for plan in plans.values():
        everyone.merge(plan)
    pairs = _pairs(root)
    for name in sorted(analysts):
        paired = pairs.get(name, "")
        plan = plans.get(paired, everyone)
        # Unpaired (no history names its snapshot): what any snapshot lost.
        removed = [removals[paired]] if paired in removals else list(removals.values())
        if not plan and not any(removed):
            continue
        con = _load_copy(folder / name)
        try:
            changed = _purge_analyst(con, plan, key) if plan else {}
            changed = _add(changed, remove_from_analyst(con, removed, key) if any(removed) else {})
            if not any(changed.values()):
                continue
            renamed[name] = _new_name(name)
            _write_copy(con, folder / name, folder / renamed[name])
        finally:
            con.close()
        counts |= {f"{renamed[name]}:{t}": n for t, n in changed.items() if n}
    if renamed:
        _rename_everywhere(root, renamed)
    return counts
