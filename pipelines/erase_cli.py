"""Subject rights on the command line: ``sdv erase`` (UK GDPR Art. 17, where upheld).

``sdv erase PERSON_ID --reason TEXT --upheld-by WHO`` destroys the person's records in the
warehouse, every kept snapshot and the analysts' file, tombstones them so a later delivery
is quarantined instead of bringing them back, and prints what was removed per file and
table. It cannot be undone, so it asks first unless ``--yes`` is given.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from pipelines.cli_support import reported, settings_for

out = Console(soft_wrap=True)


def erase(
    ctx: typer.Context,
    person_id: Annotated[str, typer.Argument(help="The person's id in the published view.")],
    reason: Annotated[str, typer.Option("--reason", help="Why: the request and its grounds.")],
    upheld_by: Annotated[
        str, typer.Option("--upheld-by", help="Who decided the request is upheld (e.g. the DPO).")
    ],
    by: Annotated[str | None, typer.Option("--by", help="Who records it (default $USER).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    landing: Annotated[
        Path | None,
        typer.Option("--landing", help="Landing zone (default: <data dir>/landing)."),
    ] = None,
) -> None:
    """Erase a person from every layer and snapshot, for good (an upheld Art. 17 request),
    and the landing zone's loaded or rejected delivery folders of the sources holding them."""
    from warehouse import erasure
    from warehouse.pseudonymise import load_key
    from warehouse.purge import PurgeError
    from warehouse.sources import load_sources

    settings = settings_for(ctx, data_dir)
    if not yes:
        typer.confirm(
            f"Erase {person_id} from the warehouse, every snapshot, the analysts' file and "
            "the landing zone's loaded deliveries? "
            "This cannot be undone",
            abort=True,
        )
    with reported((erasure.ErasureError, PurgeError), (sa.exc.OperationalError,), "the stores"):
        report = erasure.erase(
            person_id=person_id,
            reason=reason,
            upheld_by=upheld_by,
            recorded_by=by or getpass.getuser(),
            warehouse=settings.warehouse,
            store=settings.snapshot_store(),
            engine=settings.operational_engine(),
            sources=load_sources(settings.config_dir),
            key=load_key(settings.data_dir),
            landing=(landing or settings.landing).resolve(),
        )
    table = Table("file", "table", "rows removed or changed")
    table.columns[0].overflow = "fold"
    for name, count in sorted(report.counts.items()):
        file, _, relation = name.partition(":")
        table.add_row(file, relation, str(count))
    out.print(table)
    out.print(
        f"Erased {person_id}: {report.records} source records destroyed and tombstoned "
        f"(erasure #{report.erasure_id}); a redelivery of them goes to quarantine."
    )


def erasures(
    ctx: typer.Context,
    forget_lost: Annotated[
        int | None,
        typer.Option(
            "--forget-lost",
            help="Take this lost erasure off the warehouse's register, so loads resume.",
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (with --forget-lost).")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who decides (default $USER).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Erasures the warehouse has had that the operational store no longer holds (it was
    restored from an older backup): loads stop until it is restored from a newer one, or
    the DPO forgets each lost erasure and has the person erased again."""
    import duckdb

    from warehouse import erasure
    from warehouse.store import connect

    settings = settings_for(ctx, data_dir)
    with reported((erasure.ErasureError,), (sa.exc.OperationalError, duckdb.Error), "the stores"):
        if not settings.warehouse.exists():
            raise erasure.ErasureError(f"no warehouse at {settings.warehouse}")
        engine = settings.operational_engine()
        con = connect(settings.warehouse)
        try:
            if forget_lost is not None:
                erasure.forget_lost(
                    con, engine, forget_lost, reason=reason or "", by=by or getpass.getuser()
                )
                out.print(
                    f"Erasure #{forget_lost} is off the register: loads resume. Erase the "
                    "person again once their records are back."
                )
            lost = erasure.lost_erasures(con, engine)
        finally:
            con.close()
    if not lost:
        out.print("No lost erasures: the operational store holds every erasure applied here.")
        return
    for erasure_id, recorded_at in lost:
        out.print(f"[red]Lost:[/red] erasure #{erasure_id}, recorded {recorded_at}")
    raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command()(erase)
    app.command()(erasures)
