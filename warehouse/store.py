"""The DuckDB warehouse's ingest layers and how a delivery is written into them.

Schemas:

* ``raw.<source>__<table>`` — every distinct record ever delivered, as delivered (text),
  once: with its ``_record_hash`` (:mod:`warehouse.staging`), its number in the table
  (``_record_id``) and where it was first delivered (file name, record number, file
  sha256, delivery id and load time). Append-only.
* ``staged.<source>__<table>`` — every distinct record that passed the staging rules,
  typed and validated, once, with the same hash and number as its raw record.
* ``delivered.<source>__<table>`` — one narrow row per record per delivery: which
  delivery carried which record (``_record_id``) at which record number, and whether
  that delivery staged it. So which deliveries said what is kept exactly.
* ``quarantine.<source>__<table>`` — rows that broke a rule, as delivered, with the reason,
  per delivery (the reason can depend on the delivery: a repeated key).
* ``current.<source>__<table>`` — a view of the staged rows of the source's latest loaded
  delivery, with that delivery's record numbers: a newer delivery supersedes an older one,
  an older one arriving late does not.
* ``meta.deliveries`` — one row per delivery attempt: loaded, replaced or rejected; a
  loaded one with the fingerprint of the folder it was read from (:func:`loaded_folders`).

**Why a record is stored once.** A delivery is a full snapshot (``extract-spec.md``) in
which nearly every record is last night's again. Storing each delivery's copy of every
record made ``raw`` and ``staged`` grow by the whole delivery every night (about 50 MiB a
night, 18 GiB a year at 100,000 households), slowed every load's writes, and made
retention, subject access and erasure (which rewrites the file) scan and copy all those
copies. Now a night writes its new or changed records and one ``delivered`` row per
record. :func:`per_delivery_sql` gives any layer back as one row per record per delivery,
as it was once stored.

A delivery is written in one transaction: all its tables or none, so a load killed at any
point leaves either the whole delivery or none of it (DuckDB replays or discards its WAL
when the file is next opened). Loading a delivery that is already loaded (same files,
same checksums) is a no-op reported as ``unchanged``, so re-running a night's job changes
nothing. A delivery older than the source's current one (arriving late) is loaded for its
own date but does not replace ``current``; its :class:`LoadResult` says so (``is_current``
false). A delivery for a date already loaded replaces that date's delivery: the old one's
``delivered`` rows stay (raw keeps what was delivered) but are no longer staged. A
delivery dated after today is rejected (:func:`warehouse.landing.check_not_future`).
A warehouse written when each delivery's copy was stored is converted on first opening
for writing (:func:`migrate_layout`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import polars as pl

from warehouse import file_modes
from warehouse.landing import (
    Delivery,
    DeliveryError,
    DeliveryGone,
    check_not_future,
    delivery_fingerprint,
    read_manifest,
)
from warehouse.reader import ROW_NUMBER, RawTable, file_checksums, read_delivery
from warehouse.sources import Source
from warehouse.staging import RECORD_HASH, StagedTable, stage_table
from warehouse.tombstone import Tombstones

_log = logging.getLogger(__name__)

FINGERPRINT = "folder_fingerprint"

_META_DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS staged;
CREATE SCHEMA IF NOT EXISTS quarantine;
CREATE SCHEMA IF NOT EXISTS delivered;
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
-- Since the folder fingerprint: the landing folder as loaded (names, sizes, mtimes).
ALTER TABLE meta.deliveries ADD COLUMN IF NOT EXISTS folder_fingerprint VARCHAR;
"""


def relation_name(source: str, table: str) -> str:
    return f"{source}__{table}"


# Where a record sat in each delivery: the columns ``delivered`` keeps per delivery, and
# ``raw`` and ``staged`` keep for the delivery that first carried the record.
PROVENANCE = (
    ROW_NUMBER,
    "_delivery_id",
    "_extract_date",
    "_loaded_at",
    "_source_file",
    "_file_sha256",
)
STAGED_FLAG = "_staged"  # delivered: the delivery staged this record (else quarantined)
# A record's number in its table, given when raw first holds it: what ``delivered`` and
# ``staged`` refer to it by. An integer, not the 128-bit hash, because a delivery's rows
# mostly name records in the order they were first delivered, so a night's ``delivered``
# rows compress to a few bytes each (a hash is 16 random bytes a row, every night).
RECORD_ID = "_record_id"


def per_delivery_sql(schema: str, name: str, *, rowid: bool = False) -> str:
    """SQL for ``raw`` or ``staged`` as one row per record per delivery (the record's
    columns, that delivery's provenance): what each delivery said, for the checks and
    views that ask about one delivery. ``staged`` rows are those the delivery staged.
    ``rowid``: also the record's DuckDB ``rowid`` as ``_rowid`` (what purges delete by)."""
    provenance = ", ".join(f"d.{c} AS {c}" for c in PROVENANCE)
    staged_only = f" WHERE d.{STAGED_FLAG}" if schema == "staged" else ""
    row = "t.rowid AS _rowid, " if rowid else ""
    return (
        f"SELECT {row}t.* EXCLUDE ({RECORD_ID}) REPLACE ({provenance}) "
        f'FROM delivered."{name}" d JOIN {schema}."{name}" t '
        f"ON t.{RECORD_ID} = d.{RECORD_ID}{staged_only}"
    )


def holds_records_once(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    """Whether ``schema.name`` holds each record once, its deliveries in ``delivered``
    (``raw`` and ``staged``; read them per delivery with :func:`per_delivery_sql`)."""
    return schema in ("raw", "staged") and table_exists(con, "delivered", name)


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    """Whether ``schema.name`` exists (a table or a view)."""
    rows = con.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, name],
    ).fetchall()
    return rows[0][0] > 0


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the ingest schemas and ``meta.deliveries`` if this is a new warehouse, and
    bring an older one up to date: the folder fingerprint column, and each record stored
    once instead of every delivery's copy (:func:`migrate_layout`)."""
    con.execute(_META_DDL)
    migrate_layout(con)


def connect(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file (creating its folder) with the ingest schemas in place."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        if str(path) != ":memory:":
            file_modes.restrict(Path(path))  # every record ever delivered: ours alone
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
    *,
    new_only: bool = False,
) -> None:
    """Insert by column name, creating the table or adding columns new in the config.

    ``existing``: the table's columns when the caller has just looked them up (each look-up
    is a catalog query, a few milliseconds, and a delivery writes dozens of tables).
    ``new_only``: insert only rows whose ``_record_hash`` the table does not hold yet
    (``staged`` keeps each record once).
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
        target = f'{schema}."{name}"'
        if new_only and existing:
            con.execute(
                f"INSERT INTO {target} BY NAME SELECT v.* FROM {view} v "
                f"ANTI JOIN {target} t ON t.{RECORD_HASH} = v.{RECORD_HASH}"
            )
        else:
            con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {view}")
    finally:
        con.unregister(view)


def _refresh_current_view(con: duckdb.DuckDBPyConnection, name: str, current: date | None) -> None:
    """``current.<name>``: the staged rows of the source's newest loaded delivery, in its
    record order. Only one delivery per date is staged (a replaced one is not).

    The date is written into the view, refreshed by every load (only a load changes which
    delivery is current), so reading it scans that delivery's ``delivered`` rows alone
    however many nights are kept, rather than comparing every night's with a subquery.
    """
    # Nothing loaded (a migrated table of a rejected-only source): an empty view.
    day = "NULL" if current is None else f"DATE '{current.isoformat()}'"
    con.execute(
        f'CREATE OR REPLACE VIEW current."{name}" AS SELECT * FROM ('
        f"{per_delivery_sql('staged', name)}) WHERE _extract_date = {day} ORDER BY {ROW_NUMBER}"
    )


def migrate_layout(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Convert every ingest table still stored as each delivery's copy of every record (a
    warehouse written before records were stored once) and return their names.

    Each raw row keeps its place in its delivery as a ``delivered`` row; ``raw`` and
    ``staged`` keep the first copy of each record. A record's hash is the one staging gave
    it to this or an identical copy (so the next delivery finds it), else a digest of its
    delivered columns marked ``legacy-`` (a record only ever quarantined, or staged before
    hashes were kept: the next delivery of it is then stored once more, nothing is lost).
    One transaction: all or nothing. DuckDB does not shrink a file: the space the copies
    took is reused by the nights after (or given back by any rewrite of the file, as an
    erasure or retention run does).
    """
    names = [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw' "
            "AND table_type = 'BASE TABLE' AND table_name NOT IN (SELECT table_name FROM "
            "information_schema.tables WHERE table_schema = 'delivered') ORDER BY 1"
        ).fetchall()
    ]
    if not names:
        return []
    _log.warning(
        "Converting %d ingest tables to hold each delivered record once (a one-off after an "
        "upgrade; about 30 s for nine nightly deliveries of 100,000 households)",
        len(names),
    )
    sources = [r[0] for r in con.execute("SELECT DISTINCT source FROM meta.deliveries").fetchall()]
    con.execute("SET enable_progress_bar = false")  # DuckDB's own bar would go to stdout
    con.execute("BEGIN TRANSACTION")
    try:
        for name in names:
            _migrate_table(con, name)
            owner = [s for s in sources if name.startswith(f"{s}__")]
            if owner and table_exists(con, "staged", name):
                _refresh_current_view(con, name, _current_date(con, max(owner, key=len)))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.execute("RESET enable_progress_bar")
    return names


def _legacy_digest(columns: list[str], alias: str) -> str:
    fields = ", ".join(f'"{c}" := {alias}."{c}"' for c in columns)
    return f"'legacy-' || md5(CAST(to_json(struct_pack({fields})) AS VARCHAR))"


def _migrate_table(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """One table of :func:`migrate_layout`."""
    content = [c for c in _columns(con, "raw", name) if c not in PROVENANCE]
    has_staged = table_exists(con, "staged", name)
    staged_columns = _columns(con, "staged", name) if has_staged else []
    staged_hash = f"s.{RECORD_HASH}" if RECORD_HASH in staged_columns else "NULL"
    join = (
        f'LEFT JOIN staged."{name}" s ON s._delivery_id = r._delivery_id '
        "AND s._row_number = r._row_number"
        if has_staged
        else "LEFT JOIN (SELECT NULL AS _row_number) s ON false"
    )
    first = (
        "QUALIFY row_number() OVER (PARTITION BY {h} ORDER BY {a}._extract_date, "
        "{a}._loaded_at, {a}._row_number) = 1 ORDER BY _extract_date, _loaded_at, _row_number"
    )
    # A copy staging did not hash (quarantined, or in a replaced delivery) takes the hash
    # of an identical copy it did hash, so the record is still held once.
    digest = _legacy_digest(content, "r")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _migrating AS SELECT r.*, coalesce({staged_hash}, "
        f"min({staged_hash}) OVER (PARTITION BY {digest}), {digest}) AS __hash, "
        f's._row_number IS NOT NULL AS __staged FROM raw."{name}" r {join}'
    )
    # Each distinct record once, numbered in the order it was first delivered.
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _once AS SELECT * EXCLUDE (__hash, __staged), "
        f"__hash AS {RECORD_HASH} FROM _migrating " + first.format(h="__hash", a="_migrating")
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _ids AS SELECT {RECORD_HASH}, "
        f"row_number() OVER (ORDER BY _extract_date, _loaded_at, _row_number) AS {RECORD_ID} "
        "FROM _once"
    )
    con.execute(
        f'CREATE TABLE delivered."{name}" AS SELECT m._row_number, m.__staged AS {STAGED_FLAG}, '
        f"i.{RECORD_ID}, {', '.join(f'm.{c}' for c in PROVENANCE[1:])} FROM _migrating m "
        f"JOIN _ids i ON i.{RECORD_HASH} = m.__hash "
        "ORDER BY m._extract_date, m._loaded_at, m._row_number"
    )
    con.execute(f'DROP TABLE raw."{name}"')
    con.execute(
        f'CREATE TABLE raw."{name}" AS SELECT o.*, i.{RECORD_ID} FROM _once o '
        f"JOIN _ids i USING ({RECORD_HASH}) ORDER BY i.{RECORD_ID}"
    )
    if has_staged:
        own = [c for c in staged_columns if c not in PROVENANCE and c != RECORD_HASH]
        hash_sql = f"coalesce(m.__hash, {staged_hash}, {_legacy_digest(own, 's')})"
        select = (
            f"s.* REPLACE ({hash_sql} AS {RECORD_HASH})"
            if RECORD_HASH in staged_columns
            else f"s.*, {hash_sql} AS {RECORD_HASH}"
        )
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _staged_rows AS SELECT {select}, m.__hash IS NULL "
            f'AS __unmatched FROM staged."{name}" s LEFT JOIN _migrating m '
            "ON m._delivery_id = s._delivery_id AND m._row_number = s._row_number"
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _staged_once AS SELECT * "
            "FROM _staged_rows " + first.format(h=RECORD_HASH, a="_staged_rows")
        )
        # A staged row without its raw row (none should exist) is numbered after the rest
        # and keeps its own place in its delivery.
        con.execute(
            f"INSERT INTO _ids SELECT {RECORD_HASH}, (SELECT coalesce(max({RECORD_ID}), 0) "
            f"FROM _ids) + row_number() OVER (ORDER BY _extract_date, _loaded_at, _row_number) "
            f"FROM _staged_once WHERE {RECORD_HASH} NOT IN (SELECT {RECORD_HASH} FROM _ids)"
        )
        con.execute(
            f'INSERT INTO delivered."{name}" BY NAME SELECT s._row_number, '
            f"true AS {STAGED_FLAG}, i.{RECORD_ID}, {', '.join(f's.{c}' for c in PROVENANCE[1:])} "
            f"FROM _staged_rows s JOIN _ids i USING ({RECORD_HASH}) WHERE s.__unmatched"
        )
        con.execute(f'DROP TABLE staged."{name}"')
        con.execute(
            f'CREATE TABLE staged."{name}" AS SELECT s.* EXCLUDE (__unmatched), i.{RECORD_ID} '
            f"FROM _staged_once s JOIN _ids i USING ({RECORD_HASH}) "
            "ORDER BY _extract_date, _loaded_at, _row_number"
        )
        con.execute("DROP TABLE _staged_rows")
        con.execute("DROP TABLE _staged_once")
    for temp in ("_once", "_ids", "_migrating"):
        con.execute(f"DROP TABLE {temp}")


def check_present(con: duckdb.DuckDBPyConnection, delivery: Delivery, source: Source) -> None:
    """Raise :class:`DeliveryGone` when a delivery with file tables has no folder.

    The landing zone empties itself (:mod:`warehouse.landing_retention`), so re-running an
    old partition in the Dagster UI can ask for a folder that was destroyed after it was
    loaded. Saying so, from ``meta.landing_purges``, tells the engineer its records are
    still in the warehouse; reading on would report the first missing file, and record a
    rejection of a delivery that was in fact loaded.
    """
    if delivery.folder.is_dir() or all(t.database is not None for t in source.tables.values()):
        return
    purges = (
        con.execute(
            "SELECT purged_at, outcome, outcome_recorded_at FROM meta.landing_purges "
            "WHERE source = ? AND extract_date = ? ORDER BY purged_at DESC LIMIT 1",
            [delivery.source, delivery.extract_date],
        ).fetchall()
        if table_exists(con, "meta", "landing_purges")
        else []
    )
    if not purges:
        raise DeliveryGone(
            delivery.folder, "no such delivery folder: nothing was delivered for this date"
        )
    purged_at, outcome, outcome_at = purges[0]
    held = (
        "nothing of it was loaded"
        if outcome == "rejected"
        else "the warehouse keeps the records it delivered"
    )
    raise DeliveryGone(
        delivery.folder,
        f"the delivery folder was destroyed by landing retention on {purged_at:%Y-%m-%d}, "
        f"after it was {outcome} on {outcome_at:%Y-%m-%d}: {held}; to load it again the "
        "agency must send it again",
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


def _write_delivery(
    con: duckdb.DuckDBPyConnection,
    name: str,
    raw: RawTable,
    stage: StagedTable,
    previous: pl.DataFrame | None,
    provenance: dict[str, pl.Expr],
    extract_date: date,
    replacing: bool,
) -> None:
    """Write one table of a delivery: the records ``raw`` and ``staged`` do not hold yet,
    a ``delivered`` row for every record, its quarantined rows. ``previous``: the staged
    rows stage_table reused (already held). When the delivery replaces the date's loaded
    one, that one's rows are no longer staged, and staged records nothing staged any more
    are deleted, as the old delivery's staged copy used to be."""
    hashes = stage.hashes
    raw_columns = _columns(con, "raw", name)
    ids = _record_ids(con, name, hashes, numbered=RECORD_ID in raw_columns)
    per_row = hashes.to_frame().join(ids, on=RECORD_HASH, how="left", maintain_order="left")
    rows = raw.frame[ROW_NUMBER]
    delivered = pl.DataFrame(
        {
            ROW_NUMBER: rows,
            RECORD_ID: per_row[RECORD_ID],
            STAGED_FLAG: rows.is_in(stage.staged[ROW_NUMBER].implode()),
        }
    )
    if replacing and table_exists(con, "delivered", name):
        con.execute(
            f'UPDATE delivered."{name}" SET {STAGED_FLAG} = false WHERE _extract_date = ?',
            [extract_date],
        )
    if replacing and table_exists(con, "quarantine", name):
        con.execute(f'DELETE FROM quarantine."{name}" WHERE _extract_date = ?', [extract_date])
    _write(con, "delivered", name, delivered.with_columns(**provenance))
    new_raw = per_row["_new"] & hashes.is_first_distinct()
    records = raw.frame.with_columns(hashes, per_row[RECORD_ID]).filter(new_raw)
    _write(con, "raw", name, records.with_columns(**provenance), raw_columns)
    # Staged records not reused from the current delivery, once each; of those, the ones
    # staged never held (a record quarantined before may be staged now) go in.
    staged = stage.staged
    if previous is not None:
        staged = staged.filter(~pl.col(RECORD_HASH).is_in(previous[RECORD_HASH].implode()))
    staged = staged.filter(pl.col(RECORD_HASH).is_first_distinct())
    staged_ids = staged.select(RECORD_HASH).join(
        ids.select(RECORD_HASH, RECORD_ID), on=RECORD_HASH, how="left", maintain_order="left"
    )
    staged = staged.with_columns(staged_ids[RECORD_ID])
    _write(con, "staged", name, staged.with_columns(**provenance), new_only=True)
    if replacing:
        con.execute(
            f'DELETE FROM staged."{name}" t WHERE NOT EXISTS (SELECT 1 FROM delivered."{name}" '
            f"d WHERE d.{RECORD_ID} = t.{RECORD_ID} AND d.{STAGED_FLAG})"
        )
    _write(con, "quarantine", name, stage.quarantine.with_columns(**provenance))


def _record_ids(
    con: duckdb.DuckDBPyConnection, name: str, hashes: pl.Series, *, numbered: bool
) -> pl.DataFrame:
    """``_record_hash, _record_id, _new`` for each distinct record of a delivery: the id
    raw gave it, or the next free ones, in delivery order, for records raw lacks.
    ``numbered``: raw exists with its ``_record_id`` column (else every record is new)."""
    distinct = hashes.unique(maintain_order=True).to_frame()
    held = pl.DataFrame(schema={RECORD_HASH: pl.String, RECORD_ID: pl.Int64})
    top = 0
    if numbered:
        con.register("_incoming_hashes", distinct)
        try:
            held = con.sql(
                f'SELECT r.{RECORD_HASH}, r.{RECORD_ID} FROM raw."{name}" r '
                f"SEMI JOIN _incoming_hashes i ON i.{RECORD_HASH} = r.{RECORD_HASH}"
            ).pl()
            highest = con.execute(f'SELECT coalesce(max({RECORD_ID}), 0) FROM raw."{name}"')
            top = int(highest.fetchall()[0][0])
        finally:
            con.unregister("_incoming_hashes")
    found = distinct.join(held, on=RECORD_HASH, how="left", maintain_order="left")
    new = pl.col(RECORD_ID).is_null()
    return found.with_columns(
        pl.when(new)
        .then(top + new.cast(pl.Int64).cum_sum())
        .otherwise(pl.col(RECORD_ID))
        .cast(pl.Int64)
        .alias(RECORD_ID),
        new.alias("_new"),
    )


def _remember_folder(
    con: duckdb.DuckDBPyConnection, delivery_id: str, fingerprint: str | None
) -> None:
    """A folder found to hold an already-loaded delivery (files touched or copied, bytes
    the same) is recorded as that delivery's, so the next load need not read it again."""
    if fingerprint is not None:
        con.execute(
            f"UPDATE meta.deliveries SET {FINGERPRINT} = ? "
            "WHERE delivery_id = ? AND status = 'loaded' "
            f"AND {FINGERPRINT} IS DISTINCT FROM ?",
            [fingerprint, delivery_id, fingerprint],
        )


def loaded_folders(path: Path) -> dict[tuple[str, date], str] | None:
    """Per source and extract date, the fingerprint of the landing folder its loaded
    delivery was read from (:func:`warehouse.landing.delivery_fingerprint`).

    ``sdv load`` leaves a folder whose fingerprint still matches alone: the landing zone
    keeps every delivery, and without this each load would start a run for every folder
    ever delivered (about a second each) only to find it unchanged. The warehouse is what
    says a delivery is loaded, not the run history, so a rebuilt warehouse loads every
    folder again. It reads what is committed, also while a run elsewhere writes. None when
    the file cannot be opened: then nothing is known to be loaded, and the runs report
    whatever is wrong as they always have.
    """
    if not Path(path).exists():
        return {}
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None
    try:
        if FINGERPRINT not in _columns(con, "meta", "deliveries"):
            return {}
        rows = con.execute(
            f"SELECT source, extract_date, {FINGERPRINT} FROM meta.deliveries "
            f"WHERE status = 'loaded' AND {FINGERPRINT} IS NOT NULL"
        ).fetchall()
    finally:
        con.close()
    return {(source, day): fingerprint for source, day, fingerprint in rows}


def _loaded_on(con: duckdb.DuckDBPyConnection, source: str, extract_date: date) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM meta.deliveries "
        "WHERE source = ? AND extract_date = ? AND status = 'loaded'",
        [source, extract_date],
    ).fetchall()
    return rows[0][0] > 0


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
    delivery)."""
    name = relation_name(source, table)
    if current is None or not table_exists(con, "delivered", name):
        return None
    frame = con.sql(
        f'SELECT t.* EXCLUDE ({", ".join((*PROVENANCE, RECORD_ID))}) FROM staged."{name}" t '
        f'SEMI JOIN delivered."{name}" d ON d.{RECORD_ID} = t.{RECORD_ID} '
        f"AND d._extract_date = ? AND d.{STAGED_FLAG}",
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
    in that case nothing of it reaches raw, staged or quarantine. A folder that is not
    there raises :class:`DeliveryGone` and records nothing (:func:`check_present`).
    ``today`` (default: the local date) is what a future-dated delivery is judged against.
    """
    check_present(con, delivery, source)
    try:
        check_not_future(delivery, today)
    except DeliveryError as exc:
        record_rejection(con, delivery, exc)
        raise
    # Taken before anything is read: if a file changes while it is read, the folder no
    # longer matches what is recorded, and the next load reads it again.
    fingerprint = delivery_fingerprint(delivery) if delivery.folder.is_dir() else None
    checked: str | None = None
    checksums = file_checksums(delivery, source)
    if checksums is not None:  # the same bytes were checked and loaded before: skip parsing
        checked = _delivery_id(source.name, delivery.extract_date, checksums)
        previous = _already_loaded(con, checked)
        if previous is not None:
            _remember_folder(con, checked, fingerprint)
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
        _remember_folder(con, delivery_id, fingerprint)
        return LoadResult(
            source.name,
            delivery.extract_date,
            delivery_id,
            "unchanged",
            previous,
            _current_date(con, source.name),
        )

    current = _current_date(con, source.name)
    previous = [_previous_staged(con, source.name, raw.table, current) for raw in raws]
    staged = [
        stage_table(raw, source, tombstones, before)
        for raw, before in zip(raws, previous, strict=True)
    ]
    loads = [_table_load(r, s, source) for r, s in zip(raws, staged, strict=True)]
    loaded_at = _now()
    meta = {
        "_delivery_id": pl.lit(delivery_id),
        "_extract_date": pl.lit(delivery.extract_date),
        "_loaded_at": pl.lit(loaded_at),
    }
    replacing = _loaded_on(con, source.name, delivery.extract_date)
    con.execute("BEGIN TRANSACTION")
    try:
        for raw, stage, before in zip(raws, staged, previous, strict=True):
            name = relation_name(source.name, raw.table)
            provenance = {
                **meta,
                "_source_file": pl.lit(raw.origin),
                "_file_sha256": pl.lit(raw.sha256),
            }
            _write_delivery(
                con, name, raw, stage, before, provenance, delivery.extract_date, replacing
            )
        con.execute(
            "UPDATE meta.deliveries SET status = 'replaced' "
            "WHERE source = ? AND extract_date = ? AND status = 'loaded'",
            [source.name, delivery.extract_date],
        )
        con.execute(
            "INSERT INTO meta.deliveries VALUES (?, ?, ?, 'loaded', ?, ?, ?, ?, ?, ?, NULL, ?)",
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
                fingerprint,
            ],
        )
        now_current = _current_date(con, source.name)
        for raw in raws:
            _refresh_current_view(con, relation_name(source.name, raw.table), now_current)
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
        now_current,
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
