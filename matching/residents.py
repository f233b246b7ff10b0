"""Link records with no identity of their own to the one person at their address who fits.

A police nominal for a child present at an incident is often just "Sebastian Marshall,
about 7, 70 School Terrace": no date of birth, no NHS number, and a surname that may be a
step-parent's or the officer's guess. Pairwise scores cannot link it (the surname
disagrees, the age is a range), but the address can: if exactly one person known at that
address has a forename that could be this one, a birth year in the range and the same
sex, that person is who the officer met.

This is the contact pass (``matching.contacts``) for everyone else: it runs on the first
clustering, proposes a link only when the candidate is unique, and every link still goes
through the hard rules while clustering again. Only persons that are still weak (no member
with an exact date of birth, a valid NHS number or a UPN) are linked this way: a person
with an identity is linked by the scores or not at all.
"""

from __future__ import annotations

import polars as pl

from matching.edges import empty_edges, unique_candidate_edges, with_related_forenames

# Probability given to a resident link: below a reviewer's decision, above most scores.
RESIDENT_LINK_PROBABILITY = 0.99


def _weak_records(records: pl.DataFrame, cluster_of: pl.DataFrame) -> pl.DataFrame:
    """Records whose whole person has no exact date of birth, NHS number or UPN.

    School contacts are left to ``matching.contacts``, which also knows their child.
    """
    identity = (
        pl.col("dob_exact")
        | pl.col("nhs_number").is_not_null()
        | (pl.col("upn_keys").list.len() > 0)
    )
    strong = (
        records.join(cluster_of, on="unique_id")
        .group_by("cluster_id")
        .agg(identity.any().alias("strong"))
    )
    return (
        records.join(cluster_of, on="unique_id")
        .join(strong, on="cluster_id")
        .filter(
            ~pl.col("strong")
            & pl.col("child_upn").is_null()
            & pl.col("forename").is_not_null()
            & pl.col("postcode").is_not_null()
            & pl.col("address_key").is_not_null()
        )
    )


def resident_links(records: pl.DataFrame, clusters: pl.DataFrame) -> pl.DataFrame:
    """Edges from weak records to the unique co-resident person who fits; pair-frame shaped.

    A candidate is any record of another person at the same address (postcode and address
    line) whose forename is related to the record's (``rules.names_related``: equal,
    nickname, short form or one keystroke), whose birth years overlap and whose sex does
    not differ. The surname is deliberately not required (children are known by more than
    one). If the candidates belong to two or more persons (two sisters called Adaeze at
    one address) nothing is linked.
    """
    cluster_of = clusters.select("unique_id", "cluster_id")
    columns = ["unique_id", "cluster_id", "forename", "forename_keys", "sex", "year_lo", "year_hi"]
    weak = _weak_records(records, cluster_of).select(*columns, "postcode", "address_key")
    if weak.is_empty():
        return empty_edges()
    residents = (
        records.filter(pl.col("postcode").is_not_null() & pl.col("address_key").is_not_null())
        .filter(pl.col("forename").is_not_null())
        .join(cluster_of, on="unique_id")
        .select(*columns, "postcode", "address_key")
    )
    pairs = weak.join(residents, on=["postcode", "address_key"], suffix="_c").filter(
        (pl.col("cluster_id") != pl.col("cluster_id_c"))
        & ~(pl.col("year_lo_c") > pl.col("year_hi")).fill_null(False)
        & ~(pl.col("year_hi_c") < pl.col("year_lo")).fill_null(False)
        & ~(pl.col("sex") != pl.col("sex_c")).fill_null(False)
    )
    return unique_candidate_edges(with_related_forenames(pairs), RESIDENT_LINK_PROBABILITY)
