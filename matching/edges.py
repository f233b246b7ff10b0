"""Links that rules (not the Splink model) assert, in the shape clustering reads.

Contacts linked through their child and weak records linked through their address are
given one fixed, high probability: the rule that found them already required a unique
candidate, so the score only has to rank them alongside the model's own pairs.
"""

from __future__ import annotations

import math

import polars as pl

EDGE_SCHEMA = {
    "unique_id_l": pl.String,
    "unique_id_r": pl.String,
    "match_weight": pl.Float64,
    "match_probability": pl.Float64,
}


def empty_edges() -> pl.DataFrame:
    return pl.DataFrame(schema=EDGE_SCHEMA)


def fixed_edges(found: pl.DataFrame, probability: float) -> pl.DataFrame:
    """``unique_id``/``candidate`` pairs as ordered edges scored ``probability``."""
    weight = math.log2(probability / (1 - probability))
    return found.select(
        pl.min_horizontal("unique_id", "candidate").alias("unique_id_l"),
        pl.max_horizontal("unique_id", "candidate").alias("unique_id_r"),
        pl.lit(weight).alias("match_weight"),
        pl.lit(probability).alias("match_probability"),
    )
