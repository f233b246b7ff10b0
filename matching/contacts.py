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

import polars as pl

from matching.edges import empty_edges, fixed_edges
from matching.rules import names_related

# Probability given to a contact link: below a reviewer's decision, above most scores.
CONTACT_LINK_PROBABILITY = 0.99
_SEX_OF = {"mother": "F", "father": "M"}


def _addresses(records: pl.DataFrame) -> pl.DataFrame:
    """Each record's address as keys, ``exact`` when postcode and whole first line agree.

    Three kinds of key, each prefixed with its kind so kinds never match each other:

    - ``full``: postcode and address key (flat, number or house name, street): exact;
    - ``building``: postcode and the address key without its flat, used only when one of
      the two records gives no flat (``no_flat``): "15 Meadow Court" on a contact form is
      the building "Flat 1, 15 Meadow Court" stands in, and the flat was left off. Two
      flats that are both given and differ are two homes, so this key never joins them;
    - ``street``: the address key alone, used only when one of the two records has no
      postcode: the same house number and street can exist in two towns,
      and two postcodes that differ are two addresses.
    """
    has_key = pl.col("address_key").is_not_null()
    has_postcode = pl.col("postcode").is_not_null()
    flat = pl.col("address_key").str.split("|").list.first()
    building = pl.col("address_key").str.replace(r"^[^|]*", "")
    return pl.concat(
        [
            records.filter(has_postcode & has_key).select(
                "unique_id",
                pl.concat_str([pl.lit("full"), "postcode", "address_key"], separator="#").alias(
                    "address"
                ),
                pl.lit(True).alias("exact"),
                pl.lit(False).alias("loose"),
            ),
            records.filter(has_postcode & has_key).select(
                "unique_id",
                pl.concat_str([pl.lit("building"), "postcode", building], separator="#").alias(
                    "address"
                ),
                pl.lit(False).alias("exact"),
                (flat == "").alias("loose"),
            ),
            records.filter(has_key).select(
                "unique_id",
                pl.concat_str([pl.lit("street"), "address_key"], separator="#").alias("address"),
                pl.lit(False).alias("exact"),
                pl.col("postcode").is_null().alias("loose"),
            ),
        ]
    )


def child_clusters(records: pl.DataFrame, cluster_of: pl.DataFrame) -> pl.DataFrame:
    """``child_upn, child_cluster``: the person each pupil UPN belongs to."""
    return (
        records.select("unique_id", pl.col("upn_keys").alias("child_upn"))
        .explode("child_upn")
        .drop_nulls("child_upn")
        .join(cluster_of, on="unique_id")
        .select("child_upn", pl.col("cluster_id").alias("child_cluster"))
        .unique()
    )


def _candidates(
    records: pl.DataFrame, contacts: pl.DataFrame, cluster_of: pl.DataFrame
) -> pl.DataFrame:
    """(contact, candidate) pairs living at the contact's or their child's addresses."""
    addresses = _addresses(records).join(cluster_of, on="unique_id")
    of_child = contacts.join(child_clusters(records, cluster_of), on="child_upn").select(
        "unique_id", "child_cluster"
    )
    wanted = pl.concat(
        [
            of_child.join(
                addresses.select(
                    pl.col("cluster_id").alias("child_cluster"), "address", "exact", "loose"
                ),
                on="child_cluster",
            ),
            addresses.select("unique_id", "address", "exact", "loose")
            .join(contacts.select("unique_id"), on="unique_id")
            .join(of_child, on="unique_id", how="left"),
        ],
        how="diagonal",
    ).unique()
    found = addresses.rename(
        {
            "unique_id": "candidate",
            "cluster_id": "candidate_cluster",
            "exact": "candidate_exact",
            "loose": "candidate_loose",
        }
    )
    own = cluster_of.select("unique_id", pl.col("cluster_id").alias("own_cluster"))
    # A flat left off is only read into the address being searched (the contact's or the
    # child's): a candidate whose record gives no flat may live in any flat of the building.
    by_building = pl.col("address").str.starts_with("building#")
    is_contact = pl.col("candidate").is_in(contacts["unique_id"].implode())
    # The child is never a candidate, and neither are the contact rows already joined to
    # this contact (the same mother recorded as a brother's contact too): they are the
    # person being looked for, not a rival to the record that would identify her. A
    # non-contact record already in the contact's person stays a candidate, so a contact
    # already linked is not linked again to someone else who fits.
    pairs = (
        wanted.join(found, on="address")
        .join(own, on="unique_id", how="left")
        .filter(
            (pl.col("candidate") != pl.col("unique_id"))
            & (pl.col("exact") | pl.col("loose") | (pl.col("candidate_loose") & ~by_building))
            & ~((pl.col("candidate_cluster") == pl.col("own_cluster")) & is_contact).fill_null(
                False
            )
            & (pl.col("candidate_cluster") != pl.col("child_cluster")).fill_null(True)
        )
    )
    pairs = pairs.with_columns((pl.col("exact") & pl.col("candidate_exact")).alias("exact"))
    pairs = pairs.group_by("unique_id", "candidate", "candidate_cluster").agg(pl.col("exact").max())
    side = records.select(
        pl.col("unique_id").alias("candidate"),
        pl.col("forename").alias("candidate_forename"),
        pl.col("forename_keys").alias("candidate_keys"),
        pl.col("sex").alias("candidate_sex"),
        pl.col("surname").alias("candidate_surname"),
        pl.col("year_lo").alias("candidate_lo"),
        pl.col("year_hi").alias("candidate_hi"),
    )
    pairs = pairs.join(contacts, on="unique_id").join(side, on="candidate")
    # The right age: a brother or a namesake son is not a candidate for the father.
    return pairs.filter(
        ~(pl.col("candidate_lo") > pl.col("year_hi")).fill_null(False)
        & ~(pl.col("candidate_hi") < pl.col("year_lo")).fill_null(False)
    )


def _without_contact_only_rivals(
    best: pl.DataFrame, records: pl.DataFrame, clusters: pl.DataFrame
) -> pl.DataFrame:
    """Drop rival candidates that are only contact rows when a person with a record of
    their own also fits.

    "Sophie, mother" on the forms of two pupils at one address, and Sophie's GP record
    there: each contact row sees the other as a second Sophie and neither is linked. A
    person known only from contact rows is a statement about a pupil, not a second
    resident: it is the same mother on a sibling's form far more often than a second
    woman of that forename at the address with no record anywhere else. A record of a
    person's own (any other source, or a pupil row) always counts as a rival.
    """
    contact_only = (
        records.select("unique_id", pl.col("child_upn").is_not_null().alias("is_contact"))
        .join(clusters.select("unique_id", "cluster_id"), on="unique_id")
        .group_by("cluster_id")
        .agg(pl.col("is_contact").all().alias("contact_only"))
        .rename({"cluster_id": "candidate_cluster"})
    )
    best = best.join(contact_only, on="candidate_cluster", how="left")
    has_own = (~pl.col("contact_only")).any().over("unique_id")
    return best.filter(~pl.col("contact_only") | ~has_own).drop("contact_only")


def contact_links(records: pl.DataFrame, clusters: pl.DataFrame) -> pl.DataFrame:
    """Edges from contacts to the unique co-resident person who fits; pair-frame shaped.

    Candidates are ranked: a fitting forename at the exact address (postcode and
    address), then a fitting forename at the address without postcode. The contact is
    linked only if the best rank holds exactly one person, not counting persons known
    only from other contact rows when someone with a record of their own fits
    (``_without_contact_only_rivals``).

    The surname and sex alone are not enough, even for a mother or father at the child's
    address: when the contact has no record of their own, the one man of that surname at
    the address is as often the contact's own father (three generations under one roof)
    as the contact under another forename, and merging a parent with a child is the
    worst mistake linkage can make.
    """
    contacts = records.filter(pl.col("child_upn").is_not_null()).select(
        "unique_id",
        "child_upn",
        "relationship",
        "forename",
        "forename_keys",
        "surname",
        "year_lo",
        "year_hi",
    )
    if contacts.is_empty():
        return empty_edges()
    pairs = _candidates(records, contacts, clusters.select("unique_id", "cluster_id"))
    expected_sex = pl.col("relationship").replace_strict(_SEX_OF, default=None)
    pairs = pairs.filter(
        expected_sex.is_null()
        | pl.col("candidate_sex").is_null()
        | (expected_sex == pl.col("candidate_sex"))
    )
    # Whether the names fit, once per distinct pair of names (most candidate pairs repeat
    # one: a county has far fewer forenames than contacts).
    names = pairs.select("forename", "candidate_forename", "forename_keys", "candidate_keys")
    names = names.unique().filter(
        pl.col("forename").is_not_null() & pl.col("candidate_forename").is_not_null()
    )
    fits = [names_related(f, cf, set(k or []), set(ck or [])) for f, cf, k, ck in names.iter_rows()]
    names = names.with_columns(pl.Series("fits", fits, dtype=pl.Boolean)).filter("fits")
    pairs = pairs.join(
        names.drop("fits"),
        on=["forename", "candidate_forename", "forename_keys", "candidate_keys"],
        how="semi",
        nulls_equal=True,
    ).with_columns(pl.when("exact").then(1).otherwise(2).cast(pl.Int8).alias("tier"))
    best = pairs.filter(pl.col("tier") == pl.col("tier").min().over("unique_id"))
    best = _without_contact_only_rivals(best, records, clusters)
    unique = best.filter(pl.col("candidate_cluster").n_unique().over("unique_id") == 1)
    edges = unique.group_by("unique_id").agg(pl.col("candidate").min())
    return fixed_edges(edges, CONTACT_LINK_PROBABILITY)
