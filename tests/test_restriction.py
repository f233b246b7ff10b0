"""Restriction of processing: hidden from every role but the DPO, through the access layer,
search and household views; recorded with who and why; lifted; survives re-linking."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from warehouse import audit, restriction
from warehouse.access import AccessLayer, NotFound, User
from warehouse.policy import load_policy
from warehouse.store import connect

ROLES_WITH_PERSONS = ["social_worker", "early_help", "police", "health"]


@pytest.fixture
def county(published_county, tmp_path):
    return published_county.copy(tmp_path / "county")


def _child_in_household(county) -> tuple[str, str, str, str]:
    """A child living with someone, their name and a household member."""
    with county.store().reader() as con:
        return con.sql(
            """
            select c.person_id, p.forename, p.surname, m2.person_id
            from child_summary c join person p using (person_id)
            join household_members m1 on m1.person_id = c.person_id
            join household_members m2 on m2.household_id = m1.household_id
                 and m2.person_id <> c.person_id
            where exists (select 1 from timeline t where t.person_id = c.person_id)
            order by 1 limit 1
            """
        ).fetchall()[0]


def _sdv(county, *args: str):
    result = CliRunner().invoke(app, [*args, "--data-dir", str(county.data)])
    return result


def test_restricted_person_is_hidden_from_every_role_but_the_dpo(county):
    child, forename, surname, sibling = _child_in_household(county)
    result = _sdv(county, "restrict", child, "--reason", "accuracy contested", "--by", "dpo1")
    assert result.exit_code == 0, result.output
    access = AccessLayer(county.store(), load_policy(), county.engine())
    for role in ROLES_WITH_PERSONS:
        user = User(f"u-{role}", role)
        purpose = load_policy().roles[role].purposes[0]
        with pytest.raises(NotFound):
            access.person(user, purpose, child)
        with pytest.raises(NotFound):
            access.timeline(user, purpose, child)
        assert child not in {r["person_id"] for r in access.search(user, purpose, surname)}
        page = access.read(user, purpose, "person", limit=500)
        assert child not in {r["person_id"] for r in page.items}
    social = User("sw", "social_worker")
    with pytest.raises(NotFound):
        access.child_profile(social, "safeguarding", child)
    members = access.household(social, "safeguarding", sibling)["members"]
    assert child not in {m["person_id"] for m in members}
    assert sibling in {m["person_id"] for m in members}
    relations = access.read(social, "safeguarding", "relationships", limit=500).items
    assert child not in {r["related_person_id"] for r in relations}
    dpo = User("dpo1", "dpo")
    assert access.person(dpo, "subject_rights", child)["person_id"] == child
    assert child in {
        r["person_id"] for r in access.search(dpo, "subject_rights", f"{forename} {surname}")
    }

    recorded = restriction.active(county.engine())
    assert [(r.person_id, r.reason, r.recorded_by) for r in recorded] == [
        (child, "accuracy contested", "dpo1")
    ]
    events = audit.events(county.engine(), newest_first=True, limit=50)
    [recorded_event] = [e for e in events if e.action == "restrict" and e.person_ids == (child,)]
    assert recorded_event.lawful_basis.startswith("UK GDPR 6(1)(c) legal obligation")

    lifted = _sdv(county, "restrict", child, "--lift", "--reason", "rectified", "--by", "dpo1")
    assert lifted.exit_code == 0, lifted.output
    assert access.person(social, "safeguarding", child)["person_id"] == child
    assert restriction.active(county.engine()) == []


def test_restriction_follows_the_person_through_a_new_person_id(county):
    """Linkage gives the person's records a new id (a merge): still restricted."""
    child, _, surname, _ = _child_in_household(county)
    assert _sdv(county, "restrict", child, "--reason", "objection").exit_code == 0
    con = connect(county.warehouse)
    try:
        con.execute(
            "update linked.person_records set person_id = 'PMERGED000001' where person_id = ?",
            [child],
        )
        con.execute(
            "update linked.household_members set person_id = 'PMERGED000001' where person_id = ?",
            [child],
        )
    finally:
        con.close()
    county.publish()
    access = AccessLayer(county.store(), load_policy(), county.engine())
    social = User("sw", "social_worker")
    with pytest.raises(NotFound):
        access.person(social, "safeguarding", "PMERGED000001")
    assert "PMERGED000001" not in {
        r["person_id"] for r in access.search(social, "safeguarding", surname)
    }
    assert access.person(User("d", "dpo"), "subject_rights", "PMERGED000001")


def test_a_restricted_person_is_left_out_of_linkage_exports(county, tmp_path):
    """An export of the linkage is a share to another body: a person whose processing is
    restricted is not in the file, nor among the persons the audit says were shared."""
    import polars as pl

    child, _, _, sibling = _child_in_household(county)
    assert _sdv(county, "restrict", child, "--reason", "objection", "--by", "dpo1").exit_code == 0
    for kind in ("links", "households"):
        out_file = tmp_path / f"{kind}.csv"
        result = _sdv(
            county, "export", kind, "--out", str(out_file), "--recipient", "police",
            "--reason", "stamp ids", "--by", "erin",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "Left out 1 person(s) under a restriction of processing" in result.output
        shared = set(pl.read_csv(out_file, infer_schema=False)["person_id"])
        assert child not in shared and sibling in shared
    exports = [e for e in audit.events(county.engine()) if e.action == audit.EXPORT]
    assert len(exports) == 2
    assert all(child not in e.person_ids and sibling in e.person_ids for e in exports)


def test_a_restricted_person_is_left_out_of_the_analysts_file(county):
    """Analysts read the pseudonymised file directly: a restricted person's rows are not in
    the next one published, under any of the keys their id is hashed to."""
    from family_view_county import PSEUDONYM_KEY

    from warehouse.pseudonymise import pseudonym

    child, _, _, sibling = _child_in_household(county)
    assert _sdv(county, "restrict", child, "--reason", "objection", "--by", "dpo1").exit_code == 0
    built, _, _ = county.publish()
    hidden, kept = pseudonym(child, PSEUDONYM_KEY), pseudonym(sibling, PSEUDONYM_KEY)
    con = connect(built.analyst, read_only=True)
    try:
        for table, column in [
            ("person", "person_key"),
            ("household_members", "person_key"),
            ("timeline", "person_key"),
            ("child_summary", "person_key"),
            ("relationships", "person_key"),
            ("relationships", "related_person_key"),
        ]:
            keys = {k for (k,) in con.execute(f"select {column} from {table}").fetchall()}
            assert hidden not in keys, (table, column)
            if table in ("person", "household_members"):
                assert kept in keys
    finally:
        con.close()


def test_restriction_needs_a_reason_and_a_known_person(county):
    unknown = _sdv(county, "restrict", "PNOSUCHPERSON", "--reason", "x")
    assert unknown.exit_code == 1
    assert unknown.stderr.strip() == "no records found for person PNOSUCHPERSON"
    assert restriction.active(county.engine()) == []  # nothing recorded
    with pytest.raises(restriction.RestrictionError, match="needs a reason"):
        restriction.restrict(county.engine(), "P1", ["a|b|c"], " ", "dpo")
    with pytest.raises(restriction.RestrictionError, match="no active restriction"):
        restriction.lift(county.engine(), ["a|b|c"], "no such", "dpo")
