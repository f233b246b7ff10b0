"""Linkage configuration (``config/linkage.yaml``) validated into typed models.

The linkage code never names a source's columns: each person-level table maps its own
columns onto the linkage fields here, so a new person-level table, or a source that calls
``dob`` ``birth_date``, is a configuration change. Thresholds and limits live here too, so
tightening a threshold is reviewed like any other change and recorded in git.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from warehouse.yaml_model import load_yaml_model

DEFAULT_LINKAGE_CONFIG = Path(__file__).resolve().parent.parent / "config" / "linkage.yaml"

LinkageField = Literal[
    "forename",
    "preferred_forename",
    "middle_names",
    "surname",
    "former_surname",
    "preferred_surname",
    "dob",
    "dob_estimated",
    "age_at_incident",
    "sex",
    "date_of_death",
    "nhs_number",
    "upn",
    "former_upn",
    "child_upn",
    "relationship",
    "address_line_1",
    "address_line_2",
    "town",
    "postcode",
    "uprn",
    "phone",
    "family_id",
    "role_in_family",
    "updated_at",
]
LINKAGE_FIELDS: tuple[str, ...] = LinkageField.__args__  # type: ignore[attr-defined]


class LinkageConfigError(ValueError):
    """The linkage configuration is missing or invalid; the message names file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Strict):
    match: float = Field(0.5, gt=0, lt=1)
    review: float = Field(0.2, gt=0, lt=1)
    max_cluster_size: int = Field(30, ge=2)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.review > self.match:
            raise ValueError("review threshold must not exceed the match threshold")
        return self


class Training(_Strict):
    u_max_pairs: int = Field(2_000_000, ge=10_000)
    seed: int = 42


class SparkOptions(_Strict):
    """How the Spark session for Splink is built when ``model.backend`` is ``spark``.

    Defaults suit local mode on one machine; on a cluster ``master`` names the cluster
    (``spark://host:7077``, ``k8s://https://...``, ``yarn``) and ``conf`` carries anything
    else the cluster needs (executor memory and cores, object-store credentials provider).
    """

    master: str = "local[2]"
    app_name: str = "sdv-linkage"
    # Small by default: Spark's 200 suits terabytes, not a county's few hundred thousand
    # candidate pairs, where most partitions would be empty tasks.
    shuffle_partitions: int = Field(8, ge=1)
    driver_memory: str = Field("2g", pattern=r"^[0-9]+[kmgt]?$")
    # How Splink cuts Spark's lineage between its steps: ``persist`` caches in executor
    # memory (right for local mode); ``parquet`` and ``checkpoint`` write to
    # ``checkpoint_dir``, which on a cluster must be storage every executor can reach.
    break_lineage: Literal["persist", "parquet", "checkpoint"] = "persist"
    checkpoint_dir: str | None = None
    conf: dict[str, str] = {}

    @model_validator(mode="after")
    def _checkpoint_dir(self) -> SparkOptions:
        if self.break_lineage != "persist" and not self.checkpoint_dir:
            raise ValueError(f"break_lineage '{self.break_lineage}' needs a checkpoint_dir")
        return self


class ModelOptions(_Strict):
    """Where the saved model scores candidate pairs.

    Training always runs on DuckDB (it samples, so one machine suffices); prediction runs on
    ``backend``. Either backend reads the same saved model file, so switching backend is a
    configuration change, not a retraining.
    """

    backend: Literal["duckdb", "spark"] = "duckdb"
    spark: SparkOptions = SparkOptions()


class PersonTable(_Strict):
    source: str
    table: str
    key: list[str] = Field(min_length=1)
    fields: dict[LinkageField, str]
    # A query giving, per local key, the first and last date an age in ``age_at_incident``
    # could have been recorded (``local_key, first_seen, last_seen``); without it the
    # extract date is used, which assumes the age is current. It may also give
    # ``min_age, min_age_at``: the person was at least ``min_age`` on ``min_age_at`` (a
    # role only someone that old can have, e.g. a suspect: the age of criminal
    # responsibility), which caps their birth year when no date of birth says otherwise.
    age_reference_sql: str | None = None

    @model_validator(mode="after")
    def _needs_names(self) -> PersonTable:
        for needed in ("forename", "surname"):
            if needed not in self.fields:
                raise ValueError(f"{self.source}.{self.table}: field '{needed}' must be mapped")
        return self

    @property
    def name(self) -> str:
        return f"{self.source}|{self.table}"


class RelationshipTable(_Strict):
    """A source's own table of who is related to whom, between its person-level records."""

    source: str
    table: str
    person_table: str  # the person-level table of the same source the keys refer to
    person: str
    related: str
    relationship: str  # column: what the related person is to the first
    evidence: str  # shown with each relationship, e.g. "children's social care"


class LinkageConfig(_Strict):
    thresholds: Thresholds = Thresholds()
    training: Training = Training()
    model: ModelOptions = ModelOptions()
    sex_values: dict[str, Literal["M", "F"]] = {}
    tables: list[PersonTable] = Field(min_length=1)
    relationship_tables: list[RelationshipTable] = []

    @model_validator(mode="after")
    def _unique_tables(self) -> LinkageConfig:
        names = [t.name for t in self.tables]
        if len(names) != len(set(names)):
            raise ValueError("each (source, table) may appear only once")
        return self


def load_linkage_config(path: Path = DEFAULT_LINKAGE_CONFIG) -> LinkageConfig:
    """Read and validate the linkage YAML; errors name the file and the offending key."""
    return load_yaml_model(path, LinkageConfig, LinkageConfigError)
