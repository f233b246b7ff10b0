"""Tombstones: keyed hashes of erased records, so a later delivery cannot bring them back.

After an erasure (:mod:`warehouse.erasure`) the warehouse holds no trace of the person, yet
the agencies keep delivering full snapshots of their systems; without a memory of what was
erased, tomorrow's delivery would silently restore the record. A tombstone is that memory
without the identifier: HMAC-SHA256 of the record id (``source|table|local_key``) under the
partnership's pseudonymisation key (:func:`warehouse.pseudonymise.load_key`). Staging hashes
each delivered row's record ids and sends a row that reaches a tombstoned record *directly*
(the person-level row itself, an episode carrying its key: see :mod:`warehouse.subjects`) to
quarantine with reason ``erased`` instead of staged.

This module is pure (frames in, booleans out) so staging takes tombstones as plain data and
never needs the operational store.

A tombstone made under one key cannot be checked under another: :func:`key_id` is kept with
each tombstone so the loader can refuse to run with the wrong key rather than let erased
records back in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from warehouse.sources import ColumnType, IdentifierKind, Source, Table

_CONTEXT = b"sdv-erased-record|"  # domain separation from analysts' pseudonyms


def record_hash(record_id: str, key: bytes) -> str:
    """The tombstone of one record id (never the id itself)."""
    return hmac.new(key, _CONTEXT + record_id.encode("utf-8"), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A short fingerprint of the key, to detect tombstones made under another key."""
    return hmac.new(key, b"sdv-tombstone-key-id", hashlib.sha256).hexdigest()[:16]


def direct_keys(source: Source, table: str) -> list[tuple[str, list[str]]]:
    """``(person-level table, this table's columns in that table's key order)`` for every
    record a row of ``table`` reaches directly: its own key if it is person-level, and each
    ``about`` whose match covers a person-level table's whole local key (as
    :func:`warehouse.subjects.about_sql` decides ``direct``)."""
    spec: Table = source.tables[table]
    found: list[tuple[str, list[str]]] = []
    if spec.person_level and spec.local_key:
        found.append((table, list(spec.local_key)))
    for about in spec.about:
        target = source.tables[about.table]
        if target.person_level and set(about.match.values()) == set(target.local_key):
            mine_for = {theirs: mine for mine, theirs in about.match.items()}
            found.append((about.table, [mine_for[k] for k in target.local_key]))
    return found


def _text(column: str) -> pl.Expr:
    value = pl.col(column).cast(pl.String).str.strip_chars()
    return pl.when(value == "").then(None).otherwise(value)


def normalised(spec: Table, column: str) -> pl.Expr:
    """The value as staging stores it, so the key matches the one linkage read."""
    value = _text(column)
    definition = spec.columns[column]
    if definition.identifier is IdentifierKind.upn:
        return value.str.to_uppercase()
    if definition.type is ColumnType.integer:
        return value.cast(pl.Int64, strict=False).cast(pl.String).fill_null(value)
    return value


def _key(values: list[pl.Expr], prefix: str) -> pl.Expr:
    return pl.concat_str([pl.lit(prefix), *(v.fill_null("") for v in values)], separator="|")


@dataclass(frozen=True)
class Tombstones:
    """The hashes of every erased record and the key they were made with."""

    hashes: frozenset[str]
    key: bytes

    @classmethod
    def of(cls, hashes: Iterable[str], key: bytes) -> Tombstones:
        return cls(frozenset(hashes), key)

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def __contains__(self, record_id: object) -> bool:
        return isinstance(record_id, str) and record_hash(record_id, self.key) in self.hashes

    def erased(self, frame: pl.DataFrame, source: Source, table: str) -> pl.Series:
        """Per row of ``frame`` (a delivered table, as text): does it reach an erased
        record directly? Keys are tried as delivered (trimmed) and as staged (UPN upper
        case, integers re-written), since linkage may have read either form."""
        spec = source.tables[table]
        forms: list[pl.Expr] = []
        for target, columns in direct_keys(source, table):
            if not all(c in frame.columns for c in columns):
                continue
            prefix = f"{source.name}|{target}"
            forms.append(_key([_text(c) for c in columns], prefix))
            forms.append(_key([normalised(spec, c) for c in columns], prefix))
        if not self.hashes or not forms or frame.is_empty():
            return pl.Series("erased", [False] * frame.height, dtype=pl.Boolean)
        candidates = frame.select(
            [f.alias(f"_k{i}") for i, f in enumerate(forms)]
        )  # one column per key form
        wanted = {
            value
            for value in set(candidates.unpivot()["value"].drop_nulls().to_list())
            if record_hash(value, self.key) in self.hashes
        }
        if not wanted:
            return pl.Series("erased", [False] * frame.height, dtype=pl.Boolean)
        hit = pl.any_horizontal([pl.col(c).is_in(sorted(wanted)) for c in candidates.columns])
        return candidates.select(hit.fill_null(False).alias("erased")).to_series()
