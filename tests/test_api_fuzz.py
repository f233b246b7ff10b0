"""The Family View API fuzzed from its own OpenAPI schema (schemathesis, in-process over ASGI).

Every operation in ``/openapi.json`` gets generated requests (valid and invalid parameters,
odd headers, real person ids in and out of a school's scope, real and unknown table names),
and each request is sent once per caller: one user per role of interest, no token and a bad
token. Two properties must hold for every response:

* no 5xx, and the response matches the schema (status code, content type, body);
* nothing beyond the caller's role: a 200 only for what the role's grants allow, every item
  holds only the columns granted for its table (derived from ``config/policy.yaml``, not
  listed here), only granted agencies, and for the school DSL only people in their scope.

Deterministic and bounded for CI: a fixed seed, derandomized Hypothesis, no example database
and a modest number of examples per operation.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import hypothesis
import pytest
import schemathesis
import yaml
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from test_api import _schools, _scope_of_school

from api.app import create_app
from api.users import ApiUsers, load_api_users, mint_token, user_entry
from warehouse.access import AccessLayer
from warehouse.curated_schema import TABLES
from warehouse.policy import Grant, Policy, load_policy

SEED = 20261120
MAX_EXAMPLES = 25  # per operation, fuzzing phase; each example is sent once per caller
SAMPLE = 12  # real person ids of each kind offered to the generator

# (user id, role, purpose); the school DSL's organisation is set from the snapshot.
ROLE_USERS = [
    ("sw", "social_worker", "safeguarding"),
    ("eh", "early_help", "early_help"),
    ("dsl", "school_dsl", "safeguarding"),
    ("police", "police", "safeguarding"),
    ("health", "health", "direct_care"),
    ("analyst", "analyst", "research"),
    ("board", "partnership", "oversight"),
    ("dpo", "dpo", "subject_rights"),
]
HUGE_INTS = [2**31, 2**63 - 1, 2**63, 10**30]
# Analysts' SQL mixed into generated bodies, so the fuzzer gets past parse errors.
SQL = [
    "select * from person",
    "select * from timeline",
    "select age_band, count(*) from person group by all",
    "select * from child_summary join person using (person_key)",
    "attach 'elsewhere.duckdb'",
    "select * from read_csv('/etc/passwd')",
]
NO_TOKEN = "(no token)"
BAD_TOKEN = "(bad token)"
PURPOSE_HEADER = "x-purpose"


@dataclass
class Caller:
    name: str
    role: str | None  # None: not authenticated
    token: str | None


@dataclass
class Fuzz:
    app: Any
    callers: list[Caller]
    policy: Policy
    pupils: set[str]  # the school DSL's pupils (their rows: "organisation")
    scope: set[str]  # ... and everyone living with them (their rows: "scope")
    everyone: set[str]  # every person id in the snapshot
    person_ids: list[str]  # real ids offered to the generator, in and out of that scope
    purposes: list[str]  # every role's purposes
    # (caller, operation path, status, whether the path's person is in the DSL's scope)
    seen: Counter[tuple[str, str, int, bool | None]] = field(default_factory=Counter)


def _ids(con, sql: str, params: list | None = None) -> list[str]:
    return [row[0] for row in con.execute(sql, params or []).fetchall()]


@pytest.fixture(scope="module")
def fuzz(published_county, tmp_path_factory) -> Fuzz:
    # A private copy: the thousands of requests below are audited into its operational
    # store, not into the one the other tests share (and copy).
    county = published_county.copy(tmp_path_factory.mktemp("fuzz") / "county")
    policy = load_policy()
    with county.store().reader() as con:
        school, other = _schools(con)
        scope = _scope_of_school(con, school)
        pupils = set(
            _ids(
                con,
                "select person_id from person_organisations "
                "where organisation_type = 'school' and organisation_id = ?",
                [school],
            )
        )
        everyone = _ids(con, "select person_id from person order by person_id")
        other_pupils = _ids(
            con,
            "select person_id from person_organisations where organisation_type = 'school' "
            "and organisation_id = ? order by person_id",
            [other],
        )
    samples = [
        sorted(pupils)[:SAMPLE],  # in scope
        sorted(scope - pupils)[:SAMPLE],  # in scope through a pupil's household
        [p for p in other_pupils if p not in scope][:SAMPLE],  # another school's pupils
        [p for p in everyone if p not in scope][-SAMPLE:],  # anyone else
    ]
    assert all(samples), "the test county needs people in and out of a school's scope"

    callers, entries = [], []
    for user_id, role, purpose in ROLE_USERS:
        token, digest = mint_token()
        organisation = school if role == "school_dsl" else None
        entries.append(
            user_entry(user_id, role, digest, organisation=organisation, default_purpose=purpose)
        )
        callers.append(Caller(user_id, role, token))
    callers += [Caller(NO_TOKEN, None, None), Caller(BAD_TOKEN, None, mint_token()[0])]
    path = county.root / "api_users.yaml"
    path.write_text(yaml.safe_dump({"users": entries}, sort_keys=False), encoding="utf-8")
    users = load_api_users(path, policy)
    access = AccessLayer(county.store(), policy, county.engine())
    return Fuzz(
        app=create_app(access, users),
        callers=callers,
        policy=policy,
        pupils=pupils,
        scope=scope,
        everyone=set(everyone),
        person_ids=[p for sample in samples for p in sample],
        purposes=sorted({p for role in policy.roles.values() for p in role.purposes}),
    )


# The OpenAPI document does not depend on the data: take it from an app over nothing, so the
# operations are known when pytest collects (one test per operation); requests go to the app
# over the published test county (``case.call(app=...)``).
_OPENAPI = create_app(SimpleNamespace(audit_engine=None), ApiUsers()).openapi()  # type: ignore[arg-type]
schema = schemathesis.openapi.from_dict(
    _OPENAPI,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",  # valid and invalid parameters
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                "with-security-parameters": False,  # each caller's token is sent by the test
            },
            "phases": {"stateful": {"enabled": False}},
        }
    ),
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_fuzzed_schema_is_the_served_one(fuzz: Fuzz):
    assert fuzz.app.openapi() == _OPENAPI


def _steer(fuzz: Fuzz, case, data) -> None:
    """Mix real person ids (in and out of the DSL's scope), real table names and real purposes
    into the generated request, so scope and grants are exercised and not only 404s."""
    pick = st.sampled_from
    params = case.path_parameters or {}
    if "person_id" in params and data.draw(st.booleans(), "real person"):
        params["person_id"] = data.draw(pick(fuzz.person_ids), "person_id")
    if "table" in params and data.draw(st.booleans(), "real table"):
        params["table"] = data.draw(pick(sorted(TABLES)), "table")
    query = case.query or {}
    if "person_id" in query and data.draw(st.booleans(), "real person in query"):
        query["person_id"] = data.draw(pick(fuzz.person_ids), "query person_id")
    for key, value in query.items():
        # Integers past 32 and 64 bits (an offset of 2**63 once reached the database: a 500).
        if type(value) is int and data.draw(st.integers(0, 3), f"huge {key}") == 0:
            query[key] = data.draw(pick(HUGE_INTS), key)
    if isinstance(case.body, dict) and "sql" in case.body and data.draw(st.booleans(), "sql"):
        case.body["sql"] = data.draw(pick(SQL), "real sql")
    headers = case.headers if case.headers is not None else {}
    purpose = data.draw(pick(["generated", "default", "real"]), "purpose")
    if purpose != "generated":
        for key in [k for k in headers if k.lower() == PURPOSE_HEADER]:
            del headers[key]
    if purpose == "real":
        headers["X-Purpose"] = data.draw(pick(fuzz.purposes), "X-Purpose")
    case.headers = headers or None


@schema.parametrize()
@schema.given(data=st.data())
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_fuzzed_requests_never_fail_or_leak(case, data, fuzz: Fuzz):
    _steer(fuzz, case, data)
    path_id = (case.path_parameters or {}).get("person_id")
    asked = _ids_in(fuzz, f"{case.formatted_path} {case.query}")
    for caller in fuzz.callers:
        headers = {"Authorization": f"Bearer {caller.token}"} if caller.token else {}
        response = case.call(headers=headers, app=fuzz.app)
        label = f"{caller.name}: {case.method} {case.formatted_path} {case.query} {case.headers}"
        case.validate_response(response, checks=CHECKS, headers=headers)
        if response.status_code != 200:  # an error names no one but whom it was asked about
            told = _ids_in(fuzz, response.text) - asked
            assert not told, f"{label}: {response.status_code} names {sorted(told)}"
        else:
            _assert_within_role(fuzz, caller, case, response, label)
        in_scope = path_id in fuzz.scope if path_id in fuzz.everyone else None
        fuzz.seen[caller.name, case.operation.path, response.status_code, in_scope] += 1


def _ids_in(fuzz: Fuzz, text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z0-9]+", text)) & fuzz.everyone


# -- what a 200 may contain -----------------------------------------------------------------


def _assert_within_role(fuzz: Fuzz, caller: Caller, case, response, label: str) -> None:
    """A 200: only what the caller's role is granted, and for a scoped role only its people."""
    path = case.operation.path
    if path == "/health":
        return
    assert caller.role is not None, f"{label}: 200 without a valid token"
    body = response.json()
    role = fuzz.policy.role(caller.role)
    assert role is not None

    def grant(table: str) -> Grant:
        found = fuzz.policy.grant(caller.role, table)
        assert found is not None, f"{label}: 200 reading {table}, which the role is not granted"
        return found

    def rows(table: str, items: list[dict[str, Any]], extra: frozenset[str] = frozenset()):
        g = grant(table)
        for item in items:
            beyond = set(item) - set(g.columns) - extra
            assert not beyond, f"{label}: {table} columns {sorted(beyond)} not granted"
            if g.agencies is not None and "agency" in item:
                assert item["agency"] in g.agencies, f"{label}: {table} agency {item['agency']}"
            _assert_in_scope(fuzz, caller, g, item, label)

    path_id = (case.path_parameters or {}).get("person_id")
    if path == "/people/search":
        rows("person", body["items"], frozenset({"score"}))
    elif path == "/people/{person_id}":
        rows("person", [body])
        assert body["person_id"] == path_id, label
    elif path == "/children/{person_id}":
        rows("child_summary", [body["summary"]])
        assert body["summary"]["person_id"] == path_id, label
        if body["person"] is not None:
            rows("person", [body["person"]])
    elif path == "/people/{person_id}/household":
        rows("household_members", body["members"], frozenset({"person"}))
        assert path_id in {m["person_id"] for m in body["members"]}, label
        if body["household"] is not None:
            rows("household", [body["household"]])
        people = [m["person"] for m in body["members"] if m.get("person") is not None]
        if people:
            rows("person", people)
    elif path in ("/people/{person_id}/timeline", "/people/{person_id}/involvement"):
        table = path.rsplit("/", 1)[-1]
        rows(table, body["items"])
        _assert_in_scope(fuzz, caller, grant(table), {"person_id": path_id}, label)
        assert all(item["person_id"] == path_id for item in body["items"]), label
    elif path == "/aggregates/{table}":
        table = case.path_parameters["table"]
        assert TABLES[table].aggregate, label
        rows(table, body["items"])
    elif path == "/rights/actions":
        assert role.reads_rights_log, f"{label}: 200 on the rights log"
    elif path == "/analytics/query":  # pseudonymised rows: no person id can be in them
        assert role.dataset == "pseudonymised", f"{label}: SQL answered for {caller.role}"
        told = _ids_in(fuzz, response.text)
        assert not told, f"{label}: the analysts' answer names {sorted(told)}"
    else:  # a new endpoint: say what it may return before fuzzing it
        pytest.fail(f"{label}: no leak check for {path}")


def _assert_in_scope(fuzz: Fuzz, caller: Caller, grant: Grant, item: dict[str, Any], label):
    if caller.role != "school_dsl" or grant.rows == "all":
        return
    allowed = fuzz.pupils if grant.rows == "organisation" else fuzz.scope
    for key in ("person_id", "related_person_id"):
        if item.get(key) is not None:
            assert item[key] in allowed, f"{label}: {grant.table} {key} {item[key]} out of scope"


def test_fuzzing_reached_people_in_and_out_of_scope(fuzz: Fuzz, request):
    """The fuzzer got past 404s: each role read someone, the DSL both in and out of scope.

    It reads what the fuzz tests above recorded (pytest runs a file's tests in order): when
    they were deselected (``-k``) there is nothing to judge; when they ran and recorded
    nothing, that is a failure, not a skip."""
    fuzzed = [
        item
        for item in request.session.items
        if item.originalname == "test_fuzzed_requests_never_fail_or_leak"
    ]
    if not fuzzed:
        pytest.skip("the fuzz tests were not selected in this session")
    assert fuzz.seen, "the fuzz tests ran but recorded no request"

    def seen(caller: str, path: str, status: int, in_scope: bool | None = None) -> bool:
        return any(
            key[0] == caller
            and path in key[1]
            and key[2] == status
            and (in_scope is None or key[3] is in_scope)
            for key in fuzz.seen
        )

    for caller in ("sw", "eh", "dsl", "police", "health", "dpo"):
        assert seen(caller, "{person_id}", 200), caller
    assert seen("dsl", "{person_id}", 200, in_scope=True)
    assert seen("dsl", "{person_id}", 404, in_scope=False)
    assert seen("sw", "{person_id}", 200, in_scope=False)
    assert seen("board", "/aggregates/", 200) and seen("dpo", "/rights/actions", 200)
    assert seen("analyst", "{person_id}", 403) and not seen("analyst", "/people", 200)
    assert seen("analyst", "/analytics/query", 200) and seen("sw", "/analytics/query", 403)
    for anonymous in (NO_TOKEN, BAD_TOKEN):
        statuses = {key[2] for key in fuzz.seen if key[0] == anonymous and key[1] != "/health"}
        assert statuses <= {401, 422} and 401 in statuses, (anonymous, statuses)
