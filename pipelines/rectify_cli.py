"""Subject rights on the command line: ``sdv rectify`` and ``sdv rectifications`` (Art. 16).

``sdv rectify PERSON_ID --field surname --old OLD --new NEW --reason TEXT --requester WHO``
records a correction of a field of the person's golden record. It shows in the Family View
from the next publish (``sdv publish``) and holds until a source delivers a value of its
own. It prints the users who read the person before the correction (from the audit,
following former person ids), so they can be told. ``sdv rectifications`` lists active and
lapsed corrections.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipelines.cli_support import reported, settings_for

out = Console(soft_wrap=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: SDV_DATA_DIR, else ./data)."),
]


def _published(settings, person_id: str, field: str) -> tuple[str | None, str | None, list[str]]:
    """The value of ``field`` readers see for the person, where it came from, their records."""
    import json

    from warehouse.publish import person_record_ids
    from warehouse.rectification import RectificationError, as_text

    with settings.snapshot_store().reader() as con:
        # ``field`` is one of rectification.FIELDS (checked by the caller), never user text.
        found = con.execute(
            f'select "{field}", field_sources from person where person_id = ?', [person_id]
        ).fetchall()
        records = person_record_ids(con, person_id)
    if not found:
        raise RectificationError(f"no person {person_id} in the published Family View")
    value, sources = found[0]
    source = json.loads(sources or "{}").get(field)
    return as_text(value), source, records


def rectify(
    ctx: typer.Context,
    person_id: Annotated[str, typer.Argument(help="The person's id in the published view.")],
    field: Annotated[str, typer.Option("--field", help="Golden-record field to correct.")],
    old: Annotated[str, typer.Option("--old", help="The value people saw ('' for none).")],
    new: Annotated[str, typer.Option("--new", help="The correct value ('' for none).")],
    reason: Annotated[str, typer.Option("--reason", help="Why: kept with the correction.")],
    requester: Annotated[str, typer.Option("--requester", help="Who asked for it.")],
    by: Annotated[str | None, typer.Option("--by", help="Who records it (default $USER).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Correct a field of a person's golden record; list the users who saw the old value."""
    import sqlalchemy as sa

    from pipelines.audit_cli import lineage
    from warehouse import rectification
    from warehouse.audit import AuditError
    from warehouse.publish import PublishError

    settings = settings_for(ctx, data_dir)
    who = by or getpass.getuser()
    refusals = (rectification.RectificationError, PublishError, AuditError)
    with reported(refusals, (sa.exc.DBAPIError,), "the operational store"):
        rectification.check_field(field)
        current, source, records = _published(settings, person_id, field)
        engine = settings.operational_engine()
        done = rectification.rectify(
            engine,
            person_id=person_id,
            record_ids=records,
            field=field,
            old=old,
            new=new,
            current=current,
            field_source=source,
            reason=reason,
            requester=requester,
            recorded_by=who,
        )
        found = lineage(settings.warehouse, person_id)
        seen = rectification.viewers(engine, found.ids, done.recorded_at)
    out.print(
        f"Rectification {done.id} recorded for {person_id}: {field} "
        f"{escape(repr(done.old_value))} -> {escape(repr(done.new_value))} "
        f"(asked by {escape(done.requester)}, recorded by {escape(who)})."
    )
    out.print(
        "It shows in the Family View from the next publish (sdv publish) and holds until a "
        "source delivers a value of its own."
    )
    _print_viewers(seen, found.warning)
    out.print(
        "Readers until that publish see the old value too: after it, `sdv rectifications "
        f"--viewers {done.id}` lists everyone who read the person until then."
    )


def _print_viewers(seen: list, warning: str | None) -> None:
    if warning:  # former ids not followed: some readers may be missing
        out.print(f"[yellow]{escape(warning)}: readers under former ids are not listed[/yellow]")
    if not seen:
        out.print("Nobody has read this person's data: no one to tell.")
        return
    table = Table("user", "role", "organisation", "last access (UTC)", "reads",
                  title="Users who saw the old value: tell them")  # fmt: skip
    for viewer in seen:
        table.add_row(
            escape(viewer.user_id),
            viewer.role,
            escape(viewer.organisation or ""),
            viewer.last_access.strftime("%Y-%m-%d %H:%M:%S"),
            str(viewer.reads),
        )
    out.print(table)


def rectifications(
    ctx: typer.Context,
    active: Annotated[bool, typer.Option("--active", help="Only those still overriding.")] = False,
    viewers: Annotated[
        int | None,
        typer.Option(
            "--viewers",
            metavar="ID",
            help="Instead, who saw the old value of rectification ID: every reader of the "
            "person until the publish that applied it (until now if none has yet).",
        ),
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who reads (default $USER).")] = None,
    data_dir: DataDir = None,
) -> None:
    """List rectifications, oldest first: active ones and those a source overtook.

    The list shows the values corrected (names, dates of birth) of everyone listed, so
    reading it is recorded in the audit trail first, as a subject-rights action."""
    import sqlalchemy as sa

    from warehouse import audit, rectification

    settings = settings_for(ctx, data_dir)
    if viewers is not None:
        _viewers_of(settings, viewers)
        return
    engine = settings.operational_engine()
    with reported((audit.AuditError,), (sa.exc.DBAPIError,), "the operational store"):
        items = rectification.listed(engine, active_only=active)
        if items:
            audit.record_rights_action(
                engine,
                by=by or getpass.getuser(),
                action="rectifications_read",
                person_ids=[item.person_id for item in items],
                tables=["rectifications"],
                detail={"reason": "listed rectifications", "rows": len(items)},
            )
    if not items:
        out.print("No rectifications recorded.")
        return
    for item in items:
        status = (
            "active"
            if item.lapsed_at is None
            else f"lapsed {item.lapsed_at:%Y-%m-%d %H:%M} UTC: {item.lapsed_reason}"
        )
        out.print(
            f"#{item.id} {item.person_id} {item.field}: {escape(repr(item.old_value))} -> "
            f"{escape(repr(item.new_value))}  {escape(f'[{status}]')}"
        )
        out.print(
            f"    why: {escape(item.reason)}; asked by {escape(item.requester)}; recorded "
            f"{item.recorded_at:%Y-%m-%d %H:%M} UTC by {escape(item.recorded_by)}"
        )


def _viewers_of(settings, rectification_id: int) -> None:
    """Everyone who read the person while the old value was served (`--viewers`)."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from pipelines.audit_cli import lineage
    from warehouse import rectification

    engine = settings.operational_engine()
    with reported((), (sa.exc.DBAPIError,), "the operational store"):
        items = {r.id: r for r in rectification.listed(engine)}
    done = items.get(rectification_id)
    if done is None:
        out.print(f"[red]No rectification {rectification_id}[/red] (sdv rectifications lists them)")
        raise typer.Exit(code=1)
    history = settings.snapshot_store().history()
    until = rectification.served_until(
        [p.published_at for p in history if p.action == "publish"], done.recorded_at
    )
    found = lineage(settings.warehouse, done.person_id)
    seen = rectification.viewers(engine, found.ids, until or datetime.now(UTC))
    shown = f"until the publish of {until:%Y-%m-%d %H:%M:%S} UTC" if until else "not yet published"
    out.print(
        f"Rectification {done.id} of {done.person_id}'s {done.field} ({shown}): readers of "
        "the old value."
    )
    _print_viewers(seen, found.warning)


def register(app: typer.Typer) -> None:
    app.command()(rectify)
    app.command()(rectifications)
