"""Link a record that gives no forename to the one person at its address who fits.

A row can arrive without a forename: a GP registration whose given name was left blank,
a school contact form with only "Mrs Jenkins, mother". Staging quarantines it (forename
is required) and linkage salvages it (``warehouse.person_rows``), but no score can link
it: the rules refuse a link on surname and address alone when a forename is missing
(``rules.pair_vetoes``), because the Jenkinses at one address are a family, not a person.

A missing forename is absence of evidence, though, not evidence of difference. What is
left still says a lot: "Jenkins, female, born 1986-04-02, 6 Foxglove Place" (or "Jenkins,
mother of a pupil born 2015, 6 Foxglove Place") fits exactly one person there, Harriet
Jenkins, when no one else at that address has that surname, sex and age. That is the
resident pass (``matching.residents``) with the forename left out, so the candidate must
be unique among *everyone* at the address, named or not: a mother and her grown-up
daughter, both Jenkins, match nothing.

The test, for a record with a surname and a full address (postcode and address line) but
no forename: the candidates are the other persons with a record at exactly that address
whose surname is the record's, whose sex does not differ (a contact's role gives one),
and whose birth years overlap the record's (an exact date of birth, an age range, or the
cap a contact gets from their child's date of birth). The record's own person and its
child are never candidates. If they are all one person, the record is linked to it.
The link then goes through every hard rule while clustering (different NHS numbers,
twins, dates of birth that cannot be one date, two contacts of one pupil), and is marked
``asserted`` so that the no-forename veto, which guards *scores*, does not refuse it.
"""

from __future__ import annotations

import polars as pl

from matching.contacts import child_clusters
from matching.edges import empty_edges, unique_candidate_edges

# Probability given to an unnamed-record link: below a reviewer's decision, above most
# scores.
UNNAMED_LINK_PROBABILITY = 0.99

_COLUMNS = ["unique_id", "cluster_id", "surname", "sex", "year_lo", "year_hi", "dob"]


def _placed(records: pl.DataFrame, cluster_of: pl.DataFrame) -> pl.DataFrame:
    """Records with a surname and a full address, with their person and their child's."""
    return (
        records.filter(
            pl.col("surname").is_not_null()
            & pl.col("postcode").is_not_null()
            & pl.col("address_key").is_not_null()
        )
        .join(cluster_of, on="unique_id")
        .select(*_COLUMNS, "forename", "child_upn", "postcode", "address_key")
    )


def unnamed_links(records: pl.DataFrame, clusters: pl.DataFrame) -> pl.DataFrame:
    """Edges from records with no forename to the unique co-resident person who fits;
    pair-frame shaped, ``asserted``."""
    cluster_of = clusters.select("unique_id", "cluster_id")
    placed = _placed(records, cluster_of)
    unnamed = placed.filter(pl.col("forename").is_null())
    if unnamed.is_empty():
        return empty_edges().with_columns(pl.lit(False).alias("asserted"))
    unnamed = unnamed.join(child_clusters(records, cluster_of), on="child_upn", how="left")
    residents = placed.select(*_COLUMNS, "postcode", "address_key")
    pairs = unnamed.join(residents, on=["postcode", "address_key"], suffix="_c").filter(
        (pl.col("cluster_id") != pl.col("cluster_id_c"))
        & (pl.col("cluster_id_c") != pl.col("child_cluster")).fill_null(True)
        & (pl.col("surname") == pl.col("surname_c"))
        & ~(pl.col("sex") != pl.col("sex_c")).fill_null(False)
        & ~(pl.col("year_lo_c") > pl.col("year_hi")).fill_null(False)
        & ~(pl.col("year_hi_c") < pl.col("year_lo")).fill_null(False)
    )
    edges = unique_candidate_edges(pairs, UNNAMED_LINK_PROBABILITY)
    return edges.with_columns(pl.lit(True).alias("asserted"))
