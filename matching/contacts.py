"""Link school contacts through the child they are a contact for.

A contact row is the hardest row to link: no date of birth, often a nickname, sometimes
the child's surname rather than their own, and the address the school was last told.
Pairwise scores cannot do it (``shared/linkage-notes.md``), but the row says something a
score does not use: "the mother of pupil X". Once pupil X is resolved to a person, the
contact is very likely the one person who lives at one of X's addresses, has a forename
that could be the contact's, and the right sex and age to be X's mother.

This module proposes exactly those links, and only when the candidate is unique. The
links then go through the same hard rules as every other link (``matching.rules``): the
contact's birth-year cap from the child's date of birth still keeps a father from being
merged with his namesake son.
"""

from __future__ import annotations

import math

import polars as pl

from matching.rules import names_related

# Probability given to a contact link: below a reviewer's decision, above most scores.
CONTACT_LINK_PROBABILITY = 0.99
_SEX_OF = {"mother": "F", "father": "M"}


def _addresses(records: pl.DataFrame) -> pl.DataFrame:
    return records.filter(
        pl.col("postcode").is_not_null() & pl.col("address_key").is_not_null()
    ).select(
        "unique_id",
        pl.concat_str(["postcode", "address_key"], separator="#").alias("address"),
    )


def contact_links(records: pl.DataFrame, clusters: pl.DataFrame) -> pl.DataFrame:
    """Edges from contacts to the unique co-resident person who fits; pair-frame shaped."""
    cluster_of = clusters.select("unique_id", "cluster_id")
    contacts = records.filter(pl.col("child_upn").is_not_null()).select(
        "unique_id", "child_upn", "relationship", "forename", "forename_keys"
    )
    if contacts.is_empty():
        return _empty()
    child_clusters = (
        records.select("unique_id", pl.col("upn_keys").alias("child_upn"))
        .explode("child_upn")
        .drop_nulls("child_upn")
        .join(cluster_of, on="unique_id")
        .select("child_upn", pl.col("cluster_id").alias("child_cluster"))
        .unique()
    )
    addresses = _addresses(records).join(cluster_of, on="unique_id")
    child_addresses = (
        contacts.join(child_clusters, on="child_upn")
        .join(addresses.select(pl.col("cluster_id").alias("child_cluster"), "address"), on="child_cluster")
        .select("unique_id", "child_cluster", "address")
    )
    own = (
        _addresses(records)
        .join(contacts.select("unique_id"), on="unique_id")
        .join(contacts.join(child_clusters, on="child_upn").select("unique_id", "child_cluster"), on="unique_id", how="left")
    )
    wanted = pl.concat([child_addresses, own.select(child_addresses.columns)]).unique()
    candidates = addresses.rename({"unique_id": "candidate", "cluster_id": "candidate_cluster"})
    pairs = (
        wanted.join(candidates, on="address")
        .filter(
            (pl.col("candidate") != pl.col("unique_id"))
            & (pl.col("candidate_cluster") != pl.col("child_cluster")).fill_null(True)
        )
        .join(contacts, on="unique_id")
        .join(
            records.select(
                pl.col("unique_id").alias("candidate"),
                pl.col("forename").alias("candidate_forename"),
                pl.col("forename_keys").alias("candidate_keys"),
                pl.col("sex").alias("candidate_sex"),
            ),
            on="candidate",
        )
    )
    expected_sex = pl.col("relationship").replace_strict(_SEX_OF, default=None)
    pairs = pairs.filter(
        expected_sex.is_null()
        | pl.col("candidate_sex").is_null()
        | (expected_sex == pl.col("candidate_sex"))
    ).unique(["unique_id", "candidate"])
    related = [
        names_related(f, cf, set(k or []), set(ck or []))
        and f is not None
        and cf is not None
        for f, cf, k, ck in pairs.select(
            "forename", "candidate_forename", "forename_keys", "candidate_keys"
        ).iter_rows()
    ]
    pairs = pairs.filter(pl.Series(related, dtype=pl.Boolean))
    unique = pairs.filter(pl.col("candidate_cluster").n_unique().over("unique_id") == 1)
    edges = unique.group_by("unique_id").agg(pl.col("candidate").min())
    weight = math.log2(CONTACT_LINK_PROBABILITY / (1 - CONTACT_LINK_PROBABILITY))
    return edges.select(
        pl.min_horizontal("unique_id", "candidate").alias("unique_id_l"),
        pl.max_horizontal("unique_id", "candidate").alias("unique_id_r"),
        pl.lit(weight).alias("match_weight"),
        pl.lit(CONTACT_LINK_PROBABILITY).alias("match_probability"),
    )


def _empty() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "unique_id_l": pl.String,
            "unique_id_r": pl.String,
            "match_weight": pl.Float64,
            "match_probability": pl.Float64,
        }
    )
