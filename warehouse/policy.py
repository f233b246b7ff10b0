"""The role policy (``config/policy.yaml``): need-to-know as validated data, default deny.

A role names the tables it may read, the columns of each, the rows (its scope) and the
purposes it may read for. Anything not granted is denied: an unknown role, an unlisted
table, a column left out, a purpose not listed. Loading checks every table and column
against :mod:`warehouse.curated_schema`, and every granted agency and scoped organisation
type against what the curation config (``curated.yaml`` beside the policy) puts in the
tables, so a typo fails at start-up instead of silently hiding (or showing) data, and
adding a role is a change to the YAML plus its tests.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from warehouse.curated_config import CuratedConfig, CuratedConfigError, load_curated_config
from warehouse.curated_schema import TABLES
from warehouse.yaml_model import load_yaml_model

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "config" / "policy.yaml"
INTERNAL_TABLES = frozenset({"person_names", "person_records"})  # never granted to a role
CURATED_FILE = "curated.yaml"  # beside the policy, as Settings lays the config folder out

Rows = Literal["scope", "organisation", "all"]


class PolicyError(ValueError):
    """The role policy is missing or invalid; the message names file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scope(_Strict):
    organisation_type: str = Field(min_length=1)
    households: bool = False


class TableGrant(_Strict):
    columns: Literal["all"] | list[str]
    rows: Rows = "scope"
    agencies: list[str] | None = None


class QueryLimits(_Strict):
    """What one SQL query of a pseudonymised role may take (``POST /analytics/query``)."""

    max_rows: int = Field(10_000, ge=1, le=1_000_000)
    timeout_seconds: float = Field(30.0, gt=0, le=3600)
    memory_limit_mb: int = Field(1024, ge=64, le=65_536)
    # Queries of the role running at once in one API worker; more are refused (429), so
    # analysts cannot take the cores the practitioners' reads need.
    concurrent: int = Field(2, ge=1, le=64)


class Role(_Strict):
    description: str
    purposes: list[str] = Field(min_length=1)
    lawful_basis: str = Field(min_length=5)
    dataset: Literal["curated", "pseudonymised", "aggregates"]
    scope: Scope | None = None
    # Sees people whose processing is restricted (UK GDPR Art. 18): the DPO only.
    sees_restricted: bool = False
    # Reads the record of subject-rights actions (access requests, rectifications,
    # restrictions, erasures, retention runs): the DPO only.
    reads_rights_log: bool = False
    tables: dict[str, TableGrant] = {}
    # A pseudonymised role's SQL over its file (the API's audited query endpoint).
    query: QueryLimits = QueryLimits()


@dataclass(frozen=True)
class Grant:
    """What one role may read of one table, resolved: exact columns, rows, agencies."""

    table: str
    columns: tuple[str, ...]
    rows: Rows
    agencies: tuple[str, ...] | None


class Policy(_Strict):
    roles: dict[str, Role]

    @model_validator(mode="after")
    def _check(self) -> Policy:
        problems = []
        for name, role in self.roles.items():
            if "query" in role.model_fields_set and role.dataset != "pseudonymised":
                problems.append(
                    f"roles.{name}.query: only a pseudonymised role queries its file with SQL"
                )
            for table_name, grant in role.tables.items():
                where = f"roles.{name}.tables.{table_name}"
                if table_name not in TABLES or table_name in INTERNAL_TABLES:
                    problems.append(f"{where}: no such curated table")
                    continue
                table = TABLES[table_name]
                if grant.columns != "all":
                    unknown = set(grant.columns) - set(table.column_names)
                    if unknown:
                        problems.append(f"{where}: unknown columns {sorted(unknown)}")
                    if table.person_column and table.person_column not in grant.columns:
                        problems.append(f"{where}: must include {table.person_column}")
                if grant.agencies is not None and "agency" not in table.column_names:
                    problems.append(f"{where}: agencies given but the table has no agency")
                if grant.rows == "organisation" and role.scope is None:
                    problems.append(f"{where}: rows 'organisation' needs a role scope")
                if role.dataset == "aggregates" and not (
                    table.aggregate or (table.person_column is None and table_name != "household")
                ):
                    problems.append(f"{where}: an aggregates role may read aggregates only")
                if role.dataset == "pseudonymised":
                    problems.append(f"{where}: a pseudonymised role reads its own file only")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def unknown_values(
        self, agencies: Collection[str], organisation_types: Collection[str]
    ) -> list[str]:
        """Granted agencies and scoped organisation types the curated tables never hold.

        Either would make the role quietly read nothing."""
        problems = []
        for name, role in self.roles.items():
            scope_type = role.scope.organisation_type if role.scope else None
            if scope_type not in {None, *organisation_types}:
                problems.append(
                    f"roles.{name}.scope.organisation_type: unknown organisation type "
                    f"{scope_type!r} (known: {', '.join(sorted(organisation_types)) or 'none'})"
                )
            for table_name, grant in role.tables.items():
                for agency in grant.agencies or ():
                    if agency not in agencies:
                        problems.append(
                            f"roles.{name}.tables.{table_name}.agencies: unknown agency "
                            f"{agency!r} (known: {', '.join(sorted(agencies))})"
                        )
        return problems

    def role(self, name: str) -> Role | None:
        return self.roles.get(name)

    def grant(self, role_name: str, table_name: str) -> Grant | None:
        """The role's grant on the table, or None: denied."""
        role = self.roles.get(role_name)
        if role is None or table_name not in role.tables:
            return None
        grant = role.tables[table_name]
        table = TABLES[table_name]
        columns = (
            table.column_names
            if grant.columns == "all"
            else tuple(c for c in table.column_names if c in grant.columns)
        )
        rows: Rows = "all" if role.scope is None else grant.rows
        agencies = tuple(grant.agencies) if grant.agencies is not None else None
        return Grant(table_name, columns, rows, agencies)


def known_values(curated: CuratedConfig) -> tuple[frozenset[str], frozenset[str]]:
    """(agencies, organisation types) the curated build writes, from its configuration.

    Agencies are those of the timeline and involvement entries (the tables with an agency
    column, and the aggregates built from them). Organisation types are those the
    ``organisations`` entries declare: the build writes exactly these, never a type a query
    computes, so every scope is checked."""
    agencies = frozenset(e.agency for e in (*curated.timeline, *curated.involvement))
    return agencies, frozenset(e.organisation_type for e in curated.organisations)


def load_policy(path: Path = DEFAULT_POLICY, curated: CuratedConfig | None = None) -> Policy:
    """Read and validate the role policy; errors name the file and the offending key.

    Agencies and organisation types are checked against ``curated``, by default the
    curation config beside the policy (both live in the configuration folder), so every
    caller that loads the policy gets the check without being told where to look."""
    policy = load_yaml_model(path, Policy, PolicyError)
    if curated is None:
        curated_path = Path(path).with_name(CURATED_FILE)
        try:
            curated = load_curated_config(curated_path)
        except CuratedConfigError as err:
            raise PolicyError(
                f"{path}: cannot check agencies and organisation types: {err}"
            ) from err
    problems = policy.unknown_values(*known_values(curated))
    if problems:
        raise PolicyError(f"{path}: {'; '.join(problems)}")
    return policy
