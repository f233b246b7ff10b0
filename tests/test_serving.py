"""The serving copy the API reads: the snapshot's rows and values exactly, read-only, and
kept, pruned, rolled back and rebuilt together with its snapshot."""

from __future__ import annotations

import sqlite3

import pytest

from warehouse import serving
from warehouse.access import AccessError, AccessLayer, User
from warehouse.curated_schema import TABLES
from warehouse.policy import load_policy
from warehouse.publish import open_snapshot


@pytest.fixture
def county(published_county, tmp_path):
    return published_county.copy(tmp_path / "county")


def _rows(cursor, table: str, columns: list[str]) -> list[tuple]:
    quoted = ", ".join(f'"{c}"' for c in columns)
    return sorted(
        cursor.execute(f'select {quoted} from "{table}"').fetchall(),
        key=lambda row: tuple((v is None, str(v)) for v in row),
    )


def test_the_serving_copy_holds_every_curated_row_with_the_values_duckdb_returns(county):
    snapshot = county.store().current_path()
    copy = serving.open_serving(snapshot)
    with open_snapshot(snapshot) as con:
        present = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
        tables = [name for name in TABLES if name in present]
        assert {"person", "child_summary", "timeline", "household_members"} <= set(tables)
        for name in tables:
            columns = [c.name for c in TABLES[name].columns]
            expected = _rows(con, name, columns)
            assert expected or TABLES[name].aggregate, f"{name} is empty in the fixture"
            assert _rows(copy, name, columns) == expected, name
    copy.close()
    # Dates, flags and lists come back as the same Python types, not text.
    person = (
        serving.open_serving(snapshot)
        .execute("select dob, is_child, sources from person where dob is not null limit 1")
        .fetchone()
    )
    assert [type(v).__name__ for v in person] == ["date", "bool", "list"]


def test_requests_can_only_read(county):
    access = AccessLayer(county.store(), load_policy(), county.engine())
    cursor = access._snapshots._open(county.store().current().snapshot).cursor()
    assert cursor.execute("select count(*) from person").fetchone()[0] > 0
    for sql in (
        "attach database ':memory:' as other",
        "pragma journal_mode = wal",
        "create table stolen (x)",
        "delete from person",
        "update person set forename = 'x'",
    ):
        with pytest.raises(sqlite3.DatabaseError):
            cursor.execute(sql)
    with pytest.raises(sqlite3.DatabaseError):  # opened read-only, whatever the authoriser
        sqlite3.connect(
            f"{serving.serving_path(county.store().current_path()).as_uri()}?mode=ro", uri=True
        ).execute("delete from person")


def test_each_kept_snapshot_has_its_serving_copy_and_pruning_removes_both(county):
    store = county.store()
    for _ in range(store.keep + 1):
        county.publish()
    folder = store.snapshots
    snapshots = sorted(p.name for p in folder.glob("family-view-*.duckdb"))
    copies = sorted(p.name for p in folder.glob(f"*{serving.SUFFIX}"))
    assert len(snapshots) == store.keep
    assert copies == sorted(serving.serving_path(folder / s).name for s in snapshots)
    assert not list(folder.glob("*.building"))


def test_a_snapshot_without_its_serving_copy_is_refused_readably_and_rollback_rebuilds_it(
    county,
):
    store = county.store()
    county.publish()
    previous = store.history()[-2].snapshot
    serving.serving_path(store.path(previous)).unlink()
    store.rollback()  # back to the snapshot whose copy is gone: rebuilt on the way
    access = AccessLayer(store, load_policy(), county.engine())
    user = User("dpo1", "dpo")
    assert access.read(user, "audit", "person", limit=1).total > 0
    serving.serving_path(store.current_path()).unlink()
    with pytest.raises(AccessError, match="no serving copy"):
        AccessLayer(store, load_policy(), county.engine()).read(user, "audit", "person")


def test_serve_warns_when_the_published_snapshot_has_no_serving_copy(county, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from pipelines.cli import app

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(k))
    args = ["serve", "--data-dir", str(county.data)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and started, result.output
    assert "no serving copy" not in result.output
    serving.serving_path(county.store().current_path()).unlink()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "no serving copy" in " ".join(result.output.split())


def test_the_first_copy_makes_the_snapshots_folder(tmp_path):
    """The copy is written by a second thread that may start before the snapshot's own
    writer has made the folder (the first publish into a new data directory)."""
    import polars as pl

    snapshot = tmp_path / "published" / "snapshots" / "family-view-x.duckdb"
    frame = pl.DataFrame({"person_id": ["P1"], "household_id": ["H1"], "role": ["child"]})
    path = serving.write_serving(snapshot, {"household_members": frame})
    assert path == serving.serving_path(snapshot) and path.exists()


def test_empty_tables_and_columns_with_no_values_are_copied(tmp_path):
    """A night can deliver no relationships at all, and a column can be null in every row
    (Polars then types it Null): both go through the bulk insert and read back as such."""
    import datetime as dt

    import polars as pl

    snapshot = tmp_path / "family-view-x.duckdb"
    members = pl.DataFrame(
        {"person_id": ["P1", "P2"], "household_id": ["H1", "H1"], "role": [None, None]}
    )
    assert members.schema["role"] == pl.Null
    people = pl.DataFrame(
        {"person_id": ["P1"], "dob": [dt.date(2015, 4, 30)], "is_child": [True]}
    ).with_columns(pl.lit(None).alias("sources"))
    empty = pl.DataFrame(schema={"person_id": pl.String, "related_person_id": pl.String})
    path = serving.write_serving(
        snapshot, {"household_members": members, "person": people, "relationships": empty}
    )
    copy = sqlite3.connect(path, detect_types=sqlite3.PARSE_DECLTYPES)
    assert copy.execute("select * from household_members order by person_id").fetchall() == [
        ("P1", "H1", None),
        ("P2", "H1", None),
    ]
    assert copy.execute("select person_id, dob, is_child, sources from person").fetchall() == [
        ("P1", dt.date(2015, 4, 30), True, None)
    ]
    assert copy.execute("select count(*) from relationships").fetchone() == (0,)


def test_connections_to_a_replaced_snapshot_are_closed_when_the_pointer_moves(county):
    """After a publish (or an erasure rewriting the snapshot) nothing keeps the old file
    open: idle connections close at the next request, busy ones when their request ends."""
    access = AccessLayer(county.store(), load_policy(), county.engine())
    user = User("dpo1", "dpo")
    access.read(user, "audit", "person", limit=1)
    (idle,) = access._snapshots._idle
    assert idle.execute("select count(*) from person").fetchone()[0] > 0
    _, _, published = county.publish()
    page = access.read(user, "audit", "person", limit=1)
    assert page.total > 0 and access._snapshots.name == published.snapshot
    with pytest.raises(sqlite3.ProgrammingError):
        idle.execute("select 1")
    (current,) = access._snapshots._idle
    assert current is not idle
