"""Shared fixtures: hand-made deliveries for exact cases, generated counties for scale."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from warehouse.sources import Source, load_sources

Row = dict[str, str | None]
# school/attendance's header, as the reader tests write it by hand.
ATTENDANCE_HEADER = [
    "upn",
    "school_urn",
    "term",
    "sessions_possible",
    "sessions_authorised_absent",
    "sessions_unauthorised_absent",
]


@pytest.fixture(autouse=True)
def _environment_kept():
    """Every ``sdv`` command exports its settings (``SDV_*``, ``DAGSTER_HOME``) to the
    environment, as Dagster's code servers need; put it back after each test, so a test
    that ran ``sdv load`` on a broken config does not hand that config to the next."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def sources() -> dict[str, Source]:
    return load_sources()


def write_delivery(
    landing: Path,
    source: Source,
    extract_date: str,
    tables: dict[str, list[Row]],
    *,
    manifest: bool = True,
    encoding: str = "utf-8",
    headers: dict[str, list[str]] | None = None,
) -> Path:
    """Write a delivery folder: each table's CSV in the spec's column order (or ``headers``),
    missing values as empty fields, plus a correct manifest unless told otherwise."""
    folder = landing / source.name / extract_date
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for table, rows in tables.items():
        columns = list(source.tables[table].columns)
        header = (headers or {}).get(table, columns)
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
        data = buffer.getvalue().encode(encoding)
        name = source.file_name(table)
        (folder / name).write_bytes(data)
        files[name] = {"rows": len(rows), "sha256": hashlib.sha256(data).hexdigest()}
    if manifest:
        (folder / "manifest.json").write_text(
            json.dumps(
                {"source": source.name, "extract_date": extract_date, "files": files}, indent=2
            )
        )
    return folder


@pytest.fixture
def delivery_writer(tmp_path: Path, sources: dict[str, Source]) -> Callable[..., Path]:
    landing = tmp_path / "landing"

    def _write(source: str, extract_date: str, tables: dict[str, list[Row]], **kw) -> Path:
        return write_delivery(landing, sources[source], extract_date, tables, **kw)

    return _write


def police_person(nominal_id: str, **overrides: str | None) -> Row:
    row: Row = {
        "nominal_id": nominal_id,
        "forename": "Alfie",
        "surname": "Example",
        "dob": "2014-03-02",
        "age_at_incident": None,
        "sex": "M",
        "address_line_1": "1 Test Street",
        "town": "Testtown",
        "postcode": "zz9 9zz",
        "pnc_id": None,
    }
    row.update(overrides)
    return row


def police_tables(n: int = 3, **person_overrides: str | None) -> dict[str, list[Row]]:
    """A small valid police delivery: n nominals, one incident, everyone involved."""
    persons = [police_person(f"N{i}", **person_overrides) for i in range(1, n + 1)]
    incidents = [
        {
            "incident_ref": "INC1",
            "occurred_at": "2026-11-01T22:15:00",
            "incident_type": "domestic_abuse",
            "offence": None,
            "dash_risk": "medium",
            "encompass_notified": "true",
            "location_postcode": "ZZ9 9ZZ",
        }
    ]
    involvements = [
        {"incident_ref": "INC1", "nominal_id": p["nominal_id"], "role": "victim"} for p in persons
    ]
    return {"persons": persons, "incidents": incidents, "involvements": involvements}


def sdv_load(landing: Path, data_dir: Path, config: Path | None = None):
    """Run ``sdv load`` as a user would (through Dagster, in-process) and return the result."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    args = ["load", "--landing", str(landing), "--data-dir", str(data_dir)]
    return CliRunner().invoke(app, args + (["--config", str(config)] if config else []))


@pytest.fixture
def engine(tmp_path):
    """An empty operational store (SQLite, in a folder not yet made: the engine makes it)
    with every table created: audit, review, restriction and the rest."""
    from warehouse.operational import engine_for, ensure_schema

    engine = engine_for(f"sqlite:///{tmp_path / 'op' / 'operational.db'}")
    ensure_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def published_county(tmp_path_factory):
    """A generated county loaded, linked and published once (see family_view_county.py)."""
    from family_view_county import make_county

    return make_county(tmp_path_factory.mktemp("family_view") / "county")


def to_per_delivery_layout(con, *, keep_hashes: bool = True) -> None:
    """Rewrite a warehouse's ingest tables as they were stored before each record was
    kept once: every delivery's copy of every record in ``raw`` and ``staged``, no
    ``delivered`` (and, without ``keep_hashes``, staged rows without their hashes, as
    before those existed). For the tests of :func:`warehouse.store.migrate_layout`."""
    from warehouse.store import per_delivery_sql

    names = [
        n
        for (n,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'delivered'"
        ).fetchall()
    ]
    for name in names:
        for schema in ("raw", "staged"):
            drop = "_record_hash" if schema == "raw" or not keep_hashes else None
            exclude = f" EXCLUDE ({drop})" if drop else ""
            con.execute(
                f"CREATE TEMP TABLE _old AS SELECT *{exclude} FROM "
                f"({per_delivery_sql(schema, name)}) ORDER BY _extract_date, _row_number"
            )
            con.execute(f'DROP TABLE {schema}."{name}"')
            con.execute(f'CREATE TABLE {schema}."{name}" AS SELECT * FROM _old')
            con.execute("DROP TABLE _old")
        con.execute(f'DROP TABLE delivered."{name}"')
        con.execute(
            f'CREATE OR REPLACE VIEW current."{name}" AS SELECT * FROM staged."{name}" '
            "WHERE _extract_date = (SELECT max(extract_date) FROM meta.deliveries "
            f"WHERE source = '{name.split('__')[0]}' AND status = 'loaded')"
        )
