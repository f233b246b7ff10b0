"""The audit trail's own retention: events past ``keep_years`` (``config/audit.yaml``) are
destroyed oldest first, the cut is recorded in the trail, the rest still verifies, a prefix
deleted by hand is still caught, and a stretch that shows tampering is never destroyed."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from postgres import postgres_cluster
from test_audit import read, sql

from warehouse import audit
from warehouse.audit_config import AuditConfig, AuditConfigError, load_audit_config
from warehouse.operational import engine_for, ensure_schema
from warehouse.sources import DEFAULT_CONFIG_DIR

OPERATOR = ("dana", "operator")


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


@pytest.fixture
def trail(engine):
    """Four events: seq 1-3 recorded in 2019 (P1 in seq 1 and 3, P2 in seq 2), seq 4 in 2025."""
    audit.append(engine, read("P1"), at=at("2019-01-10"))
    audit.append(engine, read("P2"), at=at("2019-06-01"))
    audit.append(engine, read("P1", "P3"), at=at("2019-12-31T23:59:59"))
    audit.append(engine, read("P1"), at=at("2025-03-01"))
    return engine


def hashes(engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(
            conn.execute(sa.select(audit.audit_events.c.seq, audit.audit_events.c.hash)).all()
        )


def indexed_seqs(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(audit.audit_event_persons.c.seq)).scalars())


def test_events_before_the_cutoff_go_and_the_rest_still_verifies(trail):
    before = hashes(trail)
    done = audit.expire(trail, at("2020-01-01"), actor=OPERATOR, keep_years=6)

    assert (done.destroyed, done.through_seq, done.through_hash) == (3, 3, before[3])
    assert sorted(hashes(trail)) == [4, 5]  # the 2025 event and the cut's own record
    assert indexed_seqs(trail) == {4}  # the person index went with its events
    assert [e.seq for e in audit.person_history(trail, ["P1"])] == [4]
    assert audit.person_history(trail, ["P2", "P3"]) == []

    cut = done.record
    assert cut is not None and cut.seq == 5 and cut.action == audit.AUDIT_RETENTION
    assert (cut.user_id, cut.role, cut.purpose, cut.person_ids) == (
        "dana",
        "operator",
        "retention",
        (),
    )
    assert cut.detail == {
        "destroyed": 3,
        "through_seq": 3,
        "through_hash": before[3],
        "recorded_before": "2020-01-01T00:00:00.000000+00:00",
        "keep_years": 6,
    }
    report = audit.verify(trail)
    assert report.ok, report.problems
    assert (report.checked, report.base_seq, report.head_seq) == (2, 3, 5)
    # Appending carries on from the head, and a later cut moves the base on; the first
    # cut's own record (seq 5) was recorded now, so it stays.
    audit.append(trail, read("P9"), at=at("2026-01-01"))
    again = audit.expire(trail, at("2025-06-01"), actor=OPERATOR, keep_years=1)
    assert (again.destroyed, again.through_seq) == (1, 4)
    report = audit.verify(trail)
    assert report.ok, report.problems
    assert (report.checked, report.base_seq) == (3, 4)


def test_a_cut_that_dies_part_way_verifies_meanwhile_and_the_next_run_finishes_it(
    trail, monkeypatch
):
    monkeypatch.setattr(audit, "_CUT_CHUNK", 1)  # one event per transaction
    sql(
        trail,
        "CREATE TRIGGER power_cut BEFORE DELETE ON audit_events WHEN old.seq = 2 "
        "BEGIN SELECT RAISE(ABORT, 'power cut'); END",
    )
    with pytest.raises(sa.exc.DatabaseError, match="power cut"):
        audit.expire(trail, at("2020-01-01"), actor=OPERATOR, keep_years=6)
    assert sorted(hashes(trail)) == [2, 3, 4, 5]  # seq 1 went; 5 declares the cut through 3
    report = audit.verify(trail)
    assert report.ok, report.problems
    assert report.base_seq == 1

    sql(trail, "DROP TRIGGER power_cut")
    audit.append(trail, read("P5"))
    audit.expire(trail, at("2020-01-01"), actor=OPERATOR, keep_years=6)
    assert sorted(hashes(trail)) == [4, 5, 6]
    report = audit.verify(trail)
    assert report.ok, report.problems
    assert report.base_seq == 3


def test_an_old_event_recorded_after_a_newer_one_waits_so_the_trail_has_no_gap(engine):
    audit.append(engine, read("P1"), at=at("2019-01-01"))
    audit.append(engine, read("P2"), at=at("2025-01-01"))
    audit.append(engine, read("P3"), at=at("2019-02-01"))  # a caller's late, backdated event
    done = audit.expire(engine, at("2020-01-01"), actor=OPERATOR, keep_years=6)
    assert (done.destroyed, done.through_seq) == (1, 1)
    assert sorted(hashes(engine)) == [2, 3, 4]
    assert audit.verify(engine).ok


def test_nothing_due_changes_nothing(trail):
    before = hashes(trail)
    done = audit.expire(trail, at("2019-01-01"), actor=OPERATOR, keep_years=6)
    assert (done.destroyed, done.through_seq, done.record) == (0, 0, None)
    assert hashes(trail) == before
    report = audit.verify(trail)
    assert report.ok and report.base_seq == 0


def test_a_dry_run_counts_and_changes_nothing(trail, tmp_path):
    before = hashes(trail)
    done = audit.expire(trail, at("2020-01-01"), actor=OPERATOR, keep_years=6, dry_run=True)
    assert (done.destroyed, done.through_seq, done.record) == (3, 3, None)
    assert hashes(trail) == before and audit.verify(trail).base_seq == 0
    # ... and does not create a store to find out there is none.
    missing = engine_for(f"sqlite:///{tmp_path / 'none' / 'operational.db'}")
    nothing = audit.expire(missing, at("2020-01-01"), actor=OPERATOR, keep_years=6, dry_run=True)
    assert nothing.destroyed == 0
    assert not (tmp_path / "none" / "operational.db").exists()


def test_a_stretch_that_shows_tampering_is_not_destroyed(trail):
    sql(trail, "UPDATE audit_events SET user_id = 'mallory' WHERE seq = 2")
    before = hashes(trail)
    with pytest.raises(audit.AuditError, match=r"do not verify, so none were destroyed.*seq 2"):
        audit.expire(trail, at("2020-01-01"), actor=OPERATOR, keep_years=6)
    assert hashes(trail) == before
    assert [p.split(":")[0] for p in audit.verify(trail).problems] == ["seq 2"]


def test_a_prefix_deleted_by_hand_is_reported_even_with_a_base_written_for_it(trail):
    digest = hashes(trail)[2]
    sql(trail, "DELETE FROM audit_event_persons WHERE seq <= 2")
    sql(trail, "DELETE FROM audit_events WHERE seq <= 2")
    sql(trail, "INSERT INTO audit_chain_base (id, seq, hash) VALUES (1, 2, :h)", h=digest)
    report = audit.verify(trail)
    assert report.problems == [
        "seq 2: the chain starts after seq 2 (audit_chain_base), but no audit_retention "
        "event records that cut (events deleted outside retention)"
    ]


def test_a_base_moved_after_a_real_cut_is_reported(trail):
    audit.expire(trail, at("2019-07-01"), actor=OPERATOR, keep_years=6)  # seq 1 and 2
    assert audit.verify(trail).ok
    digest = hashes(trail)[3]
    sql(trail, "DELETE FROM audit_event_persons WHERE seq = 3")
    sql(trail, "DELETE FROM audit_events WHERE seq = 3")
    sql(trail, "UPDATE audit_chain_base SET seq = 3, hash = :h", h=digest)
    problems = audit.verify(trail).problems
    assert len(problems) == 1 and problems[0].startswith("seq 3: the chain starts after seq 3")


def test_an_anchor_from_before_the_cut_can_no_longer_be_checked(trail):
    old = hashes(trail)
    audit.expire(trail, at("2020-01-01"), actor=OPERATOR, keep_years=6)
    stale = audit.verify(trail, anchor=(2, old[2]))
    assert len(stale.problems) == 1
    assert stale.problems[0].startswith("seq 2: the anchor is older than the trail")
    assert audit.verify(trail, anchor=(3, old[3])).ok  # the base itself: its hash is kept
    assert audit.verify(trail, anchor=(4, old[4])).ok
    assert not audit.verify(trail, anchor=(3, old[2])).ok


@pytest.mark.parametrize(
    ("as_of", "first_kept"),
    [
        # An event goes ON its anniversary: as of 20 Nov 2026, everything recorded up to the
        # end of 20 Nov 2020 has been kept six years.
        (date(2026, 11, 20), "2020-11-21"),
        # Recorded 29 Feb 2020: its anniversary in 2026 is 1 March, so kept on 28 February.
        (date(2026, 2, 28), "2020-02-29"),
        (date(2026, 3, 1), "2020-03-02"),
        # As of 29 Feb 2032, six years back is a common year: up to 28 Feb 2026 goes.
        (date(2032, 2, 29), "2026-03-01"),
    ],
)
def test_the_cutoff_never_destroys_an_event_early(as_of, first_kept):
    assert AuditConfig(keep_years=6).cutoff(as_of) == at(first_kept)


def test_the_config_is_validated_and_a_missing_file_keeps_everything(tmp_path):
    assert load_audit_config(tmp_path).keep_years is None
    assert load_audit_config(DEFAULT_CONFIG_DIR).keep_years == 6  # as shipped
    for text, problem in (
        ("keep_years: 0\n", "keep_years: Input should be greater than or equal to 1"),
        ("keep_years: six\n", "keep_years: Input should be a valid integer"),
        ("keep_yers: 6\n", "keep_yers: Extra inputs are not permitted"),
    ):
        (tmp_path / "audit.yaml").write_text(text)
        with pytest.raises(AuditConfigError, match=f"audit.yaml: {problem}"):
            load_audit_config(tmp_path)


@pytest.mark.postgres
def test_expiry_on_postgresql():
    with postgres_cluster() as url:
        engine = engine_for(url)
        try:
            ensure_schema(engine)
            for day in ("2019-01-10", "2019-06-01", "2025-03-01"):
                audit.append(engine, read("P1"), at=at(day))
            done = audit.expire(engine, at("2020-01-01"), actor=OPERATOR, keep_years=6)
            assert (done.destroyed, done.through_seq) == (2, 2)
            report = audit.verify(engine)
            assert report.ok, report.problems
            assert (report.checked, report.base_seq) == (2, 2)
            assert [e.seq for e in audit.person_history(engine, ["P1"])] == [3]
        finally:
            engine.dispose()
