"""The Family View API over the published test county: auth, filtering, errors and audit."""

from __future__ import annotations

import json
import threading
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from api.app import create_app
from api.users import (
    ApiUser,
    ApiUsers,
    ApiUsersError,
    load_api_users,
    mint_token,
    token_sha256,
    user_entry,
)
from matching.standardise import nickname_table
from warehouse import audit
from warehouse.access import MAX_OFFSET, AccessError, AccessLayer, User
from warehouse.curated_schema import TABLES
from warehouse.policy import load_policy

with warnings.catch_warnings():
    # Starlette's test client warns that it will move from httpx to httpx2.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ENDPOINTS = {
    "/health",
    "/people/search",
    "/people/{person_id}",
    "/children/{person_id}",
    "/people/{person_id}/household",
    "/people/{person_id}/timeline",
    "/people/{person_id}/involvement",
    "/aggregates/{table}",
    "/rights/actions",
    "/analytics/query",
}
AGGREGATES = [name for name, table in TABLES.items() if table.aggregate]


@dataclass
class Api:
    client: TestClient
    tokens: dict[str, str]  # user id -> bearer token
    engine: Any
    school_a: str
    school_b: str

    def get(self, path: str, user: str | None = None, **kwargs: Any):
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:
            headers["Authorization"] = f"Bearer {self.tokens[user]}"
        return self.client.get(path, headers=headers, **kwargs)


def _schools(con) -> tuple[str, str]:
    """The two schools with most pupils (A first)."""
    rows = con.sql(
        "select organisation_id from person_organisations where organisation_type = 'school' "
        "group by organisation_id order by count(*) desc, organisation_id limit 2"
    ).fetchall()
    assert len(rows) == 2, "the test county needs two schools"
    return rows[0][0], rows[1][0]


def _scope_of_school(con, urn: str) -> set[str]:
    """A school DSL's people: the school's pupils and everyone in their households."""
    rows = con.sql(
        "with pupils as (select person_id from person_organisations "
        "where organisation_type = 'school' and organisation_id = ?) "
        "select person_id from pupils union "
        "select m2.person_id from household_members m1 join household_members m2 "
        "on m1.household_id = m2.household_id where m1.person_id in (select * from pupils)",
        params=[urn],
    ).fetchall()
    return {row[0] for row in rows}


@pytest.fixture(scope="module")
def api(published_county, tmp_path_factory) -> Api:
    return _api_over(published_county, tmp_path_factory.mktemp("api"))


def _api_over(county, directory: Path) -> Api:
    """A client of the API over ``county``, with one user (and token) per role."""
    with county.store().reader() as con:
        school_a, school_b = _schools(con)
    people = [
        ("sw", "social_worker", None, "safeguarding"),
        ("eh", "early_help", None, "early_help"),
        ("dsl_a", "school_dsl", school_a, "safeguarding"),
        ("police", "police", None, "safeguarding"),
        ("health", "health", None, "direct_care"),
        ("analyst", "analyst", None, "research"),
        ("board", "partnership", None, "oversight"),
        ("dpo", "dpo", None, "subject_rights"),
    ]
    tokens, entries = {}, []
    for user_id, role, organisation, purpose in people:
        token, digest = mint_token()
        tokens[user_id] = token
        entries.append(
            user_entry(user_id, role, digest, organisation=organisation, default_purpose=purpose)
        )
    path = directory / "api_users.yaml"
    path.write_text(yaml.safe_dump({"users": entries}, sort_keys=False), encoding="utf-8")
    users = load_api_users(path, load_policy())
    engine = county.engine()
    access = AccessLayer(county.store(), load_policy(), engine)
    return Api(TestClient(create_app(access, users)), tokens, engine, school_a, school_b)


@pytest.fixture(scope="module")
def snapshot(published_county):
    with published_county.store().reader() as con:
        yield con


def _child(snapshot, where: str = "true", params: list | None = None) -> dict[str, Any]:
    cursor = snapshot.execute(
        f"select c.person_id, c.forename, c.surname, c.dob from child_summary c "
        f"where {where} order by c.person_id limit 1",
        params or [],
    )
    rows = cursor.fetchall()
    assert rows, f"no child matching {where}"
    return dict(zip(("person_id", "forename", "surname", "dob"), rows[0], strict=True))


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["person_id"] for item in response.json()["items"]]


def _latest_seq(engine) -> int:
    return audit.head(engine)[0]


# -- users file and tokens ---------------------------------------------------------------


def test_tokens_are_stored_hashed_and_matched(tmp_path: Path):
    token, digest = mint_token()
    assert len(token) >= 43 and digest == token_sha256(token) and token not in digest
    user = ApiUser(user_id="u", role="police", default_purpose="safeguarding", token_sha256=digest)
    users = ApiUsers([user])
    assert users.authenticate(token) == user
    assert users.authenticate(token + "x") is None
    assert users.authenticate("") is None and users.authenticate(None) is None
    assert users.authenticate("x" * 10_000) is None


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"role": "janitor", "default_purpose": "safeguarding"}, "not a role in the policy"),
        ({"role": "school_dsl", "default_purpose": "safeguarding"}, "organisation"),
        ({"role": "police", "default_purpose": "research"}, "not one of role police's"),
        ({"role": "police", "default_purpose": "safeguarding", "colour": "red"}, "colour"),
    ],
)
def test_users_file_is_checked_against_the_policy(tmp_path: Path, entry, problem):
    path = tmp_path / "api_users.yaml"
    user = {"user_id": "u", "token_sha256": "a" * 64, **entry}
    path.write_text(yaml.safe_dump({"users": [user]}), encoding="utf-8")
    with pytest.raises(ApiUsersError, match=problem) as caught:
        load_api_users(path)
    assert str(path) in str(caught.value)


def test_users_file_refuses_a_token_shared_by_two_users(tmp_path: Path):
    path = tmp_path / "api_users.yaml"
    users = [
        {
            "user_id": u,
            "role": "police",
            "default_purpose": "safeguarding",
            "token_sha256": "b" * 64,
        }
        for u in ("one", "two")
    ]
    path.write_text(yaml.safe_dump({"users": users}), encoding="utf-8")
    with pytest.raises(ApiUsersError, match="another user's token"):
        load_api_users(path)


def test_demo_users_file_is_valid_with_one_user_per_role():
    users = load_api_users(Path(__file__).resolve().parent.parent / "config" / "api_users.yaml")
    assert {user.role for user in users} == set(load_policy().roles)
    assert users.authenticate("demo-social-worker-token").role == "social_worker"


def test_token_new_prints_a_token_and_an_entry_that_loads(tmp_path: Path, monkeypatch):
    from pipelines.cli import app

    users_file = tmp_path / "api_users.yaml"
    monkeypatch.setenv("SDV_API_USERS", str(users_file))
    result = CliRunner().invoke(
        app, ["token", "new", "--user", "jo", "--role", "school_dsl", "--organisation", "100001"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    token = lines[lines.index(next(li for li in lines if li.startswith("Token"))) + 1].strip()
    entry_text = result.output[result.output.index("  - user_id") :]
    users_file.write_text("users:\n" + entry_text, encoding="utf-8")
    users = load_api_users(users_file)
    found = users.authenticate(token)
    assert found is not None and found.user_id == "jo" and found.organisation == "100001"
    assert found.default_purpose == "safeguarding" and token not in users_file.read_text()

    refused = CliRunner().invoke(app, ["token", "new", "--user", "x", "--role", "school_dsl"])
    assert refused.exit_code == 1 and "organisation" in refused.output


# -- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer "]
)
def test_no_valid_token_is_401_and_audited(api: Api, snapshot, authorization):
    child = _child(snapshot)
    before = _latest_seq(api.engine)
    headers = {"Authorization": authorization} if authorization else {}
    path = f"/children/{child['person_id']}"
    response = api.client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "bearer token" in response.json()["detail"]
    [event] = audit.events(api.engine, after_seq=before)
    assert (event.user_id, event.role, event.action, event.outcome) == (
        "anonymous",
        "none",
        "api",
        "denied",
    )
    assert event.detail["path"] == path and event.detail["reason"] == "no valid bearer token"
    assert event.person_ids == ()


def test_a_request_audited_by_the_middleware_records_how_it_ended():
    """Refused (401, 403, 422) is "denied", but a server error is "error": the trail must
    not say a caller was refused when the service failed them."""
    from api.app import _outcome

    assert [_outcome(s) for s in (200, 401, 403, 404, 422, 500, 503)] == [
        "allowed", "denied", "denied", "not_found", "denied", "error", "error",
    ]  # fmt: skip


def test_health_needs_no_token_and_reveals_nothing(api: Api):
    before = _latest_seq(api.engine)
    response = api.client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert _latest_seq(api.engine) == before


def test_openapi_schema_lists_every_endpoint(api: Api):
    response = api.client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert set(schema["paths"]) >= ENDPOINTS
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    search = schema["paths"]["/people/search"]["get"]
    assert {p["name"] for p in search["parameters"]} >= {"name", "dob", "limit", "x-purpose"}
    assert {"401", "403", "404"} <= set(
        schema["paths"]["/children/{person_id}"]["get"]["responses"]
    )
    assert api.client.get("/docs").status_code == 200


# -- what each role gets -------------------------------------------------------------------


def test_child_profile_household_and_involvement(api: Api, snapshot):
    child = _child(snapshot)
    profile = api.get(f"/children/{child['person_id']}", "sw")
    assert profile.status_code == 200, profile.text
    body = profile.json()
    assert body["summary"]["person_id"] == child["person_id"]
    assert body["person"]["person_id"] == child["person_id"]
    assert body["summary"]["dob"] == child["dob"].isoformat()  # dates as ISO strings

    household = api.get(f"/people/{child['person_id']}/household", "sw").json()
    expected = {
        row[0]
        for row in snapshot.execute(
            "select m2.person_id from household_members m1 join household_members m2 "
            "using (household_id) where m1.person_id = ?",
            [child["person_id"]],
        ).fetchall()
    }
    assert {m["person_id"] for m in household["members"]} == expected
    assert all(m["person"] is not None for m in household["members"])
    assert household["household"]["household_id"] == household["members"][0]["household_id"]

    involvement = api.get(f"/people/{child['person_id']}/involvement", "sw").json()
    assert involvement["total"] == len(involvement["items"]) >= 1

    record = api.get(f"/people/{child['person_id']}", "police").json()
    assert record["person_id"] == child["person_id"] and "nhs_number" not in record


def test_timeline_is_paginated(api: Api, snapshot):
    person_id, count = snapshot.execute(
        "select person_id, count(*) from timeline group by person_id "
        "order by count(*) desc, person_id limit 1"
    ).fetchall()[0]
    assert count >= 3
    seen: list[str] = []
    for offset in range(0, count + 2, 2):
        response = api.get(
            f"/people/{person_id}/timeline", "sw", params={"limit": 2, "offset": offset}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert (page["total"], page["limit"], page["offset"]) == (count, 2, offset)
        assert len(page["items"]) == min(2, max(0, count - offset))
        seen += [item["event_id"] for item in page["items"]]
    assert len(seen) == len(set(seen)) == count  # no overlap, nothing missed
    dates = [
        item["event_date"]
        for item in api.get(f"/people/{person_id}/timeline", "sw", params={"limit": 500}).json()[
            "items"
        ]
    ]
    assert dates == sorted(dates, key=lambda d: d or "", reverse=True)  # newest first
    assert api.get(f"/people/{person_id}/timeline", "sw", params={"limit": 0}).status_code == 422


def test_search_tolerates_typos_nicknames_and_swapped_dates(api: Api, snapshot):
    # A typo in the surname: two letters swapped.
    child = _child(snapshot, "length(c.surname) >= 6 and regexp_matches(c.surname, '^[A-Za-z]+$')")
    surname = child["surname"]
    typo = surname[:2] + surname[3] + surname[2] + surname[4:]
    assert typo != surname
    found = api.get("/people/search", "sw", params={"name": f"{child['forename']} {typo}"})
    assert child["person_id"] in _ids(found)

    # A nickname for the forename.
    nicknames = nickname_table()
    by_formal: dict[str, str] = {}
    for nick, formal in nicknames.items():
        for name in formal:
            if name != nick:
                by_formal.setdefault(name, nick)
    rows = snapshot.execute(
        "select person_id, forename, surname from child_summary order by person_id"
    ).fetchall()
    person_id, forename, surname = next(r for r in rows if (r[1] or "").lower() in by_formal)
    nick = by_formal[forename.lower()]
    found = api.get("/people/search", "sw", params={"name": f"{nick.title()} {surname}"})
    assert person_id in _ids(found), f"{nick} for {forename} {surname}"

    # Day and month swapped in the date of birth.
    child = _child(
        snapshot, "day(c.dob) <= 12 and day(c.dob) <> month(c.dob) and c.dob is not null"
    )
    dob: date = child["dob"]
    swapped = date(dob.year, dob.day, dob.month)
    found = api.get(
        "/people/search",
        "sw",
        params={"name": f"{child['forename']} {child['surname']}", "dob": swapped.isoformat()},
    )
    assert _ids(found)[0] == child["person_id"]
    assert all(isinstance(item["score"], float) for item in found.json()["items"])


def test_school_dsl_sees_own_pupils_not_another_schools(api: Api, snapshot):
    scope_a = _scope_of_school(snapshot, api.school_a)
    own = _child(
        snapshot,
        "c.person_id in (select person_id from person_organisations "
        "where organisation_type = 'school' and organisation_id = ?)",
        [api.school_a],
    )
    assert api.get(f"/children/{own['person_id']}", "dsl_a").status_code == 200
    assert api.get(f"/people/{own['person_id']}/household", "dsl_a").status_code == 200

    pupils_b = [
        row[0]
        for row in snapshot.execute(
            "select c.person_id from child_summary c join person_organisations o "
            "using (person_id) where o.organisation_type = 'school' and o.organisation_id = ? "
            "order by c.person_id",
            [api.school_b],
        ).fetchall()
    ]
    outsider = next(pid for pid in pupils_b if pid not in scope_a)
    child = _child(snapshot, "c.person_id = ?", [outsider])
    for path in (
        f"/people/{outsider}",
        f"/children/{outsider}",
        f"/people/{outsider}/timeline",
        f"/people/{outsider}/household",
        f"/people/{outsider}/involvement",
    ):
        response = api.get(path, "dsl_a")
        assert response.status_code == 404, path
        assert outsider in response.json()["detail"]  # the id given, nothing about them
    params = {"name": f"{child['forename']} {child['surname']}", "dob": child["dob"].isoformat()}
    assert outsider in _ids(api.get("/people/search", "sw", params=params))
    assert outsider not in _ids(api.get("/people/search", "dsl_a", params=params))
    # ... and a school DSL never reads for a purpose its role lacks.
    response = api.get(f"/children/{own['person_id']}", "dsl_a", headers={"X-Purpose": "audit"})
    assert response.status_code == 403


def test_roles_without_a_grant_are_403(api: Api, snapshot):
    child = _child(snapshot)
    pid = child["person_id"]
    response = api.get(f"/people/{pid}/household", "health")
    assert response.status_code == 403
    assert response.json()["detail"] == "role health may not read household_members"
    for path in (
        f"/people/{pid}",
        f"/children/{pid}",
        f"/people/{pid}/timeline",
        "/aggregates/agg_involvement",
    ):
        assert api.get(path, "analyst").status_code == 403, path
    assert api.get("/people/search", "analyst", params={"name": "Smith"}).status_code == 403
    assert api.get(f"/children/{pid}", "board").status_code == 403
    wrong_purpose = api.get(f"/children/{pid}", "sw", headers={"X-Purpose": "research"})
    assert wrong_purpose.status_code == 403
    assert "purpose 'research'" in wrong_purpose.json()["detail"]
    stated = api.get(f"/children/{pid}", "sw", headers={"X-Purpose": "child_protection"})
    assert stated.status_code == 200


def test_huge_offsets_are_refused_not_a_server_error(snapshot, published_county, tmp_path):
    # Found by fuzzing (tests/test_api_fuzz.py): an offset past 64 bits reached DuckDB or
    # SQLite and failed there, a 500. The API now bounds it (422), the access layer too (400).
    # On a copy: reads of the rights log are audited, and other tests count those.
    county = published_county.copy(tmp_path / "county")
    api = _api_over(county, tmp_path)
    pid = _child(snapshot)["person_id"]
    for path, user in ((f"/people/{pid}/timeline", "sw"), ("/rights/actions", "dpo")):
        for offset in (MAX_OFFSET + 1, 2**63, 10**30):
            before = _latest_seq(api.engine)
            response = api.get(path, user, params={"offset": offset})
            assert response.status_code == 422, (path, offset, response.text)
            [event] = audit.events(api.engine, after_seq=before)
            assert event.detail["reason"] == "invalid request: query.offset"
        last = api.get(path, user, params={"offset": MAX_OFFSET})
        assert last.status_code == 200 and last.json()["items"] == [], last.text

    access = AccessLayer(county.store(), load_policy(), api.engine)
    calls = [
        lambda: access.timeline(User("sw", "social_worker"), "safeguarding", pid, offset=2**63),
        lambda: access.rights_actions(User("dpo", "dpo"), "subject_rights", offset=2**63),
        lambda: access.read(User("sw", "social_worker"), "safeguarding", "person", offset=-1),
    ]
    for call in calls:
        before = _latest_seq(api.engine)
        with pytest.raises(AccessError, match="offset must be between") as refused:
            call()
        assert refused.value.status == 400
        [event] = audit.events(api.engine, after_seq=before)
        assert event.outcome == "denied" and "offset" in event.detail["reason"]


def test_unknown_people_are_404(api: Api):
    for path in (
        "/people/P000000000000",
        "/children/P000000000000",
        "/people/P000000000000/timeline",
        "/people/P000000000000/household",
        "/people/P000000000000/involvement",
    ):
        response = api.get(path, "sw")
        assert response.status_code == 404, path
        assert response.json() == {"detail": "no person P000000000000 within your access"} or (
            "P000000000000" in response.json()["detail"]
        )
    assert api.get("/aggregates/person", "dpo").status_code == 404


def test_partnership_aggregates_suppress_small_counts(api: Api):
    for table in AGGREGATES:
        response = api.get(f"/aggregates/{table}", "board")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["table"] == table and body["items"]
        counts = [c.name for c in TABLES[table].columns if c.type == "INTEGER"]
        for row in body["items"]:
            for column in counts:
                assert row[column] is None or row[column] >= 5, (table, row)
            if row["suppressed"]:
                assert all(row[column] is None for column in counts)
    assert api.get("/aggregates/source_deliveries", "board").status_code == 404


# -- the audit: one event for every call ----------------------------------------------------


def test_every_api_call_is_audited_once(api: Api, snapshot):
    child = _child(snapshot)
    pid = child["person_id"]
    search = {"name": f"{child['forename']} {child['surname']}", "dob": child["dob"].isoformat()}
    calls: list[tuple[str, str | None, dict[str, Any], int, str, str]] = [
        # path, user, request kwargs, status, audited action, outcome
        ("/people/search", "sw", {"params": search}, 200, "search", "allowed"),
        (f"/people/{pid}", "sw", {}, 200, "person", "allowed"),
        (f"/children/{pid}", "eh", {}, 200, "child_profile", "allowed"),
        (f"/people/{pid}/household", "police", {}, 200, "household", "allowed"),
        (f"/people/{pid}/timeline", "sw", {"params": {"limit": 1}}, 200, "timeline", "allowed"),
        (f"/people/{pid}/involvement", "health", {}, 200, "involvement", "allowed"),
        ("/aggregates/agg_involvement", "board", {}, 200, "read", "allowed"),
        (f"/children/{pid}", None, {}, 401, "api", "denied"),
        (f"/people/{pid}/household", "health", {}, 403, "household", "denied"),
        (f"/children/{pid}", "analyst", {}, 403, "child_profile", "denied"),
        (
            f"/children/{pid}",
            "sw",
            {"headers": {"X-Purpose": "research"}},
            403,
            "child_profile",
            "denied",
        ),
        ("/people/P000000000000", "sw", {}, 404, "person", "not_found"),
        ("/people/P000000000000/timeline", "sw", {}, 404, "timeline", "not_found"),
        ("/aggregates/no_such_table", "board", {}, 404, "api", "not_found"),
        ("/people/search", "sw", {"params": {"name": "Smith", "limit": 0}}, 422, "api", "denied"),
        ("/no/such/endpoint", "sw", {}, 404, "api", "not_found"),
    ]
    roles = {
        "sw": "social_worker",
        "eh": "early_help",
        "police": "police",
        "health": "health",
        "board": "partnership",
        "analyst": "analyst",
        None: "none",
    }
    before = _latest_seq(api.engine)
    for path, user, kwargs, status, _, _ in calls:
        response = api.get(path, user, **kwargs)
        assert response.status_code == status, (path, user, response.text)
        assert api.client.get("/health").status_code == 200  # not audited: no data
    events = audit.events(api.engine, after_seq=before)
    assert len(events) == len(calls)
    for event, (path, user, _, status, action, outcome) in zip(events, calls, strict=True):
        assert (event.user_id, event.role, event.action, event.outcome) == (
            user or "anonymous",
            roles[user],
            action,
            outcome,
        ), path
        if action == "api":
            assert event.detail["path"] == path and event.detail["status"] == status
    # What was returned is recorded by person id; the search terms are not recorded.
    assert pid in events[0].person_ids
    assert child["surname"] not in json.dumps(events[0].detail)
    assert events[-2].detail["reason"] == "invalid request: query.limit"
    assert audit.verify(api.engine).ok


def test_a_slow_read_does_not_hold_up_other_callers(api: Api, snapshot, monkeypatch):
    """Reads run in the thread pool, not on the event loop: while one caller's search is
    slow (a busy disk, a large name index), the same worker answers everyone else."""
    access = api.client.app.state.access
    started, release = threading.Event(), threading.Event()
    search = access.search

    def slow_search(*args: Any, **kwargs: Any):
        started.set()
        release.wait(timeout=60)
        return search(*args, **kwargs)

    monkeypatch.setattr(access, "search", slow_search)
    child = _child(snapshot)
    headers = {"Authorization": f"Bearer {api.tokens['sw']}"}
    answers: dict[str, Any] = {}
    # One client, one event loop for every request (as in one server worker).
    with TestClient(api.client.app) as client:

        def ask(key: str, path: str, **params: Any) -> None:
            answers[key] = client.get(path, headers=headers, params=params)

        slow = threading.Thread(
            target=ask,
            args=("search", "/people/search"),
            kwargs={"name": f"{child['forename']} {child['surname']}"},
        )
        slow.start()
        try:
            assert started.wait(timeout=30)
            quick = threading.Thread(target=ask, args=("child", f"/children/{child['person_id']}"))
            quick.start()
            quick.join(timeout=20)
            assert not quick.is_alive(), "the child profile waited for the slow search"
            assert answers["child"].status_code == 200
            assert "search" not in answers
        finally:
            release.set()
            slow.join(timeout=60)
    assert child["person_id"] in _ids(answers["search"])


def test_app_from_settings_serves_the_published_county(published_county, monkeypatch):
    from pipelines.serve_cli import app_from_settings
    from pipelines.settings import Settings

    monkeypatch.delenv("SDV_API_USERS", raising=False)
    settings = Settings.from_env()
    settings = Settings(
        data_dir=published_county.data,
        landing=published_county.data / "landing",
        warehouse=published_county.warehouse,
        config_dir=settings.config_dir,
    )
    client = TestClient(app_from_settings(settings))
    assert client.get("/health").status_code == 200
    response = client.get(
        "/people/search",
        params={"name": "Smith"},
        headers={"Authorization": "Bearer demo-social-worker-token"},
    )
    assert response.status_code == 200, response.text


def test_nothing_published_yet_is_503_not_a_client_error(tmp_path, monkeypatch):
    """A fresh install answers every data path 503 (the server has nothing to serve: retry
    later), not 400 as if the request were wrong; /health still says the API is up."""
    from pipelines.serve_cli import app_from_settings
    from pipelines.settings import Settings

    monkeypatch.delenv("SDV_API_USERS", raising=False)
    defaults = Settings.from_env()
    settings = Settings(tmp_path, tmp_path / "landing", tmp_path / "w.duckdb", defaults.config_dir)
    client = TestClient(app_from_settings(settings))
    assert client.get("/health").status_code == 200
    headers = {"Authorization": "Bearer demo-social-worker-token"}
    for path, params in (("/people/search", {"name": "Smith"}), ("/children/P1", {})):
        response = client.get(path, params=params, headers=headers)
        assert response.status_code == 503, (path, response.text)
        assert response.json() == {"detail": "nothing has been published yet"}
