"""Records naming themselves one child's mother or father (``matching.parents``).

Built like ``test_linkage_rules``: canonical text rows through ``standardise``, clusters
written out by hand (the child's records already resolved to one person).
"""

from __future__ import annotations

import polars as pl

from matching.config import load_linkage_config
from matching.parents import PARENT_LINK_PROBABILITY, parent_links, parent_statements
from matching.standardise import standardise
from tests.test_linkage_rules import UPN_X, rec, rows, run

CONFIG = load_linkage_config()
PUPIL = "school|pupils|X"
CSC_CHILD = "council_csc|people|C1"
SCHOOL_DAD = "school|contacts|X-2"
CSC_DAD = "council_csc|people|D1"


def _relationships(*rows_: tuple[str, str, str]) -> pl.DataFrame:
    return pl.DataFrame(
        rows_, schema=["record_id", "related_record_id", "relationship"], orient="row"
    ).with_columns(pl.lit("children's social care").alias("evidence"))


def _family(*extra: dict) -> pl.DataFrame:
    """Ava (a pupil and a social care child), her father as the school's contact at her
    address, and social care's record of her father at his own address (no dob)."""
    return standardise(
        rows(
            rec(PUPIL, forename="Ava", surname="Thomas", dob="2015-09-03", sex="F", upn=UPN_X,
                address_line_1="9 Harbour Walk", postcode="TA1 5NP"),
            rec(CSC_CHILD, forename="Ava", surname="Thomas", dob="2015-09-03", sex="F",
                address_line_1="9 Harbour Walk", postcode="TA1 5NP"),
            rec(SCHOOL_DAD, forename="Danny", surname="Thomas", child_upn=UPN_X,
                relationship="father", address_line_1="9 Harbour Walk", postcode="TA1 5NP"),
            rec(CSC_DAD, forename="Daniel", surname="Thomas", sex="M",
                address_line_1="3 Taunton View", postcode="TA6 8AH"),
            *extra,
        ),
        CONFIG,
    )  # fmt: skip


def _clusters(records: pl.DataFrame, **same: str) -> pl.DataFrame:
    """Each record its own person, except the child's records (one person) and ``same``."""
    joined = {CSC_CHILD: PUPIL, **same}
    return records.select("unique_id", pl.col("unique_id").replace(joined).alias("cluster_id"))


def _edges(links: pl.DataFrame) -> list[tuple[str, str]]:
    return sorted(links.select("unique_id_l", "unique_id_r").rows())


FATHER = _relationships((CSC_CHILD, CSC_DAD, "father"))


def test_two_sources_naming_the_childs_father_are_one_man() -> None:
    records = _family()
    links = parent_links(records, _clusters(records), FATHER)
    assert _edges(links) == [(CSC_DAD, SCHOOL_DAD)]
    assert links["match_probability"].to_list() == [PARENT_LINK_PROBABILITY]
    # The link survives the hard rules: he is old enough to be Ava's father.
    result = run(records, links)
    assert (
        result.clusters.filter(pl.col("unique_id").is_in([CSC_DAD, SCHOOL_DAD]))[
            "cluster_id"
        ].n_unique()
        == 1
    )


def test_no_link_without_the_child_being_one_person() -> None:
    # The school's pupil and social care's child are not (yet) known to be one child.
    records = _family()
    clusters = records.select("unique_id", pl.col("unique_id").alias("cluster_id"))
    assert parent_links(records, clusters, FATHER).is_empty()


def test_two_men_named_as_the_father_under_fitting_forenames_link_neither() -> None:
    # Early help has a second "Dan Thomas" as a parent of Ava's family: which of the two
    # men the school means is a guess.
    records = _family(
        rec("council_eh|people|E1", forename="Ava", surname="Thomas", dob="2015-09-03",
            sex="F", family_id="F1", role_in_family="child"),
        rec("council_eh|people|E2", forename="Dan", surname="Thomas", sex="M",
            family_id="F1", role_in_family="parent"),
    )  # fmt: skip
    links = parent_links(records, _clusters(records, **{"council_eh|people|E1": PUPIL}), FATHER)
    assert SCHOOL_DAD not in {u for pair in _edges(links) for u in pair}


def test_early_help_parent_is_mother_or_father_by_sex() -> None:
    records = _family(
        rec("council_eh|people|E1", forename="Ava", surname="Thomas", dob="2015-09-03",
            sex="F", family_id="F1", role_in_family="child"),
        rec("council_eh|people|E2", forename="Dan", surname="Thomas", sex="M",
            family_id="F1", role_in_family="parent"),
    )  # fmt: skip
    said = parent_statements(records)
    assert ("council_eh|people|E2", "council_eh|people|E1", "father") in said.rows()
    links = parent_links(records, _clusters(records, **{"council_eh|people|E1": PUPIL}))
    assert _edges(links) == [("council_eh|people|E2", SCHOOL_DAD)]


def test_unrelated_forenames_are_two_fathers() -> None:
    # The school's "father" is Ava's step-father Mark; social care names Daniel.
    records = _family().with_columns(
        pl.when(pl.col("unique_id") == SCHOOL_DAD).then(pl.lit("mark")).otherwise("forename")
        .alias("forename"),
        pl.when(pl.col("unique_id") == SCHOOL_DAD).then(pl.lit(["mark"]))
        .otherwise("forename_keys").alias("forename_keys"),
    )  # fmt: skip
    assert parent_links(records, _clusters(records), FATHER).is_empty()


def test_carers_are_not_one_per_child() -> None:
    # A child may have several carers: two "carer" statements are not one person.
    records = _family().with_columns(
        pl.when(pl.col("unique_id") == SCHOOL_DAD).then(pl.lit("carer")).otherwise("relationship")
        .alias("relationship")
    )  # fmt: skip
    carer = _relationships((CSC_CHILD, CSC_DAD, "carer"))
    assert parent_links(records, _clusters(records), carer).is_empty()
