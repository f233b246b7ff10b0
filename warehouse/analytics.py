"""Analysts' SQL over their pseudonymised file, one read-only query at a time.

Analysts' data is ``analyst.duckdb`` (:mod:`warehouse.pseudonymise`), and a read of a file
cannot be audited. The partnership's agreements ask for every access on record, so the
API answers analysts' SQL (``POST /analytics/query``), and
:meth:`warehouse.access.AccessLayer.query` audits each query: who, under which role,
purpose and lawful basis, the SQL itself, the tables it read, the columns and row count
of the answer, and the snapshot. The file itself is the service account's alone, so this
is analysts' only way in, unless the curation config's
``publishing.analysts_group_read`` also gives the file to their group
(:mod:`warehouse.file_modes`), for reads that are then not audited.

What a query may do is settled here, not by inspecting its text:

* exactly one statement, and a ``SELECT`` (DuckDB's own parser says which);
* on a connection of its own, opened read-only on the analysts' file with no file system
  access, no extensions and its configuration locked (``READER_CONFIG`` of
  :mod:`warehouse.publish`), so no ``ATTACH``, ``COPY``, ``read_csv`` or ``SET``;
* within the role's limits (``query`` in ``config/policy.yaml``): rows returned, seconds
  (the query is interrupted) and memory.

The tables a query read are taken from DuckDB's unoptimised logical plan, which names every
table scanned, including those reached through a view, a CTE or ``query()``; the optimised
plan can answer ``count(*)`` from statistics and name none.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb

from warehouse.policy import QueryLimits
from warehouse.publish import READER_CONFIG

MAX_SQL_CHARS = 20_000  # a query longer than this is not an analyst's query


class QueryError(ValueError):
    """A query that cannot be answered; the message says why, for the analyst.

    ``audit_reason`` is what the audit may keep: the message itself, except where it
    quotes DuckDB, whose message can quote a value of the file."""

    def __init__(self, message: str, audit_reason: str | None = None) -> None:
        super().__init__(message)
        self.audit_reason = audit_reason or message


class FileUnavailable(QueryError):
    """The analysts' file cannot be opened (moved by a publish or a purge since the
    pointer was read): the server's state, not the query's fault."""


class QueryTimeout(QueryError):
    """The query ran past the role's time limit and was interrupted."""


@dataclass(frozen=True)
class Answer:
    """A query's answer: column names and DuckDB types, rows (JSON-ready), and what it read."""

    columns: list[tuple[str, str]]
    rows: list[list[Any]]
    truncated: bool  # more rows than the limit: the first ``limit`` are here
    tables: list[str]  # tables the query read


def _open(path: Path, limits: QueryLimits) -> duckdb.DuckDBPyConnection:
    config = {
        **READER_CONFIG,
        "threads": 1,  # one query must not take both cores from the API's workers
        "memory_limit": f"{limits.memory_limit_mb}MB",
        "explain_output": "all",  # the unoptimised plan too: see tables_read
    }
    return duckdb.connect(str(path), read_only=True, config=config)


def one_select(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """``sql`` if it is exactly one ``SELECT`` statement; else :class:`QueryError`."""
    if len(sql) > MAX_SQL_CHARS:
        raise QueryError(f"the query is longer than {MAX_SQL_CHARS:,} characters")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as err:
        raise QueryError(
            f"the query does not parse: {_message(err)}",
            f"the query does not parse ({type(err).__name__})",
        ) from None
    if len(statements) != 1:
        raise QueryError(f"send exactly one statement (this has {len(statements)})")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT queries are answered (this is {kind.name})")
    return statements[0].query


def _scans(node: dict[str, Any]) -> Iterator[str]:
    table = node.get("extra_info", {}).get("Table")
    if table:
        yield table.rsplit(".", 1)[-1]  # "analyst-x.main.person" -> "person"
    for child in node.get("children", ()):
        yield from _scans(child)


def tables_read(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """The tables ``sql`` scans, in plan order, each once."""
    plans = dict(con.execute(f"EXPLAIN (FORMAT json) {sql}").fetchall())
    nodes = json.loads(plans["logical_plan"])
    return list(dict.fromkeys(name for node in nodes for name in _scans(node)))


def _message(err: duckdb.Error) -> str:
    """DuckDB's message, first line: it names the SQL's problem (a column, a type)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def json_value(value: Any) -> Any:
    """A value of a DuckDB row as JSON holds it (dates as ISO text, decimals as numbers;
    JSON has no NaN or infinity, so those are text: "nan", "inf", "-inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)


def run(path: Path, sql: str, limits: QueryLimits, max_rows: int | None = None) -> Answer:
    """Answer one analyst query on the file at ``path``, within ``limits``.

    ``max_rows`` asks for fewer rows than the role's limit (never more). Raises
    :class:`QueryError` for a query that is not one ``SELECT``, does not bind, or fails,
    and :class:`QueryTimeout` when it runs past ``limits.timeout_seconds``."""
    limit = min(max_rows or limits.max_rows, limits.max_rows)
    try:
        con = _open(path, limits)
    except duckdb.IOException as err:
        raise FileUnavailable(
            f"the analysts' file cannot be opened now ({type(err).__name__}): retry"
        ) from None
    timer = threading.Timer(limits.timeout_seconds, con.interrupt)
    try:
        statement = one_select(con, sql)
        timer.start()
        try:
            tables = tables_read(con, statement)
            result = con.execute(statement)
            columns = [(d[0], str(d[1])) for d in result.description]
            fetched = result.fetchmany(limit + 1)
        except duckdb.InterruptException:
            raise QueryTimeout(
                f"the query ran for more than {limits.timeout_seconds:g} s and was stopped "
                "(the role's query.timeout_seconds): narrow it or aggregate first"
            ) from None
        except duckdb.OutOfMemoryException:
            raise QueryError(
                f"the query needs more than {limits.memory_limit_mb} MB "
                "(the role's query.memory_limit_mb): narrow it or aggregate first"
            ) from None
        except duckdb.Error as err:
            raise QueryError(
                f"the query failed: {_message(err)}", f"the query failed ({type(err).__name__})"
            ) from None
    finally:
        timer.cancel()
        con.close()
    rows = [[json_value(v) for v in row] for row in fetched[:limit]]
    return Answer(columns, rows, len(fetched) > limit, tables)
