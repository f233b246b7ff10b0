"""Rectification (UK GDPR Art. 16): a recorded correction of a person's golden-record field.

A practitioner or the DPO records that a field people see in the Family View is wrong and
what it should be (field, old value, new value, reason, who asked). The correction overrides
the source value in the curated layer (``warehouse.corrections``, applied by every build)
until a source delivers a value of its own again: the source is then trusted, and the
rectification is marked *lapsed* here with when and why. Nothing is deleted.

Like a restriction, a rectification is kept against the person's *source records*
(``source|table|local_key``) rather than their person id, so it follows the person when
linkage merges or splits people. ``source_value`` is the value the sources gave when it was
recorded (the value the override holds against); it equals ``old_value`` unless the field
was already rectified, in which case the new correction supersedes the earlier one.

:func:`viewers` answers "who saw the old value, so they can be told" from the audit trail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from matching.identifiers import (
    clean_nhs_number,
    is_valid_nhs_number,
    is_valid_upn,
    normalise_postcode,
)
from warehouse import audit
from warehouse.operational import UTCDateTime, metadata

rectifications = sa.Table(
    "rectifications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("person_id", sa.String, nullable=False),  # as named when recorded
    sa.Column("record_ids", sa.Text, nullable=False),  # JSON list: whose field it is
    sa.Column("field", sa.String, nullable=False),
    sa.Column("old_value", sa.Text),  # what people saw (null: no value shown)
    sa.Column("new_value", sa.Text),  # the correct value (null: no value should show)
    sa.Column("source_value", sa.Text),  # what the sources gave: the override holds while so
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("requester", sa.String, nullable=False),
    sa.Column("recorded_by", sa.String, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("lapsed_at", UTCDateTime),
    sa.Column("lapsed_reason", sa.Text),
    sa.CheckConstraint(
        "reason <> '' AND requester <> '' AND recorded_by <> ''",
        name="ck_rectification_accountable",
    ),
    sa.Index("ix_rectifications_active", "lapsed_at"),
)


class RectificationError(ValueError):
    """A rectification that cannot be recorded; the message says what and why."""


# --- fields and their values ----------------------------------------------------------


def _name(value: str) -> str:
    if not re.search(r"[^\W\d_]", value):
        raise RectificationError(f"{value!r} is not a name: it has no letters")
    return value


def _date(value: str) -> str:
    try:
        parsed = date.fromisoformat(value)
    except ValueError as exc:
        raise RectificationError(f"{value!r} is not a date: write it YYYY-MM-DD") from exc
    if not date(1900, 1, 1) <= parsed <= datetime.now(UTC).date():
        raise RectificationError(f"{value} is not a plausible date: before 1900 or in the future")
    return parsed.isoformat()


def _sex(value: str) -> str:
    code = {"male": "M", "female": "F", "unknown": "U"}.get(value.lower(), value.upper())
    if code not in ("M", "F", "U"):
        raise RectificationError(f"{value!r} is not a sex code: use M, F or U")
    return code


def _nhs_number(value: str) -> str:
    if not is_valid_nhs_number(value):
        raise RectificationError(
            f"{value!r} is not a valid NHS number: ten digits with a Modulus 11 check digit"
        )
    return clean_nhs_number(value) or value


def _upn(value: str) -> str:
    if not is_valid_upn(value):
        raise RectificationError(f"{value!r} is not a valid UPN: 13 characters, DfE check letter")
    return value.upper()


def _postcode(value: str) -> str:
    normalised = normalise_postcode(value)
    if normalised is None:
        raise RectificationError(f"{value!r} is not a UK postcode")
    return normalised


def _uprn(value: str) -> str:
    if not re.fullmatch(r"\d{1,12}", value):
        raise RectificationError(f"{value!r} is not a UPRN: up to 12 digits")
    return value


def _text(value: str) -> str:
    return value


# Golden person fields that come from the sources (survivorship and the address), how a
# value is checked and normalised, and whether a correction may say "no value".
FIELDS: dict[str, tuple[Callable[[str], str], bool]] = {
    "forename": (_name, False),
    "middle_names": (_name, True),
    "surname": (_name, False),
    "dob": (_date, False),
    "sex": (_sex, False),
    "nhs_number": (_nhs_number, True),
    "upn": (_upn, True),
    "date_of_death": (_date, True),
    "address_line_1": (_text, False),
    "address_line_2": (_text, True),
    "town": (_text, False),
    "postcode": (_postcode, True),
    "uprn": (_uprn, True),
}


def check_field(field: str) -> None:
    if field not in FIELDS:
        raise RectificationError(
            f"{field!r} cannot be rectified: correctable fields are {', '.join(FIELDS)}"
        )


def normalise_value(field: str, value: str | None) -> str | None:
    """``value`` as the curated layer holds it, or a :class:`RectificationError` naming
    the field and what is wrong. Empty means "no value" where the field may be empty."""
    check_field(field)
    parse, may_be_empty = FIELDS[field]
    text = (value or "").strip()
    if not text:
        if not may_be_empty:
            raise RectificationError(f"{field} cannot be corrected to nothing: give the value")
        return None
    try:
        return parse(text)
    except RectificationError as exc:
        raise RectificationError(f"{field}: {exc}") from exc


def as_text(value: object) -> str | None:
    """A curated value as text, the way rectifications store it."""
    if value is None:
        return None
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _same(field: str, given: str | None, current: str | None) -> bool:
    """Does what the requester says people saw match the published value?"""
    given = (given or "").strip()
    current = current or ""
    if given.casefold() == current.casefold():
        return True
    try:
        return normalise_value(field, given) == normalise_value(field, current)
    except RectificationError:
        return False


# --- recording ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rectification:
    id: int
    person_id: str
    record_ids: tuple[str, ...]
    field: str
    old_value: str | None
    new_value: str | None
    source_value: str | None
    reason: str
    requester: str
    recorded_by: str
    recorded_at: datetime
    lapsed_at: datetime | None = None
    lapsed_reason: str | None = None


def _from_row(row: sa.Row) -> Rectification:
    values = row._asdict()
    values["record_ids"] = tuple(json.loads(values["record_ids"]))
    return Rectification(**values)


def rectify(
    engine: Engine,
    *,
    person_id: str,
    record_ids: Iterable[str],
    field: str,
    old: str | None,
    new: str | None,
    current: str | None,
    field_source: str | None,
    reason: str,
    requester: str,
    recorded_by: str,
) -> Rectification:
    """Record a correction of ``field`` for the person holding ``record_ids`` tonight.

    ``current`` is the value the published view shows (``old`` must match it, so the
    correction is about what people saw) and ``field_source`` where it came from: when that
    is an earlier rectification, this one supersedes it and holds against the same source
    value. Also appends the audit event (field and reason only: the audit holds no values).
    """
    check_field(field)
    records = sorted(set(record_ids))
    if not records:
        raise RectificationError(f"no records found for person {person_id}")
    if not reason.strip() or not requester.strip() or not recorded_by.strip():
        raise RectificationError("a rectification needs a reason, a requester and who records it")
    if not _same(field, old, current):
        raise RectificationError(
            f"{field} of {person_id} is {current!r} in the published view, not {old!r}: "
            "--old must be the value people saw"
        )
    new_value = normalise_value(field, new)
    if new_value == current:
        raise RectificationError(f"{field} of {person_id} is already {current!r}")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        earlier = [
            item
            for item in _select(conn, active_only=True)
            if item.field == field and set(item.record_ids) & set(records)
        ]
        source_value = current
        if field_source == "rectification" and earlier:
            source_value = earlier[-1].source_value
        for item in earlier:
            _lapse(conn, item.id, f"superseded by a later rectification of {field}", now)
        new_id = conn.execute(
            rectifications.insert().values(
                person_id=person_id,
                record_ids=json.dumps(records),
                field=field,
                old_value=current,
                new_value=new_value,
                source_value=source_value,
                reason=reason.strip(),
                requester=requester.strip(),
                recorded_by=recorded_by.strip(),
                recorded_at=now,
            )
        ).inserted_primary_key[0]
    audit.record_rights_action(
        engine,
        by=recorded_by,
        action="rectify",
        person_ids=[person_id],
        detail={"field": field, "reason": reason.strip(), "rectification": new_id},
    )
    return Rectification(
        new_id, person_id, tuple(records), field, current, new_value, source_value,
        reason.strip(), requester.strip(), recorded_by.strip(), now,
    )  # fmt: skip


def _select(conn: sa.Connection, *, active_only: bool) -> list[Rectification]:
    query = sa.select(rectifications).order_by(rectifications.c.id)
    if active_only:
        query = query.where(rectifications.c.lapsed_at.is_(None))
    return [_from_row(row) for row in conn.execute(query)]


def _lapse(conn: sa.Connection, rectification_id: int, reason: str, at: datetime) -> None:
    conn.execute(
        rectifications.update()
        .where(rectifications.c.id == rectification_id, rectifications.c.lapsed_at.is_(None))
        .values(lapsed_at=at, lapsed_reason=reason)
    )


def served_until(published_at: Iterable[str], recorded_at: datetime) -> datetime | None:
    """When readers stopped being served the old value: the first publish after the
    rectification was recorded (it shows from then on), or None if none has been yet.

    The old value is read until that publish, so whoever reads the person in between saw
    it too and must be told as well as those who read before."""
    later = sorted(
        when for when in (datetime.fromisoformat(p) for p in published_at) if when > recorded_at
    )
    return later[0] if later else None


def not_in(engine: Engine, built_at: datetime) -> list[Rectification]:
    """Active rectifications recorded after a snapshot's build started, so not in it: a
    rollback to it serves their old values again until the next publish."""
    return [r for r in listed(engine, active_only=True) if r.recorded_at > built_at]


def listed(engine: Engine, *, active_only: bool = False) -> list[Rectification]:
    """Rectifications, oldest first: all of them, or only those still overriding."""
    with engine.connect() as conn:
        return _select(conn, active_only=active_only)


def for_build(engine: Engine) -> pl.DataFrame:
    """The active rectifications as the curated build takes them (plain data, no store)."""
    return pl.DataFrame(
        [
            {
                "id": r.id,
                "record_ids": list(r.record_ids),
                "field": r.field,
                "new_value": r.new_value,
                "source_value": r.source_value,
            }
            for r in listed(engine, active_only=True)
        ],
        schema={
            "id": pl.Int64,
            "record_ids": pl.List(pl.String),
            "field": pl.String,
            "new_value": pl.String,
            "source_value": pl.String,
        },
    )


def record_lapsed(engine: Engine, lapsed: Iterable[tuple[int, str]]) -> int:
    """Mark rectifications the sources have overtaken (id, why) as lapsed; returns how many."""
    items = list(lapsed)
    if not items:
        return 0
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for rectification_id, reason in items:
            _lapse(conn, rectification_id, reason, now)
    return len(items)


# --- who saw the old value --------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    user_id: str
    role: str
    organisation: str | None
    last_access: datetime
    reads: int


def viewers(engine: Engine, person_ids: Iterable[str], until: datetime) -> list[Viewer]:
    """Everyone whose read of the person (under any of ``person_ids``: current and former
    ids) was allowed and returned data, at or before ``until``: who saw the old value.

    Only reads count (events naming the tables read), not subject-rights actions such as
    recording a restriction or this rectification. One row per user, role and organisation,
    latest access first.
    """
    seen: dict[tuple[str, str, str | None], Viewer] = {}
    for event in audit.person_history(engine, person_ids):
        if event.outcome != "allowed" or not event.tables or event.occurred_at > until:
            continue
        key = (event.user_id, event.role, event.organisation)
        before = seen.get(key)
        seen[key] = Viewer(
            event.user_id,
            event.role,
            event.organisation,
            max(event.occurred_at, before.last_access) if before else event.occurred_at,
            (before.reads if before else 0) + 1,
        )
    return sorted(seen.values(), key=lambda v: (v.last_access, v.user_id), reverse=True)
