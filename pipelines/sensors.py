"""The delivery sensor: start a load when a complete delivery lands, never a half-written one.

Completeness is decided by ``warehouse.landing.is_complete`` (manifest checksums, or all
expected files present and quiet for the source's settle period). The cursor remembers each
delivery folder's fingerprint, so a delivery is requested once, and again only if its files
are replaced.
"""

import json
from typing import Any

import dagster as dg

from assets.ingest import partitions_for
from assets.resources import LandingZone
from warehouse.landing import delivery_fingerprint, discover, is_complete, landing_missing
from warehouse.sources import Source

JobTarget = Any  # what dg.define_asset_job returns; its class is not public


def ingest_job_name(source: str) -> str:
    return f"ingest_{source}_job"


def build_delivery_sensor(sources: dict[str, Source], jobs: list[JobTarget]) -> dg.SensorDefinition:
    file_sources = {n: s for n, s in sources.items() if not s.reads_database}

    @dg.sensor(
        name="delivery_sensor",
        jobs=jobs,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts the source's ingest job when a complete delivery lands.",
    )
    def delivery_sensor(context: dg.SensorEvaluationContext, landing: LandingZone):
        missing = landing_missing(landing.root)
        if file_sources and missing:
            return dg.SkipReason(missing)
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        requests: list[dg.RunRequest] = []
        new_partitions: dict[str, list[str]] = {}
        for delivery in discover(landing.root, file_sources):
            source = file_sources[delivery.source]
            ident = f"{delivery.source}/{delivery.partition_key}"
            fingerprint = delivery_fingerprint(delivery)  # cheap: names, sizes, mtimes
            if seen.get(ident) == fingerprint:
                continue  # already requested; don't re-hash old deliveries every tick
            if not is_complete(delivery, source):
                context.log.info(f"{delivery.folder}: not complete yet, waiting")
                continue
            seen[ident] = fingerprint
            partitions = partitions_for(source)
            if not context.instance.has_dynamic_partition(partitions.name, delivery.partition_key):
                new_partitions.setdefault(partitions.name, []).append(delivery.partition_key)
            requests.append(
                dg.RunRequest(
                    run_key=f"{ident}/{fingerprint}",
                    job_name=ingest_job_name(delivery.source),
                    partition_key=delivery.partition_key,
                    tags={"sdv/source": delivery.source, "sdv/trigger": "delivery"},
                )
            )
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[
                dg.AddDynamicPartitionsRequest(name, keys) for name, keys in new_partitions.items()
            ],
            cursor=json.dumps(seen, sort_keys=True),
        )

    return delivery_sensor
