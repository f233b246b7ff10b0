"""The Family View API: search, child profile, household, timeline and involvement over HTTP.

Every data endpoint needs ``Authorization: Bearer <token>`` (tokens map to users in
``config/api_users.yaml``, see :mod:`api.users`) and reads only through the access layer,
which filters the answer by the user's role, organisation and stated purpose and appends
one audit event per call, also when it denies or finds nothing. ``X-Purpose`` states the
purpose of a request; without it the user's ``default_purpose`` is used.

Errors are ``{"detail": "..."}``: 401 (no or unknown bearer token, with
``WWW-Authenticate: Bearer``), 403 (the role may not read this, or not for that purpose),
404 (no such person *within the caller's access*: someone outside it is indistinguishable
from someone who does not exist), 400 (a request the access layer cannot serve), and
FastAPI's 422 for malformed parameters.

Every call to a data path is audited exactly once. The access layer records the calls it
serves; the API records the rest itself (action ``api``): a missing or unknown token (user
``anonymous``, role ``none``), malformed parameters, unknown paths and unexpected errors.
``/health``, ``/openapi.json`` and ``/docs`` read no data and are not audited.

Endpoints are ``async`` and hand their access-layer call (SQLite reads and the audit
append) to the thread pool, so requests are served concurrently and the event loop never
blocks. A plain ``def`` endpoint would cost a second hop: FastAPI then also validates the
answer in the thread pool. (No ``from __future__ import annotations`` here: FastAPI reads
the endpoints' annotations at run time, and some name objects local to :func:`create_app`.)
"""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.users import ApiUser, ApiUsers
from warehouse import audit
from warehouse.access import MAX_OFFSET, MAX_PAGE, AccessError, AccessLayer, NotFound, Page, User
from warehouse.analytics import MAX_SQL_CHARS
from warehouse.curated_schema import TABLES

API_VERSION = "1.0"
ANONYMOUS = User("anonymous", "none")
NO_TOKEN = "no valid bearer token"
UNAUDITED_PATHS = frozenset(
    {"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/favicon.ico"}
)
MAX_PURPOSE = 64

# Keys in the request's ASGI state (shared by the middleware, dependencies and handlers).
_AUDITED = "sdv_audited"  # an audit event for this request has been (or is being) appended
_USER = "sdv_user"  # the authenticated ApiUser
_REASON = "sdv_reason"  # why the request failed before reaching the access layer

Record = dict[str, Any]


# -- response models (for the OpenAPI schema; columns vary with the caller's role) --------


class ErrorOut(BaseModel):
    detail: str


class PageOut(BaseModel):
    items: list[Record]
    total: int
    limit: int
    offset: int


class RightsActionOut(BaseModel):
    seq: int
    occurred_at: datetime
    user_id: str
    role: str
    action: str
    outcome: str
    person_ids: list[str]
    reason: str | None
    detail: Record


class RightsLogOut(BaseModel):
    items: list[RightsActionOut]
    total: int
    limit: int
    offset: int


class SearchOut(BaseModel):
    items: list[Record]
    limit: int


class ChildProfileOut(BaseModel):
    summary: Record
    person: Record | None


class HouseholdOut(BaseModel):
    household: Record | None
    members: list[Record]


class AggregateOut(BaseModel):
    table: str
    items: list[Record]


class HealthOut(BaseModel):
    status: str


class QueryIn(BaseModel):
    sql: str = Field(
        min_length=1,
        max_length=MAX_SQL_CHARS,
        description="One SELECT over the analysts' pseudonymised tables (DuckDB SQL).",
    )
    max_rows: int | None = Field(
        None, ge=1, le=1_000_000, description="At most this many rows (and the role's limit)."
    )


class QueryColumnOut(BaseModel):
    name: str
    type: str


class QueryOut(BaseModel):
    columns: list[QueryColumnOut]
    rows: list[list[Any]]
    row_count: int
    truncated: bool


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A request the access layer cannot serve"},
    401: {"model": ErrorOut, "description": "No valid bearer token"},
    403: {"model": ErrorOut, "description": "The role may not read this, or not for that purpose"},
    404: {"model": ErrorOut, "description": "Nothing found within the caller's access"},
    503: {"model": ErrorOut, "description": "Nothing published to serve yet; retry later"},
}
_QUERY_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    429: {"model": ErrorOut, "description": "Too many of the role's queries running; retry"},
}


# -- auditing what the access layer does not see -------------------------------------------


def _state(scope: Scope) -> dict[str, Any]:
    return scope.setdefault("state", {})


def record_api_event(
    engine: Engine,
    path: str,
    user: User,
    purpose: str,
    outcome: str,
    reason: str,
    status: int,
) -> None:
    """Audit a call the access layer did not record (action ``api``)."""
    audit.append(
        engine,
        audit.AuditEvent(
            user_id=user.user_id,
            role=user.role,
            organisation=user.organisation,
            purpose=purpose,
            action="api",
            outcome=outcome,
            detail={"path": path, "status": status, "reason": reason},
        ),
    )


def _bearer_token(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1").strip() or None
    return None


class AuditEveryCall:
    """ASGI middleware: a data-path request that ends without an audit event gets one.

    The access layer audits what it serves and the bearer dependency audits a 401; this
    catches the rest (malformed parameters, unknown paths or methods, unexpected errors),
    attributing the call to the token's user when the token is valid.
    """

    def __init__(self, app: ASGIApp, engine: Engine, users: ApiUsers) -> None:
        self.app = app
        self.engine = engine
        self.users = users

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNAUDITED_PATHS:
            await self.app(scope, receive, send)
            return
        state = _state(scope)
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if not state.get(_AUDITED):
                await run_in_threadpool(self._record, scope, state, status)

    def _record(self, scope: Scope, state: dict[str, Any], status: int) -> None:
        api_user: ApiUser | None = state.get(_USER) or self.users.authenticate(_bearer_token(scope))
        purpose = (_header(scope, b"x-purpose") or "")[:MAX_PURPOSE]
        if api_user is None:
            user, purpose = ANONYMOUS, "none"
        else:
            user, purpose = api_user.user(), purpose or api_user.default_purpose
        reason = state.get(_REASON) or _reason_for(status)
        record_api_event(
            self.engine, scope["path"], user, purpose, _outcome(status), reason, status
        )


def _outcome(status: int) -> str:
    """How a request the access layer did not audit ended: a server error is not a refusal."""
    if status == 404:
        return "not_found"
    if status >= 500:
        return "error"
    return "allowed" if status < 400 else "denied"


def _reason_for(status: int) -> str:
    return {
        401: NO_TOKEN,
        404: "no such endpoint",
        405: "method not allowed",
        422: "invalid request",
    }.get(status, "server error" if status >= 500 else f"status {status}")


# -- the application ------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """The authenticated user of a request and the purpose they read for."""

    api_user: ApiUser
    purpose: str

    @property
    def user(self) -> User:
        return self.api_user.user()


def _page(page: Page) -> dict[str, Any]:
    return {"items": page.items, "total": page.total, "limit": page.limit, "offset": page.offset}


def create_app(access: AccessLayer, users: ApiUsers) -> FastAPI:
    """The API over ``access`` (filtering and auditing) for the users in ``users``."""
    engine = access.audit_engine
    app = FastAPI(
        title="Single Digital View: Family View API",
        version=API_VERSION,
        description=(
            "Role-filtered, audited reads of the published Family View (synthetic data). "
            "Send `Authorization: Bearer <token>`; state the purpose in `X-Purpose` "
            "(default: your configured purpose). Every call is audited."
        ),
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.access = access
    app.state.users = users
    app.add_middleware(AuditEveryCall, engine=engine, users=users)
    bearer = HTTPBearer(auto_error=False, description="A token minted by `sdv token new`.")

    async def caller(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        x_purpose: Annotated[
            str | None,
            Header(
                max_length=MAX_PURPOSE,
                description="Why you are reading: one of your role's purposes.",
            ),
        ] = None,
    ) -> Caller:
        # Async: a token check is a hash and a lookup, not worth a hop to the thread pool
        # (the endpoints, which read DuckDB and write the audit, run there).
        api_user = users.authenticate(credentials.credentials if credentials else None)
        if api_user is None:
            request.state.sdv_audited = True
            await run_in_threadpool(
                record_api_event,
                engine,
                request.url.path,
                ANONYMOUS,
                "none",
                "denied",
                NO_TOKEN,
                401,
            )
            raise HTTPException(
                status_code=401,
                detail="a valid bearer token is required: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request.state.sdv_user = api_user
        purpose = (x_purpose or "").strip() or api_user.default_purpose
        return Caller(api_user, purpose)

    Authorised = Annotated[Caller, Depends(caller)]
    PersonId = Annotated[str, Path(min_length=1, max_length=64, description="A person id.")]

    def audited(request: Request) -> None:
        """The access layer call that follows appends this request's audit event."""
        request.state.sdv_audited = True

    @app.exception_handler(AccessError)
    async def _access_error(request: Request, exc: AccessError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The audit names the offending parameters, never their values (search terms).
        where = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        request.state.sdv_reason = f"invalid request: {', '.join(where) or 'body'}"
        return await request_validation_exception_handler(request, exc)

    @app.get("/health", response_model=HealthOut, tags=["service"])
    async def health() -> dict[str, str]:
        """Liveness: the API is up. Needs no token and reads no data."""
        return {"status": "ok"}

    @app.get("/people/search", response_model=SearchOut, responses=_ERRORS, tags=["people"])
    async def search_people(
        request: Request,
        who: Authorised,
        name: Annotated[
            str,
            Query(
                min_length=1,
                max_length=200,
                description="Forename and surname, or a surname; typos and nicknames are "
                "tolerated.",
            ),
        ],
        dob: Annotated[
            date | None,
            Query(description="Date of birth (YYYY-MM-DD); day and month swapped also match."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        """People by name and optionally date of birth, best match first, within your access.

        The audit records that a search was made and whom it returned, never the terms."""
        audited(request)
        items = await run_in_threadpool(access.search, who.user, who.purpose, name, dob, limit)
        return {"items": items, "limit": limit}

    @app.get("/people/{person_id}", response_model=Record, responses=_ERRORS, tags=["people"])
    async def person(request: Request, who: Authorised, person_id: PersonId) -> dict[str, Any]:
        """One person's golden record, as far as your role may see it."""
        audited(request)
        return await run_in_threadpool(access.person, who.user, who.purpose, person_id)

    @app.get(
        "/children/{person_id}",
        response_model=ChildProfileOut,
        responses=_ERRORS,
        tags=["children"],
    )
    async def child_profile(
        request: Request, who: Authorised, person_id: PersonId
    ) -> dict[str, Any]:
        """The child profile: the child summary plus what your role may see of the record."""
        audited(request)
        return await run_in_threadpool(access.child_profile, who.user, who.purpose, person_id)

    @app.get(
        "/people/{person_id}/household",
        response_model=HouseholdOut,
        responses=_ERRORS,
        tags=["people"],
    )
    async def household(request: Request, who: Authorised, person_id: PersonId) -> dict[str, Any]:
        """Who the person lives with: the household and its members."""
        audited(request)
        return await run_in_threadpool(access.household, who.user, who.purpose, person_id)

    @app.get(
        "/people/{person_id}/timeline",
        response_model=PageOut,
        responses=_ERRORS,
        tags=["people"],
    )
    async def timeline(
        request: Request,
        who: Authorised,
        person_id: PersonId,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        """The person's events your role may see, newest first, a page at a time."""
        audited(request)
        page = await run_in_threadpool(
            access.timeline, who.user, who.purpose, person_id, limit, offset
        )
        return _page(page)

    @app.get(
        "/people/{person_id}/involvement",
        response_model=PageOut,
        responses=_ERRORS,
        tags=["people"],
    )
    async def involvement(request: Request, who: Authorised, person_id: PersonId) -> dict[str, Any]:
        """Agencies and services involved with the person, open first."""
        audited(request)
        return _page(await run_in_threadpool(access.involvement, who.user, who.purpose, person_id))

    @app.get(
        "/aggregates/{table}",
        response_model=AggregateOut,
        responses=_ERRORS,
        tags=["aggregates"],
    )
    async def aggregate(
        request: Request,
        who: Authorised,
        table: Annotated[str, Path(min_length=1, max_length=64)],
    ) -> dict[str, Any]:
        """A published aggregate; counts under the minimum are null (suppressed)."""
        if table not in TABLES or not TABLES[table].aggregate:
            # The access layer refuses this before it audits: record it here.
            reason = f"no aggregate {table!r}"
            audited(request)
            await run_in_threadpool(
                record_api_event,
                engine,
                request.url.path,
                who.user,
                who.purpose,
                "not_found",
                reason,
                404,
            )
            raise NotFound(f"{reason}; aggregates: {', '.join(_aggregates())}")
        audited(request)
        items = await run_in_threadpool(access.aggregate, who.user, who.purpose, table)
        return {"table": table, "items": items}

    @app.post(
        "/analytics/query",
        response_model=QueryOut,
        responses=_QUERY_ERRORS,
        tags=["analytics"],
    )
    async def analytics_query(request: Request, who: Authorised, body: QueryIn) -> dict[str, Any]:
        """SQL over the analysts' pseudonymised file, for pseudonymised roles (analysts).

        One `SELECT` (DuckDB SQL) over the tables of `analyst.duckdb`, read-only, within
        the role's limits (`query` in `config/policy.yaml`: rows, seconds, memory). The
        audit records the query, the tables it read and the answer's size. `truncated` is
        true when there were more rows than `max_rows` or the role's limit. 429: the role
        already has its `concurrent` queries running; retry when one has finished."""
        audited(request)
        answer = await run_in_threadpool(
            access.query, who.user, who.purpose, body.sql, body.max_rows
        )
        return {
            "columns": [{"name": name, "type": kind} for name, kind in answer.columns],
            "rows": answer.rows,
            "row_count": len(answer.rows),
            "truncated": answer.truncated,
        }

    @app.get(
        "/rights/actions",
        response_model=RightsLogOut,
        responses=_ERRORS,
        tags=["subject rights"],
    )
    async def rights_actions(
        request: Request,
        who: Authorised,
        person_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        action: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=32,
                description="e.g. restrict, rectify, subject_access_export, erase, retention",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        """Subject-rights actions (who, when, why), newest first: the DPO's record."""
        audited(request)
        page = await run_in_threadpool(
            access.rights_actions, who.user, who.purpose, person_id, action, limit, offset
        )
        return _page(page)

    return app


def _aggregates() -> list[str]:
    return [name for name, table in TABLES.items() if table.aggregate]
