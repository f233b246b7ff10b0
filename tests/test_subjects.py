"""Whose rows are these: every delivered row leads to the people it is about.

Subject access, erasure and retention rely on it, so the mapping is checked against what
the extract spec says each table's columns mean, worked out here with plain SQL.
"""

from __future__ import annotations

from datetime import date

import pytest
from conftest import police_tables

from tests.test_config import write_config
from warehouse.landing import Delivery
from warehouse.sources import ConfigError, load_source, load_sources
from warehouse.store import connect, load_delivery
from warehouse.subjects import Relation, row_subjects, rows_about


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["tables"]["incidents"].pop("about"), "no 'about'"),
        (
            lambda d: d["tables"]["incidents"].update(about=[{"table": "crimes", "match": {}}]),
            "about",
        ),
        (
            lambda d: d["tables"]["involvements"].update(
                about=[{"table": "persons", "match": {"nominal": "nominal_id"}}]
            ),
            "nominal",
        ),
        (
            lambda d: d["tables"]["involvements"].update(
                about=[{"table": "incidents", "match": {"incident_ref": "incident_ref"}}]
            ),
            "loops",
        ),
    ],
)
def test_a_table_that_cannot_lead_to_its_people_is_refused(tmp_path, mutate, message):
    path = write_config(tmp_path, "police", mutate)
    with pytest.raises(ConfigError, match=message):
        load_source(path)


@pytest.fixture(scope="module")
def warehouse(published_county):
    con = published_county.connect()
    yield con, load_sources()
    con.close()


def subjects(con, sources, source, table, schema="staged"):
    """{row's key columns as text: {(record_id, direct)}} for one table."""
    frame = row_subjects(con, sources[source], Relation(schema, source, table))
    keyed = con.sql(f'select rowid as _rowid, * from {schema}."{source}__{table}"').pl()
    out: dict[tuple, set] = {}
    key_columns = sources[source].tables[table].local_key
    joined = frame.join(keyed, on="_rowid")
    for row in joined.iter_rows(named=True):
        key = tuple(str(row[c]) for c in key_columns)
        out.setdefault(key, set()).add((row["record_id"], row["direct"]))
    return out


def test_an_episode_is_about_its_child_directly(warehouse):
    con, sources = warehouse
    got = subjects(con, sources, "council_csc", "episodes")
    expected = dict(
        con.sql(
            "select e.episode_id, e.csc_person_id from staged.council_csc__episodes e "
            "where e.csc_person_id in (select csc_person_id from raw.council_csc__people)"
        ).fetchall()
    )
    assert expected
    assert got == {(e,): {(f"council_csc|people|{p}", True)} for e, p in expected.items()}


def test_an_incident_is_about_everyone_involved_through_the_incident(warehouse):
    con, sources = warehouse
    got = subjects(con, sources, "police", "incidents")
    involved: dict[tuple, set] = {}
    for ref, nominal in con.sql(
        "select distinct incident_ref, nominal_id from raw.police__involvements "
        "where nominal_id in (select nominal_id from raw.police__persons)"
    ).fetchall():
        involved.setdefault((ref,), set()).add((f"police|persons|{nominal}", False))
    staged = {
        (r,) for (r,) in con.sql("select incident_ref from staged.police__incidents").fetchall()
    }
    assert any(len(v) > 1 for v in got.values()), "some incidents involve several people"
    assert got == {k: v for k, v in involved.items() if k in staged}


def test_a_family_episode_is_about_every_member_and_a_contact_about_their_pupil(warehouse):
    con, sources = warehouse
    families = subjects(con, sources, "council_eh", "episodes")
    members: dict[str, set] = {}
    for family, person in con.sql(
        "select distinct family_id, eh_person_id from raw.council_eh__people"
    ).fetchall():
        members.setdefault(family, set()).add((f"council_eh|people|{person}", False))
    for (episode,), about in families.items():
        (family,) = con.sql(
            "select family_id from staged.council_eh__episodes where eh_episode_id = ?",
            params=[episode],
        ).fetchall()[0]
        assert about == members[family]
    contacts = subjects(con, sources, "school", "contacts")
    pupils = {u for (u,) in con.sql("select upn from raw.school__pupils").fetchall()}
    assert contacts
    for (upn, priority), about in contacts.items():
        expected = {(f"school|contacts|{upn}|{priority}", True)}
        if upn in pupils:
            expected.add((f"school|pupils|{upn}", True))
        assert about == expected


def test_rows_about_a_record_come_once_for_every_delivery_that_carried_it(
    tmp_path, delivery_writer, sources
):
    """raw and staged hold a record once; what a subject access export shows is each
    delivery that carried it, with that delivery's file position."""
    con = connect(tmp_path / "warehouse.duckdb")
    night_2 = police_tables(3)
    night_2["persons"].reverse()  # N1 moves from record 1 to record 3
    for day, tables in (("2026-11-19", police_tables(3)), ("2026-11-20", night_2)):
        folder = delivery_writer("police", day, tables)
        load_delivery(con, Delivery("police", date.fromisoformat(day), folder), sources["police"])
    for schema in ("raw", "staged"):
        rows = rows_about(
            con, sources["police"], Relation(schema, "police", "persons"), {"police|persons|N1"}
        )
        assert rows.select("_extract_date", "_row_number", "nominal_id").rows() == [
            (date(2026, 11, 19), 1, "N1"),
            (date(2026, 11, 20), 3, "N1"),
        ], schema
        assert rows["_about"].to_list() == [["police|persons|N1"]] * 2
    con.close()


def test_a_key_delivered_padded_or_in_lower_case_is_the_record_linkage_knows(
    tmp_path, delivery_writer, sources
):
    """Raw keeps values as delivered; staging trims keys (and upper-cases UPNs). A person
    row keyed " N1 " and its involvement keyed "N1" are both about police|persons|N1, in
    raw as in staged, or erasure and subject access would miss the raw rows."""
    con = connect(tmp_path / "warehouse.duckdb")
    tables = police_tables(2)
    tables["persons"][0]["nominal_id"] = " N1 "
    folder = delivery_writer("police", "2026-11-20", tables)
    load_delivery(con, Delivery("police", date(2026, 11, 20), folder), sources["police"])
    for schema in ("raw", "staged"):
        for table in ("persons", "involvements"):
            rows = rows_about(
                con, sources["police"], Relation(schema, "police", table), {"police|persons|N1"}
            )
            assert rows.height == 1, (schema, table)
    con.close()
