"""People to households, and the family relationships that cross households.

A household is the people *currently living* at one address. Each person's current
address is taken from their most recently dated record (a social care ``updated_at``,
else the extract date: police addresses are dated by the incident, so they lose to a
fresher health or school record); among records of the same date the address most of them
agree on wins. Agencies lag behind house moves, which is why one stale record must not
move a whole family.

Relationships connect people whether or not they live together (a child in care is
related to their parents, not co-resident with them): children's social care's own
relationship table, early help families (a ``parent`` or ``carer`` and a ``child`` of
one family), and school contacts (the contact's relationship to the pupil).
"""

from __future__ import annotations

import hashlib

import polars as pl

ADULT_AGE = 18


def _address_id() -> pl.Expr:
    key = pl.coalesce(
        pl.concat_str(["postcode", "address_key"], separator="#"),
        pl.concat_str([pl.lit("?"), "address_key"], separator="#"),
    )
    return key


def current_addresses(records: pl.DataFrame, person_records: pl.DataFrame) -> pl.DataFrame:
    """One row per person: ``person_id, address_id, since`` (since: best date evidence)."""
    dated = (
        records.join(
            person_records.select(pl.col("record_id").alias("unique_id"), "person_id"),
            on="unique_id",
        )
        .with_columns(
            _address_id().alias("address_id"),
            pl.col("address_as_of").alias("as_of"),
        )
        .filter(pl.col("address_id").is_not_null())
    )
    votes = dated.group_by("person_id", "address_id").agg(
        pl.col("as_of").max().alias("latest"),
        pl.len().alias("records"),
        pl.col("updated_at").min().dt.date().alias("since"),
    )
    best = votes.sort(
        ["person_id", "latest", "records", "address_id"], descending=[False, True, True, False]
    )
    return (
        best.group_by("person_id", maintain_order=True)
        .first()
        .select("person_id", "address_id", "since")
    )


def household_id(address_id: str) -> str:
    """A stable id per address: the same address gives the same household id every night."""
    return "H" + hashlib.sha256(address_id.encode()).hexdigest()[:12].upper()


def _ages(records: pl.DataFrame, person_records: pl.DataFrame) -> pl.DataFrame:
    years = records.join(
        person_records.select(pl.col("record_id").alias("unique_id"), "person_id"), on="unique_id"
    )
    return years.group_by("person_id").agg(
        pl.col("dob").drop_nulls().mode().first().alias("dob"),
        pl.col("year_hi").drop_nulls().min().alias("year_hi"),
        pl.col("year_lo").drop_nulls().max().alias("year_lo"),
    )


def households(records: pl.DataFrame, person_records: pl.DataFrame) -> pl.DataFrame:
    """``household_id, person_id, role (adult|child), from_date, to_date`` per person.

    People with no usable address get a household of their own, so every person has one.
    """
    persons = person_records.select("person_id").unique()
    addresses = current_addresses(records, person_records)
    today = records["extract_date"].max()
    ages = _ages(records, person_records)
    members = persons.join(addresses, on="person_id", how="left").join(
        ages, on="person_id", how="left"
    )
    ids = {a: household_id(a) for a in members["address_id"].drop_nulls().unique().to_list()}
    age = (
        pl.when(pl.col("dob").is_not_null())
        .then((pl.lit(today) - pl.col("dob")).dt.total_days() / 365.25)
        .otherwise(
            pl.lit(today.year if today else 0) - pl.col("year_lo").fill_null(pl.col("year_hi"))
        )
    )
    return members.select(
        pl.when(pl.col("address_id").is_not_null())
        .then(pl.col("address_id").replace_strict(ids, default=None))
        .otherwise(pl.concat_str([pl.lit("H-"), pl.col("person_id")]))
        .alias("household_id"),
        "person_id",
        pl.when(age < ADULT_AGE).then(pl.lit("child")).otherwise(pl.lit("adult")).alias("role"),
        pl.col("since").alias("from_date"),
        pl.lit(None, dtype=pl.Date).alias("to_date"),
    ).sort("household_id", "person_id")


def relationships(
    person_records: pl.DataFrame,
    records: pl.DataFrame,
    recorded: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """``person_id, related_person_id, relationship, evidence``: what the related person is.

    ``recorded`` holds sources' own relationship tables between their records
    (``record_id, related_record_id, relationship, evidence``; ``relationship`` is what the
    related person is to the first), as read by ``warehouse.person_rows.read_relationships``.
    """
    pid = person_records.select(pl.col("record_id").alias("unique_id"), "person_id")
    parts: list[pl.DataFrame] = []
    contacts = records.filter(pl.col("child_upn").is_not_null()).join(pid, on="unique_id")
    pupils = (
        records.filter(pl.col("source_table") == "pupils")
        .join(pid, on="unique_id")
        .select(pl.col("upn").alias("child_upn"), pl.col("person_id").alias("child_id"))
    )
    parts.append(
        contacts.join(pupils, on="child_upn").select(
            pl.col("child_id").alias("person_id"),
            pl.col("person_id").alias("related_person_id"),
            pl.col("relationship").fill_null("other"),
            pl.lit("school contacts").alias("evidence"),
        )
    )
    family = records.filter(pl.col("family_id").is_not_null()).join(pid, on="unique_id")
    children = family.filter(pl.col("role_in_family") == "child").select("family_id", "person_id")
    adults = family.filter(pl.col("role_in_family").is_in(["parent", "carer"])).select(
        "family_id", pl.col("person_id").alias("related_person_id"), "role_in_family"
    )
    parts.append(
        children.join(adults, on="family_id").select(
            "person_id",
            "related_person_id",
            pl.col("role_in_family").alias("relationship"),
            pl.lit("early help family").alias("evidence"),
        )
    )
    if recorded is not None and not recorded.is_empty():
        parts.append(
            recorded.join(pid.rename({"unique_id": "record_id"}), on="record_id")
            .join(
                pid.rename({"unique_id": "related_record_id", "person_id": "related_person_id"}),
                on="related_record_id",
            )
            .select("person_id", "related_person_id", "relationship", "evidence")
        )
    out = pl.concat(parts, how="vertical_relaxed")
    return (
        out.filter(pl.col("person_id") != pl.col("related_person_id"))
        .unique()
        .sort("person_id", "related_person_id", "relationship")
    )
