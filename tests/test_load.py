"""Loading deliveries into the warehouse: all or nothing, idempotent, newest supersedes."""

import json
import subprocess
import sys
from datetime import date

import pytest
from conftest import police_tables, to_per_delivery_layout

from warehouse.landing import Delivery, DeliveryError, delivery_fingerprint
from warehouse.store import connect, load_delivery, loaded_folders, per_delivery_sql

LAYERS = ("raw", "staged", "quarantine")


def delivery(folder, day="2026-11-20"):
    return Delivery("police", date.fromisoformat(day), folder)


def snapshot(con) -> dict[str, list[tuple]]:
    """Every row of every ingest table, for before/after comparisons."""
    tables = con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema IN ('raw','staged','quarantine','delivered','meta') "
        "AND table_type='BASE TABLE' "
        "ORDER BY 1, 2"
    ).fetchall()
    return {
        f"{s}.{t}": sorted(con.execute(f'SELECT * FROM {s}."{t}"').fetchall(), key=repr)
        for s, t in tables
    }


def count(con, layer, table="persons"):
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema=? AND table_name=?",
        [layer, f"police__{table}"],
    ).fetchall()[0][0]
    if not exists:
        return 0
    return con.execute(f'SELECT count(*) FROM {layer}."police__{table}"').fetchall()[0][0]


@pytest.fixture
def con(tmp_path):
    connection = connect(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def test_a_good_delivery_loads_every_table(con, delivery_writer, sources):
    folder = delivery_writer("police", "2026-11-20", police_tables(3))
    result = load_delivery(con, delivery(folder), sources["police"])
    assert result.status == "loaded"
    assert {t.table: t.rows for t in result.tables} == {
        "persons": 3,
        "incidents": 1,
        "involvements": 3,
    }
    raw = con.execute(
        "SELECT _source_file, _row_number, _file_sha256, _loaded_at "
        'FROM raw."police__persons" ORDER BY _row_number'
    ).fetchall()
    assert [r[:2] for r in raw] == [("persons.csv", 1), ("persons.csv", 2), ("persons.csv", 3)]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert raw[0][2] == manifest["files"]["persons.csv"]["sha256"]
    assert all(r[3] is not None for r in raw)
    assert count(con, "staged") == 3


@pytest.mark.parametrize("damage", ["checksum", "rows", "unlisted-file", "missing-file"])
def test_manifest_mismatch_rejects_the_whole_delivery(con, delivery_writer, sources, damage):
    folder = delivery_writer("police", "2026-11-20", police_tables(3))
    manifest = json.loads((folder / "manifest.json").read_text())
    if damage == "checksum":
        # The last table is damaged, so the first tables would have been fine on their own.
        path = folder / "involvements.csv"
        path.write_bytes(path.read_bytes().replace(b"victim", b"witnes"))
    elif damage == "rows":
        manifest["files"]["persons.csv"]["rows"] = 4
    elif damage == "unlisted-file":
        del manifest["files"]["incidents.csv"]
    elif damage == "missing-file":
        (folder / "incidents.csv").unlink()
    (folder / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(DeliveryError) as err:
        load_delivery(con, delivery(folder), sources["police"])
    assert str(folder) in str(err.value)
    for layer in LAYERS:
        for table in ("persons", "incidents", "involvements"):
            assert count(con, layer, table) == 0, (layer, table)
    status = con.execute("SELECT status, error FROM meta.deliveries").fetchall()
    assert status[0][0] == "rejected" and ".csv" in status[0][1]


@pytest.mark.parametrize("manifest", [True, False])
def test_a_file_no_table_reads_rejects_the_delivery(con, delivery_writer, sources, manifest):
    """A split export's second part (persons_2.csv) would otherwise be ignored, its rows
    lost without a word; a hidden file is not the agency's data and changes nothing."""
    folder = delivery_writer("police", "2026-11-20", police_tables(3))
    if not manifest:
        (folder / "manifest.json").unlink()
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "persons_2.csv").write_text("nominal_id,forename\nN9,Ann\n", encoding="utf-8")

    with pytest.raises(DeliveryError) as err:
        load_delivery(con, delivery(folder), sources["police"])
    assert err.value.path == str(folder / "persons_2.csv")
    assert "no table of source 'police' reads: ['persons_2.csv']" in err.value.reason
    for layer in LAYERS:
        assert count(con, layer) == 0, layer
    [(status, error)] = con.execute("SELECT status, error FROM meta.deliveries").fetchall()
    assert status == "rejected" and "persons_2.csv" in error

    (folder / "persons_2.csv").unlink()
    assert load_delivery(con, delivery(folder), sources["police"]).status == "loaded"


def test_reloading_the_same_delivery_changes_nothing(con, delivery_writer, sources):
    tables = police_tables(3)
    tables["persons"][1]["forename"] = None  # one quarantined row too
    folder = delivery_writer("police", "2026-11-20", tables)
    first = load_delivery(con, delivery(folder), sources["police"])
    before = snapshot(con)
    second = load_delivery(con, delivery(folder), sources["police"])
    assert second.status == "unchanged"
    assert second.delivery_id == first.delivery_id
    assert [(t.table, t.rows, t.staged, t.quarantined) for t in second.tables] == [
        (t.table, t.rows, t.staged, t.quarantined) for t in first.tables
    ]
    assert snapshot(con) == before


def test_a_warehouse_from_before_folder_fingerprints_records_them_from_the_next_load(
    tmp_path, delivery_writer, sources
):
    """A warehouse written before folders were fingerprinted knows of no loaded folder (so
    ``sdv load`` checks each once more); opening it for writing adds the column, and the
    next load of a folder records it, even when the bytes were loaded before."""
    path = tmp_path / "warehouse.duckdb"
    folder = delivery_writer("police", "2026-11-20", police_tables(3))
    con = connect(path)
    loaded = load_delivery(con, delivery(folder), sources["police"])
    con.execute("ALTER TABLE meta.deliveries DROP COLUMN folder_fingerprint")
    con.close()
    assert loaded_folders(path) == {}

    con = connect(path)
    again = load_delivery(con, delivery(folder), sources["police"])
    con.close()
    assert (again.status, again.delivery_id) == ("unchanged", loaded.delivery_id)
    assert loaded_folders(path) == {
        ("police", date(2026, 11, 20)): delivery_fingerprint(delivery(folder))
    }


def test_loaded_folders_read_while_another_process_writes_and_none_when_unreadable(
    tmp_path, delivery_writer, sources
):
    """``sdv load`` reads which folders are loaded while a run elsewhere holds the
    warehouse; a file it cannot open means nothing is known loaded (every folder is
    checked again, and the runs report what is wrong), never a crash before any run."""
    path = tmp_path / "warehouse.duckdb"
    folder = delivery_writer("police", "2026-11-20", police_tables(3))
    con = connect(path)
    load_delivery(con, delivery(folder), sources["police"])
    con.close()
    expected = {("police", date(2026, 11, 20)): delivery_fingerprint(delivery(folder))}
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; duckdb.connect({str(path)!r}); "
         "print('open', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        assert loaded_folders(path) == expected
    finally:
        holder.kill()
        holder.wait()
    broken = tmp_path / "broken.duckdb"
    broken.write_bytes(b"not a database" * 1000)
    assert loaded_folders(broken) is None


def test_newer_delivery_supersedes_and_older_stays_in_raw(con, delivery_writer, sources):
    old = delivery_writer("police", "2026-11-19", police_tables(2))
    new = delivery_writer("police", "2026-11-20", police_tables(5))
    late = delivery_writer("police", "2026-11-18", police_tables(1))
    load_delivery(con, delivery(old, "2026-11-19"), sources["police"])
    load_delivery(con, delivery(new, "2026-11-20"), sources["police"])
    load_delivery(con, delivery(late, "2026-11-18"), sources["police"])  # arrives late
    current = con.execute(
        'SELECT DISTINCT _extract_date, count(*) OVER () FROM current."police__persons"'
    ).fetchall()
    assert current == [(date(2026, 11, 20), 5)]
    raw = dict(
        con.execute(
            f"SELECT _extract_date, count(*) FROM ({per_delivery_sql('raw', 'police__persons')}) "
            "GROUP BY 1"
        ).fetchall()
    )
    assert raw == {date(2026, 11, 18): 1, date(2026, 11, 19): 2, date(2026, 11, 20): 5}
    # ... each record held once: the two earlier deliveries repeat records of the newest.
    assert count(con, "raw") == 5


def _per_delivery(con, schema: str, table: str = "persons") -> list[tuple]:
    return con.execute(
        f"SELECT _extract_date, _row_number, nominal_id FROM "
        f"({per_delivery_sql(schema, f'police__{table}')}) ORDER BY 1, 2"
    ).fetchall()


def test_a_record_is_stored_once_however_many_deliveries_repeat_it(con, delivery_writer, sources):
    """Full snapshots repeat nearly every record nightly: raw and staged grow by what is
    new or changed, while ``delivered`` keeps which delivery carried each record, where."""
    night_1 = police_tables(3)
    night_2 = police_tables(3)
    night_2["persons"].insert(0, night_2["persons"].pop())  # N3 moves to the top of the file
    night_2["persons"][1]["surname"] = "Changed"  # N1 changes
    load_delivery(
        con,
        delivery(delivery_writer("police", "2026-11-19", night_1), "2026-11-19"),
        sources["police"],
    )
    load_delivery(
        con,
        delivery(delivery_writer("police", "2026-11-20", night_2), "2026-11-20"),
        sources["police"],
    )
    assert count(con, "raw") == count(con, "staged") == 4  # N1 to N3, and N1 changed
    assert count(con, "delivered") == 6
    assert count(con, "raw", "incidents") == 1 and count(con, "delivered", "incidents") == 2
    n19, n20 = date(2026, 11, 19), date(2026, 11, 20)
    expected = [(n19, 1, "N1"), (n19, 2, "N2"), (n19, 3, "N3"),
                (n20, 1, "N3"), (n20, 2, "N1"), (n20, 3, "N2")]  # fmt: skip
    assert _per_delivery(con, "raw") == _per_delivery(con, "staged") == expected
    current = con.execute(
        'SELECT _row_number, nominal_id, surname, _extract_date FROM current."police__persons"'
    ).fetchall()
    assert current == [(1, "N3", "Example", n20), (2, "N1", "Changed", n20),
                       (3, "N2", "Example", n20)]  # fmt: skip


def test_a_record_that_leaves_and_comes_back_is_held_once_with_both_deliveries(
    con, delivery_writer, sources
):
    for day, n in (("2026-11-18", 2), ("2026-11-19", 1), ("2026-11-20", 2)):
        folder = delivery_writer("police", day, police_tables(n))
        load_delivery(con, delivery(folder, day), sources["police"])
    assert count(con, "raw") == 2
    n2 = [d for d, _, nominal in _per_delivery(con, "raw") if nominal == "N2"]
    assert n2 == [date(2026, 11, 18), date(2026, 11, 20)]
    current = con.execute('SELECT nominal_id FROM current."police__persons"').fetchall()
    assert current == [("N1",), ("N2",)]


def test_corrected_redelivery_of_a_date_replaces_staged_but_keeps_raw(
    con, delivery_writer, sources
):
    folder = delivery_writer("police", "2026-11-20", police_tables(2))
    load_delivery(con, delivery(folder), sources["police"])
    folder = delivery_writer("police", "2026-11-20", police_tables(3, surname="Corrected"))
    result = load_delivery(con, delivery(folder), sources["police"])
    assert result.status == "loaded"
    assert con.execute('SELECT DISTINCT surname FROM staged."police__persons"').fetchall() == [
        ("Corrected",)
    ]
    assert count(con, "raw") == 5
    statuses = sorted(r[0] for r in con.execute("SELECT status FROM meta.deliveries").fetchall())
    assert statuses == ["loaded", "replaced"]


def test_quarantined_rows_are_kept_with_provenance(con, delivery_writer, sources):
    tables = police_tables(3)
    tables["persons"][2]["dob"] = "31/02/2015"
    folder = delivery_writer("police", "2026-11-20", tables)
    load_delivery(con, delivery(folder), sources["police"])
    rows = con.execute(
        "SELECT _source_file, _row_number, dob, _reason_code, _reason "
        'FROM quarantine."police__persons"'
    ).fetchall()
    assert rows == [
        (
            "persons.csv",
            3,
            "31/02/2015",
            "unparseable_date",
            "column 'dob': '31/02/2015' is not a date (%Y-%m-%d)",
        )
    ]


def _layers(con) -> dict[str, list[tuple]]:
    """Every delivery's rows in every layer, and every current view."""
    out = {}
    for table in ("persons", "incidents", "involvements"):
        name = f"police__{table}"
        for schema in ("raw", "staged"):
            out[f"{schema}.{name}"] = con.execute(
                f"SELECT * EXCLUDE (_record_hash) FROM ({per_delivery_sql(schema, name)}) "
                "ORDER BY _extract_date, _loaded_at, _row_number"
            ).fetchall()
        quarantine = f'SELECT * FROM quarantine."{name}"'
        current = f'SELECT * EXCLUDE (_record_hash) FROM current."{name}"'
        for relation, sql in ((f'quarantine."{name}"', quarantine), (f'current."{name}"', current)):
            out[relation] = sorted(con.execute(sql).fetchall(), key=repr)
    return out


@pytest.mark.parametrize("keep_hashes", [True, False])
def test_a_warehouse_stored_per_delivery_is_converted_without_losing_a_row(
    tmp_path, delivery_writer, sources, keep_hashes
):
    """Every delivery's copy of every record (the layout before records were stored once,
    with or without staged hashes) converts on opening: each delivery's rows, quarantine
    and the current view come back the same, a replaced delivery stays replaced, and the
    next delivery loads on top."""
    police = sources["police"]
    con = connect(tmp_path / "old.duckdb")
    nights = [
        ("2026-11-19", police_tables(3)),
        ("2026-11-20", police_tables(4)),
        ("2026-11-20", police_tables(4, surname="Corrected")),  # replaces the 20th
        ("2026-11-18", police_tables(2)),
    ]  # fmt: skip  (arrives late)
    nights[0][1]["persons"][1]["forename"] = None  # quarantined
    for day, tables in nights:
        load_delivery(con, delivery(delivery_writer("police", day, tables), day), police)
    before = _layers(con)
    assert before['current."police__persons"'] and before['quarantine."police__persons"']
    to_per_delivery_layout(con, keep_hashes=keep_hashes)
    assert count(con, "raw") == 3 + 4 + 4 + 2  # every delivery's copy
    con.close()

    con = connect(tmp_path / "old.duckdb")  # converts on opening for writing
    assert _layers(con) == before
    # N1 to N3 of the 19th (N2 without a forename), N2 and N4 of the 20th, its four
    # corrected records; the late delivery repeats records of the 20th.
    assert count(con, "raw") == 3 + 2 + 4
    folder = delivery_writer("police", "2026-11-21", police_tables(5, surname="Corrected"))
    load_delivery(con, delivery(folder, "2026-11-21"), police)
    current = con.execute('SELECT nominal_id, surname FROM current."police__persons"').fetchall()
    assert current == [(f"N{i}", "Corrected") for i in range(1, 6)]
    con.close()
