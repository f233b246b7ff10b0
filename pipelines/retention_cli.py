"""``sdv retention [--dry-run] [--as-of DATE] [--landing DIR]``: destroy what the
agreements no longer allow.

Prints, per source, table and layer, the rows that went (or with ``--dry-run`` would go)
and the rows whose expiry cannot be read from their dates (see ``warehouse.retention``),
then the landing zone's delivery folders past their keep period
(``warehouse.landing_retention``), then the audit trail's events past ``keep_years``
(``config/audit.yaml``, ``warehouse.audit.expire``), and last the rows removed from kept
snapshots and analysts' files per curated table (the expired records', and those made from
destroyed rows whose person stays: ``warehouse.derived``). Erased records that a restored backup
brought back are destroyed again first (``warehouse.erasure.reapply``). A real run is
recorded in ``meta.retention_runs`` and ``meta.landing_purges``, and as one audit event
with counts only (a cut of the audit trail, and erased records destroyed again, also as
their own events).
"""

from __future__ import annotations

import getpass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipelines.cli_support import reported, settings_for

if TYPE_CHECKING:
    from warehouse.audit import Expiry
    from warehouse.erasure import Reapplied
    from warehouse.landing_retention import LandingFolder

out = Console(soft_wrap=True)


def _as_of(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from exc


def _table(counts, dry_run: bool) -> Table:
    verb = "would go" if dry_run else "destroyed"
    table = Table(title=f"Retention ({'dry run' if dry_run else 'applied'})")
    for name in ("source", "table", "layer", "rule", "rows", verb, "undetermined"):
        table.add_column(
            name, justify="right" if name in ("rows", verb, "undetermined") else "left"
        )
    for row in counts.iter_rows(named=True):
        table.add_row(
            row["source"],
            row["table"],
            row["layer"],
            row["rule"],
            f"{row['rows']:,}",
            f"{row['destroy']:,}",
            f"{row['undetermined']:,}",
        )
    return table


def _print_landing(folders: list[LandingFolder], landing: Path, dry_run: bool) -> None:
    verb = "would go" if dry_run else "destroyed"
    if not folders:
        out.print(f"Landing zone ({landing}): no delivery folder past its keep period.")
        return
    out.print(
        f"Landing zone ({landing}): {len(folders)} delivery folder(s) {verb}, "
        f"{sum(f.bytes for f in folders):,} bytes in {sum(f.files for f in folders)} file(s):"
    )
    for folder in folders:
        out.print(
            f"  {folder.delivery.source} {folder.delivery.extract_date} "
            f"({folder.outcome} {folder.outcome_recorded_at:%Y-%m-%d %H:%M} UTC)"
        )


def _print_audit_trail(trail: Expiry | None, keep_years: int | None, dry_run: bool) -> None:
    if trail is None:
        out.print("Audit trail: no keep_years in config/audit.yaml, so every event is kept.")
        return
    kept = f"kept {keep_years} year(s): events recorded before {trail.before:%Y-%m-%d %H:%M} UTC"
    if not trail.destroyed:
        out.print(f"Audit trail ({kept}): none to destroy.")
    elif dry_run:
        out.print(f"Audit trail ({kept}): {trail.destroyed:,} event(s) would go.")
    else:
        out.print(
            f"Audit trail ({kept}): destroyed {trail.destroyed:,} event(s), through seq "
            f"{trail.through_seq:,}; the cut is recorded as seq "
            f"{trail.record.seq if trail.record else '?'} (`sdv audit verify` checks it)."
        )


def _print_operational(rows: dict[str, int], dry_run: bool) -> None:
    """What people recorded about the expired records (review items, corrections,
    restrictions): it goes with them."""
    changed = {table: n for table, n in rows.items() if n}
    if not changed:
        return
    verb = "would go" if dry_run else "destroyed"
    listed = ", ".join(f"{table} {n:,}" for table, n in sorted(changed.items()))
    out.print(f"Operational store rows about the expired records {verb}: {listed}.")


def _print_erased_again(again: Reapplied, dry_run: bool) -> None:
    """Said only when it happened: an erased record back means a restore undid an erasure."""
    if not again.records:
        return
    erasures = ", ".join(f"#{i}" for i in again.erasure_ids)
    verb = "would be destroyed again" if dry_run else "destroyed again"
    out.print(
        f"[yellow]Erased records found again: {again.records:,} (erasure {erasures}), "
        f"{verb}. Was the warehouse or the published folder restored from a backup?[/yellow]"
    )


def retention(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would go; change nothing.")
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Date to judge expiry on (default: newest extract date)."),
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who runs it (default $USER).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    landing: Annotated[
        Path | None,
        typer.Option("--landing", help="Landing zone (default: <data dir>/landing)."),
    ] = None,
) -> None:
    """Destroy rows whose source's retention period has ended, in every ingest layer, and
    landing-zone delivery folders kept past their source's landing_keep_days."""
    import duckdb

    from warehouse import retention as rules
    from warehouse.audit import AuditError
    from warehouse.audit_config import AuditConfigError, load_audit_config
    from warehouse.curated_config import CuratedConfigError, load_curated_config
    from warehouse.erasure import ErasureError
    from warehouse.operational import engine_for
    from warehouse.sources import ConfigError, load_sources

    day = _as_of(as_of)
    settings = settings_for(ctx, data_dir)
    landing_zone = (landing or settings.landing).resolve()
    errors = (
        rules.RetentionError,
        ConfigError,
        AuditConfigError,
        CuratedConfigError,
        AuditError,
        ErasureError,
    )
    with reported(errors, (duckdb.Error,), "the warehouse"):
        sources = load_sources(settings.config_dir)
        audit_config = load_audit_config(settings.config_dir)
        curated = load_curated_config(settings.curated_config)
        if not settings.warehouse.exists():
            raise rules.RetentionError(f"no warehouse at {settings.warehouse}: load first")
        result = rules.enforce(
            settings.warehouse,
            landing_zone,
            sources,
            published_dir=settings.published_dir,
            data_dir=settings.data_dir,
            operational=engine_for(settings.operational_url),
            actor=(by or getpass.getuser(), "operator"),
            audit_config=audit_config,
            as_of=day,
            dry_run=dry_run,
            curated=curated,
        )
    found = result.plan
    _print_erased_again(result.erased_again, dry_run)
    out.print(_table(found.counts, dry_run))
    undetermined = int(found.counts["undetermined"].sum())
    if undetermined:
        out.print(
            f"{undetermined:,} rows have no usable date: kept under until_age, dated by "
            "their newest extract under years_after_last_event."
        )
    _print_landing(result.folders, landing_zone, dry_run)
    _print_operational(result.operational, dry_run)
    _print_audit_trail(result.audit_trail, audit_config.keep_years, dry_run)
    if result.done is None:
        out.print(
            f"Dry run as of {found.as_of}: {found.destroyed:,} rows and "
            f"{len(found.expired_records):,} person-level records would go. Nothing changed."
        )
        return
    out.print(
        f"Retention as of {found.as_of}: destroyed {found.destroyed:,} rows; "
        f"{len(found.expired_records):,} person-level records expired "
        f"(run {result.done.run_id}); {sum(result.published.values()):,} rows removed from "
        "kept snapshots."
    )
    tables = result.detail["published_tables"]
    if tables:
        listed = ", ".join(f"{table} {n:,}" for table, n in tables.items())
        out.print(f"Kept snapshots and analysts' files, rows removed or recomputed: {listed}.")


def register(app: typer.Typer) -> None:
    app.command()(retention)
