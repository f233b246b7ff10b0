"""Source configuration: one validated YAML per partner agency.

Each source file says what the agency delivers (tables, columns, types, required columns,
identifier columns), how to read its own export (header renames, encoding, date formats, or
a database URL instead of files) and the data-sharing agreement it is delivered under
(controller, purpose, lawful basis, retention). Adding a source is a new YAML file plus
tests: the ingest code is driven entirely by these models.

Invalid configuration fails at start-up with :class:`ConfigError`, naming the file and the
key, so a typo never turns into a silently skipped column.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_NAME_RE = r"^[a-z][a-z0-9_]*$"

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid; the message names file and key."""


class ColumnType(StrEnum):
    text = "text"
    date = "date"
    timestamp = "timestamp"
    integer = "integer"
    boolean = "boolean"


class IdentifierKind(StrEnum):
    """Identifiers with a check rule; staging adds ``<column>_valid`` for each."""

    nhs_number = "nhs_number"
    upn = "upn"
    postcode = "postcode"
    uprn = "uprn"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Column(_Strict):
    type: ColumnType = ColumnType.text
    required: bool = False
    identifier: IdentifierKind | None = None
    # Why a column is sensitive beyond "personal": drives later access policy.
    sensitivity: Literal["personal", "special_category", "criminal_offence"] = "personal"
    free_text: bool = False


class LawfulBasis(_Strict):
    """UK GDPR Article 6 basis plus the Article 9 (special category) or Article 10
    (criminal offence) condition where the data needs one: a source with a column of that
    sensitivity is refused without it (:meth:`Source._conditions_cover_columns`)."""

    article_6: str = Field(min_length=3)
    article_9_condition: str | None = None
    article_10_condition: str | None = None


class RetentionYearsAfterLastEvent(_Strict):
    rule: Literal["years_after_last_event"]
    years: int = Field(gt=0, le=150)


class RetentionUntilAge(_Strict):
    rule: Literal["until_age"]
    age: int = Field(gt=0, le=150)


SimpleRetentionRule = Annotated[
    RetentionYearsAfterLastEvent | RetentionUntilAge, Field(discriminator="rule")
]


class RetentionLaterOf(_Strict):
    """Kept until the last of several rules has run out: the NHS keeps a child's record to
    the 25th birthday, or 8 years after the last treatment where that is later."""

    rule: Literal["later_of"]
    rules: list[SimpleRetentionRule] = Field(min_length=2)

    def uses(self, kind: str) -> bool:
        return any(r.rule == kind for r in self.rules)


RetentionRule = Annotated[
    RetentionYearsAfterLastEvent | RetentionUntilAge | RetentionLaterOf,
    Field(discriminator="rule"),
]


class Agreement(_Strict):
    """The data-sharing agreement a source is delivered under."""

    controller: str = Field(min_length=2)
    purpose: str = Field(min_length=10)
    lawful_basis: LawfulBasis
    retention: RetentionRule
    # Per-table overrides, e.g. looked-after records kept to the 75th birthday.
    table_retention: dict[str, RetentionRule] = Field(default_factory=dict)


class DatabaseTable(_Strict):
    """Read a table through SQLAlchemy instead of a delivered file.

    ``url`` may contain ``${ENV_VAR}`` references so credentials stay out of the YAML.
    Exactly one of ``table`` or ``query`` names what to read; columns are renamed onto the
    spec through the table's ``renames`` like file headers are.
    """

    url: str
    table: str | None = None
    db_schema: str | None = None
    query: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> DatabaseTable:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' or 'query'")
        return self

    def resolved_url(self) -> str:
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"environment variable {name} used in database url is not set")
            return os.environ[name]

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, self.url)


class ValidityThreshold(_Strict):
    """Asset-check threshold: share of non-empty identifier values that must be valid."""

    min_valid_rate: float = Field(ge=0.0, le=1.0)
    severity: Literal["warn", "error"] = "warn"


class About(_Strict):
    """Whose rows these are: rows of this table are about the people of ``table`` (same
    source) whose ``match`` columns agree. Subject access, erasure and retention follow it."""

    table: str = Field(pattern=_NAME_RE)
    match: dict[str, str] = Field(min_length=1)  # this table's column -> that table's column


class Table(_Strict):
    file: str | None = None  # default "<table>.csv"
    columns: dict[str, Column]
    local_key: list[str] = Field(default_factory=list)
    person_level: bool = False
    renames: dict[str, str] = Field(default_factory=dict)  # agency header -> spec column
    database: DatabaseTable | None = None
    identifier_validity: dict[str, ValidityThreshold] = Field(default_factory=dict)
    max_quarantine_rate: float = Field(default=0.02, ge=0.0, le=1.0)
    # A full snapshot this much smaller than the previous delivery's (a truncated export
    # that kept its header, a filter left on) fails the row_count_steady check: a person
    # missing from tonight's snapshot drops out of linkage and the Family View.
    max_row_drop: float = Field(default=0.5, ge=0.0, le=1.0)
    about: list[About] = Field(default_factory=list)
    # Retention clocks (warehouse.retention): the columns that date a row's events, school
    # terms ("2026-SPR") dated at the term's end, and a person table's date of birth.
    event_dates: list[str] = Field(default_factory=list)
    event_terms: list[str] = Field(default_factory=list)
    dob_column: str | None = None
    # Columns naming the key this record was delivered under before (a temporary UPN
    # replaced by a permanent one: ``former_upn: upn``), mapped to the local_key column
    # each stands for. A source stops sending the old key, so linkage no longer sees that
    # record; erasure and subject access follow this to it (``warehouse.retired``).
    former_keys: dict[str, str] = Field(default_factory=dict)

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, Column]) -> dict[str, Column]:
        for name in value:
            if not re.match(_NAME_RE, name):
                raise ValueError(f"column name {name!r} must be lower_snake_case")
        if not value:
            raise ValueError("a table needs at least one column")
        return value

    @model_validator(mode="after")
    def _references(self) -> Table:
        for key in self.local_key:
            if key not in self.columns:
                raise ValueError(f"local_key column {key!r} is not in columns")
        for target in self.renames.values():
            if target not in self.columns:
                raise ValueError(f"renames target {target!r} is not in columns")
        for col in self.identifier_validity:
            if col not in self.columns or self.columns[col].identifier is None:
                raise ValueError(f"identifier_validity names {col!r}, not an identifier column")
        self._dating_columns()
        self._former_keys()
        return self

    def _former_keys(self) -> None:
        """A former key must name a whole earlier local key, or the record it leads to is
        a guess."""
        if not self.former_keys:
            return
        if not self.person_level:
            raise ValueError("former_keys is only for person_level tables")
        for column, key in self.former_keys.items():
            if column not in self.columns:
                raise ValueError(f"former_keys names {column!r}, not in columns")
            if key not in self.local_key:
                raise ValueError(f"former_keys maps {column!r} to {key!r}, not a local_key column")
        if sorted(self.former_keys.values()) != sorted(self.local_key):
            raise ValueError(
                f"former_keys must give every local_key column once ({', '.join(self.local_key)})"
            )

    def _dating_columns(self) -> None:
        """Retention reads these columns as dates: a wrong one would make every row look
        undated (kept forever) or wrongly dated (destroyed early)."""
        dated = (ColumnType.date, ColumnType.timestamp)
        for col in self.event_dates:
            if col not in self.columns or self.columns[col].type not in dated:
                raise ValueError(f"event_dates names {col!r}, not a date or timestamp column")
        for col in self.event_terms:
            if col not in self.columns or self.columns[col].type is not ColumnType.text:
                raise ValueError(f"event_terms names {col!r}, not a text column")
        if self.dob_column is not None:
            if not self.person_level:
                raise ValueError("dob_column is only for person_level tables")
            column = self.columns.get(self.dob_column)
            if column is None or column.type is not ColumnType.date:
                raise ValueError(f"dob_column {self.dob_column!r} is not a date column")

    @property
    def required(self) -> list[str]:
        return [n for n, c in self.columns.items() if c.required]

    def identifiers(self) -> dict[str, IdentifierKind]:
        return {n: c.identifier for n, c in self.columns.items() if c.identifier is not None}


class Source(_Strict):
    name: str = Field(pattern=_NAME_RE)
    description: str = ""
    agreement: Agreement
    encoding: Literal["utf-8", "windows-1252", "latin-1"] = "utf-8"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    date_formats: list[str] = Field(default_factory=lambda: ["%Y-%m-%d"], min_length=1)
    timestamp_formats: list[str] = Field(
        default_factory=lambda: [
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%dT%H:%M",
        ],
        min_length=1,
    )
    true_values: list[str] = Field(default_factory=lambda: ["true"])
    false_values: list[str] = Field(default_factory=lambda: ["false"])
    freshness_days: int = Field(default=3, gt=0)
    # A delivery without a manifest counts as complete once its files have been quiet
    # this long: the sensor must never start a run on a half-written delivery.
    settle_seconds: int = Field(default=120, ge=0)
    # Days a delivery folder stays in the landing zone after it was loaded or rejected:
    # long enough to re-run a load, no longer, since the warehouse keeps every record as
    # delivered (``warehouse.landing_retention``).
    landing_keep_days: int = Field(default=14, ge=0)
    tables: dict[str, Table]

    @field_validator("tables")
    @classmethod
    def _table_names(cls, value: dict[str, Table]) -> dict[str, Table]:
        if not value:
            raise ValueError("a source needs at least one table")
        for name in value:
            if not re.match(_NAME_RE, name):
                raise ValueError(f"table name {name!r} must be lower_snake_case")
        return value

    @model_validator(mode="after")
    def _overrides_name_tables(self) -> Source:
        for table in self.agreement.table_retention:
            if table not in self.tables:
                raise ValueError(f"agreement.table_retention names unknown table {table!r}")
        return self

    @model_validator(mode="after")
    def _conditions_cover_columns(self) -> Source:
        """Special category data needs an Article 9 condition and criminal offence data an
        Article 10 one: a column classed so under an agreement without that condition is
        data the partnership has no recorded basis to process."""
        basis = self.agreement.lawful_basis
        conditions = {
            "special_category": "article_9_condition",
            "criminal_offence": "article_10_condition",
        }
        for table_name, table in self.tables.items():
            for column_name, column in table.columns.items():
                condition = conditions.get(column.sensitivity)
                if condition is not None and not getattr(basis, condition):
                    raise ValueError(
                        f"source {self.name!r}: table {table_name!r} column {column_name!r} is "
                        f"{column.sensitivity} but agreement.lawful_basis has no {condition}"
                    )
        return self

    @model_validator(mode="after")
    def _people_have_keys(self) -> Source:
        """A person's records are found (linked, accessed, erased, aged out) by their local
        key: a person table without one cannot be followed and would reach retention and
        erasure as an empty key list."""
        for table_name, table in self.tables.items():
            if table.person_level and not table.local_key:
                raise ValueError(
                    f"source {self.name!r}: table {table_name!r} is person_level but has no "
                    "local_key"
                )
        return self

    @model_validator(mode="after")
    def _rows_have_subjects(self) -> Source:
        """Every row must lead to the people it is about, or a subject access request or an
        erasure would silently miss it."""
        for name, table in self.tables.items():
            if not table.person_level and not table.about:
                raise ValueError(f"table {name!r} is not person_level and has no 'about'")
            for about in table.about:
                target = self.tables.get(about.table)
                if target is None or about.table == name:
                    raise ValueError(f"{name}.about names unknown table {about.table!r}")
                for mine, theirs in about.match.items():
                    if mine not in table.columns or theirs not in target.columns:
                        raise ValueError(
                            f"{name}.about.match {mine!r}: {about.table!r} must have {theirs!r} "
                            f"and {name!r} must have {mine!r}"
                        )
        for name in self.tables:
            self._reaches_person(name, ())
        return self

    @model_validator(mode="after")
    def _ages_have_birth_dates(self) -> Source:
        """A table kept ``until_age`` needs a date of birth for the people its rows are about
        (its own, or that of the person tables it is about, one step on)."""
        for name in self.tables:
            rule = self.agreement.table_retention.get(name, self.agreement.retention)
            ages = rule.rule == "until_age" or (
                isinstance(rule, RetentionLaterOf) and rule.uses("until_age")
            )
            if ages and not self._has_birth_date(name):
                raise ValueError(
                    f"table {name!r} is kept until_age but no person table it is about "
                    "has a dob_column"
                )
        return self

    def _has_birth_date(self, name: str) -> bool:
        table = self.tables[name]
        if table.person_level and table.dob_column is not None:
            return True
        if table.person_level:  # a person without a birth date follows whom it is about
            return any(self.tables[a.table].dob_column is not None for a in table.about)
        return any(self._has_birth_date(a.table) for a in table.about)

    def _reaches_person(self, name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ValueError(f"'about' loops: {' -> '.join((*path, name))}")
        table = self.tables[name]
        if table.person_level:
            return
        for about in table.about:
            self._reaches_person(about.table, (*path, name))

    def file_name(self, table: str) -> str:
        return self.tables[table].file or f"{table}.csv"

    @property
    def reads_database(self) -> bool:
        return any(t.database is not None for t in self.tables.values())


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def load_source(path: Path) -> Source:
    """Parse and validate one source YAML; errors name the file and the offending key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read source config: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.setdefault("name", path.stem)
    try:
        source = Source.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"key '{_format_loc(e['loc'])}': {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: invalid source config: {problems}") from exc
    if source.name != path.stem:
        raise ConfigError(
            f"{path}: key 'name': {source.name!r} must match the file name {path.stem!r}"
        )
    return source


def load_sources(config_dir: Path | None = None) -> dict[str, Source]:
    """All sources under ``<config_dir>/sources/*.yaml``, keyed by name."""
    directory = (config_dir or DEFAULT_CONFIG_DIR) / "sources"
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ConfigError(f"{directory}: no source configs (*.yaml) found")
    return {s.name: s for s in (load_source(f) for f in files)}


def config_dir_from_env() -> Path:
    """``SDV_CONFIG_DIR`` when set, else the ``config/`` folder shipped with the project."""
    value = os.environ.get("SDV_CONFIG_DIR")
    return Path(value) if value else DEFAULT_CONFIG_DIR
