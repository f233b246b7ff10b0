"""Erasure where upheld (UK GDPR Art. 17): the person's records destroyed everywhere, for good.

:func:`erase` is the whole request, in this order:

1. resolve the person's records (``source|table|local_key``) from the current snapshot's
   ``person_records`` and ``linked.person_records`` (ids may have moved since publishing),
   and the records of theirs no source delivers any more (a replaced temporary UPN, a key
   the agency merged: :mod:`warehouse.retired`), whose rows are still held;
2. record the erasure (who upheld it, who recorded it, why) and a **tombstone** per record:
   HMAC-SHA256 under the partnership key (:mod:`warehouse.tombstone`), never the id itself,
   so a later delivery of the record is quarantined as ``erased`` rather than silently
   bringing it back (written first: a crash half way leaves nothing that can return);
3. purge the warehouse (ingest layers and ``linked``, one transaction, file rewritten so no
   deleted byte survives) while holding DuckDB's single writer lock, which also keeps
   loads, linkage and publishing out until the published files are done;
4. purge every published snapshot and analysts' file (:func:`warehouse.purge.purge_published`),
   and remove from the landing zone every delivery folder of the person's sources that the
   warehouse has dealt with (loaded or rejected: :mod:`warehouse.landing_retention`),
   whatever its age, since the files hold the person as delivered; folders not yet
   loaded stay, and their rows reaching the person are quarantined when they are;
5. operational store (:func:`purge_operational`): review queue items and decisions naming
   the records are deleted (the record ids are the identifiers, and the record JSON holds
   names); a reviewer's split loses the records; a rectification loses them and is deleted
   when none is left (it holds the values corrected: names, dates of birth, NHS numbers); a
   restriction naming them keeps who, when and why but no longer the record ids, and when
   none is left no longer the person id either, and is lifted (nothing left to restrict);
6. one audit event (purpose ``subject_rights``, action ``erase``) with the reason and the
   counts: the minimal fact of it. Earlier audit events naming the person id stay: the
   chain is tamper-evident by design and they hold ids, never data.

The person id stays in two places on purpose: this erasure's row (accountability: who
upheld what, when) and the audit; linkage reads erased ids as issued so none is reused.

A backup taken before the erasure still holds the person. :func:`reapply` finds erased
records that a restore brought back, by their tombstones, and destroys them again; the
nightly retention run calls it before anything is linked or published.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from warehouse import audit, landing_retention, purge, retired, review
from warehouse.operational import UTCDateTime, ensure_schema, holds_table, metadata
from warehouse.publish import PublishError, SnapshotStore, person_record_ids, snapshot_files
from warehouse.rectification import rectifications
from warehouse.restriction import restrictions
from warehouse.sources import Source
from warehouse.store import table_exists
from warehouse.subjects import key_sql, relations
from warehouse.tombstone import Tombstones, key_id, record_hash

erasures = sa.Table(
    "erasures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("person_id", sa.String, nullable=False),  # as named in the request
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("upheld_by", sa.String, nullable=False),
    sa.Column("recorded_by", sa.String, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("completed_at", UTCDateTime),
    sa.Column("counts", sa.Text),  # JSON: rows removed per "<file>:<table>"
    sa.CheckConstraint(
        "reason <> '' AND upheld_by <> '' AND recorded_by <> ''", name="ck_erasure_accountable"
    ),
)

erasure_tombstones = sa.Table(
    "erasure_tombstones",
    metadata,
    sa.Column("record_hash", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Column("erasure_id", sa.Integer, sa.ForeignKey("erasures.id"), nullable=False),
)


class ErasureError(ValueError):
    """An erasure that cannot be carried out; the message says why and what to do."""


@dataclass(frozen=True)
class ErasureReport:
    erasure_id: int
    person_id: str
    records: int  # records destroyed (the person's, and rows of others naming them)
    counts: dict[str, int]


# --- tombstones ----------------------------------------------------------------------------


def tombstones(engine: Engine, key: bytes) -> Tombstones:
    """Every tombstone, for staging; refuses if any was made under another key, because
    such a tombstone can no longer stop its record coming back."""
    ensure_schema(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(erasure_tombstones.c.record_hash, erasure_tombstones.c.key_id)
        )
        found = rows.all()
    wrong = {k for _, k in found if k != key_id(key)}
    if wrong:
        raise ErasureError(
            f"{sum(1 for _, k in found if k in wrong)} erasure tombstone(s) were made under "
            "another pseudonymisation key: loading now could bring erased records back. "
            "Restore the key the erasures were made with (secrets/pseudonym.key or "
            "SDV_PSEUDONYM_KEY)."
        )
    return Tombstones.of((h for h, _ in found), key)


def any_tombstones(engine: Engine) -> bool:
    """Whether any record was ever erased (so loads need the key to check deliveries).
    Creates no store or table to find out."""
    if not holds_table(engine, erasure_tombstones.name):
        return False
    with engine.connect() as conn:
        return (
            conn.execute(sa.select(erasure_tombstones.c.record_hash).limit(1)).first() is not None
        )


def erased_person_ids(engine: Engine) -> set[str]:
    """Person ids named by erasures: issued once, never to be issued again."""
    ensure_schema(engine)
    with engine.connect() as conn:
        return {r for (r,) in conn.execute(sa.select(erasures.c.person_id).distinct())}


def _record(
    engine: Engine,
    person_id: str,
    reason: str,
    upheld_by: str,
    recorded_by: str,
    record_ids: Iterable[str],
    key: bytes,
) -> int:
    with engine.begin() as conn:
        erasure_id = conn.execute(
            erasures.insert().values(
                person_id=person_id,
                reason=reason,
                upheld_by=upheld_by,
                recorded_by=recorded_by,
                recorded_at=datetime.now(UTC),
            )
        ).inserted_primary_key[0]
        hashes = {record_hash(r, key) for r in record_ids}
        known = {
            h
            for (h,) in conn.execute(
                sa.select(erasure_tombstones.c.record_hash).where(
                    erasure_tombstones.c.record_hash.in_(sorted(hashes))
                )
            )
        }
        fresh = [
            {"record_hash": h, "key_id": key_id(key), "erasure_id": erasure_id}
            for h in sorted(hashes - known)
        ]
        if fresh:
            conn.execute(erasure_tombstones.insert(), fresh)
    return int(erasure_id)


# --- finding the person's records ---------------------------------------------------------


def _published_records(store: SnapshotStore, person_id: str) -> set[str]:
    try:
        with store.reader() as con:
            return set(person_record_ids(con, person_id))
    except PublishError:
        return set()


def _linked_records(con: duckdb.DuckDBPyConnection, person_id: str) -> set[str]:
    if not table_exists(con, "linked", "person_records"):
        return set()
    rows = con.execute(
        "select record_id from linked.person_records where person_id = ?", [person_id]
    ).fetchall()
    return {r for (r,) in rows}


def _people_losing_everything(
    con: duckdb.DuckDBPyConnection, named: Iterable[str], purged: set[str]
) -> set[str]:
    """The ``named`` people and anyone in ``linked`` none of whose records survive."""
    people = set(named)
    if table_exists(con, "linked", "person_records"):
        rows = con.execute(
            "select person_id, list(record_id) from linked.person_records group by person_id"
        ).fetchall()
        people |= {p for p, records in rows if set(records) <= purged}
    return people


def _writer(warehouse: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    if not Path(warehouse).exists():
        raise ErasureError(f"no warehouse at {warehouse}: nothing has been loaded there")
    try:
        return duckdb.connect(str(warehouse), read_only=read_only)
    except (duckdb.IOException, duckdb.ConnectionException) as err:
        raise ErasureError(
            f"the warehouse {warehouse} is in use by another process (a load, linkage or "
            f"publish running?): try again when it has finished ({err})"
        ) from err


# --- the warehouse's register of the erasures applied to it ----------------------------------

REGISTER_DDL = """
CREATE TABLE IF NOT EXISTS meta.erasures_applied (
    erasure_id BIGINT NOT NULL,
    recorded_at VARCHAR NOT NULL,  -- as the operational store holds it: id and time name one
    applied_at TIMESTAMPTZ NOT NULL
)
"""


def _registered(engine: Engine, erasure_ids: Iterable[int]) -> set[tuple[int, str]]:
    """``(id, recorded_at)`` of the operational store's erasures among ``erasure_ids``."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(erasures.c.id, erasures.c.recorded_at).where(
                erasures.c.id.in_(sorted(erasure_ids))
            )
        )
        return {(int(i), at.isoformat()) for i, at in rows}


def _unregister(con: duckdb.DuckDBPyConnection, erasure_id: int, recorded_at: str) -> None:
    con.execute(
        "delete from meta.erasures_applied where erasure_id = ? and recorded_at = ?",
        [erasure_id, recorded_at],
    )


def _register(con: duckdb.DuckDBPyConnection, applied: set[tuple[int, str]]) -> None:
    """Note in the warehouse (inside the purge's transaction) which erasures it has had."""
    con.execute(REGISTER_DDL)
    for erasure_id, recorded_at in sorted(applied):
        _unregister(con, erasure_id, recorded_at)
        con.execute(
            "insert into meta.erasures_applied values (?, ?, ?)",
            [erasure_id, recorded_at, datetime.now(UTC)],
        )


def lost_erasures(con: duckdb.DuckDBPyConnection, engine: Engine) -> list[tuple[int, str]]:
    """Erasures this warehouse has had that the operational store no longer holds, as
    ``(id, recorded_at)``: that store was restored from a backup taken before them (or
    replaced), so their tombstones are gone and the next delivery would bring the erased
    records back. Ids alone could match a later erasure given the same number."""
    if not table_exists(con, "meta", "erasures_applied"):
        return []
    applied = {
        (int(i), at)
        for i, at in con.execute(
            "select erasure_id, recorded_at from meta.erasures_applied"
        ).fetchall()
    }
    if not applied:
        return []
    held = (
        _registered(engine, {i for i, _ in applied})
        if holds_table(engine, erasures.name)
        else set()
    )
    return sorted(applied - held)


def check_register(con: duckdb.DuckDBPyConnection, engine: Engine) -> None:
    """Refuse (:class:`ErasureError`) while the operational store has lost an erasure this
    warehouse had; loads call this before reading a delivery."""
    lost = lost_erasures(con, engine)
    if not lost:
        return
    named = ", ".join(f"#{i} (recorded {at})" for i, at in lost)
    raise ErasureError(
        f"the operational store no longer holds erasure {named}, which this warehouse has "
        "had: it was restored from a backup taken before, or replaced, and the tombstones "
        "are gone, so a delivery would bring the erased records back. Restore the "
        "operational store from a newer backup. If there is none: `sdv erasures "
        "--forget-lost ID --reason TEXT` lets loads resume, and the person must be erased "
        "again once their records are back."
    )


def forget_lost(
    con: duckdb.DuckDBPyConnection, engine: Engine, erasure_id: int, *, reason: str, by: str
) -> list[tuple[int, str]]:
    """Take a lost erasure off the warehouse's register so loads resume (the DPO's decision,
    recorded in the audit trail with ``reason``); returns what went. Refuses one not lost.
    Two stores restored in turn can each have lost an erasure numbered ``erasure_id``:
    both go."""
    _accountable(reason=reason, by=by)
    lost = [entry for entry in lost_erasures(con, engine) if entry[0] == erasure_id]
    if not lost:
        raise ErasureError(f"erasure #{erasure_id} is not lost: nothing to forget")
    for _, recorded_at in lost:
        audit.record_rights_action(  # first: a decision taken is never missing from the trail
            engine,
            by=by,
            action="erasure_forgotten",
            person_ids=[],
            detail={"reason": reason, "erasure_id": erasure_id, "recorded_at": recorded_at},
        )
        _unregister(con, erasure_id, recorded_at)
    return lost


# --- the operational store ------------------------------------------------------------------


# The tables :func:`purge_operational` reaches, as its counts name them.
OPERATIONAL_TABLES = (
    "review_pairs",
    "review_decisions",
    "person_split_records",
    "person_splits",
    "restrictions",
    "rectifications",
)


def purge_operational(
    conn: Connection,
    record_ids: Collection[str],
    person_ids: Collection[str],
    erased_by: str | None,
    erasure_ids: Collection[int] = (),
) -> dict[str, int]:
    """Rows of the operational store about ``record_ids`` go, for erasure and retention
    alike. Rows changed per ``operational:<table>`` (tables with none left out).

    Review items and decisions naming any of the records go (the record JSON holds names);
    a reviewer's split loses the records, and goes once it has none (or was of one of
    ``person_ids``). Rectifications and restrictions hold values and ids of the records they
    were recorded against: the records are struck from them, and one left naming none is
    about nobody any more. A rectification so emptied goes (the audit keeps that it was
    made, with field and reason, never values). A restriction so emptied is an erasure's
    business when ``erased_by`` names who recorded it: who restricted, when and why stay
    for accountability, lifted by them, but the person id goes (the erasure's row keeps it;
    ``erasure_ids`` are named in the lift reason to find it). Retention passes None: such
    a restriction is past its period with its records, and goes.
    """
    ids = sorted(set(record_ids))
    counts: dict[str, int] = {}
    pairs = review.review_pairs
    decisions = review.review_decisions
    named = sa.or_(decisions.c.record_id_l.in_(ids), decisions.c.record_id_r.in_(ids))
    counts["review_decisions"] = conn.execute(decisions.delete().where(named)).rowcount
    pair_named = sa.or_(pairs.c.record_id_l.in_(ids), pairs.c.record_id_r.in_(ids))
    pair_ids = [p for (p,) in conn.execute(sa.select(pairs.c.pair_id).where(pair_named))]
    if pair_ids:  # a decision on the pair keyed the other way round still names it
        counts["review_decisions"] += conn.execute(
            decisions.delete().where(decisions.c.pair_id.in_(pair_ids))
        ).rowcount
    counts["review_pairs"] = conn.execute(pairs.delete().where(pair_named)).rowcount
    split_records = review.person_split_records
    counts["person_split_records"] = conn.execute(
        split_records.delete().where(split_records.c.record_id.in_(ids))
    ).rowcount
    splits = review.person_splits
    emptied = sa.or_(
        splits.c.person_id.in_(sorted(person_ids)),
        ~sa.exists().where(split_records.c.split_id == splits.c.id),
    )
    doomed = [s for (s,) in conn.execute(sa.select(splits.c.id).where(emptied))]
    if doomed:
        conn.execute(split_records.delete().where(split_records.c.split_id.in_(doomed)))
        counts["person_splits"] = conn.execute(
            splits.delete().where(splits.c.id.in_(doomed))
        ).rowcount
    counts["restrictions"] = _purge_restrictions(conn, set(ids), erased_by, erasure_ids)
    counts["rectifications"] = _purge_rectifications(conn, set(ids))
    return {f"operational:{t}": n for t, n in counts.items() if n}


def _struck(record_ids_json: str, record_ids: set[str]) -> list[str] | None:
    """The JSON list's records but ``record_ids``; None when it names none of them."""
    records = json.loads(record_ids_json)
    left = [r for r in records if r not in record_ids]
    return None if len(left) == len(records) else left


def _purge_restrictions(
    conn: Connection, record_ids: set[str], erased_by: str | None, erasure_ids: Collection[int]
) -> int:
    changed = 0
    for row in conn.execute(sa.select(restrictions)).all():
        left = _struck(row.record_ids, record_ids)
        if left is None:
            continue
        changed += 1
        mine = restrictions.c.id == row.id
        if not left and erased_by is None:
            conn.execute(restrictions.delete().where(mine))
            continue
        values: dict = {"record_ids": json.dumps(left)}
        if not left:
            values["person_id"] = ""  # nobody left to name: the erasure's row names them
            if row.lifted_at is None:
                named = ", ".join(f"#{i}" for i in sorted(erasure_ids))
                values |= {
                    "lifted_at": datetime.now(UTC),
                    "lifted_by": erased_by,
                    "lift_reason": "the restricted records were erased"
                    + (f" (erasure {named})" if named else ""),
                }
        conn.execute(restrictions.update().where(mine).values(**values))
    return changed


def _purge_rectifications(conn: Connection, record_ids: set[str]) -> int:
    """Active and lapsed alike: a lapsed one still holds the values it corrected."""
    changed = 0
    for row in conn.execute(sa.select(rectifications.c.id, rectifications.c.record_ids)).all():
        left = _struck(row.record_ids, record_ids)
        if left is None:
            continue
        changed += 1
        mine = rectifications.c.id == row.id
        if left:  # still the correction of the person holding the rest
            conn.execute(rectifications.update().where(mine).values(record_ids=json.dumps(left)))
        else:
            conn.execute(rectifications.delete().where(mine))
    return changed


# --- the request ----------------------------------------------------------------------------


def _accountable(**values: str) -> None:
    missing = [name.replace("_", " ") for name, value in values.items() if not value.strip()]
    if missing:
        raise ErasureError(f"an erasure needs {', '.join(missing)}: say who and why")


def erase(
    *,
    person_id: str,
    reason: str,
    upheld_by: str,
    recorded_by: str,
    warehouse: Path,
    store: SnapshotStore,
    engine: Engine,
    sources: Mapping[str, Source],
    key: bytes,
    landing: Path | None = None,
) -> ErasureReport:
    """Erase the person ``person_id`` everywhere (module docstring); returns the counts.

    ``key`` is the partnership's pseudonymisation key (``load_key(data_dir)``): it makes the
    tombstones and finds the person in the analysts' files. ``landing``: the landing zone
    whose delivery folders go too (counted as ``<landing>:<source>/<date>``: files).
    """
    _accountable(person_id=person_id, reason=reason, upheld_by=upheld_by, recorded_by=recorded_by)
    ensure_schema(engine)
    con = _writer(warehouse)
    try:
        record_ids = _published_records(store, person_id) | _linked_records(con, person_id)
        if not record_ids:
            raise ErasureError(f"no records found for person {person_id}")
        record_ids |= retired.records_of(con, sources, person_id, record_ids)
        targets = purge.erasure_targets(con, sources, record_ids)
        purged = record_ids | purge.target_records(con, sources, targets)
        people = _people_losing_everything(con, [person_id], purged)
        erasure_id = _record(engine, person_id, reason, upheld_by, recorded_by, purged, key)
        counts = _purge_landing(con, landing, sources, purged, f"erasure-{erasure_id}")
        applied = _registered(engine, [erasure_id])
        counts |= _purge_warehouse(con, Path(warehouse), targets, purged, people, applied)
        counts |= purge.purge_published(store.root, purged, key)
    finally:
        con.close()
    with engine.begin() as conn:
        counts |= purge_operational(conn, purged, people, recorded_by, [erasure_id])
        conn.execute(
            erasures.update()
            .where(erasures.c.id == erasure_id)
            .values(completed_at=datetime.now(UTC), counts=json.dumps(counts, sort_keys=True))
        )
    audit.record_rights_action(
        engine,
        by=recorded_by,
        action="erase",
        person_ids=[person_id],
        detail={"reason": reason, "counts": counts},
    )
    return ErasureReport(erasure_id, person_id, len(purged), counts)


def _purge_landing(
    con: duckdb.DuckDBPyConnection,
    landing: Path | None,
    sources: Mapping[str, Source],
    records: set[str],
    run_id: str,
) -> dict[str, int]:
    """Remove the dealt-with delivery folders of every source holding one of ``records``
    (ids are ``source|table|local_key``), recorded in ``meta.landing_purges`` as ``run_id``."""
    if landing is None:
        return {}
    holding = {record.split("|", 1)[0] for record in records}
    folders = landing_retention.recorded(
        con, landing, {name: source for name, source in sources.items() if name in holding}
    )
    landing_retention.destroy(con, run_id, folders)
    return {f"{landing}:{f.delivery.source}/{f.delivery.extract_date}": f.files for f in folders}


def _purge_warehouse(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    targets: Mapping[purge.Relation, list[int]],
    records: set[str],
    people: set[str],
    applied: set[tuple[int, str]],
) -> dict[str, int]:
    con.execute("begin transaction")
    try:
        counts = purge.purge_ingest(con, targets)
        counts |= purge.purge_linked(con, records, people)
        _register(con, applied)
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    purge.rewrite_database(con, path)
    return counts


# --- after a restore ------------------------------------------------------------------------

REAPPLY_ACTION = "erase_reapplied"


@dataclass(frozen=True)
class Reapplied:
    """Erased records found again (a warehouse or published folder restored from a backup
    taken before their erasure) and what destroying them again removed."""

    records: int = 0  # erased records found again, by their tombstones
    erasure_ids: tuple[int, ...] = ()  # the erasures those records belong to
    counts: dict[str, int] = field(default_factory=dict)  # rows removed; empty in a dry run


def _held_record_ids(con: duckdb.DuckDBPyConnection, sources: Mapping[str, Source]) -> set[str]:
    """Every person-level record id the ingest layers and ``linked`` hold, as their rows
    give it (raw as delivered, staged normalised: an erasure tombstoned both forms)."""
    held: set[str] = set()
    for relation in relations(con, dict(sources)):
        spec = sources[relation.source].tables[relation.table]
        if not spec.person_level or not spec.local_key:
            continue
        rows = con.sql(
            f"select distinct '{relation.source}|{relation.table}|' || "
            f"{key_sql(list(spec.local_key), 't', spec)} from {relation.name} t"
        ).fetchall()
        held.update(r for (r,) in rows if r is not None)
    if table_exists(con, "linked", "person_records"):
        rows = con.sql("select distinct record_id from linked.person_records").fetchall()
        held.update(r for (r,) in rows)
    return held


def _published_record_ids(published_dir: Path) -> set[str]:
    """Record ids in every kept snapshot. The analysts' files name people by keyed hash
    only; :func:`warehouse.purge.purge_published` purges each with its snapshot."""
    held: set[str] = set()
    for path in snapshot_files(published_dir):
        con = duckdb.connect(str(path), read_only=True)
        try:
            if table_exists(con, "main", "person_records"):
                rows = con.sql("select distinct record_id from person_records").fetchall()
                held.update(r for (r,) in rows)
        finally:
            con.close()
    return held


def _found_again(engine: Engine, key: bytes, held: set[str]) -> dict[str, int]:
    """The ``held`` record ids that carry a tombstone, each with its erasure's id."""
    stones = tombstones(engine, key)  # refuses tombstones made under another key
    by_hash = {record_hash(record, key): record for record in held}
    wanted = sorted(by_hash.keys() & stones.hashes)
    if not wanted:
        return {}
    t = erasure_tombstones
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.c.record_hash, t.c.erasure_id).where(t.c.record_hash.in_(wanted))
        )
        return {by_hash[h]: int(e) for h, e in rows}


def _erased_people(engine: Engine, erasure_ids: Iterable[int]) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(erasures.c.person_id).where(erasures.c.id.in_(sorted(erasure_ids)))
        )
        return {p for (p,) in rows}


def reapply(
    *,
    warehouse: Path,
    published_dir: Path,
    engine: Engine,
    sources: Mapping[str, Source],
    key: bytes,
    landing: Path | None,
    actor: tuple[str, str],
    dry_run: bool = False,
) -> Reapplied:
    """Destroy again every erased record that is back in the warehouse or a kept snapshot.

    Tombstones live in the operational store, so a warehouse or published folder restored
    from a backup taken before an erasure brings the person back, and the next linkage and
    publish would show them again. This finds such records by their tombstones (every
    person-level record id held, hashed under ``key``) and destroys them as :func:`erase`
    did: the same purges in the same order, landing folders and operational rows included,
    under the same erasures (no new one is recorded). One audit event as ``actor`` (user
    id, role), action ``erase_reapplied``, names the erasures and the people they erased,
    with counts only. The nightly retention run calls this first, before anything is
    linked or published (:func:`warehouse.retention.enforce`). A dry run only counts.

    What this cannot mend: an operational store restored from before an erasure has lost
    its tombstones; keep that store's backups at least as recent as the warehouse's.
    """
    if not any_tombstones(engine):
        return Reapplied()
    con = _writer(warehouse, read_only=dry_run)
    try:
        held = _held_record_ids(con, sources) | _published_record_ids(published_dir)
        found = _found_again(engine, key, held)
        ids = tuple(sorted(set(found.values())))
        if not found or dry_run:
            return Reapplied(len(found), ids)
        named = _erased_people(engine, ids)
        targets = purge.erasure_targets(con, sources, found)
        purged = set(found) | purge.target_records(con, sources, targets)
        people = _people_losing_everything(con, named, purged)
        run_id = f"erasure-{'-'.join(map(str, ids))}-again"
        counts = _purge_landing(con, landing, sources, purged, run_id)
        applied = _registered(engine, ids)
        counts |= _purge_warehouse(con, Path(warehouse), targets, purged, people, applied)
        counts |= purge.purge_published(published_dir, purged, key)
    finally:
        con.close()
    user_id, role = actor
    with engine.begin() as conn:
        counts |= purge_operational(conn, purged, people, user_id, ids)
    audit.append(
        engine,
        audit.AuditEvent(
            user_id=user_id,
            role=role,
            purpose=audit.RIGHTS_PURPOSE,
            action=REAPPLY_ACTION,
            outcome="allowed",
            person_ids=tuple(sorted(named)),
            detail={
                "reason": "erased records found again (restored from a backup taken before "
                "their erasure?)",
                "erasures": list(ids),
                "records": len(found),
                "counts": counts,
            },
        ),
    )
    return Reapplied(len(found), ids, counts)
