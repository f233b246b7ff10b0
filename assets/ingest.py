"""Ingest assets: one raw, staged and quarantine asset per source table, built from config.

Each source is one ``multi_asset`` partitioned by extract date (a dynamic partition per
source: agencies deliver on their own days). One run loads one delivery in one DuckDB
transaction, so a source's tables are never half-loaded; a rejected delivery fails the run
with the file and reason, and writes nothing. Writers share the ``duckdb_writer`` pool
(limit 1 in ``dagster.yaml``) because DuckDB allows one writer.

Asset checks read back what was written (``warehouse.quality``): delivered rows against
the manifest, required columns, identifier validity rates, quarantine rate; and, on a
nightly schedule, each source's freshness.
"""

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
from duckdb import DuckDBPyConnection

from assets.resources import FamilyViewSettings, LandingZone, OperationalStore, Warehouse
from warehouse import erasure, quality
from warehouse.landing import Delivery, DeliveryError, DeliveryGone
from warehouse.pseudonymise import load_key
from warehouse.sources import Source
from warehouse.staging import ERASED
from warehouse.store import LoadResult, load_delivery
from warehouse.tombstone import Tombstones

WRITER_POOL = "duckdb_writer"


def raw_key(source: str, table: str) -> dg.AssetKey:
    return dg.AssetKey(["raw", source, table])


def staged_key(source: str, table: str) -> dg.AssetKey:
    return dg.AssetKey(["staged", source, table])


def quarantine_key(source: str, table: str) -> dg.AssetKey:
    return dg.AssetKey(["quarantine", source, table])


def partitions_for(source: Source) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{source.name}_deliveries")


def _agreement_metadata(source: Source) -> dict[str, str]:
    agreement = source.agreement
    basis = agreement.lawful_basis
    return {
        "controller": agreement.controller,
        "purpose": agreement.purpose,
        "lawful_basis_article_6": basis.article_6,
        "article_9_condition": basis.article_9_condition or "none",
        "article_10_condition": basis.article_10_condition or "none",
        "retention": agreement.retention.model_dump_json(),
    }


def _specs(source: Source) -> list[dg.AssetSpec]:
    specs: list[dg.AssetSpec] = []
    agreement = _agreement_metadata(source)
    for table, cfg in source.tables.items():
        where = "a database table via SQLAlchemy" if cfg.database else source.file_name(table)
        common = {"group_name": source.name, "kinds": {"duckdb"}, "metadata": agreement}
        specs.append(
            dg.AssetSpec(
                raw_key(source.name, table),
                description=(
                    f"{source.name}/{table} as delivered ({where}): each record once, and "
                    "in delivered.* which deliveries carried it."
                ),
                **common,
            )
        )
        specs.append(
            dg.AssetSpec(
                staged_key(source.name, table),
                deps=[raw_key(source.name, table)],
                description=f"{source.name}/{table}: typed, identifiers checked and flagged.",
                **common,
            )
        )
        specs.append(
            dg.AssetSpec(
                quarantine_key(source.name, table),
                deps=[raw_key(source.name, table)],
                description=f"{source.name}/{table} rows that broke a rule, with the reason.",
                **common,
            )
        )
    return specs


def _check_specs(source: Source) -> list[dg.AssetCheckSpec]:
    checks: list[dg.AssetCheckSpec] = []
    for table, cfg in source.tables.items():
        checks.append(
            dg.AssetCheckSpec(
                "manifest_row_count",
                asset=raw_key(source.name, table),
                description="Rows in the warehouse equal rows delivered (manifest), and every "
                "row is staged or quarantined.",
            )
        )
        checks.append(
            dg.AssetCheckSpec(
                "row_count_steady",
                asset=raw_key(source.name, table),
                description=f"Not {cfg.max_row_drop:.0%} or more smaller than the previous "
                "delivery (a truncated full snapshot would drop people from the view).",
            )
        )
        checks.append(
            dg.AssetCheckSpec(
                "required_columns",
                asset=staged_key(source.name, table),
                description="No staged row lacks a required column.",
            )
        )
        checks.append(
            dg.AssetCheckSpec(
                "quarantine_rate",
                asset=quarantine_key(source.name, table),
                description=f"At most {cfg.max_quarantine_rate:.1%} of rows quarantined.",
            )
        )
        for column, threshold in cfg.identifier_validity.items():
            checks.append(
                dg.AssetCheckSpec(
                    f"{column}_validity",
                    asset=staged_key(source.name, table),
                    description=(
                        f"At least {threshold.min_valid_rate:.0%} of {column} values valid."
                    ),
                )
            )
    return checks


def _severity(name: str) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.ERROR if name == "error" else dg.AssetCheckSeverity.WARN


def _results(
    source: Source, result: LoadResult, con: DuckDBPyConnection
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    previous = quality.previous_delivery(con, source.name, result.extract_date)
    for load in result.tables:
        cfg = source.tables[load.table]
        current = result.current_extract_date
        common = {
            "delivery_id": result.delivery_id,
            "status": result.status,
            "extract_date": result.extract_date.isoformat(),
            "current_extract_date": current.isoformat() if current else "",
        }
        yield dg.MaterializeResult(
            asset_key=raw_key(source.name, load.table),
            metadata={
                **common,
                "file": load.origin,
                "sha256": load.sha256,
                "dagster/row_count": load.rows,
            },
        )
        yield dg.MaterializeResult(
            asset_key=staged_key(source.name, load.table),
            metadata={
                **common,
                "dagster/row_count": load.staged,
                **{f"{c}_valid": f"{v}/{n}" for c, (v, n) in load.identifier_validity.items()},
            },
        )
        yield dg.MaterializeResult(
            asset_key=quarantine_key(source.name, load.table),
            metadata={
                **common,
                "dagster/row_count": load.quarantined,
                "reasons": dg.MetadataValue.json(load.reasons),
            },
        )
        rec = quality.reconcile(
            con, source.name, load.table, result.delivery_id, result.extract_date, load.rows
        )
        yield dg.AssetCheckResult(
            asset_key=raw_key(source.name, load.table),
            check_name="manifest_row_count",
            passed=rec.balanced,
            metadata={
                "delivered": rec.expected,
                "raw": rec.raw,
                "staged": rec.staged,
                "quarantined": rec.quarantined,
            },
        )
        before = previous.rows.get(load.table) if previous else None
        drop = 1 - load.rows / before if before else 0.0
        yield dg.AssetCheckResult(
            asset_key=raw_key(source.name, load.table),
            check_name="row_count_steady",
            passed=drop < cfg.max_row_drop,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "rows": load.rows,
                "previous_rows": before,
                "previous_extract_date": previous.extract_date.isoformat() if previous else None,
                "drop": round(drop, 4),
                "threshold": cfg.max_row_drop,
            },
        )
        nulls = quality.required_nulls(con, source, load.table, result.extract_date)
        yield dg.AssetCheckResult(
            asset_key=staged_key(source.name, load.table),
            check_name="required_columns",
            passed=not any(nulls.values()),
            metadata={"empty_required": dg.MetadataValue.json(nulls)},
        )
        # Erased records held back are an upheld request, not a quality problem of the
        # extract: they are reported, but do not count towards the quarantine rate.
        erased = load.reasons.get(ERASED, 0)
        rate = (load.quarantined - erased) / load.rows if load.rows else 0.0
        yield dg.AssetCheckResult(
            asset_key=quarantine_key(source.name, load.table),
            check_name="quarantine_rate",
            passed=rate <= cfg.max_quarantine_rate,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "rate": rate,
                "threshold": cfg.max_quarantine_rate,
                "erased": erased,
                "reasons": dg.MetadataValue.json(load.reasons),
            },
        )
        for column, threshold in cfg.identifier_validity.items():
            valid, present = quality.identifier_validity(
                con, source.name, load.table, column, result.extract_date
            )
            valid_rate = valid / present if present else 1.0
            yield dg.AssetCheckResult(
                asset_key=staged_key(source.name, load.table),
                check_name=f"{column}_validity",
                passed=valid_rate >= threshold.min_valid_rate,
                severity=_severity(threshold.severity),
                metadata={
                    "valid": valid,
                    "present": present,
                    "rate": valid_rate,
                    "threshold": threshold.min_valid_rate,
                },
            )


def _tombstones(
    con: DuckDBPyConnection, operational: OperationalStore, family_view: FamilyViewSettings
) -> Tombstones:
    """Erased records (keyed hashes) a delivery must not bring back; the key is read only
    when there is something to check. Refused, loading nothing, while the operational store
    has lost an erasure the warehouse has had (restored from an older backup)."""
    engine = operational.engine()
    try:
        erasure.check_register(con, engine)
        if not erasure.any_tombstones(engine):
            return Tombstones.of((), b"")
        return erasure.tombstones(engine, load_key(Path(family_view.data_dir)))
    except erasure.ErasureError as exc:
        raise dg.Failure(description=f"Nothing loaded: {exc}", allow_retries=False) from exc
    finally:
        engine.dispose()


def build_ingest_assets(source: Source) -> dg.AssetsDefinition:
    """The raw/staged/quarantine assets (and their checks) for one configured source."""

    @dg.multi_asset(
        name=f"ingest_{source.name}",
        specs=_specs(source),
        check_specs=_check_specs(source),
        partitions_def=partitions_for(source),
        pool=WRITER_POOL,
        can_subset=False,
        description=source.description or None,
    )
    def _ingest(
        context: dg.AssetExecutionContext,
        warehouse: Warehouse,
        landing: LandingZone,
        operational: OperationalStore,
        family_view: FamilyViewSettings,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        day = date.fromisoformat(context.partition_key)
        delivery = Delivery(source.name, day, landing.root / source.name / context.partition_key)
        with warehouse.get_connection() as con:
            tombstones = _tombstones(con, operational, family_view)
            try:
                result = load_delivery(con, delivery, source, tombstones)
            except DeliveryError as exc:
                what = "No delivery" if isinstance(exc, DeliveryGone) else "Delivery rejected"
                raise dg.Failure(
                    description=f"{what}, nothing loaded: {exc}",
                    metadata={"file": exc.path, "reason": exc.reason},
                    allow_retries=False,
                ) from exc
            late = (
                "" if result.is_current else f" (older than current {result.current_extract_date})"
            )
            context.log.info(
                f"{source.name} {day}: {result.status}{late}; {result.rows} rows, "
                f"{result.staged} staged, {result.quarantined} quarantined"
            )
            yield from _results(source, result, con)

    return _ingest


def build_freshness_checks(source: Source) -> dg.AssetChecksDefinition:
    """A non-blocking check per source: flagged when the latest delivery is too old."""
    first_table = next(iter(source.tables))
    key = staged_key(source.name, first_table)

    @dg.asset_check(
        asset=key,
        name="source_freshness",
        blocking=False,
        pool=WRITER_POOL,  # it opens the warehouse, which a loading run may hold
        description=f"{source.name} has delivered within {source.freshness_days} days.",
    )
    def _freshness(warehouse: Warehouse) -> dg.AssetCheckResult:
        today = datetime.now(UTC).date()
        with warehouse.get_connection() as con:
            latest, age = quality.days_since_delivery(con, source.name, today)
        return dg.AssetCheckResult(
            passed=age is not None and age <= source.freshness_days,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "latest_extract_date": latest.isoformat() if latest else "never",
                "days_old": age if age is not None else -1,
                "allowed_days": source.freshness_days,
            },
        )

    return _freshness
