"""The operational store: small, transactional state that people write, not pipelines.

The DuckDB warehouse is rebuilt from deliveries; what reviewers decide (and, later, the
audit trail) cannot be rebuilt from anything, so it lives in its own database: SQLite on a
laptop, PostgreSQL in a deployment, reached through SQLAlchemy Core. Every module that keeps
tables here defines them on :data:`metadata` and is listed in ``_TABLE_MODULES`` so that
:func:`ensure_schema` creates all of them whichever module the caller happened to import.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

_TABLE_MODULES = (
    "warehouse.review",
    "warehouse.audit",
    "warehouse.restriction",
    "warehouse.rectification",
    "warehouse.erasure",
)


class UTCDateTime(sa.types.TypeDecorator):
    """A timestamp that is always UTC and always timezone-aware in Python.

    SQLite has no timezone type and hands back naive values; PostgreSQL's ``timestamptz``
    hands them back in the session's zone. Either way callers get aware UTC datetimes.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: operational timestamps must be UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite; WAL lets `sdv review list` read while a
    # linkage run writes; the busy timeout makes a second writer wait rather than fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def engine_for(url: str) -> Engine:
    """An engine for the operational store at ``url``; for SQLite, create the folder."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed)
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def holds_table(engine: Engine, name: str) -> bool:
    """Whether the store has table ``name``, without creating a SQLite file to find out
    (a dry run, or a read on a fresh data folder, must leave no store behind)."""
    database = engine.url.database
    on_disk = engine.dialect.name == "sqlite" and database and database != ":memory:"
    if on_disk and not Path(database).exists():
        return False
    return sa.inspect(engine).has_table(name)


def ensure_schema(engine: Engine) -> None:
    """Create any missing operational tables (never alters or drops existing ones)."""
    for module in _TABLE_MODULES:
        importlib.import_module(module)
    metadata.create_all(engine, checkfirst=True)
