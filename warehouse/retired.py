"""Records a source no longer sends, and whose they were.

Linkage resolves tonight's records only, so a record a source has stopped sending (a
temporary UPN replaced by a permanent one, a duplicate the agency merged into another key)
leaves ``linked.person_records`` on the first night it is missing. Its rows stay in the
ingest layers until retention's clock runs out, and they are still about the person.
Erasure and subject access start from the person's records: without this module they would
miss those rows, and an erasure would leave the old UPN, name and address in ``raw``.

Two paths lead to a retired record, and :func:`records_of` takes both:

* ``linked.retired_records`` keeps the person each record resolved to on the last night it
  was delivered (``warehouse.linked.write_run``). A person id absorbed into another by a
  merge since brings its retired records with it (``warehouse.linked.earlier_ids``). A split
  does not: the record was one person's, and which of the two it was is not known.
* A table's ``former_keys`` (source config, ``former_upn: upn``): a row saying which key
  its record had before leads to the record delivered under that key, whether or not
  linkage ever put the two together (the pupil's only record was the school's).

A record linkage now puts with someone else is never taken: linkage has said it is theirs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import duckdb

from warehouse.linked import earlier_ids
from warehouse.sources import Source, Table
from warehouse.store import relation_name, table_exists
from warehouse.subjects import key_sql, value_sql


def _retired_to(con: duckdb.DuckDBPyConnection, person_ids: Collection[str]) -> set[str]:
    if not table_exists(con, "linked", "retired_records"):
        return set()
    rows = con.execute(
        "select record_id from linked.retired_records where list_contains(?, person_id)",
        [sorted(person_ids)],
    ).fetchall()
    return {r for (r,) in rows}


def _former_key_sql(spec: Table) -> tuple[str, str]:
    """The earlier local key a row names (parts in local_key order, as ``key_sql`` joins
    them) and the condition that it names one whole."""
    by_key = {key: column for column, key in spec.former_keys.items()}
    columns = [by_key[key] for key in spec.local_key]
    whole = " and ".join(f"{value_sql(spec, c, 't')} is not null" for c in columns)
    return key_sql(columns, "t", spec), whole


def predecessors(
    con: duckdb.DuckDBPyConnection, sources: Mapping[str, Source], record_ids: Collection[str]
) -> set[str]:
    """Records that ``record_ids`` were delivered as before (their rows' ``former_keys``),
    and those records' own predecessors, as far back as the rows go. Read from ``raw``,
    which holds every record ever delivered: a former key no delivery carried is not a
    record held, and is left out."""
    seen = set(record_ids)
    found: set[str] = set()
    frontier = set(record_ids)
    while frontier:
        step: set[str] = set()
        for source in sources.values():
            for name, spec in source.tables.items():
                prefix = f"{source.name}|{name}|"
                keys = sorted(r.removeprefix(prefix) for r in frontier if r.startswith(prefix))
                relation = relation_name(source.name, name)
                if not spec.former_keys or not keys or not table_exists(con, "raw", relation):
                    continue
                former, whole = _former_key_sql(spec)
                # Only a key some delivery carried: a former key naming no record leads nowhere.
                rows = con.execute(
                    f'select distinct {former} from raw."{relation}" t '
                    f"where {whole} and list_contains(?, {key_sql(spec.local_key, 't', spec)}) "
                    f"and {former} in (select {key_sql(spec.local_key, 'u', spec)} "
                    f'from raw."{relation}" u)',
                    [keys],
                ).fetchall()
                step |= {prefix + key for (key,) in rows}
        frontier = step - seen
        seen |= frontier
        found |= frontier
    return found


def _linked_to_others(
    con: duckdb.DuckDBPyConnection, person_id: str, record_ids: Collection[str]
) -> set[str]:
    if not record_ids or not table_exists(con, "linked", "person_records"):
        return set()
    rows = con.execute(
        "select record_id from linked.person_records "
        "where list_contains(?, record_id) and person_id <> ?",
        [sorted(record_ids), person_id],
    ).fetchall()
    return {r for (r,) in rows}


def records_of(
    con: duckdb.DuckDBPyConnection,
    sources: Mapping[str, Source],
    person_id: str,
    current: Collection[str],
) -> set[str]:
    """The person's records no source delivers any more, given their ``current`` records
    (module docstring): the ones to erase or give in a subject access as well."""
    own = set(current)
    retired = _retired_to(con, {person_id} | earlier_ids(con, person_id, merges_only=True))
    found = (retired | predecessors(con, sources, own | retired)) - own
    return found - _linked_to_others(con, person_id, found)
