"""Data-quality measurements over what a load actually wrote to the warehouse.

These read back from DuckDB rather than trusting the loader's own counts, so an asset
check built on them can catch a load that wrote less (or other) than it said. They return
plain values; turning them into pass/fail with thresholds from config is the caller's job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import duckdb

from warehouse.sources import Source
from warehouse.store import per_delivery_sql, relation_name


@dataclass(frozen=True)
class Reconciliation:
    expected: int  # manifest rows, or the records parsed when there is no manifest
    raw: int
    staged: int
    quarantined: int

    @property
    def balanced(self) -> bool:
        """Every delivered record is in raw, and in exactly one of staged or quarantine."""
        return self.expected == self.raw == self.staged + self.quarantined


def _count(con: duckdb.DuckDBPyConnection, sql: str, params: list[object]) -> int:
    return int(con.execute(sql, params).fetchall()[0][0])


def reconcile(
    con: duckdb.DuckDBPyConnection,
    source: str,
    table: str,
    delivery_id: str,
    extract_date: date,
    expected: int,
) -> Reconciliation:
    name = relation_name(source, table)
    return Reconciliation(
        expected=expected,
        raw=_count(
            con,
            f"SELECT count(*) FROM ({per_delivery_sql('raw', name)}) "
            "WHERE _extract_date = ? AND _delivery_id = ?",
            [extract_date, delivery_id],
        ),
        staged=_count(
            con,
            f"SELECT count(*) FROM ({per_delivery_sql('staged', name)}) "
            "WHERE _extract_date = ? AND _delivery_id = ?",
            [extract_date, delivery_id],
        ),
        quarantined=_count(
            con,
            f'SELECT count(*) FROM quarantine."{name}" '
            "WHERE _extract_date = ? AND _delivery_id = ?",
            [extract_date, delivery_id],
        ),
    )


@dataclass(frozen=True)
class PreviousDelivery:
    """The source's previous delivery: its date and each table's rows."""

    extract_date: date
    rows: dict[str, int]


def previous_delivery(
    con: duckdb.DuckDBPyConnection, source: str, extract_date: date
) -> PreviousDelivery | None:
    """The newest delivery of ``source`` dated before ``extract_date`` that loaded (as
    ``meta.deliveries`` recorded it), or None on a first delivery. Read once per load, for
    every table's check."""
    found = con.execute(
        "select extract_date, tables from meta.deliveries where source = ? "
        "and extract_date < ? and status in ('loaded', 'replaced') "
        "order by extract_date desc, recorded_at desc limit 1",
        [source, extract_date],
    ).fetchall()
    if not found:
        return None
    day, tables = found[0]
    rows = {t["table"]: int(t["rows"]) for t in json.loads(tables or "[]") if "table" in t}
    return PreviousDelivery(day, rows)


def required_nulls(
    con: duckdb.DuckDBPyConnection, source: Source, table: str, extract_date: date
) -> dict[str, int]:
    """Staged rows of the partition with an empty required column (should be none)."""
    name = relation_name(source.name, table)
    required = source.tables[table].required
    if not required:
        return {}
    selects = ", ".join(f'count(*) FILTER (WHERE "{c}" IS NULL)' for c in required)
    row = con.execute(
        f"SELECT {selects} FROM ({per_delivery_sql('staged', name)}) WHERE _extract_date = ?",
        [extract_date],
    ).fetchall()[0]
    return dict(zip(required, (int(v) for v in row), strict=True))


def identifier_validity(
    con: duckdb.DuckDBPyConnection, source: str, table: str, column: str, extract_date: date
) -> tuple[int, int]:
    """(valid, present) counts of an identifier column in the partition's staged rows."""
    name = relation_name(source, table)
    row = con.execute(
        f'SELECT count(*) FILTER (WHERE "{column}_valid"), count("{column}_valid") '
        f"FROM ({per_delivery_sql('staged', name)}) WHERE _extract_date = ?",
        [extract_date],
    ).fetchall()[0]
    return int(row[0]), int(row[1])


def days_since_delivery(
    con: duckdb.DuckDBPyConnection, source: str, today: date
) -> tuple[date | None, int | None]:
    """The source's latest loaded extract date and how many days old it is today."""
    latest = con.execute(
        "SELECT max(extract_date) FROM meta.deliveries WHERE source = ? AND status = 'loaded'",
        [source],
    ).fetchall()[0][0]
    if latest is None:
        return None, None
    return latest, (today - latest).days
