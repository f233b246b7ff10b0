"""Curated rows made from source rows retention destroys while their person stays.

Retention (:mod:`warehouse.retention`) destroys each row at the end of its own period. A
person-level record whose rows all go takes everything about it out of every kept snapshot
(:func:`warehouse.purge.purge_published`). But a row that is not a person row can go while
its person is kept: a health encounter eight years after the patient's last one, while the
patient's record is kept to their 25th birthday. Tonight's publish rebuilds the current view
without it; the older snapshots kept for ``sdv rollback``, and their analysts' files, would
still serve what was made of it. This module finds exactly those curated rows and takes
them out of a snapshot and its analysts' file.

**How a curated row names the row it came from.** The timeline and involvement tables are
built by the queries of ``config/curated.yaml`` over the ``current`` schema, each returning
the local key of the person's record and, for the timeline, the event's key in its source
(kept in the snapshot as ``source`` and ``source_key``). :func:`derived_rows` runs those
queries again, unchanged, in a scratch database whose ``current`` tables hold, for each
table with destroyed rows in turn, only those rows (every other table a query reads holds
all its staged rows, so joins still find their partners). What comes out is exactly what
was made from a destroyed row: (record, agency, source, key) for the timeline, (record,
agency, service) for involvement. Each snapshot resolves the record to its own person id
through its ``person_records`` (ids can differ between nights; records do not). Only
``staged`` rows count: ``current`` is a view of it, so a row destroyed in ``raw`` or
``quarantine`` alone was never in a snapshot.

**Each snapshot's own queries.** A query may have changed since an older kept snapshot was
built (an event keyed another way), so the current query would not find what that
snapshot made. Every snapshot therefore keeps the curation configuration it was built
under (``snapshot_info``, key ``curated_config``: :mod:`warehouse.family_view`), and
:func:`trace` reads every kept snapshot's before anything is destroyed and runs
:func:`derived_rows` once per distinct configuration (its timeline, involvement and child
summary sections; most nights there is one, today's), each snapshot given the rows its own
configuration found (:class:`Traced`) and its child summaries recomputed under its own
rules. A snapshot built before snapshots kept theirs is traced with today's configuration.
A stored configuration that cannot be read or validated, or whose queries cannot be run,
stops retention before any row is destroyed, naming the snapshot.

What each kept snapshot loses (:func:`remove_from_snapshot`):

* ``timeline``: the events made from destroyed rows; the person's other events stay.
* ``involvement``: a row combines every row of one person's service (first start, last end,
  the latest lead practitioner). One combined from a destroyed row goes whole: the snapshot
  cannot say what the rest alone would have given, and a combined value (a start date, a
  practitioner) may be the destroyed row's own.
* ``child_summary``: computed from the person's timeline and involvement, so the rows of
  people who lost any are computed again from what the snapshot still holds
  (:func:`warehouse.curate.build_child_summary`, on the snapshot's own as-of date and rules).

The analysts' file (:func:`remove_from_analyst`) has no event keys: its rows are matched to
the rows removed from its snapshot by every column it keeps (the person's keyed hash, agency,
type, months...), as many as were removed. Rows equal in every column are interchangeable,
so this is exact. Its child summary rows become the recomputed ones, made the way the build
makes them. Aggregates hold suppressed counts and no identifiers, and are left alone, as
erasure leaves them.

Not traced: ``person.address_as_of`` may be the date of a police incident (the newest
record holding an address is dated by its last incident) and stays until the next publish.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from warehouse.curate import build_child_summary, conform
from warehouse.curated_config import CuratedConfig, InvolvementSource, TimelineSource
from warehouse.pseudonymise import Pseudonyms, analyst_frame
from warehouse.publish import (
    CURATED_CONFIG,
    PublishError,
    file_stem,
    open_snapshot,
    snapshot_files,
    snapshot_info,
)
from warehouse.store import relation_name, table_exists
from warehouse.subjects import Relation

Counts = dict[str, int]
TIMELINE_SCHEMA = {
    "record_id": pl.String,
    "agency": pl.String,
    "source": pl.String,
    "source_key": pl.String,
}
INVOLVEMENT_SCHEMA = {"record_id": pl.String, "agency": pl.String, "service": pl.String}
# A table a configured query reads: "current".name, current.name or "current"."name".
_READS = re.compile(r'(?:"current"|\bcurrent)\s*\.\s*(?:"([^"]+)"|(\w+))', re.IGNORECASE)
# What a snapshot's stored configuration decides here: the queries traced and the child
# summary rules that recompute. The rest is taken from today's: it decides nothing here, and
# a section reshaped since must not stop retention.
OWN_PARTS = ("timeline", "involvement", "child_summary")


class DerivedError(RuntimeError):
    """A configured query cannot be run over the destroyed rows; nothing was destroyed."""


@dataclass(frozen=True)
class DerivedRows:
    """Curated rows made from destroyed source rows, by the record they are about:
    ``timeline`` (:data:`TIMELINE_SCHEMA`) and ``involvement`` (:data:`INVOLVEMENT_SCHEMA`),
    and the curation ``config`` whose queries said so (its child summary rules recompute
    what was summarised from them)."""

    timeline: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=TIMELINE_SCHEMA))
    involvement: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema=INVOLVEMENT_SCHEMA)
    )
    config: CuratedConfig | None = None

    def __bool__(self) -> bool:
        return not (self.timeline.is_empty() and self.involvement.is_empty())


@dataclass(frozen=True)
class Traced:
    """What the destroyed rows made in each kept snapshot, each traced with the queries that
    snapshot was built under: :class:`DerivedRows` by :func:`warehouse.publish.file_stem`
    (a purge's rewrite in between, an erasure's, keeps it).

    A snapshot not traced was built after the trace, and a build cannot read the warehouse
    while retention holds it, so from a warehouse whose rows were already destroyed: it
    holds nothing made from them and is given nothing (today's rows could name a service
    it rebuilt from the rows that remain)."""

    snapshots: Mapping[str, DerivedRows] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.snapshots.values())

    def of(self, name: str) -> DerivedRows:
        """The rows to take out of the snapshot file ``name``."""
        return self.snapshots.get(file_stem(name), DerivedRows())


@dataclass(frozen=True)
class Removed:
    """What one snapshot lost: its removed ``timeline`` and ``involvement`` rows and its
    recomputed ``child_summary`` rows (only those that changed), all as the snapshot
    held them; what its analysts' file must lose and be given in turn."""

    timeline: pl.DataFrame
    involvement: pl.DataFrame
    child_summary: pl.DataFrame

    def __bool__(self) -> bool:
        return any(not f.is_empty() for f in (self.timeline, self.involvement, self.child_summary))


def read_tables(sql: str) -> set[str]:
    """The ``current`` tables a configured query reads."""
    return {quoted or bare for quoted, bare in _READS.findall(sql)}


# --- in the warehouse, before the rows go ---------------------------------------------------


def _copy(
    con: duckdb.DuckDBPyConnection,
    scratch: duckdb.DuckDBPyConnection,
    name: str,
    rowids: list[int] | None,
) -> None:
    """``staged.name`` into ``scratch`` as ``_all_<name>`` (every row) and ``_gone_<name>``
    (the destroyed rows), business columns only (what the queries read)."""
    columns = "columns(lambda c: not starts_with(c, '_'))"
    rows = con.sql(f'select rowid as _rowid, {columns} from staged."{name}"').pl()
    gone = pl.col("_rowid").is_in(pl.Series(rowids or [], dtype=pl.Int64).implode())
    frames = {"all": rows.drop("_rowid"), "gone": rows.filter(gone).drop("_rowid")}
    for kind, frame in frames.items():
        scratch.register("_frame", frame)
        try:
            scratch.execute(f'create table "_{kind}_{name}" as select * from _frame')
        finally:
            scratch.unregister("_frame")


def _run(
    scratch: duckdb.DuckDBPyConnection, query: TimelineSource | InvolvementSource, timeline: bool
) -> pl.DataFrame:
    what = "event_key" if timeline else "service"
    sql = (
        f"select distinct cast(local_key as varchar) as local_key, "
        f"cast({what} as varchar) as _what from ({query.sql}) where local_key is not null"
    )
    try:
        found = scratch.sql(sql).pl()
    except duckdb.Error as err:
        section = "timeline" if timeline else "involvement"
        raise DerivedError(
            f"curated {section} query of {query.agency} ({query.person_table}) cannot be run "
            f"over the rows retention would destroy, so what the kept snapshots made of them "
            f"is unknown: {err}"
        ) from err
    record = pl.concat_str(pl.lit(f"{query.source}|{query.table}|"), pl.col("local_key"))
    if timeline:
        return found.select(
            record.alias("record_id"),
            pl.lit(query.agency).alias("agency"),
            pl.lit(query.source).alias("source"),
            pl.col("_what").alias("source_key"),
        )
    return found.select(
        record.alias("record_id"),
        pl.lit(query.agency).alias("agency"),
        pl.col("_what").alias("service"),
    )


def derived_rows(
    con: duckdb.DuckDBPyConnection,
    targets: Mapping[Relation, Collection[int]],
    config: CuratedConfig,
) -> DerivedRows:
    """The timeline and involvement rows the curated build made from the ``staged`` rows
    among ``targets`` (rowids per relation, as :class:`warehouse.retention.RetentionPlan`
    holds them), by record: run before the rows are destroyed. Reads only.

    A query that cannot be run (a broken configuration) raises :class:`DerivedError`:
    retention must not destroy rows whose copies in the kept snapshots it could not find.
    """
    gone = {
        relation_name(r.source, r.table): sorted(set(ids))
        for r, ids in targets.items()
        if r.schema == "staged" and ids
    }
    queries = [(q, True) for q in config.timeline] + [(q, False) for q in config.involvement]
    wanted = [(q, t, read_tables(q.sql)) for q, t in queries]
    wanted = [(q, t, read) for q, t, read in wanted if read & gone.keys()]
    found: dict[bool, list[pl.DataFrame]] = {True: [], False: []}
    if wanted:
        scratch = duckdb.connect()
        try:
            scratch.execute('create schema "current"')
            copied: set[str] = set()
            for query, timeline, read in wanted:
                if not all(table_exists(con, "staged", name) for name in read):
                    continue  # the build skips a query over a table never delivered
                for name in sorted(read - copied):
                    _copy(con, scratch, name, gone.get(name))
                    copied.add(name)
                for destroyed in sorted(read & gone.keys()):
                    for name in sorted(read):
                        rows = "gone" if name == destroyed else "all"
                        scratch.execute(
                            f'create or replace view "current"."{name}" as '
                            f'select * from "_{rows}_{name}"'
                        )
                    found[timeline].append(_run(scratch, query, timeline))
        finally:
            scratch.close()
    return DerivedRows(
        timeline=pl.concat([pl.DataFrame(schema=TIMELINE_SCHEMA), *found[True]]).unique(),
        involvement=pl.concat([pl.DataFrame(schema=INVOLVEMENT_SCHEMA), *found[False]]).unique(),
        config=config,
    )


def _own(config: CuratedConfig) -> str:
    """``config``'s :data:`OWN_PARTS` as canonical JSON: snapshots equal in them are traced
    once."""
    dumped = config.model_dump(mode="json")
    return json.dumps({part: dumped[part] for part in OWN_PARTS}, sort_keys=True)


def stored_config(path: Path, today: CuratedConfig) -> CuratedConfig | None:
    """The curation configuration the snapshot at ``path`` was built under (its
    :data:`OWN_PARTS`; the rest is ``today``'s), or None for a snapshot built before
    snapshots kept theirs. One that cannot be read or validated raises
    :class:`DerivedError` naming the file: what the snapshot made of a row is then unknown.
    """
    try:
        con = open_snapshot(path)
        try:
            stored = snapshot_info(con, CURATED_CONFIG)
        finally:
            con.close()
        if stored is None:
            return None
        if not isinstance(stored, dict) or not set(OWN_PARTS) <= stored.keys():
            raise ValueError(f"{CURATED_CONFIG} lacks one of {', '.join(OWN_PARTS)}")
        own = {part: stored[part] for part in OWN_PARTS}
        return CuratedConfig.model_validate(today.model_dump(mode="json") | own)
    # Pydantic's validation errors are ValueErrors; a file gone meanwhile is a PublishError.
    except (duckdb.Error, PublishError, ValueError, TypeError) as err:
        raise DerivedError(
            f"kept snapshot {path.name}: the curation configuration it was built under "
            f"cannot be read, so what it made of the rows retention would destroy is "
            f"unknown: {err}"
        ) from err


def trace(
    con: duckdb.DuckDBPyConnection,
    targets: Mapping[Relation, Collection[int]],
    published_dir: Path,
    today: CuratedConfig,
) -> Traced:
    """What the destroyed rows among ``targets`` made in each kept snapshot under
    ``published_dir`` (and so in its analysts' file), traced with the queries that
    snapshot was built under (:func:`stored_config`; ``today``'s for one built before
    snapshots kept theirs). :func:`derived_rows` runs once per distinct configuration
    (most nights one: every snapshot was built under today's), today's always: a broken
    configuration stops retention, as it would stop tonight's publish. Run before the
    rows are destroyed; reads only.

    A stored configuration that cannot be read, or whose queries cannot be run over the
    rows, raises :class:`DerivedError` naming the snapshots built under it: no row may be
    destroyed whose copies in a kept snapshot cannot be found.
    """
    if not any(r.schema == "staged" and ids for r, ids in targets.items()):
        return Traced()  # only a staged row was ever in a snapshot
    todays = _own(today)
    configs: dict[str, tuple[CuratedConfig, list[str]]] = {todays: (today, [])}
    for path in snapshot_files(published_dir):  # every one read before any is traced
        config = stored_config(path, today) or today
        configs.setdefault(_own(config), (config, []))[1].append(path.name)
    traced: dict[str, DerivedRows] = {}
    for own, (config, names) in configs.items():
        try:
            rows = derived_rows(con, targets, config)
        except DerivedError as err:
            if own == todays:
                raise
            raise DerivedError(
                f"kept snapshot {', '.join(names)}, built under an earlier curation "
                f"configuration: {err}"
            ) from err
        traced |= {file_stem(name): rows for name in names}
    return Traced(traced)


# --- in a kept snapshot ----------------------------------------------------------------------


def _matching(con: duckdb.DuckDBPyConnection, table: str, on: str) -> pl.DataFrame:
    """Rows of ``table`` (with ``_rowid``) whose person holds a record named in
    ``_derived`` and matching it ``on`` (SQL over ``t`` and ``d``)."""
    return con.sql(
        f'select rowid as _rowid, * from "{table}" where rowid in ('
        f'select t.rowid from "{table}" t join person_records r on r.person_id = t.person_id '
        f"join _derived d on d.record_id = r.record_id and {on})"
    ).pl()


def _delete_rowids(con: duckdb.DuckDBPyConnection, table: str, rows: pl.DataFrame) -> int:
    if rows.is_empty():
        return 0
    return int(
        con.execute(
            f'delete from "{table}" where rowid in (select unnest(?::bigint[]))',
            [rows["_rowid"].to_list()],
        ).fetchall()[0][0]
    )


def _snapshot_as_of(con: duckdb.DuckDBPyConnection) -> date | None:
    as_of = snapshot_info(con, "as_of")
    return date.fromisoformat(as_of) if as_of is not None else None


def _summaries_again(
    con: duckdb.DuckDBPyConnection, people: list[str], config: CuratedConfig | None
) -> tuple[pl.DataFrame, int]:
    """The child summary rows of ``people`` computed again from what the snapshot now holds:
    (the rows that changed, rows changed in the snapshot). Without the rules or the
    snapshot's as-of date nothing can be computed, and their rows go instead."""
    if not people or not table_exists(con, "main", "child_summary"):
        return pl.DataFrame(), 0
    con.register("_derived_people", pl.DataFrame({"id": people}, schema={"id": pl.String}))
    try:
        where = "where person_id in (select id from _derived_people)"
        old = con.sql(f"select * from child_summary {where}").pl()
        as_of = _snapshot_as_of(con)
        if old.is_empty():
            return old.clear(), 0
        if config is None or as_of is None:
            gone = con.execute(f"delete from child_summary {where}").fetchall()[0][0]
            return old.clear(), int(gone)
        person = con.sql(f"select * from person {where}").pl()
        involvement = con.sql(f"select * from involvement {where}").pl()
        timeline = con.sql(f"select * from timeline {where}").pl()
        sources = con.sql(
            f"select distinct person_id, split_part(record_id, '|', 1) as source "
            f"from person_records {where}"
        ).pl()
        deliveries = dict(
            con.execute(
                "select source, last_extract_date from source_deliveries "
                "where last_extract_date is not null"
            ).fetchall()
        )
        fresh = conform(
            "child_summary",
            build_child_summary(person, involvement, timeline, sources, deliveries, config, as_of),
        )
        before = {row["person_id"]: row for row in old.to_dicts()}
        differs = [row != before.get(row["person_id"]) for row in fresh.to_dicts()]
        changed = fresh.filter(pl.Series(differs, dtype=pl.Boolean))
        if changed.is_empty():
            return changed, 0
        con.register("_derived_summary", changed)
        try:
            con.execute(
                "delete from child_summary where person_id in "
                "(select person_id from _derived_summary)"
            )
            con.execute("insert into child_summary by name select * from _derived_summary")
        finally:
            con.unregister("_derived_summary")
        return changed, changed.height
    finally:
        con.unregister("_derived_people")


def remove_from_snapshot(
    con: duckdb.DuckDBPyConnection, derived: DerivedRows
) -> tuple[Counts, Removed]:
    """Take what ``derived`` names out of the curated snapshot loaded in ``con``: rows
    removed or rewritten per table, and what was removed (for its analysts' file)."""
    empty = Removed(pl.DataFrame(), pl.DataFrame(), pl.DataFrame())
    if not derived:  # an erasure's purge, or nothing destroyed that a snapshot shows
        return {}, empty
    present = {r[0] for r in con.sql("select table_name from duckdb_tables()").fetchall()}
    if not {"person_records", "timeline", "involvement"} <= present:
        return {}, empty
    removed: dict[str, pl.DataFrame] = {}
    for table, frame, on in (
        (
            "timeline",
            derived.timeline,
            "d.agency = t.agency and d.source = t.source "
            "and d.source_key is not distinct from t.source_key",
        ),
        (
            "involvement",
            derived.involvement,
            "d.agency = t.agency and d.service is not distinct from t.service",
        ),
    ):
        con.register("_derived", frame)
        try:
            removed[table] = _matching(con, table, on)
        finally:
            con.unregister("_derived")
    counts = {t: _delete_rowids(con, t, rows) for t, rows in removed.items()}
    people = sorted(
        set(removed["timeline"]["person_id"].to_list())
        | set(removed["involvement"]["person_id"].to_list())
    )
    summaries, counts["child_summary"] = _summaries_again(con, people, derived.config)
    return counts, Removed(
        removed["timeline"].drop("_rowid"),
        removed["involvement"].drop("_rowid"),
        summaries,
    )


# --- in an analysts' file ----------------------------------------------------------------------


def _delete_matching(con: duckdb.DuckDBPyConnection, table: str, rows: pl.DataFrame) -> int:
    """Delete from ``table`` as many rows equal to each of ``rows`` (every column, nulls
    equal) as ``rows`` holds it, and no more: equal rows are interchangeable."""
    if rows.is_empty():
        return 0
    columns = rows.columns
    wanted = (
        rows.group_by(columns).agg(pl.len().alias("_n")).with_row_index("_g").cast({"_g": pl.Int64})
    )
    same = " and ".join(f't."{c}" is not distinct from w."{c}"' for c in columns)
    con.register("_derived_wanted", wanted)
    try:
        return int(
            con.execute(
                f'delete from "{table}" where rowid in (select _rowid from ('
                f"select t.rowid as _rowid, w._n, row_number() over "
                f"(partition by w._g order by t.rowid) as _k "
                f'from "{table}" t join _derived_wanted w on {same}) where _k <= _n)'
            ).fetchall()[0][0]
        )
    finally:
        con.unregister("_derived_wanted")


def remove_from_analyst(
    con: duckdb.DuckDBPyConnection, removed: list[Removed], key: bytes
) -> Counts:
    """Take out of the analysts' file loaded in ``con`` the rows made from what ``removed``
    says its snapshot lost, and give it the recomputed child summaries (``key``: the key
    the file was built with). ``removed`` holds one entry for a file paired with its
    snapshot; several when the pairing is unknown, and then each row is removed as many
    times as the snapshot holding it most often lost it, and the child summaries that
    changed in any snapshot go (which snapshot's to write is unknown)."""
    present = {r[0] for r in con.sql("select table_name from duckdb_tables()").fetchall()}
    hashed = Pseudonyms(key)
    counts: Counts = {}
    for table in ("timeline", "involvement"):
        if table not in present:
            continue
        parts = [
            analyst_frame(table, getattr(r, table), hashed)
            for r in removed
            if not getattr(r, table).is_empty()
        ]
        if not parts:
            continue
        columns = parts[0].columns
        most = (
            pl.concat([p.group_by(columns).agg(pl.len().alias("_n")) for p in parts])
            .group_by(columns)
            .agg(pl.col("_n").max())
        )
        rows = most.with_columns(pl.int_ranges(0, "_n").alias("_n")).explode("_n").drop("_n")
        counts[table] = _delete_matching(con, table, rows)
    if "child_summary" in present:
        counts["child_summary"] = _summaries_for_analyst(con, removed, hashed)
    return counts


def _summaries_for_analyst(
    con: duckdb.DuckDBPyConnection, removed: list[Removed], hashed: Pseudonyms
) -> int:
    """Replace the analysts' child summary rows of the people whose summary changed (only
    rows already there: a person withheld from the file stays out)."""
    if len(removed) == 1:
        fresh = removed[0].child_summary
        if fresh.is_empty():
            return 0
        rows = analyst_frame("child_summary", fresh, hashed)
        con.register("_derived_summary", rows)
        try:
            kept = con.sql(
                "select person_key from child_summary "
                "where person_key in (select person_key from _derived_summary)"
            ).pl()
        finally:
            con.unregister("_derived_summary")
        rows = rows.filter(pl.col("person_key").is_in(kept["person_key"].implode()))
        if rows.is_empty():
            return 0
        con.register("_derived_summary", rows)
        try:
            changed = con.execute(
                "delete from child_summary where person_key in "
                "(select person_key from _derived_summary)"
            ).fetchall()[0][0]
            con.execute("insert into child_summary by name select * from _derived_summary")
        finally:
            con.unregister("_derived_summary")
        return int(changed)
    people = sorted(
        {
            p
            for r in removed
            for p in r.child_summary.get_column(
                "person_id", default=pl.Series([], dtype=pl.String)
            ).to_list()
        }
    )
    if not people:
        return 0
    keys = hashed(pl.Series(people, dtype=pl.String)).to_list()
    return int(
        con.execute(
            "delete from child_summary where person_key in (select unnest(?::varchar[]))", [keys]
        ).fetchall()[0][0]
    )
