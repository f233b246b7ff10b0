"""Resilience: broken deliveries and killed loads.

* Every kind of malformed delivery is refused with an error naming the file (and line,
  where there is one) and the reason, through ``load_delivery`` and through ``sdv load``
  (the Dagster ingest job); nothing of it reaches raw, staged or quarantine, the rejection
  is in ``meta.deliveries``, the previous current data is untouched and the next good
  delivery loads. Damage that is confined to rows (a record cut short, a line of millions
  of fields) loses no row: each is staged or quarantined with its reason.
* A duplicate delivery is a no-op reported as ``unchanged``; a delivery older than the
  current one loads for its own date and does not replace ``current``; one dated after
  today is refused (the rule is in ``warehouse.landing.check_not_future``).
* ``sdv nightly`` (the ingest runs, retention, then ``link_and_publish``), killed with
  SIGKILL at seeded random points (inside a delivery's transaction, just after a delivery
  committed, in the ingest runs, inside the linked tables' transaction, while the snapshot
  is built, in the retention run with the warehouse open for writing),
  leaves the published view, the warehouse and the linked tables whole, and the next run
  completes and publishes. The run reports what it is doing as it goes, so each kill is
  checked to have landed inside the operation it is named after, and the state after it
  is the one that operation's interruption implies.

Cases covered elsewhere are not repeated here: manifest checksum, row count, unlisted and
missing files (``test_load.test_manifest_mismatch_rejects_the_whole_delivery``), reloading
the same folder (``test_load.test_reloading_the_same_delivery_changes_nothing``), a bad
quote inside a file (``test_staging.test_broken_files_are_rejected_with_file_and_reason``),
a record with too few fields (``test_staging.test_every_reason_code_is_produced_and_explained``).
"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest
from conftest import police_tables, sdv_load, write_delivery

from pipelines.settings import PROJECT_ROOT
from warehouse.landing import Delivery, DeliveryError, delivery_fingerprint
from warehouse.publish import SnapshotStore, open_snapshot
from warehouse.store import connect, load_delivery, per_delivery_sql

LAYERS = ("raw", "staged", "quarantine")
POLICE_TABLES = ("persons", "incidents", "involvements")
# Fixed dates for the load_delivery tests: "today" is passed in, so they do not depend on
# the clock. The sdv load test uses the real clock, as a nightly run does.
TODAY = date(2026, 11, 21)
PREVIOUS, BAD, NEXT = "2026-11-18", "2026-11-19", "2026-11-20"
TEN_MB = 10 * 1024 * 1024


# -- damage done to a good police delivery -------------------------------------------------


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _replace(folder: Path, name: str, data: bytes) -> None:
    """Write a file and update its manifest checksum, so the file's own fault is found,
    not merely that it differs from the manifest."""
    (folder / name).write_bytes(data)
    manifest = _manifest(folder)
    manifest["files"][name]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _persons_text(folder: Path) -> str:
    """The file as written (CRLF kept: ``read_text`` would translate line endings)."""
    return (folder / "persons.csv").read_bytes().decode("utf-8")


def _edit_persons(edit: Callable[[str], bytes]) -> Callable[[Path], None]:
    return lambda folder: _replace(folder, "persons.csv", edit(_persons_text(folder)))


def _each_line(edit: Callable[[str, bool], str]) -> Callable[[str], bytes]:
    """Apply ``edit(line, is_header)`` to every line of a CSV text."""

    def _apply(text: str) -> bytes:
        lines = text.split("\r\n")
        edited = [edit(line, i == 0) if line else line for i, line in enumerate(lines)]
        return "\r\n".join(edited).encode()

    return _apply


def _truncate(folder: Path) -> None:
    """Cut the file mid-record, as a copy interrupted part way; the manifest is the
    agency's, written for the whole file."""
    data = (folder / "persons.csv").read_bytes()
    (folder / "persons.csv").write_bytes(data[: len(data) - 20])


def _manifest_for_another_day(folder: Path) -> None:
    manifest = _manifest(folder)
    manifest["extract_date"] = "2026-11-17"
    (folder / "manifest.json").write_text(json.dumps(manifest))


@dataclass(frozen=True)
class Case:
    """A malformed delivery: how to damage a good one, and what the error must say."""

    name: str
    damage: Callable[[Path], None]
    file: str | None  # the file the error names, relative to the folder; None: the folder
    reason: str  # readable reason the error must contain
    future: bool = False  # dated the day after today


CASES = [
    Case("truncated-file", _truncate, "persons.csv", "file altered or incompletely written"),
    Case(
        "wrong-encoding-windows-1252",
        _edit_persons(lambda t: t.replace("Alfie", "Zoë", 1).encode("cp1252")),
        "persons.csv",
        "line 2: byte",
    ),
    Case(
        "wrong-encoding-utf-16",
        _edit_persons(lambda t: t.encode("utf-16")),
        "persons.csv",
        "contains a NUL byte (binary data, or a UTF-16 export?)",
    ),
    Case(
        "wrong-delimiter",
        _edit_persons(lambda t: t.replace(",", ";").encode()),
        "persons.csv",
        "looks semicolon-separated but the source expects comma-separated",
    ),
    Case(
        "missing-column",
        _edit_persons(_each_line(lambda line, _: line.rsplit(",", 1)[0])),
        "persons.csv",
        "header lacks column(s) ['pnc_id']",
    ),
    Case(
        "extra-column",
        _edit_persons(_each_line(lambda line, header: line + (",notes" if header else ",x"))),
        "persons.csv",
        "header has unexpected column(s) ['notes']",
    ),
    Case(
        "duplicated-header-column",
        _edit_persons(
            _each_line(lambda line, header: line.replace("pnc_id", "surname") if header else line)
        ),
        "persons.csv",
        "header repeats column(s) ['surname']",
    ),
    Case(
        "header-row-repeated",
        _edit_persons(lambda t: (t + "\ufeff" + t).encode()),  # a second export, BOM and all
        "persons.csv",
        "line 5: repeats the header row",
    ),
    Case("empty-file", _edit_persons(lambda _: b""), "persons.csv", "file is empty"),
    Case(
        "binary-garbage",
        _edit_persons(lambda _: random.Random(8).randbytes(65536)),
        "persons.csv",
        "(binary data, or a UTF-16 export?)",
    ),
    Case(
        "one-10mb-line",
        _edit_persons(lambda t: t.replace("1 Test Street", "x" * TEN_MB, 1).encode()),
        "persons.csv",
        "line 2: not valid CSV: a field is longer than 1,048,576 characters",
    ),
    Case(
        "manifest-mismatch",
        _manifest_for_another_day,
        "manifest.json",
        "manifest extract_date 2026-11-17 does not match folder",
    ),
    Case("dated-in-the-future", lambda _: None, None, "is in the future", future=True),
]


# -- looking at the warehouse --------------------------------------------------------------


def layer_rows(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    """Every row of raw, staged and quarantine, for before/after comparisons."""
    tables = con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema IN ('raw', 'staged', 'quarantine') AND table_type = 'BASE TABLE' "
        "ORDER BY 1, 2"
    ).fetchall()
    return {
        f"{s}.{t}": sorted(con.execute(f'SELECT * FROM {s}."{t}"').fetchall(), key=repr)
        for s, t in tables
    }


def current_rows(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    return {
        t: sorted(con.execute(f'SELECT * FROM current."police__{t}"').fetchall(), key=repr)
        for t in POLICE_TABLES
    }


def rejections(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(
        "SELECT source, extract_date, origin, error FROM meta.deliveries "
        "WHERE status = 'rejected' ORDER BY recorded_at"
    ).fetchall()


@pytest.fixture
def con(tmp_path):
    connection = connect(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def _delivery(folder: Path) -> Delivery:
    return Delivery("police", date.fromisoformat(folder.name), folder)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- malformed deliveries through load_delivery --------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_delivery_is_refused_by_file_and_reason_and_loses_nothing(
    con, delivery_writer, sources, case
):
    police = sources["police"]
    load_delivery(con, _delivery(delivery_writer("police", PREVIOUS, police_tables(2))), police)
    before, current_before = layer_rows(con), current_rows(con)

    day = (TODAY + timedelta(days=1)).isoformat() if case.future else BAD
    folder = delivery_writer("police", day, police_tables(3))
    case.damage(folder)
    delivered = _files(folder)
    with pytest.raises(DeliveryError) as err:
        load_delivery(con, _delivery(folder), police, today=TODAY)

    named = folder / case.file if case.file else folder
    assert err.value.path == str(named)
    assert case.reason in err.value.reason
    assert str(err.value) == f"{named}: {err.value.reason}"
    # Nothing of it reached the warehouse; what was current still is.
    assert layer_rows(con) == before
    assert current_rows(con) == current_before
    # The rejection is on record with the same words; the delivery is still in the landing
    # zone exactly as delivered, for the agency to fix and send again.
    assert rejections(con) == [("police", date.fromisoformat(day), str(folder), str(err.value))]
    assert _files(folder) == delivered

    result = load_delivery(
        con, _delivery(delivery_writer("police", NEXT, police_tables(4))), police, today=TODAY
    )
    assert (result.status, result.is_current, result.staged) == ("loaded", True, 4 + 1 + 4)
    assert len(current_rows(con)["persons"]) == 4


def _cut_mid_record(folder: Path) -> None:
    """No manifest to compare with: the last record simply stops part way."""
    text = _persons_text(folder)
    (folder / "persons.csv").write_bytes(text[: text.rindex("Alfie") + 3].encode())


def _ten_mb_line_of_fields(folder: Path) -> None:
    lines = _persons_text(folder).split("\r\n")
    lines[2] = "x," * (TEN_MB // 2)  # record 2: five million fields
    (folder / "persons.csv").write_bytes("\r\n".join(lines).encode())


@pytest.mark.parametrize(
    ("damage", "record", "reason"),
    [
        (_cut_mid_record, 3, "record has 2 fields, the header has 10"),
        (
            _ten_mb_line_of_fields,
            2,
            "record has 5242881 fields, the header has 10; extra fields ['x', 'x'",
        ),
    ],
    ids=["truncated-without-manifest", "one-10mb-line-of-fields"],
)
def test_damage_confined_to_a_row_quarantines_it_and_loses_no_row(
    con, delivery_writer, sources, damage, record, reason
):
    folder = delivery_writer("police", BAD, police_tables(3), manifest=False)
    damage(folder)
    tracemalloc.start()
    try:
        result = load_delivery(con, _delivery(folder), sources["police"], today=TODAY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024 * 1024  # a few pointers a field: no runaway copies

    persons = next(t for t in result.tables if t.table == "persons")
    assert (persons.rows, persons.staged, persons.quarantined) == (3, 2, 1)
    assert persons.reasons["wrong_field_count"] == 1
    row, code, why = con.execute(
        'SELECT _row_number, _reason_code, _reason FROM quarantine."police__persons"'
    ).fetchall()[0]
    assert row == record and code.startswith("wrong_field_count")
    assert why.startswith(reason)
    assert len(why) < 1000  # the surplus is previewed, not copied whole into every reason
    staged = con.execute('SELECT _row_number FROM staged."police__persons"').fetchall()
    assert sorted([r for (r,) in staged] + [row]) == [1, 2, 3]


# -- deliveries that are fine, but not new -------------------------------------------------


def test_duplicate_delivery_is_a_noop_reported_unchanged(con, delivery_writer, sources):
    """The agency sends the same files again (new timestamps, same bytes)."""
    folder = delivery_writer("police", BAD, police_tables(3))
    first = load_delivery(con, _delivery(folder), sources["police"], today=TODAY)
    before = layer_rows(con)
    everything_but_the_folder = "SELECT * EXCLUDE (folder_fingerprint) FROM meta.deliveries"
    meta = con.execute(everything_but_the_folder).fetchall()
    resent = _files(folder)
    time.sleep(0.01)
    for name, data in resent.items():
        (folder / name).write_bytes(data)
    again = load_delivery(con, _delivery(folder), sources["police"], today=TODAY)
    assert (again.status, again.delivery_id, again.is_current) == (
        "unchanged",
        first.delivery_id,
        True,
    )
    assert layer_rows(con) == before
    assert con.execute(everything_but_the_folder).fetchall() == meta
    # The re-sent folder is recorded as the loaded one, so `sdv load` leaves it alone now.
    fingerprints = con.execute("SELECT folder_fingerprint FROM meta.deliveries").fetchall()
    assert fingerprints == [(delivery_fingerprint(_delivery(folder)),)]


def test_delivery_older_than_current_loads_for_its_date_and_current_stays(
    con, delivery_writer, sources
):
    police = sources["police"]
    load_delivery(con, _delivery(delivery_writer("police", NEXT, police_tables(4))), police)
    current_before = current_rows(con)
    late = delivery_writer("police", PREVIOUS, police_tables(2, surname="Late"))
    result = load_delivery(con, _delivery(late), police, today=TODAY)
    assert result.status == "loaded"
    assert not result.is_current
    assert result.current_extract_date == date.fromisoformat(NEXT)
    assert current_rows(con) == current_before
    staged = con.execute(
        f"SELECT count(*) FROM ({per_delivery_sql('staged', 'police__persons')}) "
        "WHERE _extract_date = ? AND surname = ?",
        [date.fromisoformat(PREVIOUS), "Late"],
    ).fetchall()
    assert staged == [(2,)]


# -- the same through sdv load (the Dagster ingest job) ------------------------------------

# One of each kind of fault (checksum, bytes, shape, manifest, date): every Dagster run
# costs seconds, and the parsing behind the other cases is the same code path.
SDV_LOAD_CASES = {
    "truncated-file",
    "wrong-encoding-windows-1252",
    "wrong-delimiter",
    "binary-garbage",
    "manifest-mismatch",
    "dated-in-the-future",
}


@pytest.mark.slow
def test_sdv_load_reports_each_broken_delivery_by_file_and_reason(tmp_path, sources):
    """One landing zone holding a good delivery and every malformed case, on its own date:
    each is refused by the Dagster job with the file and reason, the good one stays
    current; then a duplicate and a late delivery are reported for what they are."""
    police = sources["police"]
    landing, data_dir = tmp_path / "landing", tmp_path / "data"
    write_delivery(landing, police, "2026-11-01", police_tables(2))
    expected = {}
    for i, case in enumerate(c for c in CASES if c.name in SDV_LOAD_CASES):
        day = date.today() + timedelta(days=1) if case.future else date(2026, 11, 2 + i)
        folder = write_delivery(landing, police, day.isoformat(), police_tables(3))
        case.damage(folder)
        expected[day.isoformat()] = (folder / case.file if case.file else folder, case.reason)

    result = sdv_load(landing, data_dir)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    for day, (named, reason) in expected.items():
        line = next(
            (x for x in result.output.splitlines() if x.startswith(f"REJECTED police {day}: ")),
            None,
        )
        assert line is not None, (day, result.output)
        assert f"Delivery rejected, nothing loaded: {named}: " in line, line
        assert reason in line, line

    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        for layer in ("raw", "current"):
            dates = con.execute(f'SELECT DISTINCT _extract_date FROM {layer}."police__persons"')
            assert dates.fetchall() == [(date(2026, 11, 1),)], layer
        recorded = {d.isoformat(): e for _, d, _, e in rejections(con)}
    finally:
        con.close()
    assert recorded.keys() == expected.keys()
    for day, (named, reason) in expected.items():
        assert recorded[day].startswith(f"{named}: ") and reason in recorded[day]

    later = tmp_path / "later"  # the same files sent again (new mtimes), and a late one
    resent = later / "police" / "2026-11-01"
    shutil.copytree(landing / "police" / "2026-11-01", resent, copy_function=shutil.copy)
    write_delivery(later, police, "2026-10-31", police_tables(1))
    result = sdv_load(later, data_dir)
    assert result.exit_code == 0, result.output
    assert "Unchanged (already loaded, nothing written): police 2026-11-01" in result.output
    assert (
        "police 2026-10-31: loaded, but older than the current delivery 2026-11-01, which "
        "stays current" in result.output
    )
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        current = con.execute('SELECT count(*), max(_extract_date) FROM current."police__persons"')
        assert current.fetchall() == [(2, date(2026, 11, 1))]
        late = con.execute(
            f"SELECT count(*) FROM ({per_delivery_sql('staged', 'police__persons')}) "
            "WHERE _extract_date = ?",
            [date(2026, 10, 31)],
        )
        assert late.fetchall() == [(1,)]
    finally:
        con.close()


# -- SIGKILL during the nightly run --------------------------------------------------------

# The nightly sequence as `sdv nightly` runs it: the ingest runs, retention, then
# `link_and_publish`.
# The child reports each operation as it starts and ends, one line at a time, in PROGRESS
# (appended and closed per line: what it wrote survives its SIGKILL), so the test knows
# which operation each kill interrupted. Where a kill point names an operation too short
# to hit, the child lingers inside it (after the line saying so) for LINGER seconds.
PROGRESS = "nightly-progress.log"
LINGER = 0.5
NIGHTLY = f"""
import sys
import time
from pathlib import Path

import assets.family_view
import assets.ingest
import assets.linkage
import pipelines.cli
import warehouse.linked
import warehouse.retention
import warehouse.store
from pipelines.cli import app

landing, data = sys.argv[1], sys.argv[2]
loading = []  # the source whose delivery is being loaded, while it is


def report(line):
    with open(Path(data) / {PROGRESS!r}, "a") as log:
        log.write(line + "\\n")


def reported(function, begin, end):
    def wrapper(*args, **kwargs):
        report(begin)
        result = function(*args, **kwargs)
        report(end)
        return result
    return wrapper


pipelines.cli.run_load = reported(pipelines.cli.run_load, "ingest begin", "ingest done")
assets.linkage.run_linkage = reported(
    assets.linkage.run_linkage, "linkage begin", "linkage done"
)
assets.family_view.build_snapshot = reported(
    assets.family_view.build_snapshot, "snapshot begin", "snapshot built"
)

# A delivery: its load reported; inside its transaction (all written, about to commit)
# linger; after it commits, linger with the warehouse connection open, so its commit is
# still in DuckDB's write-ahead log (checkpointed when the connection closes).
_load = assets.ingest.load_delivery
def _load_reported(con, delivery, *args, **kwargs):
    loading.append(delivery.source)
    report(f"load {{delivery.source}} begin")
    try:
        result = _load(con, delivery, *args, **kwargs)
    finally:
        loading.clear()
    wal = (Path(data) / "warehouse.duckdb.wal").exists()
    report(f"load {{delivery.source}} {{result.status}} wal={{wal}}")
    time.sleep({LINGER})
    report(f"load {{delivery.source}} lingered")
    return result
assets.ingest.load_delivery = _load_reported

_refresh = warehouse.store._refresh_current_view
def _refresh_then_linger(con, name, current):
    _refresh(con, name, current)
    if loading:  # the first table's view of a delivery: every write done, COMMIT next
        source = loading.pop()
        report(f"load {{source}} in-transaction")
        time.sleep({LINGER})
        report(f"load {{source}} in-transaction lingered")
warehouse.store._refresh_current_view = _refresh_then_linger

# Halfway through writing the linked tables (one transaction), say so and linger.
_replace = warehouse.linked._replace
def _replace_then_linger(con, table, frame):
    _replace(con, table, frame)
    if table == "household_members":
        report("linkage writing")
        time.sleep({LINGER})
        report("linkage writing lingered")
warehouse.linked._replace = _replace_then_linger

# Retention has planned (the warehouse open for writing, nothing yet destroyed): linger.
_plan = warehouse.retention.plan
def _plan_then_linger(*args, **kwargs):
    found = _plan(*args, **kwargs)
    report("retention planned")
    time.sleep({LINGER})
    report("retention planned lingered")
    return found
warehouse.retention.plan = _plan_then_linger

sys.exit(app(["nightly", "--landing", landing, "--data-dir", data], standalone_mode=False))
"""
# The day after the shared county's extract date: a real new delivery for `sdv load`, which
# judges "the future" by the clock (the suite already assumes a clock past 2026-11-20).
TONIGHT = "2026-11-21"
# Tonight's deliveries: three sources, so that after the two kills at a delivery at least
# two are still to load when the ingest runs are killed at a random moment.
TONIGHTS_SOURCES = ("police", "health", "school")
KILL_SEED = 6


def _progress(data: Path) -> list[str]:
    """What the (killed) nightly run reported, in order."""
    path = data / PROGRESS
    return path.read_text().splitlines() if path.exists() else []


@dataclass(frozen=True)
class KillPoint:
    """Kill when ``marker`` first holds, after a seeded random ``delay`` in seconds; then
    ``landed(progress)`` must hold: the run's own report shows it was inside the operation
    named ``what`` when it died."""

    what: str
    marker: Callable[[Path, set[str]], bool]  # (data dir, run logs before) -> reached?
    delay: float
    landed: Callable[[list[str]], bool]


def _run_logs(data: Path) -> set[str]:
    """Dagster's per-run event logs: one appears as each ingest or publish run starts."""
    runs = data / "dagster" / "history" / "runs"
    return {p.name for p in runs.glob("*.db") if p.name != "index.db"} if runs.exists() else set()


def _ingest_run_started(data: Path, before: set[str]) -> bool:
    return bool(_run_logs(data) - before)


def _last_is(suffix: str) -> Callable[[list[str]], bool]:
    return lambda progress: bool(progress) and progress[-1].endswith(suffix)


def _reported(suffix: str) -> Callable[[Path, set[str]], bool]:
    return lambda data, before: _last_is(suffix)(_progress(data))


def _snapshot_building(data: Path, before: set[str]) -> bool:
    return any((data / "published" / "snapshots").glob("*.building"))


def _in_ingest(progress: list[str]) -> bool:
    return "ingest begin" in progress and "ingest done" not in progress


def _in_snapshot_build(progress: list[str]) -> bool:
    return "snapshot begin" in progress and "snapshot built" not in progress


def kill_points(rng: random.Random) -> list[KillPoint]:
    """Six points over the nightly run: inside a delivery's transaction (all written,
    not committed); just after a delivery committed, its commit still only in the
    write-ahead log; part way through the ingest runs; inside the transaction writing the
    linked tables; part way through building the snapshot; and in the retention run, the
    warehouse open for writing. The first two, the fourth and the last come while the
    child lingers there; the ingest and snapshot points are a seeded random moment after
    their marker. (The retention point is last so that the others keep their draws.)"""
    return [
        KillPoint(
            "while a delivery commits",
            _reported(" in-transaction"),
            rng.uniform(0.0, 0.2),
            _last_is(" in-transaction"),
        ),
        KillPoint(
            "after a delivery committed, before its checkpoint",
            _reported(" loaded wal=True"),
            rng.uniform(0.0, 0.2),
            _last_is(" loaded wal=True"),
        ),
        KillPoint("during the ingest runs", _ingest_run_started, rng.uniform(0.2, 1.5), _in_ingest),
        KillPoint(
            "while linkage writes",
            _reported("linkage writing"),
            rng.uniform(0.0, 0.3),
            _last_is("linkage writing"),
        ),
        KillPoint(
            "while the snapshot is built",
            _snapshot_building,
            rng.uniform(0.0, 0.4),
            _in_snapshot_build,
        ),
        KillPoint(
            "while retention runs",
            _reported("retention planned"),
            rng.uniform(0.0, 0.3),
            _last_is("retention planned"),
        ),
    ]


def _nightly(landing: Path, data: Path) -> subprocess.Popen:
    (data / PROGRESS).unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", NIGHTLY, str(landing), str(data)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: Dagster's helper dies with it
    )


def _kill_at(landing: Path, data: Path, point: KillPoint) -> list[str]:
    """Start the nightly run, wait for the kill point, SIGKILL its process group, and
    return what the run reported up to then."""
    before = _run_logs(data)
    process = _nightly(landing, data)
    deadline = time.monotonic() + 180
    while not point.marker(data, before):
        assert process.poll() is None, f"run ended before {point.what}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"never reached {point.what}"
        time.sleep(0.005)
    time.sleep(point.delay)
    assert process.poll() is None, f"run ended before the kill {point.what}"
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    process.stderr.close()
    progress = _progress(data)
    assert point.landed(progress), (point.what, progress)
    return progress


def published_content(store: SnapshotStore) -> tuple[dict, dict[str, str]]:
    """The pointer readers follow, and a digest of every table of the snapshot it names."""
    pointer = json.loads((store.root / "CURRENT.json").read_text())
    con = open_snapshot(store.path(pointer["snapshot"]))
    try:
        tables = [r[0] for r in con.sql("select table_name from duckdb_tables()").fetchall()]
        digests = {
            t: hashlib.sha256(
                repr(sorted(con.sql(f'select * from "{t}"').fetchall(), key=repr)).encode()
            ).hexdigest()
            for t in tables
        }
    finally:
        con.close()
    return pointer, digests


def assert_warehouse_whole(warehouse: Path) -> dict[str, str]:
    """Open the warehouse as the next run would (DuckDB replays its WAL), and check no
    delivery is half there: every loaded delivery has all its rows in raw, staged and
    quarantine, and no row belongs to a delivery that is not recorded as loaded. Returns
    each source's current extract date."""
    con = connect(warehouse)
    try:
        recorded = con.execute(
            "SELECT delivery_id, source, extract_date, status, tables FROM meta.deliveries "
            "WHERE status IN ('loaded', 'replaced')"
        ).fetchall()
        ids = {r[0] for r in recorded}
        for delivery_id, source, day, status, tables in recorded:
            for t in json.loads(tables):
                name = f"{source}__{t['table']}"
                layers = {
                    layer: f"({per_delivery_sql(layer, name)})" for layer in ("raw", "staged")
                } | {"quarantine": f'quarantine."{name}"'}
                raw = con.execute(
                    f"SELECT count(*) FROM {layers['raw']} WHERE _delivery_id = ?", [delivery_id]
                ).fetchall()
                assert raw == [(t["rows"],)], (source, day, t["table"])
                if status == "loaded":
                    for layer, key in (("staged", "staged"), ("quarantine", "quarantined")):
                        rows = con.execute(
                            f"SELECT count(*) FROM {layers[layer]} WHERE _delivery_id = ?",
                            [delivery_id],
                        ).fetchall()
                        assert rows == [(t[key],)], (layer, source, day, t["table"])
        for layer in (*LAYERS, "delivered"):
            for (name,) in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = ? AND table_type = 'BASE TABLE'",
                [layer],
            ).fetchall():
                stray = con.execute(
                    f'SELECT DISTINCT _delivery_id FROM {layer}."{name}"'
                ).fetchall()
                assert {d for (d,) in stray} <= ids, (layer, name)
        current = con.execute(
            "SELECT source, max(extract_date) FROM meta.deliveries WHERE status = 'loaded' "
            "GROUP BY source"
        ).fetchall()
    finally:
        con.close()
    return {source: day.isoformat() for source, day in current}


def assert_linkage_whole(warehouse: Path) -> str:
    """The linked tables are one linkage run's, whole: every person row carries the newest
    recorded run, as many as it recorded, and every person has a household. Returns the
    run's id."""
    con = connect(warehouse, read_only=True)
    try:
        [(run_id, records)] = con.execute(
            "SELECT run_id, records FROM linked.runs ORDER BY started_at DESC LIMIT 1"
        ).fetchall()
        rows = con.execute(
            "SELECT run_id, count(*) FROM linked.person_records GROUP BY run_id"
        ).fetchall()
        assert rows == [(run_id, records)]
        homeless = con.execute(
            "SELECT count(DISTINCT person_id) FROM linked.person_records "
            "WHERE person_id NOT IN (SELECT person_id FROM linked.household_members)"
        ).fetchall()
        assert homeless == [(0,)]
    finally:
        con.close()
    return run_id


@pytest.mark.slow
def test_sigkill_during_the_nightly_run_leaves_everything_whole(published_county, tmp_path):
    county = published_county.copy(tmp_path / "county")
    store = county.store()
    landing = tmp_path / "tonight"
    for source in TONIGHTS_SOURCES:  # tonight's deliveries: real writes
        county.deliver_again(source, landing, TONIGHT)
    published_before = published_content(store)
    current_before = assert_warehouse_whole(county.warehouse)
    linkage_before = assert_linkage_whole(county.warehouse)

    committed: set[str] = set()  # sources whose delivery tonight a run reported committed
    linked = linkage_before  # the linkage run the linked tables hold
    for point in kill_points(random.Random(KILL_SEED)):
        progress = _kill_at(landing, county.data, point)
        last: dict[str, str] = {}  # each delivery's last reported state, this run
        for line in progress:
            if line.startswith("load "):
                _, source, state = line.split(" ", 2)
                last[source] = state
                if state.startswith("loaded"):
                    committed.add(source)
        # Killed between the end of its transaction and the report of its commit: either.
        uncertain = {source for source, state in last.items() if state == "in-transaction lingered"}
        # Readers still get the snapshot they had, whole.
        assert published_content(store) == published_before, point.what
        linkage = assert_linkage_whole(county.warehouse)
        if "linkage done" in progress:  # killed after the linked tables were written
            assert linkage != linked, point.what
        elif "linkage writing lingered" not in progress:  # before or inside their write
            assert linkage == linked, point.what
        linked = linkage
        current = assert_warehouse_whole(county.warehouse)
        # Each source shows last night's delivery or tonight's, entire: tonight's once a run
        # reported it committed; last night's while none did (killed before or inside its
        # transaction: none of it is there), unless the kill came just as it committed.
        assert set(current) == set(current_before)
        for source, day in current.items():
            if source in committed:
                assert day == TONIGHT, (point.what, source)
            elif source in uncertain:
                assert day in (current_before[source], TONIGHT), (point.what, source, day)
            else:
                assert day == current_before[source], (point.what, source, day)
        committed |= {source for source, day in current.items() if day == TONIGHT}

    process = _nightly(landing, county.data)
    _, errors = process.communicate(timeout=300)
    assert process.returncode == 0, errors.decode()
    assert assert_warehouse_whole(county.warehouse) == {
        **current_before,
        **dict.fromkeys(TONIGHTS_SOURCES, TONIGHT),
    }
    assert assert_linkage_whole(county.warehouse) != linkage_before
    pointer, digests = published_content(store)
    assert pointer["snapshot"] != published_before[0]["snapshot"]
    assert pointer["as_of"] == TONIGHT
    assert digests.keys() == published_before[1].keys()
    assert not list(store.snapshots.glob("*.building"))  # leftovers of killed builds pruned
