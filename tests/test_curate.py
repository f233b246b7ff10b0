"""The curated tables say what the sources say: survivorship, statuses, timeline markers;
the analysts' file holds nothing identifying; aggregates suppress small counts; the data
dictionary is current.

Expected values are worked out here from the warehouse's ``current`` tables with SQL of
their own, not read back from the curated build.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import duckdb
import polars as pl
import pytest
import sqlalchemy as sa
from family_view_county import PSEUDONYM_KEY

from warehouse.curated_config import load_curated_config
from warehouse.dictionary import render
from warehouse.policy import load_policy
from warehouse.publish import open_snapshot

NHS_LIKE = re.compile(r"^\d{10}$")
UPN_LIKE = re.compile(r"^[A-Z]\d{11}[0-9A-Z]$")
FULL_POSTCODE = re.compile(r"^[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}$")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


@pytest.fixture(scope="module")
def db(published_county):
    """The published snapshot with the warehouse attached read-only as ``w``."""
    con = duckdb.connect()
    con.execute(f"attach '{published_county.store().current_path()}' as s (read_only)")
    con.execute(f"attach '{published_county.warehouse}' as w (read_only)")
    yield con
    con.close()


def rows(con, sql, params=()):
    return con.sql(sql, params=list(params)).fetchall()


def test_every_linked_person_has_one_golden_record(db):
    linked = rows(db, "select count(distinct person_id) from w.linked.person_records")[0][0]
    assert rows(db, "select count(*), count(distinct person_id) from s.person")[0] == (
        linked,
        linked,
    )


def test_survivorship_takes_dob_from_health_and_names_from_school(db):
    checked = rows(
        db,
        """
        select p.person_id, p.dob, h.birth_date, p.forename, s.legal_forename,
               p.surname, s.legal_surname, p.nhs_number, h.nhs_number
        from s.person p
        join w.linked.person_records rh on rh.person_id = p.person_id
             and rh.source = 'health' and rh.source_table = 'patients'
        join w.current.health__patients h on h.local_patient_id = rh.local_key
        join w.linked.person_records rs on rs.person_id = p.person_id
             and rs.source = 'school' and rs.source_table = 'pupils'
        join w.current.school__pupils s on s.upn = rs.local_key
        where h.nhs_number_valid and h.birth_date is not null
        """,
    )
    assert len(checked) > 20
    for _, dob, birth_date, fore, legal_fore, sur, legal_sur, nhs, health_nhs in checked:
        assert dob == birth_date
        assert (fore, sur) == (legal_fore.strip(), legal_sur.strip())
        assert nhs == health_nhs.replace(" ", "")


def test_other_names_are_kept(db):
    preferred = rows(
        db,
        """
        select p.person_id, p.alternative_names, s.preferred_forename || ' ' || s.legal_surname
        from s.person p
        join w.linked.person_records r on r.person_id = p.person_id
             and r.source = 'school' and r.source_table = 'pupils'
        join w.current.school__pupils s on s.upn = r.local_key
        where s.preferred_forename is not null and s.preferred_forename <> s.legal_forename
        """,
    )
    assert preferred
    for _, alternatives, name in preferred:
        assert name in alternatives


def test_child_summary_statuses_follow_open_episodes(db):
    as_of = rows(db, "select max(extract_date) from w.meta.deliveries where status='loaded'")[0][0]
    flags = {"cin_open": "cin_plan", "cp_open": "cp_plan", "looked_after": "looked_after"}
    seen_open = 0
    for flag, episode_type in flags.items():
        open_now = {
            r[0]
            for r in rows(
                db,
                """
                select distinct l.person_id from w.current.council_csc__episodes e
                join w.linked.person_records l on l.source = 'council_csc'
                     and l.source_table = 'people' and l.local_key = e.csc_person_id
                where e.episode_type = ? and (e.end_date is null or e.end_date > ?)
                """,
                [episode_type, as_of],
            )
        }
        children = dict(rows(db, f"select person_id, {flag} from s.child_summary"))
        seen_open += sum(children.values())
        for person, is_open in children.items():
            assert is_open == (person in open_now), (flag, person)
    assert seen_open, "the county should have children with open plans"
    wrong = rows(
        db,
        "select count(*) from s.child_summary where looked_after and social_care_status "
        "<> 'looked_after'",
    )[0][0]
    assert wrong == 0, "looked after is the most serious status and must name it"


def test_domestic_abuse_counts_the_last_twelve_months(db):
    as_of = rows(db, "select max(extract_date) from w.meta.deliveries where status='loaded'")[0][0]
    expected = dict(
        rows(
            db,
            """
            select l.person_id, count(distinct i.incident_ref)
            from w.current.police__involvements v
            join w.current.police__incidents i using (incident_ref)
            join w.linked.person_records l on l.source = 'police'
                 and l.source_table = 'persons' and l.local_key = v.nominal_id
            where i.incident_type = 'domestic_abuse'
              and cast(i.occurred_at as date) > ? and cast(i.occurred_at as date) <= ?
            group by 1
            """,
            [as_of - timedelta(days=365), as_of],
        )
    )
    got = dict(rows(db, "select person_id, domestic_abuse_12m from s.child_summary"))
    children_with = {p: n for p, n in expected.items() if p in got}
    assert children_with, "some child in the county should have a recent incident"
    for person, count in got.items():
        assert count == expected.get(person, 0)


def test_timeline_carries_fact_opinion_confidentiality_and_sensitivity(db):
    agencies = {r[0] for r in rows(db, "select distinct agency from s.timeline")}
    assert agencies == {"council_csc", "council_eh", "police", "health", "school"}
    source = dict(
        rows(
            db,
            "select episode_id, (coalesce(summary_is_opinion, false), "
            "coalesce(confidential_from_subject, false)) from w.current.council_csc__episodes",
        )
    )
    marked = rows(
        db,
        "select source_key, is_opinion, confidential_from_subject from s.timeline "
        "where agency = 'council_csc'",
    )
    assert marked and any(o for _, o, _ in marked) and any(c for _, _, c in marked)
    for key, opinion, confidential in marked:
        assert (opinion, confidential) == tuple(source[key])
    classes = dict(rows(db, "select agency, list(distinct sensitivity) from s.timeline group by 1"))
    assert set(classes["health"]) == {"special_category"}
    assert "criminal_offence" in classes["police"]
    offences = rows(
        db,
        "select count(*) from s.timeline t join w.current.police__incidents i "
        "on i.incident_ref = t.source_key where i.offence is not null "
        "and t.sensitivity <> 'criminal_offence'",
    )[0][0]
    assert offences == 0


# Each agency's involvement rows, worked out here: (person, agency, service, start, end,
# practitioner), resolved to golden persons through the linkage.
_INVOLVEMENT_ROWS = """
    select l.person_id, 'council_csc', e.episode_type, e.start_date, e.end_date, e.worker_name
    from w.current.council_csc__episodes e
    join w.linked.person_records l on l.source = 'council_csc' and l.source_table = 'people'
         and l.local_key = e.csc_person_id
    union all
    select l.person_id, 'council_eh', 'early_help', e.start_date, e.end_date,
           e.lead_practitioner
    from w.current.council_eh__episodes e
    join w.current.council_eh__people p on p.family_id = e.family_id
    join w.linked.person_records l on l.source = 'council_eh' and l.source_table = 'people'
         and l.local_key = p.eh_person_id
    union all
    select l.person_id, 'police', 'police_contact', cast(min(i.occurred_at) as date),
           cast(max(i.occurred_at) as date), null
    from w.current.police__involvements v
    join w.current.police__incidents i on i.incident_ref = v.incident_ref
    join w.linked.person_records l on l.source = 'police' and l.source_table = 'persons'
         and l.local_key = v.nominal_id
    group by l.person_id, v.nominal_id
    union all
    select l.person_id, 'health', 'gp_registration', null, null, null
    from w.current.health__patients h
    join w.linked.person_records l on l.source = 'health' and l.source_table = 'patients'
         and l.local_key = h.local_patient_id
    union all
    select l.person_id, 'school', 'school_roll', s.entry_date, s.leaving_date, null
    from w.current.school__pupils s
    join w.linked.person_records l on l.source = 'school' and l.source_table = 'pupils'
         and l.local_key = s.upn
"""


def _leads(rows: list[tuple]) -> set:
    """Who may lead a service with these (start, end, practitioner, open) rows: the
    practitioners on its latest open row, else on its latest row (ties: any of them)."""
    candidates = [r for r in rows if r[3]] or rows
    latest = max((r[0] or date.min) for r in candidates)
    return {r[2] for r in candidates if (r[0] or date.min) == latest}


def test_involvement_status_and_lead_practitioner(db):
    as_of = rows(db, "select max(extract_date) from w.meta.deliveries where status='loaded'")[0][0]
    # A service is open while any of its rows is (no end, or an end after the as-of date);
    # its lead practitioner is the one on its latest open row (else its latest row).
    services: dict[tuple, list[tuple]] = {}
    for person, agency, service, start, end, practitioner in rows(db, _INVOLVEMENT_ROWS):
        services.setdefault((person, agency, service), []).append(
            (start, end, practitioner, end is None or end > as_of)
        )
    got = {
        (person, agency, service): (status, practitioner)
        for person, agency, service, status, practitioner in rows(
            db, "select person_id, agency, service, status, practitioner from s.involvement"
        )
    }
    assert {k: s for k, (s, _) in got.items()} == {
        k: "open" if any(r[3] for r in service) else "closed" for k, service in services.items()
    }
    for key, (_, practitioner) in got.items():
        assert practitioner in _leads(services[key]), key
    # Both outcomes are exercised, open services with a named lead, and a service whose
    # rows name different practitioners.
    assert {s for s, _ in got.values()} == {"open", "closed"}
    led = [k for k, (s, p) in got.items() if s == "open" and p]
    assert {agency for _, agency, _ in led} == {"council_csc", "council_eh"}
    assert any(len({r[2] for r in service}) > 1 for service in services.values())


def test_the_lead_practitioner_is_on_the_latest_open_row():
    """The cases the county's data may not hold: a closed row newer than the open ones,
    two open rows, an end on the as-of date itself (closed) and the day after (open)."""
    import polars as pl

    from warehouse.curate import build_involvement
    from warehouse.curated_config import InvolvementSource

    as_of = date(2026, 11, 20)
    con = duckdb.connect()
    con.execute(
        """
        create table episodes as select * from (values
          ('1', 'cin_plan', date '2025-01-01', null, 'Open Older'),
          ('1', 'cin_plan', date '2026-01-01', date '2026-11-21', 'Open Newer'),
          ('1', 'cin_plan', date '2026-06-01', date '2026-10-01', 'Closed Newest'),
          ('1', 'referral', date '2024-01-01', date '2024-02-01', 'Early'),
          ('1', 'referral', date '2025-05-01', date '2026-11-20', 'Late'),
          ('2', 'cin_plan', date '2026-02-01', date '2026-11-20', 'Ends Today')
        ) t(local_key, service, start_date, end_date, practitioner)
        """
    )
    source = InvolvementSource(
        agency="council_csc",
        person_table="council_csc.people",
        sql="select *, null as team, null as practitioner_email, null as organisation "
        "from episodes",
    )
    links = pl.DataFrame(
        {
            "source": ["council_csc"] * 2,
            "source_table": ["people"] * 2,
            "local_key": ["1", "2"],
            "person_id": ["P1", "P2"],
        }
    )
    config = SimpleNamespace(involvement=[source])
    got = build_involvement(con, config, links, {}, as_of)
    assert got.select(
        "person_id", "service", "status", "start_date", "end_date", "practitioner"
    ).rows() == [
        ("P1", "cin_plan", "open", date(2025, 1, 1), None, "Open Newer"),
        ("P1", "referral", "closed", date(2024, 1, 1), date(2026, 11, 20), "Late"),
        ("P2", "cin_plan", "closed", date(2026, 2, 1), date(2026, 11, 20), "Ends Today"),
    ]


def test_organisation_rows_take_the_type_their_entry_declares():
    """Every member row is of the declared type (what the role policy was checked against
    at load); a query that also returns a type is refused naming the entry, not silently
    overridden or trusted."""
    import polars as pl

    from warehouse.curate import CurationError, build_organisations
    from warehouse.curated_config import OrganisationSource

    con = duckdb.connect()
    con.execute(
        "create table pupils as select * from (values ('U1', '100'), ('U2', '200'), "
        "('U9', '100')) t(upn, urn)"
    )
    schools = OrganisationSource(
        person_table="school.pupils",
        organisation_type="school",
        sql="select upn as local_key, urn as organisation_id from pupils",
    )
    links = pl.DataFrame(
        {
            "source": ["school"] * 2,
            "source_table": ["pupils"] * 2,
            "local_key": ["U1", "U2"],
            "person_id": ["P1", "P2"],
        }
    )
    unlinked: dict[str, int] = {}
    got = build_organisations(con, SimpleNamespace(organisations=[schools]), links, unlinked)
    assert got.rows() == [("P1", "school", "100"), ("P2", "school", "200")]
    assert unlinked == {"organisations:school.pupils": 1}

    computed = OrganisationSource(
        person_table="school.pupils",
        organisation_type="school",
        sql="select upn as local_key, 'academy' as organisation_type, urn as organisation_id "
        "from pupils",
    )
    with pytest.raises(CurationError) as err:
        build_organisations(con, SimpleNamespace(organisations=[computed]), links, {})
    assert str(err.value).startswith("organisations:school.pupils: the query returns")
    assert "(organisation_type: school)" in str(err.value)


# --- analysts and partnership ----------------------------------------------------------------


@pytest.fixture(scope="module")
def analyst_file(published_county) -> Path:
    store = published_county.store()
    return store.path(store.current().analyst)


def test_analyst_file_holds_no_identifying_value(db, analyst_file):
    identifying = set()
    for sql in (
        "select forename from s.person union select surname from s.person",
        "select unnest(alternative_names) from s.person",
        "select cast(dob as varchar) from s.person",
        "select nhs_number from s.person union select upn from s.person",
        "select postcode from s.person union select address_line_1 from s.person",
        "select summary from s.timeline union select detail from s.timeline",
        "select practitioner from s.involvement",
    ):
        identifying |= {v for (v,) in rows(db, sql) if v}
    with open_snapshot(analyst_file) as con:
        tables = rows(con, "select table_name from duckdb_tables() where not internal")
        assert {"person", "timeline", "child_summary"} <= {t for (t,) in tables}
        for (table,) in tables:
            columns = [
                c
                for (c,) in rows(
                    con, f"select column_name from duckdb_columns() where table_name = '{table}'"
                )
            ]
            for column in columns:
                assert (
                    not re.search(
                        r"name|dob|nhs|upn|postcode$|address|summary|detail|practitioner", column
                    )
                    or column == "postcode_district"
                ), f"{table}.{column}"
                values = [
                    v
                    for (v,) in rows(
                        con, f'select distinct cast("{column}" as varchar) from "{table}"'
                    )
                    if v
                ]
                for value in values:
                    assert value not in identifying, f"{table}.{column} holds {value!r}"
                    assert not NHS_LIKE.match(value) and not UPN_LIKE.match(value)
                    assert not FULL_POSTCODE.match(value) and not ISO_DATE.match(value)


def _keyed(value: str | None) -> str | None:
    """The pseudonym under the test county's key: HMAC-SHA256, first 20 hex digits."""
    if value is None:
        return None
    return hmac.new(PSEUDONYM_KEY, value.encode(), hashlib.sha256).hexdigest()[:20]


def test_analyst_file_pseudonyms_are_keyed_and_consistent(db, analyst_file):
    people = dict(rows(db, "select person_id, household_id from s.person"))
    households = {h for h in people.values() if h}
    summary = {
        p: rest
        for p, *rest in rows(
            db,
            "select person_id, social_care_status, cp_open, looked_after, domestic_abuse_12m "
            "from s.child_summary",
        )
    }
    with open_snapshot(analyst_file) as con:
        analyst_people = dict(rows(con, "select person_key, household_key from person"))
        analyst_summary = {
            k: rest
            for k, *rest in rows(
                con,
                "select person_key, social_care_status, cp_open, looked_after, "
                "domestic_abuse_12m from child_summary",
            )
        }
        text_values = set()
        for table, column in rows(
            con,
            "select table_name, column_name from duckdb_columns() "
            "where not internal and data_type = 'VARCHAR'",
        ):
            text_values |= {
                v for (v,) in rows(con, f'select distinct "{column}" from "{table}"') if v
            }
    # Each person (and their household) is the keyed hash of their id, so a person's rows
    # join across tables and nights, and nobody without the key can recompute them.
    assert len(analyst_people) == len(people)
    assert analyst_people == {_keyed(p): _keyed(h) for p, h in people.items()}
    assert analyst_summary == {_keyed(p): rest for p, rest in summary.items()}
    unkeyed = {hashlib.sha256(p.encode()).hexdigest()[:20] for p in people}
    assert not unkeyed & set(analyst_people)
    # No id of the curated tables appears anywhere in the analysts' file.
    assert text_values and not text_values & (set(people) | households)


def test_analysts_can_use_sqlalchemy_on_their_file(analyst_file):
    engine = sa.create_engine(f"duckdb:///{analyst_file}", connect_args={"read_only": True})
    try:
        with engine.connect() as connection:
            bands = connection.execute(
                sa.text("select age_band, count(*) from person group by 1 order by 1")
            ).all()
    finally:
        # The pool keeps the file open until disposed: later tests open it with other
        # settings, which DuckDB refuses while this connection lives.
        engine.dispose()
    assert bands and all(band is None or re.match(r"^\d+(-\d+|\+)$", band) for band, _ in bands)


def test_a_lone_suppressed_cell_takes_the_smallest_of_its_group_with_it():
    """One withheld district in a status could be recovered from the status's county
    count less the districts shown; with two withheld only their sum can."""
    from warehouse.curate import complement, suppress

    counts = pl.DataFrame(
        {
            "postcode_district": ["TA1", "TA2", "TA3", "TA1", "TA2", "TA4"],
            "social_care_status": ["cin", "cin", "cin", "cp_plan", "cp_plan", "looked_after"],
            "children": [3, 12, 7, 6, 9, 2],
        }
    )
    out = complement(suppress(counts, ["children"], 5), ["children"], ["social_care_status"])
    assert out.rows() == [
        ("TA1", "cin", None, True),
        ("TA2", "cin", 12, False),
        ("TA3", "cin", None, True),  # the smallest published cin cell goes with TA1's
        ("TA1", "cp_plan", 6, False),  # nothing withheld: nothing to protect
        ("TA2", "cp_plan", 9, False),
        ("TA4", "looked_after", None, True),  # alone in its group
    ]


def test_partnership_aggregates_suppress_small_counts(db):
    suppressed_any = False
    for table, counts in (
        ("agg_children_by_status", ["children"]),
        ("agg_involvement", ["people"]),
        ("agg_domestic_abuse", ["children", "incidents"]),
    ):
        for row in rows(db, f"select {', '.join(counts)}, suppressed from s.{table}"):
            *values, suppressed = row
            if suppressed:
                suppressed_any = True
                assert all(v is None for v in values), table
            else:
                assert all(v is not None and v >= 5 for v in values), table
    assert suppressed_any, "a county this small must have some small groups"
    # An unsuppressed count is the true count.
    district, status, children = rows(
        db,
        "select postcode_district, social_care_status, children from s.agg_children_by_status "
        "where not suppressed order by children desc limit 1",
    )[0]
    expected = rows(
        db,
        "select count(*) from s.child_summary c join s.person p using (person_id) "
        "where coalesce(p.postcode_district, 'unknown') = ? and c.social_care_status = ?",
        [district, status],
    )[0][0]
    assert children == expected


def test_data_dictionary_is_current():
    committed = Path(__file__).resolve().parent.parent / "docs" / "data-dictionary.md"
    assert committed.read_text(encoding="utf-8") == render(load_policy()), (
        "docs/data-dictionary.md is stale: run `sdv dictionary`"
    )


def _people(*rows):
    """Golden person rows with just what the life-event rules read."""
    import polars as pl

    return pl.DataFrame(
        rows, schema=["person_id", "dob", "is_child", "date_of_death"], orient="row"
    ).with_columns(pl.col("dob").cast(pl.Date), pl.col("date_of_death").cast(pl.Date))


def test_a_child_turning_18_moves_to_adult_status_with_a_transition_flag():
    from warehouse.curate import summary_people

    as_of = date(2026, 11, 20)
    people = _people(
        ("child", date(2008, 11, 21), True, None),  # 18 tomorrow: still a child
        ("today", date(2008, 11, 20), False, None),  # 18 today
        ("window", date(2007, 11, 21), False, None),  # turned 18 on the window's last day
        ("gone", date(2007, 11, 20), False, None),  # 12 months ago: handed over
        ("adult", date(1980, 1, 1), False, None),
        ("no_dob", None, False, None),
    )
    summary = summary_people(people, adult_age=18, transition_months=12, as_of=as_of)
    got = {r["person_id"]: (r["age_status"], r["transition_to_adult"]) for r in summary.to_dicts()}
    assert got == {
        "child": ("child", False),
        "today": ("adult", True),
        "window": ("adult", True),
    }


def test_child_summary_marks_young_adults_and_counts_only_children(db):
    as_of = rows(db, "select max(extract_date) from w.meta.deliveries where status='loaded'")[0][0]
    summary = rows(
        db,
        "select c.age_status, c.transition_to_adult, p.is_child, p.dob from s.child_summary c "
        "join s.person p using (person_id)",
    )
    assert summary
    for age_status, transition, is_child, dob in summary:
        assert (age_status == "child") == is_child and transition == (not is_child)
        if not is_child:
            eighteenth = date(dob.year + 18, dob.month, min(dob.day, 28))
            assert as_of - timedelta(days=366) <= eighteenth <= as_of
    # The partnership's counts are of children only, by district and status, each count
    # under the configured minimum withheld.
    min_count = load_curated_config().aggregates.min_count
    groups = Counter(
        rows(
            db,
            "select coalesce(p.postcode_district, 'unknown'), c.social_care_status "
            "from s.child_summary c join s.person p using (person_id) "
            "where c.age_status = 'child'",
        )
    )
    expected = [
        (district, status, None if n < min_count else n, n < min_count)
        for (district, status), n in groups.items()
    ]
    published = rows(
        db,
        "select postcode_district, social_care_status, children, suppressed "
        "from s.agg_children_by_status",
    )
    assert sorted(published, key=repr) == sorted(expected, key=repr)
    assert any(s for *_, s in published) and not all(s for *_, s in published)


def test_a_death_ends_household_membership_but_keeps_the_history():
    import polars as pl

    from warehouse.curate import build_households

    died = date(2026, 3, 1)
    people = _people(
        ("mum", date(1990, 1, 1), False, None),
        ("gran", date(1940, 1, 1), False, died),
        ("kid", date(2015, 1, 1), True, None),
    ).with_columns(
        *(pl.lit(None, dtype=pl.String).alias(c) for c in ("address_line_1", "town", "uprn")),
        pl.lit("AB1 2CD").alias("postcode"),
        pl.lit("AB1").alias("postcode_district"),
    )
    members = pl.DataFrame(
        {
            "household_id": ["H1"] * 3,
            "person_id": ["mum", "gran", "kid"],
            "role": ["adult", "adult", "child"],
            "from_date": [None, None, None],
            "to_date": [None, None, None],
        },
        schema_overrides={"from_date": pl.Date, "to_date": pl.Date},
    )
    household, listed = build_households(members, people)
    gran = listed.filter(pl.col("person_id") == "gran").row(0, named=True)
    assert gran["deceased"] and gran["to_date"] == died
    assert listed.filter(pl.col("deceased")).height == 1
    assert household.select("members", "children").row(0) == (2, 1)


def test_survivorship_takes_the_best_table_then_the_newest_record_then_the_lower_key():
    import polars as pl

    from warehouse.curate import _newest_first, _survive

    day, earlier = date(2026, 11, 20), date(2026, 10, 1)
    rows = pl.DataFrame(
        {
            "person_id": ["P1"] * 5 + ["P2"] * 2,
            "_table": [
                "school.pupils",
                "health.patients",
                "health.patients",
                "health.patients",
                "police.persons",
                "police.persons",
                "police.persons",
            ],
            "local_key": ["9", "7", "3", "1", "5", "2", "4"],
            "_record_date": [day, day, day, earlier, day, earlier, earlier],
            "dob_estimated": [None] * 7,
            "surname": ["School", "Seven", "Three", "Older", "Police", "Two", "Four"],
        },
        schema_overrides={"_record_date": pl.Date, "dob_estimated": pl.String},
    )
    order = ["health.patients", "school.pupils"]
    got = _survive(_newest_first(rows, ["surname"]), "surname", order)
    # P1: health before school; of health's records the newest two tie on the date, so
    # the lower local key ("3", listed after "7"); P2: no table in the order holds it.
    assert got.select("person_id", "surname", "_src_surname").rows() == [
        ("P1", "Three", "health.patients")
    ]
    # However the delivery lists them.
    assert _survive(_newest_first(rows.reverse(), ["surname"]), "surname", order).equals(got)
