"""Recorded rectifications applied to tonight's golden person rows: frames in, frames out.

The curated build calls :func:`apply` after survivorship, before anything derives from the
person table (household, child summary, search names, aggregates), so a corrected surname
or date of birth shows everywhere the person does. It takes the active rectifications as
plain data (see ``warehouse.rectification.for_build``) and never touches the operational
store: the caller loads them and records which ones lapsed.

A rectification is resolved to tonight's person ids through the records it was recorded
against, so it follows the person through merges and splits. For each person it reaches:

* the survived source value still equals the value the correction was made against (or the
  sources now hold no value at all): the correction holds, ``field_sources`` says
  ``rectification``, and the fields derived from it (age, child or adult, deceased,
  postcode district, alternative names) are worked out again;
* a source delivers a different value of its own: the source wins. When no person it
  reaches still holds the old value, the rectification is returned as lapsed, with why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from matching.identifiers import normalise_postcode

ADDRESS_FIELDS = ("address_line_1", "address_line_2", "town", "postcode", "uprn")
_DATE_FIELDS = ("dob", "date_of_death")


@dataclass(frozen=True)
class Lapsed:
    """A rectification a source has overtaken: the caller records it as lapsed."""

    id: int
    reason: str


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, date) else str(value)


def _typed(field: str, value: str | None) -> Any:
    if value is None or field not in _DATE_FIELDS:
        return value
    return date.fromisoformat(value)


def _age(dob: date | None, as_of: date) -> int | None:
    if dob is None:
        return None
    return as_of.year - dob.year - ((as_of.month, as_of.day) < (dob.month, dob.day))


def _source_of(row: dict[str, Any], field: str) -> str:
    sources = json.loads(row.get("field_sources") or "{}")
    return sources.get("address" if field in ADDRESS_FIELDS else field, "a source")


def _full_name(row: dict[str, Any]) -> str | None:
    if row.get("forename") is None or row.get("surname") is None:
        return None
    return f"{row['forename']} {row['surname']}"


def _derive(row: dict[str, Any], before: dict[str, Any], as_of: date, adult_age: int) -> None:
    """Work out again, in place, what the person table derives from corrected fields."""
    row["age"] = _age(row.get("dob"), as_of)
    row["is_child"] = None if row["age"] is None else row["age"] < adult_age
    row["deceased"] = row.get("date_of_death") is not None
    normalised = normalise_postcode(row.get("postcode"))
    row["postcode_district"] = normalised.split(" ")[0] if normalised else None
    old_name, new_name = _full_name(before), _full_name(row)
    if old_name != new_name:
        # The records still use the old name: keep it findable as an alternative.
        names = set(row.get("alternative_names") or []) | ({old_name} - {None})
        row["alternative_names"] = sorted(names - {new_name})


def apply(
    person: pl.DataFrame,
    person_records: pl.DataFrame,
    rectifications: pl.DataFrame | None,
    as_of: date,
    adult_age: int,
) -> tuple[pl.DataFrame, list[Lapsed]]:
    """``person`` with the rectifications that still hold applied, and those that lapsed.

    ``person_records``: person_id, record_id (``source|table|local_key``).
    ``rectifications``: id, record_ids (list), field, new_value, source_value, oldest first.
    """
    if rectifications is None or rectifications.is_empty():
        return person, []
    owner = dict(zip(person_records["record_id"], person_records["person_id"], strict=True))
    reached = {
        item["id"]: sorted({owner[r] for r in item["record_ids"] if r in owner})
        for item in rectifications.iter_rows(named=True)
    }
    wanted = {pid for ids in reached.values() for pid in ids}
    rows = {r["person_id"]: r for r in person.filter(pl.col("person_id").is_in(wanted)).to_dicts()}
    before = {pid: dict(row) for pid, row in rows.items()}
    lapsed: list[Lapsed] = []
    changed: set[str] = set()
    for item in rectifications.sort("id").iter_rows(named=True):
        field, held, overtaken = item["field"], False, []
        for pid in reached[item["id"]]:
            row = rows[pid]
            source = _text(before[pid][field])
            if source is None or source == item["source_value"]:
                row[field] = _typed(field, item["new_value"])
                sources = {**json.loads(row.get("field_sources") or "{}"), field: "rectification"}
                row["field_sources"] = json.dumps(sources, sort_keys=True)
                held = True
                changed.add(pid)
            else:
                which = "the corrected" if source == item["new_value"] else "a new"
                overtaken.append(f"{_source_of(before[pid], field)} now delivers {which} value")
        if overtaken and not held:
            lapsed.append(Lapsed(item["id"], "; ".join(sorted(set(overtaken)))))
    if not changed:
        return person, lapsed
    for pid in changed:
        _derive(rows[pid], before[pid], as_of, adult_age)
    corrected = pl.DataFrame([rows[pid] for pid in sorted(changed)], schema=person.schema)
    untouched = person.filter(~pl.col("person_id").is_in(list(changed)))
    return pl.concat([untouched, corrected]).sort("person_id"), lapsed
