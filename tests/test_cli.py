"""`sdv load` end to end through Dagster: an agency's own export loads through config alone,
and a broken delivery is reported by file and reason with nothing of it loaded; `sdv
nightly` loads, links and publishes past a refused delivery and says so."""

import csv
import io
import json
import shutil
from datetime import date, datetime

import duckdb
import pytest
import yaml
from conftest import police_tables, sdv_load, write_delivery
from typer.testing import CliRunner

from pipelines.cli import app
from warehouse.sources import DEFAULT_CONFIG_DIR, load_sources

AGENCY_HEADERS = {
    "Nominal Ref": "nominal_id",
    "First Name": "forename",
    "Last Name": "surname",
    "Date Of Birth": "dob",
    "Age": "age_at_incident",
    "Gender": "sex",
    "Address 1": "address_line_1",
    "Town/City": "town",
    "Post Code": "postcode",
    "PNC": "pnc_id",
}


@pytest.fixture
def agency_config(tmp_path):
    """The shipped config, with police exporting its own headers, dd/mm/yyyy, Windows-1252."""
    config = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, config)
    path = config / "sources" / "police.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(
        encoding="windows-1252",
        date_formats=["%d/%m/%Y"],
        timestamp_formats=["%d/%m/%Y %H:%M"],
        true_values=["Y"],
        false_values=["N"],
    )
    data["tables"]["persons"]["renames"] = AGENCY_HEADERS
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return config


def test_agency_headers_in_windows_1252_load_through_config_alone(tmp_path, agency_config):
    landing = tmp_path / "landing"
    folder = landing / "police" / "2026-11-20"
    folder.mkdir(parents=True)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(AGENCY_HEADERS)
    writer.writerow(
        ["N1", "Zoë", "O’Brien", "02/03/2014", "", "F", "1 Rue Café", "Testtown", "ta1 2dy", ""]
    )
    writer.writerow(["N2", "Seán", "Ó Súilleabháin", "", "9", "M", "", "", "", ""])
    (folder / "persons.csv").write_bytes(buffer.getvalue().encode("cp1252"))
    (folder / "incidents.csv").write_bytes(
        "incident_ref,occurred_at,incident_type,offence,dash_risk,encompass_notified,"
        "location_postcode\r\nINC1,01/11/2026 22:15,domestic_abuse,,high,Y,TA1 2DY\r\n".encode(
            "cp1252"
        )
    )
    (folder / "involvements.csv").write_bytes(
        b"incident_ref,nominal_id,role\r\nINC1,N1,victim\r\nINC1,N2,child_present\r\n"
    )

    data_dir = tmp_path / "data"
    result = sdv_load(landing, data_dir, agency_config)
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    persons = con.execute(
        "SELECT nominal_id, forename, surname, dob, age_at_incident, postcode "
        'FROM current."police__persons" ORDER BY 1'
    ).fetchall()
    incident = con.execute(
        'SELECT occurred_at, encompass_notified FROM current."police__incidents"'
    ).fetchall()
    quarantined = con.execute('SELECT count(*) FROM quarantine."police__persons"').fetchall()
    con.close()
    assert persons == [
        ("N1", "Zoë", "O’Brien", date(2014, 3, 2), None, "TA1 2DY"),
        ("N2", "Seán", "Ó Súilleabháin", None, 9, None),
    ]
    assert incident == [(datetime(2026, 11, 1, 22, 15), True)]
    assert quarantined == [(0,)]


def test_rejected_delivery_is_reported_and_nothing_loaded(tmp_path):
    sources = load_sources()
    landing = tmp_path / "landing"
    good = write_delivery(landing, sources["police"], "2026-11-19", police_tables(2))
    bad = write_delivery(landing, sources["police"], "2026-11-20", police_tables(3))
    (bad / "persons.csv").write_bytes((bad / "persons.csv").read_bytes() + b"N9,X,Y,,,,,,,\r\n")
    data_dir = tmp_path / "data"
    result = sdv_load(landing, data_dir)
    assert result.exit_code == 1
    assert "REJECTED" in result.output and "police 2026-11-20" in result.output
    assert "persons.csv" in result.output and "does not match manifest" in result.output
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    dates = con.execute('SELECT DISTINCT _extract_date FROM raw."police__persons"').fetchall()
    con.close()
    assert dates == [(date(2026, 11, 19),)]
    assert good.exists()


def test_invalid_config_stops_load_with_file_and_key(tmp_path):
    config = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, config)
    path = config / "sources" / "health.yaml"
    path.write_text(path.read_text().replace("freshness_days: 2", "freshness_days: soon"))
    result = sdv_load(tmp_path, tmp_path / "d", config)
    assert result.exit_code == 2
    assert "health.yaml" in result.output and "freshness_days" in result.output


def test_sdv_nightly_publishes_what_loaded_and_exits_1_for_a_refused_delivery(
    published_county, tmp_path, monkeypatch
):
    """As under the schedules, a refused delivery does not stop the night: its source keeps
    last night's delivery, the rest is linked and published, and the command says what was
    refused and exits 1."""
    for name in ("SDV_DATA_DIR", "SDV_LANDING", "SDV_WAREHOUSE", "SDV_CONFIG_DIR"):
        monkeypatch.setenv(name, "")  # the command exports its settings: put them back after
    monkeypatch.setenv("SDV_OPERATIONAL_URL", "")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    county = published_county.copy(tmp_path / "county")
    landing, tonight = tmp_path / "tonight", "2026-11-21"  # the day after the county's date
    county.deliver_again("health", landing, tonight)
    police = county.deliver_again("police", landing, tonight)
    persons = police / "persons.csv"
    persons.write_bytes(persons.read_bytes()[:-200])  # cut short: the manifest disagrees
    args = ["nightly", "--landing", str(landing), "--data-dir", str(county.data)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"REJECTED police {tonight}" in result.output and "persons.csv" in result.output
    assert "Linked " in result.output
    assert f"Published Family View as of {tonight}" in result.output
    pointer = json.loads((county.published / "CURRENT.json").read_text())
    assert pointer["as_of"] == tonight
    con = duckdb.connect(str(county.warehouse), read_only=True)
    try:
        current = dict(
            con.execute(
                "SELECT source, max(extract_date)::VARCHAR FROM meta.deliveries "
                "WHERE status = 'loaded' GROUP BY source"
            ).fetchall()
        )
    finally:
        con.close()
    assert current["health"] == tonight and current["police"] == "2026-11-20"
