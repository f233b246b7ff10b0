"""The thirteen extract tables of ``extract-spec.md``, as data.

The generator writes columns in exactly this order and uses the types and required flags to
decide which deliberate defects a table can carry (a ``bad_boolean`` needs a boolean column,
a ``missing_required`` must not blank a person-level row's local key, ...). Keeping the
contract in one place means the writer, the defect injector and the truth files cannot
disagree about it.
"""

from __future__ import annotations

from dataclasses import dataclass

TEXT = "text"
DATE = "date"
TIMESTAMP = "timestamp"
BOOL = "bool"
INT = "int"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str = TEXT
    required: bool = False


@dataclass(frozen=True)
class TableSpec:
    source: str
    table: str
    columns: tuple[Column, ...]
    #: Columns forming the person-level local key (empty for event tables).
    person_key: tuple[str, ...] = ()
    #: Sources may prefix their files with a UTF-8 BOM; the health system does.
    bom: bool = False
    #: Columns other tables point at: never blanked, so references stay resolvable.
    referenced: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.source}/{self.table}"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def index(self, column: str) -> int:
        return self.column_names.index(column)


def _cols(spec: str) -> tuple[Column, ...]:
    """Parse ``"name*:kind, other"`` shorthand: ``*`` = required, ``:kind`` = type."""
    out = []
    for part in spec.split(","):
        token = part.strip()
        kind = TEXT
        if ":" in token:
            token, kind = token.split(":")
        required = token.endswith("*")
        out.append(Column(token.rstrip("*"), kind, required))
    return tuple(out)


TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in [
        TableSpec(
            "council_csc",
            "people",
            _cols(
                "csc_person_id*, forename*, middle_names, surname*, former_surname, dob:date,"
                " dob_estimated:bool, sex, ethnicity, nhs_number, upn, address_line_1,"
                " address_line_2, town, postcode, uprn, date_of_death:date,"
                " updated_at:timestamp"
            ),
            person_key=("csc_person_id",),
        ),
        TableSpec(
            "council_csc",
            "episodes",
            _cols(
                "episode_id*, csc_person_id*, episode_type*, start_date*:date, end_date:date,"
                " category, team, worker_name, worker_email, summary, summary_is_opinion:bool,"
                " confidential_from_subject:bool"
            ),
        ),
        TableSpec(
            "council_csc",
            "relationships",
            _cols("csc_person_id*, related_csc_person_id*, relationship*"),
        ),
        TableSpec(
            "council_eh",
            "people",
            _cols(
                "eh_person_id*, family_id*, forename*, surname*, dob:date, sex, nhs_number, upn,"
                " address_line_1, address_line_2, town, postcode, role_in_family,"
                " updated_at:timestamp"
            ),
            person_key=("eh_person_id",),
        ),
        TableSpec(
            "council_eh",
            "episodes",
            _cols(
                "eh_episode_id*, family_id*, start_date*:date, end_date:date, lead_practitioner,"
                " lead_practitioner_email, primary_need, outcome"
            ),
            referenced=("family_id",),
        ),
        TableSpec(
            "police",
            "persons",
            _cols(
                "nominal_id*, forename*, surname*, dob:date, age_at_incident:int, sex,"
                " address_line_1, town, postcode, pnc_id"
            ),
            person_key=("nominal_id",),
        ),
        TableSpec(
            "police",
            "incidents",
            _cols(
                "incident_ref*, occurred_at*:timestamp, incident_type*, offence, dash_risk,"
                " encompass_notified:bool, location_postcode"
            ),
            referenced=("incident_ref",),
        ),
        TableSpec("police", "involvements", _cols("incident_ref*, nominal_id*, role*")),
        TableSpec(
            "health",
            "patients",
            _cols(
                "local_patient_id*, nhs_number, given_name*, family_name*, birth_date*:date,"
                " gender, address_line_1, address_line_2, town, postcode, gp_practice_code"
            ),
            person_key=("local_patient_id",),
            bom=True,
        ),
        TableSpec(
            "health",
            "encounters",
            _cols(
                "encounter_id*, local_patient_id*, encounter_type*, encounter_date*:date, reason,"
                " safeguarding_concern:bool"
            ),
            bom=True,
        ),
        TableSpec(
            "school",
            "pupils",
            _cols(
                "upn*, former_upn, school_urn*, school_name, legal_forename*, preferred_forename,"
                " legal_surname*, preferred_surname, dob*:date, gender, year_group,"
                " sen_provision, fsm_eligible:bool, address_line_1, address_line_2, town,"
                " postcode, uprn, entry_date:date, leaving_date:date"
            ),
            person_key=("upn",),
        ),
        TableSpec(
            "school",
            "contacts",
            _cols(
                "upn*, contact_forename*, contact_surname*, relationship,"
                " parental_responsibility:bool, address_line_1, postcode, phone, priority:int"
            ),
            person_key=("upn", "priority"),
        ),
        TableSpec(
            "school",
            "attendance",
            _cols(
                "upn*, school_urn*, term*, sessions_possible*:int, sessions_authorised_absent:int,"
                " sessions_unauthorised_absent:int"
            ),
        ),
        TableSpec(
            "school",
            "exclusions",
            _cols("upn*, school_urn*, start_date*:date, category*, sessions:int, reason"),
        ),
    ]
}

SOURCES: tuple[str, ...] = ("council_csc", "council_eh", "police", "health", "school")
PERSON_TABLES: tuple[str, ...] = tuple(n for n, t in TABLES.items() if t.person_key)
