"""The one Definitions object: what `dagster dev`, `dg check defs` and `sdv load` all load.

Everything is built from configuration: each ``config/sources/*.yaml`` yields its ingest
assets, checks, job and nightly schedule. Invalid configuration stops loading here with a
message naming the file and key.
"""

from __future__ import annotations

import dagster as dg

from assets.ingest import build_freshness_checks, build_ingest_assets
from pipelines.resources import build_resources
from pipelines.schedules import build_freshness_schedule, build_nightly_schedule
from pipelines.sensors import build_delivery_sensor, ingest_job_name
from pipelines.settings import Settings
from warehouse.sources import load_sources


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
    return dg.Definitions(
        assets=list(assets.values()),
        asset_checks=freshness,
        jobs=[*jobs.values(), freshness_job],
        sensors=[build_delivery_sensor(sources, list(jobs.values()))],
        schedules=[
            *(build_nightly_schedule(sources[n], jobs[n]) for n in sources),
            build_freshness_schedule(freshness_job),
        ],
        resources=build_resources(settings),
    )


defs = build_defs(Settings.from_env())
