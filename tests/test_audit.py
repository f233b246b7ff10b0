"""The audit trail: appends form a verifying hash chain, every kind of tampering is found and
named by seq, concurrent appenders never fork it (SQLite threads and processes, PostgreSQL
connections), person history follows former ids, decisions not to share are recorded, and
`sdv audit`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa
from postgres import postgres_cluster
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.settings import PROJECT_ROOT
from warehouse.audit import (
    AUDIT_READ,
    GENESIS,
    AuditError,
    AuditEvent,
    AuditRecord,
    append,
    events,
    head,
    person_history,
    record_no_share,
    verify,
)
from warehouse.linked import ensure_linked_schema
from warehouse.operational import engine_for, ensure_schema

COLUMNS = ("linked.person_records.person_id", "current.health__patients.gp_practice_code")


def read(*person_ids: str, user: str = "alice", **overrides) -> AuditEvent:
    values = {
        "user_id": user,
        "role": "social_worker",
        "organisation": "CSC Front Door",
        "purpose": "section 47 enquiry",
        "lawful_basis": "Art 6(1)(e); Art 9(2)(g)",
        "action": "read",
        "outcome": "allowed",
        "columns": COLUMNS,
        "person_ids": person_ids,
        "detail": {"path": "/persons", "limit": 10},
    }
    return AuditEvent(**{**values, **overrides})


def documented_hash(record: AuditRecord) -> str:
    """The hash as the module docstring specifies it, recomputed independently."""
    fields = dataclasses.asdict(record)
    prev_hash = fields.pop("prev_hash")
    fields.pop("hash")
    fields["occurred_at"] = record.occurred_at.astimezone(UTC).isoformat(timespec="microseconds")
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def sql(engine, statement: str, **params) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(statement), params)


@pytest.fixture
def chain(engine):
    """Five events: seq 2 and 4 touch P1, seq 3 touches nobody (a search with no result)."""
    append(engine, read("P2"))
    append(engine, read("P1", "P3", user="bob"))
    append(engine, read(action="search", outcome="not_found", columns=()))
    append(engine, read("P1", user="carol", role="school_dsl", organisation="URN 123456"))
    append(engine, read("P4"))
    return engine


def only_problems_at(report, seq: int) -> list[str]:
    assert not report.ok
    assert all(p.startswith(f"seq {seq}:") for p in report.problems), report.problems
    return report.problems


# --- appending and verifying ----------------------------------------------------------------


def test_empty_chain_verifies(engine):
    report = verify(engine)
    assert report.ok and report.checked == 0 and report.problems == []
    assert head(engine) == (0, GENESIS)


def test_appended_events_form_a_verifying_chain(engine):
    first = append(engine, read("P2", "P1", "P1", " P3 "))
    second = append(engine, read(user="bob", outcome="denied", columns=()))
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS and second.prev_hash == first.hash
    assert first.person_ids == ("P1", "P2", "P3")  # sorted, unique, trimmed
    # The tables read are listed even when the caller only named the columns.
    assert first.tables == ("current.health__patients", "linked.person_records")
    assert first.occurred_at.tzinfo == UTC and first.occurred_at <= second.occurred_at
    assert events(engine) == [first, second]  # what append returned is what was stored
    assert [documented_hash(r) for r in events(engine)] == [first.hash, second.hash]
    report = verify(engine)
    assert report.ok and report.checked == 2
    assert (report.head_seq, report.head_hash) == head(engine) == (2, second.hash)


def test_caller_supplied_time_is_kept_in_utc(engine):
    at = datetime(2026, 11, 20, 9, 30, 15, 123456, tzinfo=UTC)
    local = at.astimezone(datetime.now().astimezone().tzinfo)
    record = append(engine, read("P1"), at=local)
    assert record.occurred_at == at and events(engine)[0].occurred_at == at
    assert verify(engine).ok
    with pytest.raises(AuditError, match="timezone-aware"):
        append(engine, read("P1"), at=datetime(2026, 11, 20, 9, 30))


def test_listing_events(chain):
    assert [r.seq for r in events(chain)] == [1, 2, 3, 4, 5]
    assert [r.seq for r in events(chain, limit=2, newest_first=True)] == [5, 4]
    assert [r.seq for r in events(chain, after_seq=3)] == [4, 5]
    later = append(chain, read("P9"), at=datetime.now(UTC) + timedelta(days=1))
    assert events(chain, since=later.occurred_at) == [later]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"outcome": "ok"}, "outcome 'ok' must be one of"),
        ({"purpose": "  "}, "purpose is required"),
        ({"user_id": ""}, "user id is required"),
        ({"action": "Read everything"}, "short lower-case word"),
        ({"columns": ("person_id",)}, "table.column"),
        ({"person_ids": "P1"}, "not a single string"),
        ({"detail": {"query": {"surname": "Example"}}}, "detail.query.surname"),
        ({"detail": {"DOB": "2014-02-03"}}, "personal data"),
        ({"detail": {"at": datetime.now(UTC)}}, "JSON-serialisable"),
    ],
)
def test_invalid_events_are_refused(engine, overrides, message):
    with pytest.raises(AuditError, match=message):
        append(engine, read("P1", **overrides))
    assert events(engine) == [] and head(engine) == (0, GENESIS)


# --- tampering ------------------------------------------------------------------------------


def test_changed_field_is_detected_at_its_seq(chain):
    sql(chain, "UPDATE audit_events SET purpose = 'curiosity' WHERE seq = 2")
    problems = only_problems_at(verify(chain), 2)
    assert "a field was changed" in problems[0]


def test_backdated_event_is_detected(chain):
    sql(chain, "UPDATE audit_events SET user_id = 'mallory' WHERE seq = 4")
    sql(chain, "UPDATE audit_events SET occurred_at = '2020-01-01 00:00:00.000000' WHERE seq = 5")
    report = verify(chain)
    assert [p.split(":")[0] for p in report.problems] == ["seq 4", "seq 5"]


def test_deleted_event_is_detected_at_the_next_seq(chain):
    sql(chain, "DELETE FROM audit_event_persons WHERE seq = 2")
    sql(chain, "DELETE FROM audit_events WHERE seq = 2")
    problems = only_problems_at(verify(chain), 3)
    assert any("event(s) 2 missing" in p for p in problems)
    assert any("prev_hash does not match the hash of seq 1" in p for p in problems)


def test_deleted_last_event_is_detected_by_the_head(chain):
    sql(chain, "DELETE FROM audit_event_persons WHERE seq = 5")
    sql(chain, "DELETE FROM audit_events WHERE seq = 5")
    report = verify(chain)
    problems = only_problems_at(report, 5)
    assert "last event is seq 4" in problems[0] and report.checked == 4


def test_event_inserted_outside_append_is_detected(chain):
    fake = dataclasses.replace(events(chain)[-1], seq=6, event_id="fake", user_id="mallory")
    sql(
        chain,
        "INSERT INTO audit_events SELECT 6, 'fake', occurred_at, 'mallory', role, organisation,"
        " purpose, lawful_basis, action, outcome, tables, columns, person_ids, detail, hash,"
        " :hash FROM audit_events WHERE seq = 5",
        hash=documented_hash(dataclasses.replace(fake, prev_hash=fake.hash)),
    )
    problems = only_problems_at(verify(chain), 6)
    assert any("inserted outside append" in p for p in problems)


def test_removed_person_index_row_is_detected(chain):
    # Hiding bob's read of P1 from `sdv audit --person P1` without touching the event.
    assert [r.seq for r in person_history(chain, ["P1"])] == [2, 4]
    sql(chain, "DELETE FROM audit_event_persons WHERE seq = 2 AND person_id = 'P1'")
    assert [r.seq for r in person_history(chain, ["P1"])] == [4]
    problems = only_problems_at(verify(chain), 2)
    assert "person index lacks P1" in problems[0]


def test_added_person_index_row_is_detected(chain):
    sql(chain, "INSERT INTO audit_event_persons (seq, person_id) VALUES (3, 'P1')")
    problems = only_problems_at(verify(chain), 3)
    assert "person index lists P1" in problems[0]


def test_edit_hidden_by_rehashing_breaks_the_next_link(chain):
    edited = dataclasses.replace(events(chain)[1], purpose="curiosity")
    sql(
        chain,
        "UPDATE audit_events SET purpose = 'curiosity', hash = :hash WHERE seq = 2",
        hash=documented_hash(edited),
    )
    problems = only_problems_at(verify(chain), 3)  # seq 2 itself now looks consistent
    assert "prev_hash does not match the hash of seq 2" in problems[0]


def rewrite_from(engine, seq: int, *, move_head: bool) -> None:
    """An attacker with write access: edit ``seq`` and recompute every later hash."""
    records = events(engine)
    prev_hash = records[seq - 2].hash if seq > 1 else GENESIS
    for record in records[seq - 1 :]:
        changed = dataclasses.replace(record, prev_hash=prev_hash)
        if record.seq == seq:
            changed = dataclasses.replace(changed, purpose="curiosity")
        digest = documented_hash(changed)
        sql(
            engine,
            "UPDATE audit_events SET purpose = :purpose, prev_hash = :prev, hash = :hash "
            "WHERE seq = :seq",
            purpose=changed.purpose,
            prev=prev_hash,
            hash=digest,
            seq=record.seq,
        )
        prev_hash = digest
    if move_head:
        sql(engine, "UPDATE audit_chain_head SET hash = :hash", hash=prev_hash)


def test_rewritten_chain_is_caught_by_the_head_or_an_anchor(chain):
    anchor = head(chain)
    rewrite_from(chain, 2, move_head=False)
    problems = only_problems_at(verify(chain), 5)
    assert "head mismatch" in problems[0]
    rewrite_from(chain, 2, move_head=True)
    # Consistent again: only a head noted outside the database can tell.
    assert verify(chain).ok
    problems = only_problems_at(verify(chain, anchor=anchor), 5)
    assert "anchor" in problems[0]


def test_deleted_chain_head_is_detected_and_appends_stop(chain):
    sql(chain, "DELETE FROM audit_chain_head")
    assert any("chain head has 0 rows" in p for p in verify(chain).problems)
    with pytest.raises(AuditError, match="chain head is missing"):
        append(chain, read("P1"))


# --- person history and decisions not to share ----------------------------------------------


def test_person_history_includes_former_ids_oldest_first(chain):
    assert [r.seq for r in person_history(chain, ["P1"])] == [2, 4]
    history = person_history(chain, ["P1", "P2", "P2", "unknown"])
    assert [(r.seq, r.user_id) for r in history] == [(1, "alice"), (2, "bob"), (4, "carol")]
    assert history[2].organisation == "URN 123456" and history[2].role == "school_dsl"
    assert person_history(chain, "P1") == person_history(chain, ["P1"])  # not "P", "1"
    assert person_history(chain, []) == [] and person_history(chain, ["P404"]) == []


def test_decision_not_to_share_is_recorded(chain):
    record = record_no_share(
        chain,
        user_id="dana",
        role="dpo",
        organisation="Council",
        person_ids=["P3", "P1"],
        recipient="Housing Association",
        reason="no lawful basis for tenancy enforcement",
        purpose="tenancy enforcement",
    )
    assert (record.action, record.outcome) == ("no_share", "withheld")
    assert record.detail == {
        "recipient": "Housing Association",
        "reason": "no lawful basis for tenancy enforcement",
    }
    assert record.tables == () and record.person_ids == ("P1", "P3")
    assert person_history(chain, ["P3"])[-1] == record
    assert verify(chain).ok


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reason": "  "}, "a reason"),
        ({"recipient": ""}, "recipient"),
        ({"person_ids": []}, "person id is required"),
        ({"purpose": ""}, "purpose is required"),
        ({"user_id": None}, "user id is required"),
    ],
)
def test_decision_not_to_share_needs_who_whom_and_why(engine, overrides, message):
    values = {
        "user_id": "dana",
        "role": "dpo",
        "organisation": None,
        "person_ids": ["P1"],
        "recipient": "Police",
        "reason": "disproportionate",
        "purpose": "intelligence",
    }
    with pytest.raises(AuditError, match=message):
        record_no_share(engine, **{**values, **overrides})
    assert events(engine) == []


# --- concurrency ----------------------------------------------------------------------------


def assert_unforked(engine, expected: int, returned: list[AuditRecord]) -> None:
    stored = events(engine)
    assert [r.seq for r in stored] == list(range(1, expected + 1))
    assert len({r.event_id for r in stored}) == len({r.hash for r in stored}) == expected
    assert sorted(returned, key=lambda r: r.seq) == stored
    report = verify(engine)
    assert report.ok, report.problems[:5]
    assert report.checked == expected


def append_concurrently(
    engines: list, threads_per_engine: int, each: int, during=None
) -> list[AuditRecord]:
    """Append from several threads per engine at once; call ``during()`` until they finish."""
    workers = [
        (e, f"user{i}-{t}") for i, e in enumerate(engines) for t in range(threads_per_engine)
    ]
    start = threading.Barrier(len(workers))
    returned: list[AuditRecord] = []
    errors: list[BaseException] = []

    def work(engine, user: str) -> None:
        try:
            start.wait()
            for n in range(each):
                returned.append(append(engine, read(f"P{n % 3}", user=user)))
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=worker) for worker in workers]
    for thread in threads:
        thread.start()
    while during is not None and any(thread.is_alive() for thread in threads):
        during()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    return returned


def test_concurrent_appends_from_eight_threads_never_fork_the_chain(engine, tmp_path):
    other = engine_for(str(engine.url))  # a second pool, as a second worker process would have
    reports = []
    try:
        returned = append_concurrently(
            [engine, other],
            threads_per_engine=4,
            each=25,
            during=lambda: reports.append(verify(engine)),
        )
    finally:
        other.dispose()
    assert_unforked(engine, 200, returned)
    # A verify running while others append never raises a false alarm.
    assert reports and all(report.ok for report in reports), [r.problems for r in reports]
    assert len(person_history(engine, ["P0"])) == 8 * 9


def test_appends_waiting_on_a_commit_share_the_next_one(engine):
    """Group commit: while one commit is in progress, waiting appends queue and the next
    commit carries all of them (one fsync for many API requests), each still answered
    with its own record only once it is stored."""
    from warehouse import audit

    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda conn: commits.append(1))
    committer = audit._committer(engine)
    returned: list[AuditRecord] = []
    with committer.commit:  # a commit in progress
        threads = [
            threading.Thread(target=lambda n=n: returned.append(append(engine, read(f"P{n}"))))
            for n in range(8)
        ]
        for thread in threads:
            thread.start()
        while len(committer.pending) < 8:
            threading.Event().wait(0.005)
        assert returned == []  # nobody is answered before their event is stored
    for thread in threads:
        thread.join(timeout=30)
    assert len(returned) == 8 and len(commits) == 1
    assert_unforked(engine, 8, returned)


_WORKER = """
import sys
from warehouse.audit import AuditEvent, append
from warehouse.operational import engine_for

engine = engine_for(sys.argv[1])
for n in range(int(sys.argv[3])):
    append(engine, AuditEvent(user_id=sys.argv[2], role="api", purpose="p", action="api",
                              outcome="allowed", person_ids=[f"P{n}"]))
"""


def test_concurrent_appends_from_processes_never_fork_the_chain(engine):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(engine.url), f"worker{n}", "20"],
            env=env,
            cwd=PROJECT_ROOT,
            stderr=subprocess.PIPE,
        )
        for n in range(4)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr.decode()
    stored = events(engine)
    assert_unforked(engine, 80, stored)
    assert {r.user_id for r in stored} == {f"worker{n}" for n in range(4)}


@pytest.mark.postgres
def test_audit_chain_on_postgresql_with_concurrent_connections():
    with postgres_cluster() as url:
        engines = [engine_for(url) for _ in range(4)]
        try:
            ensure_schema(engines[0])
            ensure_schema(engines[1])  # idempotent: the head is created once
            assert verify(engines[0]).ok and head(engines[0]) == (0, GENESIS)
            returned = append_concurrently(engines, threads_per_engine=3, each=15)
            assert_unforked(engines[0], 180, returned)
            assert len(person_history(engines[2], ["P1"])) == 12 * 5
            no_share = record_no_share(
                engines[3],
                user_id="dana",
                role="dpo",
                organisation=None,
                person_ids=["P1"],
                recipient="Police",
                reason="disproportionate",
                purpose="intelligence",
            )
            assert person_history(engines[1], ["P1"])[-1] == no_share
            assert verify(engines[1]).ok
            sql(engines[0], "UPDATE audit_events SET role = 'admin' WHERE seq = 17")
            sql(engines[0], "DELETE FROM audit_event_persons WHERE seq = 40")
            report = verify(engines[2])
            assert [p.split(":")[0] for p in report.problems] == ["seq 17", "seq 40"]
        finally:
            for engine in engines:
                engine.dispose()


# --- `sdv audit` ----------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """An audit trail and a warehouse in which P0 was merged into P1, then P5 split off P1."""
    warehouse = tmp_path / "wh.duckdb"
    url = f"sqlite:///{tmp_path / 'op.db'}"
    monkeypatch.setenv("SDV_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SDV_WAREHOUSE", str(warehouse))
    monkeypatch.setenv("SDV_OPERATIONAL_URL", url)
    monkeypatch.setenv("USER", "dana")
    con = duckdb.connect(str(warehouse))
    ensure_linked_schema(con)
    con.execute(
        "INSERT INTO linked.person_events VALUES "
        "('r1', 'new', 'P0', [], 2), ('r1', 'new', 'P1', [], 1), ('r1', 'new', 'P7', [], 1), "
        "('r2', 'merge', 'P1', ['P0', 'P1'], 3), ('r3', 'split', 'P5', ['P1'], 1)"
    )
    con.close()
    engine = engine_for(url)
    ensure_schema(engine)
    append(engine, read("P0", user="alice"))  # before the merge: P0 is now part of P1
    append(engine, read("P1", user="bob", purpose="strategy meeting"))
    append(engine, read("P7", user="carol"))
    yield engine
    engine.dispose()


def sdv(*args: str):
    return CliRunner().invoke(app, ["audit", *args])


def _data_reads(found: dict) -> list[int]:
    """The events of a history that read the person's data (not readings of the trail)."""
    return [e["seq"] for e in found["events"] if e["action"] != AUDIT_READ]


def test_cli_person_history_follows_former_ids(cli_env):
    result = sdv("--person", "P1", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [(e["seq"], e["user_id"]) for e in found["events"]] == [(1, "alice"), (2, "bob")]
    assert list(found["former_ids"]) == ["P0"] and "merged into P1" in found["former_ids"]["P0"]
    assert any("P5" in note for note in found["notes"])  # where some of P1's records went
    assert found["events"][1]["purpose"] == "strategy meeting"
    # A split-off person's history goes back through P1 to P0.
    found = json.loads(sdv("--person", "P5", "--json").stdout)
    assert set(found["former_ids"]) == {"P0", "P1"}
    assert _data_reads(found) == [1, 2]
    # The absorbed id points to where later reads are recorded.
    found = json.loads(sdv("--person", "P0", "--json").stdout)
    assert _data_reads(found) == [1]
    assert any("merged into P1" in note for note in found["notes"])


def test_reading_the_trail_is_recorded_in_it_first(cli_env):
    """The trail says who has seen whom: reading it is an access to everyone it shows, and
    the person whose history was read finds that reading in it."""
    assert sdv("--person", "P1", "--user", "erin").exit_code == 0
    (read,) = [r for r in events(cli_env) if r.action == AUDIT_READ]
    assert (read.user_id, read.purpose, read.outcome) == ("erin", "accountability", "allowed")
    assert "Art. 5(2) accountability" in read.lawful_basis
    assert read.person_ids == ("P0", "P1")  # P1 and the id merged into it
    assert read.detail == {"query": "person", "events": 2}
    found = json.loads(sdv("--person", "P1", "--json").stdout)
    assert (found["events"][-1]["action"], found["events"][-1]["user_id"]) == (AUDIT_READ, "erin")
    # The latest events: one reading naming every person the listed events name.
    shown = json.loads(sdv("--json", "--limit", "3").stdout)
    latest = events(cli_env)[-1]
    assert (latest.action, latest.user_id) == (AUDIT_READ, "dana")  # $USER by default
    assert set(latest.person_ids) == {p for e in shown for p in e["person_ids"]}
    assert latest.detail == {"query": "latest", "events": 3}
    assert verify(cli_env).ok


def test_cli_person_history_table(cli_env):
    result = sdv("--person", "P1")
    assert result.exit_code == 0, result.output
    assert "2 event(s) for person P1 by 2 user(s)" in result.output
    assert "Including former id P0" in result.output
    assert "alice" in result.output and "bob" in result.output and "carol" not in result.output
    assert result.output.index("alice") < result.output.index("bob")  # oldest first


def test_cli_person_without_warehouse_uses_the_given_id(cli_env, tmp_path, monkeypatch):
    monkeypatch.setenv("SDV_WAREHOUSE", str(tmp_path / "none.duckdb"))
    found = json.loads(sdv("--person", "P1", "--json").stdout)
    assert found["former_ids"] == {} and [e["seq"] for e in found["events"]] == [2]
    result = sdv("--person", "P404")
    assert result.exit_code == 0 and "No audit events for person P404" in result.output


def test_cli_person_warns_when_the_warehouse_cannot_be_read(cli_env, tmp_path):
    writer = duckdb.connect(str(tmp_path / "wh.duckdb"))  # e.g. a linkage run holding it
    try:
        result = sdv("--person", "P1", "--json")
    finally:
        writer.close()
    assert result.exit_code == 0, result.output
    assert "Warning" in result.stderr and "former ids" in result.stderr
    found = json.loads(result.stdout)
    assert found["warning"] and [e["seq"] for e in found["events"]] == [2]


def test_cli_verify_then_tamper(cli_env):
    result = sdv("verify")
    assert result.exit_code == 0, result.output
    assert "Checked 3 event(s): the audit chain is intact" in result.output
    seq, digest = head(cli_env)
    assert f"{seq}:{digest}" in result.output
    assert sdv("verify", "--anchor", f"{seq}:{digest}").exit_code == 0
    sql(cli_env, "UPDATE audit_events SET user_id = 'nobody' WHERE seq = 2")
    result = sdv("verify")
    assert result.exit_code == 1
    assert "broken" in result.output and "seq 2: contents do not match" in result.output


def test_cli_no_share(cli_env):
    args = ["--person", "P1", "--person", "P7", "--recipient", "Housing Association"]
    result = sdv("no-share", *args, "--reason", "not necessary", "--purpose", "tenancy")
    assert result.exit_code == 0, result.output
    assert "audit event 4" in result.output and "Housing Association" in result.output
    (record,) = [r for r in person_history(cli_env, ["P7"]) if r.action == "no_share"]
    assert (record.user_id, record.role, record.outcome) == ("dana", "dpo", "withheld")
    assert record.person_ids == ("P1", "P7") and record.purpose == "tenancy"
    shown = sdv("--person", "P7")
    assert "not shared" in shown.output and "Housing" in shown.output
    recorded = len(events(cli_env))
    refused = sdv("no-share", *args, "--reason", " ", "--purpose", "tenancy")
    assert refused.exit_code == 1 and "a reason" in refused.stderr
    assert len(events(cli_env)) == recorded
    assert sdv("verify").exit_code == 0


def test_cli_lists_latest_events(cli_env):
    result = sdv("--json", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert [e["seq"] for e in json.loads(result.stdout)] == [2, 3]
    result = sdv("--data-dir", str(Path(cli_env.url.database).parent / "elsewhere"))
    assert result.exit_code == 0 and "No audit events yet" in result.output


_READY_THEN_APPEND = """
import sys
from warehouse.audit import AuditEvent, append
from warehouse.operational import engine_for
engine = engine_for(sys.argv[1])
print("ready", flush=True)
append(engine, AuditEvent(user_id="other-process", role="social_worker", purpose="p",
                          action="read", outcome="allowed"))
"""


PROC_LOCKS = Path("/proc/locks")


def blocked_on_flock(pid: int, inode: int) -> bool:
    """Whether process ``pid`` waits for an flock on the file with ``inode``, as Linux
    lists it in /proc/locks: ``N: -> FLOCK  ADVISORY  WRITE <pid> <maj:min:inode> 0 EOF``."""
    return any(
        fields[1:3] == ["->", "FLOCK"]
        and fields[5] == str(pid)
        and fields[6].rsplit(":", 1)[-1] == str(inode)
        for fields in (line.split() for line in PROC_LOCKS.read_text().splitlines())
    )


@pytest.mark.skipif(
    not PROC_LOCKS.exists(),
    reason="proving the other process waits on the lock needs Linux's /proc/locks (a sleep "
    "could not tell a waiting process from a slow one that ignores the lock)",
)
def test_processes_take_turns_on_the_lock_file_and_a_waiter_appends_once_released(engine):
    """Appenders in other processes (``sdv serve --workers 2``) wait on the store's lock
    file, which wakes them as soon as it is free, rather than polling SQLite's lock."""
    import fcntl

    lock_file = Path(engine.url.database + ".audit-lock")
    append(engine, read("P1"))
    assert lock_file.exists()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        other = subprocess.Popen(
            [sys.executable, "-c", _READY_THEN_APPEND, str(engine.url)],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert other.stdout.readline().strip() == b"ready"
            # Positive proof it waits on this file's lock (not merely that it is slow): the
            # kernel lists it as a blocked flock waiter on the lock file's inode.
            deadline = time.monotonic() + 60  # bounds the wait only; it never passes the test
            while not blocked_on_flock(other.pid, os.fstat(handle.fileno()).st_ino):
                assert other.poll() is None, "appended without waiting for the lock file"
                assert time.monotonic() < deadline, "never waited on the lock file"
                time.sleep(0.01)
            assert other.poll() is None and [e.user_id for e in events(engine)] == ["alice"]
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    _, stderr = other.communicate(timeout=60)
    assert other.returncode == 0, stderr.decode()
    assert [e.user_id for e in events(engine)] == ["alice", "other-process"]
    assert verify(engine).ok
