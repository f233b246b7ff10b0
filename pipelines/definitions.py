"""The one Definitions object: what `dagster dev`, `dg check defs` and `sdv load` all load.

Everything is built from configuration: each ``config/sources/*.yaml`` yields its ingest
assets, checks, job and nightly schedule; ``config/linkage.yaml`` the linkage assets;
``config/curated.yaml`` the Family View assets.
Invalid configuration stops loading here with a message naming the file and key.
"""

from __future__ import annotations

import dagster as dg

from assets.family_view import PUBLISHED, SNAPSHOT, build_family_view_assets
from assets.ingest import build_freshness_checks, build_ingest_assets
from assets.linkage import HOUSEHOLD_MEMBERS, MODEL, PERSON_RECORDS, build_linkage_assets
from assets.retention import RETENTION, build_retention_asset
from matching.config import load_linkage_config
from pipelines.resources import build_resources
from pipelines.schedules import (
    build_family_view_schedule,
    build_freshness_schedule,
    build_nightly_schedule,
    build_retention_schedule,
)
from pipelines.sensors import build_delivery_sensor, ingest_job_name
from pipelines.settings import Settings
from warehouse.audit_config import load_audit_config
from warehouse.curated_config import load_curated_config
from warehouse.sources import load_sources

LINK_JOB = "link_persons"
NIGHTLY_JOB = "link_and_publish"
TRAIN_JOB = "train_linkage_model"
PUBLISH_JOB = "publish_family_view"
RETENTION_JOB = "apply_retention"


def build_defs(settings: Settings) -> dg.Definitions:
    sources = load_sources(settings.config_dir)
    assets = {name: build_ingest_assets(source) for name, source in sources.items()}
    freshness = [build_freshness_checks(source) for source in sources.values()]
    jobs = {
        name: dg.define_asset_job(
            ingest_job_name(name),
            selection=dg.AssetSelection.assets(assets[name]),
            description=f"Load one {name} delivery (partition = extract date).",
        )
        for name, source in sources.items()
    }
    freshness_job = dg.define_asset_job(
        "source_freshness_job",
        selection=dg.AssetSelection.checks(*freshness),
        description="Check every source has delivered recently.",
    )
    linkage_config = load_linkage_config(settings.linkage_config)
    linkage, linkage_checks = build_linkage_assets(linkage_config)
    curated = load_curated_config(settings.curated_config)
    family_view = build_family_view_assets(linkage_config, curated, sources)
    publish_job = dg.define_asset_job(
        PUBLISH_JOB,
        selection=dg.AssetSelection.assets(SNAPSHOT, PUBLISHED),
        description="Build, check and publish tonight's Family View snapshot.",
    )
    link_job = dg.define_asset_job(
        LINK_JOB,
        selection=dg.AssetSelection.assets(PERSON_RECORDS, HOUSEHOLD_MEMBERS),
        description="Resolve every person-level record to a stable person and household.",
    )
    nightly_job = dg.define_asset_job(
        NIGHTLY_JOB,
        selection=dg.AssetSelection.assets(PERSON_RECORDS, HOUSEHOLD_MEMBERS, SNAPSHOT, PUBLISHED),
        description="The night after the loads, in one run: link, then build, check and "
        "publish the Family View from that linkage. Nothing is built from a linkage that "
        "failed or broke a hard rule (a blocking check).",
    )
    train_job = dg.define_asset_job(
        TRAIN_JOB,
        selection=dg.AssetSelection.assets(MODEL),
        description="Train and save a new version of the Splink linkage model.",
    )
    retention = build_retention_asset(sources, load_audit_config(settings.config_dir), curated)
    retention_job = dg.define_asset_job(
        RETENTION_JOB,
        selection=dg.AssetSelection.assets(RETENTION),
        description="Destroy what each source's retention period no longer allows.",
    )
    return dg.Definitions(
        assets=[*assets.values(), *linkage, *family_view, retention],
        asset_checks=[*freshness, *linkage_checks],
        jobs=[
            *jobs.values(),
            freshness_job,
            link_job,
            nightly_job,
            train_job,
            publish_job,
            retention_job,
        ],
        sensors=[build_delivery_sensor(sources, list(jobs.values()))],
        schedules=[
            *(build_nightly_schedule(sources[n], jobs[n]) for n in sources),
            build_freshness_schedule(freshness_job),
            build_retention_schedule(retention_job),
            build_family_view_schedule(nightly_job),
        ],
        resources=build_resources(settings),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location's definitions, for ``dagster dev``, ``dg check defs`` and the code
    server, built from the environment when they load them. Built lazily (Dagster's
    preferred form), so a process importing this module for its job names or for
    :func:`build_defs` (every ``sdv`` job command, each run of the benchmark) does not
    build them an extra time."""
    return build_defs(Settings.from_env())
