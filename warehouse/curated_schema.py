"""The curated Family View tables: every column, its type, meaning and kind of data.

This is the single description of what the Family View publishes. The build checks that
what it made matches it exactly, the data dictionary (``docs/data-dictionary.md`` and the
snapshot's DuckDB comments) is generated from it, and the role policy is validated against
it, so a policy can never grant a column that does not exist or miss one that does.

``kind`` says what a column reveals, which is what need-to-know decisions turn on:

* ``key``: a person or household id (pseudonymous within the partnership);
* ``name``, ``dob``, ``identifier`` (NHS number, UPN, UPRN), ``address``, ``postcode``:
  direct identifiers, never in the analyst dataset;
* ``free_text``: practitioners' words, which may name anyone;
* ``special_category`` (health, ethnicity, social care detail) and ``criminal_offence``:
  UK GDPR Art. 9 and 10 data;
* ``contact``: a practitioner's name or email (not data about the subject);
* ``attribute``: everything else (dates of events, statuses, counts, codes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal[
    "key",
    "name",
    "dob",
    "identifier",
    "address",
    "postcode",
    "free_text",
    "special_category",
    "criminal_offence",
    "contact",
    "attribute",
]
DIRECT_IDENTIFIERS: frozenset[str] = frozenset({"name", "dob", "identifier", "address", "postcode"})
# The columns the API looks rows up by (one person, one household): the serving copy the
# API reads (warehouse.serving) indexes them.
LOOKUP_COLUMNS: tuple[str, ...] = ("person_id", "household_id")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB type
    kind: Kind
    description: str


@dataclass(frozen=True)
class CuratedTable:
    name: str
    description: str
    columns: tuple[Column, ...]
    # The column naming the person each row is about (row scopes filter on it), if any.
    person_column: str | None = "person_id"
    # Aggregate tables hold counts only, already suppressed.
    aggregate: bool = False

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no column {name!r}")


def _c(name: str, type_: str, kind: Kind, description: str) -> Column:
    return Column(name, type_, kind, description)


_PERSON_ID = _c("person_id", "VARCHAR", "key", "The person's id (stable across nightly runs).")

TABLES: dict[str, CuratedTable] = {
    t.name: t
    for t in (
        CuratedTable(
            "person",
            "One golden record per person, each field taken from the most trusted source "
            "holding it (config/curated.yaml survivorship); other names kept.",
            (
                _PERSON_ID,
                _c("forename", "VARCHAR", "name", "Forename from the most trusted source."),
                _c("middle_names", "VARCHAR", "name", "Middle names."),
                _c("surname", "VARCHAR", "name", "Surname from the most trusted source."),
                _c(
                    "alternative_names",
                    "VARCHAR[]",
                    "name",
                    "Other names the person is recorded under (preferred, former, "
                    "nicknames, misspellings), as 'forename surname'.",
                ),
                _c("dob", "DATE", "dob", "Date of birth."),
                _c("dob_estimated", "BOOLEAN", "attribute", "The source marked it estimated."),
                _c("age", "INTEGER", "attribute", "Whole years on the as-of date."),
                _c("is_child", "BOOLEAN", "attribute", "Under the adult age on the as-of date."),
                _c("sex", "VARCHAR", "attribute", "M, F or U."),
                _c("ethnicity", "VARCHAR", "special_category", "DfE ethnicity code."),
                _c("nhs_number", "VARCHAR", "identifier", "NHS number (valid check digit only)."),
                _c("upn", "VARCHAR", "identifier", "Unique pupil number (valid only)."),
                _c("address_line_1", "VARCHAR", "address", "Current address, first line."),
                _c("address_line_2", "VARCHAR", "address", "Current address, second line."),
                _c("town", "VARCHAR", "address", "Current address, town."),
                _c("postcode", "VARCHAR", "postcode", "Current postcode."),
                _c("postcode_district", "VARCHAR", "attribute", "Outward code of the postcode."),
                _c("uprn", "VARCHAR", "identifier", "Unique property reference number."),
                _c(
                    "address_as_of",
                    "DATE",
                    "attribute",
                    "Date of the record the current address was taken from.",
                ),
                _c("date_of_death", "DATE", "attribute", "Date of death, if recorded."),
                _c("deceased", "BOOLEAN", "attribute", "A date of death is recorded."),
                _c("household_id", "VARCHAR", "key", "The household the person lives in."),
                _c("school_urn", "VARCHAR", "attribute", "School the pupil is on roll at."),
                _c("school_name", "VARCHAR", "attribute", "Name of that school."),
                _c("gp_practice_code", "VARCHAR", "attribute", "ODS code of the GP practice."),
                _c("sen_provision", "VARCHAR", "special_category", "N, K (support) or E (EHCP)."),
                _c("sources", "VARCHAR[]", "attribute", "Sources holding records of the person."),
                _c("record_count", "INTEGER", "attribute", "Source records linked to the person."),
                _c(
                    "field_sources",
                    "VARCHAR",
                    "attribute",
                    "JSON: the source table each golden field came from (provenance), or "
                    '"rectification" where a recorded correction overrides the sources.',
                ),
            ),
        ),
        CuratedTable(
            "household",
            "People currently living at the same address.",
            (
                _c("household_id", "VARCHAR", "key", "The household's id."),
                _c("address_line_1", "VARCHAR", "address", "Address, first line."),
                _c("town", "VARCHAR", "address", "Town."),
                _c("postcode", "VARCHAR", "postcode", "Postcode."),
                _c("postcode_district", "VARCHAR", "attribute", "Outward code of the postcode."),
                _c("uprn", "VARCHAR", "identifier", "Unique property reference number."),
                _c("members", "INTEGER", "attribute", "Living people in the household."),
                _c("children", "INTEGER", "attribute", "Living children in the household."),
            ),
            person_column=None,
        ),
        CuratedTable(
            "household_members",
            "Who lives in each household, with their role where known.",
            (
                _c("household_id", "VARCHAR", "key", "The household."),
                _PERSON_ID,
                _c("role", "VARCHAR", "attribute", "child, adult, parent, carer, ..."),
                _c("from_date", "DATE", "attribute", "Living there since, where known."),
                _c("to_date", "DATE", "attribute", "Until, where known (date of death)."),
                _c("deceased", "BOOLEAN", "attribute", "A date of death is recorded."),
            ),
        ),
        CuratedTable(
            "relationships",
            "Family links between people, also across households (a child in care).",
            (
                _PERSON_ID,
                _c("related_person_id", "VARCHAR", "key", "The related person."),
                _c("relationship", "VARCHAR", "attribute", "What the related person is."),
                _c("evidence", "VARCHAR", "attribute", "Which source recorded the link."),
            ),
        ),
        CuratedTable(
            "involvement",
            "Each agency service a person has had: open or closed, dates, lead practitioner.",
            (
                _PERSON_ID,
                _c("agency", "VARCHAR", "attribute", "The agency (source)."),
                _c("service", "VARCHAR", "attribute", "The service, e.g. cp_plan, early_help."),
                _c("status", "VARCHAR", "attribute", "open or closed on the as-of date."),
                _c("start_date", "DATE", "attribute", "First start."),
                _c("end_date", "DATE", "attribute", "Last end, when closed."),
                _c("team", "VARCHAR", "contact", "Team holding the case."),
                _c("practitioner", "VARCHAR", "contact", "Lead practitioner."),
                _c("practitioner_email", "VARCHAR", "contact", "Lead practitioner's email."),
                _c(
                    "organisation",
                    "VARCHAR",
                    "attribute",
                    "School URN, GP practice or early help family the service is held by.",
                ),
            ),
        ),
        CuratedTable(
            "timeline",
            "Dated events from every source, each marked fact or opinion, confidential from "
            "its subject or not, and with its UK GDPR sensitivity class.",
            (
                _c("event_id", "VARCHAR", "key", "Stable id of the event for this person."),
                _PERSON_ID,
                _c("event_date", "DATE", "attribute", "When it happened or started."),
                _c("end_date", "DATE", "attribute", "When it ended, if it lasts."),
                _c("agency", "VARCHAR", "attribute", "The agency (source)."),
                _c("event_type", "VARCHAR", "attribute", "e.g. referral, cp_plan, domestic_abuse."),
                _c("role", "VARCHAR", "attribute", "The person's part in it (victim, child, ...)."),
                _c(
                    "detail",
                    "VARCHAR",
                    "special_category",
                    "Category, need, risk level, offence or concern: may be Art. 9/10 data.",
                ),
                _c("summary", "VARCHAR", "free_text", "Practitioner's words, as recorded."),
                _c("is_opinion", "BOOLEAN", "attribute", "The summary is professional opinion."),
                _c(
                    "confidential_from_subject",
                    "BOOLEAN",
                    "attribute",
                    "The source asks that this is not disclosed to the person it concerns.",
                ),
                _c(
                    "sensitivity",
                    "VARCHAR",
                    "attribute",
                    "personal, special_category or criminal_offence.",
                ),
                _c("measure", "DOUBLE", "attribute", "A quantity (sessions attended)."),
                _c("measure_of", "DOUBLE", "attribute", "Out of (sessions possible)."),
                _c("source", "VARCHAR", "attribute", "Source the event came from."),
                _c("source_key", "VARCHAR", "attribute", "The event's key in that source."),
            ),
        ),
        CuratedTable(
            "child_summary",
            "One row per child for the Family View front end.",
            (
                _PERSON_ID,
                _c("forename", "VARCHAR", "name", "Forename."),
                _c("surname", "VARCHAR", "name", "Surname."),
                _c("dob", "DATE", "dob", "Date of birth."),
                _c("age", "INTEGER", "attribute", "Age on the as-of date."),
                _c(
                    "social_care_status",
                    "VARCHAR",
                    "special_category",
                    "Most serious open social care service (looked_after, cp_plan, cin_plan...).",
                ),
                _c("cin_open", "BOOLEAN", "special_category", "Open child in need plan."),
                _c("cp_open", "BOOLEAN", "special_category", "Open child protection plan."),
                _c("looked_after", "BOOLEAN", "special_category", "Currently looked after."),
                _c("early_help_open", "BOOLEAN", "attribute", "Open early help episode."),
                _c(
                    "domestic_abuse_12m",
                    "INTEGER",
                    "criminal_offence",
                    "Domestic abuse incidents involving the child in the last 12 months.",
                ),
                _c(
                    "attendance_pct",
                    "DOUBLE",
                    "attribute",
                    "Attendance in the latest academic year with returns, percent of possible "
                    "sessions.",
                ),
                _c("attendance_year", "VARCHAR", "attribute", "That academic year, e.g. 2025/26."),
                _c("suspensions", "INTEGER", "attribute", "Suspensions this academic year."),
                _c("sen_provision", "VARCHAR", "special_category", "N, K (support) or E (EHCP)."),
                _c("school_urn", "VARCHAR", "attribute", "School on roll at."),
                _c("school_name", "VARCHAR", "attribute", "School name."),
                _c("gp_practice_code", "VARCHAR", "attribute", "GP practice."),
                _c(
                    "key_workers",
                    "VARCHAR",
                    "contact",
                    "JSON list of lead practitioners of open services (agency, service, name, "
                    "email, team).",
                ),
                _c("deceased", "BOOLEAN", "attribute", "A date of death is recorded."),
                _c(
                    "age_status",
                    "VARCHAR",
                    "attribute",
                    "child; or adult for a young person who reached the adult age within "
                    "child_summary.transition_months.",
                ),
                _c(
                    "transition_to_adult",
                    "BOOLEAN",
                    "attribute",
                    "Reached the adult age within the transition window: moving to adult services.",
                ),
                _c(
                    "sources_last_delivered",
                    "VARCHAR",
                    "attribute",
                    "JSON: for each source holding the child's records, its last delivery date.",
                ),
            ),
        ),
        CuratedTable(
            "person_organisations",
            "Organisations a person belongs to (school roll, GP practice): used for row scopes.",
            (
                _PERSON_ID,
                _c("organisation_type", "VARCHAR", "attribute", "school, gp_practice, ..."),
                _c("organisation_id", "VARCHAR", "attribute", "School URN, ODS code, ..."),
            ),
        ),
        CuratedTable(
            "person_records",
            "Which source records make up each person (``source|table|local_key``): lets "
            "restrictions and subject requests follow a person through re-linking.",
            (
                _PERSON_ID,
                _c("record_id", "VARCHAR", "attribute", "source|table|local_key of a record."),
            ),
        ),
        CuratedTable(
            "person_names",
            "Every name a person is recorded under, normalised, with the formal names a "
            "nickname stands for: the search index (never granted to a role directly).",
            (
                _PERSON_ID,
                _c("forename_norm", "VARCHAR", "name", "Forename, lower case, letters only."),
                _c("surname_norm", "VARCHAR", "name", "Surname, lower case, letters only."),
                _c(
                    "forename_keys",
                    "VARCHAR[]",
                    "name",
                    "The forename and the formal names it may be a nickname of.",
                ),
            ),
        ),
        CuratedTable(
            "source_deliveries",
            "Each source's data-sharing agreement and when it last delivered.",
            (
                _c("source", "VARCHAR", "attribute", "The source."),
                _c("last_extract_date", "DATE", "attribute", "Newest loaded delivery."),
                _c("controller", "VARCHAR", "attribute", "Data controller."),
                _c("purpose", "VARCHAR", "attribute", "Purpose of sharing."),
                _c("lawful_basis", "VARCHAR", "attribute", "UK GDPR Art. 6 basis."),
                _c("retention", "VARCHAR", "attribute", "Retention rule."),
            ),
            person_column=None,
        ),
        CuratedTable(
            "agg_children_by_status",
            "Children by postcode district and social care status; counts under the "
            "minimum are suppressed, and a status never has just one district suppressed.",
            (
                _c("postcode_district", "VARCHAR", "attribute", "Postcode district."),
                _c("social_care_status", "VARCHAR", "attribute", "Status, or none."),
                _c("children", "INTEGER", "attribute", "Number of children; null if suppressed."),
                _c(
                    "suppressed",
                    "BOOLEAN",
                    "attribute",
                    "The count was under the minimum, or withheld with the status's one such "
                    "count so that it cannot be found by subtraction.",
                ),
            ),
            person_column=None,
            aggregate=True,
        ),
        CuratedTable(
            "agg_involvement",
            "People by agency, service and status; small counts suppressed.",
            (
                _c("agency", "VARCHAR", "attribute", "Agency."),
                _c("service", "VARCHAR", "attribute", "Service."),
                _c("status", "VARCHAR", "attribute", "open or closed."),
                _c("people", "INTEGER", "attribute", "Number of people; null if suppressed."),
                _c("suppressed", "BOOLEAN", "attribute", "The count was under the minimum."),
            ),
            person_column=None,
            aggregate=True,
        ),
        CuratedTable(
            "agg_domestic_abuse",
            "Children with domestic abuse incidents in the last 12 months by postcode "
            "district; small counts suppressed.",
            (
                _c("postcode_district", "VARCHAR", "attribute", "Postcode district."),
                _c("children", "INTEGER", "attribute", "Children affected; null if suppressed."),
                _c("incidents", "INTEGER", "attribute", "Incidents; null if suppressed."),
                _c("suppressed", "BOOLEAN", "attribute", "A count was under the minimum."),
            ),
            person_column=None,
            aggregate=True,
        ),
    )
}


def table(name: str) -> CuratedTable:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"no curated table {name!r}; tables: {', '.join(TABLES)}") from None
