"""The landing zone: where agencies drop deliveries, and how we decide one is whole.

Layout (``extract-spec.md``): ``<landing>/<source>/<YYYY-MM-DD>/<table>.csv`` plus an
optional ``manifest.json``. A delivery is a full snapshot of one source on one date.

Two questions are answered here, without touching the warehouse:

* *Is it complete?* The sensor must never start a run on a half-written delivery. With a
  manifest, every listed file must exist with its stated checksum; without one, every
  table the source config expects must exist and the folder must have been quiet for the
  source's ``settle_seconds``.
* *Is it consistent?* Before anything is loaded the manifest is checked against the files
  (row counts and sha256). A mismatch rejects the whole delivery with an error naming the
  file and what differs. A delivery dated after today is rejected too
  (:func:`check_not_future`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from warehouse.sources import Source

_DATE_DIR_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MANIFEST = "manifest.json"


class DeliveryError(Exception):
    """A delivery (or one of its files) cannot be loaded; nothing of it was written."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class DeliveryGone(DeliveryError):
    """The delivery's folder is not in the landing zone: never there, or destroyed by
    landing retention after it was dealt with. Nothing was delivered to reject, so unlike
    other delivery errors it is not recorded as a rejection."""


@dataclass(frozen=True)
class Delivery:
    source: str
    extract_date: date
    folder: Path

    @property
    def partition_key(self) -> str:
        return self.extract_date.isoformat()

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST


@dataclass(frozen=True)
class Manifest:
    source: str
    extract_date: date
    files: dict[str, tuple[int, str]]  # file name -> (rows, sha256)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in blocks so a large extract never sits in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def landing_missing(landing: Path) -> str | None:
    """Why nothing can be found under ``landing`` when it is not a folder, else None.

    :func:`discover` finds nothing in a landing zone that is not there, just as in an
    empty one; an unmounted share or a mistyped path must not pass for a night with no
    deliveries, so `sdv load`, the sensor and the schedules all say this instead.
    """
    if landing.is_dir():
        return None
    return f"the landing zone {landing} is not there (is the share mounted, the path right?)"


def discover(landing: Path, sources: dict[str, Source]) -> list[Delivery]:
    """Every dated delivery folder for the configured file-based sources, oldest first.

    Folders that are not ``YYYY-MM-DD`` or not a real date are ignored: agencies leave
    ``tmp`` or ``archive`` folders around.
    """
    found: list[Delivery] = []
    for name in sorted(sources):
        base = landing / name
        if not base.is_dir():
            continue
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            if not _DATE_DIR_RE.match(folder.name):
                continue
            try:
                day = date.fromisoformat(folder.name)
            except ValueError:
                continue
            found.append(Delivery(name, day, folder))
    return sorted(found, key=lambda d: (d.extract_date, d.source))


def check_not_future(delivery: Delivery, today: date | None = None) -> None:
    """Reject a delivery whose extract date (its folder name) is after today.

    "Today" is the loading machine's local date: agencies date extracts by their own
    (UK) calendar, so the loader runs on that calendar too. A manifest cannot vouch for a
    future date, since :func:`read_manifest` already requires its date to equal the
    folder's. A future date is a mistyped folder or a wrong clock at the agency, and it is
    harmful: ``current`` is the newest delivery, so a delivery dated 2062 would stay current
    over every real one until then.
    """
    today = date.today() if today is None else today
    if delivery.extract_date > today:
        raise DeliveryError(
            delivery.folder,
            f"extract date {delivery.extract_date} is in the future (today is {today}): a "
            "mistyped folder name or a wrong clock at the agency; nothing loaded",
        )


def read_manifest(delivery: Delivery) -> Manifest | None:
    """The delivery's manifest, or None when it has none; malformed manifests are errors."""
    path = delivery.manifest_path
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        files = {
            str(name): (int(entry["rows"]), str(entry["sha256"]).lower())
            for name, entry in data["files"].items()
        }
        manifest = Manifest(str(data["source"]), date.fromisoformat(data["extract_date"]), files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DeliveryError(path, f"manifest is not readable as the spec's format: {exc}") from exc
    if manifest.source != delivery.source:
        raise DeliveryError(
            path, f"manifest source {manifest.source!r} does not match folder {delivery.source!r}"
        )
    if manifest.extract_date != delivery.extract_date:
        raise DeliveryError(
            path,
            f"manifest extract_date {manifest.extract_date} does not match folder "
            f"{delivery.extract_date}",
        )
    return manifest


def is_complete(delivery: Delivery, source: Source, now: float | None = None) -> bool:
    """Whether the delivery looks fully written (see module docstring). Never raises.

    A delivery whose manifest disagrees with its files after the settle period counts as
    complete, so that the run starts and rejects it loudly rather than waiting forever.
    """
    now = time.time() if now is None else now
    folder = delivery.folder
    try:
        entries = [p for p in folder.iterdir() if p.is_file()]
    except OSError:
        return False
    if not entries:
        return False
    quiet = now - max(p.stat().st_mtime for p in entries) >= source.settle_seconds
    try:
        manifest = read_manifest(delivery)
    except DeliveryError:
        return quiet
    if manifest is None:
        expected = {source.file_name(t) for t, cfg in source.tables.items() if cfg.database is None}
        present = {p.name for p in entries}
        return expected <= present and quiet
    for name, (_, sha) in manifest.files.items():
        path = folder / name
        if not path.is_file():
            return False
        if file_sha256(path) != sha:
            return quiet
    return True


def delivery_fingerprint(delivery: Delivery) -> str:
    """Cheap identity of a delivery folder's current contents (names, sizes, mtimes).

    Used as the sensor's run key: a folder rewritten with new files gets a new run, the
    same folder seen again does not.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in delivery.folder.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def split_loaded(
    deliveries: list[Delivery], loaded: Mapping[tuple[str, date], str]
) -> tuple[list[Delivery], list[Delivery]]:
    """The deliveries still to load, and those whose folder is, name for name, size for
    size and mtime for mtime, the one already loaded for its source and date (``loaded``:
    :func:`warehouse.store.loaded_folders`).

    A folder that changed in any way, or whose load failed, is loaded again; loading a
    delivery whose bytes turn out the same is a no-op that records the folder afresh.
    """
    pending: list[Delivery] = []
    done: list[Delivery] = []
    for delivery in deliveries:
        recorded = loaded.get((delivery.source, delivery.extract_date))
        unchanged = recorded is not None and recorded == delivery_fingerprint(delivery)
        (done if unchanged else pending).append(delivery)
    return pending, done
