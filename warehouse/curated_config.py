"""Curation configuration (``config/curated.yaml``) validated into typed models.

The curated build is generic over sources: survivorship order, each agency's events and
involvements, and what feeds the child summary are data here, so adding a source or
changing which source is trusted for dates of birth is a reviewed configuration change.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from warehouse.yaml_model import load_yaml_model

DEFAULT_CURATED_CONFIG = Path(__file__).resolve().parent.parent / "config" / "curated.yaml"

Sensitivity = Literal["personal", "special_category", "criminal_offence"]
GoldenField = Literal[
    "forename", "middle_names", "surname", "dob", "sex", "nhs_number", "upn", "date_of_death"
]
# An organisation type as roles' scopes, API users and person_organisations spell it.
ORGANISATION_TYPE = re.compile(r"[a-z][a-z0-9_]*")


class CuratedConfigError(ValueError):
    """The curation configuration is missing or invalid; the message names file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _person_table(value: str) -> str:
    if value.count(".") != 1 or not all(value.split(".")):
        raise ValueError(f"{value!r}: expected '<source>.<table>', e.g. 'health.patients'")
    return value


class Query(_Strict):
    person_table: str
    sql: str

    @field_validator("person_table")
    @classmethod
    def _check_person_table(cls, value: str) -> str:
        return _person_table(value)

    @property
    def source(self) -> str:
        return self.person_table.split(".")[0]

    @property
    def table(self) -> str:
        return self.person_table.split(".")[1]


class OrganisationSource(Query):
    """Where members of one type of organisation come from: the query gives each person's
    ``local_key`` and ``organisation_id``; the type is declared here, not computed, so the
    role policy can check every ``scope.organisation_type`` against the types the curated
    tables can hold (a type the query computed could not be known until it ran)."""

    organisation_type: str

    @field_validator("organisation_type")
    @classmethod
    def _check_organisation_type(cls, value: str, info: ValidationInfo) -> str:
        if not ORGANISATION_TYPE.fullmatch(value):
            entry = info.data.get("person_table", "this entry")
            raise ValueError(
                f"{entry}: organisation type {value!r} must be a lower-case word such as "
                "school or gp_practice (letters, digits, underscores)"
            )
        return value


class Publishing(_Strict):
    keep: int = Field(3, ge=2, description="Snapshots kept, the current one included.")
    analysts_group_read: bool = Field(
        False,
        description="Let the analysts' group open their pseudonymised file directly (mode "
        "0640). Such reads never pass the access layer, so they are not audited; by default "
        "the file is the service account's alone (0600) and analysts query it through the "
        "API (POST /analytics/query), every query on the audit trail.",
    )


class TimelineSource(Query):
    agency: str
    sensitivity: Sensitivity = "personal"
    # A SQL expression over the query's columns deciding the class per row.
    sensitivity_sql: str | None = None


class InvolvementSource(Query):
    agency: str


class SocialCare(_Strict):
    agency: str
    statuses: list[str] = Field(min_length=1)


class Service(_Strict):
    agency: str
    service: str


class EventCount(_Strict):
    agency: str
    event_type: str
    window_days: int = Field(365, ge=1)


class EventTypes(_Strict):
    agency: str
    event_types: list[str] = Field(min_length=1)


class EventType(_Strict):
    agency: str
    event_type: str


class ChildSummary(_Strict):
    adult_age: int = Field(18, ge=1)
    # A young person stays in child_summary this long after reaching the adult age, marked
    # as moving to adult services, so the hand-over is visible rather than a silent drop.
    transition_months: int = Field(12, ge=0, le=120)
    social_care: SocialCare
    early_help: Service
    domestic_abuse: EventCount
    attendance: EventType
    suspensions: EventTypes
    academic_year_start: str = Field("09-01", pattern=r"^\d\d-\d\d$")


class Aggregates(_Strict):
    min_count: int = Field(5, ge=1)


class CuratedConfig(_Strict):
    publishing: Publishing = Publishing()
    survivorship: dict[GoldenField, list[str]]
    address: Literal["most_recent"] = "most_recent"
    attributes: list[Query] = []
    organisations: list[OrganisationSource] = []
    timeline: list[TimelineSource] = []
    involvement: list[InvolvementSource] = []
    child_summary: ChildSummary
    aggregates: Aggregates = Aggregates()

    @field_validator("survivorship")
    @classmethod
    def _check_order(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for field, tables in value.items():
            if not tables:
                raise ValueError(f"{field}: list at least one source table")
            for name in tables:
                _person_table(name)
        return value


def load_curated_config(path: Path = DEFAULT_CURATED_CONFIG) -> CuratedConfig:
    """Read and validate the curation YAML; errors name the file and the offending key."""
    return load_yaml_model(path, CuratedConfig, CuratedConfigError)
