"""The serving copy of a snapshot: the same curated tables in a row store, for the API.

The API reads one person (or household) at a time. DuckDB is built for scans: a lookup of
one 30-column row through its index costs about 1 ms, most of it assembling each column
from its compressed segment, and a request makes several. SQLite stores a row together
and finds it through a B-tree in about 20 microseconds. So every published snapshot gets a
sibling ``<snapshot>.serving.sqlite`` with exactly its curated tables and rows, written
when the snapshot is written (and rewritten when erasure or retention rewrites the
snapshot, :mod:`warehouse.purge`); the access layer reads only that. The DuckDB snapshot
stays the published record: checks, the analysts' file, subject access and purges read it.

Values keep their types: each column is declared with a type name of ours
(``SDV_DATE``, ``SDV_BOOL``, ``SDV_LIST``) whose converter turns it back into the Python
value DuckDB would have returned, so the access layer answers the same from either store.
The file is opened read-only and ``immutable`` (no locking): it is never changed in place,
only replaced by a new file under a new name.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from warehouse import file_modes
from warehouse.curated_schema import LOOKUP_COLUMNS, TABLES

SUFFIX = ".serving.sqlite"

# DuckDB type -> the declared type in the serving copy (its converter restores the value).
_DECLARED = {
    "VARCHAR": "TEXT",
    "INTEGER": "INTEGER",
    "DOUBLE": "REAL",
    "DATE": "SDV_DATE",
    "BOOLEAN": "SDV_BOOL",
    "VARCHAR[]": "SDV_LIST",
}
# Lookups the access layer makes (person, household, organisation scope, restriction).
_INDEXES: dict[str, tuple[tuple[str, ...], ...]] = {
    "person_organisations": (("organisation_type", "organisation_id"),),
    "person_records": (("record_id",),),
}

sqlite3.register_converter("SDV_DATE", lambda v: date.fromisoformat(v.decode()))
sqlite3.register_converter("SDV_BOOL", lambda v: v != b"0")
sqlite3.register_converter("SDV_LIST", lambda v: json.loads(v))


class ServingError(RuntimeError):
    """A serving copy is missing or does not match its snapshot."""


def serving_path(snapshot: Path) -> Path:
    """``family-view-X.duckdb`` -> ``family-view-X.serving.sqlite`` beside it."""
    return snapshot.with_name(snapshot.name.removesuffix(".duckdb") + SUFFIX)


def _storable(frame: pl.DataFrame, types: Mapping[str, str]) -> pl.DataFrame:
    """Dates as ISO text, booleans as 0/1, lists as JSON: what the converters read back."""
    columns = []
    for name in frame.columns:
        kind = types.get(name, "VARCHAR")
        column = pl.col(name)
        if kind == "DATE":
            column = column.dt.to_string("%Y-%m-%d")
        elif kind == "BOOLEAN":
            column = column.cast(pl.Int8)
        elif kind.endswith("[]"):  # {"v":[...]} -> [...]: JSON encoding without Python
            encoded = pl.struct(column.alias("v")).struct.json_encode()
            column = pl.when(column.is_null()).then(None).otherwise(encoded.str.slice(5, None))
            column = column.str.head(-1)
        columns.append(column.alias(name))
    return frame.select(columns)


def write_serving(snapshot: Path, tables: Mapping[str, pl.DataFrame]) -> Path:
    """Write the serving copy of ``snapshot`` from its curated tables; returns its path.

    Written under a temporary name and renamed when complete (like the snapshot), then
    read back: a copy whose row counts differ from ``tables`` is removed and refused.
    Rows go in through ADBC's bulk ingest (Arrow columns bound in C): inserting them a
    Python tuple at a time was most of a night's publish at county scale.
    """
    path = serving_path(snapshot)
    building = path.with_name(path.name + ".building")
    building.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)  # the first publish makes snapshots/
    # Imported here, not at the top: the ADBC driver brings pyarrow's dataset and compute
    # layers with it (0.05 s where pyarrow is loaded already, 0.3 s where not), and every
    # process that imports publishing code only to reach something else, such as a night's
    # ingest (through erasure and purge), would pay for it without writing a serving copy.
    import adbc_driver_sqlite.dbapi as adbc_sqlite

    con = adbc_sqlite.connect(str(building), autocommit=True)
    file_modes.restrict(building)  # before a row is in it
    try:
        cur = con.cursor()
        cur.execute("pragma journal_mode = off")
        cur.execute("pragma synchronous = off")
        cur.execute("begin")
        for name, frame in tables.items():
            if name not in TABLES:
                continue
            types = {c.name: c.type for c in TABLES[name].columns}
            declared = ", ".join(
                f'"{c}" {_DECLARED.get(types.get(c, "VARCHAR"), "TEXT")}' for c in frame.columns
            )
            cur.execute(f'create table "{name}" ({declared})')
            if frame.height:
                cur.adbc_ingest(name, _storable(frame, types).to_arrow(), mode="append")
            indexes = [(c,) for c in LOOKUP_COLUMNS if c in frame.columns]
            for columns in dict.fromkeys((*indexes, *_INDEXES.get(name, ()))):
                quoted = ", ".join(f'"{c}"' for c in columns)
                cur.execute(f'create index "ix_{name}_{"_".join(columns)}" on "{name}" ({quoted})')
        cur.execute("commit")
        cur.execute("analyze")
        counts = {}
        for name in tables:
            if name in TABLES:
                cur.execute(f'select count(*) from "{name}"')
                counts[name] = cur.fetchone()[0]
        cur.close()
    finally:
        con.close()
    expected = {name: frame.height for name, frame in tables.items() if name in TABLES}
    if counts != expected:
        building.unlink(missing_ok=True)
        raise ServingError(f"serving copy of {snapshot.name} has {counts}, expected {expected}")
    os.replace(building, path)
    return path


def write_serving_from(snapshot: Path) -> Path:
    """Rewrite the serving copy from the snapshot file itself (after a purge rewrote it)."""
    con = duckdb.connect(str(snapshot), read_only=True)
    try:
        present = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
        tables = {n: con.sql(f'select * from "{n}"').pl() for n in TABLES if n in present}
    finally:
        con.close()
    return write_serving(snapshot, tables)


def open_serving(snapshot: Path) -> sqlite3.Connection:
    """A read-only connection to the serving copy of ``snapshot``.

    ``check_same_thread`` is off so a pool thread may close a connection another opened;
    each connection is still used by one thread at a time (the access layer keeps one per
    thread)."""
    path = serving_path(snapshot)
    if not path.exists():
        raise ServingError(
            f"snapshot {snapshot.name} has no serving copy ({path.name}): publish again "
            "(`sdv publish`) to build one"
        )
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    return sqlite3.connect(
        uri, uri=True, detect_types=sqlite3.PARSE_DECLTYPES, check_same_thread=False
    )
