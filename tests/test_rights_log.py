"""The DPO reads the record of subject-rights actions (who, when, why) through the API;
no other role can, and reading it is audited like any other read."""

from __future__ import annotations

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.users import load_api_users, mint_token, user_entry
from pipelines.cli import app
from warehouse import audit
from warehouse.access import AccessDenied, AccessLayer, User
from warehouse.policy import load_policy


@pytest.fixture
def county(published_county, tmp_path):
    return published_county.copy(tmp_path / "county")


def _two_children(county) -> list[str]:
    with county.store().reader() as con:
        return [
            r[0]
            for r in con.sql("select person_id from child_summary order by 1 limit 2").fetchall()
        ]


def _client(county, tmp_path) -> tuple[TestClient, dict[str, str]]:
    tokens, entries = {}, []
    for user_id, role, purpose in [
        ("dpo", "dpo", "subject_rights"),
        ("sw", "social_worker", "safeguarding"),
    ]:
        token, digest = mint_token()
        tokens[user_id] = token
        entries.append(user_entry(user_id, role, digest, default_purpose=purpose))
    path = tmp_path / "api_users.yaml"
    path.write_text(yaml.safe_dump({"users": entries}), encoding="utf-8")
    access = AccessLayer(county.store(), load_policy(), county.engine())
    return TestClient(create_app(access, load_api_users(path, load_policy()))), tokens


def test_dpo_reads_who_did_what_when_and_why_and_no_one_else_can(county, tmp_path):
    first, second = _two_children(county)
    # The copy holds the shared county's trail, other tests' reads included: count ours.
    start = audit.head(county.engine())[0]
    runner = CliRunner()
    for args in (
        ["restrict", first, "--reason", "accuracy contested", "--by", "officer.a"],
        ["restrict", second, "--reason", "objection pending", "--by", "officer.b"],
        ["restrict", first, "--lift", "--reason", "rectified", "--by", "officer.a"],
    ):
        result = runner.invoke(app, [*args, "--data-dir", str(county.data)])
        assert result.exit_code == 0, result.output
    client, tokens = _client(county, tmp_path)
    dpo = {"Authorization": f"Bearer {tokens['dpo']}"}

    response = client.get("/rights/actions", headers=dpo)
    assert response.status_code == 200, response.text
    body = response.json()
    got = [(i["action"], i["person_ids"], i["user_id"], i["reason"]) for i in body["items"]]
    assert got == [
        ("lift_restriction", [first], "officer.a", "rectified"),
        ("restrict", [second], "officer.b", "objection pending"),
        ("restrict", [first], "officer.a", "accuracy contested"),
    ]
    assert body["total"] == 3 and all(i["occurred_at"] for i in body["items"])

    mine = client.get("/rights/actions", headers=dpo, params={"person_id": first}).json()
    assert {tuple(i["person_ids"]) for i in mine["items"]} == {(first,)} and mine["total"] == 2
    only = client.get("/rights/actions", headers=dpo, params={"action": "restrict"}).json()
    assert [i["person_ids"] for i in only["items"]] == [[second], [first]]
    paged = client.get("/rights/actions", headers=dpo, params={"limit": 1, "offset": 1}).json()
    assert [i["reason"] for i in paged["items"]] == ["objection pending"]

    denied = client.get("/rights/actions", headers={"Authorization": f"Bearer {tokens['sw']}"})
    assert denied.status_code == 403
    with pytest.raises(AccessDenied):
        AccessLayer(county.store(), load_policy(), county.engine()).rights_actions(
            User("sw", "social_worker"), "safeguarding"
        )

    reads = [e for e in audit.events(county.engine(), after_seq=start) if e.action == "rights_log"]
    # Four DPO reads above, then the social worker refused through the API and directly.
    assert [(e.user_id, e.outcome) for e in reads] == [("dpo", "allowed")] * 4 + [
        ("sw", "denied")
    ] * 2
    assert audit.verify(county.engine()).ok


def test_a_restricted_person_is_hidden_from_api_search_and_household_views(county, tmp_path):
    with county.store().reader() as con:
        child, forename, surname, sibling = con.sql(
            """
            select c.person_id, p.forename, p.surname, m2.person_id
            from child_summary c join person p using (person_id)
            join household_members m1 on m1.person_id = c.person_id
            join household_members m2 on m2.household_id = m1.household_id
                 and m2.person_id <> c.person_id
            order by 1 limit 1
            """
        ).fetchall()[0]
    client, tokens = _client(county, tmp_path)
    sw = {"Authorization": f"Bearer {tokens['sw']}"}
    dpo = {"Authorization": f"Bearer {tokens['dpo']}"}

    def found(headers) -> set[str]:
        response = client.get(
            "/people/search", headers=headers, params={"name": f"{forename} {surname}"}
        )
        assert response.status_code == 200, response.text
        return {item["person_id"] for item in response.json()["items"]}

    def members(headers) -> set[str]:
        response = client.get(f"/people/{sibling}/household", headers=headers)
        assert response.status_code == 200, response.text
        return {m["person_id"] for m in response.json()["members"]}

    assert child in found(sw) and child in members(sw)
    result = CliRunner().invoke(
        app, ["restrict", child, "--reason", "objection", "--data-dir", str(county.data)]
    )
    assert result.exit_code == 0, result.output
    assert child not in found(sw) and child not in members(sw)
    assert sibling in members(sw)
    assert client.get(f"/people/{child}", headers=sw).status_code == 404
    assert client.get(f"/children/{child}", headers=sw).status_code == 404
    assert child in found(dpo) and child in members(dpo)
