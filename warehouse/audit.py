"""The audit trail: who saw which person's data, when and why, and what was not shared.

Every read through the access layer or the API calls :func:`append` with an
:class:`AuditEvent`: the user, their role and organisation, the purpose (and lawful basis)
they gave, what they did (``read``, ``search``, ``api``, ``publish`` ...), how it ended
(``allowed``, ``denied``, ``not_found``, ``withheld``, or ``error`` when the read failed),
which tables and columns were read and which person ids came back. A decision *not* to
share is recorded the same way (:func:`record_no_share`), with the recipient and the reason,
because a partnership has to be able to show why it withheld as well as why it shared.
:func:`person_history` answers "who has seen this child's data" from an indexed lookup;
:func:`verify` checks the whole trail.

The audit records *that* data was seen, never the data. It holds person ids and the names of
tables and columns, not names, dates of birth, addresses or identifiers such as NHS numbers:
an audit log full of personal data would itself need protecting like the warehouse, and
would outlive the records it describes. ``detail`` (request path, parameters, recipient and
reason of a decision not to share) is for context; keys that name personal fields
(``surname``, ``dob``, ``postcode`` ...) are refused as a guard against the obvious mistake of
logging a search's terms, but free text (a reason) is the caller's responsibility.

Tamper evidence. Events are numbered ``seq`` 1, 2, 3 ... with no gaps, and each stores
``hash = sha256(prev_hash + canonical_json(fields))`` where ``prev_hash`` is the previous
event's hash (64 zeros for the first) and the fields are every other column (``seq``,
``event_id``, ``occurred_at`` as an ISO 8601 UTC string with microseconds, ``user_id``,
``role``, ``organisation``, ``purpose``, ``lawful_basis``, ``action``, ``outcome``,
``tables``, ``columns``, ``person_ids`` as lists, ``detail`` as an object or null), serialised
with ``json.dumps(..., sort_keys=True, separators=(",", ":"))``, so anyone can recompute it.
Changing a field breaks that event's hash; deleting or inserting an event breaks the next
event's ``prev_hash`` or the numbering; the single-row chain head (last seq and hash) catches
events removed from, or added to, the end. The person index (``audit_event_persons``) is
checked against each event's ``person_ids``, so hiding an event from a person's history is
detected too.

A chain only proves itself consistent: someone able to write to the database could recompute
every hash after the one they changed. Record the head printed by ``sdv audit verify``
somewhere they cannot write (a ticket, an email to the DPO) and pass it back as an
``anchor``: a rewritten chain no longer contains it. In a deployment, grant the application's
database role only INSERT and SELECT on the event tables (and UPDATE on the head).

Retention. The trail is kept for the partnership's ``keep_years`` (``config/audit.yaml``), not
for ever: :func:`expire` destroys the oldest events, from the start of the chain up to the
last one recorded before the cut-off. It verifies them first, appends an ``audit_retention``
event declaring the cut (how many, through which seq, that event's hash), then deletes them
a chunk per transaction, each moving the trail's base (``audit_chain_base``: the seq and
hash of the last event destroyed). :func:`verify` starts from the base and accepts it only
within the latest declared cut, so a prefix deleted by hand is still reported; an anchor
from before the cut can no longer be checked, and verify says so.

Concurrent appenders (threads, processes, several PostgreSQL connections) never fork the
chain: each append locks the head row first (``SELECT ... FOR UPDATE`` on PostgreSQL; on
SQLite the transaction's first statement is a write to the head, which takes the database's
write lock), then reads it, inserts the event with the next seq and moves the head, all in one
transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

try:
    import fcntl
except ImportError:  # Windows: appenders meet in SQLite's busy handler instead
    fcntl = None  # type: ignore[assignment]

from warehouse.operational import UTCDateTime, holds_table, metadata

if TYPE_CHECKING:
    from warehouse.audit_config import LinkageAccess

GENESIS = "0" * 64  # prev_hash of the first event
OUTCOMES = ("allowed", "denied", "not_found", "withheld", "error")
NO_SHARE, WITHHELD = "no_share", "withheld"
MAX_ACTION = 32
_ACTION = re.compile(r"^[a-z][a-z0-9_.:-]*$")
_BATCH = 5000  # events verified per query: memory stays flat however long the chain

# Field names that carry personal data (from the extract spec's columns): never audit keys.
PERSONAL_KEYS = frozenset(
    {
        "name",
        "full_name",
        "forename",
        "first_name",
        "given_name",
        "preferred_forename",
        "surname",
        "last_name",
        "family_name",
        "preferred_surname",
        "dob",
        "date_of_birth",
        "birth_date",
        "address",
        "address_line_1",
        "address_line_2",
        "town",
        "postcode",
        "uprn",
        "nhs_number",
        "upn",
        "pnc_id",
        "phone",
        "email",
        "sex",
        "gender",
    }
)

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PK is the rowid

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", _BIGINT, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("user_id", sa.String, nullable=False),
    sa.Column("role", sa.String, nullable=False),
    sa.Column("organisation", sa.String),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("lawful_basis", sa.Text),
    sa.Column("action", sa.String(MAX_ACTION), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("tables", sa.Text, nullable=False),  # JSON list
    sa.Column("columns", sa.Text, nullable=False),  # JSON list of "table.column"
    sa.Column("person_ids", sa.Text, nullable=False),  # JSON list, sorted, unique
    sa.Column("detail", sa.Text),  # JSON object
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_audit_events_occurred_at", "occurred_at"),
)

audit_event_persons = sa.Table(
    "audit_event_persons",
    metadata,
    sa.Column("seq", _BIGINT, sa.ForeignKey("audit_events.seq"), nullable=False),
    sa.Column("person_id", sa.String, nullable=False),
    sa.PrimaryKeyConstraint("seq", "person_id"),
    sa.Index("ix_audit_event_persons_person", "person_id"),
)


def _chain_point(name: str) -> sa.Table:
    """A table of at most one row: a (seq, hash) point of the chain."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", _BIGINT, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name=f"ck_{name}_single_row"),
    )


audit_chain_head = _chain_point("audit_chain_head")  # the last event appended
# Where the chain starts once retention has destroyed its oldest events: the seq and hash of
# the last event destroyed. No row: the chain starts at seq 1 from GENESIS.
audit_chain_base = _chain_point("audit_chain_base")
AUDIT_RETENTION = "audit_retention"  # the action of the event that records a cut


@sa.event.listens_for(audit_chain_head, "after_create")
def _start_chain(target: sa.Table, connection: Connection, **_: Any) -> None:
    # The head exists from the moment its table does, so appenders only ever update it and
    # the first two appenders cannot race to create it.
    connection.execute(target.insert().values(id=1, seq=0, hash=GENESIS))


class AuditError(ValueError):
    """An event the audit refuses, or a store it cannot append to, with a readable message."""


def _text(value: Any, what: str, *, required: bool = True) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise AuditError(f"{what} is required")
        return None
    if not isinstance(value, str):
        raise AuditError(f"{what} must be text, not {type(value).__name__}")
    return value.strip()


def _names(values: Iterable[str] | None, what: str) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):  # a bare string would be read as a list of characters
        raise AuditError(f"{what} must be a list, not a single string")
    cleaned = {_text(value, f"each of {what}") for value in values}
    return tuple(sorted(v for v in cleaned if v))


def _personal_keys(detail: Any, path: str = "detail") -> list[str]:
    if isinstance(detail, Mapping):
        found = []
        for key, value in detail.items():
            if not isinstance(key, str):
                raise AuditError(f"{path} keys must be text")
            if key.strip().lower() in PERSONAL_KEYS:
                found.append(f"{path}.{key}")
            found += _personal_keys(value, f"{path}.{key}")
        return found
    if isinstance(detail, list | tuple):
        return [k for item in detail for k in _personal_keys(item, path)]
    return []


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """What happened, as the caller saw it: validated and normalised on construction.

    Lists are stored sorted and without duplicates; a column's table (``table`` of
    ``table.column``, where ``table`` may be schema-qualified) is added to ``tables``.
    """

    user_id: str
    role: str
    purpose: str
    action: str
    outcome: str
    organisation: str | None = None
    lawful_basis: str | None = None
    tables: Sequence[str] = ()
    columns: Sequence[str] = ()
    person_ids: Sequence[str] = ()
    detail: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        for name in ("user_id", "role", "purpose"):
            put(self, name, _text(getattr(self, name), name.replace("_", " ")))
        put(self, "organisation", _text(self.organisation, "organisation", required=False))
        put(self, "lawful_basis", _text(self.lawful_basis, "lawful basis", required=False))
        action = _text(self.action, "action")
        if len(action) > MAX_ACTION or not _ACTION.match(action):
            raise AuditError(
                f"action {action!r} must be a short lower-case word such as read, search, api"
            )
        put(self, "action", action)
        if self.outcome not in OUTCOMES:
            raise AuditError(f"outcome {self.outcome!r} must be one of {', '.join(OUTCOMES)}")
        columns = _names(self.columns, "columns")
        for column in columns:
            table, _, name = column.rpartition(".")
            if not table or not name:
                raise AuditError(f"column {column!r} must be written table.column")
        tables = set(_names(self.tables, "tables")) | {c.rpartition(".")[0] for c in columns}
        put(self, "tables", tuple(sorted(tables)))
        put(self, "columns", columns)
        put(self, "person_ids", _names(self.person_ids, "person ids"))
        if self.detail is not None:
            if not isinstance(self.detail, Mapping):
                raise AuditError("detail must be a mapping (a JSON object)")
            personal = _personal_keys(self.detail)
            if personal:
                raise AuditError(
                    f"{', '.join(personal)} would put personal data in the audit: record that "
                    "data was seen (person ids, tables, columns), not the data or search terms"
                )
            try:
                detail = json.loads(_canonical(self.detail))
            except (TypeError, ValueError) as exc:
                raise AuditError(f"detail must be JSON-serialisable: {exc}") from exc
            put(self, "detail", detail)


@dataclass(frozen=True)
class AuditRecord:
    """An event as stored: its place in the chain, when it was recorded, and its hash."""

    seq: int
    event_id: str
    occurred_at: datetime
    user_id: str
    role: str
    organisation: str | None
    purpose: str
    lawful_basis: str | None
    action: str
    outcome: str
    tables: tuple[str, ...]
    columns: tuple[str, ...]
    person_ids: tuple[str, ...]
    detail: dict[str, Any] | None
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify` found: ``problems`` each start with the ``seq`` concerned."""

    checked: int
    problems: list[str] = field(default_factory=list)
    head_seq: int | None = None
    head_hash: str | None = None
    base_seq: int = 0  # events up to here were destroyed by retention (0: none)

    @property
    def ok(self) -> bool:
        return not self.problems


_HASHED = (
    "seq",
    "event_id",
    "occurred_at",
    "user_id",
    "role",
    "organisation",
    "purpose",
    "lawful_basis",
    "action",
    "outcome",
    "tables",
    "columns",
    "person_ids",
    "detail",
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    payload = {name: fields[name] for name in _HASHED}
    payload["occurred_at"] = _iso(payload["occurred_at"])
    for name in ("tables", "columns", "person_ids"):
        payload[name] = list(payload[name])
    return hashlib.sha256((prev_hash + _canonical(payload)).encode("utf-8")).hexdigest()


# The statements of an append, built once: the API appends on every request. A statement
# built afresh is walked for its cache key on every execution before SQLAlchemy can reuse
# its compiled form; one built once keeps its key (memoised), and being immutable it is
# shared by every thread.
_HEAD = audit_chain_head.c.id == 1
_READ_HEAD = sa.select(audit_chain_head.c.seq, audit_chain_head.c.hash).where(_HEAD)
_READ_HEAD_FOR_UPDATE = _READ_HEAD.with_for_update()
_TOUCH_HEAD = audit_chain_head.update().where(_HEAD).values(seq=audit_chain_head.c.seq)
_MOVE_HEAD = (
    audit_chain_head.update()
    .where(_HEAD)
    .values(seq=sa.bindparam("new_seq"), hash=sa.bindparam("new_hash"))
)
_INSERT_EVENTS = audit_events.insert()
_INSERT_PERSONS = audit_event_persons.insert()


def _lock_head(conn: Connection) -> tuple[int, str]:
    """The head (last seq, last hash), locked until this transaction ends."""
    if conn.dialect.name == "sqlite":
        # pysqlite opens a deferred transaction: a read first would take a snapshot that a
        # concurrent appender can overtake. Writing first takes the write lock (waiting on
        # busy_timeout), so the head read next is the latest and stays so until commit.
        conn.execute(_TOUCH_HEAD)
        query = _READ_HEAD
    else:
        query = _READ_HEAD_FOR_UPDATE
    row = conn.execute(query).one_or_none()
    if row is None:
        raise AuditError("the audit chain head is missing: run `sdv audit verify`")
    return row.seq, row.hash


@dataclass
class _Pending:
    """One event waiting for a group commit, and what became of it."""

    event: AuditEvent
    at: datetime | None
    record: AuditRecord | None = None
    error: BaseException | None = None


@dataclass
class _Committer:
    """Per-process group commit for one audit store.

    Every waiting thread's event goes into ``pending``; whichever thread next holds
    ``commit`` appends all of them in one transaction and hands each its record. Under a
    busy API one commit (one fsync) then carries many events instead of one each, and an
    event is still on disk before the request that caused it is answered. Threads of one
    process queue here rather than in the database: SQLite's busy handler makes waiting
    writers sleep in growing steps (up to 100 ms). Other processes still serialise on the
    head lock.
    """

    commit: threading.Lock = field(default_factory=threading.Lock)
    guard: threading.Lock = field(default_factory=threading.Lock)
    pending: list[_Pending] = field(default_factory=list)
    lock_file: Path | None = None  # SQLite: processes take turns on this file (flock)

    @contextmanager
    def between_processes(self) -> Iterator[None]:
        """Hold the store's lock file while appending (SQLite on POSIX; else a no-op).

        Appenders in several processes (``sdv serve --workers 2``) would otherwise meet
        in SQLite's busy handler, which sleeps in growing steps up to 100 ms and made the
        API's slowest answers; a process blocked in ``flock`` wakes as soon as the lock
        is released. The database's own write lock still guards the chain."""
        if self.lock_file is None or fcntl is None:
            yield
            return
        with self.lock_file.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


_COMMITTERS: dict[str, _Committer] = {}
_COMMITTERS_GUARD = threading.Lock()


def _committer(engine: Engine) -> _Committer:
    key = engine.url.render_as_string(hide_password=False)
    with _COMMITTERS_GUARD:
        if key not in _COMMITTERS:
            database = engine.url.database
            lock_file = None
            if engine.dialect.name == "sqlite" and database and database != ":memory:":
                lock_file = Path(database).with_name(Path(database).name + ".audit-lock")
            _COMMITTERS[key] = _Committer(lock_file=lock_file)
        return _COMMITTERS[key]


def append(engine: Engine, event: AuditEvent, at: datetime | None = None) -> AuditRecord:
    """Append ``event`` to the chain and return it as stored (committed).

    ``at`` is when the read happened, if the caller knows better than now (timezone-aware);
    by default the time is taken once the chain is locked, so seq order is time order.
    Concurrent appends from one process share a transaction (:class:`_Committer`).
    """
    if not isinstance(event, AuditEvent):
        raise AuditError(f"expected an AuditEvent, not {type(event).__name__}")
    if at is not None and at.tzinfo is None:
        raise AuditError(f"naive datetime {at!r}: audit times must be timezone-aware")
    mine = _Pending(event, at)
    committer = _committer(engine)
    with committer.guard:
        committer.pending.append(mine)
    with committer.commit:
        if mine.record is None and mine.error is None:
            with committer.guard:
                batch, committer.pending = committer.pending, []
            try:
                with committer.between_processes():
                    records = _append_batch(engine, batch)
            except BaseException as exc:
                for pending in batch:
                    pending.error = exc
                raise
            for pending, record in zip(batch, records, strict=True):
                pending.record = record
    if mine.error is not None:
        raise mine.error
    assert mine.record is not None
    return mine.record


def _append_batch(engine: Engine, batch: Sequence[_Pending]) -> list[AuditRecord]:
    """Append the events of ``batch`` in order, in one transaction."""
    with engine.begin() as conn:
        return _append_in(conn, batch)


def _append_in(conn: Connection, batch: Sequence[_Pending]) -> list[AuditRecord]:
    """Append the events of ``batch`` in order in ``conn``'s transaction (locking the head)."""
    records: list[AuditRecord] = []
    prev_seq, prev_hash = _lock_head(conn)
    events, persons = [], []
    for pending in batch:
        event = pending.event
        fields = {
            "seq": prev_seq + 1,
            "event_id": str(uuid.uuid4()),
            "occurred_at": (pending.at or datetime.now(UTC)).astimezone(UTC),
            "user_id": event.user_id,
            "role": event.role,
            "organisation": event.organisation,
            "purpose": event.purpose,
            "lawful_basis": event.lawful_basis,
            "action": event.action,
            "outcome": event.outcome,
            "tables": tuple(event.tables),
            "columns": tuple(event.columns),
            "person_ids": tuple(event.person_ids),
            "detail": None if event.detail is None else json.loads(_canonical(event.detail)),
        }
        record = AuditRecord(**fields, prev_hash=prev_hash, hash=_hash(prev_hash, fields))
        events.append(
            {
                **fields,
                "tables": _canonical(list(record.tables)),
                "columns": _canonical(list(record.columns)),
                "person_ids": _canonical(list(record.person_ids)),
                "detail": None if record.detail is None else _canonical(record.detail),
                "prev_hash": prev_hash,
                "hash": record.hash,
            }
        )
        persons.extend({"seq": record.seq, "person_id": p} for p in record.person_ids)
        records.append(record)
        prev_seq, prev_hash = record.seq, record.hash
    conn.execute(_INSERT_EVENTS, events)
    if persons:
        conn.execute(_INSERT_PERSONS, persons)
    conn.execute(_MOVE_HEAD, {"new_seq": prev_seq, "new_hash": prev_hash})
    return records


AUDIT_READ = "audit_read"  # the action: the trail itself was read (`sdv audit`)
ACCOUNTABILITY_PURPOSE = "accountability"
# Keeping and checking the record of who has seen what is the controller's own duty.
ACCOUNTABILITY_LAWFUL_BASIS = "UK GDPR 6(1)(c) legal obligation (Art. 5(2) accountability)"


def record_audit_read(
    engine: Engine, *, by: str, person_ids: Iterable[str], detail: Mapping[str, Any]
) -> AuditRecord:
    """Record a reading of the trail before it is shown. The trail says who has seen whom,
    when and why: reading it is an access to every person it names, and those people find
    it in their own history (``sdv audit --person``, a subject access export). The detail
    holds counts, never the events read."""
    return _dpo_office(
        engine,
        by=by,
        purpose=ACCOUNTABILITY_PURPOSE,
        lawful_basis=ACCOUNTABILITY_LAWFUL_BASIS,
        action=AUDIT_READ,
        person_ids=sorted(set(person_ids)),
        tables=("audit_events",),
        detail=detail,
    )


def _dpo_office(
    engine: Engine,
    *,
    by: str,
    purpose: str,
    lawful_basis: str,
    action: str,
    person_ids: Iterable[str],
    tables: Iterable[str],
    detail: Mapping[str, Any],
) -> AuditRecord:
    """An action of the DPO's office, which acts outside the role policy: allowed, as role
    ``dpo``."""
    return append(
        engine,
        AuditEvent(
            user_id=by,
            role="dpo",
            purpose=purpose,
            lawful_basis=lawful_basis,
            action=action,
            outcome="allowed",
            person_ids=tuple(person_ids),
            tables=tuple(tables),
            detail=detail,
        ),
    )


RIGHTS_PURPOSE = "subject_rights"
# Answering a subject-rights request is a duty the law puts on the partnership, whoever in
# the DPO's office acts: the basis is the same for every such action.
RIGHTS_LAWFUL_BASIS = "UK GDPR 6(1)(c) legal obligation (Art. 15-21 data subject rights)"


def record_rights_action(
    engine: Engine,
    *,
    by: str,
    action: str,
    person_ids: Iterable[str],
    detail: Mapping[str, Any],
    tables: Iterable[str] = (),
) -> AuditRecord:
    """Record a subject-rights action (restrict, rectify, erase, a subject access export)
    taken by the DPO's office: who, on whom, why (``detail["reason"]``), under which
    lawful basis, counts only. The DPO reads these back through the API's rights log."""
    return _dpo_office(
        engine,
        by=by,
        purpose=RIGHTS_PURPOSE,
        lawful_basis=RIGHTS_LAWFUL_BASIS,
        action=action,
        person_ids=person_ids,
        tables=tables,
        detail=detail,
    )


EXPORT = "export"


def record_export(
    engine: Engine,
    *,
    user_id: str,
    access: LinkageAccess,
    recipient: str,
    reason: str,
    table: str,
    columns: Iterable[str],
    person_ids: Iterable[str],
    rows: int,
    file_name: str,
) -> AuditRecord:
    """Record a share made outside the access layer: a file of ``table``'s ``columns``
    about these persons, written for ``recipient``, and why, under ``access`` (role,
    purpose and lawful basis: ``config/audit.yaml``'s ``linkage_access``). Call it before
    the file is written, so that a share the trail cannot take is not made. Every person
    in the file is named, so "who has seen this person's data" finds the share."""
    recipient = _text(recipient, "the recipient (who the file is for)")
    reason = _text(reason, "a reason (why the file is shared, for whoever reviews it)")
    event = AuditEvent(
        user_id=user_id,
        role=access.role,
        purpose=access.purpose,
        lawful_basis=access.lawful_basis,
        action=EXPORT,
        outcome="allowed",
        columns=tuple(f"{table}.{c}" for c in columns),
        person_ids=tuple(person_ids),
        detail={"recipient": recipient, "reason": reason, "rows": rows, "file": file_name},
    )
    return append(engine, event)


def record_no_share(
    engine: Engine,
    *,
    user_id: str,
    role: str,
    organisation: str | None,
    person_ids: Iterable[str],
    recipient: str,
    reason: str,
    purpose: str,
    lawful_basis: str | None = None,
    at: datetime | None = None,
) -> AuditRecord:
    """Record a decision NOT to share these persons' data with ``recipient``, and why.

    ``purpose`` is the purpose of the request that was declined; ``reason`` is why it was
    declined. Write the reason about the decision, not about the person: it is kept as given.
    """
    recipient = _text(recipient, "the recipient (who asked, or would have received it)")
    reason = _text(reason, "a reason (why not shared, for whoever reviews this decision)")
    ids = _names(None if person_ids is None else list(person_ids), "person ids")
    if not ids:
        raise AuditError("at least one person id is required: whose data was not shared?")
    event = AuditEvent(
        user_id=user_id,
        role=role,
        organisation=organisation,
        purpose=purpose,
        lawful_basis=lawful_basis,
        action=NO_SHARE,
        outcome=WITHHELD,
        person_ids=ids,
        detail={"recipient": recipient, "reason": reason},
    )
    return append(engine, event, at=at)


@dataclass(frozen=True)
class Expiry:
    """What :func:`expire` destroyed (in a dry run, would): every event from the start of
    the trail through ``through_seq``, all recorded before ``before``."""

    before: datetime
    destroyed: int
    through_seq: int = 0  # the last event destroyed; 0 when none
    through_hash: str | None = None
    record: AuditRecord | None = None  # the audit_retention event; None in a dry run


def _base_row(conn: Connection) -> tuple[int, str]:
    row = conn.execute(sa.select(audit_chain_base.c.seq, audit_chain_base.c.hash)).one_or_none()
    return (0, GENESIS) if row is None else (row.seq, row.hash)


def _declared_cut(conn: Connection) -> tuple[int, str | None]:
    """(through_seq, through_hash) of the latest ``audit_retention`` event; (0, None) when
    retention never cut the trail (or the event's detail is unreadable)."""
    text = conn.execute(
        sa.select(audit_events.c.detail)
        .where(audit_events.c.action == AUDIT_RETENTION)
        .order_by(audit_events.c.seq.desc())
        .limit(1)
    ).scalar_one_or_none()
    try:
        said = json.loads(text) if text else {}
    except ValueError:
        said = {}
    if not isinstance(said, dict) or not isinstance(said.get("through_seq"), int):
        return 0, None
    return said["through_seq"], said.get("through_hash")


def _due(conn: Connection, base_seq: int, before: datetime) -> tuple[int, int]:
    """(last seq to destroy, events to destroy): the trail's oldest events, up to the last
    one before the first event recorded at or after ``before``. An old event recorded after
    a newer one waits for the next run, so the trail never gets a gap."""
    first_kept = conn.execute(
        sa.select(sa.func.min(audit_events.c.seq)).where(
            audit_events.c.seq > base_seq, audit_events.c.occurred_at >= before
        )
    ).scalar_one()
    if first_kept is None:
        cut = conn.execute(sa.select(audit_chain_head.c.seq)).scalar_one()
    else:
        cut = first_kept - 1
    if cut <= base_seq:
        return base_seq, 0
    count = conn.execute(
        sa.select(sa.func.count()).select_from(audit_events).where(audit_events.c.seq <= cut)
    ).scalar_one()
    return cut, count


@contextmanager
def _holding_the_chain(engine: Engine) -> Iterator[Connection]:
    """A transaction in which nothing else can append: this process's appenders (the
    committer), other processes' (the lock file) and every connection's (the head row)."""
    committer = _committer(engine)
    with committer.commit, committer.between_processes(), engine.begin() as conn:
        _lock_head(conn)
        yield conn


_CUT_CHUNK = 5_000  # events deleted per transaction: an appender waits a fraction of a second
_CUT_PAUSE = 0.01  # seconds between chunks: locks are not fair, so let waiting appenders in


def _destroy_through(engine: Engine, target: int) -> None:
    """Delete the trail's events up to ``target`` (a cut already declared by an
    ``audit_retention`` event), a chunk per transaction, moving the base with each, so
    appenders wait for one chunk, never for the whole cut, and the trail verifies between
    chunks (it chains on from the base). A run that dies part way is finished by the next."""
    while True:
        with _holding_the_chain(engine) as conn:
            base_seq, _ = _base_row(conn)
            if base_seq >= target:
                return
            end = min(base_seq + _CUT_CHUNK, target)
            digest = conn.execute(
                sa.select(audit_events.c.hash).where(audit_events.c.seq == end)
            ).scalar_one_or_none()
            if digest is None:
                raise AuditError(f"seq {end}: missing, so the cut cannot end there")
            conn.execute(audit_event_persons.delete().where(audit_event_persons.c.seq <= end))
            conn.execute(audit_events.delete().where(audit_events.c.seq <= end))
            conn.execute(audit_chain_base.delete())
            conn.execute(audit_chain_base.insert().values(id=1, seq=end, hash=digest))
        time.sleep(_CUT_PAUSE)


def expire(
    engine: Engine,
    before: datetime,
    *,
    actor: tuple[str, str],
    keep_years: int,
    dry_run: bool = False,
) -> Expiry:
    """Destroy the trail's events recorded before ``before`` (its keep period over).

    First the events due are verified, outside any lock: retention refuses to destroy a
    stretch of the trail that shows tampering (``AuditError`` naming the problems), since
    that would destroy the evidence. Then an ``audit_retention`` event by ``actor`` (user
    id, role) declares the cut: how many events, through which seq, and that event's hash.
    Then the events go, a chunk per transaction, the base following (:func:`_destroy_through`).
    A cut left unfinished (the process died) is finished first. A dry run only counts.
    """
    if before.tzinfo is None:
        raise AuditError(f"naive datetime {before!r}: audit times must be timezone-aware")
    if not holds_table(engine, audit_events.name):
        return Expiry(before, 0)
    if not dry_run:
        with engine.connect() as conn:
            declared, _ = _declared_cut(conn)
        _destroy_through(engine, declared)
    with engine.connect() as conn:
        base_seq, base_hash = _base_row(conn)
        cut, count = _due(conn, base_seq, before)
    if dry_run or not count:
        return Expiry(before, count, cut if count else 0)
    problems: list[str] = []
    last: sa.Row | None = None
    with engine.connect() as conn:
        for row in _walk(conn, base_seq, base_hash, problems, through=cut):
            last = row
    if last is None or last.seq != cut:
        problems.append(f"seq {cut}: the last event due to be destroyed is missing")
    if problems:
        raise AuditError(
            "the audit events due for retention do not verify, so none were destroyed "
            f"(destroying them would destroy the evidence): {'; '.join(problems[:5])}"
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    assert last is not None
    user_id, role = actor
    event = AuditEvent(
        user_id=user_id,
        role=role,
        purpose="retention",
        action=AUDIT_RETENTION,
        outcome="allowed",
        detail={
            "destroyed": count,
            "through_seq": cut,
            "through_hash": last.hash,
            "recorded_before": _iso(before),
            "keep_years": keep_years,
        },
    )
    with _holding_the_chain(engine) as conn:
        if _base_row(conn) != (base_seq, base_hash):
            raise AuditError("another retention run cut the audit trail meanwhile: run again")
        [record] = _append_in(conn, [_Pending(event, None)])
    _destroy_through(engine, cut)
    return Expiry(before, count, cut, last.hash, record)


def _record(row: sa.Row) -> AuditRecord:
    values = row._asdict()
    for name in ("tables", "columns", "person_ids"):
        values[name] = tuple(json.loads(values[name]))
    values["detail"] = None if values["detail"] is None else json.loads(values["detail"])
    return AuditRecord(**values)


def person_history(engine: Engine, person_ids: Iterable[str]) -> list[AuditRecord]:
    """Every event that touched any of these ids, oldest first.

    Pass a person's current id and their former ids (after merges and splits): the audit
    keeps the ids as they were when the data was read. A single id may be passed as a string.
    """
    if isinstance(person_ids, str):
        person_ids = [person_ids]
    ids = sorted({pid.strip() for pid in person_ids if pid and pid.strip()})
    if not ids:
        return []
    touched = sa.select(audit_event_persons.c.seq).where(audit_event_persons.c.person_id.in_(ids))
    query = sa.select(audit_events).where(audit_events.c.seq.in_(touched))
    with engine.connect() as conn:
        return [_record(row) for row in conn.execute(query.order_by(audit_events.c.seq))]


def events(
    engine: Engine,
    *,
    since: datetime | None = None,
    after_seq: int = 0,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[AuditRecord]:
    """Events recorded at or after ``since`` and after ``after_seq``, in chain order.

    ``newest_first`` with ``limit`` gives the latest events; ``after_seq`` pages forward.
    """
    query = sa.select(audit_events).where(audit_events.c.seq > after_seq)
    if since is not None:
        query = query.where(audit_events.c.occurred_at >= since)
    order = audit_events.c.seq.desc() if newest_first else audit_events.c.seq
    with engine.connect() as conn:
        return [_record(row) for row in conn.execute(query.order_by(order).limit(limit))]


def purpose_events(
    engine: Engine,
    purposes: Iterable[str],
    *,
    person_ids: Iterable[str] = (),
    action: str | None = None,
    exclude_actions: Iterable[str] = (),
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[AuditRecord], int]:
    """Events recorded for any of ``purposes`` (e.g. subject rights and retention), newest
    first, optionally only those touching ``person_ids`` or of one ``action``; with the
    total."""
    query = sa.select(audit_events).where(audit_events.c.purpose.in_(sorted(set(purposes))))
    excluded = sorted(set(exclude_actions))
    if excluded:
        query = query.where(audit_events.c.action.not_in(excluded))
    ids = sorted({p for p in person_ids if p})
    if ids:
        touched = sa.select(audit_event_persons.c.seq).where(
            audit_event_persons.c.person_id.in_(ids)
        )
        query = query.where(audit_events.c.seq.in_(touched))
    if action is not None:
        query = query.where(audit_events.c.action == action)
    total = sa.select(sa.func.count()).select_from(query.subquery())
    page = query.order_by(audit_events.c.seq.desc()).limit(limit).offset(offset)
    with engine.connect() as conn:
        return [_record(row) for row in conn.execute(page)], conn.execute(total).scalar_one()


def _stored_fields(row: sa.Row) -> tuple[dict[str, Any] | None, str | None]:
    """The hashed fields decoded from a stored row, or why they cannot be."""
    values = row._asdict()
    for name in ("tables", "columns", "person_ids", "detail"):
        text = values[name]
        if text is None and name == "detail":
            continue
        try:
            values[name] = json.loads(text)
        except (TypeError, ValueError):
            return None, f"{name} is not valid JSON"
        expected = dict if name == "detail" else list
        if not isinstance(values[name], expected):
            return None, f"{name} is not a JSON {'object' if name == 'detail' else 'list'}"
    if values["occurred_at"] is None:
        return None, "occurred_at is empty"
    return values, None


def _check_event(
    row: sa.Row, prev_seq: int, prev_hash: str, indexed: set[str], problems: list[str]
) -> None:
    seq = row.seq
    if seq != prev_seq + 1:
        gap = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1} to {seq - 1}"
        problems.append(f"seq {seq}: event(s) {gap} missing before it (deleted)")
    if row.prev_hash != prev_hash:
        before = f"seq {prev_seq}" if prev_seq else "the start of the chain"
        problems.append(
            f"seq {seq}: prev_hash does not match the hash of {before} "
            "(an event was deleted, inserted or rewritten before it)"
        )
    values, error = _stored_fields(row)
    if values is None:
        problems.append(f"seq {seq}: {error} (changed after it was written)")
        return
    if _hash(row.prev_hash, values) != row.hash:
        problems.append(f"seq {seq}: contents do not match its hash (a field was changed)")
    listed = {str(pid) for pid in values["person_ids"]}
    for pid in sorted(listed - indexed):
        problems.append(f"seq {seq}: person index lacks {pid} (a row was removed)")
    for pid in sorted(indexed - listed):
        problems.append(f"seq {seq}: person index lists {pid}, not in the event (a row was added)")


def _walk(
    conn: Connection,
    prev_seq: int,
    prev_hash: str,
    problems: list[str],
    through: int | None = None,
) -> Iterator[sa.Row]:
    """Check each event after ``prev_seq`` (through ``through``) in chain order against the
    one before it and the person index, adding to ``problems``; yield each row checked.
    Reads in batches, so memory stays flat however long the trail."""
    while True:
        query = sa.select(audit_events).where(audit_events.c.seq > prev_seq)
        if through is not None:
            query = query.where(audit_events.c.seq <= through)
        rows = conn.execute(query.order_by(audit_events.c.seq).limit(_BATCH)).all()
        if not rows:
            return
        index: dict[int, set[str]] = defaultdict(set)
        persons = sa.select(audit_event_persons).where(
            audit_event_persons.c.seq.between(rows[0].seq, rows[-1].seq)
        )
        for seq, person_id in conn.execute(persons):
            index[seq].add(person_id)
        for row in rows:
            _check_event(row, prev_seq, prev_hash, index.get(row.seq, set()), problems)
            yield row
            prev_seq, prev_hash = row.seq, row.hash


def _checked_base(conn: Connection, problems: list[str]) -> tuple[int, str]:
    """Where the chain starts: after the base retention left, if the latest
    ``audit_retention`` event declared a cut reaching it (else a problem: a prefix deleted
    by hand). A base short of the declared cut is a cut still under way; the walk from it
    checks that the events kept chain on from its hash."""
    rows = conn.execute(sa.select(audit_chain_base.c.seq, audit_chain_base.c.hash)).all()
    if len(rows) > 1:
        problems.append(f"seq 0: the chain base has {len(rows)} rows, not 1 (tampered)")
    if len(rows) != 1:
        return 0, GENESIS
    seq, digest = rows[0].seq, rows[0].hash
    through_seq, through_hash = _declared_cut(conn)
    if seq > through_seq or (seq == through_seq and digest != through_hash):
        problems.append(
            f"seq {seq}: the chain starts after seq {seq} (audit_chain_base), but no "
            "audit_retention event records that cut (events deleted outside retention)"
        )
    left = conn.execute(
        sa.select(audit_events.c.seq).where(audit_events.c.seq <= seq).order_by(audit_events.c.seq)
    ).scalars()
    for kept in left:
        problems.append(f"seq {kept}: still present though retention destroyed up to seq {seq}")
    return seq, digest


def verify(engine: Engine, anchor: tuple[int, str] | None = None) -> ChainReport:
    """Check every event's hash and link, the numbering, the head and the person index,
    from the start of the chain or from where retention cut it (:func:`expire`).

    ``anchor`` is a (seq, hash) recorded earlier outside the database (``sdv audit verify``
    prints the head): if the chain no longer holds it, the chain was rewritten. Events
    appended while this runs are checked too; nothing is locked.
    """
    problems: list[str] = []
    with engine.connect() as conn:
        # The head first: every event at or below it was committed with it.
        heads = conn.execute(sa.select(audit_chain_head.c.seq, audit_chain_head.c.hash)).all()
        if len(heads) != 1:
            problems.append(f"seq 0: the chain head has {len(heads)} rows, not 1 (tampered)")
        head_seq, head_hash = (heads[0].seq, heads[0].hash) if len(heads) == 1 else (None, None)
        base_seq, base_hash = _checked_base(conn, problems)
        prev_seq, checked, hash_at_head = base_seq, 0, None
        for row in _walk(conn, base_seq, base_hash, problems):
            if row.seq == head_seq:
                hash_at_head = row.hash
            prev_seq, checked = row.seq, checked + 1
        if head_seq:
            if hash_at_head is None and prev_seq < head_seq:
                problems.append(
                    f"seq {head_seq}: the chain head says the chain ends here but the last "
                    f"event is seq {prev_seq} (events deleted from the end)"
                )
            elif hash_at_head is None:
                problems.append(f"seq {head_seq}: the event the chain head names is missing")
            elif hash_at_head != head_hash:
                problems.append(
                    f"seq {head_seq}: hash differs from the chain head's (head mismatch)"
                )
        # Appenders move the head in the transaction that adds the event, so an event beyond
        # the head read *after* all events were read was not added by append.
        latest = conn.execute(sa.select(audit_chain_head.c.seq)).scalars().all()
        if len(latest) == 1:
            for seq in conn.execute(
                sa.select(audit_events.c.seq)
                .where(audit_events.c.seq > latest[0], audit_events.c.seq <= prev_seq)
                .order_by(audit_events.c.seq)
            ).scalars():
                problems.append(f"seq {seq}: beyond the chain head (inserted outside append)")
        orphans = sa.select(audit_event_persons).where(
            ~sa.exists().where(audit_events.c.seq == audit_event_persons.c.seq)
        )
        for seq, person_id in conn.execute(orphans.order_by(audit_event_persons.c.seq)):
            problems.append(f"seq {seq}: person index lists {person_id} but there is no such event")
        if anchor is not None:
            problems.extend(_anchor_problems(conn, anchor, base_seq, base_hash))
    return ChainReport(checked, problems, head_seq, head_hash, base_seq)


def _anchor_problems(
    conn: Connection, anchor: tuple[int, str], base_seq: int, base_hash: str
) -> list[str]:
    anchor_seq, anchor_hash = anchor
    if base_seq and anchor_seq < base_seq:
        return [
            f"seq {anchor_seq}: the anchor is older than the trail, which retention has "
            f"destroyed up to seq {base_seq}: it can no longer be checked; check against an "
            "anchor noted since (the head printed by this command)"
        ]
    if base_seq and anchor_seq == base_seq:
        found: str | None = base_hash
    else:
        found = conn.execute(
            sa.select(audit_events.c.hash).where(audit_events.c.seq == anchor_seq)
        ).scalar_one_or_none()
    if found != anchor_hash:
        return [
            f"seq {anchor_seq}: hash is not the anchor recorded earlier "
            "(the chain was rewritten at or before this event)"
        ]
    return []


def head(engine: Engine) -> tuple[int, str]:
    """The last seq and hash: note them somewhere safe to use as a later ``anchor``."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(audit_chain_head.c.seq, audit_chain_head.c.hash)).one()
    return row.seq, row.hash
