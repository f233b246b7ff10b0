"""Linkage assets: the trained model, and the nightly resolution of records to persons.

``linkage_model`` is materialised by its own job (``train_linkage_model``): training is a
deliberate act, and nightly prediction uses the newest saved model file, so a night's
result can be reproduced from its inputs and that file. If no model exists yet the
nightly run trains one first (a new installation should work on its first night) and
says so in its metadata.

``linked/person_records`` and ``linked/household_members`` are built together: standardise,
score (only new or changed records when the model is unchanged), cluster under the hard
rules, link contacts through their child, assign stable ids, group households, queue
pairs for review in the operational store, and publish in one transaction. The same step
then checks what it wrote (``hard_rules_hold``): no person breaks a hard rule, judged on
the standardised records it just resolved instead of standardising them all again, and
every person-level row has a person, read back from the warehouse. ``no_oversized_persons``
reads the result back on its own.
"""

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
from sqlalchemy.engine import Engine

from assets.ingest import WRITER_POOL, staged_key
from assets.resources import LinkageSettings, OperationalStore, Warehouse
from matching import model as splink_model
from matching.config import LinkageConfig
from matching.evaluate import evaluate, read_truth, summary_lines
from matching.households import households, relationships
from matching.link import changed_records, fingerprints, merge_scores, resolve, run_id_for
from matching.regions import Reusable
from matching.rules import breaches
from matching.standardise import standardise
from warehouse import erasure, linked, operational, review
from warehouse.person_rows import read_person_rows, read_relationships
from warehouse.stages import StageClock

PERSON_RECORDS = dg.AssetKey(["linked", "person_records"])
HOUSEHOLD_MEMBERS = dg.AssetKey(["linked", "household_members"])
HARD_RULES = dg.AssetCheckKey(PERSON_RECORDS, "hard_rules_hold")
MODEL = dg.AssetKey(["linkage_model"])


def newest_model(model_dir: Path) -> Path | None:
    found = sorted(model_dir.glob("linkage-model-*[0-9a-f].json"))
    return found[-1] if found else None


def _model_version(path: Path) -> str:
    return path.stem.removeprefix("linkage-model-")


def _standardised(
    con: duckdb.DuckDBPyConnection,
    config: LinkageConfig,
    relationships: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The current person-level rows, standardised; ``relationships`` when the caller has
    already read them (``read_relationships``)."""
    rows = read_person_rows(con, config)
    if rows.is_empty():
        raise dg.Failure("no person-level rows in the warehouse yet: load a delivery first")
    if relationships is None:
        relationships = read_relationships(con, config)
    return standardise(rows, config, relationships)


def _reusable(con: duckdb.DuckDBPyConnection) -> Reusable | None:
    """Last night's regions and persons, or None when the warehouse has none stored."""
    stored = linked.reusable(con)
    if stored is None:
        return None
    state, persons, ambiguous = stored
    return Reusable(
        state=state.rename({"record_id": "unique_id"}),
        persons=persons.rename({"record_id": "unique_id"}),
        ambiguous=ambiguous,
    )


@dataclass(frozen=True)
class RuleCheck:
    """What ``hard_rules_hold`` judges: persons breaking a hard rule (``person_id, rule``),
    and person-level rows against the linked rows stored for them."""

    broken: pl.DataFrame
    records: int
    linked: int
    unlinked: int

    @property
    def passed(self) -> bool:
        return self.broken.is_empty() and self.unlinked == 0 and self.linked == self.records


def check_rules(
    con: duckdb.DuckDBPyConnection, records: pl.DataFrame, person_records: pl.DataFrame
) -> RuleCheck:
    """Judge tonight's persons against the hard rules, and read back that every record
    has its person row in ``linked.person_records`` (after :func:`linked.write_run`)."""
    stored = con.sql("select record_id from linked.person_records").pl()
    unlinked = records.select("unique_id").join(
        stored, left_on="unique_id", right_on="record_id", how="anti"
    )
    return RuleCheck(
        broken=breaches(records, person_records),
        records=records.height,
        linked=stored.height,
        unlinked=unlinked.height,
    )


@dataclass(frozen=True)
class LinkageRun:
    run: dict[str, Any]
    evaluation: dict[str, Any] | None
    trained: splink_model.TrainedModel | None
    rules: RuleCheck


def run_linkage(
    con: duckdb.DuckDBPyConnection,
    engine: Engine,
    config: LinkageConfig,
    model_dir: Path,
    *,
    full: bool = False,
    truth_dir: Path | None = None,
    reuse_regions: bool = True,
) -> LinkageRun:
    """One night's linkage from the warehouse's current deliveries (see module docstring).

    When scoring was incremental, regions of records that did not change keep last night's
    persons (``matching.regions``); ``reuse_regions=False`` clusters everything anyway
    (same result, for comparing)."""
    clock = StageClock()
    started = datetime.now(UTC).replace(tzinfo=None)
    with clock.stage("standardise"):
        recorded = read_relationships(con, config)
        records = _standardised(con, config, recorded)

    trained = None
    model_path = newest_model(model_dir)
    if model_path is None:
        with clock.stage("train"):
            trained = splink_model.train(records, config, model_dir)
        model_path = trained.path
    version = _model_version(model_path)
    model = json.loads(model_path.read_text(encoding="utf-8"))

    with clock.stage("predict"):
        prints = fingerprints(records)
        cached = linked.read_table(con, "scored_pairs")
        incremental = not full and cached is not None and linked.last_model_version(con) == version
        changed = changed_records(prints, linked.read_table(con, "record_fingerprints"))
        if incremental:
            fresh = splink_model.predict(records, model_path, changed=changed, options=config.model)
            pairs = merge_scores(cached, fresh, records, changed)
        else:
            pairs = splink_model.predict(records, model_path, options=config.model)

    with clock.stage("cluster"):
        operational.ensure_schema(engine)
        run_id = run_id_for(prints, version, started)
        previous = _reusable(con) if incremental and reuse_regions else None
        result = resolve(
            records,
            pairs,
            config,
            model,
            previous_registry=linked.previous_registry(con),
            run_id=run_id,
            constraints=review.constraints(engine),
            used_ids=linked.issued_ids(con) | erasure.erased_person_ids(engine),
            relationships=recorded,
            previous=previous,
            salt=version,
        )

    with clock.stage("households"):
        members = households(records, result.person_records)
        related = relationships(result.person_records, records, recorded)

    queued = review.enqueue(engine, result.review, run_id)
    counts = result.assignment.event_counts()
    run = {
        "run_id": run_id,
        "started_at": started,
        "model_version": version,
        "records": records.height,
        "persons": result.person_records["person_id"].n_unique(),
        "households": members["household_id"].n_unique(),
        "changed_records": len(changed) if incremental else records.height,
        "scored_pairs": pairs.height,
        "review_pairs": queued,
        "oversized": int(result.person_records["oversized"].sum()),
        "events": counts,
        "timings": clock.rounded_seconds(),
    }
    with clock.stage("publish"):
        linked.write_run(
            con,
            run=run,
            person_records=result.person_records,
            households=members,
            relationships=related,
            events=result.assignment.events,
            scored_pairs=pairs,
            fingerprints=prints,
            regions=result.state.rename({"unique_id": "record_id"}),
            ambiguous=result.ambiguous,
        )
    with clock.stage("check"):
        rules = check_rules(con, records, result.person_records)
    seconds = clock.rounded_seconds()
    run["timings"]["publish"] = seconds["publish"]
    run["timings"]["check"] = seconds["check"]
    # Not in linked.runs either: records and regions clustered tonight, of how many.
    run["reclustered"] = dict(result.reclustered)
    # Not in linked.runs (its columns are fixed): shown in the run's Dagster metadata.
    run["peak_rss_mib"] = dict(clock.peak_mib)
    evaluation = None
    if truth_dir is not None:
        evaluation = evaluate(
            linked.links_export(con), linked.households_export(con), read_truth(truth_dir)
        )
    return LinkageRun(run=run, evaluation=evaluation, trained=trained, rules=rules)


def _truth_dir() -> Path | None:
    """``SDV_TRUTH_DIR``: a synthetic county's ground truth, for scoring every run."""
    value = os.environ.get("SDV_TRUTH_DIR")
    return Path(value) if value else None


def build_linkage_assets(config: LinkageConfig) -> tuple[list[Any], list[Any]]:
    """The model and person-links assets, and the checks on the linked result."""

    @dg.asset(
        key=MODEL,
        group_name="linkage",
        description="Splink model trained on the current person-level rows (u by random "
        "sampling, m by EM), saved as a versioned JSON file with its charts.",
        deps=[staged_key(t.source, t.table) for t in config.tables],
        pool=WRITER_POOL,
    )
    def linkage_model(
        context: dg.AssetExecutionContext, warehouse: Warehouse, linkage: LinkageSettings
    ) -> dg.MaterializeResult:
        with warehouse.get_connection() as con:
            records = _standardised(con, config)
        trained = splink_model.train(records, config, Path(linkage.model_dir))
        context.log.info("trained %s on %d records", trained.version, records.height)
        return dg.MaterializeResult(
            metadata={
                "version": trained.version,
                "model_file": dg.MetadataValue.path(str(trained.path)),
                "records": records.height,
                "untrained_levels": dg.MetadataValue.json(list(trained.untrained)),
                **{
                    f"chart_{name}": dg.MetadataValue.url(path.resolve().as_uri())
                    for name, path in trained.charts.items()
                },
            }
        )

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                PERSON_RECORDS,
                group_name="linkage",
                deps=[staged_key(t.source, t.table) for t in config.tables],
                description=linked.DICTIONARY["person_records"][0],
            ),
            dg.AssetSpec(
                HOUSEHOLD_MEMBERS,
                group_name="linkage",
                deps=[PERSON_RECORDS],
                description=linked.DICTIONARY["household_members"][0],
            ),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                HARD_RULES.name,
                asset=PERSON_RECORDS,
                description="No person holds two valid NHS numbers, two UPNs with nothing "
                "in common or twins' records, and every person-level row is linked.",
                # A breach is a wrong merge or a lost record: the nightly run stops
                # here, and the Family View is not built from it on its own either
                # (assets.family_view.refuse_broken_linkage).
                blocking=True,
            )
        ],
        pool=WRITER_POOL,
    )
    def person_links(
        context: dg.AssetExecutionContext,
        warehouse: Warehouse,
        operational: OperationalStore,
        linkage: LinkageSettings,
    ):
        with warehouse.get_connection() as con:
            outcome = run_linkage(
                con, operational.engine(), config, Path(linkage.model_dir), truth_dir=_truth_dir()
            )
        run = outcome.run
        meta: dict[str, Any] = {
            "run_id": run["run_id"],
            "model_version": run["model_version"],
            "scoring_backend": config.model.backend,
            "records": run["records"],
            "persons": run["persons"],
            "changed_records": run["changed_records"],
            "scored_pairs": run["scored_pairs"],
            "review_queue": run["review_pairs"],
            "oversized_persons": run["oversized"],
            "events": dg.MetadataValue.json(run["events"]),
            "stage_seconds": dg.MetadataValue.json(run["timings"]),
            "stage_peak_rss_mib": dg.MetadataValue.json(run["peak_rss_mib"]),
            "reclustered_records": run["reclustered"]["records"],
            "reclustered_regions": run["reclustered"]["regions"],
            "regions": dg.MetadataValue.json(run["reclustered"]),
        }
        if outcome.trained is not None:
            meta["trained_first"] = "no saved model: trained one before linking"
            meta["untrained_levels"] = dg.MetadataValue.json(list(outcome.trained.untrained))
        if outcome.evaluation is not None:
            meta["evaluation"] = dg.MetadataValue.json(outcome.evaluation)
            meta["evaluation_summary"] = dg.MetadataValue.md(
                "\n".join(f"- {line}" for line in summary_lines(outcome.evaluation))
            )
        yield dg.MaterializeResult(asset_key=PERSON_RECORDS, metadata=meta)
        yield dg.MaterializeResult(
            asset_key=HOUSEHOLD_MEMBERS, metadata={"households": run["households"]}
        )
        rules = outcome.rules
        yield dg.AssetCheckResult(
            asset_key=PERSON_RECORDS,
            check_name=HARD_RULES.name,
            passed=rules.passed,
            metadata={
                "persons_breaking_rules": rules.broken["person_id"].n_unique(),
                "examples": dg.MetadataValue.json(rules.broken.head(10).to_dicts()),
                "person_level_rows": rules.records,
                "linked_rows": rules.linked,
                "rows_without_person": rules.unlinked,
            },
        )

    @dg.asset_check(
        asset=PERSON_RECORDS,
        description="Persons with more records than "
        "thresholds.max_cluster_size are flagged for review, not silently accepted.",
        blocking=False,
        pool=WRITER_POOL,  # it opens the warehouse, which another run may hold
    )
    def no_oversized_persons(warehouse: Warehouse) -> dg.AssetCheckResult:
        with warehouse.get_connection() as con:
            big = con.execute(
                "select person_id, count(*) from linked.person_records where oversized "
                "group by 1 order by 2 desc"
            ).fetchall()
        return dg.AssetCheckResult(
            passed=not big,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"oversized_persons": len(big), "largest": dg.MetadataValue.json(big[:10])},
        )

    return [linkage_model, person_links], [no_oversized_persons]
