"""Staging rules: from raw text to typed rows, or to quarantine with a reason.

Every raw record ends up in exactly one of two places:

* **staged** — typed columns (dates, timestamps, integers, booleans), whitespace trimmed,
  identifiers cleaned and checked: ``<col>_valid`` is true, false, or null when absent. An
  invalid NHS number, UPN or postcode is *flagged, never dropped*: the row stays and linkage
  simply will not use that identifier as a match key.
* **quarantine** — the record as delivered plus ``_reason_code`` and a readable ``_reason``,
  when it breaks a rule that makes it unusable: a required column is empty, a typed column
  cannot be parsed, the record has the wrong number of fields, or it repeats the local key
  of an earlier record in the same file; or it reaches a record that was erased (a
  tombstone, :mod:`warehouse.tombstone`), reason ``erased``, whatever else is wrong with it.

The functions are pure (frame in, frames out) so tests drive them without a warehouse.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from matching.identifiers import nhs_number_expr, nhs_valid_expr, postcode_expr, upn_valid_expr
from warehouse.reader import ROW_NUMBER, SHAPE_ERROR, RawTable
from warehouse.sources import ColumnType, IdentifierKind, Source
from warehouse.tombstone import Tombstones

# Reason codes, stable for tests, checks and dashboards.
MISSING_REQUIRED = "missing_required"
UNPARSEABLE_DATE = "unparseable_date"
BAD_INTEGER = "bad_integer"
BAD_BOOLEAN = "bad_boolean"
WRONG_FIELD_COUNT = "wrong_field_count"
DUPLICATE_KEY = "duplicate_key"
REASON_CODES = (
    MISSING_REQUIRED,
    UNPARSEABLE_DATE,
    BAD_INTEGER,
    BAD_BOOLEAN,
    WRONG_FIELD_COUNT,
    DUPLICATE_KEY,
)
# Not a broken rule but an upheld erasure: a redelivered record that must not come back.
ERASED = "erased"

_PROBLEM = "_problem"


@dataclass(frozen=True)
class StagedTable:
    staged: pl.DataFrame
    quarantine: pl.DataFrame


def _clean(name: str) -> pl.Expr:
    value = pl.col(name).str.strip_chars()
    return pl.when(value == "").then(None).otherwise(value)


def _problem(condition: pl.Expr, code: str, message: pl.Expr) -> pl.Expr:
    """A struct (code, message) where ``condition`` holds, else null."""
    return pl.when(condition).then(pl.struct(pl.lit(code).alias("code"), message.alias("message")))


def _value_message(name: str, what: str) -> pl.Expr:
    return pl.format("column '{}': '{}' is not {}", pl.lit(name), pl.col(name), pl.lit(what))


def _typed(source: Source, name: str, kind: ColumnType) -> tuple[pl.Expr, pl.Expr | None]:
    """(typed value expression, problem expression or None) for one column."""
    value = _clean(name)
    if kind is ColumnType.text:
        return value, None
    if kind is ColumnType.date:
        typed = pl.coalesce([value.str.to_date(f, strict=False) for f in source.date_formats])
        what = f"a date ({' or '.join(source.date_formats)})"
        return typed, _problem(
            value.is_not_null() & typed.is_null(), UNPARSEABLE_DATE, _value_message(name, what)
        )
    if kind is ColumnType.timestamp:
        typed = pl.coalesce(
            [
                value.str.to_datetime(f, strict=False, time_unit="us")
                for f in source.timestamp_formats
            ]
        )
        return typed, _problem(
            value.is_not_null() & typed.is_null(),
            UNPARSEABLE_DATE,
            _value_message(name, "an ISO 8601 timestamp"),
        )
    if kind is ColumnType.integer:
        typed = (
            pl.when(value.str.contains(r"^[+-]?\d{1,18}$")).then(value).cast(pl.Int64, strict=False)
        )
        return typed, _problem(
            value.is_not_null() & typed.is_null(),
            BAD_INTEGER,
            _value_message(name, "a whole number"),
        )
    if kind is ColumnType.boolean:
        lower = value.str.to_lowercase()
        truthy = [v.lower() for v in source.true_values]
        falsy = [v.lower() for v in source.false_values]
        typed = (
            pl.when(lower.is_in(truthy))
            .then(True)
            .when(lower.is_in(falsy))
            .then(False)
            .otherwise(None)
        )
        allowed = "/".join(source.true_values + source.false_values)
        return typed, _problem(
            value.is_not_null() & typed.is_null(),
            BAD_BOOLEAN,
            _value_message(name, f"a boolean ({allowed})"),
        )
    raise AssertionError(f"unhandled column type {kind}")


def _identifier(name: str, kind: IdentifierKind) -> list[pl.Expr]:
    """Cleaned identifier value and its ``<name>_valid`` flag."""
    value = _clean(name)
    if kind is IdentifierKind.nhs_number:
        return [nhs_number_expr(name).alias(name), nhs_valid_expr(name).alias(f"{name}_valid")]
    if kind is IdentifierKind.upn:
        return [value.str.to_uppercase().alias(name), upn_valid_expr(name).alias(f"{name}_valid")]
    if kind is IdentifierKind.postcode:
        normalised = postcode_expr(name)
        return [
            pl.coalesce(normalised, value).alias(name),
            pl.when(value.is_null())
            .then(None)
            .otherwise(normalised.is_not_null())
            .alias(f"{name}_valid"),
        ]
    if kind is IdentifierKind.uprn:
        return [value.alias(name), value.str.contains(r"^\d{1,12}$").alias(f"{name}_valid")]
    raise AssertionError(f"unhandled identifier kind {kind}")


def stage_table(raw: RawTable, source: Source, tombstones: Tombstones | None = None) -> StagedTable:
    """Split a raw table into typed staged rows and quarantined rows (module docstring).

    Rows reaching an erased record directly (``tombstones``) are quarantined as ``erased``
    and nothing else: the one reason linkage never salvages a row for.
    """
    table = source.tables[raw.table]
    typed_exprs: list[pl.Expr] = []
    problems: list[pl.Expr] = [
        _problem(pl.col(SHAPE_ERROR).is_not_null(), WRONG_FIELD_COUNT, pl.col(SHAPE_ERROR))
    ]
    for name, column in table.columns.items():
        typed, problem = _typed(source, name, column.type)
        typed_exprs.append(typed.alias(name))
        if column.required:
            problems.append(
                _problem(
                    _clean(name).is_null(),
                    MISSING_REQUIRED,
                    pl.lit(f"required column '{name}' is empty"),
                )
            )
        if problem is not None:
            problems.append(problem)

    frame = raw.frame.with_columns(pl.concat_list(problems).list.drop_nulls().alias(_PROBLEM))
    if table.local_key:
        frame = _flag_duplicates(frame, table.local_key)
    if tombstones:
        frame = _flag_erased(frame, tombstones.erased(raw.frame, source, raw.table))

    bad = pl.col(_PROBLEM).list.len() > 0
    quarantine = frame.filter(bad).select(
        ROW_NUMBER,
        *table.columns,
        pl.col(_PROBLEM)
        .list.eval(pl.element().struct.field("code"))
        .list.unique(maintain_order=True)
        .list.join(",")
        .alias("_reason_code"),
        pl.col(_PROBLEM)
        .list.eval(pl.element().struct.field("message"))
        .list.join("; ")
        .alias("_reason"),
    )
    identifier_exprs = [
        expr for name, kind in table.identifiers().items() for expr in _identifier(name, kind)
    ]
    staged = frame.filter(~bad).select(ROW_NUMBER, *typed_exprs)
    if identifier_exprs:
        staged = staged.with_columns(identifier_exprs)
    return StagedTable(staged=staged, quarantine=quarantine)


def _flag_erased(frame: pl.DataFrame, erased: pl.Series) -> pl.DataFrame:
    """Replace every problem of an erased row with the erasure: it must not be used at all."""
    message = "the record was erased (an upheld erasure request): its redelivery is held here"
    problem = pl.struct(pl.lit(ERASED).alias("code"), pl.lit(message).alias("message"))
    return (
        frame.with_columns(erased.alias("_erased"))
        .with_columns(
            pl.when(pl.col("_erased"))
            .then(pl.concat_list(problem))
            .otherwise(pl.col(_PROBLEM))
            .alias(_PROBLEM)
        )
        .drop("_erased")
    )


def _flag_duplicates(frame: pl.DataFrame, local_key: list[str]) -> pl.DataFrame:
    """Add a duplicate-key problem to every later record that repeats an earlier key.

    Only records otherwise clean compete for a key, so a broken first copy does not push a
    good second copy into quarantine too.
    """
    key_cols = [f"_key_{k}" for k in local_key]
    keyed = frame.with_columns(
        [_clean(k).alias(c) for k, c in zip(local_key, key_cols, strict=True)]
    )
    clean = pl.col(_PROBLEM).list.len() == 0
    first_row = pl.when(clean).then(pl.col(ROW_NUMBER)).otherwise(None).min().over(key_cols)
    message = pl.format("local key ({}) repeats record {}", pl.lit(", ".join(local_key)), first_row)
    problem = pl.struct(pl.lit(DUPLICATE_KEY).alias("code"), message.alias("message"))
    is_dup = clean & first_row.is_not_null() & (pl.col(ROW_NUMBER) != first_row)
    return keyed.with_columns(
        pl.when(is_dup).then(pl.concat_list(problem)).otherwise(pl.col(_PROBLEM)).alias(_PROBLEM)
    ).drop(key_cols)
