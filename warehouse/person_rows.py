"""Read every person-level row of the current deliveries, mapped onto the linkage fields.

Linkage must resolve *every* delivered person-level row, including the few that staging
quarantined (a missing forename or an unparseable date of birth does not stop a row from
describing a real person, and a missed link hides a child's risk). Quarantined rows of the
current delivery are therefore read too, as text, flagged ``from_quarantine``; a duplicate
local key is not salvaged, because the key's other row is already staged, and an ``erased``
row (a redelivered record an upheld erasure removed) never is.
"""

from __future__ import annotations

import duckdb
import polars as pl

from matching.config import LinkageConfig, PersonTable
from warehouse.store import relation_name, table_exists

_SALVAGE_EXCLUDED = ("duplicate_key", "erased")
_AGE_REFERENCE = ("local_key", "first_seen", "last_seen", "min_age", "min_age_at")


def _select(table: PersonTable, relation: str, *, quarantine: bool) -> str:
    key = " || '|' || ".join(f"coalesce(cast(\"{c}\" as varchar), '')" for c in table.key)
    fields = ", ".join(
        f'cast("{column}" as varchar) as "{field}"' for field, column in table.fields.items()
    )
    where = ""
    if quarantine:
        excluded = ", ".join(f"'{r}'" for r in _SALVAGE_EXCLUDED)
        where = (
            f" where _reason_code not in ({excluded}) and _extract_date = (select max("
            f"extract_date) from meta.deliveries where source = '{table.source}' and "
            "status = 'loaded')"
        )
    return (
        f"select '{table.source}' as source, '{table.table}' as source_table, {key} as "
        f"local_key, _extract_date as extract_date, {str(quarantine).lower()} as "
        f"from_quarantine, {fields} from {relation}{where}"
    )


def _age_reference(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
    """When each person's ``age_at_incident`` could have been recorded (dates as text)."""
    try:
        seen = con.sql(sql).pl()
    except duckdb.Error:
        # The events table has not been delivered yet: ages are taken as current.
        return pl.DataFrame(schema={c: pl.String for c in _AGE_REFERENCE})
    missing = [c for c in _AGE_REFERENCE if c not in seen.columns]  # min_age is optional
    seen = seen.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in missing)
    return seen.select(pl.col(c).cast(pl.String) for c in _AGE_REFERENCE)


def read_person_rows(con: duckdb.DuckDBPyConnection, config: LinkageConfig) -> pl.DataFrame:
    """All current person-level rows as text on the linkage fields, one frame.

    Tables not yet delivered are skipped, so the first night can run before every
    agency has sent its first extract.
    """
    frames: list[pl.DataFrame] = []
    for table in config.tables:
        name = relation_name(table.source, table.table)
        parts = []
        if table_exists(con, "current", name):
            parts.append(con.sql(_select(table, f'"current"."{name}"', quarantine=False)).pl())
        if table_exists(con, "quarantine", name):
            sql = _select(table, f'quarantine."{name}"', quarantine=True)
            parts.append(con.sql(sql).pl())
        if parts and table.age_reference_sql:
            seen = _age_reference(con, table.age_reference_sql)
            parts = [p.join(seen, on="local_key", how="left") for p in parts]
        frames.extend(parts)
    if not frames:
        return pl.DataFrame()
    rows = pl.concat(frames, how="diagonal_relaxed")
    # A salvaged row whose key is also staged (e.g. a key repeated with a bad date) is
    # already represented; keep the staged one.
    return rows.sort("from_quarantine").unique(
        ["source", "source_table", "local_key"], keep="first", maintain_order=True
    )


def read_relationships(con: duckdb.DuckDBPyConnection, config: LinkageConfig) -> pl.DataFrame:
    """Sources' own relationship tables as ``record_id, related_record_id, relationship,
    evidence``, keyed like the linkage's record ids; tables not yet delivered are skipped."""
    frames = []
    for rel in config.relationship_tables:
        name = relation_name(rel.source, rel.table)
        if not table_exists(con, "current", name):
            continue
        prefix = f"{rel.source}|{rel.person_table}|"
        frames.append(
            con.sql(
                f'select ? || "{rel.person}" as record_id, '
                f'? || "{rel.related}" as related_record_id, '
                f'"{rel.relationship}" as relationship, ? as evidence '
                f'from "current"."{name}"',
                params=[prefix, prefix, rel.evidence],
            ).pl()
        )
    schema = {c: pl.String for c in ("record_id", "related_record_id", "relationship", "evidence")}
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)
