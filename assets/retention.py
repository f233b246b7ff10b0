"""The nightly retention asset: destroy what each source's agreement no longer allows.

Runs after the night's loads and before linkage (its own job, ``nightly_retention``, at
03:00; linkage follows at 03:30 and waits for the single-writer pool), so neither the
linked layer nor the Family View is built from expired rows. What it decides and how is in
``warehouse.retention``; the counts per source go into the materialisation's metadata and
``meta.retention_runs``, and one audit event per run records them (counts only).
"""

from datetime import date
from pathlib import Path

import dagster as dg

from assets.ingest import WRITER_POOL, quarantine_key, raw_key, staged_key
from assets.resources import FamilyViewSettings, LandingZone, OperationalStore, Warehouse
from warehouse import audit, landing_retention
from warehouse import retention as rules
from warehouse.operational import ensure_schema
from warehouse.pseudonymise import load_key
from warehouse.sources import Source

RETENTION = dg.AssetKey(["retention"])


class RetentionConfig(dg.Config):
    """``as_of`` (YYYY-MM-DD) to judge expiry on; empty = the newest loaded extract date."""

    as_of: str | None = None


def build_retention_asset(sources: dict[str, Source]) -> dg.AssetsDefinition:
    layers = (raw_key, staged_key, quarantine_key)

    @dg.asset(
        key=RETENTION,
        group_name="retention",
        deps=[key(s.name, t) for s in sources.values() for t in s.tables for key in layers],
        pool=WRITER_POOL,
        description="Destroy rows whose source's retention period has ended, in raw, staged, "
        "quarantine, the linked layer and every kept snapshot; counts per source/table/layer "
        "kept in meta.retention_runs. Landing-zone delivery folders go landing_keep_days "
        "after they were loaded or rejected (meta.landing_purges).",
    )
    def retention(
        context: dg.AssetExecutionContext,
        config: RetentionConfig,
        warehouse: Warehouse,
        landing: LandingZone,
        operational: OperationalStore,
        family_view: FamilyViewSettings,
    ) -> dg.MaterializeResult:
        as_of = date.fromisoformat(config.as_of) if config.as_of else None
        with warehouse.get_connection() as con:
            try:
                _, done = rules.run(con, sources, as_of, path=Path(warehouse.path))
            except rules.RetentionError as exc:
                raise dg.Failure(str(exc)) from exc
        assert done is not None
        with warehouse.get_connection() as con:  # the run may have rewritten the file
            folders = landing_retention.run(
                con, landing.root, sources, done.plan.as_of, done.run_id
            )
        published = rules.purge_published(
            Path(family_view.published_dir), done, load_key(Path(family_view.data_dir))
        )
        engine = operational.engine()
        ensure_schema(engine)
        audit.append(
            engine,
            audit.AuditEvent(
                user_id="dagster",
                role="system",
                purpose="retention",
                action="retention",
                outcome="allowed",
                detail=rules.audit_detail(done, published, folders),
            ),
        )
        context.log.info(
            "retention as of %s destroyed %d rows", done.plan.as_of, done.plan.destroyed
        )
        return dg.MaterializeResult(
            metadata={
                "run_id": done.run_id,
                "as_of": done.plan.as_of.isoformat(),
                "rows_destroyed": done.plan.destroyed,
                "records_expired": len(done.plan.expired_records),
                "per_source": dg.MetadataValue.json(done.plan.per_source()),
                "undetermined_rows": int(done.plan.counts["undetermined"].sum()),
                "snapshot_rows_destroyed": dg.MetadataValue.json(published),
                "landing_folders_destroyed": dg.MetadataValue.json(
                    landing_retention.per_source(folders)
                ),
            }
        )

    return retention
