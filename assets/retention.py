"""The nightly retention asset: destroy what each source's agreement no longer allows.

Runs after the night's loads and before linkage (its own job, ``nightly_retention``, at
03:00; linkage follows at 03:30 and waits for the single-writer pool), so neither the
linked layer nor the Family View is built from expired rows. What it decides and how is in
``warehouse.retention``; the counts per source go into the materialisation's metadata and
``meta.retention_runs``, and one audit event per run records them (counts only). The
audit trail's own events go after ``config/audit.yaml``'s ``keep_years``.
"""

from datetime import date
from pathlib import Path

import dagster as dg

from assets.ingest import WRITER_POOL, quarantine_key, raw_key, staged_key
from assets.resources import FamilyViewSettings, LandingZone, OperationalStore, Warehouse
from warehouse import retention as rules
from warehouse.audit import AuditError
from warehouse.audit_config import AuditConfig
from warehouse.curated_config import CuratedConfig
from warehouse.erasure import ErasureError
from warehouse.sources import Source

RETENTION = dg.AssetKey(["retention"])


class RetentionConfig(dg.Config):
    """``as_of`` (YYYY-MM-DD) to judge expiry on; empty = the newest loaded extract date."""

    as_of: str | None = None


def build_retention_asset(
    sources: dict[str, Source], audit_config: AuditConfig, curated: CuratedConfig | None = None
) -> dg.AssetsDefinition:
    """The asset; ``curated`` (default ``config/curated.yaml``) says which curated rows the
    kept snapshots made from rows that go (``warehouse.derived``)."""
    layers = (raw_key, staged_key, quarantine_key)

    @dg.asset(
        key=RETENTION,
        group_name="retention",
        deps=[key(s.name, t) for s in sources.values() for t in s.tables for key in layers],
        pool=WRITER_POOL,
        description="Destroy rows whose source's retention period has ended, in raw, staged, "
        "quarantine, the linked layer and every kept snapshot (with the timeline and "
        "involvement rows made from them); counts per source/table/layer "
        "kept in meta.retention_runs. Landing-zone delivery folders go landing_keep_days "
        "after they were loaded or rejected (meta.landing_purges); audit events after "
        "config/audit.yaml's keep_years. First, erased records that a restored backup "
        "brought back are destroyed again.",
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
        engine = operational.engine()
        try:
            result = rules.enforce(
                Path(warehouse.path),
                landing.root,
                sources,
                published_dir=Path(family_view.published_dir),
                data_dir=Path(family_view.data_dir),
                operational=engine,
                actor=("dagster", "system"),
                audit_config=audit_config,
                as_of=as_of,
                curated=curated,
            )
        except (rules.RetentionError, AuditError, ErasureError) as exc:
            raise dg.Failure(str(exc)) from exc
        finally:
            engine.dispose()
        detail = result.detail
        context.log.info(
            "retention as of %s destroyed %d rows", detail["as_of"], result.plan.destroyed
        )
        return dg.MaterializeResult(
            metadata={
                "run_id": detail["run_id"],
                "as_of": detail["as_of"],
                "rows_destroyed": result.plan.destroyed,
                "records_expired": detail["records_expired"],
                "per_source": dg.MetadataValue.json(detail["per_source"]),
                "undetermined_rows": int(result.plan.counts["undetermined"].sum()),
                "snapshot_rows_destroyed": dg.MetadataValue.json(result.published),
                # the same per curated table: expired records' rows, and those made from
                # destroyed rows whose person stays (child summaries computed again)
                "snapshot_rows_per_table": dg.MetadataValue.json(detail["published_tables"]),
                "landing_folders_destroyed": dg.MetadataValue.json(detail["landing_folders"]),
                # None when config/audit.yaml sets no keep_years (the trail is kept in full)
                "audit_events_destroyed": detail["audit_events"],
                # erased records a restored backup brought back, destroyed again
                "erased_records_destroyed_again": detail["erased_records_found_again"],
                # review items, rectifications, restrictions about the expired records
                "operational_rows_destroyed": dg.MetadataValue.json(detail["operational_rows"]),
            }
        )

    return retention
