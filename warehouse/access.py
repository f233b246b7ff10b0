"""The access layer: the only way a user reads the curated Family View.

Neither DuckDB nor SQLite has users, grants or row-level security, so this module is where
need-to-know is enforced. Every read:

1. names a :class:`User` (id, role, organisation) and a purpose; an unknown role, or a
   purpose the role does not list, is refused;
2. runs a fixed, parameterised query generated from the role policy: only granted columns,
   only rows in the role's scope (e.g. a school DSL's own pupils and their households),
   only granted agencies; user input only ever travels as query parameters;
3. runs on a read-only connection to the published snapshot's serving copy (a row store
   of the same tables, :mod:`warehouse.serving`), whose authoriser allows nothing but
   reading: no attaching files, no pragmas, no writes;
4. appends one audit event (who, role, organisation, purpose, lawful basis, tables,
   columns and person ids returned), also when access is denied, nothing is found or the
   read fails (outcome ``error``, with the exception's type but not its message).

A person outside the caller's scope is indistinguishable from one that does not exist
(:class:`NotFound`), so probing ids reveals nothing. A table the role may not read at all
is :class:`AccessDenied`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy.engine import Engine

from matching.standardise import nickname_table
from warehouse import analytics, audit, restriction
from warehouse.curated_schema import TABLES
from warehouse.name_index import NameIndex
from warehouse.policy import Grant, Policy, Role
from warehouse.publish import SnapshotStore
from warehouse.serving import ServingError, open_serving

MAX_PAGE = 500
# Purposes under which subject-rights actions (SAR, rectification, restriction, erasure)
# and retention runs are written to the audit; the DPO reads them back (rights_actions).
RIGHTS_PURPOSES = (audit.RIGHTS_PURPOSE, "retention")
# Far beyond any real page, and within the 64-bit offsets DuckDB and SQLite take (a Python
# int is unbounded: an offset of 2**63 used to fail in the database, a 500 from the API).
MAX_OFFSET = 1_000_000_000
# Audit actions of reads (this layer's and the API's own): a DPO reading a person for a
# request is not itself a subject-rights action, so the log leaves these out.
READ_ACTIONS = frozenset(
    {"read", "person", "child_profile", "household", "search", "rights_log", "api"}
    | {"timeline", "involvement", "relationships", "query"}
)


class AccessError(Exception):
    """A read that cannot be served; ``status`` is the HTTP status the API answers with.

    ``audit_reason``, when given, is what the audit records instead of the message: an
    analyst's failed query is told DuckDB's message, which can quote a value."""

    status = 400

    def __init__(self, message: str, audit_reason: str | None = None) -> None:
        super().__init__(message)
        self.audit_reason = audit_reason


class AccessDenied(AccessError):
    status = 403


class NotFound(AccessError):
    status = 404


class Busy(AccessError):
    """Too many of the role's queries are running: retry when one has finished."""

    status = 429


class Unavailable(AccessError):
    """Nothing can be served now: no snapshot published yet, or its serving copy cannot be
    read. The server's state, not the request's fault, so a client may retry later."""

    status = 503


def _check_offset(offset: int) -> None:
    if not 0 <= offset <= MAX_OFFSET:
        raise AccessError(f"offset must be between 0 and {MAX_OFFSET}")


@dataclass(frozen=True)
class User:
    user_id: str
    role: str
    organisation: str | None = None


@dataclass
class Page:
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


@dataclass
class _Trail:
    """What one request read, for its audit event."""

    tables: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    person_ids: set[str] = field(default_factory=set)
    detail: dict[str, Any] = field(default_factory=dict)  # added to the event's detail

    def saw(self, grant: Grant, rows: Sequence[dict[str, Any]]) -> None:
        if grant.table not in self.tables:
            self.tables.append(grant.table)
        self.columns.extend(f"{grant.table}.{c}" for c in grant.columns)
        for row in rows:
            for key in ("person_id", "related_person_id"):
                if row.get(key):
                    self.person_ids.add(row[key])


_READING = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION})


def _read_only(action: int, table: str | None, *_args: Any) -> int:
    """SQLite authoriser: reading is all a request's SQL may do.

    Preparing ``json_each`` (how id lists travel as one parameter) reports an update of
    ``sqlite_master``'s columns; nothing can be written anyway (the file is opened
    read-only), so that one is let through."""
    if action in _READING or (action == sqlite3.SQLITE_UPDATE and table == "sqlite_master"):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


class _Snapshots:
    """Read-only connections to the current snapshot's serving copy, pooled.

    The pointer is checked on every request. When it has moved (a publish, a rollback, or
    an erasure or retention run that rewrote the snapshot), the idle connections to the
    old file are closed at once and those still serving a request are closed when it
    ends: an erased person's rows in a deleted file do not stay readable through an open
    handle for longer than a request. A request keeps the snapshot it started on.
    """

    MAX_IDLE = 64

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self.name: str | None = None
        self._idle: list[sqlite3.Connection] = []  # connections to snapshot ``name``
        self._names: tuple[str, NameIndex] | None = None  # (snapshot, its name index)

    def _pointer_stamp(self) -> tuple[int, int]:
        stat = os.stat(self.store.root / "CURRENT.json")
        return stat.st_mtime_ns, stat.st_ino

    def _open(self, name: str) -> sqlite3.Connection:
        try:
            con = open_serving(self.store.path(name))
        except ServingError as err:
            raise Unavailable(str(err)) from None
        con.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        con.set_authorizer(_read_only)
        return con

    @contextmanager
    def connection(self) -> Iterator[tuple[str, sqlite3.Connection]]:
        """(snapshot name, a connection to its serving copy) for one request."""
        try:
            stamp = self._pointer_stamp()
        except FileNotFoundError:
            raise Unavailable("nothing has been published yet") from None
        stale: list[sqlite3.Connection] = []
        with self._lock:
            if stamp != self._stamp:
                current = self.store.current()
                assert current is not None
                self._stamp, self.name = stamp, current.snapshot
                stale, self._idle = self._idle, []
            name = self.name
            assert name is not None
            con = self._idle.pop() if self._idle else None
        for old in stale:
            old.close()
        if con is None:
            con = self._open(name)
        try:
            yield name, con
        finally:
            with self._lock:
                if name == self.name and len(self._idle) < self.MAX_IDLE:
                    self._idle.append(con)
                    con = None
            if con is not None:
                con.close()

    def name_index(self, snapshot: str, cursor: sqlite3.Cursor) -> NameIndex:
        """The search index of ``snapshot`` (which ``cursor`` reads), built on first use."""
        with self._lock:
            if self._names is None or self._names[0] != snapshot:
                self._names = (snapshot, NameIndex.load(cursor))
            return self._names[1]


def _quoted(columns: Sequence[str], alias: str = "t") -> str:
    return ", ".join(f'{alias}."{c}"' for c in columns)


def _ordered(columns: Sequence[str]) -> str:
    """Ascending, nulls last (DuckDB's default, which the API has always answered in)."""
    return ", ".join(f't."{c}" nulls last' for c in columns)


class AccessLayer:
    """Role-filtered, audited reads of the published Family View."""

    def __init__(self, store: SnapshotStore, policy: Policy, audit_engine: Engine) -> None:
        self.policy = policy
        self.audit_engine = audit_engine
        self._snapshots = _Snapshots(store)
        # Per request (requests run on many threads): the records under restriction that
        # this caller may not see, read from the operational store when the request starts.
        self._state = threading.local()
        # Per role: the analyst queries it may run at once (its ``query.concurrent``).
        self._query_slots: dict[str, threading.BoundedSemaphore] = {}
        self._slots_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def _role(self, user: User, purpose: str) -> Role:
        role = self.policy.role(user.role)
        if role is None:
            raise AccessDenied(f"unknown role {user.role!r}: access is denied by default")
        if purpose not in role.purposes:
            raise AccessDenied(
                f"purpose {purpose!r} is not one of role {user.role}'s purposes: "
                f"{', '.join(role.purposes)}"
            )
        if role.scope is not None and not user.organisation:
            raise AccessDenied(f"role {user.role} reads for an organisation; none given")
        return role

    def _grant(self, user: User, table: str) -> Grant:
        grant = self.policy.grant(user.role, table)
        if grant is None:
            raise AccessDenied(f"role {user.role} may not read {table}")
        return grant

    @contextmanager
    def _audited(
        self, user: User, purpose: str, action: str, detail: dict[str, Any]
    ) -> Iterator[tuple[Role, _Trail]]:
        """The role's check and the one audit event of a request, whatever its outcome."""
        trail = _Trail()
        # "allowed" only once the read has completed: anything that escapes otherwise (a
        # bug, a broken snapshot) must not be on record as data shared.
        outcome, lawful_basis = "error", None
        self._state.snapshot = None
        try:
            role = self._role(user, purpose)
            lawful_basis = role.lawful_basis
            yield role, trail
            outcome = "allowed"
        except NotFound:
            outcome = "not_found"
            raise
        except AccessError as err:  # denied, or a request that cannot be served
            outcome = "denied"
            detail = {**detail, "reason": err.audit_reason or str(err)}
            raise
        except BaseException as err:
            # The type only: a database error's message can quote the data or the query.
            detail = {**detail, "error": type(err).__name__}
            raise
        finally:
            audit.append(
                self.audit_engine,
                audit.AuditEvent(
                    user_id=user.user_id,
                    role=user.role,
                    organisation=user.organisation,
                    purpose=purpose,
                    lawful_basis=lawful_basis,
                    action=action,
                    outcome=outcome,
                    tables=tuple(trail.tables),
                    columns=tuple(dict.fromkeys(trail.columns)),
                    person_ids=tuple(sorted(trail.person_ids)),
                    detail={**detail, **trail.detail, "snapshot": self._state.snapshot},
                ),
            )

    @contextmanager
    def _request(
        self, user: User, purpose: str, action: str, detail: dict[str, Any]
    ) -> Iterator[tuple[Role, _Trail, sqlite3.Cursor]]:
        """An audited read of the current snapshot's serving copy."""
        with self._audited(user, purpose, action, detail) as (role, trail):
            self._state.restricted = (
                [] if role.sees_restricted else restriction.restricted_records(self.audit_engine)
            )
            with self._snapshots.connection() as (snapshot, con):
                self._state.snapshot = snapshot
                cursor = con.cursor()
                try:
                    yield role, trail, cursor
                finally:
                    cursor.close()

    def _members(self, role: Role, user: User, grant: Grant) -> tuple[str | None, list[Any]]:
        """A subquery of the person ids in the grant's rows, or None: everyone."""
        if grant.rows == "all" or role.scope is None:
            return None, []
        members = (
            "select person_id from person_organisations "
            "where organisation_type = ? and organisation_id = ?"
        )
        params: list[Any] = [role.scope.organisation_type, user.organisation]
        if grant.rows == "scope" and role.scope.households:
            members = (
                f"{members} union select m2.person_id from household_members m1 "
                f"join household_members m2 on m1.household_id = m2.household_id "
                f"where m1.person_id in ({members})"
            )
            params = params * 2
        return members, params

    def _hidden(self, column: str) -> tuple[str, list[Any]]:
        """Predicate keeping rows whose ``column`` is not a restricted person (Art. 18)."""
        restricted = getattr(self._state, "restricted", [])
        if not restricted:
            return "true", []
        return (
            f"{column} not in (select person_id from person_records "
            f"where record_id in (select value from json_each(?)))",
            [json.dumps(restricted)],
        )

    def _scope(self, role: Role, user: User, grant: Grant) -> tuple[str, list[Any]]:
        """SQL predicate on alias ``t`` (and its parameters) keeping the grant's rows:
        the role's scope, minus people under a restriction the role may not see."""
        members, params = self._members(role, user, grant)
        person_column = TABLES[grant.table].person_column
        clauses: list[str] = []
        if members is not None:
            if person_column is None:  # household: through its members
                clauses.append(
                    f"t.household_id in (select household_id from household_members "
                    f"where person_id in ({members}))"
                )
            else:
                clauses.append(f't."{person_column}" in ({members})')
        for column in ("person_id", "related_person_id"):
            if column in TABLES[grant.table].column_names:
                hidden, hidden_params = self._hidden(f"t.{column}")
                if hidden != "true":
                    clauses.append(hidden)
                    params = [*params, *hidden_params]
        return (" and ".join(clauses) or "true"), params

    def _select(
        self,
        cursor: sqlite3.Cursor,
        role: Role,
        user: User,
        grant: Grant,
        where: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> list[dict[str, Any]]:
        """Every row of the grant's table matching ``where`` (one person's, one household's):
        paged reads go through :meth:`_page`."""
        clauses, params = self._clauses(role, user, grant, where)
        sql = f'select {_quoted(grant.columns)} from "{grant.table}" t where {clauses}'
        rows = cursor.execute(sql, params).fetchall()
        return [dict(zip(grant.columns, row, strict=True)) for row in rows]

    def _page(
        self,
        cursor: sqlite3.Cursor,
        role: Role,
        user: User,
        grant: Grant,
        where: Sequence[tuple[str, Sequence[Any]]],
        order: str,
        limit: int,
        offset: int,
    ) -> Page:
        """One page of rows and the total, in one query (the window count)."""
        clauses, params = self._clauses(role, user, grant, where)
        sql = (
            f'select {_quoted(grant.columns)}, count(*) over () from "{grant.table}" t '
            f"where {clauses} order by {order} limit ? offset ?"
        )
        rows = cursor.execute(sql, [*params, limit, offset]).fetchall()
        if rows:
            total = rows[0][-1]
        else:  # past the last page (or nothing): the window had no row to count on
            total = self._count(cursor, role, user, grant, where) if offset else 0
        items = [dict(zip(grant.columns, row[:-1], strict=True)) for row in rows]
        return Page(items, total, limit, offset)

    def _count(
        self,
        cursor: sqlite3.Cursor,
        role: Role,
        user: User,
        grant: Grant,
        where: Sequence[tuple[str, Sequence[Any]]],
    ) -> int:
        clauses, params = self._clauses(role, user, grant, where)
        sql = f'select count(*) from "{grant.table}" t where {clauses}'
        return cursor.execute(sql, params).fetchall()[0][0]

    def _clauses(
        self, role: Role, user: User, grant: Grant, where: Sequence[tuple[str, Sequence[Any]]]
    ) -> tuple[str, list[Any]]:
        scope, params = self._scope(role, user, grant)
        clauses = [scope]
        if grant.agencies is not None:
            clauses.append(f"t.agency in ({', '.join('?' for _ in grant.agencies) or 'null'})")
            params += list(grant.agencies)
        for clause, values in where:
            clauses.append(clause)
            params += list(values)
        return " and ".join(clauses), params

    def _require_person(
        self,
        cursor: sqlite3.Cursor,
        role: Role,
        user: User,
        grant: Grant,
        person_id: str,
    ) -> None:
        """NotFound unless the person exists and is within the grant's rows."""
        members, params = self._members(role, user, grant)
        hidden, hidden_params = self._hidden("person_id")
        sql = f"select 1 from person where person_id = ? and {hidden}"
        params = [*hidden_params, *params]
        if members is not None:
            sql += f" and person_id in ({members})"
        if not cursor.execute(sql, [person_id, *params]).fetchall():
            raise NotFound(f"no person {person_id} within your access")

    def _person_row(
        self,
        cursor: sqlite3.Cursor,
        role: Role,
        user: User,
        grant: Grant,
        trail: _Trail,
        person_id: str,
        what: str,
    ) -> dict[str, Any]:
        """The person's row of the grant's table, recorded as seen; NotFound without one."""
        rows = self._select(cursor, role, user, grant, [("t.person_id = ?", [person_id])])
        if not rows:
            raise NotFound(f"no {what} {person_id} within your access")
        trail.saw(grant, rows)
        return rows[0]

    # -- reads ----------------------------------------------------------------------------

    def read(
        self,
        user: User,
        purpose: str,
        table: str,
        *,
        person_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page:
        """Rows of one curated table the user may see (optionally one person's)."""
        limit = max(1, min(limit, MAX_PAGE))
        detail = {"table": table, "person_id": person_id, "limit": limit, "offset": offset}
        with self._request(user, purpose, "read", detail) as (role, trail, cursor):
            _check_offset(offset)
            grant = self._grant(user, table)
            where: list[tuple[str, Sequence[Any]]] = []
            person_column = TABLES[grant.table].person_column
            if person_id is not None:
                if person_column is None:
                    raise AccessError(f"{table} is not about one person")
                where.append((f't."{person_column}" = ?', [person_id]))
            page = self._page(
                cursor, role, user, grant, where, _ordered(grant.columns[:3]), limit, offset
            )
            trail.saw(grant, page.items)
            return page

    def person(self, user: User, purpose: str, person_id: str) -> dict[str, Any]:
        """One person's golden record, as far as the role may see it."""
        with self._request(user, purpose, "person", {"person_id": person_id}) as (
            role,
            trail,
            cursor,
        ):
            grant = self._grant(user, "person")
            return self._person_row(cursor, role, user, grant, trail, person_id, "person")

    def child_profile(self, user: User, purpose: str, person_id: str) -> dict[str, Any]:
        """The front end's child page: the child summary row plus what the role may see of
        the golden record."""
        with self._request(user, purpose, "child_profile", {"person_id": person_id}) as (
            role,
            trail,
            cursor,
        ):
            grant = self._grant(user, "child_summary")
            summary = self._person_row(cursor, role, user, grant, trail, person_id, "child")
            profile = {"summary": summary, "person": None}
            person_grant = self.policy.grant(user.role, "person")
            if person_grant is not None:
                people = self._select(
                    cursor, role, user, person_grant, [("t.person_id = ?", [person_id])]
                )
                trail.saw(person_grant, people)
                profile["person"] = people[0] if people else None
            return profile

    def household(self, user: User, purpose: str, person_id: str) -> dict[str, Any]:
        """Who the person lives with: the household and its members (with the names the
        role may see)."""
        with self._request(user, purpose, "household", {"person_id": person_id}) as (
            role,
            trail,
            cursor,
        ):
            members_grant = self._grant(user, "household_members")
            own = self._select(
                cursor, role, user, members_grant, [("t.person_id = ?", [person_id])]
            )
            if not own:
                raise NotFound(f"no person {person_id} within your access")
            household_id = own[0]["household_id"]
            members = sorted(
                self._select(
                    cursor, role, user, members_grant, [("t.household_id = ?", [household_id])]
                ),
                key=lambda m: m["person_id"],
            )
            trail.saw(members_grant, members)
            result: dict[str, Any] = {"household": None, "members": members}
            household_grant = self.policy.grant(user.role, "household")
            if household_grant is not None:
                rows = self._select(
                    cursor, role, user, household_grant, [("t.household_id = ?", [household_id])]
                )
                trail.saw(household_grant, rows)
                result["household"] = rows[0] if rows else None
            person_grant = self.policy.grant(user.role, "person")
            if person_grant is not None and members:
                ids = [m["person_id"] for m in members]
                people = self._select(
                    cursor,
                    role,
                    user,
                    person_grant,
                    [(f"t.person_id in ({', '.join('?' for _ in ids)})", ids)],
                )
                trail.saw(person_grant, people)
                by_id = {p["person_id"]: p for p in people}
                for member in members:
                    member["person"] = by_id.get(member["person_id"])
            return result

    def _person_rows(
        self, user: User, purpose: str, table: str, person_id: str, limit: int, offset: int
    ) -> Page:
        limit = max(1, min(limit, MAX_PAGE))
        detail = {"person_id": person_id, "limit": limit, "offset": offset}
        with self._request(user, purpose, table, detail) as (role, trail, cursor):
            _check_offset(offset)
            grant = self._grant(user, table)
            self._require_person(cursor, role, user, grant, person_id)
            where = [("t.person_id = ?", [person_id])]
            order = {
                "timeline": "t.event_date desc nulls last, t.event_id nulls last",
                "involvement": "t.status desc nulls last, t.start_date desc nulls last, "
                "t.agency nulls last, t.service nulls last",
            }.get(table, _ordered(grant.columns[:2]))
            page = self._page(cursor, role, user, grant, where, order, limit, offset)
            trail.saw(grant, page.items)
            trail.person_ids.add(person_id)
            return page

    def timeline(
        self, user: User, purpose: str, person_id: str, limit: int = 50, offset: int = 0
    ) -> Page:
        """The person's events, newest first, paginated."""
        return self._person_rows(user, purpose, "timeline", person_id, limit, offset)

    def involvement(self, user: User, purpose: str, person_id: str) -> Page:
        """Agencies' services for the person, open first."""
        return self._person_rows(user, purpose, "involvement", person_id, MAX_PAGE, 0)

    def relationships(self, user: User, purpose: str, person_id: str) -> Page:
        return self._person_rows(user, purpose, "relationships", person_id, MAX_PAGE, 0)

    def search(
        self,
        user: User,
        purpose: str,
        name: str,
        dob: date | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """People by name (typos and nicknames tolerated) and optionally date of birth
        (day and month swapped also found), best match first, within the role's scope."""
        limit = max(1, min(limit, 100))
        # The audit records that a search was made and whom it returned, not the terms.
        detail = {"by": ["name", "dob"] if dob else ["name"], "limit": limit}
        with self._request(user, purpose, "search", detail) as (role, trail, cursor):
            grant = self._grant(user, "person")
            words = ["".join(ch for ch in w.lower() if "a" <= ch <= "z") for w in name.split()]
            words = [w for w in words if w]
            if not words:
                raise AccessError("search needs a name")
            surname, forename = words[-1], words[0] if len(words) > 1 else None
            keys = list(nickname_table().get(forename, (forename,))) if forename else []
            names = self._snapshots.name_index(self._state.snapshot, cursor)
            found = names.candidates(surname, forename, keys)
            scope, scope_params = self._scope(role, user, grant)
            exact, exact_params, dob_clause, dob_params = "true", [], "true", []
            if dob is not None:  # dates are ISO text in the serving copy
                swapped = _swapped(dob)
                exact, exact_params = "t.dob is ?", [dob.isoformat()]
                dob_clause = "(t.dob = ? or t.dob = ? or t.dob is null)"
                dob_params = [dob.isoformat(), (swapped or dob).isoformat()]
            sql = (
                f"select {_quoted(grant.columns)}, t.person_id, {exact} from person t "
                f"where t.person_id in (select value from json_each(?)) "
                f"and {scope} and {dob_clause}"
            )
            # Ranked here: exact date of birth first, then the name score, then the id.
            params = [*exact_params, json.dumps(list(found)), *scope_params, *dob_params]
            rows = cursor.execute(sql, params)
            rows = rows.fetchall()
            rows.sort(key=lambda r: (not r[-1], -found[r[-2]], r[-2]))
            width = len(grant.columns)
            items = [
                {
                    **dict(zip(grant.columns, row[:width], strict=True)),
                    "score": round(found[row[-2]], 3),
                }
                for row in rows[:limit]
            ]
            trail.saw(grant, items)
            return items

    def rights_actions(
        self,
        user: User,
        purpose: str,
        person_id: str | None = None,
        action: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """The record of subject-rights actions (who, when, why), newest first: for roles
        with ``reads_rights_log``. Each action was written to the audit when it was taken;
        this is the DPO's window onto them, and reading it is audited like any read."""
        limit = max(1, min(limit, MAX_PAGE))
        detail = {"person_id": person_id, "action": action, "limit": limit, "offset": offset}
        with self._request(user, purpose, "rights_log", detail) as (role, trail, _cursor):
            if not role.reads_rights_log:
                raise AccessDenied(f"role {user.role} may not read the subject-rights log")
            _check_offset(offset)
            records, total = audit.purpose_events(
                self.audit_engine,
                RIGHTS_PURPOSES,
                person_ids=[person_id] if person_id else (),
                action=action,
                exclude_actions=READ_ACTIONS,
                limit=limit,
                offset=offset,
            )
            items = [
                {
                    "seq": r.seq,
                    "occurred_at": r.occurred_at,
                    "user_id": r.user_id,
                    "role": r.role,
                    "action": r.action,
                    "outcome": r.outcome,
                    "person_ids": list(r.person_ids),
                    "reason": (r.detail or {}).get("reason"),
                    "detail": r.detail or {},
                }
                for r in records
            ]
            trail.person_ids.update(p for item in items for p in item["person_ids"])
            return Page(items, total, limit, offset)

    def query(
        self, user: User, purpose: str, sql: str, max_rows: int | None = None
    ) -> analytics.Answer:
        """An analyst's SQL over the current analysts' file (:mod:`warehouse.analytics`):
        for pseudonymised roles only, within the role's ``query`` limits. The audit holds
        the SQL, the tables it read, the answer's columns and row count; a query that fails
        is on record with why, but not DuckDB's message, which can quote a value."""
        with self._audited(user, purpose, "query", {"sql": sql}) as (role, trail):
            if role.dataset != "pseudonymised":
                raise AccessDenied(
                    f"role {user.role} reads the Family View through its endpoints; "
                    "SQL is for pseudonymised roles, over the analysts' file"
                )
            store = self._snapshots.store
            current = store.current()
            if current is None or current.analyst is None:
                raise Unavailable("no analysts' file has been published yet")
            self._state.snapshot = current.snapshot
            with self._query_slot(user.role, role.query.concurrent):
                try:
                    answer = analytics.run(store.path(current.analyst), sql, role.query, max_rows)
                except analytics.FileUnavailable as err:
                    raise Unavailable(str(err)) from None
                except analytics.QueryError as err:
                    raise AccessError(str(err), err.audit_reason) from None
            trail.tables.extend(answer.tables)
            trail.detail.update(
                analyst_file=current.analyst,
                answer_columns=[name for name, _ in answer.columns],
                rows=len(answer.rows),
                truncated=answer.truncated,
            )
            return answer

    @contextmanager
    def _query_slot(self, role: str, concurrent: int) -> Iterator[None]:
        """One of the role's ``concurrent`` query slots for this query, or :class:`Busy`."""
        with self._slots_lock:
            slots = self._query_slots.setdefault(role, threading.BoundedSemaphore(concurrent))
        if not slots.acquire(blocking=False):
            raise Busy(
                f"{concurrent} queries of role {role} are already running (the role's "
                "query.concurrent): retry when one has finished"
            )
        try:
            yield
        finally:
            slots.release()

    def aggregate(self, user: User, purpose: str, table: str) -> list[dict[str, Any]]:
        """A published aggregate (small counts already suppressed)."""
        if table not in TABLES or not TABLES[table].aggregate:
            raise NotFound(f"no aggregate {table!r}")
        return self.read(user, purpose, table, limit=MAX_PAGE).items


def _swapped(value: date) -> date | None:
    """The date with day and month exchanged, when that is a different valid date."""
    if value.day > 12 or value.day == value.month:
        return None
    return date(value.year, value.day, value.month)
