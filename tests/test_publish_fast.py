"""The publish's column-at-a-time code says exactly what the per-row code it replaced said.

Pseudonyms must stay byte-identical across snapshots (analysts join on them night to
night), and the curated JSON columns are compared as text by readers and by erasure: each
vectorised builder is checked here against the straightforward per-value oracle.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading

import duckdb
import polars as pl
import pytest

from matching.config import load_linkage_config
from warehouse import curate
from warehouse.curate import TABLE_ORDER, _event_hashes, _json_object, _json_values, _per_distinct
from warehouse.curated_config import load_curated_config
from warehouse.family_view import analyst_leaks, identifying_values
from warehouse.pseudonymise import Pseudonyms, analyst_tables, pseudonym
from warehouse.publish import open_snapshot, write_tables
from warehouse.serving import open_serving
from warehouse.sources import load_sources
from warehouse.store import connect

KEY = bytes(range(32))
TRICKY = [
    "plain",
    "",
    'quote " inside',
    "back\\slash",
    "tab\there\nnewline",
    "Zoë Ní Bhriain",
    "日本",
    "emoji 🙂",
    "\x01control",
    "P-000123",
]


def test_pseudonyms_equal_one_hmac_per_value():
    values = pl.Series("person_id", [*TRICKY, None, "P-000123", "plain"])
    got = Pseudonyms(KEY)(values).to_list()
    expected = [
        None if v is None else hmac.new(KEY, v.encode(), hashlib.sha256).hexdigest()[:20]
        for v in values.to_list()
    ]
    assert got == expected
    assert got[0] == pseudonym("plain", KEY)


def test_pseudonym_cache_is_per_key():
    """A cached pseudonym made under one key is never served under another."""
    first, second = Pseudonyms(KEY), Pseudonyms(bytes(32))
    values = pl.Series(["P-1", "P-2"])
    assert first(values).to_list() == [pseudonym(v, KEY) for v in values]
    assert second(values).to_list() == [pseudonym(v, bytes(32)) for v in values]


def test_analyst_ids_hash_the_same_across_tables():
    person = pl.DataFrame({"person_id": ["P1", "P2"], "household_id": ["H1", None]})
    involvement = pl.DataFrame({"person_id": ["P2", "P1", "P2"]})
    keys = Pseudonyms(KEY)
    assert keys(person["person_id"]).to_list() == [pseudonym("P1", KEY), pseudonym("P2", KEY)]
    assert keys(person["household_id"]).to_list() == [pseudonym("H1", KEY), None]
    assert keys(involvement["person_id"]).to_list() == [
        pseudonym(v, KEY) for v in ("P2", "P1", "P2")
    ]


def test_json_values_equal_json_dumps():
    frame = pl.DataFrame({"v": [*TRICKY, None]})
    got = frame.select(_json_values(pl.col("v"))).to_series().to_list()
    assert got == [json.dumps(v) for v in frame["v"].to_list()]


def test_json_object_equals_json_dumps_of_the_present_entries():
    frame = pl.DataFrame(
        {
            "a": ["x", None, 'q"', None],
            "b": [None, None, "Zoë", "y"],
            "c": ["z", None, "\\", "w"],
        }
    )
    got = (
        frame.select(_json_object([("a", pl.col("a")), ("b", pl.col("b")), ("c", pl.col("c"))]))
        .to_series()
        .to_list()
    )
    expected = [
        json.dumps({k: v for k, v in row.items() if v is not None})
        for row in frame.iter_rows(named=True)
    ]
    assert got == expected


@pytest.fixture(scope="module")
def snapshot(published_county) -> duckdb.DuckDBPyConnection:
    con = open_snapshot(published_county.store().current_path())
    yield con
    con.close()


def test_curated_json_columns_are_what_json_dumps_writes(snapshot):
    """field_sources and sources_last_delivered are ``json.dumps(..., sort_keys=True)``,
    key_workers ``json.dumps`` of the workers in (agency, service) order."""
    checked = 0
    for table, column, sort_keys in (
        ("person", "field_sources", True),
        ("child_summary", "sources_last_delivered", True),
        ("child_summary", "key_workers", False),
    ):
        for (value,) in snapshot.sql(f"select {column} from {table}").fetchall():
            assert value is not None, (table, column)
            assert json.dumps(json.loads(value), sort_keys=sort_keys) == value, value
            checked += 1
    workers = [
        json.loads(v)
        for (v,) in snapshot.sql("select key_workers from child_summary").fetchall()
        if v != "[]"
    ]
    assert workers, "the county should have children with key workers"
    for listed in workers:
        assert all(list(w) == ["agency", "service", "name", "email", "team"] for w in listed)
        assert [(w["agency"], w["service"]) for w in listed] == sorted(
            (w["agency"], w["service"]) for w in listed
        )
    assert checked


def test_analyst_tables_hash_like_the_per_value_pseudonym(snapshot):
    person = snapshot.sql("select * from person").pl()
    timeline = snapshot.sql("select * from timeline").pl()
    tables = {name: snapshot.sql(f'select * from "{name}"').pl() for name in _curated(snapshot)}
    out = analyst_tables(tables, KEY)
    assert out["person"]["person_key"].to_list() == [pseudonym(v, KEY) for v in person["person_id"]]
    assert out["person"]["household_key"].to_list() == [
        None if v is None else pseudonym(v, KEY) for v in person["household_id"]
    ]
    assert out["timeline"]["person_key"].to_list() == [
        pseudonym(v, KEY) for v in timeline["person_id"]
    ]


def _curated(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        name
        for (name,) in con.sql(
            "select table_name from duckdb_tables() where table_name <> 'snapshot_info'"
        ).fetchall()
    ]


def _leaks_one_value_at_a_time(analyst, snapshot) -> list[str]:
    """The per-value comparison ``analyst_leaks`` replaced: the oracle."""
    with open_snapshot(snapshot) as source:
        forbidden = identifying_values(source)
    leaks = []
    with open_snapshot(analyst) as con:
        columns = con.sql(
            "select table_name, column_name from duckdb_columns() where schema_name = 'main' "
            "and database_name = current_database() and not internal "
            "order by table_name, column_index"
        ).fetchall()
        for table, column in columns:
            values = con.sql(f'select distinct cast("{column}" as varchar) from "{table}"')
            hits = sum(1 for (v,) in values.fetchall() if v in forbidden)
            if hits:
                leaks.append(f"{table}.{column}: {hits} identifying value(s)")
    return leaks


def test_analyst_leaks_finds_what_the_per_value_comparison_finds(published_county, tmp_path):
    store = published_county.store()
    snapshot = store.current_path()
    clean = store.path(store.current().analyst)
    assert analyst_leaks(clean, snapshot) == _leaks_one_value_at_a_time(clean, snapshot) == []
    with open_snapshot(snapshot) as con:
        person = con.sql("select * from person").pl()
        timeline = con.sql("select * from timeline").pl()
    leaky = {
        # names, a date of birth as text, full postcodes and districts, free text
        "person": person.select("forename", "dob", "postcode", "postcode_district", "sex"),
        "timeline": timeline.select("summary", "agency", pl.col("event_date").cast(pl.String)),
    }
    path = tmp_path / "leaky.duckdb"
    write_tables(path, leaky, {"as_of": "test"}, {})
    found = analyst_leaks(path, snapshot)
    assert found == _leaks_one_value_at_a_time(path, snapshot)
    flagged = {leak.split(":")[0] for leak in found}
    assert {"person.forename", "person.dob", "person.postcode", "timeline.summary"} <= flagged
    assert "person.postcode_district" not in flagged  # a district alone is not an address
    assert "person.sex" not in flagged


def test_event_ids_and_per_value_helpers_equal_map_elements():
    keys = pl.Series("k", [*TRICKY, None, "plain"])
    expected = keys.map_elements(
        lambda v: "E" + hashlib.sha256(v.encode()).hexdigest()[:16], return_dtype=pl.String
    )
    assert _event_hashes(keys).to_list() == expected.to_list()
    frame = keys.to_frame()
    as_list = frame.select(
        pl.col("k").pipe(_per_distinct, lambda v: [v, v[:1]], pl.List(pl.String))
    )
    assert as_list.to_series().to_list() == [None if v is None else [v, v[:1]] for v in keys]
    some = frame.select(
        pl.col("k").pipe(_per_distinct, lambda v: v if "a" in v else None, pl.String)
    )
    assert some.to_series().to_list() == [v if v is not None and "a" in v else None for v in keys]


def test_curated_tables_do_not_depend_on_the_order_rows_arrive_in(published_county, tmp_path):
    """Every delivery is a full snapshot whose rows may come in any order: the same records
    must give the same curated tables (golden records, households, aggregates, row order),
    or a night would change people's addresses and sources without any record changing."""
    county = published_county.copy(tmp_path / "county")
    config, linkage, sources = load_curated_config(), load_linkage_config(), load_sources()
    con = connect(county.warehouse, read_only=True)
    try:
        before = curate.build(con, linkage, config, sources).tables
    finally:
        con.close()
    con = connect(county.warehouse)
    try:
        keyed = {
            (schema, table)
            for schema, table in con.execute(
                "select schema_name, table_name from duckdb_constraints() "
                "where constraint_type in ('PRIMARY KEY', 'UNIQUE')"
            ).fetchall()
        }
        shuffled = [
            (schema, table)
            for schema, table in con.execute(
                "select schema_name, table_name from duckdb_tables() "
                "where schema_name in ('staged', 'linked')"
            ).fetchall()
            if (schema, table) not in keyed
        ]
        assert len(shuffled) > 10
        con.execute("select setseed(0.23)")
        for schema, table in shuffled:
            con.execute(
                f'create or replace table "{schema}"."{table}" as '
                f'select * from "{schema}"."{table}" order by random()'
            )
    finally:
        con.close()
    con = connect(county.warehouse, read_only=True)
    try:
        after = curate.build(con, linkage, config, sources).tables
    finally:
        con.close()
    assert before.keys() == after.keys()
    differing = [name for name in before if not before[name].equals(after[name], null_equal=True)]
    assert not differing


def test_the_serving_copy_is_written_in_the_snapshots_table_and_row_order(published_county):
    """Written table by table while the build runs, the serving copy still holds each
    table's rows in the snapshot's order (the order a fresh copy would have)."""
    snapshot = published_county.store().current_path()
    copy = open_serving(snapshot)
    try:
        names = [
            n
            for (n,) in copy.execute(
                "select name from sqlite_master where type='table' and name not like 'sqlite_%'"
            )
        ]
        assert names == list(TABLE_ORDER)
        with open_snapshot(snapshot) as con:
            for name in TABLE_ORDER:
                expected = con.sql(f'select * from "{name}"').fetchall()
                got = copy.execute(f'select * from "{name}" order by rowid').fetchall()
                assert got == expected, name
    finally:
        copy.close()


def test_a_build_failing_midway_stops_its_serving_copy_and_publishes_nothing(
    published_county, tmp_path, monkeypatch
):
    county = published_county.copy(tmp_path / "county")
    before = county.store().current()

    def broken(*args, **kwargs):
        raise RuntimeError("child summary failed")

    monkeypatch.setattr(curate, "build_child_summary", broken)
    outcome: list[BaseException] = []

    def publish() -> None:
        try:
            county.publish()
        except BaseException as err:
            outcome.append(err)

    worker = threading.Thread(target=publish)
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive(), "a failed build must not leave its serving copy waiting"
    assert len(outcome) == 1 and "child summary failed" in str(outcome[0])
    assert county.store().current() == before
    assert not list(county.store().snapshots.glob("*.building"))
