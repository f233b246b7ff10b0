"""The analysts' dataset: pseudonymised, physically without what their role may not see.

Analysts may use any SQL tool on their file, so the protection cannot be a filter in front
of it: the file is built from the curated tables by keeping only columns whose kind
(:mod:`warehouse.curated_schema`) carries no direct identifier or free text, and by
coarsening the rest:

* person and household ids become keyed hashes (HMAC-SHA256 with a partnership secret), so
  analysts can follow a person across tables and nights but cannot reverse or recompute
  the id without the key;
* ages become bands, postcodes become districts, event dates become months;
* names, dates of birth, NHS numbers, UPNs, UPRNs, addresses, full postcodes, practitioners
  and every free-text or detail column are left out.

Small-number suppression applies to published aggregates (see ``agg_*`` tables); record-
level pseudonymised data is for analysts working under the partnership's agreement.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Collection
from pathlib import Path

import polars as pl

from warehouse.curated_schema import DIRECT_IDENTIFIERS, TABLES

KEY_ENV = "SDV_PSEUDONYM_KEY"
AGE_BANDS = ((0, 4), (5, 10), (11, 15), (16, 17), (18, 24), (25, 39), (40, 64), (65, 200))

# What each analyst table keeps from its curated table (never a direct identifier, free
# text, contact or detail column), and how key and date columns are coarsened.
ANALYST_TABLES: dict[str, dict[str, tuple[str, ...]]] = {
    "person": {
        "keep": ("sex", "ethnicity", "is_child", "deceased", "postcode_district", "sen_provision"),
        "hash": ("person_id", "household_id"),
        "band": ("age",),
        "lists": ("sources",),
    },
    "household": {"keep": ("postcode_district", "members", "children"), "hash": ("household_id",)},
    "household_members": {"keep": ("role", "deceased"), "hash": ("household_id", "person_id")},
    "relationships": {
        "keep": ("relationship", "evidence"),
        "hash": ("person_id", "related_person_id"),
    },
    "involvement": {
        "keep": ("agency", "service", "status"),
        "hash": ("person_id",),
        "month": ("start_date", "end_date"),
    },
    "timeline": {
        "keep": (
            "agency",
            "event_type",
            "role",
            "is_opinion",
            "sensitivity",
            "measure",
            "measure_of",
        ),
        "hash": ("person_id",),
        "month": ("event_date", "end_date"),
    },
    "child_summary": {
        "keep": (
            "social_care_status",
            "cin_open",
            "cp_open",
            "looked_after",
            "early_help_open",
            "domestic_abuse_12m",
            "attendance_pct",
            "attendance_year",
            "suspensions",
            "sen_provision",
            "deceased",
            "age_status",
            "transition_to_adult",
        ),
        "hash": ("person_id",),
        "band": ("age",),
    },
}
# Kinds that may never reach the analyst file, whatever the table map above says.
FORBIDDEN_KINDS = DIRECT_IDENTIFIERS | {"free_text", "contact"}


def load_key(data_dir: Path) -> bytes:
    """The partnership's pseudonymisation key: ``SDV_PSEUDONYM_KEY`` (hex) if set, else a
    random key created once in ``<data>/secrets/pseudonym.key`` (mode 0600).

    Keeping the key stable keeps pseudonyms stable across nights; rotating it breaks
    analysts' longitudinal joins on purpose.
    """
    if os.environ.get(KEY_ENV):
        return bytes.fromhex(os.environ[KEY_ENV])
    path = data_dir / "secrets" / "pseudonym.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def pseudonym(value: str, key: bytes) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:20]


class Pseudonyms:
    """``pseudonym`` for whole columns, byte for byte, each distinct value hashed once.

    A night hashes millions of ids (a person's id recurs in every table and on each of
    their timeline rows) but only a few hundred thousand distinct ones. The keyed HMAC is
    set up once and copied per value (``hmac.new`` re-derives the key pads every call),
    and values already hashed for an earlier column or table come from the cache.
    """

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self._known = pl.DataFrame(schema={"_value": pl.String, "_pseudonym": pl.String})

    def __call__(self, values: pl.Series) -> pl.Series:
        values = values.cast(pl.String)
        new = (
            values.drop_nulls()
            .unique()
            .to_frame("_value")
            .join(self._known, on="_value", how="anti")
            .get_column("_value")
            .to_list()
        )
        if new:
            keyed, hashed = self._keyed, []
            for value in new:
                mac = keyed.copy()
                mac.update(value.encode())
                hashed.append(mac.hexdigest()[:20])
            self._known = pl.concat(
                [
                    self._known,
                    pl.DataFrame(
                        {"_value": new, "_pseudonym": hashed},
                        schema={"_value": pl.String, "_pseudonym": pl.String},
                    ),
                ]
            )
        return (
            values.rename("_value")
            .to_frame()
            .join(self._known, on="_value", how="left", maintain_order="left")
            .get_column("_pseudonym")
            .rename(values.name)
        )


def age_band(column: str) -> pl.Expr:
    expr = pl.lit(None, dtype=pl.String)
    for low, high in reversed(AGE_BANDS):
        label = f"{low}+" if high >= 200 else f"{low}-{high}"
        expr = pl.when(pl.col(column).is_between(low, high)).then(pl.lit(label)).otherwise(expr)
    return expr.alias(f"{column}_band")


def analyst_tables(
    tables: dict[str, pl.DataFrame], key: bytes, withheld: Collection[str] = ()
) -> dict[str, pl.DataFrame]:
    """The pseudonymised tables built from the curated ones.

    Rows naming a ``withheld`` person (one under a restriction of processing, Art. 18) are
    left out: analysis is processing, and every role but the DPO reads as if they were not
    there. The aggregates keep counting them: anonymised, suppressed counts are not data
    about anyone."""
    out = {}
    hashed = Pseudonyms(key)
    hidden = list(withheld)
    for name, spec in ANALYST_TABLES.items():
        frame = tables[name]
        persons = [c for c in spec.get("hash", ()) if c.endswith("person_id")]
        if hidden and persons:
            frame = frame.filter(*(~pl.col(c).is_in(hidden).fill_null(False) for c in persons))
        out[name] = analyst_frame(name, frame, hashed)
    for name, table in TABLES.items():
        if table.aggregate:
            out[name] = tables[name]
    return out


def analyst_frame(
    name: str, frame: pl.DataFrame, hashed: Callable[[pl.Series], pl.Series]
) -> pl.DataFrame:
    """Curated table ``name``'s rows as its analyst table holds them (``hashed``: a
    :class:`Pseudonyms`). One function for the build and for a purge that has to find, or
    write again, the analyst rows made from given curated rows."""
    spec, schema = ANALYST_TABLES[name], TABLES[name]
    for column in spec.get("keep", ()):
        kind = schema.column(column).kind
        if kind in FORBIDDEN_KINDS:
            raise ValueError(f"{name}.{column} is {kind}: never in the analyst file")
    return frame.select(
        *(
            pl.col(c)
            .map_batches(hashed, return_dtype=pl.String)
            .alias(c.removesuffix("_id") + "_key")
            for c in spec.get("hash", ())
        ),
        *(pl.col(c) for c in spec.get("keep", ())),
        *(age_band(c) for c in spec.get("band", ())),
        # Months as text ("2026-03"), so no value can equal a date of birth.
        *(
            pl.col(c).dt.strftime("%Y-%m").alias(c.removesuffix("_date") + "_month")
            for c in spec.get("month", ())
        ),
        *(pl.col(c).list.join(",").alias(c) for c in spec.get("lists", ())),
    )


def analyst_columns(name: str) -> dict[str, str]:
    """The columns of analyst table ``name``, in order, with their descriptions."""
    spec, curated = ANALYST_TABLES[name], TABLES[name]
    columns = {
        f"{c.removesuffix('_id')}_key": f"Keyed hash (HMAC-SHA256) of {c}."
        for c in spec.get("hash", ())
    }
    columns |= {c: curated.column(c).description for c in spec.get("keep", ())}
    columns |= {f"{c}_band": f"{c.capitalize()} in bands." for c in spec.get("band", ())}
    columns |= {
        f"{c.removesuffix('_date')}_month": f"Month (YYYY-MM) of {c}."
        for c in spec.get("month", ())
    }
    columns |= {c: curated.column(c).description for c in spec.get("lists", ())}
    return columns


def analyst_comments() -> dict[str, tuple[str, dict[str, str]]]:
    """Catalog comments for the analysts' file, derived from the curated dictionary."""
    out = {
        name: (f"Pseudonymised: {TABLES[name].description}", analyst_columns(name))
        for name in ANALYST_TABLES
    }
    for name, table in TABLES.items():
        if table.aggregate:
            out[name] = (table.description, {c.name: c.description for c in table.columns})
    return out
