"""Clerical review: the queue, reviewers' decisions, splits, and the constraints linkage
reads from them, against SQLite (and once against real PostgreSQL), plus `sdv review`."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import duckdb
import polars as pl
import pytest
import sqlalchemy as sa
from postgres import postgres_cluster
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.settings import Settings
from warehouse import audit
from warehouse.operational import engine_for, ensure_schema
from warehouse.review import (
    REVIEW_READ,
    ReviewError,
    constraints,
    decide,
    decide_records,
    decision_history,
    enqueue,
    get_item,
    pair_id,
    pending,
    split_person,
)

ALFIE = "health|patients|H000123"
ALFIE_POLICE = "police|persons|N0042"
ZOE = "schools|pupils|U77"
ZOE_CARE = "social_care|children|C9"


def pair(a: str, b: str, probability: float = 0.8, **record_r: str) -> dict:
    return {
        "record_id_l": a,
        "record_id_r": b,
        "match_probability": probability,
        "match_weight": 2.0,
        "levels": json.dumps({"forename": "nickname match", "dob": "day/month swapped"}),
        "record_l": json.dumps({"forename": "Alfie", "surname": "Example", "dob": "2014-02-03"}),
        "record_r": json.dumps(
            {"forename": "Alfred", "surname": "Example", "dob": "2014-03-02", **record_r}
        ),
    }


def frame(*pairs: dict) -> pl.DataFrame:
    return pl.DataFrame(list(pairs))


def cons(engine) -> list[tuple[str, str, str]]:
    return [tuple(row) for row in constraints(engine).iter_rows()]


def test_enqueue_twice_is_one_item_per_pair_refreshed(engine):
    assert enqueue(engine, frame(pair(ALFIE, ALFIE_POLICE, 0.7), pair(ZOE, ZOE_CARE)), "r1") == 2
    first = {item.pair_id: item for item in pending(engine)}
    assert enqueue(engine, frame(pair(ALFIE, ALFIE_POLICE, 0.9), pair(ZOE, ZOE_CARE)), "r2") == 2
    second = {item.pair_id: item for item in pending(engine)}
    assert first.keys() == second.keys() == {pair_id(ALFIE, ALFIE_POLICE), pair_id(ZOE, ZOE_CARE)}
    refreshed = second[pair_id(ALFIE, ALFIE_POLICE)]
    assert refreshed.match_probability == 0.9 and refreshed.last_run_id == "r2"
    assert refreshed.first_queued_at == first[refreshed.pair_id].first_queued_at
    assert refreshed.last_queued_at > first[refreshed.pair_id].last_queued_at
    assert refreshed.first_queued_at.tzinfo == UTC
    assert refreshed.levels == {"forename": "nickname match", "dob": "day/month swapped"}
    assert [item.match_probability for item in pending(engine)] == [0.9, 0.8]


def test_pair_order_is_normalised_with_its_records(engine):
    enqueue(engine, frame(pair(ALFIE_POLICE, ALFIE, postcode="TA1 4QX")), "r1")
    (item,) = pending(engine)
    assert (item.record_id_l, item.record_id_r) == (ALFIE, ALFIE_POLICE)
    assert item.record_l["forename"] == "Alfred" and item.record_l["postcode"] == "TA1 4QX"
    assert item.record_r["forename"] == "Alfie"
    enqueue(engine, frame(pair(ALFIE, ALFIE_POLICE)), "r2")
    assert [i.pair_id for i in pending(engine)] == [item.pair_id]
    assert pair_id(ALFIE, ALFIE_POLICE) == pair_id(ALFIE_POLICE, ALFIE) == item.pair_id


def test_decided_pair_is_never_reopened(engine):
    enqueue(engine, frame(pair(ALFIE, ALFIE_POLICE), pair(ZOE, ZOE_CARE)), "r1")
    decide(engine, pair_id(ALFIE, ALFIE_POLICE), "accept", "alice", "same NHS number")
    decide_records(engine, ZOE_CARE, ZOE, "reject", "bob", "different mothers")  # reversed
    assert enqueue(engine, frame(pair(ALFIE_POLICE, ALFIE), pair(ZOE, ZOE_CARE)), "r2") == 0
    assert pending(engine) == []
    assert get_item(engine, pair_id(ALFIE, ALFIE_POLICE)).status == "decided"
    # A pair decided before it was ever queued is queued as decided.
    decide_records(engine, "a|t|1", "a|t|2", "reject", "bob", "twins")
    assert enqueue(engine, frame(pair("a|t|2", "a|t|1")), "r3") == 0
    assert get_item(engine, pair_id("a|t|1", "a|t|2")).status == "decided"


def test_pending_pair_missing_from_a_later_run_goes_stale_and_can_return(engine):
    enqueue(engine, frame(pair(ALFIE, ALFIE_POLICE), pair(ZOE, ZOE_CARE)), "r1")
    decide(engine, pair_id(ZOE, ZOE_CARE), "reject", "bob", "different people")
    assert enqueue(engine, frame(), "r2") == 0
    assert get_item(engine, pair_id(ALFIE, ALFIE_POLICE)).status == "stale"
    assert get_item(engine, pair_id(ZOE, ZOE_CARE)).status == "decided"
    assert enqueue(engine, frame(pair(ALFIE, ALFIE_POLICE)), "r3") == 1
    assert get_item(engine, pair_id(ALFIE, ALFIE_POLICE)).status == "pending"


def test_latest_decision_wins_and_history_keeps_both(engine):
    enqueue(engine, frame(pair(ALFIE, ALFIE_POLICE)), "r1")
    decide(engine, pair_id(ALFIE, ALFIE_POLICE)[:6], "accept", "alice", "same NHS number")
    assert cons(engine) == [(ALFIE, ALFIE_POLICE, "must_link")]
    decide(engine, pair_id(ALFIE, ALFIE_POLICE), "reject", "bob", "twins, per school")
    assert cons(engine) == [(ALFIE, ALFIE_POLICE, "cannot_link")]
    history = decision_history(engine)
    assert history.select("decision", "reviewer", "reason", "pair_id").rows() == [
        ("accept", "alice", "same NHS number", pair_id(ALFIE, ALFIE_POLICE)),
        ("reject", "bob", "twins, per school", pair_id(ALFIE, ALFIE_POLICE)),
    ]
    assert history["decided_at"].is_sorted()
    decide_records(engine, ZOE_CARE, ZOE, "accept", "carol", "seen together at CP conference")
    assert cons(engine)[1] == (ZOE, ZOE_CARE, "must_link")
    assert decision_history(engine).row(2, named=True)["pair_id"] is None  # never queued


def test_split_makes_every_cross_group_pair_cannot_link_and_nothing_within(engine):
    a, b, c, d, e = (f"src|t|{n}" for n in "abcde")
    decide_records(engine, a, c, "accept", "alice", "looked the same")
    enqueue(engine, frame(pair(b, d), pair(a, b)), "r1")
    split_person(engine, "P7", [[a, b], [c, d], [e]], "bob", "two siblings and a cousin")
    expected = {
        (x, y) for g, h in itertools.combinations([[a, b], [c, d], [e]], 2) for x in g for y in h
    }
    rows = cons(engine)
    assert {(x, y) for x, y, _ in rows} == expected  # the earlier accept on a-c is overridden
    assert {kind for *_, kind in rows} == {"cannot_link"}
    assert (a, b) not in {(x, y) for x, y, _ in rows}
    assert get_item(engine, pair_id(b, d)).status == "decided"
    assert get_item(engine, pair_id(a, b)).status == "pending"  # same group: still a question
    decide_records(engine, a, c, "accept", "carol", "DNA test: same child after all")
    assert (a, c, "must_link") in cons(engine)  # latest by time overall
    split = decision_history(engine).filter(decision="split").row(0, named=True)
    assert split["person_id"] == "P7" and split["groups"] == f"{a}, {b} / {c}, {d} / {e}"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: decide_records(e, ALFIE, ZOE, "maybe", "alice", "r"), "unknown decision"),
        (lambda e: decide_records(e, ALFIE, ZOE, "accept", " ", "r"), "reviewer"),
        (lambda e: decide_records(e, ALFIE, ZOE, "accept", "alice", ""), "reason is required"),
        (lambda e: decide_records(e, ALFIE, ALFIE, "accept", "alice", "r"), "itself"),
        (lambda e: decide_records(e, ALFIE, "H000123", "accept", "a", "r"), "not a record id"),
        (lambda e: split_person(e, "P1", [[ALFIE], []], "alice", "r"), "two non-empty groups"),
        (lambda e: split_person(e, "P1", [[ALFIE], [ALFIE, ZOE]], "a", "r"), "more than once"),
        (lambda e: split_person(e, "P1", [[ALFIE], [ZOE]], "alice", ""), "reason"),
        (lambda e: decide(e, "0000000", "accept", "alice", "r"), "no review item"),
        (lambda e: enqueue(e, pl.DataFrame({"record_id_l": [ALFIE]}), "r"), "lack column"),
        (lambda e: enqueue(e, frame(pair(ALFIE, ALFIE)), "r"), "with itself"),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_written(engine, call, message):
    with pytest.raises(ReviewError, match=message):
        call(engine)
    assert constraints(engine).is_empty() and decision_history(engine).is_empty()
    assert pending(engine) == []


def test_pair_id_prefix_lookup(engine):
    # Find two pairs whose ids share their first four hex digits.
    seen: dict[str, tuple[str, str]] = {}
    for n in itertools.count():
        ids = (f"a|t|{n}", f"b|t|{n}")
        prefix = pair_id(*ids)[:4]
        if prefix in seen:
            clash = [seen[prefix], ids]
            break
        seen[prefix] = ids
    enqueue(engine, frame(*(pair(*ids) for ids in clash)), "r1")
    full = pair_id(*clash[0])
    assert get_item(engine, full).pair_id == full
    assert get_item(engine, full[:9].upper()).pair_id == full
    with pytest.raises(ReviewError, match="ambiguous"):
        get_item(engine, full[:4])
    with pytest.raises(ReviewError, match="at least 4"):
        get_item(engine, full[:3])
    with pytest.raises(ReviewError, match="not a pair id"):
        get_item(engine, "zz%_")


def test_five_thousand_pairs_enqueue_in_bulk(engine):
    """A run's pairs go to the store in a handful of statements, however many there are
    (a linkage run queues thousands), not one per pair; a later run refreshes the pairs it
    finds again and stales the rest. (How long it takes is for the benchmarks.)"""
    pairs = frame(*(pair(f"a|t|{n}", f"b|t|{n}", 0.5 + n / 20_000) for n in range(5000)))
    statements: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    assert enqueue(engine, pairs, "r1") == 5000
    first_run = len(statements)
    assert enqueue(engine, pairs.head(4000), "r2") == 4000
    second_run = len(statements) - first_run
    assert first_run <= 10 and second_run <= 10, f"{first_run} and {second_run} statements"
    queued = pending(engine)
    assert len(queued) == 4000 and {item.last_run_id for item in queued} == {"r2"}
    assert [item.record_id_l for item in queued[:2]] == ["a|t|3999", "a|t|3998"]
    assert get_item(engine, pair_id("a|t|4000", "b|t|4000")).status == "stale"
    assert len(pending(engine, limit=10)) == 10


def test_settings_operational_url(tmp_path, monkeypatch):
    monkeypatch.delenv("SDV_OPERATIONAL_URL", raising=False)
    monkeypatch.setenv("SDV_DATA_DIR", str(tmp_path))
    assert Settings.from_env().operational_url == f"sqlite:///{tmp_path / 'operational.db'}"
    monkeypatch.setenv("SDV_OPERATIONAL_URL", "postgresql+psycopg://sdv@db/sdv")
    settings = Settings.from_env()
    assert settings.operational_url == "postgresql+psycopg://sdv@db/sdv"
    settings.export()
    assert Settings.from_env() == settings


# --- `sdv review` -----------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """A data directory with two queued pairs and a warehouse where P7 has three records."""
    warehouse = tmp_path / "wh.duckdb"
    url = f"sqlite:///{tmp_path / 'op.db'}"
    monkeypatch.setenv("SDV_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SDV_WAREHOUSE", str(warehouse))
    monkeypatch.setenv("SDV_OPERATIONAL_URL", url)
    monkeypatch.setenv("USER", "alice")
    con = duckdb.connect(str(warehouse))
    con.execute("CREATE SCHEMA linked")
    con.execute("CREATE TABLE linked.person_records (person_id VARCHAR, record_id VARCHAR)")
    con.execute(
        "INSERT INTO linked.person_records VALUES "
        "('P7', 'h|p|1'), ('P7', 'p|n|1'), ('P7', 's|u|1'), ('P8', 'h|p|2'), "
        f"('P1', '{ALFIE}'), ('P2', '{ALFIE_POLICE}'), ('P3', '{ZOE}')"  # ZOE_CARE: none
    )
    con.close()
    engine = engine_for(url)
    ensure_schema(engine)
    enqueue(engine, frame(pair(ALFIE, ALFIE_POLICE, 0.9), pair(ZOE, ZOE_CARE, 0.6)), "r1")
    yield engine
    engine.dispose()


def sdv(*args: str):
    return CliRunner().invoke(app, ["review", *args])


def assert_one_line_error(result, message: str) -> None:
    """Refused with exit 1 and a single line on stderr naming the problem: no exception
    escaped the command (CliRunner would catch it, hiding a traceback), nothing on stdout."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and message in line


def test_cli_lists_pending_pairs(cli_env):
    for args in ((), ("list",)):
        result = sdv(*args)
        assert result.exit_code == 0, result.output
        assert "2 pair(s) waiting for review" in result.output
        assert pair_id(ALFIE, ALFIE_POLICE)[:8] in result.output and "0.900" in result.output
        assert "Alfred Example" in result.output and "2014-03-02" in result.output
        assert result.output.index("0.900") < result.output.index("0.600")


def test_cli_shows_records_side_by_side_with_levels(cli_env):
    result = sdv("show", pair_id(ALFIE, ALFIE_POLICE)[:6])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("forename" in x and "Alfred" in x and "Alfie" in x and "≠" in x for x in lines)
    assert any("surname" in x and "Example" in x and "=" in x for x in lines)
    assert "day/month swapped" in result.output and "nickname match" in result.output
    assert "match probability 0.900" in result.output and "match weight 2.00" in result.output


def _reads(engine) -> list:
    """The audit's record of the queue being read, oldest first."""
    return [e for e in audit.events(engine) if e.action == REVIEW_READ]


def test_cli_reading_the_queue_is_audited_with_the_persons_it_shows(cli_env, monkeypatch):
    """The queue holds names, dates of birth and whole records from every source: each
    reading is recorded before it is shown, with whom the records are about (the persons
    linkage put them in), under config/audit.yaml's linkage_access; never a record id."""
    listed = sdv("list", "--limit", "1")
    assert listed.exit_code == 0 and "Alfred Example" in listed.output
    (event,) = _reads(cli_env)
    assert (event.user_id, event.role, event.purpose) == (
        "alice",
        "linkage_team",
        "identity_resolution",
    )
    assert "Art. 5(1)(d) accuracy" in event.lawful_basis
    assert event.person_ids == ("P1", "P2")  # the one pair shown, not the whole queue
    assert event.columns == ("review_pairs.record_l", "review_pairs.record_r")
    assert event.detail == {
        "shown": "list",
        "pairs": [pair_id(ALFIE, ALFIE_POLICE)],
        "records": 2,
        "records_not_linked": 0,
    }
    shown = sdv("show", pair_id(ZOE, ZOE_CARE)[:6], "--reviewer", "Bob Smith")
    assert shown.exit_code == 0 and "Zoe" not in shown.stderr
    event = _reads(cli_env)[-1]
    assert (event.user_id, event.person_ids) == ("Bob Smith", ("P3",))
    assert event.detail["shown"] == "show" and event.detail["records_not_linked"] == 1
    for read in _reads(cli_env):
        stored = json.dumps([read.detail, read.columns, read.tables])
        assert not any(r in stored for r in (ALFIE, ALFIE_POLICE, ZOE, ZOE_CARE))
    # "Who has seen this person's data" finds the reading.
    seen = CliRunner().invoke(app, ["audit", "--person", "P3"])
    assert seen.exit_code == 0 and "Bob Smith" in seen.output
    # The decision log shows record ids and reasons: its reading is recorded too, with the
    # persons of the pairs decided and of the person split.
    assert sdv("history").output.startswith("No decisions yet")  # nothing read, nothing kept
    assert sdv("reject", pair_id(ZOE, ZOE_CARE), "--reason", "twins").exit_code == 0
    assert sdv("split", "P7", "--group", "h|p|1", "--reason", "different GP").exit_code == 0
    history = sdv("history")
    assert history.exit_code == 0 and "twins" in history.output
    event = _reads(cli_env)[-1]
    assert event.detail["shown"] == "history" and event.person_ids == ("P3", "P7")
    assert "review_decisions.reason" in event.columns
    assert event.detail["pairs"] == [pair_id(ZOE, ZOE_CARE)]
    assert audit.verify(cli_env).ok

    # Nobody to record: nothing is shown.
    before = len(_reads(cli_env))
    monkeypatch.delenv("USER")
    assert_one_line_error(sdv("list"), "say who is reading")
    assert_one_line_error(sdv("show", pair_id(ZOE, ZOE_CARE)), "say who is reading")
    assert_one_line_error(sdv("history"), "say who is reading")
    assert len(_reads(cli_env)) == before


def _no_record_id_stored(event) -> None:
    """The audit names persons and pairs, never a record id (a local key can be a UPN)."""
    stored = json.dumps([event.detail, event.columns, event.tables, event.person_ids])
    assert not any(r in stored for r in (ALFIE, ALFIE_POLICE, ZOE, ZOE_CARE, "h|p|1"))


def test_cli_accept_and_reject_audit_the_record_ids_they_confirm(cli_env):
    """`accept` and `reject` print both record ids (a school's local key is a UPN): that
    display is a reading of the persons' records, recorded before it is shown, with the
    persons linkage put the records in, under linkage_access's purpose and lawful basis."""
    key = pair_id(ALFIE, ALFIE_POLICE)
    accepted = sdv("accept", key[:8], "--reviewer", "Bob Smith", "--reason", "same NHS no")
    assert accepted.exit_code == 0 and ALFIE in accepted.output, accepted.output
    (event,) = _reads(cli_env)
    assert (event.user_id, event.role, event.purpose, event.outcome) == (
        "Bob Smith",
        "linkage_team",
        "identity_resolution",
        "allowed",
    )
    assert "Art. 5(1)(d) accuracy" in event.lawful_basis
    assert event.person_ids == ("P1", "P2")
    assert event.columns == ("review_pairs.record_id_l", "review_pairs.record_id_r")
    assert event.detail == {
        "shown": "accept",
        "pairs": [key],
        "records": 2,
        "records_not_linked": 0,
    }
    _no_record_id_stored(event)

    rejected = sdv("reject", pair_id(ZOE, ZOE_CARE), "--reason", "twins")
    assert rejected.exit_code == 0 and ZOE in rejected.output, rejected.output
    event = _reads(cli_env)[-1]
    assert (event.user_id, event.person_ids) == ("alice", ("P3",))
    assert event.detail["shown"] == "reject" and event.detail["records_not_linked"] == 1
    _no_record_id_stored(event)
    # "Who has seen this person's data" finds the confirmation.
    seen = CliRunner().invoke(app, ["audit", "--person", "P3"])
    assert seen.exit_code == 0 and "alice" in seen.output
    assert audit.verify(cli_env).ok

    # A decision refused shows nothing, so records no reading.
    assert sdv("accept", key, "--reason", " ").exit_code == 1
    assert len(_reads(cli_env)) == 2


def test_cli_split_audits_the_person_and_records_it_lists(cli_env):
    """`split` prints the person and every group's record ids: recorded as a reading of
    that person's records before it is shown."""
    result = sdv("split", "P7", "--group", "h|p|1", "--reviewer", "Bob", "--reason", "other GP")
    assert result.exit_code == 0 and "s|u|1" in result.output, result.output
    (event,) = _reads(cli_env)
    assert (event.user_id, event.role, event.purpose) == (
        "Bob",
        "linkage_team",
        "identity_resolution",
    )
    assert "Art. 5(1)(d) accuracy" in event.lawful_basis
    assert event.person_ids == ("P7",)
    assert event.columns == ("person_split_records.record_id", "person_splits.person_id")
    assert event.detail == {"shown": "split", "pairs": [], "records": 3, "records_not_linked": 0}
    _no_record_id_stored(event)
    seen = CliRunner().invoke(app, ["audit", "--person", "P7"])
    assert seen.exit_code == 0 and "Bob" in seen.output
    # A split refused shows nothing, so records no reading.
    assert sdv("split", "P7", "--group", "h|p|2", "--reason", "r").exit_code == 1
    assert len(_reads(cli_env)) == 1


def test_cli_accept_then_reject(cli_env):
    key = pair_id(ALFIE, ALFIE_POLICE)
    result = sdv("accept", key[:8], "--reason", "same NHS number")
    assert result.exit_code == 0, result.output
    assert "Accepted" in result.output and "must-link" in result.output
    result = sdv("reject", key[:8], "--reviewer", "Bob Smith", "--reason", "twins")
    assert result.exit_code == 0, result.output
    assert cons(cli_env) == [(ALFIE, ALFIE_POLICE, "cannot_link")]
    assert decision_history(cli_env).select("reviewer", "decision").rows() == [
        ("alice", "accept"),
        ("Bob Smith", "reject"),
    ]
    shown = sdv("show", key)
    assert "decided" in shown.output and "twins" in shown.output
    history = sdv("history")
    assert history.exit_code == 0 and "Bob Smith" in history.output
    assert "1 pair(s) waiting" in sdv("list").output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("accept", "ffff", "--reason", "r"), "no review item with pair id ffff"),
        (("accept", "ab", "--reason", "r"), "at least 4"),
        (("reject", "PAIR", "--reason", "   "), "not a pair id"),
        (("show", "00000000"), "no review item"),
    ],
)
def test_cli_errors_are_one_line_and_exit_1(cli_env, args, message):
    assert_one_line_error(sdv(*args), message)


def test_cli_blank_reason_is_refused(cli_env):
    result = sdv("accept", pair_id(ZOE, ZOE_CARE), "--reason", " ")
    assert result.exit_code == 1 and "reason is required" in result.stderr
    assert constraints(cli_env).is_empty()


def test_cli_split_off_a_group_from_the_rest(cli_env):
    result = sdv("split", "P7", "--group", "h|p|1", "--reason", "different GP, different dob")
    assert result.exit_code == 0, result.output
    assert "into 2 groups" in result.output
    assert cons(cli_env) == [("h|p|1", "p|n|1", "cannot_link"), ("h|p|1", "s|u|1", "cannot_link")]
    result = sdv("split", "P7", "--group", "h|p|1", "--group", "p|n|1", "--reason", "three")
    assert result.exit_code == 0, result.output
    assert len(cons(cli_env)) == 3
    assert "split" in sdv("history").output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("P9", "--group", "h|p|1"), "no person P9"),
        (("P7", "--group", "h|p|2"), "record h|p|2 does not belong to person P7"),
        (("P8", "--group", "h|p|2"), "nothing to split"),
        (("P7", "--group", "h|p|1", "--group", "h|p|1"), "more than once"),
    ],
)
def test_cli_split_errors(cli_env, args, message):
    assert_one_line_error(sdv("split", *args, "--reason", "r"), message)
    assert constraints(cli_env).is_empty()


def test_cli_split_without_linkage_output(cli_env, tmp_path, monkeypatch):
    monkeypatch.setenv("SDV_WAREHOUSE", str(tmp_path / "empty.duckdb"))
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    result = sdv("split", "P7", "--group", "h|p|1", "--reason", "r")
    assert result.exit_code == 1 and "has linkage run?" in result.stderr


def test_cli_data_dir_option_uses_that_directory(cli_env, tmp_path):
    other = tmp_path / "other"
    result = sdv("list", "--data-dir", str(other))
    assert result.exit_code == 0 and "No pairs waiting" in result.output
    assert (other / "operational.db").exists()


@pytest.mark.postgres
def test_queue_decisions_and_constraints_on_postgresql():
    with postgres_cluster() as url:
        engine = engine_for(url)
        try:
            ensure_schema(engine)
            ensure_schema(engine)  # idempotent
            pairs = frame(pair(ALFIE_POLICE, ALFIE, 0.7), pair(ZOE, ZOE_CARE, 0.6))
            assert enqueue(engine, pairs, "r1") == 2
            assert enqueue(engine, pairs, "r2") == 2
            decide(engine, pair_id(ALFIE, ALFIE_POLICE)[:8], "accept", "alice", "same NHS no")
            decide(engine, pair_id(ALFIE, ALFIE_POLICE), "reject", "bob", "twins")
            decide_records(engine, "a|t|1", "a|t|2", "accept", "carol", "same UPN")
            split_person(engine, "P1", [["a|t|1"], ["a|t|2", "a|t|3"]], "dan", "siblings")
            assert enqueue(engine, frame(pair(ALFIE, ALFIE_POLICE)), "r3") == 0
            assert get_item(engine, pair_id(ZOE, ZOE_CARE)).status == "stale"
            assert cons(engine) == [
                ("a|t|1", "a|t|2", "cannot_link"),
                ("a|t|1", "a|t|3", "cannot_link"),
                (ALFIE, ALFIE_POLICE, "cannot_link"),
            ]
            history = decision_history(engine)
            assert history["decision"].to_list() == ["accept", "reject", "accept", "split"]
            assert history["decided_at"].max() <= datetime.now(UTC)
        finally:
            engine.dispose()
