"""The Dagster definitions: built from config, one writer at a time, checks and triggers."""

import shutil

import dagster as dg
import yaml

from pipelines.definitions import build_defs
from pipelines.settings import Settings
from warehouse.sources import DEFAULT_CONFIG_DIR


def defs_for(tmp_path, config=DEFAULT_CONFIG_DIR) -> dg.Definitions:
    return build_defs(Settings(tmp_path, tmp_path / "landing", tmp_path / "w.duckdb", config))


def test_every_configured_table_has_raw_staged_and_quarantine_assets(tmp_path, sources):
    graph = defs_for(tmp_path).resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    expected = {
        f"{layer}/{s}/{t}"
        for s, src in sources.items()
        for t in src.tables
        for layer in ("raw", "staged", "quarantine")
    }
    linkage = {"linkage_model", "linked/person_records", "linked/household_members"}
    family_view = {"curated/family_view_snapshot", "curated/published_family_view"}
    assert keys == expected | linkage | family_view | {"retention"}
    assert len(expected) == 42


def test_every_step_that_opens_the_warehouse_is_in_the_single_writer_pool(tmp_path):
    """DuckDB lets one process open a file for writing and no other process open it then,
    not even to read: an asset check reading the warehouse while another run loads fails
    that run (found by tests/test_daemon.py). So every step holding the resource queues."""
    defs = defs_for(tmp_path)
    for assets_def in defs.assets:
        assert assets_def.op.pool == "duckdb_writer", assets_def.node_def.name
    steps = defs.resolve_asset_graph().assets_defs
    readers = [d for d in steps if "warehouse" in d.required_resource_keys]
    assert len(readers) > len(list(defs.assets))  # the checks that read it are counted too
    for step in readers:
        assert step.node_def.pool == "duckdb_writer", step.node_def.name
    instance_config = yaml.safe_load((DEFAULT_CONFIG_DIR.parent / "dagster.yaml").read_text())
    assert instance_config["concurrency"]["pools"]["default_limit"] == 1


def test_checks_cover_row_counts_required_columns_validity_and_freshness(tmp_path):
    graph = defs_for(tmp_path).resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert ("raw/health/patients", "manifest_row_count") in checks
    assert ("raw/school/exclusions", "row_count_steady") in checks
    assert ("staged/health/patients", "required_columns") in checks
    assert ("staged/health/patients", "nhs_number_validity") in checks
    assert ("staged/school/pupils", "upn_validity") in checks
    assert ("quarantine/police/persons", "quarantine_rate") in checks
    freshness = {a for a, name in checks if name == "source_freshness"}
    assert {a.split("/")[1] for a in freshness} == {
        "council_csc",
        "council_eh",
        "police",
        "health",
        "school",
    }


def test_sensor_and_nightly_schedules_exist(tmp_path, sources):
    defs = defs_for(tmp_path)
    assert defs.resolve_sensor_def("delivery_sensor") is not None
    schedules = {s.name: s for s in defs.schedules}
    for name in sources:
        schedule = schedules[f"nightly_{name}"]
        assert schedule.cron_schedule == "30 1 * * *"
        assert schedule.execution_timezone == "Europe/London"
    assert "nightly_source_freshness" in schedules


def test_a_new_source_is_a_config_change(tmp_path):
    config = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, config)
    shutil.copy(config / "sources" / "police.yaml", config / "sources" / "police_west.yaml")
    defs = defs_for(tmp_path, config)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw/police_west/persons", "staged/police_west/incidents"} <= keys
    assert defs.resolve_job_def("ingest_police_west_job") is not None
    assert "nightly_police_west" in {s.name for s in defs.schedules}


def test_family_view_is_published_only_after_blocking_checks(tmp_path):
    defs = defs_for(tmp_path)
    graph = defs.resolve_asset_graph()
    snapshot = dg.AssetKey(["curated", "family_view_snapshot"])
    published = dg.AssetKey(["curated", "published_family_view"])
    checks = {k.name: k for k in graph.asset_check_keys if k.asset_key == snapshot}
    assert {
        "schema_matches_dictionary",
        "every_person_curated",
        "one_summary_per_child",
        "analyst_file_pseudonymised",
    } <= set(checks)
    specs = {spec.name: spec for spec in defs.get_assets_def(snapshot).check_specs}
    assert all(spec.blocking for spec in specs.values())
    assert snapshot in graph.get(published).parent_keys
    job = defs.resolve_job_def("publish_family_view")
    assert {n.name for n in job.nodes} >= {"curated__family_view_snapshot"}
    schedules = {s.name: s for s in defs.schedules}
    nightly = schedules["nightly_family_view"]
    assert nightly.cron_schedule == "30 3 * * *"
    # Linkage and publishing share one run: a snapshot is built only from a linkage that
    # succeeded and passed its blocking hard-rule check.
    assert nightly.job_name == "link_and_publish"
    nodes = {n.name for n in defs.resolve_job_def("link_and_publish").nodes}
    assert nodes == {
        "person_links",
        "linked__person_records_no_oversized_persons",
        "curated__family_view_snapshot",
        "curated__published_family_view",
    }
    linkage = defs.get_assets_def(dg.AssetKey(["linked", "person_records"]))
    assert {s.name: s.blocking for s in linkage.check_specs} == {"hard_rules_hold": True}


def test_retention_runs_nightly_after_loads_and_before_linkage(tmp_path, sources):
    defs = defs_for(tmp_path)
    retention = dg.AssetKey(["retention"])
    parents = defs.resolve_asset_graph().get(retention).parent_keys
    assert dg.AssetKey(["quarantine", "school", "pupils"]) in parents
    assert len(parents) == 42
    job = defs.resolve_job_def("apply_retention")
    assert {n.name for n in job.nodes} == {"retention"}
    schedules = {s.name: s for s in defs.schedules}
    assert schedules["nightly_retention"].cron_schedule == "0 3 * * *"

    def at(name: str) -> tuple[int, int]:
        minute, hour = schedules[name].cron_schedule.split()[:2]
        return int(hour), int(minute)

    assert at("nightly_police") < at("nightly_retention") < at("nightly_family_view")
