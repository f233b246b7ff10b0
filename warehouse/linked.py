"""The ``linked`` schema: who each record is, who lives together, and how we got there.

Tables (all documented in DuckDB's catalog comments, see ``DICTIONARY``):

- ``linked.person_records``: every person-level record and its person id;
- ``linked.retired_records``: records no longer delivered, with the person each last
  resolved to (``warehouse.retired`` follows them for erasure and subject access);
- ``linked.household_members``, ``linked.person_relationships``;
- ``linked.person_events``: merges, splits, new and retired person ids, per run;
- ``linked.person_ids``: every person id ever issued, so an id is never reused;
- ``linked.scored_pairs`` and ``linked.record_fingerprints``: last night's scores and what
  each record looked like, so tonight only new or changed records are re-scored;
- ``linked.record_regions`` and ``linked.ambiguous_pairs``: each record's independence
  region and what resolve read about it, and the pairs held back as ambiguous, so tonight
  only regions that changed are clustered again (``matching.regions``);
- ``linked.runs``: one row per linkage run (model version, counts, stage timings).

A run is written in one transaction: readers see last night's linkage or tonight's, never
half of each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from warehouse.store import table_exists

DICTIONARY: dict[str, tuple[str, dict[str, str]]] = {
    "person_records": (
        "Every person-level record of the current deliveries and the person it resolves to.",
        {
            "record_id": "source|table|local key",
            "source": "delivering agency (source config name)",
            "source_table": "table within the source, as in the extract spec",
            "local_key": "the source's own key (contacts: UPN|priority)",
            "person_id": "stable person id; follows merges and splits in person_events",
            "match_confidence": "probability of the strongest link joining this record to its"
            " person; null when the record stands alone",
            "from_quarantine": "the row failed staging rules but was still linked",
            "cluster_size": "records held by this person",
            "oversized": "more records than thresholds.max_cluster_size: review it",
            "run_id": "linkage run that produced this row",
        },
    ),
    "retired_records": (
        "Person-level records a source has stopped delivering, and the person each resolved"
        " to on the last night it was delivered: its rows stay in the ingest layers until"
        " retention, and erasure and subject access still reach them.",
        {
            "record_id": "source|table|local key",
            "person_id": "the person the record last resolved to; follow person_events for"
            " merges since",
            "run_id": "the first linkage run without the record",
        },
    ),
    "household_members": (
        "People currently living at the same address, one household each.",
        {
            "household_id": "stable per address (H + hash); H-<person> when no address known",
            "person_id": "person id",
            "role": "adult or child (under 18 on the extract date)",
            "from_date": "earliest dated evidence of this address, where known",
            "to_date": "null while current",
        },
    ),
    "person_relationships": (
        "Family relationships, also across households.",
        {
            "person_id": "the first person",
            "related_person_id": "the related person",
            "relationship": "what the related person is to the first",
            "evidence": "which source says so",
        },
    ),
    "person_events": (
        "Person ids created, merged, split or retired, per run.",
        {
            "run_id": "linkage run",
            "event": "new | merge | split | retired",
            "person_id": "id after the event (null when retired)",
            "previous_person_ids": "ids before the event",
            "records": "records held after the event",
        },
    ),
    "record_regions": (
        "Each record's independence region in the last run: regions whose records did not"
        " change keep their persons on the next run.",
        {
            "record_id": "source|table|local key",
            "region": "the region's smallest record_id",
            "resolve_hash": "digest of everything linkage read about the record",
        },
    ),
    "ambiguous_pairs": (
        "Scored pairs the last run held back as ambiguous (a record fitting two people).",
        {
            "unique_id_l": "record_id of one side",
            "unique_id_r": "record_id of the other side",
            "match_probability": "the pair's score",
        },
    ),
}

_DDL = """
create schema if not exists linked;
create table if not exists linked.person_ids (person_id varchar primary key, first_run varchar);
create table if not exists linked.runs (
    run_id varchar, started_at timestamp, model_version varchar, records bigint,
    persons bigint, households bigint, changed_records bigint, scored_pairs bigint,
    review_pairs bigint, oversized bigint, events varchar, timings varchar
);
create table if not exists linked.person_events (
    run_id varchar, event varchar, person_id varchar, previous_person_ids varchar[],
    records bigint
);
create table if not exists linked.retired_records (
    record_id varchar, person_id varchar, run_id varchar
);
"""


def ensure_linked_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_DDL)


def _exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return table_exists(con, "linked", table)


def read_table(con: duckdb.DuckDBPyConnection, table: str) -> pl.DataFrame | None:
    """A ``linked`` table as a frame, or None before the first run."""
    return con.sql(f"select * from linked.{table}").pl() if _exists(con, table) else None


def previous_registry(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    found = read_table(con, "person_records")
    if found is None:
        return pl.DataFrame(schema={"record_id": pl.String, "person_id": pl.String})
    return found.select("record_id", "person_id")


def earlier_ids(
    con: duckdb.DuckDBPyConnection, person_id: str, *, merges_only: bool = False
) -> set[str]:
    """Person ids that became ``person_id`` over every run, directly or through ids that
    became those (``person_id`` itself not included): merged into it, or, unless
    ``merges_only``, split from into it. The audit keeps ids as they were when read, and a
    retired record keeps the id it last had, so both follow these."""
    if not _exists(con, "person_events"):
        return set()
    merges = " and event = 'merge'" if merges_only else ""
    events = con.execute(
        "select person_id, previous_person_ids from linked.person_events "
        f"where person_id is not null{merges}"
    ).fetchall()
    found, frontier = {person_id}, {person_id}
    while frontier:
        frontier = {p for pid, prevs in events if pid in frontier for p in prevs or []} - found
        found |= frontier
    return found - {person_id}


def issued_ids(con: duckdb.DuckDBPyConnection) -> set[str]:
    ensure_linked_schema(con)
    return {r[0] for r in con.execute("select person_id from linked.person_ids").fetchall()}


def last_model_version(con: duckdb.DuckDBPyConnection) -> str | None:
    if not _exists(con, "runs"):
        return None
    rows = con.execute(
        "select model_version from linked.runs order by started_at desc limit 1"
    ).fetchall()
    return rows[0][0] if rows else None


def reusable(
    con: duckdb.DuckDBPyConnection,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame] | None:
    """Last run's ``record_regions``, persons (record_id, person_id, match_confidence) and
    ``ambiguous_pairs``; None when a warehouse has not stored them (an older one)."""
    tables = ("record_regions", "person_records", "ambiguous_pairs")
    if not all(_exists(con, t) for t in tables):
        return None
    persons = con.sql(
        "select record_id, person_id, match_confidence from linked.person_records"
    ).pl()
    return (
        con.sql("select record_id, region, resolve_hash from linked.record_regions").pl(),
        persons,
        con.sql("select * from linked.ambiguous_pairs").pl(),
    )


def _replace(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> None:
    con.register("_frame", frame)
    try:
        con.execute(f"create or replace table linked.{table} as select * from _frame")
    finally:
        con.unregister("_frame")


def _comment(con: duckdb.DuckDBPyConnection) -> None:
    for table, (about, columns) in DICTIONARY.items():
        if not _exists(con, table):
            continue
        con.execute(f"comment on table linked.{table} is '{about.replace(chr(39), chr(39) * 2)}'")
        for column, text in columns.items():
            con.execute(
                f"comment on column linked.{table}.{column} is "
                f"'{text.replace(chr(39), chr(39) * 2)}'"
            )


def _retire(con: duckdb.DuckDBPyConnection, tonight: pl.DataFrame, run_id: str) -> None:
    """Keep the person of every record last run had and tonight's has not, and forget a
    retired record delivered again. Its rows are still in the ingest layers (until
    retention), so erasure and subject access must still find whose they are."""
    if not _exists(con, "person_records"):
        return
    con.register("_tonight", tonight.select("record_id"))
    try:
        con.execute(
            "insert into linked.retired_records select p.record_id, p.person_id, ? "
            "from linked.person_records p anti join _tonight t using (record_id)",
            [run_id],
        )
        con.execute(
            "delete from linked.retired_records where record_id in (select record_id from _tonight)"
        )
    finally:
        con.unregister("_tonight")


def write_run(
    con: duckdb.DuckDBPyConnection,
    *,
    run: dict[str, Any],
    person_records: pl.DataFrame,
    households: pl.DataFrame,
    relationships: pl.DataFrame,
    events: pl.DataFrame,
    scored_pairs: pl.DataFrame,
    fingerprints: pl.DataFrame,
    regions: pl.DataFrame | None = None,
    ambiguous: pl.DataFrame | None = None,
) -> None:
    """Publish one linkage run atomically (replace current tables, append history).

    ``regions`` (record_id, region, resolve_hash) and ``ambiguous`` are what the next run
    needs to keep unchanged regions' persons; without them the stored ones are dropped,
    so the next run clusters everything.
    """
    ensure_linked_schema(con)
    con.execute("begin transaction")
    try:
        _retire(con, person_records, run["run_id"])
        _replace(
            con,
            "person_records",
            person_records.with_columns(pl.lit(run["run_id"]).alias("run_id")),
        )
        _replace(con, "household_members", households)
        _replace(con, "person_relationships", relationships)
        _replace(con, "scored_pairs", scored_pairs)
        _replace(con, "record_fingerprints", fingerprints)
        if regions is not None and ambiguous is not None:
            _replace(con, "record_regions", regions)
            _replace(con, "ambiguous_pairs", ambiguous)
        else:
            con.execute("drop table if exists linked.record_regions")
            con.execute("drop table if exists linked.ambiguous_pairs")
        con.register("_events", events)
        con.execute("insert into linked.person_events select * from _events")
        con.unregister("_events")
        ids = (
            person_records.select("person_id")
            .unique()
            .with_columns(pl.lit(run["run_id"]).alias("first_run"))
        )
        con.register("_ids", ids)
        con.execute(
            "insert into linked.person_ids select * from _ids "
            "where person_id not in (select person_id from linked.person_ids)"
        )
        con.unregister("_ids")
        row = {
            **run,
            "events": json.dumps(run.get("events", {})),
            "timings": json.dumps(run.get("timings", {})),
        }
        con.execute(
            "insert into linked.runs values ($run_id, $started_at, $model_version, $records, "
            "$persons, $households, $changed_records, $scored_pairs, $review_pairs, $oversized, "
            "$events, $timings)",
            row,
        )
        _comment(con)
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise


def links_export(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """``source,table,local_key,person_id`` for every person-level record."""
    found = read_table(con, "person_records")
    if found is None:
        raise LookupError("no linkage has run yet: run `sdv link` (or the nightly job) first")
    return found.select(
        "source", pl.col("source_table").alias("table"), "local_key", "person_id"
    ).sort("source", "table", "local_key")


def households_export(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """``person_id,household_id`` for every person."""
    found = read_table(con, "household_members")
    if found is None:
        raise LookupError("no linkage has run yet: run `sdv link` (or the nightly job) first")
    return found.select("person_id", "household_id").sort("person_id")


def withhold(
    con: duckdb.DuckDBPyConnection, frame: pl.DataFrame, record_ids: list[str]
) -> tuple[pl.DataFrame, int]:
    """``frame`` without the persons holding any of ``record_ids`` (records under a
    restriction of processing), and how many persons that left out. A restricted person
    is found through tonight's links, as the access layer finds them in the snapshot."""
    if not record_ids:
        return frame, 0
    held = {
        pid
        for (pid,) in con.execute(
            "select distinct person_id from linked.person_records "
            "where list_contains(?, record_id)",
            [record_ids],
        ).fetchall()
    }
    hidden = pl.col("person_id").is_in(list(held))
    return frame.filter(~hidden), frame.filter(hidden)["person_id"].n_unique()


def write_csv(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
