"""Need-to-know through the access layer: every role against every curated table and column,
the school DSL's row scope, purposes, and an audit event for every read.

The expectations below restate the partnership's defaults (the Family View issue) on their
own, not read from ``config/policy.yaml``: the matrix test checks the access layer returns
exactly what the policy grants, and the need-to-know tests check the policy grants what the
agreements allow and nothing more.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from warehouse import audit
from warehouse.access import AccessDenied, AccessLayer, NotFound, User
from warehouse.curated_schema import TABLES
from warehouse.policy import DEFAULT_POLICY, INTERNAL_TABLES, PolicyError, load_policy
from warehouse.publish import SnapshotStore

ROLES = [
    "social_worker",
    "early_help",
    "school_dsl",
    "police",
    "health",
    "analyst",
    "partnership",
    "dpo",
]
READABLE = [name for name in TABLES if name not in INTERNAL_TABLES]
AGGREGATES = {name for name, t in TABLES.items() if t.aggregate}
STATUS_ONLY = {"person_id", "agency", "service", "status", "start_date", "end_date"}

# Tables each role must never read at all (from the need-to-know defaults).
NEVER = {
    "health": {"household", "household_members", "relationships", "child_summary"},
    "analyst": set(READABLE),
    "partnership": set(READABLE) - AGGREGATES - {"source_deliveries"},
    "school_dsl": {"person_organisations"} | AGGREGATES,
    "police": {"child_summary", "person_organisations"} | AGGREGATES,
}
# Columns a role must never see, per table.
NEVER_COLUMNS = {
    "school_dsl": {
        "person": {"nhs_number", "ethnicity", "gp_practice_code"},
        "involvement": {"practitioner", "practitioner_email", "team", "organisation"},
        "child_summary": {"gp_practice_code", "key_workers"},
    },
    "health": {"involvement": {"practitioner", "practitioner_email", "team", "organisation"}},
    "police": {
        "involvement": {"practitioner", "practitioner_email", "team", "organisation"},
        "person": {"nhs_number", "upn", "ethnicity", "sen_provision"},
    },
}
# Agencies whose timeline rows a role may see (None: all).
TIMELINE_AGENCIES = {
    "school_dsl": {"school"},
    "health": {"health"},
    "police": {"police"},
    "early_help": {"council_eh", "council_csc", "school"},
}


@pytest.fixture(scope="module")
def county(published_county):
    return published_county


@pytest.fixture(scope="module")
def access(county) -> AccessLayer:
    return AccessLayer(county.store(), load_policy(), county.engine())


@pytest.fixture(scope="module")
def snapshot(county) -> Iterator:
    with county.store().reader() as con:
        yield con


def purpose(role: str) -> str:
    return load_policy().roles[role].purposes[0]


@pytest.fixture(scope="module")
def schools(snapshot) -> dict[str, str]:
    """School A (most pupils on roll), one of its pupils, and a pupil of another school who
    lives with no pupil of school A (so nothing in A's scope reaches them)."""
    school_a, pupil_a = snapshot.sql(
        "select organisation_id, min(person_id) from person_organisations "
        "where organisation_type = 'school' group by 1 order by count(*) desc, 1 limit 1"
    ).fetchall()[0]
    outsider = snapshot.sql(
        """
        with a as (select person_id from person_organisations
                   where organisation_type = 'school' and organisation_id = ?),
        reach as (select m2.person_id from household_members m1
                  join household_members m2 using (household_id)
                  where m1.person_id in (select person_id from a))
        select o.person_id from person_organisations o join child_summary c using (person_id)
        where o.organisation_type = 'school' and o.organisation_id <> ?
          and o.person_id not in (select person_id from reach)
          and exists (select 1 from timeline t where t.person_id = o.person_id)
        order by 1 limit 1
        """,
        params=[school_a, school_a],
    ).fetchall()[0][0]
    return {"school_a": school_a, "pupil_a": pupil_a, "outsider": outsider}


def user_for(role: str, schools: dict[str, str]) -> User:
    organisation = schools["school_a"] if role == "school_dsl" else None
    return User(f"test-{role}", role, organisation)


@pytest.fixture(scope="module")
def dsl_scope(snapshot, schools) -> dict[str, set[str]]:
    """From the snapshot itself: school A's pupils, their households, and everyone living
    in those households (the DSL's reach)."""
    pupils = {
        r[0]
        for r in snapshot.sql(
            "select person_id from person_organisations where organisation_type = 'school' "
            "and organisation_id = ?",
            params=[schools["school_a"]],
        ).fetchall()
    }
    households = {
        r[0]
        for r in snapshot.sql(
            "select distinct household_id from household_members "
            "where person_id in (select unnest(?::varchar[]))",
            params=[sorted(pupils)],
        ).fetchall()
    }
    reach = pupils | {
        r[0]
        for r in snapshot.sql(
            "select person_id from household_members "
            "where household_id in (select unnest(?::varchar[]))",
            params=[sorted(households)],
        ).fetchall()
    }
    assert pupils and households and reach > pupils, "school A needs pupils living with others"
    return {"pupils": pupils, "households": households, "reach": reach}


def rows_in_scope(snapshot, dsl_scope: dict[str, set[str]], role: str, grant) -> int:
    """Rows of the grant's table the snapshot holds for ``role``, counted from the snapshot:
    for the DSL only its pupils' rows (``rows: organisation``) or its reach's, and only the
    granted agencies' rows."""
    clauses, params = [], []
    if role == "school_dsl" and grant.rows != "all":
        column = TABLES[grant.table].person_column
        if column is None:  # the household table: the pupils' households
            clauses.append("household_id in (select unnest(?::varchar[]))")
            params.append(sorted(dsl_scope["households"]))
        else:
            people = dsl_scope["pupils" if grant.rows == "organisation" else "reach"]
            clauses.append(f'"{column}" in (select unnest(?::varchar[]))')
            params.append(sorted(people))
    if grant.agencies is not None:
        clauses.append("agency in (select unnest(?::varchar[]))")
        params.append(list(grant.agencies))
    where = " and ".join(clauses) or "true"
    sql = f'select count(*) from "{grant.table}" where {where}'
    return snapshot.sql(sql, params=params).fetchall()[0][0]


# --- the matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("table", READABLE)
def test_every_role_gets_exactly_its_granted_columns_or_is_denied(
    access, schools, snapshot, dsl_scope, role, table
):
    user = user_for(role, schools)
    grant = load_policy().grant(role, table)
    if grant is None:
        with pytest.raises(AccessDenied):
            access.read(user, purpose(role), table, limit=5)
        assert table not in (load_policy().roles[role].tables or {})
        return
    page = access.read(user, purpose(role), table, limit=50)
    granted = set(grant.columns)
    assert set(grant.columns) <= set(TABLES[table].column_names)
    # Every row in scope is counted and the page is full: an empty read is no pass.
    expected = rows_in_scope(snapshot, dsl_scope, role, grant)
    assert expected > 0, f"the county has no {table} rows in {role}'s scope"
    assert page.total == expected and len(page.items) == min(expected, 50)
    for row in page.items:
        assert set(row) == granted, f"{role} got {set(row) ^ granted} of {table}"
    for column in TABLES[table].column_names:
        assert (column in granted) == (column in page.items[0])
    assert table not in NEVER.get(role, set()), f"{role} may read {table}: need-to-know says no"
    assert not granted & NEVER_COLUMNS.get(role, {}).get(table, set())
    if table == "timeline" and role in TIMELINE_AGENCIES:
        assert {r["agency"] for r in page.items} <= TIMELINE_AGENCIES[role]
    if table == "involvement" and role in ("school_dsl", "health", "police"):
        assert granted <= STATUS_ONLY


def test_dpo_sees_every_column_of_every_table(access, schools):
    for table in READABLE:
        page = access.read(user_for("dpo", schools), "subject_rights", table, limit=1)
        assert page.items, table
        assert set(page.items[0]) == set(TABLES[table].column_names)


def test_timeline_agencies_are_filtered_in_the_query_not_just_the_sample(access, schools, snapshot):
    """Every health event a health user can page through, and no other agency's."""
    user = user_for("health", schools)
    total = snapshot.sql("select count(*) from timeline where agency = 'health'").fetchall()[0][0]
    page = access.read(user, "safeguarding", "timeline", limit=500)
    assert page.total == total > 0
    assert {r["agency"] for r in page.items} == {"health"}


def test_unknown_role_wrong_purpose_and_missing_organisation_are_denied(access, schools):
    pupil = schools["pupil_a"]
    with pytest.raises(AccessDenied, match="unknown role"):
        access.person(User("mallory", "superuser"), "safeguarding", pupil)
    with pytest.raises(AccessDenied, match="purpose"):
        access.person(User("h", "health"), "marketing", pupil)
    with pytest.raises(AccessDenied, match="organisation"):
        access.person(User("d", "school_dsl"), "safeguarding", pupil)


def test_policy_refuses_unknown_tables_and_columns(tmp_path: Path):
    bad = tmp_path / "policy.yaml"
    bad.write_text(
        "roles:\n  x:\n    description: d\n    purposes: [p]\n    lawful_basis: 6(1)(e) task\n"
        "    dataset: curated\n    tables:\n      person: {columns: [person_id, shoe_size]}\n"
        "      gossip: {columns: all}\n"
    )
    with pytest.raises(PolicyError) as err:
        load_policy(bad)
    message = str(err.value)
    assert str(bad) in message and "shoe_size" in message and "gossip" in message


def config_copy(tmp_path: Path, policy=None, curated=None) -> Path:
    """The shipped policy and curation config copied side by side, each optionally changed
    in place; returns the policy's path."""
    for name, change in (("policy.yaml", policy), ("curated.yaml", curated)):
        path = DEFAULT_POLICY.with_name(name)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if change:
            change(data)
        (tmp_path / name).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return tmp_path / "policy.yaml"


def test_policy_refuses_agencies_and_organisation_types_the_tables_never_hold(tmp_path: Path):
    """A misspelt agency or organisation type is valid YAML naming a real table: without the
    check the role would load and quietly read nothing."""

    def typos(data):
        data["roles"]["school_dsl"]["scope"]["organisation_type"] = "schol"
        data["roles"]["early_help"]["tables"]["timeline"]["agencies"] = ["council_ehh", "school"]

    bad = config_copy(tmp_path, policy=typos)
    with pytest.raises(PolicyError) as err:
        load_policy(bad)
    message = str(err.value)
    assert message.startswith(str(bad))
    assert "roles.school_dsl.scope.organisation_type: unknown organisation type 'schol'" in message
    assert "roles.early_help.tables.timeline.agencies: unknown agency 'council_ehh'" in message
    assert "unknown agency 'school'" not in message


def test_a_new_agency_or_organisation_type_is_a_config_change(tmp_path: Path):
    """What the curation config produces is what the policy may name: a new organisation
    type or agency there lets a role scope or be granted to it, with no code change."""

    def centres_and_youth_justice(data):
        data["organisations"].append(
            {
                "person_table": "council_eh.people",
                "organisation_type": "children_centre",
                "sql": "select eh_person_id as local_key, family_id as organisation_id "
                'from "current".council_eh__people',
            }
        )
        data["timeline"].append(dict(data["timeline"][0], agency="youth_justice"))

    def centre_role(data):
        role = dict(data["roles"]["school_dsl"], scope={"organisation_type": "children_centre"})
        role["tables"] = dict(
            role["tables"], timeline={"columns": "all", "agencies": ["youth_justice"]}
        )
        data["roles"]["centre_lead"] = role

    policy = load_policy(config_copy(tmp_path, centre_role, centres_and_youth_justice))
    assert policy.grant("centre_lead", "timeline").agencies == ("youth_justice",)
    with pytest.raises(PolicyError) as err:
        load_policy(config_copy(tmp_path, centre_role))
    assert "'children_centre'" in str(err.value) and "'youth_justice'" in str(err.value)


def test_scopes_are_checked_against_declared_types_whatever_the_sql(tmp_path: Path):
    """The types are the entries' declared ones, not read from their SQL: a query written
    any way at all (no quoted type in it) still has a misspelt scope refused."""

    def plain_queries(data):
        for entry in data["organisations"]:
            entry["sql"] = "select * from organisation_members"

    def typo(data):
        data["roles"]["school_dsl"]["scope"]["organisation_type"] = "schol"

    bad = config_copy(tmp_path, policy=typo, curated=plain_queries)
    with pytest.raises(PolicyError) as err:
        load_policy(bad)
    assert str(err.value).startswith(str(bad))
    assert (
        "roles.school_dsl.scope.organisation_type: unknown organisation type 'schol' "
        "(known: gp_practice, school)" in str(err.value)
    )


def test_policy_without_its_curation_config_is_refused(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    shutil.copy(DEFAULT_POLICY, path)
    with pytest.raises(PolicyError, match=r"cannot check agencies.*curated\.yaml"):
        load_policy(path)


# --- the school DSL's row scope ------------------------------------------------------------


def test_dsl_reaches_own_pupil_by_every_route(access, schools, snapshot):
    dsl = user_for("school_dsl", schools)
    pupil = schools["pupil_a"]
    assert access.person(dsl, "safeguarding", pupil)["person_id"] == pupil
    assert access.child_profile(dsl, "safeguarding", pupil)["summary"]["person_id"] == pupil
    members = access.household(dsl, "safeguarding", pupil)["members"]
    expected = {
        r[0]
        for r in snapshot.sql(
            "select m2.person_id from household_members m1 join household_members m2 "
            "using (household_id) where m1.person_id = ?",
            params=[pupil],
        ).fetchall()
    }
    assert {m["person_id"] for m in members} == expected
    assert all(m["person"] is not None for m in members), "household members' names visible"
    forename, surname = snapshot.sql(
        "select forename, surname from person where person_id = ?", params=[pupil]
    ).fetchall()[0]
    found = access.search(dsl, "safeguarding", f"{forename} {surname}")
    assert pupil in {r["person_id"] for r in found}


def test_dsl_of_school_a_cannot_reach_a_pupil_of_school_b(access, schools, snapshot):
    dsl = user_for("school_dsl", schools)
    outsider = schools["outsider"]
    for read in (
        lambda: access.person(dsl, "safeguarding", outsider),
        lambda: access.child_profile(dsl, "safeguarding", outsider),
        lambda: access.household(dsl, "safeguarding", outsider),
        lambda: access.timeline(dsl, "safeguarding", outsider),
        lambda: access.involvement(dsl, "safeguarding", outsider),
        lambda: access.relationships(dsl, "safeguarding", outsider),
    ):
        with pytest.raises(NotFound):
            read()
    forename, surname, dob = snapshot.sql(
        "select forename, surname, dob from person where person_id = ?", params=[outsider]
    ).fetchall()[0]
    assert outsider not in {
        r["person_id"] for r in access.search(dsl, "safeguarding", f"{forename} {surname}", dob)
    }
    assert outsider not in {
        r["person_id"] for r in access.read(dsl, "safeguarding", "person", limit=500).items
    }
    # The same person is there for a social worker: the DSL is refused by scope alone.
    assert access.person(user_for("social_worker", schools), "safeguarding", outsider)


def test_dsl_table_reads_hold_only_their_scope(access, schools, snapshot, dsl_scope):
    """Each table read holds exactly the snapshot's rows in the DSL's scope: all of them,
    and nothing else."""
    dsl = user_for("school_dsl", schools)
    pupils, reach = dsl_scope["pupils"], dsl_scope["reach"]
    read = lambda table: access.read(dsl, "safeguarding", table, limit=500).items  # noqa: E731

    def held(table: str, columns: str, people: set[str], where: str = "true") -> Counter:
        """The snapshot's rows of ``table`` about ``people`` (``columns``, as a multiset)."""
        rows = snapshot.sql(
            f"select {columns} from {table} where {where} "
            "and person_id in (select unnest(?::varchar[]))",
            params=[sorted(people)],
        ).fetchall()
        assert rows, f"the county needs {table} rows in the DSL's scope"
        return Counter(rows)

    def got(table: str, columns: str) -> Counter:
        return Counter(tuple(r[c] for c in columns.split(", ")) for r in read(table))

    assert {r["person_id"] for r in read("person")} == reach
    assert {r["household_id"] for r in read("household")} == dsl_scope["households"]
    assert got("household_members", "person_id, household_id") == held(
        "household_members", "person_id, household_id", reach
    )
    assert got("child_summary", "person_id") == held("child_summary", "person_id", pupils)
    assert got("timeline", "person_id, agency, event_type") == held(
        "timeline", "person_id, agency, event_type", pupils, "agency = 'school'"
    )
    assert got("involvement", "person_id, agency, service, status") == held(
        "involvement", "person_id, agency, service, status", pupils
    )
    assert got("relationships", "person_id, related_person_id, relationship") == held(
        "relationships", "person_id, related_person_id, relationship", pupils
    )


# --- audit ---------------------------------------------------------------------------------


def test_every_access_layer_read_appends_one_audit_event(access, county, schools):
    engine = county.engine()
    sw = user_for("social_worker", schools)
    dsl = user_for("school_dsl", schools)
    pupil, outsider = schools["pupil_a"], schools["outsider"]
    calls = [
        (lambda: access.person(sw, "safeguarding", pupil), "allowed"),
        (lambda: access.child_profile(sw, "safeguarding", pupil), "allowed"),
        (lambda: access.household(sw, "safeguarding", pupil), "allowed"),
        (lambda: access.timeline(sw, "safeguarding", pupil, limit=2), "allowed"),
        (lambda: access.involvement(sw, "safeguarding", pupil), "allowed"),
        (lambda: access.search(sw, "safeguarding", "smith"), "allowed"),
        (lambda: access.read(sw, "safeguarding", "household", limit=3), "allowed"),
        (lambda: access.person(dsl, "safeguarding", outsider), "not_found"),
        (lambda: access.household(User("h", "health"), "safeguarding", pupil), "denied"),
    ]
    before = audit.head(engine)[0]
    for call, _ in calls:
        with contextlib.suppress(NotFound, AccessDenied):
            call()
    events = audit.events(engine, after_seq=before)
    assert [e.outcome for e in events] == [outcome for _, outcome in calls]
    first = events[0]
    assert (first.user_id, first.role, first.purpose) == (
        sw.user_id,
        "social_worker",
        "safeguarding",
    )
    assert first.person_ids == (pupil,)
    assert "person.nhs_number" in first.columns and first.lawful_basis
    household = events[2]
    assert set(household.person_ids) >= {pupil} and "household_members" in household.tables
    assert events[7].organisation == schools["school_a"] and events[7].person_ids == ()
    assert audit.verify(engine).ok


# --- a read that fails is audited as failed --------------------------------------------------


@pytest.fixture
def bare_access(tmp_path: Path, engine) -> AccessLayer:
    """An access layer over an empty published folder and an empty audit."""
    return AccessLayer(SnapshotStore(tmp_path / "published"), load_policy(), engine)


def _one_error_event(engine, before: int, name: str) -> audit.AuditRecord:
    events = audit.events(engine, after_seq=before)
    assert [e.outcome for e in events] == ["error"]
    assert events[0].detail is not None and events[0].detail["error"] == name
    return events[0]


def test_an_unexpected_failure_before_the_read_is_audited_as_error(
    bare_access, engine, monkeypatch
):
    secret = "Alfie Example 2014-03-02"

    def broken(_engine):
        raise RuntimeError(secret)

    monkeypatch.setattr("warehouse.access.restriction.restricted_records", broken)
    before = audit.head(engine)[0]
    with pytest.raises(RuntimeError, match=secret):
        bare_access.person(User("sw", "social_worker"), "safeguarding", "P1")
    event = _one_error_event(engine, before, "RuntimeError")
    assert secret not in str(event.detail) and event.person_ids == ()


def test_a_broken_snapshot_mid_read_is_audited_as_error_not_allowed(bare_access, engine):
    """The read gets a connection, then its query fails (the serving copy has no tables):
    the API answers 500, so the audit must not say the data was shared."""

    @contextlib.contextmanager
    def empty_snapshot():
        con = sqlite3.connect(":memory:")
        try:
            yield "family-view-broken", con
        finally:
            con.close()

    bare_access._snapshots.connection = empty_snapshot  # type: ignore[method-assign]
    before = audit.head(engine)[0]
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        bare_access.read(User("sw", "social_worker"), "safeguarding", "person")
    event = _one_error_event(engine, before, "OperationalError")
    assert event.detail["snapshot"] == "family-view-broken"
    assert "no such table" not in str(event.detail)
