"""Nightly schedules: one per source; then retention (03:00), then linkage and the Family
View as one run (03:30); a freshness sweep in the morning.

The delivery sensor reacts to files as they land; the nightly schedule is the dependable
beat a partnership plans around. For a file source it loads the newest complete delivery
(a no-op if the sensor already did), passing over any dated after tonight: the sensor has
already had those rejected, and picking one every night would starve the real newest one;
for a database source it reads the tables as of tonight, under tonight's date.

Linkage and publishing share one run, not two schedules an hour apart: publishing then
starts as soon as linkage has finished, never from a linkage that failed, and the night
pays for one run and process instead of two.
"""

import dagster as dg

from assets.ingest import partitions_for
from assets.resources import LandingZone
from pipelines.sensors import JobTarget
from warehouse.landing import discover, is_complete, landing_missing
from warehouse.sources import Source

NIGHTLY_CRON = "30 1 * * *"
TIMEZONE = "Europe/London"


def build_nightly_schedule(source: Source, job: JobTarget) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=f"nightly_{source.name}",
        job=job,
        cron_schedule=NIGHTLY_CRON,
        execution_timezone=TIMEZONE,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Nightly load of {source.name}'s newest delivery.",
    )
    def _nightly(context: dg.ScheduleEvaluationContext, landing: LandingZone):
        tonight = context.scheduled_execution_time.date()
        if source.reads_database:
            key = tonight.isoformat()
        elif missing := landing_missing(landing.root):
            return dg.SkipReason(f"{missing}: nothing of {source.name} to load")
        else:
            complete = [
                d
                for d in discover(landing.root, {source.name: source})
                if d.extract_date <= tonight and is_complete(d, source)
            ]
            if not complete:
                return dg.SkipReason(f"no complete delivery for {source.name} in {landing.path}")
            key = complete[-1].partition_key
        partitions = partitions_for(source)
        if not context.instance.has_dynamic_partition(partitions.name, key):
            context.instance.add_dynamic_partitions(partitions.name, [key])
        return dg.RunRequest(
            partition_key=key, tags={"sdv/source": source.name, "sdv/trigger": "nightly"}
        )

    return _nightly


def _daily(name: str, job: JobTarget, cron: str, description: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone=TIMEZONE,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )


def build_freshness_schedule(job: JobTarget) -> dg.ScheduleDefinition:
    return _daily(
        "nightly_source_freshness",
        job,
        "0 6 * * *",
        "Flags any source that has not delivered within its freshness_days.",
    )


def build_retention_schedule(job: JobTarget) -> dg.ScheduleDefinition:
    return _daily(
        "nightly_retention",
        job,
        "0 3 * * *",
        "After the night's loads, before linkage: destroy what has passed its retention.",
    )


def build_family_view_schedule(job: JobTarget) -> dg.ScheduleDefinition:
    return _daily(
        "nightly_family_view",
        job,
        "30 3 * * *",
        "After the night's loads and retention: link, then build, check and publish the "
        "Family View, in one run (publishing waits for a linkage that succeeded).",
    )
