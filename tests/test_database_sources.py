"""A source table read through SQLAlchemy instead of files: SQLite and real PostgreSQL."""

import shutil
from datetime import date, datetime

import duckdb
import pytest
import sqlalchemy as sa
import yaml
from conftest import sdv_load
from postgres import postgres_cluster

from warehouse.landing import Delivery, DeliveryError
from warehouse.sources import DEFAULT_CONFIG_DIR, load_sources
from warehouse.store import connect, load_delivery

# The case-management system's own column names for nominals.
NOMINAL_COLUMNS = {
    "NominalRef": "nominal_id",
    "GivenName": "forename",
    "FamilyName": "surname",
    "BirthDate": "dob",
    "AgeAtIncident": "age_at_incident",
    "Sex": "sex",
    "Address1": "address_line_1",
    "Town": "town",
    "Postcode": "postcode",
    "PncId": "pnc_id",
}


def populate(url: str) -> None:
    """Tables as a police case-management system would hold them (real SQL types)."""
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    nominals = sa.Table(
        "nominals",
        meta,
        sa.Column("NominalRef", sa.String, primary_key=True),
        sa.Column("GivenName", sa.String),
        sa.Column("FamilyName", sa.String),
        sa.Column("BirthDate", sa.Date),
        sa.Column("AgeAtIncident", sa.Integer),
        sa.Column("Sex", sa.String),
        sa.Column("Address1", sa.String),
        sa.Column("Town", sa.String),
        sa.Column("Postcode", sa.String),
        sa.Column("PncId", sa.String),
    )
    incidents = sa.Table(
        "incidents",
        meta,
        sa.Column("incident_ref", sa.String, primary_key=True),
        sa.Column("occurred_at", sa.DateTime),
        sa.Column("incident_type", sa.String),
        sa.Column("offence", sa.String),
        sa.Column("dash_risk", sa.String),
        sa.Column("encompass_notified", sa.Boolean),
        sa.Column("location_postcode", sa.String),
    )
    involvements = sa.Table(
        "involvements",
        meta,
        sa.Column("incident_ref", sa.String),
        sa.Column("nominal_id", sa.String),
        sa.Column("role", sa.String),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        blank = dict.fromkeys(c.name for c in nominals.columns)
        conn.execute(
            nominals.insert(),
            [
                {**blank, **row}
                for row in [
                    {
                        "NominalRef": "N2",
                        "GivenName": "Bea",
                        "FamilyName": "Test",
                        "BirthDate": date(2015, 6, 1),
                        "Sex": "F",
                        "Postcode": "ta1 2dy",
                    },
                    {
                        "NominalRef": "N1",
                        "GivenName": "Alfie",
                        "FamilyName": "Test",
                        "AgeAtIncident": 8,
                        "Sex": "M",
                    },
                    {"NominalRef": "N3", "GivenName": None, "FamilyName": "Test", "Sex": "M"},
                ]
            ],
        )
        conn.execute(
            incidents.insert(),
            [
                {
                    "offence": None,
                    "location_postcode": None,
                    "incident_ref": "I1",
                    "occurred_at": datetime(2026, 11, 1, 22, 15),
                    "incident_type": "domestic_abuse",
                    "dash_risk": "high",
                    "encompass_notified": True,
                },
            ],
        )
        conn.execute(
            involvements.insert(),
            [
                {"incident_ref": "I1", "nominal_id": "N1", "role": "child_present"},
                {"incident_ref": "I1", "nominal_id": "N2", "role": "child_present"},
            ],
        )
    engine.dispose()


def database_config(tmp_path, url: str):
    """The shipped config with police read from a database instead of files."""
    config = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, config)
    path = config / "sources" / "police.yaml"
    data = yaml.safe_load(path.read_text())
    for table in ("persons", "incidents", "involvements"):
        data["tables"][table]["database"] = {
            "url": url,
            "table": "nominals" if table == "persons" else table,
        }
    data["tables"]["persons"]["renames"] = NOMINAL_COLUMNS
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def check_loaded(con) -> None:
    persons = con.execute(
        "SELECT nominal_id, forename, dob, age_at_incident, postcode, _source_file "
        'FROM current."police__persons" ORDER BY 1'
    ).fetchall()
    assert persons == [
        ("N1", "Alfie", None, 8, None, "db:nominals"),
        ("N2", "Bea", date(2015, 6, 1), None, "TA1 2DY", "db:nominals"),
    ]
    quarantined = con.execute(
        'SELECT nominal_id, _reason_code FROM quarantine."police__persons"'
    ).fetchall()
    assert quarantined == [("N3", "missing_required")]
    incident = con.execute(
        'SELECT occurred_at, encompass_notified FROM current."police__incidents"'
    ).fetchall()
    assert incident == [(datetime(2026, 11, 1, 22, 15), True)]


def test_sqlite_source_loads_and_reloads_unchanged(tmp_path):
    url = f"sqlite:///{tmp_path / 'cms.sqlite'}"
    populate(url)
    source = load_sources(database_config(tmp_path, url))["police"]
    assert source.reads_database
    con = connect(tmp_path / "w.duckdb")
    delivery = Delivery("police", date(2026, 11, 20), tmp_path / "landing" / "police" / "x")
    first = load_delivery(con, delivery, source)
    assert first.status == "loaded"
    check_loaded(con)
    assert load_delivery(con, delivery, source).status == "unchanged"
    con.close()


def test_unreachable_database_is_a_clear_rejection(tmp_path):
    url = f"sqlite:///{tmp_path / 'missing' / 'cms.sqlite'}"
    source = load_sources(database_config(tmp_path, url))["police"]
    con = connect(tmp_path / "w.duckdb")
    with pytest.raises(DeliveryError) as err:
        load_delivery(con, Delivery("police", date(2026, 11, 20), tmp_path), source)
    assert err.value.path == "db:nominals"
    assert err.value.reason.startswith("database read failed: OperationalError: ")
    # The rejection is on record, with the same words, for the load report; nothing of
    # the delivery was written.
    recorded = con.execute(
        "SELECT source, extract_date, status, origin, error FROM meta.deliveries"
    ).fetchall()
    assert recorded == [("police", date(2026, 11, 20), "rejected", str(tmp_path), str(err.value))]
    assert con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'police__%'"
    ).fetchall() == [(0,)]
    con.close()


@pytest.mark.postgres
def test_postgresql_source_loads_through_sdv_load(tmp_path, monkeypatch):
    with postgres_cluster() as url:
        populate(url)
        # Credentials stay out of YAML: the url is taken from the environment.
        monkeypatch.setenv("SDV_TEST_POLICE_DB", url)
        config = database_config(tmp_path, "${SDV_TEST_POLICE_DB}")
        data_dir = tmp_path / "data"
        (tmp_path / "landing").mkdir()  # the file sources' zone: there, and empty tonight
        result = sdv_load(tmp_path / "landing", data_dir, config)
        assert result.exit_code == 0, result.output
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    check_loaded(con)
    con.close()
