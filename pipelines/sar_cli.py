"""Subject access on the command line: ``sdv sar PERSON_ID --out DIR --reason TEXT``.

Writes everything held about the person (every source and layer, with provenance, and who
has seen it) into a new folder, with what must be reviewed before disclosure kept apart,
and records the export in the audit.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from pipelines.cli_support import reported, settings_for

out = Console(soft_wrap=True)


def sar(
    ctx: typer.Context,
    person_id: Annotated[str, typer.Argument(help="The person's id in the published view.")],
    out_dir: Annotated[Path, typer.Option("--out", help="New or empty folder to write into.")],
    reason: Annotated[str, typer.Option("--reason", help="Why: the request's reference.")],
    by: Annotated[str | None, typer.Option("--by", help="Who exports (default $USER).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Export everything held about a person (subject access, UK GDPR Art. 15)."""
    import duckdb
    import sqlalchemy as sa

    from warehouse.audit import AuditError
    from warehouse.publish import PublishError
    from warehouse.sar import SarError, export_subject_access
    from warehouse.sources import ConfigError, load_sources

    settings = settings_for(ctx, data_dir)
    refusals = (SarError, PublishError, AuditError, ConfigError)
    with reported(refusals, (sa.exc.DBAPIError, duckdb.Error), "the warehouse"):
        result = export_subject_access(
            warehouse=settings.warehouse,
            store=settings.snapshot_store(),
            engine=settings.operational_engine(),
            sources=load_sources(settings.config_dir),
            person_id=person_id,
            out_dir=out_dir,
            reason=reason,
            by=by or getpass.getuser(),
        )
    counts = result.counts()
    out.print(
        f"Exported {escape(result.subject.person_id)} ({len(result.subject.record_ids)} source "
        f"records) to {escape(str(out_dir))}: {counts['main']:,} rows, "
        f"{counts['review_before_disclosure']:,} rows to review before disclosure, "
        f"{counts['recipients']:,} recorded accesses. Start with summary.html."
    )


def register(app: typer.Typer) -> None:
    app.command()(sar)
