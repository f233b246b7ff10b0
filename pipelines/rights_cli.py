"""Subject rights on the command line: ``sdv restrict`` (UK GDPR Art. 18).

``sdv restrict PERSON_ID --reason TEXT`` hides the person from every role but the DPO, from
the next read on (no republish needed); ``--lift`` ends it. Both are recorded in the
operational store and the audit with who and why.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipelines.settings import Settings

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def restrict(
    person_id: Annotated[str, typer.Argument(help="The person's id in the published view.")],
    reason: Annotated[str, typer.Option("--reason", help="Why: kept with the restriction.")],
    lift: Annotated[bool, typer.Option("--lift", help="End the restriction instead.")] = False,
    by: Annotated[str | None, typer.Option("--by", help="Who records it (default $USER).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Restrict processing of a person (hidden from every role but the DPO), or --lift it."""
    from warehouse import audit, restriction
    from warehouse.publish import PublishError, person_record_ids

    settings = Settings.for_data_dir(data_dir)
    who = by or getpass.getuser()
    try:
        with settings.snapshot_store().reader() as con:
            records = person_record_ids(con, person_id)
    except PublishError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=1) from exc
    engine = settings.operational_engine()
    try:
        if lift:
            restriction.lift(engine, records, reason, who)
        else:
            restriction.restrict(engine, person_id, records, reason, who)
    except restriction.RestrictionError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=1) from exc
    audit.record_rights_action(
        engine,
        by=who,
        action="lift_restriction" if lift else "restrict",
        person_ids=[person_id],
        detail={"reason": reason, "records": len(records)},
    )
    state = "lifted for" if lift else "now restricted:"
    out.print(f"Processing {state} {person_id} ({len(records)} source records).")


def register(app: typer.Typer) -> None:
    app.command()(restrict)
