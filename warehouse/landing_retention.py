"""Retention of the landing zone: a delivery folder goes once its outcome has been kept
for the source's ``landing_keep_days``.

Agencies drop deliveries into the landing zone, and nothing else ever removes them: every
file there is a full copy of a source's records, outside what retention and erasure reach
in the warehouse. Once a delivery is loaded the warehouse holds every record as delivered
(``raw``, with file, row number and checksum), so the folder is only needed to re-run a
load; once a delivery is rejected the agency has been told and must send it again. So a
folder is destroyed ``landing_keep_days`` after its outcome was recorded in
``meta.deliveries``, and each destruction is recorded in ``meta.landing_purges`` (source,
extract date, outcome, files, bytes, when: no content, so the proof does not hold what was
destroyed).

A folder is destroyed only when the recorded outcome is about the files now in it:

* **loaded** (or **replaced** by a later delivery for the same date): the folder's
  fingerprint (names, sizes, mtimes) is the one recorded when it was loaded
  (:func:`warehouse.store.loaded_folders`). A folder re-sent since is not loaded yet, and
  stays.
* **rejected**: no file in it changed after the rejection was recorded. An agency mending
  a delivery in place gets its new files loaded (or rejected) first.

A folder with no recorded outcome (not yet loaded) is never touched, and neither is
anything in the landing zone that is not a configured source's dated delivery folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from warehouse.landing import Delivery, delivery_fingerprint, discover
from warehouse.sources import Source
from warehouse.store import FINGERPRINT

PURGES_DDL = """
CREATE SCHEMA IF NOT EXISTS meta;
CREATE TABLE IF NOT EXISTS meta.landing_purges (
    run_id VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    extract_date DATE NOT NULL,
    outcome VARCHAR NOT NULL,          -- loaded | replaced | rejected
    outcome_recorded_at TIMESTAMP NOT NULL,
    files BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    purged_at TIMESTAMP NOT NULL
);
"""


@dataclass(frozen=True)
class LandingFolder:
    """A delivery folder whose outcome is recorded: the warehouse has dealt with it."""

    delivery: Delivery
    outcome: str
    outcome_recorded_at: datetime
    files: int
    bytes: int


def _outcome(
    delivery: Delivery, attempts: list[tuple[str, datetime, str | None]]
) -> tuple[str, datetime] | None:
    """The recorded outcome the folder's present files are the subject of, if any.

    ``attempts``: (status, recorded_at, folder fingerprint) for the folder's source and
    date, newest first.
    """
    fingerprint = delivery_fingerprint(delivery)
    for status, recorded_at, recorded in attempts:
        if status in ("loaded", "replaced") and recorded == fingerprint:
            return status, recorded_at
    newest = next(iter(attempts), None)
    if newest is None or newest[0] != "rejected":
        return None
    changed = max(
        (p.stat().st_mtime for p in delivery.folder.iterdir() if p.is_file()), default=0.0
    )
    rejected_at = newest[1].replace(tzinfo=UTC).timestamp()
    return ("rejected", newest[1]) if changed <= rejected_at else None


def recorded(
    con: duckdb.DuckDBPyConnection, landing: Path, sources: Mapping[str, Source]
) -> list[LandingFolder]:
    """Every delivery folder of ``sources`` whose present files have a recorded outcome
    (see the module docstring), whatever its age: what an erasure removes at once."""
    rows = con.execute(
        f"SELECT source, extract_date, status, recorded_at, {FINGERPRINT} "
        "FROM meta.deliveries ORDER BY recorded_at DESC"
    ).fetchall()
    attempts: dict[tuple[str, date], list[tuple[str, datetime, str | None]]] = {}
    for source, day, status, recorded_at, fingerprint in rows:
        attempts.setdefault((source, day), []).append((status, recorded_at, fingerprint))
    found: list[LandingFolder] = []
    for delivery in discover(landing, dict(sources)):
        outcome = _outcome(delivery, attempts.get((delivery.source, delivery.extract_date), []))
        if outcome is None:
            continue
        files = [p for p in delivery.folder.rglob("*") if p.is_file()]
        found.append(
            LandingFolder(delivery, *outcome, len(files), sum(p.stat().st_size for p in files))
        )
    return found


def expired(
    con: duckdb.DuckDBPyConnection,
    landing: Path,
    sources: Mapping[str, Source],
    as_of: date,
) -> list[LandingFolder]:
    """The delivery folders to destroy as of ``as_of``: outcome recorded on or before
    ``as_of`` minus the source's ``landing_keep_days``."""
    return [
        folder
        for folder in recorded(con, landing, sources)
        if folder.outcome_recorded_at.date()
        + timedelta(days=sources[folder.delivery.source].landing_keep_days)
        <= as_of
    ]


_DOOMED = ".purging-"  # a folder being removed; not a date, so never read as a delivery


def destroy(con: duckdb.DuckDBPyConnection, run_id: str, folders: list[LandingFolder]) -> None:
    """Remove each folder and record it, one at a time.

    A folder is first renamed out of the landing zone's view (one atomic step), then
    recorded, then deleted: a run killed half way through a deletion leaves a hidden
    ``.purging-`` folder, never a half-deleted delivery that would look changed (and be
    loaded, then rejected). Such leftovers beside the folders a run removes go with them.
    """
    con.execute(PURGES_DDL)
    for parent in {folder.delivery.folder.parent for folder in folders}:
        for leftover in parent.glob(f"{_DOOMED}*"):
            shutil.rmtree(leftover)
    for folder in folders:
        path = folder.delivery.folder
        doomed = path.with_name(f"{_DOOMED}{path.name}-{run_id}")
        path.rename(doomed)
        con.execute(
            "INSERT INTO meta.landing_purges VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                folder.delivery.source,
                folder.delivery.extract_date,
                folder.outcome,
                folder.outcome_recorded_at,
                folder.files,
                folder.bytes,
                datetime.now(UTC).replace(tzinfo=None),
            ],
        )
        shutil.rmtree(doomed)


def run(
    con: duckdb.DuckDBPyConnection,
    landing: Path,
    sources: Mapping[str, Source],
    as_of: date,
    run_id: str | None,
) -> list[LandingFolder]:
    """The folders past their keep period as of ``as_of``, destroyed under ``run_id``
    (the retention run's), or only listed when there is none (a dry run)."""
    folders = expired(con, landing, sources, as_of)
    if run_id is not None:
        destroy(con, run_id, folders)
    return folders


def per_source(folders: list[LandingFolder]) -> dict[str, dict[str, int]]:
    """``{source: {"folders": n, "files": n, "bytes": n}}`` for metadata and the audit."""
    totals: dict[str, dict[str, int]] = {}
    for folder in folders:
        entry = totals.setdefault(folder.delivery.source, {"folders": 0, "files": 0, "bytes": 0})
        entry["folders"] += 1
        entry["files"] += folder.files
        entry["bytes"] += folder.bytes
    return dict(sorted(totals.items()))
