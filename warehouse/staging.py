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

**Reusing the previous delivery's work.** Sources deliver full snapshots in which nearly
every record is the same as last night's. Each staged row keeps ``_record_hash``, a
SHA-256 (first 128 bits) of the record as delivered (its text columns and any shape error)
together with the staging rules it was judged by (:func:`rules_fingerprint`). Given the
staged rows of the source's current delivery (``previous``), :func:`stage_table` takes the
typed values of a record whose hash it finds there instead of computing them again: they
depend on nothing but the record and the rules, both covered by the hash. Only records
staged before are reused; new, changed and previously quarantined records are judged
afresh. Rules that look across rows (a duplicate local key, an erased record) are applied
to the whole delivery either way, so the result is the one staging from scratch gives.
"""

from __future__ import annotations

import hashlib
import json
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
_KNOWN = "_known"  # the record's hash is among the previous delivery's staged rows
# Hash of the record as delivered and the rules that staged it (module docstring).
RECORD_HASH = "_record_hash"
# Bump when a staging rule changes what a record stages to (a new check, another type
# parse): every record's hash changes with it, so nothing staged by the old rule is reused.
RULES_VERSION = 1


@dataclass(frozen=True)
class StagedTable:
    staged: pl.DataFrame
    quarantine: pl.DataFrame
    # ``_record_hash`` of every delivered record, in the raw table's order: how the
    # warehouse stores a record once however many deliveries repeat it (warehouse.store).
    hashes: pl.Series


def _clean(name: str) -> pl.Expr:
    value = pl.col(name).str.strip_chars()
    return pl.when(value == "").then(None).otherwise(value)


@dataclass(frozen=True)
class _Rule:
    """A row rule: when it is broken (``condition``), and the struct (code, message) it
    adds then, else null. Kept apart so clean rows are found without building messages."""

    condition: pl.Expr
    problem: pl.Expr


def _problem(condition: pl.Expr, code: str, message: pl.Expr) -> _Rule:
    return _Rule(
        condition,
        pl.when(condition).then(pl.struct(pl.lit(code).alias("code"), message.alias("message"))),
    )


def _value_message(name: str, what: str) -> pl.Expr:
    return pl.format("column '{}': '{}' is not {}", pl.lit(name), pl.col(name), pl.lit(what))


def typed_value(source: Source, name: str, kind: ColumnType) -> tuple[pl.Expr, _Rule | None]:
    """(typed value expression, its rule or None) for one column: how staging reads a
    delivered value (trimmed, the source's date formats and true/false words). Subject
    access reads raw and quarantined copies with it, so every copy is judged alike."""
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


def rules_fingerprint(source: Source, table_name: str) -> str:
    """What a record's staged values depend on besides the record: the table's spec and the
    source's parsing settings. Part of every record hash, so a config change restages all."""
    rules = {
        "version": RULES_VERSION,
        "table": source.tables[table_name].model_dump(mode="json"),
        "date_formats": source.date_formats,
        "timestamp_formats": source.timestamp_formats,
        "true_values": source.true_values,
        "false_values": source.false_values,
    }
    return hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()


def record_hashes(frame: pl.DataFrame, source: Source, table_name: str) -> pl.Series:
    """``_record_hash`` of each delivered record (module docstring).

    The record is encoded as JSON (its spec columns in order, then the shape error), which
    tells null from any text and cannot be confused by a delimiter inside a value.
    SHA-256 rather than a fast 64-bit hash: a collision would silently give a record
    another record's values, and 128 bits make that beyond reach.

    The hash is of the rules' fingerprint followed by the record's JSON (UTF-8), given as
    the first 32 hex digits. Polars has no SHA-256 (and DuckDB's ``sha256`` measured no
    faster than ``hashlib``), so the one step left in Python is the digest itself, kept as
    small as it goes: the JSON comes out of Polars as bytes (no string objects, no encoding
    in Python), each digest continues a copy of one already fed the fingerprint, and the
    hex is made by Polars.
    """
    columns = [*source.tables[table_name].columns, SHAPE_ERROR]
    start = hashlib.sha256(rules_fingerprint(source, table_name).encode())
    encoded = frame.select(pl.struct(columns).struct.json_encode().cast(pl.Binary)).to_series()
    digests = []
    append = digests.append
    copy = start.copy
    for record in encoded.to_list():
        digest = copy()
        digest.update(record)
        append(digest.digest())
    return (
        pl.Series(RECORD_HASH, digests, pl.Binary)
        .bin.slice(0, 16)
        .bin.encode("hex")
        .alias(RECORD_HASH)
    )


def _row_rules(source: Source, table_name: str) -> tuple[list[pl.Expr], list[_Rule]]:
    """(typed value expressions, the rules each record must keep on its own)."""
    table = source.tables[table_name]
    typed_exprs: list[pl.Expr] = []
    rules = [_problem(pl.col(SHAPE_ERROR).is_not_null(), WRONG_FIELD_COUNT, pl.col(SHAPE_ERROR))]
    for name, column in table.columns.items():
        typed, rule = typed_value(source, name, column.type)
        typed_exprs.append(typed.alias(name))
        if column.required:
            rules.append(
                _problem(
                    _clean(name).is_null(),
                    MISSING_REQUIRED,
                    pl.lit(f"required column '{name}' is empty"),
                )
            )
        if rule is not None:
            rules.append(rule)
    return typed_exprs, rules


def stage_table(
    raw: RawTable,
    source: Source,
    tombstones: Tombstones | None = None,
    previous: pl.DataFrame | None = None,
) -> StagedTable:
    """Split a raw table into typed staged rows and quarantined rows (module docstring).

    Rows reaching an erased record directly (``tombstones``) are quarantined as ``erased``
    and nothing else: the one reason linkage never salvages a row for.

    ``previous``: staged rows of an earlier delivery of this table (``_record_hash`` and
    the staged columns); a record with one of those hashes takes its values from there.
    The result is the same with or without it.
    """
    table = source.tables[raw.table]
    typed_exprs, rules = _row_rules(source, raw.table)
    identifier_exprs = [
        expr for name, kind in table.identifiers().items() for expr in _identifier(name, kind)
    ]

    # Typed values and the row rules are evaluated lazily: Polars then computes an
    # expression they share once (the cleaned value, a parsed date, a normalised postcode
    # used for both the value and its flag), where an eager select computes it for each use.
    def typed_rows(rows: pl.DataFrame) -> pl.DataFrame:
        staged = rows.lazy().select(ROW_NUMBER, *typed_exprs, RECORD_HASH)
        if identifier_exprs:
            staged = staged.with_columns(identifier_exprs)
        return staged.collect()

    hashes = record_hashes(raw.frame, source, raw.table)
    frame = raw.frame.with_columns(hashes)
    if previous is not None and RECORD_HASH in previous.columns:
        known_hashes = previous[RECORD_HASH].drop_nulls().unique()
        known = frame[RECORD_HASH].is_in(known_hashes.implode())
    else:
        known = pl.Series([False] * frame.height, dtype=pl.Boolean)
    frame = frame.with_columns(known.alias(_KNOWN))

    # Row rules, on records not staged before: first which have any problem (cheap), then
    # the problems themselves for those few rows only. _PROBLEM is null for a clean row.
    fresh = frame.filter(~pl.col(_KNOWN))
    any_problem = pl.any_horizontal([r.condition for r in rules]).fill_null(False)
    flagged = (
        fresh.lazy()
        .filter(any_problem)
        .select(
            ROW_NUMBER,
            pl.concat_list([r.problem for r in rules]).list.drop_nulls().alias(_PROBLEM),
        )
        .collect()
    )
    frame = frame.join(flagged, on=ROW_NUMBER, how="left", maintain_order="left")
    if table.local_key:
        frame = _flag_duplicates(frame, table.local_key)
    if tombstones:
        frame = _flag_erased(frame, tombstones.erased(raw.frame, source, raw.table))

    bad = pl.col(_PROBLEM).is_not_null()
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
    good = frame.filter(~bad)
    staged = typed_rows(good.filter(~pl.col(_KNOWN)))
    if previous is not None and RECORD_HASH in previous.columns:
        carried = good.filter(pl.col(_KNOWN)).select(ROW_NUMBER, RECORD_HASH)
        if not carried.is_empty():
            values = previous.select(
                [pl.col(c).cast(t) for c, t in staged.schema.items() if c != ROW_NUMBER]
            ).unique(RECORD_HASH, keep="any")
            carried = carried.join(values, on=RECORD_HASH, how="left").select(staged.columns)
            staged = pl.concat([staged, carried]).sort(ROW_NUMBER)
    return StagedTable(staged=staged, quarantine=quarantine, hashes=hashes)


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
    clean = pl.col(_PROBLEM).is_null()
    first_row = pl.when(clean).then(pl.col(ROW_NUMBER)).otherwise(None).min().over(key_cols)
    message = pl.format("local key ({}) repeats record {}", pl.lit(", ".join(local_key)), first_row)
    problem = pl.struct(pl.lit(DUPLICATE_KEY).alias("code"), message.alias("message"))
    is_dup = clean & first_row.is_not_null() & (pl.col(ROW_NUMBER) != first_row)
    return keyed.with_columns(
        pl.when(is_dup).then(pl.concat_list(problem)).otherwise(pl.col(_PROBLEM)).alias(_PROBLEM)
    ).drop(key_cols)
