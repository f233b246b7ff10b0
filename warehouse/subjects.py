"""Whose rows are these? Each delivered row mapped to the person-level records it is about.

Subject access, erasure and retention all need the same answer: an episode row is about
the child whose ``csc_person_id`` it carries, a police incident is about everyone involved
in it, an early help episode is about every member of the family. The source config says
so in each table's ``about`` (``warehouse.sources.About``); this module turns that into SQL
over any ingest schema (``raw``, ``staged``, ``quarantine``), returning DuckDB ``rowid``s so
callers can export or delete exactly those rows.

A row reaches a record **directly** when it carries that record's own key (a person-level
row itself, an episode's ``csc_person_id``, an involvement's ``nominal_id``); otherwise it
reaches it through something shared (a family id, an incident). Erasure removes rows that
reach the erased record directly, and shared rows only once everyone they are about is
gone; a subject access request shows shared rows for review before disclosure.

The people a row is about are found through ``raw``, which holds every record ever
delivered (once, however many deliveries carried it), so a quarantined episode still leads
to its child.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import polars as pl

from warehouse.sources import ColumnType, IdentifierKind, Source, Table
from warehouse.store import holds_records_once, per_delivery_sql, relation_name, table_exists

INGEST_SCHEMAS = ("raw", "staged", "quarantine")
ABOUT_SCHEMA = {"_rowid": pl.Int64, "record_id": pl.String, "direct": pl.Boolean}


def record_id(source: str, table: str, local_key: str) -> str:
    """The id linkage and the curated layer use for a person-level record."""
    return f"{source}|{table}|{local_key}"


def value_sql(spec: Table, column: str, alias: str) -> str:
    """A key column's value as staging stores it, from any layer: trimmed, empty as null, a
    UPN upper-cased, a whole number without leading zeros or plus sign (the SQL twin of
    ``warehouse.tombstone.normalised``). A raw row holds the value as delivered: without this, a
    key delivered padded with spaces would not be the record linkage knows, and erasure,
    retention and subject access would miss it and every row reaching it."""
    text = f'cast({alias}."{column}" as varchar)'
    value = f"nullif(regexp_replace({text}, '^\\s+|\\s+$', '', 'g'), '')"
    definition = spec.columns.get(column)
    if definition is None:
        return value
    if definition.identifier is IdentifierKind.upn:
        return f"upper({value})"
    if definition.type is ColumnType.integer:
        return (
            f"coalesce(case when regexp_full_match({value}, '[+-]?[0-9]+') "
            f"then cast(try_cast({value} as bigint) as varchar) end, {value})"
        )
    return value


def key_sql(columns: list[str], alias: str, spec: Table) -> str:
    """A table's local key as text, parts joined by ``|`` (as linkage reads it)."""
    return " || '|' || ".join(f"coalesce({value_sql(spec, c, alias)}, '')" for c in columns)


@dataclass(frozen=True)
class Relation:
    """One ingest table present in the warehouse."""

    schema: str
    source: str
    table: str

    @property
    def name(self) -> str:
        return f'{self.schema}."{relation_name(self.source, self.table)}"'


def relations(
    con: duckdb.DuckDBPyConnection,
    sources: dict[str, Source],
    schemas: tuple[str, ...] = INGEST_SCHEMAS,
) -> Iterator[Relation]:
    """Every configured source table that exists in ``schemas``."""
    for schema in schemas:
        for source in sources.values():
            for table in source.tables:
                if table_exists(con, schema, relation_name(source.name, table)):
                    yield Relation(schema, source.name, table)


def about_sql(source: Source, table: str, schema: str) -> str | None:
    """SQL giving ``_rowid, record_id, direct`` for every row of ``schema.source__table``
    and each person-level record it is about (``None`` if no row can be placed)."""
    spec: Table = source.tables[table]
    relation = f'{schema}."{relation_name(source.name, table)}"'
    parts: list[str] = []
    if spec.person_level:
        prefix = f"'{source.name}|{table}|'"
        parts.append(
            f"select t.rowid as _rowid, {prefix} || {key_sql(spec.local_key, 't', spec)} "
            "as record_id,"
            f" true as direct from {relation} t"
        )
    for about in spec.about:
        target = source.tables[about.table]
        inner = about_sql(source, about.table, "raw")
        if inner is None:
            continue
        carried = ", ".join(
            f'{value_sql(target, theirs, "u")} as "{theirs}"' for theirs in about.match.values()
        )
        direct = (
            "a.direct"
            if target.person_level and set(about.match.values()) == set(target.local_key)
            else "false"
        )
        join = " and ".join(
            f'{value_sql(spec, mine, "t")} = s."{theirs}"' for mine, theirs in about.match.items()
        )
        target_relation = f'raw."{relation_name(source.name, about.table)}"'
        parts.append(
            f"select t.rowid as _rowid, s.record_id, s.direct from {relation} t join ("
            f"select distinct {carried}, a.record_id, {direct} as direct "
            f"from {target_relation} u join ({inner}) a on a._rowid = u.rowid) s on {join}"
        )
    if not parts:
        return None
    return " union all ".join(f"({p})" for p in parts)


def row_subjects(
    con: duckdb.DuckDBPyConnection, source: Source, relation: Relation
) -> pl.DataFrame:
    """``_rowid, record_id, direct`` for one relation: a row about several people appears
    once per person (``direct`` true if any path to that person is direct)."""
    needed = {relation.table} | _targets(source, relation.table)
    if not all(
        table_exists(con, "raw", relation_name(source.name, t)) for t in needed - {relation.table}
    ) or not table_exists(con, relation.schema, relation_name(source.name, relation.table)):
        return pl.DataFrame(schema=ABOUT_SCHEMA)
    sql = about_sql(source, relation.table, relation.schema)
    if sql is None:
        return pl.DataFrame(schema=ABOUT_SCHEMA)
    return (
        con.sql(
            f"select _rowid, record_id, bool_or(direct) as direct from ({sql}) "
            "group by all order by all"
        )
        .pl()
        .cast(ABOUT_SCHEMA)
    )


def _targets(source: Source, table: str) -> set[str]:
    found: set[str] = set()
    for about in source.tables[table].about:
        found |= {about.table} | _targets(source, about.table)
    return found


def rows_about(
    con: duckdb.DuckDBPyConnection,
    source: Source,
    relation: Relation,
    record_ids: set[str],
) -> pl.DataFrame:
    """The rows of ``relation`` about any of ``record_ids``: every column as stored (a raw
    or staged record once for each delivery that carried it), plus ``_rowid``, ``_about``
    (every record the row is about, sorted) and ``_direct`` (those it reaches directly)."""
    subjects = row_subjects(con, source, relation)
    hit = subjects.filter(pl.col("record_id").is_in(sorted(record_ids)))["_rowid"].unique()
    if hit.is_empty():
        return pl.DataFrame()
    grouped = (
        subjects.filter(pl.col("_rowid").is_in(hit.implode()))
        .group_by("_rowid")
        .agg(
            pl.col("record_id").sort().alias("_about"),
            pl.col("record_id").filter(pl.col("direct")).sort().alias("_direct"),
        )
    )
    # raw and staged hold a record once: give it once per delivery that carried it, as
    # that delivery had it (warehouse.store), so every delivery is shown.
    name = relation_name(relation.source, relation.table)
    rows_sql = f"select t.rowid as _rowid, t.* from {relation.name} t"
    if holds_records_once(con, relation.schema, name):
        rows_sql = per_delivery_sql(relation.schema, name, rowid=True)
    con.register("_rows_about_ids", grouped.select("_rowid"))
    try:
        rows = con.sql(
            f"select * from ({rows_sql}) where _rowid in (select _rowid from _rows_about_ids)"
        ).pl()
    finally:
        con.unregister("_rows_about_ids")
    return rows.join(grouped, on="_rowid").sort("_rowid", "_extract_date", maintain_order=True)
