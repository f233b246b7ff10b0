"""How long the audit trail is kept (``config/audit.yaml``), validated into a typed model.

The trail is the partnership's own record of who saw whose data and why, not a source's
record, so no source agreement sets its period: the partnership (its data protection
officer) does, here. Without the file, or without ``keep_years``, the trail is kept in full
and retention says so; nothing is destroyed by default.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from warehouse.yaml_model import load_yaml_model

AUDIT_CONFIG = "audit.yaml"


class AuditConfigError(ValueError):
    """The audit configuration is invalid; the message names file and key."""


class LinkageAccess(BaseModel):
    """How the trail records the data team's own use of the linkage outside the Family
    View: reading the clerical review queue (``sdv review list``, ``show`` and
    ``history`` display names, dates of birth and whole records from every source;
    ``accept``, ``reject`` and ``split`` display the record ids decided on) and
    exporting its results (``sdv export links`` and ``households``, a share of every
    person's ids): under which role, for which purpose, on which lawful basis. The
    defaults stand until the partnership's DPO writes its own under ``linkage_access``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str = Field(default="linkage_team", min_length=1)
    purpose: str = Field(default="identity_resolution", min_length=1)
    lawful_basis: str = Field(
        default=(
            "UK GDPR 6(1)(e) public task (Children Act 2004 s.10-11) and Art. 5(1)(d) "
            "accuracy; 9(2)(g) and DPA 2018 Sch 1 para 18 safeguarding of children"
        ),
        min_length=1,
    )


class AuditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Whole years an event is kept after it was recorded; None: kept in full.
    keep_years: int | None = Field(default=None, ge=1, le=100)
    linkage_access: LinkageAccess = LinkageAccess()

    def cutoff(self, as_of: date) -> datetime:
        """The moment (UTC) before which events have served their period on ``as_of``.

        As for source records (``warehouse.retention``), an event goes ON its expiry day,
        ``keep_years`` after the day it was recorded, and a 29 February's anniversary in a
        common year is 1 March: kept a day longer, never less."""
        if self.keep_years is None:
            raise AuditConfigError("keep_years is not set: the trail is kept in full")
        year = as_of.year - self.keep_years
        try:
            first_kept = as_of.replace(year=year) + timedelta(days=1)
        except ValueError:  # as of 29 February: events up to 28 February have expired
            first_kept = date(year, 3, 1)
        return datetime.combine(first_kept, time(), tzinfo=UTC)


def load_audit_config(config_dir: Path) -> AuditConfig:
    """``<config_dir>/audit.yaml`` validated; a missing file keeps the trail in full."""
    path = Path(config_dir) / AUDIT_CONFIG
    if not path.exists():
        return AuditConfig()
    return load_yaml_model(path, AuditConfig, AuditConfigError)
