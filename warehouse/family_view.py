"""One night's Family View: build a snapshot and the analysts' file, check both, publish.

The three steps are separate so Dagster can show each (the build as an asset, the checks
as blocking asset checks, the switch as a downstream asset) and so a failed check leaves
readers on yesterday's snapshot. ``sdv publish`` runs the same steps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from sqlalchemy.engine import Engine

from matching.config import LinkageConfig
from warehouse import curate, rectification, restriction
from warehouse.curated_config import CuratedConfig
from warehouse.curated_schema import DIRECT_IDENTIFIERS, TABLES
from warehouse.operational import ensure_schema
from warehouse.pseudonymise import FORBIDDEN_KINDS, analyst_comments, analyst_tables
from warehouse.publish import (
    CURATED_CONFIG,
    Published,
    PublishError,
    SnapshotStore,
    curated_comments,
    new_snapshot_id,
    open_snapshot,
    write_tables,
)
from warehouse.serving import serving_path, write_serving
from warehouse.sources import Source
from warehouse.stages import StageClock


@dataclass(frozen=True)
class BuiltSnapshot:
    snapshot: Path
    analyst: Path
    as_of: date
    rows: dict[str, int]
    unlinked: dict[str, int] = field(default_factory=dict)
    lapsed: int = 0  # rectifications a source overtook tonight (recorded as lapsed)
    # Per stage ("curate": the curated tables in memory, while the serving copy is being
    # written alongside; "write": the snapshot and analysts' file on disk and the serving
    # copy finished): seconds and peak resident MiB, so a slow or hungry night says where
    # it went.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_peak_mib: dict[str, float | None] = field(default_factory=dict)


class _Arriving(Mapping[str, pl.DataFrame]):
    """The curated tables, handed over one at a time as the build finishes them.

    Reading a table waits until it has arrived, so the serving copy (which reads them in
    order) can be written while later tables are still being built; if the build fails,
    every wait ends with :class:`_BuildFailed`.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._frames: dict[str, pl.DataFrame] = {}
        self._failed: BaseException | None = None
        self._changed = threading.Condition()

    def put(self, name: str, frame: pl.DataFrame) -> None:
        with self._changed:
            self._frames[name] = frame
            self._changed.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._changed:
            self._failed = error
            self._changed.notify_all()

    def __getitem__(self, name: str) -> pl.DataFrame:
        if name not in self._names:
            raise KeyError(name)
        with self._changed:
            self._changed.wait_for(lambda: name in self._frames or self._failed is not None)
            if name in self._frames:
                return self._frames[name]
        raise _BuildFailed(f"the build failed before {name} was finished") from self._failed

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _BuildFailed(RuntimeError):
    """The curated build failed while its serving copy was being written."""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def build_snapshot(
    con: duckdb.DuckDBPyConnection,
    store: SnapshotStore,
    linkage: LinkageConfig,
    config: CuratedConfig,
    sources: dict[str, Source],
    key: bytes,
    operational: Engine | None = None,
) -> BuiltSnapshot:
    """Write tonight's curated snapshot and analysts' file (not yet visible to readers).

    With the ``operational`` store, its active rectifications are applied and those a
    source has overtaken are recorded there as lapsed.
    """
    clock = StageClock()
    snapshot_path, analyst_path = store.new_paths(new_snapshot_id())
    # The serving copy is written by a second thread, table by table as the build finishes
    # each: the build is mostly one core's work and SQLite inserts another's, so on two
    # cores the copy is largely done by the time the snapshot itself is written.
    arriving = _Arriving(curate.TABLE_ORDER)
    with ThreadPoolExecutor(1, thread_name_prefix="serving") as pool:
        copy = pool.submit(write_serving, snapshot_path, arriving)
        try:
            with clock.stage("curate"):
                active = None
                if operational is not None:
                    ensure_schema(operational)
                    active = rectification.for_build(operational)
                built = curate.build(con, linkage, config, sources, active, arriving.put)
                if operational is not None:
                    rectification.record_lapsed(
                        operational, [(x.id, x.reason) for x in built.lapsed]
                    )
        except BaseException as err:
            arriving.fail(err)  # the copy stops; its unfinished file is removed below
            pool.shutdown(wait=True)
            unfinished = serving_path(snapshot_path)
            unfinished.with_name(unfinished.name + ".building").unlink(missing_ok=True)
            raise
        with clock.stage("write"):
            info = {
                "snapshot": snapshot_path.name,
                "as_of": built.as_of,
                "unlinked": built.unlinked,
                # What the snapshot was built under, so retention can find what it made of
                # a destroyed row after the configuration changed (warehouse.derived). The
                # analysts' file is not given it: it holds its as-of date only.
                CURATED_CONFIG: config.model_dump(mode="json"),
            }
            write_tables(snapshot_path, built.tables, info, curated_comments())
            analyst = analyst_tables(built.tables, key, _restricted(built.tables, operational))
            write_tables(analyst_path, analyst, {"as_of": built.as_of}, analyst_comments())
            copy.result()
    return BuiltSnapshot(
        snapshot=snapshot_path,
        analyst=analyst_path,
        as_of=built.as_of,
        rows={name: frame.height for name, frame in built.tables.items()},
        unlinked=built.unlinked,
        lapsed=len(built.lapsed),
        stage_seconds=clock.rounded_seconds(),
        stage_peak_mib=dict(clock.peak_mib),
    )


def _restricted(tables: dict[str, pl.DataFrame], operational: Engine | None) -> set[str]:
    """Tonight's ids of the persons holding a record under an active restriction."""
    records = restriction.restricted_records(operational) if operational is not None else []
    if not records:
        return set()
    links = tables["person_records"]
    return set(links.filter(pl.col("record_id").is_in(records))["person_id"])


def _tables(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    rows = con.sql(
        "select table_name, column_name from duckdb_columns() where schema_name = 'main' "
        "and database_name = current_database() and not internal "
        "order by table_name, column_index"
    ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return out


def identifying_values(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Every direct-identifier and free-text value in a snapshot, as text: what must never
    appear anywhere in the analysts' file."""
    values: set[str] = set()
    for table in TABLES.values():
        for column in table.columns:
            if column.kind not in DIRECT_IDENTIFIERS | {"free_text", "contact"}:
                continue
            if column.type.endswith("[]"):
                sql = f'select distinct unnest("{column.name}") from "{table.name}"'
            else:
                sql = f'select distinct cast("{column.name}" as varchar) from "{table.name}"'
            found = (v for (v,) in con.sql(sql).fetchall() if v)
            if column.kind == "postcode":  # an outward code alone is a district, not an address
                found = (v for v in found if len(v.replace(" ", "")) > 4)
            values.update(found)
    return values


def _identifying_sql(database: str) -> str:
    """The query giving ``identifying_values`` of the snapshot attached as ``database``
    (same columns, same casts, same rules), so the comparison can stay inside DuckDB."""
    parts = []
    for table in TABLES.values():
        for column in table.columns:
            if column.kind not in DIRECT_IDENTIFIERS | {"free_text", "contact"}:
                continue
            value = (
                f'unnest("{column.name}")'
                if column.type.endswith("[]")
                else f'cast("{column.name}" as varchar)'
            )
            rule = "length(replace(v, ' ', '')) > 4" if column.kind == "postcode" else "true"
            parts.append(
                f'select v from (select distinct {value} as v from {database}."{table.name}") '
                f"where v is not null and v <> '' and {rule}"
            )
    return " union ".join(parts)


def analyst_leaks(analyst: Path, snapshot: Path) -> list[str]:
    """Columns of the analysts' file holding any value that is a name, date of birth,
    identifier, address, postcode, contact or free text in the snapshot.

    Every value of both files is still compared (as ``identifying_values`` and a distinct
    scan of each analyst column would), but as a join inside DuckDB with both files
    attached read-only, instead of moving every distinct value into Python sets."""
    for path in (analyst, snapshot):
        if not path.exists():
            raise PublishError(f"snapshot {path} does not exist")
    con = duckdb.connect()
    try:
        con.execute(f"attach '{_quote(snapshot)}' as s (read_only)")
        con.execute(f"attach '{_quote(analyst)}' as a (read_only)")
        con.execute(f"create temp table forbidden as {_identifying_sql('s')}")
        columns = con.execute(
            "select table_name, column_name from duckdb_columns() where schema_name = 'main' "
            "and database_name = 'a' and not internal order by table_name, column_index"
        ).fetchall()
        counts = [
            f"select {i} as i, count(*) as hits from (select distinct "
            f'cast("{column}" as varchar) as v from a."{table}") '
            "where v in (select v from forbidden)"
            for i, (table, column) in enumerate(columns)
        ]
        hits = dict(con.execute(" union all ".join(counts)).fetchall()) if counts else {}
    finally:
        con.close()
    return [
        f"{table}.{column}: {hits[i]} identifying value(s)"
        for i, (table, column) in enumerate(columns)
        if hits.get(i)
    ]


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def check_snapshot(built: BuiltSnapshot, con: duckdb.DuckDBPyConnection) -> list[Check]:
    """The checks a snapshot must pass before readers are switched to it."""
    checks = []
    with open_snapshot(built.snapshot) as snap:
        tables = _tables(snap)
        mismatched = [
            name for name, table in TABLES.items() if tables.get(name) != list(table.column_names)
        ]
        checks.append(
            Check(
                "schema_matches_dictionary",
                not mismatched,
                "Every curated table is present with exactly the documented columns.",
                {"mismatched": mismatched},
            )
        )
        linked_people = con.sql(
            "select count(distinct person_id) from linked.person_records"
        ).fetchall()[0][0]
        curated_people = snap.sql("select count(*) from person").fetchall()[0][0]
        checks.append(
            Check(
                "every_person_curated",
                linked_people == curated_people,
                "Every person the linkage resolved has exactly one golden record.",
                {"linked_persons": linked_people, "person_rows": curated_people},
            )
        )
        duplicates = snap.sql(
            "select count(*) - count(distinct person_id) from child_summary"
        ).fetchall()[0][0]
        checks.append(
            Check(
                "one_summary_per_child",
                duplicates == 0,
                "child_summary has one row per child.",
                {"duplicate_rows": duplicates},
            )
        )
    analyst_columns = {f"{t}.{c}" for t, cols in _open_tables(built.analyst).items() for c in cols}
    forbidden_columns = sorted(
        f"{t.name}.{c.name}"
        for t in TABLES.values()
        for c in t.columns
        if c.kind in FORBIDDEN_KINDS and f"{t.name}.{c.name}" in analyst_columns
    )
    leaks = analyst_leaks(built.analyst, built.snapshot)
    checks.append(
        Check(
            "analyst_file_pseudonymised",
            not forbidden_columns and not leaks,
            "The analysts' file holds no name, date of birth, identifier, address, full "
            "postcode, contact or free text, by column and by value.",
            {"forbidden_columns": forbidden_columns, "leaks": leaks},
        )
    )
    return checks


def _open_tables(path: Path) -> dict[str, list[str]]:
    with open_snapshot(path) as con:
        return _tables(con)


def publish_snapshot(store: SnapshotStore, built: BuiltSnapshot, checks: list[Check]) -> Published:
    """Switch readers to ``built`` if every check passed; otherwise refuse, naming them."""
    failed = [c.name for c in checks if not c.passed]
    if failed:
        raise RuntimeError(
            f"snapshot {built.snapshot.name} not published: checks failed: {', '.join(failed)}"
        )
    return store.publish(
        built.snapshot,
        built.analyst,
        built.as_of,
        {c.name: c.passed for c in checks},
    )
