"""Clerical review of uncertain links, and the constraints reviewers' decisions impose.

Pairs of records that linkage scores between its two thresholds are queued here for a
person to look at. A reviewer accepts a pair (the same person) or rejects it (different
people), always with their name and a reason; they can also split a person linkage merged
wrongly into groups of records. Every later linkage run reads :func:`constraints` and
honours them as must-link / cannot-link.

Decisions are keyed on record ids (``source|table|local_key``), never on model scores,
cluster ids or run ids, so they survive retraining and re-running. The same pair queued on
different nights is one item (its ``pair_id`` is a hash of the two record ids), and a pair a
person has decided is never put back in front of them. Decisions are append-only: a later
one on the same pair supersedes an earlier one, and both stay in the history.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from warehouse import audit
from warehouse.operational import UTCDateTime, metadata

if TYPE_CHECKING:
    from warehouse.audit_config import LinkageAccess

PENDING, DECIDED, STALE = "pending", "decided", "stale"
DECISIONS = {"accept": "must_link", "reject": "cannot_link"}
PAIR_ID_LENGTH = 16  # hex digits of sha256: 64 bits, no collision at any plausible volume
MIN_PREFIX = 4

review_pairs = sa.Table(
    "review_pairs",
    metadata,
    sa.Column("pair_id", sa.String(PAIR_ID_LENGTH), primary_key=True),
    sa.Column("record_id_l", sa.String, nullable=False),
    sa.Column("record_id_r", sa.String, nullable=False),
    sa.Column("match_probability", sa.Float, nullable=False),
    sa.Column("match_weight", sa.Float, nullable=False),
    sa.Column("levels", sa.Text, nullable=False),  # JSON: comparison -> level label
    sa.Column("record_l", sa.Text, nullable=False),  # JSON: displayed fields
    sa.Column("record_r", sa.Text, nullable=False),
    sa.Column("first_queued_at", UTCDateTime, nullable=False),
    sa.Column("last_queued_at", UTCDateTime, nullable=False),
    sa.Column("last_run_id", sa.String, nullable=False),
    sa.Column("status", sa.String(8), nullable=False),
    sa.UniqueConstraint("record_id_l", "record_id_r", name="uq_review_pairs_records"),
    sa.CheckConstraint(f"status IN ('{PENDING}', '{DECIDED}', '{STALE}')", name="ck_status"),
    sa.Index("ix_review_pairs_status", "status", "match_probability"),
)

review_decisions = sa.Table(
    "review_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("record_id_l", sa.String, nullable=False),
    sa.Column("record_id_r", sa.String, nullable=False),
    sa.Column("decision", sa.String(6), nullable=False),
    sa.Column("reviewer", sa.String, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("pair_id", sa.String(PAIR_ID_LENGTH), sa.ForeignKey("review_pairs.pair_id")),
    sa.CheckConstraint("decision IN ('accept', 'reject')", name="ck_decision"),
    sa.CheckConstraint("reviewer <> '' AND reason <> ''", name="ck_decision_accountable"),
    sa.Index("ix_review_decisions_records", "record_id_l", "record_id_r"),
)

person_splits = sa.Table(
    "person_splits",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("person_id", sa.String, nullable=False),
    sa.Column("reviewer", sa.String, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("reviewer <> '' AND reason <> ''", name="ck_split_accountable"),
)

person_split_records = sa.Table(
    "person_split_records",
    metadata,
    sa.Column("split_id", sa.Integer, sa.ForeignKey("person_splits.id"), nullable=False),
    sa.Column("group_no", sa.Integer, nullable=False),
    sa.Column("record_id", sa.String, nullable=False),
    sa.PrimaryKeyConstraint("split_id", "record_id"),
)


class ReviewError(ValueError):
    """A request the review store refuses, with a message fit to show the reviewer."""


@dataclass(frozen=True)
class ReviewItem:
    pair_id: str
    record_id_l: str
    record_id_r: str
    match_probability: float
    match_weight: float
    levels: dict[str, str]
    record_l: dict[str, Any]
    record_r: dict[str, Any]
    status: str
    first_queued_at: datetime
    last_queued_at: datetime
    last_run_id: str


def pair_id(record_id_a: str, record_id_b: str) -> str:
    """The stable id of the pair, whichever order the two records are given in."""
    left, right = sorted((record_id_a, record_id_b))
    digest = hashlib.sha256(f"{left}\x1f{right}".encode())
    return digest.hexdigest()[:PAIR_ID_LENGTH]


def _ordered(record_id_a: str, record_id_b: str) -> tuple[str, str]:
    for record_id in (record_id_a, record_id_b):
        parts = record_id.split("|", 2) if isinstance(record_id, str) else []
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ReviewError(f"{record_id!r} is not a record id (source|table|local_key)")
    if record_id_a == record_id_b:
        raise ReviewError(f"a record cannot be paired with itself: {record_id_a}")
    left, right = sorted((record_id_a, record_id_b))
    return left, right


def _accountable(reviewer: str, reason: str) -> tuple[str, str]:
    reviewer, reason = (reviewer or "").strip(), (reason or "").strip()
    if not reviewer:
        raise ReviewError("a reviewer's name is required")
    if not reason:
        raise ReviewError("a reason is required: say why, for whoever reads this later")
    return reviewer, reason


def _upsert(conn: Connection) -> Any:
    dialects = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
    if conn.dialect.name not in dialects:
        raise ReviewError(f"operational store on {conn.dialect.name} is not supported")
    return dialects[conn.dialect.name](review_pairs)


_PAIR_COLUMNS = (
    "record_id_l",
    "record_id_r",
    "match_probability",
    "match_weight",
    "levels",
    "record_l",
    "record_r",
)


def _normalise(pairs: pl.DataFrame) -> pl.DataFrame:
    """Order each pair so l < r (swapping the displayed records with it), one row per pair."""
    if pairs.width == 0:  # a run with nothing uncertain may hand over a bare empty frame
        pairs = pl.DataFrame(schema=dict.fromkeys(_PAIR_COLUMNS, pl.String))
    missing = [c for c in _PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise ReviewError(f"pairs to enqueue lack column(s): {', '.join(missing)}")
    frame = pairs.select(
        pl.col("record_id_l", "record_id_r").cast(pl.String),
        pl.col("match_probability", "match_weight").cast(pl.Float64),
        pl.col("levels", "record_l", "record_r").cast(pl.String).fill_null("{}"),
    )
    bad = frame.filter(
        pl.any_horizontal(pl.col("record_id_l", "record_id_r", "match_probability").is_null())
        | (pl.col("record_id_l") == pl.col("record_id_r"))
    )
    if bad.height:
        raise ReviewError(
            f"{bad.height} pair(s) lack a record id or probability, or pair a record with itself"
        )
    swap = pl.col("record_id_l") > pl.col("record_id_r")
    return (
        frame.with_columns(
            pl.when(swap).then(pl.col(b)).otherwise(pl.col(a)).alias(a)
            for a, b in [
                ("record_id_l", "record_id_r"),
                ("record_id_r", "record_id_l"),
                ("record_l", "record_r"),
                ("record_r", "record_l"),
            ]
        )
        .sort("match_probability", descending=True)
        .unique(["record_id_l", "record_id_r"], keep="first", maintain_order=True)
    )


def enqueue(engine: Engine, pairs: pl.DataFrame, run_id: str) -> int:
    """Queue this run's uncertain pairs for review; return how many items are pending.

    A pair seen before is refreshed (scores, comparison levels, displayed records) rather
    than duplicated. A pair a person has already decided, by accepting or rejecting it or by
    splitting a person, stays decided. A pending pair this run no longer finds uncertain
    becomes ``stale``: the model has made up its mind, so it leaves the reviewers' list.
    """
    frame = _normalise(pairs)
    now = datetime.now(UTC)
    decided = {(row[0], row[1]) for row in constraints(engine).iter_rows()}
    rows = [
        {
            **row,
            "pair_id": pair_id(row["record_id_l"], row["record_id_r"]),
            "first_queued_at": now,
            "last_queued_at": now,
            "last_run_id": run_id,
            "status": DECIDED if (row["record_id_l"], row["record_id_r"]) in decided else PENDING,
        }
        for row in frame.iter_rows(named=True)
    ]
    with engine.begin() as conn:
        if rows:
            insert = _upsert(conn)
            keep_decided = sa.case(
                (
                    sa.or_(review_pairs.c.status == DECIDED, insert.excluded.status == DECIDED),
                    DECIDED,
                ),
                else_=PENDING,
            )
            refreshed = {
                c: insert.excluded[c] for c in (*_PAIR_COLUMNS[2:], "last_queued_at", "last_run_id")
            }
            statement = insert.on_conflict_do_update(
                index_elements=[review_pairs.c.pair_id], set_={**refreshed, "status": keep_decided}
            )
            conn.execute(statement, rows)
        conn.execute(
            review_pairs.update()
            .where(
                review_pairs.c.status == PENDING,
                sa.not_(
                    sa.and_(
                        review_pairs.c.last_run_id == run_id,
                        review_pairs.c.last_queued_at == now,
                    )
                ),
            )
            .values(status=STALE)
        )
        return conn.execute(
            sa.select(sa.func.count()).where(review_pairs.c.status == PENDING)
        ).scalar_one()


def _item(row: sa.Row) -> ReviewItem:
    values = row._asdict()
    for column in ("levels", "record_l", "record_r"):
        values[column] = json.loads(values[column])
    return ReviewItem(**values)


def pending(engine: Engine, limit: int | None = None) -> list[ReviewItem]:
    """Pending items, the likeliest matches first."""
    query = (
        sa.select(review_pairs)
        .where(review_pairs.c.status == PENDING)
        .order_by(review_pairs.c.match_probability.desc(), review_pairs.c.pair_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [_item(row) for row in conn.execute(query)]


def get_item(engine: Engine, pair_id_or_prefix: str) -> ReviewItem:
    """The queued item with this pair id, or with the only pair id starting with this prefix."""
    prefix = pair_id_or_prefix.strip().lower()
    if len(prefix) < MIN_PREFIX or not set(prefix) <= set(string.hexdigits.lower()):
        raise ReviewError(
            f"{pair_id_or_prefix!r} is not a pair id: give at least {MIN_PREFIX} of its hex digits"
        )
    query = (
        sa.select(review_pairs)
        .where(review_pairs.c.pair_id.startswith(prefix, autoescape=True))
        .order_by(review_pairs.c.pair_id)
        .limit(6)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        raise ReviewError(f"no review item with pair id {pair_id_or_prefix}")
    if len(rows) > 1:
        shown = ", ".join(r.pair_id for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise ReviewError(f"pair id prefix {pair_id_or_prefix} is ambiguous: {shown}")
    return _item(rows[0])


REVIEW_READ = "review"  # the audit action: the queue's records were read
# What each command displays, as the audit names it: the queued records themselves (list,
# show); the decided pair's record ids (accept, reject: a local key can be a UPN); the
# person split and the record ids of each group (split); or the decision log's record ids,
# reasons and split persons (history).
_QUEUE = ("review_pairs.record_l", "review_pairs.record_r")
_PAIR_IDS = ("review_pairs.record_id_l", "review_pairs.record_id_r")
SHOWN_COLUMNS = {
    "list": _QUEUE,
    "show": _QUEUE,
    "accept": _PAIR_IDS,
    "reject": _PAIR_IDS,
    "split": ("person_splits.person_id", "person_split_records.record_id"),
    "history": (
        "review_decisions.record_id_l",
        "review_decisions.record_id_r",
        "review_decisions.reason",
        "person_splits.person_id",
        "person_splits.reason",
        "person_split_records.record_id",
    ),
}


def record_read(
    engine: Engine,
    *,
    by: str,
    access: LinkageAccess,
    shown: str,
    record_ids: Iterable[str],
    persons: Mapping[str, str],
    pair_ids: Iterable[str] = (),
    person_ids: Iterable[str] = (),
) -> None:
    """Record in the audit trail that ``by`` is about to read these records of the queue.

    The queue holds copies of what each source delivered (names, dates of birth, whole
    records), and ``sdv review`` displays them, so each reading is an access like any
    other: who, when, which pairs, and the persons linkage last put the records in
    (``persons``: record id to person id; ``person_ids``: persons shown by id, as a split
    is), so that "who has seen this child's data" finds it. Call it before anything is
    shown: a reading the trail cannot take is not shown. The detail holds pair ids and
    counts, never a record id (a local key can be an identifier such as a UPN); ``shown``
    says which command (``list``, ``show``, ``accept``, ``reject``, ``split`` or
    ``history``), and so which columns it displays (:data:`SHOWN_COLUMNS`). A decision
    and a split are kept with their reviewer and reason in the review store; what the
    command then displays of them (record ids) is a reading like the others.
    """
    records = set(record_ids)
    audit.append(
        engine,
        audit.AuditEvent(
            user_id=by,
            role=access.role,
            purpose=access.purpose,
            lawful_basis=access.lawful_basis,
            action=REVIEW_READ,
            outcome="allowed",
            columns=SHOWN_COLUMNS[shown],
            person_ids={persons[r] for r in records if r in persons} | set(person_ids),
            detail={
                "shown": shown,
                "pairs": sorted(set(pair_ids)),
                "records": len(records),
                "records_not_linked": sum(1 for r in records if r not in persons),
            },
        ),
    )


def _record_decision(
    conn: Connection,
    left: str,
    right: str,
    decision: str,
    reviewer: str,
    reason: str,
) -> None:
    choice = (decision or "").strip().lower()
    if choice not in DECISIONS:
        raise ReviewError(f"unknown decision {decision!r}: use accept or reject")
    reviewer, reason = _accountable(reviewer, reason)
    key = pair_id(left, right)
    queued = conn.execute(
        review_pairs.update().where(review_pairs.c.pair_id == key).values(status=DECIDED)
    ).rowcount
    conn.execute(
        review_decisions.insert().values(
            record_id_l=left,
            record_id_r=right,
            decision=choice,
            reviewer=reviewer,
            reason=reason,
            decided_at=datetime.now(UTC),
            pair_id=key if queued else None,
        )
    )


def decide(engine: Engine, pair_id: str, decision: str, reviewer: str, reason: str) -> None:
    """Accept (same person) or reject (different people) a queued pair, by id or prefix."""
    item = get_item(engine, pair_id)
    with engine.begin() as conn:
        _record_decision(conn, item.record_id_l, item.record_id_r, decision, reviewer, reason)


def decide_records(
    engine: Engine, record_id_l: str, record_id_r: str, decision: str, reviewer: str, reason: str
) -> None:
    """Accept or reject a pair of records directly, whether or not it was ever queued."""
    left, right = _ordered(record_id_l, record_id_r)
    with engine.begin() as conn:
        _record_decision(conn, left, right, decision, reviewer, reason)


def _cross_pairs(groups: Sequence[Sequence[str]]) -> Iterable[tuple[str, str]]:
    for group_a, group_b in itertools.combinations(groups, 2):
        for a, b in itertools.product(group_a, group_b):
            yield _ordered(a, b)


def split_person(
    engine: Engine, person_id: str, groups: list[list[str]], reviewer: str, reason: str
) -> int:
    """Record that a person's records belong to different people; return the split's id.

    Every pair of records in different groups becomes cannot-link. Records in the same
    group get no constraint: the split says only which records must not be together.
    """
    reviewer, reason = _accountable(reviewer, reason)
    person_id = (person_id or "").strip()
    if not person_id:
        raise ReviewError("a person id is required")
    cleaned = [[r.strip() for r in group if r and r.strip()] for group in groups]
    cleaned = [group for group in cleaned if group]
    if len(cleaned) < 2:
        raise ReviewError("a split needs at least two non-empty groups of records")
    seen: set[str] = set()
    for group in cleaned:
        for record_id in group:
            if record_id in seen:
                raise ReviewError(f"record {record_id} is listed more than once")
            seen.add(record_id)
    pair_keys = [pair_id(a, b) for a, b in _cross_pairs(cleaned)]  # validates the record ids
    with engine.begin() as conn:
        split_id = conn.execute(
            person_splits.insert().values(
                person_id=person_id,
                reviewer=reviewer,
                reason=reason,
                decided_at=datetime.now(UTC),
            )
        ).inserted_primary_key[0]
        conn.execute(
            person_split_records.insert(),
            [
                {"split_id": split_id, "group_no": number, "record_id": record_id}
                for number, group in enumerate(cleaned, start=1)
                for record_id in group
            ],
        )
        for start in range(0, len(pair_keys), 500):
            conn.execute(
                review_pairs.update()
                .where(review_pairs.c.pair_id.in_(pair_keys[start : start + 500]))
                .values(status=DECIDED)
            )
    return split_id


_DECISION_EVENTS = {
    "record_id_l": pl.String,
    "record_id_r": pl.String,
    "constraint": pl.String,
    "decided_at": pl.Datetime("us", "UTC"),
    "rank": pl.Int64,
    "seq": pl.Int64,
}


def _frame(conn: Connection, query: sa.Select, schema: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame([tuple(r) for r in conn.execute(query)], schema=schema, orient="row")


def constraints(engine: Engine) -> pl.DataFrame:
    """What linkage must honour: one row per decided pair, the latest decision on it.

    Accepts are ``must_link``, rejects and pairs split apart are ``cannot_link``. Decisions
    and splits are ordered together by time, so a split after an accept on the same pair
    wins, and an accept after the split wins back; on an exact tie the split wins.
    """
    decisions_query = sa.select(
        review_decisions.c.record_id_l,
        review_decisions.c.record_id_r,
        review_decisions.c.decision,
        review_decisions.c.decided_at,
        review_decisions.c.id,
    )
    splits_query = sa.select(
        person_split_records.c.split_id,
        person_split_records.c.group_no,
        person_split_records.c.record_id,
        person_splits.c.decided_at,
    ).join(person_splits, person_splits.c.id == person_split_records.c.split_id)
    with engine.connect() as conn:
        decisions = _frame(
            conn,
            decisions_query,
            {
                "record_id_l": pl.String,
                "record_id_r": pl.String,
                "decision": pl.String,
                "decided_at": pl.Datetime("us", "UTC"),
                "seq": pl.Int64,
            },
        )
        members = _frame(
            conn,
            splits_query,
            {
                "seq": pl.Int64,
                "group_no": pl.Int64,
                "record_id": pl.String,
                "decided_at": pl.Datetime("us", "UTC"),
            },
        )
    accept_reject = decisions.select(
        "record_id_l",
        "record_id_r",
        pl.col("decision").replace_strict(DECISIONS).alias("constraint"),
        "decided_at",
        pl.lit(0, pl.Int64).alias("rank"),
        "seq",
    )
    split_apart = (
        members.join(members, on="seq", suffix="_r")
        .filter(
            (pl.col("group_no") != pl.col("group_no_r"))
            & (pl.col("record_id") < pl.col("record_id_r"))
        )
        .select(
            pl.col("record_id").alias("record_id_l"),
            "record_id_r",
            pl.lit("cannot_link").alias("constraint"),
            "decided_at",
            pl.lit(1, pl.Int64).alias("rank"),
            "seq",
        )
    )
    events = pl.concat([accept_reject.cast(_DECISION_EVENTS), split_apart.cast(_DECISION_EVENTS)])
    return (
        events.sort("decided_at", "rank", "seq")
        .unique(["record_id_l", "record_id_r"], keep="last")
        .select("record_id_l", "record_id_r", "constraint")
        .sort("record_id_l", "record_id_r")
    )


def decision_history(engine: Engine) -> pl.DataFrame:
    """Every decision and split, oldest first, with who made it and why (nothing is deleted)."""
    decisions_query = sa.select(
        review_decisions.c.decided_at,
        review_decisions.c.decision,
        review_decisions.c.record_id_l,
        review_decisions.c.record_id_r,
        review_decisions.c.pair_id,
        review_decisions.c.reviewer,
        review_decisions.c.reason,
    ).order_by(review_decisions.c.id)
    splits_query = sa.select(
        person_splits.c.id,
        person_splits.c.decided_at,
        person_splits.c.person_id,
        person_splits.c.reviewer,
        person_splits.c.reason,
    ).order_by(person_splits.c.id)
    members_query = sa.select(
        person_split_records.c.split_id,
        person_split_records.c.group_no,
        person_split_records.c.record_id,
    ).order_by(person_split_records.c.split_id, person_split_records.c.group_no)
    with engine.connect() as conn:
        decisions = conn.execute(decisions_query).all()
        splits = conn.execute(splits_query).all()
        members = conn.execute(members_query).all()
    groups: dict[int, dict[int, list[str]]] = {}
    for split_id, group_no, record_id in members:
        groups.setdefault(split_id, {}).setdefault(group_no, []).append(record_id)
    rows = [{**row._asdict(), "person_id": None, "groups": None, "seq": 0} for row in decisions] + [
        {
            "decided_at": s.decided_at,
            "decision": "split",
            "record_id_l": None,
            "record_id_r": None,
            "pair_id": None,
            "reviewer": s.reviewer,
            "reason": s.reason,
            "person_id": s.person_id,
            "groups": " / ".join(", ".join(g) for _, g in sorted(groups.get(s.id, {}).items())),
            "seq": 1,
        }
        for s in splits
    ]
    schema = {
        "decided_at": pl.Datetime("us", "UTC"),
        "decision": pl.String,
        "record_id_l": pl.String,
        "record_id_r": pl.String,
        "person_id": pl.String,
        "groups": pl.String,
        "pair_id": pl.String,
        "reviewer": pl.String,
        "reason": pl.String,
        "seq": pl.Int64,
    }
    return (
        pl.DataFrame(rows, schema=schema).sort("decided_at", "seq", maintain_order=True).drop("seq")
    )
