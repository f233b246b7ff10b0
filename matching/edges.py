"""Links that rules (not the Splink model) assert, in the shape clustering reads.

Contacts linked through their child and weak records linked through their address are
given one fixed, high probability: the rule that found them already required a unique
candidate, so the score only has to rank them alongside the model's own pairs.
"""

from __future__ import annotations

import math

import polars as pl

from matching.rules import names_related

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


def with_related_forenames(pairs: pl.DataFrame) -> pl.DataFrame:
    """The pairs whose forenames (``forename``/``forename_keys`` and their ``_c``
    counterparts) can be one person's (``rules.names_related``); a missing one cannot."""
    related = [
        a is not None and b is not None and names_related(a, b, set(ka or []), set(kb or []))
        for a, b, ka, kb in pairs.select(
            "forename", "forename_c", "forename_keys", "forename_keys_c"
        ).iter_rows()
    ]
    return pairs.filter(pl.Series(related, dtype=pl.Boolean))


def unique_candidate_edges(pairs: pl.DataFrame, probability: float) -> pl.DataFrame:
    """Edges from each record (``unique_id``) whose candidates (``unique_id_c``) all belong
    to one person (``cluster_id_c``) to that person's first record: a rule links only when
    the candidate is unique, so two sisters called Adaeze get nothing."""
    unique = pairs.filter(pl.col("cluster_id_c").n_unique().over("unique_id") == 1)
    edges = unique.group_by("unique_id").agg(pl.col("unique_id_c").min().alias("candidate"))
    return fixed_edges(edges, probability).unique(["unique_id_l", "unique_id_r"])
