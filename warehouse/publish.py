"""Published snapshots of the Family View: build aside, check, then switch atomically.

Each nightly run writes the curated tables into a *new* DuckDB file under
``<published>/snapshots/``; nothing reads it until its checks pass and :meth:`publish`
replaces the pointer file ``CURRENT.json`` with one naming it (``os.replace``, atomic on
POSIX and Windows). Readers resolve the pointer when they open a connection and read an
immutable file, so a reader never sees a half-built warehouse, never blocks the writer, and
keeps the snapshot it opened for as long as it holds it (a pruned file stays readable to an
open connection on POSIX).

The last ``keep`` published snapshots stay on disk; ``rollback`` points readers back at the
previous one. Every publish and rollback is appended to ``history.jsonl``. Analysts' file
(pseudonymised, see :mod:`warehouse.pseudonymise`) is published with its snapshot and is
also reachable at the stable path ``analyst.duckdb`` (a symlink switched the same way).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from warehouse import file_modes
from warehouse.curated_config import Publishing
from warehouse.curated_schema import TABLES
from warehouse.file_modes import ANALYST_PREFIX
from warehouse.serving import SUFFIX as SERVING_SUFFIX
from warehouse.serving import serving_path, write_serving_from
from warehouse.store import table_exists

POINTER = "CURRENT.json"
HISTORY = "history.jsonl"
ANALYST_LINK = "analyst.duckdb"
SNAPSHOT_TABLE = "snapshot_info"
# The snapshot_info key holding the curation configuration a snapshot was built under
# (``CuratedConfig.model_dump``): retention traces what it made of destroyed rows with the
# snapshot's own queries (warehouse.derived).
CURATED_CONFIG = "curated_config"
# The suffix a purge's rewrite adds to a published file's name (warehouse.purge).
_RENAMED = re.compile(r"\.e[0-9a-f]{6}$")
# Readers cannot read files, install extensions or change that: the access layer hands
# out cursors on these connections, so SQL reaching them can touch nothing but the snapshot.
READER_CONFIG = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "lock_configuration": True,
}


class PublishError(RuntimeError):
    """Nothing to publish or roll back to, or a snapshot is missing or unfinished."""


@dataclass(frozen=True)
class Published:
    snapshot: str  # file name under snapshots/
    analyst: str | None
    as_of: str
    published_at: str
    action: str = "publish"  # or "rollback"
    checks: dict[str, Any] = field(default_factory=dict)


_ID_TIME = "%Y%m%dT%H%M%S%f"  # a snapshot id's build time (UTC, to the microsecond)


def built_at(snapshot: str) -> datetime | None:
    """When a snapshot's build started, from its file name (:func:`new_snapshot_id`; a
    purge's rewrite keeps it), or None for a name that does not carry it."""
    found = re.search(r"(\d{8}T\d{12})Z", snapshot)
    if found is None:
        return None
    return datetime.strptime(found.group(1), _ID_TIME).replace(tzinfo=UTC)


def file_stem(name: str) -> str:
    """A published file's name without ``.duckdb`` and the suffix a purge's rewrite adds:
    the same for every version of one file, so something said of a file survives its
    rewrite by a purge (an erasure's, meanwhile)."""
    return _RENAMED.sub("", name.removesuffix(".duckdb"))


def new_snapshot_id() -> str:
    """Sortable and unique: UTC time to the microsecond plus a random suffix."""
    return datetime.now(UTC).strftime(_ID_TIME) + "Z-" + secrets.token_hex(3)


def _comment(value: str) -> str:
    return value.replace("'", "''")


Comments = dict[str, tuple[str, dict[str, str]]]  # table -> (description, column -> text)


def curated_comments() -> Comments:
    return {
        name: (table.description, {c.name: f"[{c.kind}] {c.description}" for c in table.columns})
        for name, table in TABLES.items()
    }


def write_tables(
    path: Path, tables: dict[str, pl.DataFrame], info: dict[str, Any], comments: Comments
) -> None:
    """Write ``tables`` into a new DuckDB file at ``path`` with catalog comments.

    The file is written under a temporary name and renamed when complete, so a crash
    leaves a ``.building`` file that is never mistaken for a snapshot.
    """
    building = path.with_name(path.name + ".building")
    building.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(building))
    file_modes.restrict(building)  # before a row is in it
    try:
        for name, frame in tables.items():
            con.register("_frame", frame.to_arrow())
            con.execute(f'create table "{name}" as select * from _frame')
            con.unregister("_frame")
            # No indexes: the API reads the SQLite serving copy (warehouse.serving), which
            # has them. What reads one person here (subject access, erasure, rectification)
            # is run by hand and takes ~20 ms a person without; indexes cost every night
            # about 1-2 s and tripled the file (55 to 165 MiB) at 100,000 households.
            description, columns = comments.get(name, ("", {}))
            con.execute(f"comment on table \"{name}\" is '{_comment(description)}'")
            for column, text in columns.items():
                con.execute(f'comment on column "{name}"."{column}" is \'{_comment(text)}\'')
        con.execute(f"create table {SNAPSHOT_TABLE} (key varchar primary key, value varchar)")
        con.executemany(
            f"insert into {SNAPSHOT_TABLE} values (?, ?)",
            [[k, json.dumps(v, default=str)] for k, v in info.items()],
        )
        con.execute("checkpoint")
    finally:
        con.close()
    os.replace(building, path)


def snapshot_files(published_dir: Path) -> list[Path]:
    """Every snapshot file under ``published_dir`` (published or not), oldest first by
    name; not the analysts' files, which follow their snapshot."""
    folder = Path(published_dir) / "snapshots"
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.glob("*.duckdb") if p.is_file() and not p.name.startswith(ANALYST_PREFIX)
    )


def snapshot_info(con: duckdb.DuckDBPyConnection, key: str) -> Any:
    """One value of a published file's ``snapshot_info`` (JSON-decoded), or None when the
    file has no such table or key (a file written before the key was)."""
    if not table_exists(con, "main", SNAPSHOT_TABLE):
        return None
    rows = con.execute(f"select value from {SNAPSHOT_TABLE} where key = ?", [key]).fetchall()
    return json.loads(rows[0][0]) if rows else None


def open_snapshot(path: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a published file with external access disabled."""
    if not path.exists():
        raise PublishError(f"snapshot {path} does not exist")
    return duckdb.connect(str(path), read_only=True, config=dict(READER_CONFIG))


def person_record_ids(con: duckdb.DuckDBPyConnection, person_id: str) -> list[str]:
    """The source records (``source|table|local_key``) a snapshot resolves to
    ``person_id``: what subject-rights actions hold on to, since ids change and records
    do not."""
    rows = con.execute(
        "select record_id from person_records where person_id = ? order by record_id",
        [person_id],
    ).fetchall()
    return [r for (r,) in rows]


class SnapshotStore:
    """The published folder: snapshots, the pointer readers follow, and the history."""

    def __init__(self, root: Path, keep: int = 3, analysts_group_read: bool = False) -> None:
        if keep < 2:
            raise ValueError("keep at least 2 snapshots, so there is one to roll back to")
        self.root = Path(root)
        self.keep = keep
        self.analysts_group_read = analysts_group_read
        self.snapshots = self.root / "snapshots"

    @classmethod
    def configured(cls, root: Path, publishing: Publishing) -> SnapshotStore:
        """The store at ``root`` as the curation config's ``publishing`` section sets it:
        how many snapshots are kept, and who may open the analysts' file."""
        return cls(root, keep=publishing.keep, analysts_group_read=publishing.analysts_group_read)

    def path(self, name: str) -> Path:
        return self.snapshots / name

    def new_paths(self, snapshot_id: str) -> tuple[Path, Path]:
        """Where a new snapshot and its analyst file are built."""
        return (
            self.path(f"family-view-{snapshot_id}.duckdb"),
            self.path(f"{ANALYST_PREFIX}{snapshot_id}.duckdb"),
        )

    # -- reading the pointer --------------------------------------------------------------

    def current(self) -> Published | None:
        try:
            data = json.loads((self.root / POINTER).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return Published(**data)

    def current_path(self) -> Path:
        current = self.current()
        if current is None:
            raise PublishError(f"nothing published yet under {self.root}")
        return self.path(current.snapshot)

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection to the current snapshot, closed afterwards."""
        con = open_snapshot(self.current_path())
        try:
            yield con
        finally:
            con.close()

    def history(self) -> list[Published]:
        try:
            lines = (self.root / HISTORY).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [Published(**json.loads(line)) for line in lines if line.strip()]

    # -- switching ------------------------------------------------------------------------

    def _switch(self, entry: Published) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".{POINTER}.{os.getpid()}.tmp"
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(asdict(entry), handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.root / POINTER)
        if entry.analyst:
            link = self.root / f".{ANALYST_LINK}.{os.getpid()}.tmp"
            link.unlink(missing_ok=True)
            link.symlink_to(Path("snapshots") / entry.analyst)
            os.replace(link, self.root / ANALYST_LINK)
        with (self.root / HISTORY).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(entry), sort_keys=True) + "\n")

    def publish(
        self,
        snapshot: Path,
        analyst: Path | None,
        as_of: date,
        checks: dict[str, Any] | None = None,
    ) -> Published:
        """Point readers at ``snapshot`` (already built and checked), then prune."""
        for path in (snapshot, analyst):
            if path is not None and (not path.exists() or path.parent != self.snapshots):
                raise PublishError(f"{path} is not a finished snapshot in {self.snapshots}")
        entry = Published(
            snapshot=snapshot.name,
            analyst=analyst.name if analyst else None,
            as_of=as_of.isoformat(),
            published_at=datetime.now(UTC).isoformat(),
            checks=checks or {},
        )
        file_modes.settle(self.snapshots, self.analysts_group_read)
        self._switch(entry)
        self.prune()
        return entry

    def rollback(self) -> Published:
        """Point readers at the snapshot published before the current one."""
        current = self.current()
        if current is None:
            raise PublishError("nothing published yet: nothing to roll back")
        for entry in reversed(self.history()):
            if entry.snapshot != current.snapshot and self.path(entry.snapshot).exists():
                if not serving_path(self.path(entry.snapshot)).exists():  # published before
                    write_serving_from(self.path(entry.snapshot))  # serving copies existed
                back = Published(
                    snapshot=entry.snapshot,
                    analyst=entry.analyst,
                    as_of=entry.as_of,
                    published_at=datetime.now(UTC).isoformat(),
                    action="rollback",
                    checks=entry.checks,
                )
                file_modes.settle(self.snapshots, self.analysts_group_read)
                self._switch(back)
                return back
        raise PublishError("no earlier snapshot is kept to roll back to")

    def kept(self) -> list[str]:
        """Snapshot files kept: the ``keep`` most recently published, current first."""
        names: list[str] = []
        current = self.current()
        if current is not None:
            names.append(current.snapshot)
        for entry in reversed(self.history()):
            if entry.snapshot not in names:
                names.append(entry.snapshot)
        return names[: self.keep]

    def prune(self) -> list[Path]:
        """Delete snapshots (and their analyst files) beyond the ``keep`` most recent, and
        leftovers of builds that never finished."""
        kept = set(self.kept())
        keep_analyst = {
            e.analyst for e in self.history() if e.snapshot in kept and e.analyst is not None
        }
        removed = []
        if not self.snapshots.exists():
            return removed
        for path in sorted(self.snapshots.iterdir()):
            unfinished = path.name.endswith(".building")
            # A serving copy goes with its snapshot (warehouse.serving).
            name = path.name
            if name.endswith(SERVING_SUFFIX):
                name = name.removesuffix(SERVING_SUFFIX) + ".duckdb"
            old_snapshot = name.startswith("family-view-") and name not in kept
            old_analyst = path.name.startswith(ANALYST_PREFIX) and path.name not in keep_analyst
            if unfinished or old_snapshot or old_analyst:
                path.unlink()
                removed.append(path)
        return removed

    def unpublished(self) -> list[Path]:
        """Built snapshot files never published (e.g. their checks failed)."""
        published = {e.snapshot for e in self.history()}
        if not self.snapshots.exists():
            return []
        return [
            p
            for p in sorted(self.snapshots.glob("family-view-*.duckdb"))
            if p.name not in published
        ]
