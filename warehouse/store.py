"""The DuckDB warehouse's ingest layers and how a delivery is written into them.

Schemas:

* ``raw.<source>__<table>`` — every record of every delivery as delivered (text), with
  file name, record number, file sha256, delivery id and load time. Append-only: a newer
  delivery never changes an older one's raw rows.
* ``staged.<source>__<table>`` — typed, validated rows per extract date (the partition),
  each with ``_record_hash`` so that the next delivery, a full snapshot again, stages only
  the records that are new or changed and takes the others' values from the current one
  (:mod:`warehouse.staging`; rows staged before hashes were kept have none and are simply
  staged afresh).
* ``quarantine.<source>__<table>`` — rows that broke a rule, as delivered, with the reason.
* ``current.<source>__<table>`` — a view of the staged rows of the source's latest loaded
  delivery: a newer delivery supersedes an older one, an older one arriving late does not.
* ``meta.deliveries`` — one row per delivery attempt: loaded, replaced or rejected.

A delivery is written in one transaction: all its tables or none, so a load killed at any
point leaves either the whole delivery or none of it (DuckDB replays or discards its WAL
when the file is next opened). Loading a delivery that is already loaded (same files,
same checksums) is a no-op reported as ``unchanged``, so re-running a night's job changes
nothing. A delivery older than the source's current one (arriving late) is loaded into
raw, staged and quarantine for its own date but does not replace ``current``; its
:class:`LoadResult` says so (``is_current`` false). A delivery dated after today is
rejected (:func:`warehouse.landing.check_not_future`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import polars as pl

from warehouse.landing import Delivery, DeliveryError, check_not_future, read_manifest
from warehouse.reader import RawTable, file_checksums, read_delivery
from warehouse.sources import Source
from warehouse.staging import RECORD_HASH, StagedTable, stage_table
from warehouse.tombstone import Tombstones

_META_DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS staged;
CREATE SCHEMA IF NOT EXISTS quarantine;
CREATE SCHEMA IF NOT EXISTS current;
CREATE SCHEMA IF NOT EXISTS meta;
CREATE TABLE IF NOT EXISTS meta.deliveries (
    delivery_id VARCHAR,
    source VARCHAR NOT NULL,
    extract_date DATE NOT NULL,
    status VARCHAR NOT NULL,          -- loaded | replaced | rejected
    recorded_at TIMESTAMP NOT NULL,
    origin VARCHAR,
    tables JSON,                      -- per table: file, sha256, rows, staged, quarantined
    rows_raw BIGINT,
    rows_staged BIGINT,
    rows_quarantined BIGINT,
    error VARCHAR
);
"""


def relation_name(source: str, table: str) -> str:
    return f"{source}__{table}"


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    """Whether ``schema.name`` exists (a table or a view)."""
    rows = con.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, name],
    ).fetchall()
    return rows[0][0] > 0


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the ingest schemas and ``meta.deliveries`` if this is a new warehouse."""
    con.execute(_META_DDL)


def connect(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file (creating its folder) with the ingest schemas in place."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        ensure_schema(con)
    return con


@dataclass(frozen=True)
class TableLoad:
    table: str
    origin: str
    sha256: str
    rows: int
    staged: int
    quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    identifier_validity: dict[str, tuple[int, int]] = field(default_factory=dict)  # (valid, n)


@dataclass(frozen=True)
class LoadResult:
    source: str
    extract_date: date
    delivery_id: str
    status: str  # "loaded" or "unchanged"
    tables: list[TableLoad]
    # The source's current extract date after this load: later than ``extract_date`` when
    # this delivery arrived after a newer one and so did not replace ``current``.
    current_extract_date: date | None = None

    @property
    def is_current(self) -> bool:
        """Whether ``current`` now shows this delivery (false for a late, older one)."""
        return self.current_extract_date == self.extract_date

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def staged(self) -> int:
        return sum(t.staged for t in self.tables)

    @property
    def quarantined(self) -> int:
        return sum(t.quarantined for t in self.tables)


def _delivery_id(source: str, extract_date: date, checksums: dict[str, str]) -> str:
    """Identity of a delivery: its source, date and every table's checksum."""
    digest = hashlib.sha256(f"{source}|{extract_date}".encode())
    for table in sorted(checksums):
        digest.update(f"|{table}:{checksums[table]}".encode())
    return digest.hexdigest()[:24]


def _columns(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> list[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [schema, name],
    ).fetchall()
    return [r[0] for r in rows]


def _write(
    con: duckdb.DuckDBPyConnection,
    schema: str,
    name: str,
    frame: pl.DataFrame,
    existing: list[str] | None = None,
) -> None:
    """Insert by column name, creating the table or adding columns new in the config.

    ``existing``: the table's columns when the caller has just looked them up (each look-up
    is a catalog query, a few milliseconds, and a delivery writes dozens of tables).
    """
    view = f"_incoming_{schema}"
    con.register(view, frame)
    try:
        if existing is None:
            existing = _columns(con, schema, name)
        if not existing:
            con.execute(f'CREATE TABLE {schema}."{name}" AS SELECT * FROM {view} LIMIT 0')
        else:
            described = con.execute(f"DESCRIBE SELECT * FROM {view}").fetchall()
            types = {row[0]: row[1] for row in described}
            for column in frame.columns:
                if column not in existing:
                    con.execute(
                        f'ALTER TABLE {schema}."{name}" ADD COLUMN "{column}" {types[column]}'
                    )
        con.execute(f'INSERT INTO {schema}."{name}" BY NAME SELECT * FROM {view}')
    finally:
        con.unregister(view)


def _refresh_current_view(con: duckdb.DuckDBPyConnection, source: str, table: str) -> None:
    name = relation_name(source, table)
    con.execute(
        f'CREATE OR REPLACE VIEW current."{name}" AS SELECT * FROM staged."{name}" '
        "WHERE _extract_date = (SELECT max(extract_date) FROM meta.deliveries "
        f"WHERE source = '{source}' AND status = 'loaded')"
    )


def record_rejection(
    con: duckdb.DuckDBPyConnection, delivery: Delivery, error: DeliveryError
) -> None:
    """Keep the fact of a rejected delivery (not its data) for the load report."""
    con.execute(
        "INSERT INTO meta.deliveries (source, extract_date, status, recorded_at, origin, error) "
        "VALUES (?, ?, 'rejected', ?, ?, ?)",
        [delivery.source, delivery.extract_date, _now(), str(delivery.folder), str(error)],
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _table_load(raw: RawTable, staged: StagedTable, source: Source) -> TableLoad:
    reasons: dict[str, int] = {}
    for codes in staged.quarantine["_reason_code"].to_list():
        for code in codes.split(","):
            reasons[code] = reasons.get(code, 0) + 1
    validity: dict[str, tuple[int, int]] = {}
    for column in source.tables[raw.table].identifiers():
        flags = staged.staged[f"{column}_valid"].drop_nulls()
        validity[column] = (int(flags.sum()), flags.len())
    return TableLoad(
        raw.table,
        raw.origin,
        raw.sha256,
        raw.rows,
        staged.staged.height,
        staged.quarantine.height,
        reasons,
        validity,
    )


def _already_loaded(con: duckdb.DuckDBPyConnection, delivery_id: str) -> list[TableLoad] | None:
    row = con.execute(
        "SELECT tables FROM meta.deliveries WHERE delivery_id = ? AND status = 'loaded'",
        [delivery_id],
    ).fetchall()
    if not row:
        return None
    return [
        TableLoad(
            **{
                **t,
                "identifier_validity": {k: tuple(v) for k, v in t["identifier_validity"].items()},
            }
        )
        for t in json.loads(row[0][0])
    ]


def _current_date(con: duckdb.DuckDBPyConnection, source: str) -> date | None:
    rows = con.execute(
        "SELECT max(extract_date) FROM meta.deliveries WHERE source = ? AND status = 'loaded'",
        [source],
    ).fetchall()
    return rows[0][0]


def _previous_staged(
    con: duckdb.DuckDBPyConnection, source: str, table: str, current: date | None
) -> pl.DataFrame | None:
    """The staged rows of the source's current delivery that carry a record hash, for
    :func:`warehouse.staging.stage_table` to reuse; None when there are none (a first
    delivery, or a warehouse whose rows were staged before hashes were kept)."""
    name = relation_name(source, table)
    if current is None or RECORD_HASH not in _columns(con, "staged", name):
        return None
    frame = con.sql(
        f"SELECT * EXCLUDE (_row_number, _delivery_id, _extract_date, _loaded_at, "
        f'_source_file, _file_sha256) FROM staged."{name}" '
        f"WHERE _extract_date = ? AND {RECORD_HASH} IS NOT NULL",
        params=[current],
    ).pl()
    return frame if frame.height else None


def load_delivery(
    con: duckdb.DuckDBPyConnection,
    delivery: Delivery,
    source: Source,
    tombstones: Tombstones | None = None,
    *,
    today: date | None = None,
) -> LoadResult:
    """Check, stage and write one delivery atomically; see the module docstring.

    Rows reaching an erased record (``tombstones``) go to quarantine as ``erased``.

    Raises DeliveryError (after recording the rejection) when the delivery is unusable;
    in that case nothing of it reaches raw, staged or quarantine. ``today`` (default: the
    local date) is what a future-dated delivery is judged against.
    """
    try:
        check_not_future(delivery, today)
    except DeliveryError as exc:
        record_rejection(con, delivery, exc)
        raise
    checked: str | None = None
    checksums = file_checksums(delivery, source)
    if checksums is not None:  # the same bytes were checked and loaded before: skip parsing
        checked = _delivery_id(source.name, delivery.extract_date, checksums)
        previous = _already_loaded(con, checked)
        if previous is not None:
            return LoadResult(
                source.name,
                delivery.extract_date,
                checked,
                "unchanged",
                previous,
                _current_date(con, source.name),
            )
    try:
        manifest = read_manifest(delivery)
        raws = read_delivery(delivery, source, manifest)
    except DeliveryError as exc:
        record_rejection(con, delivery, exc)
        raise
    delivery_id = _delivery_id(
        source.name, delivery.extract_date, {raw.table: raw.sha256 for raw in raws}
    )
    # Database tables (no checksums up front) are only identifiable once read.
    previous = None if delivery_id == checked else _already_loaded(con, delivery_id)
    if previous is not None:
        return LoadResult(
            source.name,
            delivery.extract_date,
            delivery_id,
            "unchanged",
            previous,
            _current_date(con, source.name),
        )

    current = _current_date(con, source.name)
    staged = [
        stage_table(raw, source, tombstones, _previous_staged(con, source.name, raw.table, current))
        for raw in raws
    ]
    loads = [_table_load(r, s, source) for r, s in zip(raws, staged, strict=True)]
    loaded_at = _now()
    meta = {
        "_delivery_id": pl.lit(delivery_id),
        "_extract_date": pl.lit(delivery.extract_date),
        "_loaded_at": pl.lit(loaded_at),
    }
    con.execute("BEGIN TRANSACTION")
    try:
        for raw, stage in zip(raws, staged, strict=True):
            name = relation_name(source.name, raw.table)
            provenance = {
                **meta,
                "_source_file": pl.lit(raw.origin),
                "_file_sha256": pl.lit(raw.sha256),
            }
            _write(con, "raw", name, raw.frame.with_columns(**provenance))
            for schema, frame in (("staged", stage.staged), ("quarantine", stage.quarantine)):
                existing = _columns(con, schema, name)
                if existing:
                    con.execute(
                        f'DELETE FROM {schema}."{name}" WHERE _extract_date = ?',
                        [delivery.extract_date],
                    )
                _write(con, schema, name, frame.with_columns(**provenance), existing)
        con.execute(
            "UPDATE meta.deliveries SET status = 'replaced' "
            "WHERE source = ? AND extract_date = ? AND status = 'loaded'",
            [source.name, delivery.extract_date],
        )
        con.execute(
            "INSERT INTO meta.deliveries VALUES (?, ?, ?, 'loaded', ?, ?, ?, ?, ?, ?, NULL)",
            [
                delivery_id,
                source.name,
                delivery.extract_date,
                loaded_at,
                str(delivery.folder),
                json.dumps([t.__dict__ for t in loads]),
                sum(t.rows for t in loads),
                sum(t.staged for t in loads),
                sum(t.quarantined for t in loads),
            ],
        )
        for raw in raws:
            _refresh_current_view(con, source.name, raw.table)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return LoadResult(
        source.name,
        delivery.extract_date,
        delivery_id,
        "loaded",
        loads,
        _current_date(con, source.name),
    )


def current_summary(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Per source: the current delivery's date and its rows loaded and quarantined."""
    return con.sql(
        """
        SELECT source, extract_date, rows_raw AS rows_delivered, rows_staged AS rows_loaded,
               rows_quarantined
        FROM meta.deliveries d
        WHERE status = 'loaded'
          AND extract_date = (SELECT max(extract_date) FROM meta.deliveries
                              WHERE source = d.source AND status = 'loaded')
        ORDER BY source
        """
    ).pl()
