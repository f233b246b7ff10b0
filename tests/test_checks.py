"""Asset checks pass and fail on what was actually loaded, with thresholds from config."""

from datetime import date

import dagster as dg
from conftest import police_tables

from pipelines.definitions import build_defs
from pipelines.settings import Settings
from warehouse.sources import DEFAULT_CONFIG_DIR


def run_police(tmp_path, delivery_writer, tables, day="2026-11-20"):
    delivery_writer("police", day, tables)
    settings = Settings(tmp_path, tmp_path / "landing", tmp_path / "w.duckdb", DEFAULT_CONFIG_DIR)
    defs = build_defs(settings)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("police_deliveries", [day])
    result = defs.resolve_job_def("ingest_police_job").execute_in_process(
        partition_key=day, instance=instance, raise_on_error=False
    )
    return result, {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in result.get_asset_check_evaluations()
    }


def test_checks_pass_on_a_clean_recent_delivery(tmp_path, delivery_writer):
    result, checks = run_police(
        tmp_path, delivery_writer, police_tables(5), day=date.today().isoformat()
    )
    assert result.success
    assert all(e.passed for e in checks.values()), {k: e.passed for k, e in checks.items()}
    rows = checks[("raw/police/persons", "manifest_row_count")].metadata
    assert rows["delivered"].value == rows["raw"].value == 5


def test_validity_below_threshold_quarantine_rate_and_staleness_fail(tmp_path, delivery_writer):
    tables = police_tables(10, postcode="not a postcode")  # threshold in config: 0.9
    tables["persons"][0]["forename"] = None  # 1 of 10 quarantined; allowed 2%
    result, checks = run_police(tmp_path, delivery_writer, tables, day="2020-01-06")
    assert result.success  # warnings do not stop the load: they show in the UI
    validity = checks[("staged/police/persons", "postcode_validity")]
    assert not validity.passed
    assert validity.metadata["valid"].value == 0 and validity.metadata["present"].value == 9
    assert not checks[("quarantine/police/persons", "quarantine_rate")].passed
    assert checks[("staged/police/persons", "required_columns")].passed
    freshness = checks[("staged/police/persons", "source_freshness")]
    assert not freshness.passed
    assert freshness.metadata["latest_extract_date"].value == "2020-01-06"


def test_a_delivery_much_smaller_than_the_last_is_flagged(tmp_path, delivery_writer):
    """A full snapshot that lost most of its rows (an export cut short after its header)
    loads, but its people would drop out of the view: the check says so, by how much and
    against which delivery; a table of the same size passes."""
    run_police(tmp_path, delivery_writer, police_tables(10), day="2026-11-19")
    result, checks = run_police(tmp_path, delivery_writer, police_tables(2), day="2026-11-20")
    assert result.success  # a warning: the data engineer decides
    shrunk = checks[("raw/police/persons", "row_count_steady")]
    assert not shrunk.passed and shrunk.severity == dg.AssetCheckSeverity.WARN
    assert shrunk.metadata["rows"].value == 2 and shrunk.metadata["previous_rows"].value == 10
    assert shrunk.metadata["previous_extract_date"].value == "2026-11-19"
    assert shrunk.metadata["drop"].value == 0.8
    assert checks[("raw/police/incidents", "row_count_steady")].passed  # 1 then 1


def test_rejected_delivery_fails_the_run_with_file_and_reason(tmp_path, delivery_writer):
    folder = delivery_writer("police", "2026-11-20", police_tables(2))
    (folder / "incidents.csv").write_bytes(b"incident_ref\r\nX\r\n")
    settings = Settings(tmp_path, tmp_path / "landing", tmp_path / "w.duckdb", DEFAULT_CONFIG_DIR)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("police_deliveries", ["2026-11-20"])
    result = (
        build_defs(settings)
        .resolve_job_def("ingest_police_job")
        .execute_in_process(partition_key="2026-11-20", instance=instance, raise_on_error=False)
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "nothing loaded" in failure.description
    assert failure.metadata["file"].value.endswith("incidents.csv")
    assert "does not match manifest" in failure.metadata["reason"].value


def test_rerunning_a_partition_whose_folder_retention_destroyed_says_so(
    tmp_path, delivery_writer, sources
):
    """The landing zone empties itself; re-running an old partition in the UI must say
    the folder went by retention (its records stay), not reject a delivery that loaded."""
    from datetime import timedelta

    from warehouse import landing_retention
    from warehouse.store import connect

    day = "2026-11-20"
    result, _ = run_police(tmp_path, delivery_writer, police_tables(3), day=day)
    assert result.success
    con = connect(tmp_path / "w.duckdb")
    try:
        far = date.today() + timedelta(days=400)
        gone = landing_retention.expired(con, tmp_path / "landing", sources, far)
        landing_retention.destroy(con, "run-1", gone)
    finally:
        con.close()

    settings = Settings(tmp_path, tmp_path / "landing", tmp_path / "w.duckdb", DEFAULT_CONFIG_DIR)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("police_deliveries", [day])
    again = (
        build_defs(settings)
        .resolve_job_def("ingest_police_job")
        .execute_in_process(partition_key=day, instance=instance, raise_on_error=False)
    )
    assert not again.success
    failure = again.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure.description.startswith("No delivery, nothing loaded: ")
    assert failure.metadata["file"].value == str(tmp_path / "landing" / "police" / day)
    reason = failure.metadata["reason"].value
    assert f"destroyed by landing retention on {date.today()}" in reason
    assert "the warehouse keeps the records it delivered" in reason
    con = connect(tmp_path / "w.duckdb")
    try:
        statuses = con.execute("SELECT status FROM meta.deliveries").fetchall()
        persons = con.execute('SELECT count(*) FROM current."police__persons"').fetchall()
    finally:
        con.close()
    assert statuses == [("loaded",)] and persons == [(3,)]
