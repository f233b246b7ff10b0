"""`sdv publish`, `sdv rollback`, `sdv snapshots`, `sdv dictionary`: the Family View.

``publish`` runs the Dagster job that builds tonight's snapshot, checks it and switches
readers to it (as the nightly ``link_and_publish`` run does after linkage);
``rollback`` points readers back at the previous snapshot kept; ``snapshots`` lists what
is kept and which one readers get; ``dictionary`` regenerates ``docs/data-dictionary.md``.
"""

from __future__ import annotations

import getpass
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipelines.settings import PROJECT_ROOT, Settings

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: SDV_DATA_DIR, else ./data)."),
]


def published_or_exit(settings: Settings, trigger: str) -> None:
    """Run the publish job; print what readers now see, or why nothing changed."""
    from pipelines.cli import run_job
    from pipelines.definitions import PUBLISH_JOB

    started = time.perf_counter()
    with console.status("Building, checking and publishing the Family View"):
        ok, message, metadata = run_job(settings, PUBLISH_JOB, trigger)
    report_published_or_exit(ok, message, metadata, time.perf_counter() - started)


def report_published_or_exit(ok: bool, message: str, metadata: dict, seconds: float) -> None:
    """What a run that ends in publishing did (``publish_family_view`` or the nightly
    ``link_and_publish``): what readers now see, or why they stay where they were (exit 1)."""
    from assets.family_view import PUBLISHED, SNAPSHOT

    built = metadata.get(SNAPSHOT.to_user_string(), {})
    if not ok or PUBLISHED.to_user_string() not in metadata:
        console.print(f"[red]Not published:[/red] {message}")
        if built:
            console.print(f"Readers stay on the previous snapshot; built: {built['snapshot']}")
        else:
            console.print("Nothing was built; readers stay on the previous snapshot.")
        raise typer.Exit(code=1)
    rows = built["rows"]
    out.print(
        f"Published Family View as of {built['as_of']} in {seconds:.1f}s: "
        f"{rows['person']:,} people, {rows['child_summary']:,} children, "
        f"{rows['timeline']:,} timeline events ({Path(built['snapshot']).name})"
    )
    if built.get("unlinked_rows"):
        out.print(f"Rows whose person is not linked (not shown): {built['unlinked_rows']}")
    if built.get("rectifications_lapsed"):
        out.print(
            f"Rectifications a source overtook (now lapsed, see sdv rectifications): "
            f"{built['rectifications_lapsed']}"
        )


def publish(data_dir: DataDir = None) -> None:
    """Build tonight's Family View snapshot, check it, and switch readers to it."""
    published_or_exit(Settings.for_data_dir(data_dir), "sdv publish")


def rollback(
    data_dir: DataDir = None,
    reason: Annotated[str, typer.Option("--reason", help="Why: kept in the audit.")] = "",
) -> None:
    """Point readers back at the previous published snapshot."""
    from warehouse import audit
    from warehouse.publish import PublishError

    if not reason.strip():
        console.print("[red]Give a --reason: rollbacks are recorded in the audit.[/red]")
        raise typer.Exit(code=2)
    settings = Settings.for_data_dir(data_dir)
    try:
        back = settings.snapshot_store().rollback()
    except PublishError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=1) from exc
    engine = settings.operational_engine()
    audit.append(
        engine,
        audit.AuditEvent(
            user_id=getpass.getuser(),
            role="operator",
            purpose="operations",
            action="rollback",
            outcome="allowed",
            detail={"snapshot": back.snapshot, "reason": reason},
        ),
    )
    out.print(f"Readers now get {back.snapshot} (as of {back.as_of}).")
    _warn_unapplied(engine, back.snapshot)


def _warn_unapplied(engine, snapshot: str) -> None:
    """Corrections recorded after the snapshot was built are not in it: say so, since
    readers now see the old values again (``sdv publish`` applies them)."""
    from warehouse import rectification
    from warehouse.publish import built_at

    started = built_at(snapshot)
    missing = rectification.not_in(engine, started) if started else []
    if missing:
        ids = ", ".join(str(r.id) for r in missing)
        out.print(
            f"[yellow]{len(missing)} rectification(s) recorded since it was built are not in "
            f"it ({ids}): readers see the old values until the next publish (sdv publish).[/yellow]"
        )


def snapshots(data_dir: DataDir = None) -> None:
    """List the kept snapshots, newest first, and which one readers get."""
    settings = Settings.for_data_dir(data_dir)
    store = settings.snapshot_store()
    current = store.current()
    table = Table("snapshot", "as of", "published", "readers")
    seen = set()
    for entry in reversed(store.history()):
        if entry.snapshot in seen or not store.path(entry.snapshot).exists():
            continue
        seen.add(entry.snapshot)
        is_current = current is not None and entry.snapshot == current.snapshot
        readers = "current" if is_current else ""
        table.add_row(entry.snapshot, entry.as_of, entry.published_at, readers)
    out.print(table)
    for path in store.unpublished():
        out.print(f"built but not published (failed checks?): {path.name}")


def dictionary(
    out_file: Annotated[Path, typer.Option("--out")] = PROJECT_ROOT / "docs" / "data-dictionary.md",
) -> None:
    """Regenerate the data dictionary from the curated schema and the role policy."""
    from warehouse.dictionary import render
    from warehouse.policy import load_policy

    settings = Settings.from_env()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(render(load_policy(settings.policy)), encoding="utf-8")
    out.print(f"Wrote {out_file}")


def register(app: typer.Typer) -> None:
    for command in (publish, rollback, snapshots, dictionary):
        app.command()(command)
