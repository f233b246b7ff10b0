"""`sdv load` end to end through Dagster: an agency's own export loads through config alone,
a broken delivery is reported by file and reason with nothing of it loaded, and a folder
already loaded is not run again until it changes; `sdv nightly` loads, links and
publishes past a refused delivery and says so."""

import csv
import io
import json
import os
import shutil
from datetime import date, datetime

import dagster as dg
import duckdb
import polars as pl
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


def _ingest_runs(data_dir) -> list[str]:
    """The partitions ``sdv load`` started a run for, oldest first, from the data dir's
    Dagster instance."""
    with dg.DagsterInstance.from_config(str(data_dir / "dagster")) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"sdv/trigger": "sdv load"}))
    return [f"{r.tags['sdv/source']} {r.tags['dagster/partition']}" for r in reversed(runs)]


def _deliveries(data_dir) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(
            "SELECT source, extract_date::VARCHAR, status, delivery_id FROM meta.deliveries "
            "ORDER BY recorded_at"
        ).fetchall()
    finally:
        con.close()


def test_a_folder_already_loaded_is_not_run_again_until_it_changes(tmp_path):
    """The landing zone keeps every delivery: a nightly `sdv load` must not start a run
    for each folder ever delivered, only for what is new or changed."""
    sources = load_sources()
    landing, data_dir = tmp_path / "landing", tmp_path / "data"
    older = write_delivery(landing, sources["police"], "2026-11-19", police_tables(2))
    newer = write_delivery(landing, sources["police"], "2026-11-20", police_tables(3))
    assert sdv_load(landing, data_dir).exit_code == 0
    assert _ingest_runs(data_dir) == ["police 2026-11-19", "police 2026-11-20"]
    loaded = _deliveries(data_dir)

    again = sdv_load(landing, data_dir)
    assert again.exit_code == 0, again.output
    assert _ingest_runs(data_dir) == ["police 2026-11-19", "police 2026-11-20"]
    assert "Not run again: 2 delivery folder(s) already loaded" in again.output
    assert "police 2026-11-20" in again.output
    assert _deliveries(data_dir) == loaded

    # Touched, bytes the same: one run finds it unchanged and records the folder afresh.
    stamp = (older / "persons.csv").stat().st_mtime + 60
    os.utime(older / "persons.csv", (stamp, stamp))
    touched = sdv_load(landing, data_dir)
    assert touched.exit_code == 0, touched.output
    assert "Unchanged (already loaded, nothing written): police 2026-11-19" in touched.output
    assert _ingest_runs(data_dir)[2:] == ["police 2026-11-19"]
    assert sdv_load(landing, data_dir).exit_code == 0
    assert len(_ingest_runs(data_dir)) == 3
    assert _deliveries(data_dir) == loaded

    # Re-sent with different content under the same date: loaded, replacing the first.
    shutil.rmtree(newer)
    write_delivery(landing, sources["police"], "2026-11-20", police_tables(4))
    changed = sdv_load(landing, data_dir)
    assert changed.exit_code == 0, changed.output
    assert _ingest_runs(data_dir)[3:] == ["police 2026-11-20"]
    statuses = [(source, day, status) for source, day, status, _ in _deliveries(data_dir)]
    assert statuses == [
        ("police", "2026-11-19", "loaded"),
        ("police", "2026-11-20", "replaced"),
        ("police", "2026-11-20", "loaded"),
    ]


def test_a_rejected_folder_is_tried_again_at_every_load(tmp_path):
    """Only a loaded folder is left alone: a rejected one is reported (and the command
    fails) every time until the agency mends or withdraws it."""
    sources = load_sources()
    landing, data_dir = tmp_path / "landing", tmp_path / "data"
    bad = write_delivery(landing, sources["police"], "2026-11-20", police_tables(3))
    (bad / "persons.csv").write_bytes((bad / "persons.csv").read_bytes() + b"N9,X,Y,,,,,,,\r\n")
    for attempt in (1, 2):
        result = sdv_load(landing, data_dir)
        assert result.exit_code == 1
        assert "REJECTED police 2026-11-20" in result.output
        assert _ingest_runs(data_dir) == ["police 2026-11-20"] * attempt


def test_a_rebuilt_warehouse_loads_every_folder_again(tmp_path):
    """What is loaded is the warehouse's to say, not the run history's: a warehouse
    deleted to be rebuilt gets every delivery back, the Dagster history kept or not."""
    sources = load_sources()
    landing, data_dir = tmp_path / "landing", tmp_path / "data"
    write_delivery(landing, sources["police"], "2026-11-19", police_tables(2))
    write_delivery(landing, sources["police"], "2026-11-20", police_tables(3))
    assert sdv_load(landing, data_dir).exit_code == 0
    loaded = _deliveries(data_dir)
    (data_dir / "warehouse.duckdb").unlink()
    result = sdv_load(landing, data_dir)
    assert result.exit_code == 0, result.output
    assert "Not run again" not in result.output
    assert len(_ingest_runs(data_dir)) == 4
    assert _deliveries(data_dir) == loaded


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


def test_a_failed_run_prints_its_reason_and_run_not_dagsters_stack_trace(tmp_path, capfd):
    """The terminal gets the cause and where the full log is; the stack trace stays in the
    Dagster instance, where `sdv dev` shows it with the run."""
    data = tmp_path / "data"
    result = CliRunner().invoke(app, ["link", "--data-dir", str(data)])
    assert result.exit_code == 1
    printed = result.output + "".join(capfd.readouterr())
    assert "Linkage failed: no person-level rows in the warehouse yet" in printed
    assert f"its full log: sdv dev --data-dir {data}" in printed
    assert "Stack Trace" not in printed and "STEP_FAILURE" not in printed
    instance = dg.DagsterInstance.from_config(str(data / "dagster"))
    try:
        [run] = instance.get_runs()
        assert f"(run {run.run_id};" in printed
        failures = [
            e for e in instance.all_logs(run.run_id) if e.dagster_event_type == "STEP_FAILURE"
        ]
        assert failures  # the trace is kept where the UI reads it
    finally:
        instance.dispose()


def test_a_landing_zone_that_is_not_there_fails_the_load_but_an_empty_one_does_not(tmp_path):
    """An unmounted share or a mistyped --landing must not pass for a quiet night."""
    data = tmp_path / "data"
    missing = tmp_path / "share" / "landing"
    for command in ("load", "nightly"):
        result = CliRunner().invoke(
            app, [command, "--landing", str(missing), "--data-dir", str(data)]
        )
        assert result.exit_code == 1, result.output
        assert f"the landing zone {missing} is not there" in result.output
    assert not (data / "warehouse.duckdb").exists()
    missing.mkdir(parents=True)  # mounted, and nothing delivered tonight
    quiet = CliRunner().invoke(app, ["load", "--landing", str(missing), "--data-dir", str(data)])
    assert quiet.exit_code == 0, quiet.output
    assert f"No deliveries found under {missing}" in quiet.output


SHARE = ["--recipient", "police_west records team", "--reason", "stamp person ids on records"]


def test_exports_without_a_warehouse_say_so(tmp_path):
    for kind in ("links", "households"):
        result = CliRunner().invoke(
            app,
            ["export", kind, "--out", str(tmp_path / "x.csv"), *SHARE, "--data-dir", str(tmp_path)],
        )
        assert result.exit_code == 1
        assert f"No warehouse at {tmp_path / 'warehouse.duckdb'}" in result.output
        assert "Traceback" not in result.output


def test_an_export_is_a_share_recorded_before_the_file_is_written(
    published_county, tmp_path, monkeypatch
):
    """A file of every person's ids leaving the warehouse is a share: the audit trail
    records who made it, for whom, why, under config/audit.yaml's linkage_access, and
    every person in it, before the file exists. No recipient or reason, no file."""
    from pipelines import audit_cli
    from warehouse import audit
    from warehouse.operational import engine_for

    county = published_county.copy(tmp_path / "county")
    engine = engine_for(county.operational_url)
    exported = {}
    for kind in ("links", "households"):
        out_file = tmp_path / f"{kind}.csv"
        args = ["export", kind, "--out", str(out_file), "--data-dir", str(county.data)]
        missing = CliRunner().invoke(app, [*args, "--reason", "stamp person ids"])
        assert missing.exit_code == 2 and "--recipient" in missing.output
        blank = CliRunner().invoke(
            app, [*args, "--recipient", "police", "--reason", " ", "--by", "erin"]
        )
        assert blank.exit_code == 1 and "a reason" in blank.output
        monkeypatch.delenv("USER", raising=False)
        nobody = CliRunner().invoke(app, [*args, *SHARE])
        assert nobody.exit_code == 1 and "say who exports" in nobody.output
        assert not out_file.exists()
        result = CliRunner().invoke(app, [*args, *SHARE, "--by", "erin"])
        assert result.exit_code == 0, result.output
        assert "recorded as a share to police_west records team" in result.output
        exported[kind] = pl.read_csv(out_file, infer_schema=False)

    shares = [e for e in audit.events(engine) if e.action == audit.EXPORT]
    assert len(shares) == 2
    for event, kind, table in zip(
        shares, exported, ("linked.person_records", "linked.household_members"), strict=True
    ):
        frame = exported[kind]
        assert (event.user_id, event.role, event.purpose) == (
            "erin",
            "linkage_team",
            "identity_resolution",
        )
        assert "Art. 5(1)(d) accuracy" in event.lawful_basis
        assert event.columns == tuple(sorted(f"{table}.{c}" for c in frame.columns))
        assert set(event.person_ids) == set(frame["person_id"]) and len(event.person_ids) > 100
        assert event.detail == {
            "recipient": "police_west records team",
            "reason": "stamp person ids on records",
            "rows": frame.height,
            "file": f"{kind}.csv",
        }
    someone = exported["links"]["person_id"][0]
    events = json.loads(
        CliRunner()
        .invoke(app, ["audit", "--person", someone, "--json", "--data-dir", str(county.data)])
        .output
    )["events"]
    exports = [e for e in events if e["action"] == "export"]  # the shared county has reads
    assert [e["user_id"] for e in exports] == ["erin", "erin"]
    assert exports[0]["detail"]["recipient"] == "police_west records team"
    # The latest events list ten of an export's persons and say how many more: not
    # hundreds of lines (every id folds over two in a terminal 80 characters wide).
    latest = CliRunner().invoke(app, ["audit", "--limit", "2", "--data-dir", str(county.data)])
    assert latest.exit_code == 0 and len(latest.output.splitlines()) < 150
    cell = audit_cli._persons(shares[0]).splitlines()
    assert cell[:10] == list(shares[0].person_ids[:10])
    assert cell[10:] == [f"and {len(shares[0].person_ids) - 10:,} more (--json lists all)"]
    assert audit.verify(engine).ok
