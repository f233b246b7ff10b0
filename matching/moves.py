"""Link a family's records at an old address to the same family at its new one.

Agencies lag behind house moves: the police hold a family at the address of an incident
two years ago, the GP and the school at the one they moved to. For one person alone the
pairwise score is right to hold back: a "Chloe Jones, about 10" at another address is
as likely a namesake as the same girl, and a moved person's address disagrees.

A family moves together, though. If the records at one address and the persons at
another agree person by person (two or more people, each with a forename that can be the
other's, the same surname, overlapping birth years and no differing sex), the two
addresses are one household's old and new homes, and each match is the same person: two
unrelated families whose members match each other name by name, age by age, are far
rarer than one family that moved. A person already known at both addresses (linked by an
identifier) counts towards the two.

A record is linked only when its match at the other address is unique both ways (two
sisters called Adaeze match nothing). The links then go through the hard rules while
clustering, like every other link: different NHS numbers, twins and incompatible dates of
birth still keep two records apart.
"""

from __future__ import annotations

import polars as pl

from matching.edges import empty_edges, fixed_edges
from matching.rules import dates_compatible, names_related

# Probability given to a moved-household link: below a reviewer's decision, above most
# scores.
MOVE_LINK_PROBABILITY = 0.99
# People who must match, one to one, for two addresses to be one family's old and new home.
MIN_MEMBERS = 2

# What a move compares of two placed records (``matching.regions`` reads the same).
PLACED_FIELDS = [
    "forename",
    "forename_keys",
    "surname",
    "sex",
    "dob",
    "dob_exact",
    "year_lo",
    "year_hi",
]
_COLUMNS = ["unique_id", "cluster_id", "address", *PLACED_FIELDS]


# Which records a move can place at an address, and the address: shared with
# ``matching.regions``, whose superset of move links must follow any change here.
PLACEABLE = (
    pl.col("postcode").is_not_null()
    & pl.col("address_key").is_not_null()
    & pl.col("forename").is_not_null()
    & pl.col("surname").is_not_null()
    & pl.col("child_upn").is_null()
)
ADDRESS = pl.concat_str(["postcode", "address_key"], separator="#").alias("address")


def _placed(records: pl.DataFrame, cluster_of: pl.DataFrame) -> pl.DataFrame:
    """Records with a full address (postcode and first line), forename and surname, and
    whether their person has an identity (NHS number, UPN or exact date of birth).

    School contact rows are left out: their address is the pupil's or the contact's, not
    a statement of where a household lives (``matching.contacts`` links them).
    """
    identity = (
        pl.col("dob_exact")
        | pl.col("nhs_number").is_not_null()
        | (pl.col("upn_keys").list.len() > 0)
    )
    with_cluster = records.join(cluster_of, on="unique_id")
    strong = with_cluster.group_by("cluster_id").agg(identity.any().alias("identified"))
    return (
        with_cluster.filter(PLACEABLE)
        .join(strong, on="cluster_id")
        .with_columns(ADDRESS)
        .select(*_COLUMNS, "identified")
    )


def _fits(row: tuple) -> bool:
    """Forenames that can be one person's, and dates of birth that can be one date."""
    forename, forename_c, keys, keys_c, dob, dob_c, exact, exact_c = row
    if not names_related(forename, forename_c, set(keys or []), set(keys_c or [])):
        return False
    return not (exact and exact_c) or dates_compatible(dob, dob_c)


def move_links(records: pl.DataFrame, clusters: pl.DataFrame) -> pl.DataFrame:
    """Edges between a family's records at two addresses that match person by person."""
    placed = _placed(records, clusters.select("unique_id", "cluster_id"))
    if placed.is_empty():
        return empty_edges()
    weak = placed.filter(~pl.col("identified"))
    known = placed.filter(pl.col("identified"))
    pairs = weak.join(known, on="surname", suffix="_c").filter(
        (pl.col("address") != pl.col("address_c"))
        & (pl.col("cluster_id") != pl.col("cluster_id_c"))
        & ~(pl.col("year_lo") > pl.col("year_hi_c")).fill_null(False)
        & ~(pl.col("year_lo_c") > pl.col("year_hi")).fill_null(False)
        & ~(pl.col("sex") != pl.col("sex_c")).fill_null(False)
    )
    # Two addresses can only be one family's if two people could match between them.
    pairs = pairs.filter(
        pl.col("cluster_id").n_unique().over("address", "address_c") >= MIN_MEMBERS
    )
    if pairs.is_empty():
        return empty_edges()
    fits = [
        _fits(row)
        for row in pairs.select(
            "forename",
            "forename_c",
            "forename_keys",
            "forename_keys_c",
            "dob",
            "dob_c",
            "dob_exact",
            "dob_exact_c",
        ).iter_rows()
    ]
    pairs = pairs.filter(pl.Series(fits, dtype=pl.Boolean))
    # One to one: each person at one address matches one person at the other, and back.
    side = ["address", "address_c"]
    pairs = pairs.filter(
        (pl.col("cluster_id_c").n_unique().over(*side, "cluster_id") == 1)
        & (pl.col("cluster_id").n_unique().over(*side, "cluster_id_c") == 1)
    )
    members = (
        pairs.group_by(side)
        .agg(pl.col("cluster_id").n_unique().alias("matched"))
        .filter(pl.col("matched") >= MIN_MEMBERS)
        .select(side)
    )
    found = pairs.join(members, on=side).select(
        "unique_id", pl.col("unique_id_c").alias("candidate")
    )
    return fixed_edges(found, MOVE_LINK_PROBABILITY).unique(["unique_id_l", "unique_id_r"])
