"""Digests of records: what incremental scoring and region reuse compare night to night.

``matching.link.fingerprints`` (which records to re-score) and
``matching.regions.record_hashes`` (which regions to re-cluster) both write a record's
fields as one text and take its SHA-256; the writing is here once, so the two agree on
how nulls and lists are spelled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import polars as pl


def fields_text(records: pl.DataFrame, columns: Iterable[str]) -> pl.Expr:
    """The record's ``columns`` as one text: lists joined with ``;``, fields with 0x1F, and
    null written as a marker of its own, so "no postcode" differs from any postcode."""
    parts = []
    for c in columns:
        column = pl.col(c)
        if isinstance(records.schema[c], pl.List):
            column = column.list.join(";")
        parts.append(column.cast(pl.String).fill_null("\x00"))
    return pl.concat_str(parts, separator="\x1f")


def sha256_hex(texts: pl.Series, length: int, name: str) -> pl.Series:
    """The first ``length`` hex digits of each text's SHA-256 (Polars has no SHA-256)."""
    sha256 = hashlib.sha256
    return pl.Series(name, [sha256(t.encode()).hexdigest()[:length] for t in texts], pl.String)
