"""Restriction of processing (UK GDPR Art. 18): a person hidden from every role but the DPO.

A restriction is recorded against the person's *source records* (``source|table|local_key``),
not their person id: ids change when linkage merges or splits people, records do not. Each
read resolves the active restrictions to tonight's person ids through the snapshot's
``person_records``, so a restriction follows the person through re-linking and merges (a
person merged with a restricted one is restricted too, until the DPO decides otherwise).

Restrictions live in the operational store with who asked, who recorded it and why; lifting
one is recorded the same way and nothing is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from warehouse.operational import UTCDateTime, metadata

restrictions = sa.Table(
    "restrictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("person_id", sa.String, nullable=False),  # as named when restricted
    sa.Column("record_ids", sa.Text, nullable=False),  # JSON list: what is restricted
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("recorded_by", sa.String, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("lifted_at", UTCDateTime),
    sa.Column("lifted_by", sa.String),
    sa.Column("lift_reason", sa.Text),
    sa.CheckConstraint("reason <> '' AND recorded_by <> ''", name="ck_restriction_accountable"),
    sa.Index("ix_restrictions_active", "lifted_at"),
)


class RestrictionError(ValueError):
    """A restriction that cannot be recorded or lifted; the message says why."""


@dataclass(frozen=True)
class Restriction:
    id: int
    person_id: str
    record_ids: tuple[str, ...]
    reason: str
    recorded_by: str
    recorded_at: datetime
    lifted_at: datetime | None


def restrict(
    engine: Engine, person_id: str, record_ids: Iterable[str], reason: str, recorded_by: str
) -> Restriction:
    """Restrict processing of the person holding ``record_ids`` (their records tonight)."""
    records = sorted(set(record_ids))
    if not records:
        raise RestrictionError(f"no records found for person {person_id}")
    if not reason.strip() or not recorded_by.strip():
        raise RestrictionError("a restriction needs a reason and who recorded it")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        new_id = conn.execute(
            restrictions.insert().values(
                person_id=person_id,
                record_ids=json.dumps(records),
                reason=reason,
                recorded_by=recorded_by,
                recorded_at=now,
            )
        ).inserted_primary_key[0]
    return Restriction(new_id, person_id, tuple(records), reason, recorded_by, now, None)


def lift(engine: Engine, record_ids: Iterable[str], reason: str, lifted_by: str) -> int:
    """Lift every active restriction touching ``record_ids``; returns how many."""
    if not reason.strip() or not lifted_by.strip():
        raise RestrictionError("lifting a restriction needs a reason and who lifted it")
    wanted = set(record_ids)
    lifted = 0
    with engine.begin() as conn:
        for item in active(engine, conn):
            if wanted & set(item.record_ids):
                conn.execute(
                    restrictions.update()
                    .where(restrictions.c.id == item.id)
                    .values(lifted_at=datetime.now(UTC), lifted_by=lifted_by, lift_reason=reason)
                )
                lifted += 1
    if not lifted:
        raise RestrictionError("no active restriction covers this person")
    return lifted


# Built once, like the audit append's statements (warehouse/audit.py says why): the API
# reads the active restrictions on every request.
_ACTIVE = sa.select(restrictions).where(restrictions.c.lifted_at.is_(None))


def active(engine: Engine, conn: sa.Connection | None = None) -> list[Restriction]:
    if conn is None:
        with engine.connect() as own:
            rows = own.execute(_ACTIVE).all()
    else:
        rows = conn.execute(_ACTIVE).all()
    return [
        Restriction(
            r.id,
            r.person_id,
            tuple(json.loads(r.record_ids)),
            r.reason,
            r.recorded_by,
            r.recorded_at,
            r.lifted_at,
        )
        for r in rows
    ]


def restricted_records(engine: Engine) -> list[str]:
    """Record ids under an active restriction."""
    return sorted({rid for item in active(engine) for rid in item.record_ids})
