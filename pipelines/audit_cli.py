"""`sdv audit`: who has seen a child's data, when and why; is the audit trail intact?

``sdv audit --person ID`` lists every recorded read of that person's data (and decisions
not to share it), oldest first, following the person's former ids through the merges and
splits linkage recorded in the warehouse (``linked.person_events``), because the audit keeps
the id as it was when the data was read. ``sdv audit verify`` checks the hash chain and exits
1 if anything was changed, deleted or inserted; ``sdv audit no-share`` records a decision
not to share. Without options, ``sdv audit`` lists the latest events. The trail lives in the
operational store (``SDV_OPERATIONAL_URL``).

Reading the trail is itself recorded in it, before anything is shown (action
``audit_read``, the reader from ``--user``): the trail names who has seen whom, so each
person whose history is read finds that reading in their own history.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipelines.cli_support import reported, settings_for
from pipelines.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from warehouse.audit import AuditRecord

audit_app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="The audit trail: who has seen a person's data and why; verify it; record no-share.",
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: SDV_DATA_DIR, else ./data)."),
]
Limit = Annotated[int, typer.Option(min=0, help="Latest events to list; 0 for all.")]
Reader = Annotated[
    str | None,
    typer.Option("--user", envvar="USER", help="Who reads the trail (default: $USER)."),
]


def _engine(settings: Settings) -> Engine:
    return settings.operational_engine()


@contextmanager
def _reported() -> Iterator[None]:
    import sqlalchemy as sa

    from warehouse.audit import AuditError

    with reported((AuditError,), (sa.exc.DBAPIError,), "the audit store"):
        yield


@dataclass
class Lineage:
    """The ids to search for one person: the given id first, then former ids and how."""

    person_id: str
    former: dict[str, str] = field(default_factory=dict)  # former id -> what became of it
    notes: list[str] = field(default_factory=list)  # what became of the given id since
    warning: str | None = None

    @property
    def ids(self) -> list[str]:
        return [self.person_id, *self.former]


_EVENT_COLUMNS = {"run_id", "event", "person_id", "previous_person_ids"}


def lineage(warehouse: Path, person_id: str) -> Lineage:
    """Former ids of ``person_id`` from ``linked.person_events`` (read-only), if there is one.

    A merge keeps one id and absorbs the others; a split mints a new id for records that
    left an old one. Either way the old ids' audit events are about records this person now
    holds, so they are followed, transitively, back to the first run.
    """
    import duckdb

    found = Lineage(person_id)
    if not warehouse.exists():
        return found
    try:
        con = duckdb.connect(
            str(warehouse), read_only=True, config={"python_enable_replacements": False}
        )
    except duckdb.Error as exc:
        found.warning = f"cannot read {warehouse} for former ids: {exc}"
        return found
    try:
        columns = {
            row[0]
            for row in con.execute(
                "select column_name from duckdb_columns() "
                "where schema_name = 'linked' and table_name = 'person_events'"
            ).fetchall()
        }
        if not columns:
            return found
        if not columns >= _EVENT_COLUMNS:
            found.warning = (
                f"linked.person_events lacks {', '.join(sorted(_EVENT_COLUMNS - columns))}: "
                "former ids not followed"
            )
            return found
        queue, seen = [person_id], {person_id}
        while queue:
            current = queue.pop(0)
            rows = con.execute(
                "select run_id, event, previous_person_ids from linked.person_events "
                "where person_id = ? and event in ('merge', 'split') order by run_id",
                [current],
            ).fetchall()
            for run_id, event, previous in rows:
                for former in previous or []:
                    if former in seen:
                        continue
                    seen.add(former)
                    queue.append(former)
                    found.former[former] = (
                        f"merged into {current} (run {run_id})"
                        if event == "merge"
                        else f"{current} split off from it (run {run_id})"
                    )
        later = con.execute(
            "select run_id, event, person_id from linked.person_events "
            "where list_contains(previous_person_ids, ?) "
            "and (person_id is null or person_id <> ?) order by run_id",
            [person_id, person_id],
        ).fetchall()
        for run_id, event, after in later:
            if event == "retired":
                found.notes.append(f"{person_id} was retired in run {run_id}")
            elif event == "merge":
                found.notes.append(
                    f"{person_id} was merged into {after} in run {run_id}: later reads are "
                    f"under {after} (sdv audit --person {after})"
                )
            else:
                found.notes.append(f"records of {person_id} went to {after} in run {run_id}")
    except duckdb.Error as exc:
        found.warning = f"cannot read linked.person_events for former ids: {exc}"
    finally:
        con.close()
    return found


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d\n%H:%M:%S UTC")


def _record_json(record: AuditRecord) -> dict[str, Any]:
    values = asdict(record)
    values["occurred_at"] = record.occurred_at.isoformat()
    return values


def _detail(record: AuditRecord) -> str:
    detail = record.detail or {}
    if record.action == "no_share":
        return f"not shared with {detail.get('recipient', '?')}: {detail.get('reason', '?')}"
    if record.action == "export":
        return (
            f"shared with {detail.get('recipient', '?')}: {detail.get('reason', '?')} "
            f"({detail.get('rows', 0):,} rows, {detail.get('file', '?')})"
        )
    return "\n".join(f"{key}={value}" for key, value in sorted(detail.items()))


# An export names every person in its file: the table lists this many, then says how many
# more there are and where to read them all.
SHOWN_PERSONS = 10


def _persons(record: AuditRecord) -> str:
    ids = record.person_ids
    if len(ids) <= SHOWN_PERSONS:
        return "\n".join(ids)
    more = f"and {len(ids) - SHOWN_PERSONS:,} more (--json lists all)"
    return "\n".join([*ids[:SHOWN_PERSONS], more])


def _table(title: str, records: list[AuditRecord], show_persons: bool) -> Table:
    """One row per event, fields grouped into five columns so it reads in 80 characters.

    Nothing in an audit answer may be cut off with an ellipsis: long values fold instead.
    """
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_lines=True)
    headers = ["when", "user / role / organisation", "purpose", "action: outcome / tables"]
    for column in [*headers, *(["person ids"] if show_persons else []), "detail"]:
        table.add_column(column, overflow="fold")
    for record in records:
        who = [record.user_id, record.role, *([record.organisation] if record.organisation else [])]
        why = record.purpose + (f"\n({record.lawful_basis})" if record.lawful_basis else "")
        cells = [
            _when(record.occurred_at),
            "\n".join(who),
            why,
            "\n".join([f"{record.action}: {record.outcome}", *record.tables]),
            *([_persons(record)] if show_persons else []),
            _detail(record),
        ]
        table.add_row(*(escape(cell) for cell in cells))
    return table


def _person(settings: Settings, person_id: str, as_json: bool, reader: str) -> None:
    from warehouse import audit

    person_id = person_id.strip()
    if not person_id:
        console.print("[red]Error:[/red] a person id is required")
        raise typer.Exit(code=1)
    found = lineage(settings.warehouse, person_id)
    if found.warning:
        console.print(f"[yellow]Warning:[/yellow] {escape(found.warning)}")
    with _reported():
        engine = _engine(settings)
        records = audit.person_history(engine, found.ids)
        audit.record_audit_read(
            engine,
            by=reader,
            person_ids=found.ids,
            detail={"query": "person", "events": len(records)},
        )
    if as_json:
        payload = {
            "person_id": person_id,
            "former_ids": found.former,
            "notes": found.notes,
            "warning": found.warning,
            "events": [_record_json(record) for record in records],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    for former, how in found.former.items():
        out.print(f"Including former id {escape(former)}: {escape(how)}")
    for note in found.notes:
        out.print(escape(note))
    if not records:
        out.print(f"No audit events for person {escape(person_id)}.")
        return
    users = len({record.user_id for record in records})
    title = f"{len(records):,} event(s) for person {person_id} by {users} user(s), oldest first"
    out.print(_table(escape(title), records, show_persons=len(found.ids) > 1))


@audit_app.callback()
def main(
    ctx: typer.Context,
    person: Annotated[
        str | None, typer.Option("--person", help="Who has seen this person's data, when, why.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Limit = 50,
    user: Reader = None,
    data_dir: DataDir = None,
) -> None:
    """With --person: that person's audit history. Alone: the latest events. Either reading
    is recorded in the trail first."""
    ctx.obj = {"data_dir": data_dir}
    if ctx.invoked_subcommand is not None:
        if person is not None:
            console.print("[red]Error:[/red] --person goes alone: sdv audit --person ID")
            raise typer.Exit(code=2)
        return
    settings = settings_for(ctx, data_dir)
    reader = user or getpass.getuser()
    if person is not None:
        _person(settings, person, as_json, reader)
        return
    from warehouse import audit

    with _reported():
        engine = _engine(settings)
        records = audit.events(engine, limit=limit or None, newest_first=True)
        audit.record_audit_read(
            engine,
            by=reader,
            person_ids={p for record in records for p in record.person_ids},
            detail={"query": "latest", "events": len(records)},
        )
    records.reverse()
    if as_json:
        typer.echo(json.dumps([_record_json(record) for record in records], indent=2))
    elif not records:
        out.print("No audit events yet.")
    else:
        out.print(_table(f"Latest {len(records):,} audit event(s)", records, show_persons=True))


def _anchor(text: str | None) -> tuple[int, str] | None:
    if text is None:
        return None
    seq, _, digest = text.partition(":")
    if not seq.strip().isdigit() or len(digest.strip()) != 64:
        raise typer.BadParameter("give SEQ:HASH as printed by an earlier `sdv audit verify`")
    return int(seq), digest.strip().lower()


@audit_app.command()
def verify(
    ctx: typer.Context,
    anchor: Annotated[
        str | None,
        typer.Option(help="SEQ:HASH noted from an earlier verify: fails if the chain lost it."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Check the audit chain: every hash, link, the head and the person index."""
    from warehouse import audit

    expected = _anchor(anchor)
    with _reported():
        report = audit.verify(_engine(settings_for(ctx, data_dir)), anchor=expected)
    if report.ok:
        out.print(f"Checked {report.checked:,} event(s): the audit chain is intact.")
        if report.base_seq:
            out.print(
                f"It starts after seq {report.base_seq}: retention destroyed seq 1 to "
                f"{report.base_seq} (config/audit.yaml keep_years), as its latest "
                "audit_retention event records."
            )
        if report.head_seq:
            out.print(
                f"Head: {report.head_seq}:{report.head_hash}  (note it somewhere safe; "
                "pass it later as --anchor)"
            )
        return
    out.print(
        f"[red]The audit chain is broken:[/red] {len(report.problems):,} problem(s) in "
        f"{report.checked:,} event(s)"
    )
    for problem in report.problems:
        out.print(f"  {escape(problem)}")
    raise typer.Exit(code=1)


@audit_app.command("no-share")
def no_share(
    ctx: typer.Context,
    person: Annotated[
        list[str], typer.Option("--person", help="Whose data is not shared; repeat for more.")
    ],
    recipient: Annotated[str, typer.Option(help="Who asked, or would have received it.")],
    reason: Annotated[str, typer.Option(help="Why not: read later by auditors and the DPO.")],
    purpose: Annotated[str, typer.Option(help="The purpose of the request declined.")],
    lawful_basis: Annotated[
        str | None, typer.Option("--lawful-basis", help="Basis considered, if any.")
    ] = None,
    organisation: Annotated[str | None, typer.Option(help="The deciding organisation.")] = None,
    user: Annotated[
        str | None, typer.Option("--user", envvar="USER", help="Who decides (default: $USER).")
    ] = None,
    role: Annotated[str, typer.Option(help="The decider's role.")] = "dpo",
    data_dir: DataDir = None,
) -> None:
    """Record a decision NOT to share persons' data, with the recipient and the reason."""
    from warehouse import audit
    from warehouse.audit import AuditError

    with _reported():
        if not user:
            raise AuditError("say who decides: --user NAME ($USER is not set)")
        record = audit.record_no_share(
            _engine(settings_for(ctx, data_dir)),
            user_id=user,
            role=role,
            organisation=organisation,
            person_ids=person,
            recipient=recipient,
            reason=reason,
            purpose=purpose,
            lawful_basis=lawful_basis,
        )
    out.print(
        f"Recorded (audit event {record.seq}): data of {escape(', '.join(record.person_ids))} "
        f"not shared with {escape(record.detail['recipient'])}"
    )
