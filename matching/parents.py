"""Link two records that name themselves the same child's mother (or father).

Several sources say who a child's parents are, each in its own way:

- a school contact row: "Daniel Thomas, father of pupil X";
- a source's relationship table (``relationship_tables`` in ``config/linkage.yaml``):
  children's social care records "3543813 is the father of 5626280";
- an early help family: a ``parent`` and a ``child`` of one ``family_id`` (the parent's
  sex says mother or father).

Once the child's own records are resolved to one person, these rows are statements about
one child. A child has one mother and one father, so two records that both say "I am
this child's father", with forenames that can be one person's (``rules.names_related``),
describe the same man, wherever each source has him living: a father living apart from
his daughter is at the address social care holds, not at the one the school holds, and
neither has a date of birth for him. That is evidence no pairwise score sees.

Only ``mother`` and ``father`` are used: a child may have several carers, step-parents or
grandparents, so two carers of one child are not one person. A record is linked only when
exactly one other person is named in the same role for that child with a fitting forename
(a step-father recorded by the school as "father" next to the father social care names,
under related forenames, links neither). The links then go through the hard rules while
clustering, like every other link: different NHS numbers, incompatible birth years or a
reviewer's "different people" still keep two records apart.
"""

from __future__ import annotations

import polars as pl

from matching.edges import empty_edges, unique_candidate_edges, with_related_forenames

# Probability given to a same-parent link: below a reviewer's decision, above most scores.
PARENT_LINK_PROBABILITY = 0.99
# The roles a child has exactly one of.
SINGLE_ROLES = ("mother", "father")
_ROLE_OF_SEX = {"F": "mother", "M": "father"}
# An early help family member who is one of the family's parents.
FAMILY_PARENT_ROLE = "parent"

_STATEMENT = {"unique_id": pl.String, "child_record": pl.String, "role": pl.String}


def _from_contacts(records: pl.DataFrame) -> pl.DataFrame:
    """School contacts: the contact row is the parent, the pupil's UPN names the child."""
    pupils = (
        records.select(pl.col("unique_id").alias("child_record"), pl.col("upn_keys"))
        .explode("upn_keys")
        .drop_nulls("upn_keys")
        .rename({"upn_keys": "child_upn"})
    )
    return (
        records.filter(pl.col("child_upn").is_not_null())
        .select("unique_id", "child_upn", pl.col("relationship").alias("role"))
        .join(pupils, on="child_upn")
        .select(*_STATEMENT)
    )


def _from_tables(relationships: pl.DataFrame | None) -> pl.DataFrame:
    """Relationship tables: ``related_record_id`` is ``relationship`` to ``record_id``."""
    if relationships is None or relationships.is_empty():
        return pl.DataFrame(schema=_STATEMENT)
    return relationships.select(
        pl.col("related_record_id").alias("unique_id"),
        pl.col("record_id").alias("child_record"),
        pl.col("relationship").str.to_lowercase().alias("role"),
    )


def _from_families(records: pl.DataFrame) -> pl.DataFrame:
    """Early help families: each parent of a family is mother or father of its children."""
    family = records.filter(pl.col("family_id").is_not_null())
    children = family.filter(pl.col("role_in_family") == "child").select(
        pl.col("unique_id").alias("child_record"), "family_id"
    )
    parents = family.filter(pl.col("role_in_family") == FAMILY_PARENT_ROLE).select(
        "unique_id",
        "family_id",
        pl.col("sex").replace_strict(_ROLE_OF_SEX, default=None).alias("role"),
    )
    return parents.join(children, on="family_id").select(*_STATEMENT)


def parent_statements(
    records: pl.DataFrame, relationships: pl.DataFrame | None = None
) -> pl.DataFrame:
    """``unique_id, child_record, role``: record ``unique_id`` says it is the ``role``
    (mother or father) of the child whose record is ``child_record``."""
    return (
        pl.concat([_from_contacts(records), _from_tables(relationships), _from_families(records)])
        .filter(pl.col("role").is_in(SINGLE_ROLES))
        .unique()
    )


def parent_links(
    records: pl.DataFrame, clusters: pl.DataFrame, relationships: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Edges between records naming themselves one child's mother (or father); pair-frame
    shaped. ``clusters`` (``unique_id, cluster_id``) resolves each child to one person and
    tells which statements are already one person's."""
    cluster_of = clusters.select("unique_id", "cluster_id")
    said = parent_statements(records, relationships)
    if said.is_empty():
        return empty_edges()
    said = (
        said.join(
            cluster_of.rename({"unique_id": "child_record", "cluster_id": "child"}),
            on="child_record",
        )
        .join(cluster_of, on="unique_id")
        .join(records.select("unique_id", "forename", "forename_keys"), on="unique_id")
        .select("unique_id", "cluster_id", "child", "role", "forename", "forename_keys")
        .unique(["unique_id", "child", "role"])
    )
    pairs = said.join(said, on=["child", "role"], suffix="_c").filter(
        pl.col("cluster_id") != pl.col("cluster_id_c")
    )
    if pairs.is_empty():
        return empty_edges()
    return unique_candidate_edges(with_related_forenames(pairs), PARENT_LINK_PROBABILITY)
