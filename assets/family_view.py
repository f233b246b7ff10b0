"""Family View assets: tonight's curated snapshot, its checks, and the switch to it.

``curated/family_view_snapshot`` builds the curated tables and the analysts' pseudonymised
file into new files nobody reads yet, then runs blocking checks on them (schema matches the
dictionary, every person curated, one summary per child, the analysts' file holds nothing
identifying). Only if all pass does ``curated/published_family_view`` switch readers to
the new snapshot; otherwise readers stay on last night's, and the failed build is left on
disk for inspection until the next successful publish prunes it.

Nothing is built from a linkage whose ``hard_rules_hold`` check failed: in the nightly
``link_and_publish`` run the blocking check stops the run first; run on its own
(``publish_family_view``, ``sdv publish``) the snapshot asset reads the check's newest
evaluation and refuses.
"""

from datetime import date
from pathlib import Path

import dagster as dg

from assets.ingest import WRITER_POOL
from assets.linkage import HARD_RULES, HOUSEHOLD_MEMBERS, PERSON_RECORDS
from assets.resources import FamilyViewSettings, OperationalStore, Warehouse
from matching.config import LinkageConfig
from warehouse.curated_config import CuratedConfig
from warehouse.family_view import build_snapshot, check_snapshot
from warehouse.pseudonymise import load_key
from warehouse.publish import SnapshotStore
from warehouse.sources import Source
from warehouse.stages import StageClock

SNAPSHOT = dg.AssetKey(["curated", "family_view_snapshot"])
PUBLISHED = dg.AssetKey(["curated", "published_family_view"])
CHECKS = {
    "schema_matches_dictionary": "Every curated table has exactly the documented columns.",
    "every_person_curated": "Every linked person has exactly one golden record.",
    "one_summary_per_child": "child_summary has one row per child.",
    "analyst_file_pseudonymised": "The analysts' file holds no name, date of birth, "
    "identifier, address, full postcode, contact or free text (by column and by value).",
}


def _store(settings: FamilyViewSettings) -> SnapshotStore:
    return SnapshotStore(
        Path(settings.published_dir),
        keep=settings.keep,
        analysts_group_read=settings.analysts_group_read,
    )


def refuse_broken_linkage(instance: dg.DagsterInstance) -> None:
    """Fail unless the newest linkage passed ``hard_rules_hold``.

    A failed check means the linked tables hold a wrong merge or a lost record, and the
    Family View would show one child's records as another's. A check that was planned
    but never evaluated means that linkage stopped part way (an error, a killed process),
    possibly after writing the linked tables: they are unchecked, and are not published
    either. A later linkage that passes lifts both. Never linked: nothing to refuse (the
    build says what is missing).
    """
    record = instance.get_latest_asset_check_evaluation_record(HARD_RULES)
    if record is None:
        return
    if not isinstance(record.evaluation, dg.AssetCheckEvaluation):  # planned, never run
        raise dg.Failure(
            f"the newest linkage (run {record.run_id}) stopped before its hard-rule check "
            "(hard_rules_hold) ran, so the linked tables may be unchecked: not building the "
            "Family View from them; readers keep the current snapshot. Link again."
        )
    if not record.evaluation.passed:
        raise dg.Failure(
            f"the newest linkage (run {record.run_id}) broke a hard rule (hard_rules_hold): "
            "not building the Family View from it; readers keep the current snapshot. "
            "Link again once the cause is fixed."
        )


def build_family_view_assets(
    linkage: LinkageConfig, curated: CuratedConfig, sources: dict[str, Source]
) -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=SNAPSHOT,
        group_name="family_view",
        deps=[PERSON_RECORDS, HOUSEHOLD_MEMBERS],
        pool=WRITER_POOL,
        check_specs=[
            dg.AssetCheckSpec(name, asset=SNAPSHOT, description=text, blocking=True)
            for name, text in CHECKS.items()
        ],
        description="Tonight's curated Family View and analysts' file, built and checked "
        "but not yet visible to readers.",
    )
    def family_view_snapshot(
        context: dg.AssetExecutionContext,
        warehouse: Warehouse,
        family_view: FamilyViewSettings,
        operational: OperationalStore,
    ):
        refuse_broken_linkage(context.instance)
        store = _store(family_view)
        key = load_key(Path(family_view.data_dir))
        clock = StageClock()
        with warehouse.get_connection() as con:
            built = build_snapshot(con, store, linkage, curated, sources, key, operational.engine())
            with clock.stage("checks"):
                checks = check_snapshot(built, con)
        context.log.info("built %s (as of %s)", built.snapshot.name, built.as_of)
        yield dg.MaterializeResult(
            metadata={
                "snapshot": dg.MetadataValue.path(str(built.snapshot)),
                "analyst_file": dg.MetadataValue.path(str(built.analyst)),
                "as_of": built.as_of.isoformat(),
                "rows": dg.MetadataValue.json(built.rows),
                "unlinked_rows": dg.MetadataValue.json(built.unlinked),
                "rectifications_lapsed": built.lapsed,
                "checks_passed": all(c.passed for c in checks),
                "stage_seconds": dg.MetadataValue.json(
                    {**built.stage_seconds, **clock.rounded_seconds()}
                ),
                "stage_peak_rss_mib": dg.MetadataValue.json(
                    {**built.stage_peak_mib, **clock.peak_mib}
                ),
            }
        )
        for check in checks:
            yield dg.AssetCheckResult(
                check_name=check.name,
                asset_key=SNAPSHOT,
                passed=check.passed,
                metadata={
                    k: dg.MetadataValue.json(v) if isinstance(v, dict | list) else v
                    for k, v in check.metadata.items()
                },
            )

    @dg.asset(
        key=PUBLISHED,
        group_name="family_view",
        deps=[SNAPSHOT],
        pool=WRITER_POOL,  # one publisher at a time: the pointer and pruning are not shared
        description="Switch readers (access layer, API, analysts) to tonight's snapshot.",
    )
    def published_family_view(
        context: dg.AssetExecutionContext, family_view: FamilyViewSettings
    ) -> dg.MaterializeResult:
        event = context.instance.get_latest_materialization_event(SNAPSHOT)
        if event is None or event.asset_materialization is None:
            raise dg.Failure("no snapshot has been built")
        meta = event.asset_materialization.metadata
        if not meta["checks_passed"].value:
            raise dg.Failure("the newest snapshot failed its checks: not publishing it")
        store = _store(family_view)
        published = store.publish(
            Path(meta["snapshot"].value),
            Path(meta["analyst_file"].value),
            date.fromisoformat(meta["as_of"].value),
            {name: True for name in CHECKS},
        )
        return dg.MaterializeResult(
            metadata={
                "snapshot": published.snapshot,
                "as_of": published.as_of,
                "kept": dg.MetadataValue.json(store.kept()),
            }
        )

    return [family_view_snapshot, published_family_view]
