"""`sdv review`: clerical review of the pairs linkage could not decide on its own.

``sdv review`` lists what is waiting; ``show`` puts the two records side by side with the
comparison levels that drove the score; ``accept`` / ``reject`` record a decision with the
reviewer's name and reason; ``split`` separates records linkage wrongly merged into one
person; ``history`` shows everything decided so far. Decisions live in the operational
store (``SDV_OPERATIONAL_URL``) and are honoured by every later linkage run. Whatever a
command displays of the records (their contents, or only their ids, whose local keys can be
UPNs) is recorded in the audit trail first, as a reading (:func:`_read_recorded`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipelines.cli_support import reported, settings_for
from pipelines.settings import Settings

if TYPE_CHECKING:
    import duckdb
    from sqlalchemy.engine import Engine

    from warehouse.review import ReviewItem

review_app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="Review uncertain links: accept, reject, or split people linkage merged wrongly.",
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

SHORT_ID = 8  # like git: enough to be unique in practice; any unique prefix is accepted

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: SDV_DATA_DIR, else ./data)."),
]
Reviewer = Annotated[
    str | None,
    typer.Option(
        "--reviewer", envvar="USER", help="Who reads or decides, as recorded (default: $USER)."
    ),
]
Reason = Annotated[str, typer.Option("--reason", help="Why: read later by auditors and peers.")]


def _engine(settings: Settings) -> Engine:
    return settings.operational_engine()


@contextmanager
def _reported() -> Iterator[None]:
    # Imported here, like the rest of the heavy libraries, so `sdv --help` stays quick.
    import duckdb
    import sqlalchemy as sa

    from warehouse.audit import AuditError
    from warehouse.audit_config import AuditConfigError
    from warehouse.review import ReviewError

    refused = (ReviewError, AuditError, AuditConfigError)
    with reported(refused, (sa.exc.OperationalError, duckdb.Error), "the store"):
        yield


def _first(record: dict[str, Any], *keys: str) -> str:
    for key in keys:
        if record.get(key) not in (None, ""):
            return str(record[key])
    return ""


def _describe(record_id: str, record: dict[str, Any]) -> str:
    name = " ".join(
        part
        for part in (
            _first(record, "forename", "first_name", "given_name"),
            _first(record, "surname", "last_name", "family_name"),
        )
        if part
    ) or _first(record, "name")
    dob = _first(record, "dob", "date_of_birth")
    source = _first(record, "source") or record_id.split("|", 1)[0]
    return f"{escape(name or '(no name)')}\n{escape(dob or '(no dob)')} · {escape(source)}"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


@review_app.callback()
def main(
    ctx: typer.Context,
    data_dir: DataDir = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many; 0 for all.")] = 50,
    reviewer: Reviewer = None,
) -> None:
    """Without a subcommand: list the pairs waiting for review."""
    ctx.obj = {"data_dir": data_dir}
    if ctx.invoked_subcommand is None:
        list_pending(ctx, data_dir=data_dir, limit=limit, reviewer=reviewer)


def _read_recorded(
    settings: Settings,
    reader: str | None,
    shown: str,
    record_ids: list[str],
    pair_ids: list[str],
    person_ids: list[str] | None = None,
) -> None:
    """Record the reading in the audit trail before anything is shown (``review.record_read``):
    under ``config/audit.yaml``'s ``linkage_access``, with the persons linkage last put the
    records in."""
    from warehouse import review
    from warehouse.audit_config import load_audit_config
    from warehouse.review import ReviewError

    if not reader:
        raise ReviewError("say who is reading: --reviewer NAME ($USER is not set)")
    review.record_read(
        _engine(settings),
        by=reader,
        access=load_audit_config(settings.config_dir).linkage_access,
        shown=shown,
        record_ids=record_ids,
        persons=persons_of(settings.warehouse, record_ids),
        pair_ids=pair_ids,
        person_ids=person_ids or [],
    )


def _items_read(
    settings: Settings, reader: str | None, shown: str, items: list[ReviewItem]
) -> None:
    records = [r for item in items for r in (item.record_id_l, item.record_id_r)]
    _read_recorded(settings, reader, shown, records, [item.pair_id for item in items])


@review_app.command("list")
def list_pending(
    ctx: typer.Context,
    data_dir: DataDir = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many; 0 for all.")] = 50,
    reviewer: Reviewer = None,
) -> None:
    """Pairs waiting for review, likeliest matches first (the reading is audited)."""
    from warehouse import review

    with _reported():
        settings = settings_for(ctx, data_dir)
        items = review.pending(_engine(settings))
        shown = items[:limit] if limit else items
        if shown:
            _items_read(settings, reviewer, "list", shown)
    if not items:
        out.print("No pairs waiting for review.")
        return
    table = Table(title=f"{len(items):,} pair(s) waiting for review")
    table.add_column("pair")
    table.add_column("probability", justify="right")
    table.add_column("left record")
    table.add_column("right record")
    for item in shown:
        table.add_row(
            item.pair_id[:SHORT_ID],
            f"{item.match_probability:.3f}",
            _describe(item.record_id_l, item.record_l),
            _describe(item.record_id_r, item.record_r),
        )
    out.print(table)
    if len(shown) < len(items):
        out.print(f"Showing {len(shown)} of {len(items):,}; --limit 0 shows all.")
    out.print("Inspect one with: sdv review show PAIR_ID")


# Where a record comes from, not who it describes: never a disagreement.
_PROVENANCE = {"source", "table", "record_id", "local_key"}


def _same(field: str, left: Any, right: Any) -> bool | None:
    """Whether two displayed values agree, ignoring case and spacing; None if not comparable."""
    if field in _PROVENANCE or left in (None, "") or right in (None, ""):
        return None
    return " ".join(str(left).split()).casefold() == " ".join(str(right).split()).casefold()


def _show(item: ReviewItem) -> None:
    out.print(
        f"Pair [b]{item.pair_id}[/b]  {item.status}  ·  match probability "
        f"[b]{item.match_probability:.3f}[/b]  ·  match weight {item.match_weight:.2f}"
    )
    out.print(
        f"Queued first {_when(item.first_queued_at)}, last {_when(item.last_queued_at)} "
        f"(run {escape(item.last_run_id)})"
    )
    records = Table(show_lines=False)
    records.add_column("field")
    records.add_column("left")
    records.add_column("right")
    records.add_column("", justify="center")
    records.add_row("record id", escape(item.record_id_l), escape(item.record_id_r), "")
    fields = list(dict.fromkeys([*item.record_l, *item.record_r]))
    for field in fields:
        left, right = item.record_l.get(field), item.record_r.get(field)
        same = _same(field, left, right)
        mark, style = {True: ("=", None), False: ("≠", "bold yellow"), None: ("", "dim")}[same]
        records.add_row(
            escape(field),
            escape("" if left is None else str(left)),
            escape("" if right is None else str(right)),
            mark,
            style=style,
        )
    out.print(records)
    levels = Table(title="Comparison levels behind the score")
    levels.add_column("comparison")
    levels.add_column("level")
    for comparison, level in item.levels.items():
        levels.add_row(escape(comparison), escape(str(level)))
    out.print(levels)


@review_app.command()
def show(
    ctx: typer.Context,
    pair_id: Annotated[str, typer.Argument(help="Pair id, or a unique prefix of it.")],
    data_dir: DataDir = None,
    reviewer: Reviewer = None,
) -> None:
    """The two records side by side, disagreements marked, and what drove the score (the
    reading is audited)."""
    from warehouse import review

    with _reported():
        settings = settings_for(ctx, data_dir)
        engine = _engine(settings)
        item = review.get_item(engine, pair_id)
        decisions = review.decision_history(engine).filter(
            record_id_l=item.record_id_l, record_id_r=item.record_id_r
        )
        _items_read(settings, reviewer, "show", [item])
    _show(item)
    for row in decisions.iter_rows(named=True):  # oldest first: the last one is in force
        out.print(
            f"{_when(row['decided_at'])} [b]{row['decision']}[/b] by {escape(row['reviewer'])}: "
            f"{escape(row['reason'])}"
        )


def _decide(
    ctx: typer.Context,
    pair_id: str,
    decision: str,
    reviewer: str | None,
    reason: str,
    data_dir: Path | None,
) -> None:
    from warehouse import review
    from warehouse.review import ReviewError

    with _reported():
        if not reviewer:
            raise ReviewError("say who decides: --reviewer NAME ($USER is not set)")
        settings = settings_for(ctx, data_dir)
        engine = _engine(settings)
        item = review.get_item(engine, pair_id)
        review.decide(engine, item.pair_id, decision, reviewer, reason)
        # The confirmation names both records (a local key can be a UPN): a reading, audited
        # once the decision stands, before anything is shown.
        _items_read(settings, reviewer, decision, [item])
    effect = "must-link" if decision == "accept" else "cannot-link"
    verb = "Accepted" if decision == "accept" else "Rejected"
    out.print(
        f"{verb} {item.pair_id[:SHORT_ID]}: {escape(item.record_id_l)} ↔ "
        f"{escape(item.record_id_r)} ({effect} from the next linkage run)"
    )


@review_app.command()
def accept(
    ctx: typer.Context,
    pair_id: Annotated[str, typer.Argument(help="Pair id, or a unique prefix of it.")],
    reason: Reason,
    reviewer: Reviewer = None,
    data_dir: DataDir = None,
) -> None:
    """The two records are the same person."""
    _decide(ctx, pair_id, "accept", reviewer, reason, data_dir)


@review_app.command()
def reject(
    ctx: typer.Context,
    pair_id: Annotated[str, typer.Argument(help="Pair id, or a unique prefix of it.")],
    reason: Reason,
    reviewer: Reviewer = None,
    data_dir: DataDir = None,
) -> None:
    """The two records are different people."""
    _decide(ctx, pair_id, "reject", reviewer, reason, data_dir)


def _read_only(warehouse: Path) -> duckdb.DuckDBPyConnection:
    """The warehouse, read-only, without replacement scans: a missing table must be an
    error, not this module's function of the same name picked up from the caller's scope."""
    import duckdb

    return duckdb.connect(
        str(warehouse), read_only=True, config={"python_enable_replacements": False}
    )


def person_records(warehouse: Path, person_id: str) -> list[str]:
    """The record ids linkage last put in this person, from the warehouse (read-only)."""
    import duckdb

    from warehouse.review import ReviewError

    if not warehouse.exists():
        raise ReviewError(f"no warehouse at {warehouse}")
    con = _read_only(warehouse)
    try:
        rows = con.execute(
            "SELECT record_id FROM linked.person_records "
            "WHERE CAST(person_id AS VARCHAR) = ? ORDER BY record_id",
            [person_id],
        ).fetchall()
    except duckdb.CatalogException as exc:
        raise ReviewError(
            f"the warehouse {warehouse} has no linked.person_records: has linkage run?"
        ) from exc
    finally:
        con.close()
    if not rows:
        raise ReviewError(f"no person {person_id} in linked.person_records")
    return [row[0] for row in rows]


def persons_of(warehouse: Path, record_ids: list[str]) -> dict[str, str]:
    """Record id to the person linkage last put it in, for the records that have one (none
    before the first linkage, or where the warehouse is elsewhere than the queue)."""
    import duckdb

    if not warehouse.exists() or not record_ids:
        return {}
    con = _read_only(warehouse)
    try:
        rows = con.execute(
            "SELECT record_id, CAST(person_id AS VARCHAR) FROM linked.person_records "
            "WHERE record_id IN (SELECT unnest(?::VARCHAR[]))",
            [sorted(set(record_ids))],
        ).fetchall()
    except duckdb.CatalogException:
        return {}
    finally:
        con.close()
    return dict(rows)


def split_groups(person_id: str, records: list[str], listed: list[list[str]]) -> list[list[str]]:
    """The listed groups plus, as the last group, the person's records not listed."""
    from warehouse.review import ReviewError

    belongs = set(records)
    for group in listed:
        for record_id in group:
            if record_id not in belongs:
                raise ReviewError(f"record {record_id} does not belong to person {person_id}")
    named = {record_id for group in listed for record_id in group}
    rest = [record_id for record_id in records if record_id not in named]
    groups = [group for group in listed if group] + ([rest] if rest else [])
    if len(groups) < 2:
        raise ReviewError(f"nothing to split: the group covers all of person {person_id}'s records")
    return groups


@review_app.command()
def split(
    ctx: typer.Context,
    person_id: Annotated[str, typer.Argument(help="The person linkage merged wrongly.")],
    group: Annotated[
        list[str],
        typer.Option(
            "--group", help="Comma-separated record ids to split off; repeat for more groups."
        ),
    ],
    reason: Reason,
    reviewer: Reviewer = None,
    data_dir: DataDir = None,
) -> None:
    """Split records off a person: the rest of their records stay together as one group."""
    from warehouse import review
    from warehouse.review import ReviewError

    listed = [[r.strip() for r in g.split(",") if r.strip()] for g in group]
    with _reported():
        if not reviewer:
            raise ReviewError("say who decides: --reviewer NAME ($USER is not set)")
        settings = settings_for(ctx, data_dir)
        groups = split_groups(person_id, person_records(settings.warehouse, person_id), listed)
        split_id = review.split_person(
            _engine(settings), person_id, groups, reviewer=reviewer, reason=reason
        )
        # The confirmation lists every group's record ids: audited as a reading, like list.
        listed_ids = [record_id for g in groups for record_id in g]
        _read_recorded(settings, reviewer, "split", listed_ids, [], [person_id])
    out.print(f"Split {split_id}: person {escape(person_id)} into {len(groups)} groups")
    for number, members in enumerate(groups, start=1):
        out.print(f"  group {number}: {escape(', '.join(members))}")
    out.print("Records in different groups are cannot-link from the next linkage run.")


@review_app.command()
def history(ctx: typer.Context, data_dir: DataDir = None, reviewer: Reviewer = None) -> None:
    """Every decision and split so far, oldest first, with who and why (the reading is
    audited: record ids and reasons)."""
    from warehouse import review

    with _reported():
        settings = settings_for(ctx, data_dir)
        decisions = review.decision_history(_engine(settings))
        if not decisions.is_empty():
            _read_recorded(
                settings,
                reviewer,
                "history",
                [*decisions["record_id_l"].drop_nulls(), *decisions["record_id_r"].drop_nulls()],
                decisions["pair_id"].drop_nulls().to_list(),
                decisions["person_id"].drop_nulls().to_list(),
            )
    if decisions.is_empty():
        out.print("No decisions yet.")
        return
    table = Table(title=f"{decisions.height:,} decision(s)")
    for column in ("when", "decision", "records", "reviewer", "reason"):
        table.add_column(column)
    for row in decisions.iter_rows(named=True):
        if row["decision"] == "split":
            records = f"person {row['person_id']}: {row['groups']}"
        else:
            records = f"{row['record_id_l']} ↔ {row['record_id_r']}"
        table.add_row(
            _when(row["decided_at"]),
            row["decision"],
            escape(records),
            escape(row["reviewer"]),
            escape(row["reason"]),
        )
    out.print(table)
