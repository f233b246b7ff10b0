"""`sdv`: the command line a council data engineer uses day to day.

``sdv generate`` writes a synthetic landing zone; ``sdv load`` runs the nightly ingest
job over a landing zone through Dagster (in-process, recorded in the Dagster instance
under the data directory, so runs show in ``dagster dev`` afterwards); ``sdv nightly``
loads, applies retention, then links and publishes, as the schedules do; ``sdv demo``
generates a 5,000-household county, loads, links and publishes it and prints what it did.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.audit_cli import audit_app
from pipelines.erase_cli import register as register_erase
from pipelines.family_view_cli import register
from pipelines.rectify_cli import register as register_rectify
from pipelines.retention_cli import register as register_retention
from pipelines.review_cli import review_app
from pipelines.rights_cli import register as register_rights
from pipelines.sar_cli import register as register_sar
from pipelines.serve_cli import serve, token_app
from pipelines.settings import PROJECT_ROOT, Settings
from warehouse.sources import DEFAULT_CONFIG_DIR, ConfigError

if TYPE_CHECKING:
    from dagster import DagsterInstance

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Single Digital View: build a linked view of children and families.",
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
app.add_typer(review_app, name="review")
app.add_typer(audit_app, name="audit")
app.command("serve")(serve)
app.add_typer(token_app, name="token")
register(app)
register_rights(app)
register_sar(app)
register_retention(app)
register_rectify(app)
register_erase(app)


class LandingMissing(Exception):
    """The landing zone to load from does not exist."""


@dataclass(frozen=True)
class DeliveryOutcome:
    source: str
    extract_date: str
    ok: bool
    message: str
    ran: bool = True  # False: the folder is the one already loaded, so no run was started


# Runs are fully recorded in the Dagster instance; the terminal shows progress and, when a
# run fails, the reason and the run to open in the UI: not Dagster's log and stack traces.
_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _prepare_instance(settings: Settings) -> None:
    """Point Dagster at ``<data>/dagster`` with the project's ``dagster.yaml``."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", settings.dagster_home / "dagster.yaml")
    settings.export()


def _process_tags() -> dict[str, str]:
    """Tags naming the process that runs a job in-process, so that a later ``sdv`` can tell
    a run whose process died (killed, crashed, machine restarted) from one still going."""
    return {"sdv/host": socket.gethostname(), "sdv/pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def release_dead_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed the in-process runs whose process is gone, and free their pool slots.

    ``sdv`` runs jobs in-process, with no daemon watching. A run killed while its step held
    the ``duckdb_writer`` pool slot keeps that slot claimed, and every later writer (the
    next ``sdv load`` or ``sdv publish``) would wait for it forever. Only runs started on
    this host by a process that no longer exists are touched; a live one is left alone.
    Returns the ids of the runs released.
    """
    from dagster import DagsterRunStatus, RunsFilter

    host = socket.gethostname()
    unfinished = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    released = []
    for record in instance.get_run_records(
        filters=RunsFilter(statuses=unfinished, tags={"sdv/host": host})
    ):
        run = record.dagster_run
        pid = int(run.tags.get("sdv/pid", "0"))
        if pid <= 0 or pid == os.getpid() or _alive(pid):
            continue
        instance.report_run_failed(
            run,
            message=f"The process running this run (pid {pid} on {host}) ended before it "
            "finished (killed or crashed); marked failed by a later sdv command. Nothing it "
            "wrote is half-done: each delivery and each snapshot is written whole or not at "
            "all.",
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released


def _failure_message(result: object) -> str:
    for event in getattr(result, "all_events", []):
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            if data.user_failure_data and data.user_failure_data.description:
                return data.user_failure_data.description
            error = data.error
            while error is not None and error.cause is not None:
                error = error.cause  # Dagster wraps the user's exception: report the root
            return error.message.strip() if error else "step failed"
    return "run failed"


def _load_message(result: object) -> str:
    """What a successful ingest run did: ``loaded``, or why ``current`` did not change.

    Read from the raw assets' materialization metadata (``status``, ``extract_date``,
    ``current_extract_date``), which the ingest asset writes for every table.
    """
    for event in getattr(result, "all_events", []):
        if event.event_type_value != "ASSET_MATERIALIZATION":
            continue
        meta = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}
        if "status" not in meta:
            continue
        if meta["status"] == "unchanged":
            return "unchanged: already loaded, nothing written"
        current = meta.get("current_extract_date")
        if current and current != meta.get("extract_date"):
            return f"loaded, but older than the current delivery {current}, which stays current"
        return "loaded"
    return "loaded"


def _report_released(run_ids: list[str]) -> None:
    if run_ids:
        console.print(
            f"[yellow]Marked failed {len(run_ids)} earlier run(s) whose process had died: "
            f"{', '.join(run_ids)}[/yellow]"
        )


def run_load(settings: Settings) -> list[DeliveryOutcome]:
    """Run each source's ingest job for every delivery in the landing zone, oldest first."""
    from dagster import DagsterInstance

    from assets.ingest import partitions_for
    from pipelines.definitions import build_defs
    from pipelines.sensors import ingest_job_name
    from warehouse.landing import discover, landing_missing, split_loaded
    from warehouse.sources import load_sources
    from warehouse.store import loaded_folders

    _prepare_instance(settings)
    sources = load_sources(settings.config_dir)
    missing = landing_missing(settings.landing)
    if missing and not all(s.reads_database for s in sources.values()):
        raise LandingMissing(f"{missing}: nothing loaded (--landing, or SDV_LANDING)")
    defs = build_defs(settings)
    instance = DagsterInstance.get()
    _report_released(release_dead_runs(instance))
    found = discover(settings.landing, sources)
    loaded = loaded_folders(settings.warehouse)
    if loaded is None:
        console.print(
            f"[yellow]Could not open {settings.warehouse} to read which folders are "
            "loaded: every delivery folder is checked again.[/yellow]"
        )
    pending, done = split_loaded(found, loaded or {})
    work = [(d.source, d.partition_key) for d in pending]
    today = date.today().isoformat()
    work += [(name, today) for name, s in sources.items() if s.reads_database]
    if not found and not work:
        console.print(f"[yellow]No deliveries found under {settings.landing}[/yellow]")
    outcomes = [
        DeliveryOutcome(d.source, d.partition_key, True, "already loaded", ran=False) for d in done
    ]
    with _progress() as progress:
        task = progress.add_task("Loading deliveries", total=len(work))
        for source, key in work:
            progress.update(task, description=f"Loading {source} {key}")
            partitions = partitions_for(sources[source])
            if not instance.has_dynamic_partition(partitions.name, key):
                instance.add_dynamic_partitions(partitions.name, [key])
            job = defs.resolve_job_def(ingest_job_name(source))
            result = job.execute_in_process(
                partition_key=key,
                instance=instance,
                raise_on_error=False,
                tags={"sdv/source": source, "sdv/trigger": "sdv load", **_process_tags()},
                run_config=_QUIET,
            )
            message = _load_message(result) if result.success else _failure_message(result)
            outcomes.append(DeliveryOutcome(source, key, result.success, message))
            progress.advance(task)
    return outcomes


def print_summary(settings: Settings, outcomes: list[DeliveryOutcome]) -> None:
    from warehouse.store import connect, current_summary

    if not settings.warehouse.exists():
        out.print(f"Nothing loaded: no warehouse at {settings.warehouse}")
        return
    con = connect(settings.warehouse, read_only=True)
    try:
        summary = current_summary(con)
    finally:
        con.close()
    table = Table(title="Current delivery per source")
    for column in ("source", "extract date", "rows delivered", "rows loaded", "quarantined"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for row in summary.iter_rows():
        table.add_row(row[0], str(row[1]), *(f"{v:,}" for v in row[2:]))
    if summary.height:
        totals = summary.select("rows_delivered", "rows_loaded", "rows_quarantined").sum().row(0)
        table.add_row("[b]total[/b]", "", *(f"[b]{v:,}[/b]" for v in totals))
    out.print(table)
    for outcome in outcomes:
        if not outcome.ok:
            out.print(
                f"[red]REJECTED[/red] {outcome.source} {outcome.extract_date}: "
                f"{escape(outcome.message)}"
            )
        elif (
            outcome.ran
            and outcome.message != "loaded"
            and not outcome.message.startswith("unchanged")
        ):
            out.print(f"{outcome.source} {outcome.extract_date}: {escape(outcome.message)}")
    unchanged = [o for o in outcomes if o.ok and o.message.startswith("unchanged")]
    if unchanged:
        names = ", ".join(f"{o.source} {o.extract_date}" for o in unchanged)
        out.print(f"Unchanged (already loaded, nothing written): {names}")
    skipped = [o for o in outcomes if not o.ran]
    if skipped:
        newest = ", ".join(
            f"{source} {max(o.extract_date for o in skipped if o.source == source)}"
            for source in sorted({o.source for o in skipped})
        )
        out.print(
            f"Not run again: {len(skipped)} delivery folder(s) already loaded and unchanged "
            f"since (newest: {newest})"
        )
    out.print(f"Warehouse: [b]{settings.warehouse}[/b]")
    out.print(f"Dagster instance: {settings.dagster_home}  (browse with: make dev)")


def _settings(data_dir: Path, landing: Path | None, config: Path) -> Settings:
    data_dir = data_dir.resolve()
    return Settings(
        data_dir=data_dir,
        landing=(landing or data_dir / "landing").resolve(),
        warehouse=data_dir / "warehouse.duckdb",
        config_dir=config.resolve(),
    )


DataDir = Annotated[Path, typer.Option("--data-dir", help="Warehouse and Dagster instance.")]
ConfigDir = Annotated[Path, typer.Option("--config", help="Configuration folder (sources/).")]


@app.command()
def generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Writes OUT/landing and OUT/truth.")],
    households: Annotated[int, typer.Option(min=1)] = 5000,
    seed: int = 42,
    extract_date: Annotated[str, typer.Option(help="YYYY-MM-DD; default today.")] = "",
    deliveries: Annotated[int, typer.Option(min=1, help="Successive nightly deliveries.")] = 1,
) -> None:
    """Write a synthetic county's deliveries (exactly per the extract spec) and its truth."""
    from synth.generate import generate_county

    day = date.fromisoformat(extract_date) if extract_date else date.today()
    started = time.perf_counter()
    with _progress() as progress:
        tasks: dict[str, int] = {}

        def report(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total)
            progress.update(tasks[step], completed=done, total=total)

        summary = generate_county(
            households, seed, day, out_dir, deliveries=deliveries, progress=report
        )
    out.print(
        f"Generated {summary.households:,} households, {summary.persons:,} people, "
        f"{sum(summary.rows_per_table.values()):,} rows in "
        f"{time.perf_counter() - started:.1f}s"
    )
    out.print(f"Landing zone: {summary.landing}\nGround truth: {summary.truth}")


@app.command()
def load(
    landing: Annotated[Path, typer.Option("--landing", help="Landing zone to load.")],
    data_dir: DataDir = Path("data"),
    config: ConfigDir = DEFAULT_CONFIG_DIR,
) -> None:
    """Run the nightly ingest job over every delivery in a landing zone.

    A folder already loaded, and unchanged since (names, sizes, mtimes), is not run
    again; a new, changed or rejected one is.
    """
    settings = _settings(data_dir, landing, config)
    outcomes = _load_or_exit(settings)
    print_summary(settings, outcomes)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(code=1)


def _load_or_exit(settings: Settings) -> list[DeliveryOutcome]:
    try:
        return run_load(settings)
    except ConfigError as exc:
        console.print(f"[red]Configuration error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    except LandingMissing as exc:
        console.print(f"[red]Not loaded:[/red] {exc}")
        raise typer.Exit(code=1) from exc


def _warehouse_or_exit(settings: Settings) -> Path:
    """The warehouse file, or a clear exit when nothing has been loaded there yet."""
    if not settings.warehouse.is_file():
        console.print(
            f"[red]No warehouse at {settings.warehouse}:[/red] load deliveries first (sdv load)"
        )
        raise typer.Exit(code=1)
    return settings.warehouse


@app.command()
def demo(
    data_dir: DataDir = Path("data"),
    households: Annotated[int, typer.Option(min=1)] = 5000,
    seed: int = 42,
    config: ConfigDir = DEFAULT_CONFIG_DIR,
) -> None:
    """Generate a synthetic county into DATA_DIR, load it through Dagster, summarise."""
    settings = _settings(data_dir, None, config)
    generate(
        out_dir=settings.data_dir,
        households=households,
        seed=seed,
        extract_date=date.today().isoformat(),
        deliveries=1,
    )
    started = time.perf_counter()
    outcomes = _load_or_exit(settings)
    out.print(f"Loaded in {time.perf_counter() - started:.1f}s")
    print_summary(settings, outcomes)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(code=1)
    import os

    os.environ["SDV_TRUTH_DIR"] = str(settings.data_dir / "truth")
    _linked_and_published_or_exit(settings, "sdv demo")


def run_job(settings: Settings, job_name: str, trigger: str) -> tuple[bool, str, dict]:
    """Run a (non-partitioned) job in-process, recorded in the Dagster instance."""
    from dagster import DagsterInstance

    from pipelines.definitions import build_defs

    _prepare_instance(settings)
    defs = build_defs(settings)
    instance = DagsterInstance.get()
    _report_released(release_dead_runs(instance))
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance,
        raise_on_error=False,
        tags={"sdv/trigger": trigger, **_process_tags()},
        run_config=_QUIET,
    )
    metadata: dict = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            metadata[materialization.asset_key.to_user_string()] = {
                k: v.value for k, v in materialization.metadata.items()
            }
    if result.success:
        return True, "ok", metadata
    where = f"run {result.run_id}; its full log: sdv dev --data-dir {settings.data_dir}"
    return False, f"{_failure_message(result)}\n({where})", metadata


def _linked_or_exit(settings: Settings, trigger: str) -> dict:
    from assets.linkage import PERSON_RECORDS
    from pipelines.definitions import LINK_JOB

    started = time.perf_counter()
    with console.status("Linking records to persons and households"):
        ok, message, metadata = run_job(settings, LINK_JOB, trigger)
    if not ok:
        console.print(f"[red]Linkage failed:[/red] {message}")
        raise typer.Exit(code=1)
    meta = metadata[PERSON_RECORDS.to_user_string()]
    _print_linkage(meta, time.perf_counter() - started)
    return meta


def _print_linkage(meta: dict, seconds: float) -> None:
    out.print(
        f"Linked {meta['records']:,} records to {meta['persons']:,} persons in "
        f"{seconds:.1f}s (model {meta['model_version']}; "
        f"{meta['changed_records']:,} new or changed records scored; "
        f"{meta['review_queue']:,} pairs awaiting review)"
    )
    out.print(f"Stage seconds: {meta['stage_seconds']}")
    if "untrained_levels" in meta:
        _print_untrained(meta["untrained_levels"])
    if "evaluation_summary" in meta:
        out.print(meta["evaluation_summary"])


@app.command()
def nightly(
    landing: Annotated[Path, typer.Option("--landing", help="Landing zone to load.")],
    data_dir: DataDir = Path("data"),
    config: ConfigDir = DEFAULT_CONFIG_DIR,
) -> None:
    """Tonight's run, as the schedules do it: load every delivery in the landing zone, then
    apply retention (the ``apply_retention`` job), then link and publish in one run (the
    ``link_and_publish`` job).

    Retention runs before linkage for the reason the 03:00 schedule does: nothing past its
    period, and no erased record that a restored backup brought back, reaches the linked
    layer or the Family View. If it fails, nothing is linked or published (readers keep
    their snapshot) and the command exits 1.

    A refused delivery does not stop the night: its source keeps its last good delivery,
    as under the schedules, and the command exits 1 once the rest is published. A linkage
    that fails or breaks a hard rule publishes nothing (readers keep their snapshot).
    """
    settings = _settings(data_dir, landing, config)
    outcomes = _load_or_exit(settings)
    print_summary(settings, outcomes)
    _retention_or_exit(settings, "sdv nightly")
    _linked_and_published_or_exit(settings, "sdv nightly")
    if not all(o.ok for o in outcomes):
        raise typer.Exit(code=1)


def _retention_or_exit(settings: Settings, trigger: str) -> None:
    """Run ``apply_retention``; print what it destroyed, or why nothing is linked (exit 1)."""
    from assets.retention import RETENTION
    from pipelines.definitions import RETENTION_JOB

    with console.status("Applying retention"):
        ok, message, metadata = run_job(settings, RETENTION_JOB, trigger)
    if not ok:
        console.print(
            f"[red]Retention failed:[/red] {message}\n"
            "Nothing linked or published: readers keep their snapshot."
        )
        raise typer.Exit(code=1)
    meta = metadata[RETENTION.to_user_string()]
    again = meta["erased_records_destroyed_again"]
    if again:
        out.print(
            f"[yellow]Erased records found again and destroyed: {again:,}. Was the warehouse "
            "or the published folder restored from a backup?[/yellow]"
        )
    folders = sum(s["folders"] for s in meta["landing_folders_destroyed"].values())
    audit_events = meta["audit_events_destroyed"]
    out.print(
        f"Retention as of {meta['as_of']}: {meta['rows_destroyed']:,} rows destroyed "
        f"({meta['records_expired']:,} person-level records expired), {folders} landing "
        f"folder(s), {audit_events or 0:,} audit event(s) (retention run {meta['run_id']})"
    )


def _linked_and_published_or_exit(settings: Settings, trigger: str) -> None:
    """Run ``link_and_publish``; print the linkage and what readers now see, or why they
    stay where they were (exit 1)."""
    from assets.linkage import PERSON_RECORDS
    from pipelines.definitions import NIGHTLY_JOB
    from pipelines.family_view_cli import report_published_or_exit

    started = time.perf_counter()
    with console.status("Linking, then building, checking and publishing the Family View"):
        ok, message, metadata = run_job(settings, NIGHTLY_JOB, trigger)
    linkage = metadata.get(PERSON_RECORDS.to_user_string())
    if linkage is not None:
        _print_linkage(linkage, sum(linkage["stage_seconds"].values()))
    report_published_or_exit(ok, message, metadata, time.perf_counter() - started)


@app.command()
def link(
    data_dir: DataDir = Path("data"),
    config: ConfigDir = DEFAULT_CONFIG_DIR,
    truth: Annotated[
        Path | None, typer.Option(help="Score the result against this ground truth folder.")
    ] = None,
) -> None:
    """Resolve every person-level record to a stable person id and household."""
    import os

    settings = _settings(data_dir, None, config)
    before = os.environ.get("SDV_TRUTH_DIR")
    if truth is not None:
        os.environ["SDV_TRUTH_DIR"] = str(truth.resolve())
    try:
        _linked_or_exit(settings, "sdv link")
    finally:
        if before is None:
            os.environ.pop("SDV_TRUTH_DIR", None)
        else:
            os.environ["SDV_TRUTH_DIR"] = before


@app.command()
def train(data_dir: DataDir = Path("data"), config: ConfigDir = DEFAULT_CONFIG_DIR) -> None:
    """Train and save a new version of the linkage model (used from the next run on)."""
    from assets.linkage import MODEL
    from pipelines.definitions import TRAIN_JOB

    settings = _settings(data_dir, None, config)
    with console.status("Training the linkage model"):
        ok, message, metadata = run_job(settings, TRAIN_JOB, "sdv train")
    if not ok:
        console.print(f"[red]Training failed:[/red] {message}")
        raise typer.Exit(code=1)
    meta = metadata[MODEL.to_user_string()]
    out.print(f"Saved model {meta['version']} to {meta['model_file']}")
    _print_untrained(meta["untrained_levels"])


def _print_untrained(levels: list[str]) -> None:
    """One line for the levels no EM session observed, instead of Splink's note of each
    from every session."""
    if levels:
        out.print(
            f"{len(levels)} comparison levels were never observed in training and score "
            f"with Splink's default m: {'; '.join(levels)}"
        )


@app.command()
def evaluate(
    truth: Annotated[Path, typer.Option(help="Ground truth folder (person_rows.csv, ...).")],
    data_dir: DataDir = Path("data"),
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the JSON here.")] = None,
) -> None:
    """Score the current linkage against a synthetic county's ground truth."""
    from matching.evaluate import EvaluationError, read_truth, summary_lines, write_report
    from matching.evaluate import evaluate as score
    from warehouse import linked
    from warehouse.store import connect

    settings = _settings(data_dir, None, DEFAULT_CONFIG_DIR)
    try:
        truth_data = read_truth(truth)
        con = connect(_warehouse_or_exit(settings), read_only=True)
        try:
            metrics = score(linked.links_export(con), linked.households_export(con), truth_data)
        finally:
            con.close()
    except (EvaluationError, LookupError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=1) from exc
    target = out_file or settings.data_dir / "evaluation.json"
    write_report(metrics, target)
    for line in summary_lines(metrics):
        out.print(line)
    out.print(f"Written to {target}")


export_app = typer.Typer(
    no_args_is_help=True,
    help="Export the linkage for use elsewhere: a share, recorded in the audit trail.",
)
app.add_typer(export_app, name="export")

Recipient = Annotated[
    str, typer.Option("--recipient", help="Who the file is for (recorded in the audit trail).")
]
ShareReason = Annotated[
    str, typer.Option("--reason", help="Why it is shared (recorded in the audit trail).")
]
By = Annotated[
    str | None, typer.Option("--by", envvar="USER", help="Who exports (default: $USER).")
]


def _export(
    data_dir: Path, out_file: Path, kind: str, recipient: str, reason: str, by: str | None
) -> None:
    """Write the export, once the audit trail has recorded the share (who, to whom, why,
    every person in the file, under ``config/audit.yaml``'s ``linkage_access``).

    A person under a restriction of processing (Art. 18) is left out, as every role but
    the DPO reads as if they were not there: a share is processing too."""
    from warehouse import audit, linked, restriction
    from warehouse.audit_config import AuditConfigError, load_audit_config
    from warehouse.operational import ensure_schema
    from warehouse.store import connect

    settings = _settings(data_dir, None, DEFAULT_CONFIG_DIR)
    con = connect(_warehouse_or_exit(settings), read_only=True)
    try:
        frame = linked.links_export(con) if kind == "links" else linked.households_export(con)
        engine = settings.operational_engine()
        ensure_schema(engine)  # a store not made yet holds no restriction
        frame, withheld = linked.withhold(con, frame, restriction.restricted_records(engine))
    except LookupError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=1) from exc
    finally:
        con.close()
    try:
        if not by:
            raise audit.AuditError("say who exports: --by NAME ($USER is not set)")
        audit.record_export(
            engine,
            user_id=by,
            access=load_audit_config(settings.config_dir).linkage_access,
            recipient=recipient,
            reason=reason,
            table="linked.person_records" if kind == "links" else "linked.household_members",
            columns=frame.columns,
            person_ids=frame["person_id"].unique().to_list(),
            rows=frame.height,
            file_name=out_file.name,
        )
    except (audit.AuditError, AuditConfigError) as exc:
        console.print(f"[red]Not exported:[/red] {escape(str(exc))}")
        raise typer.Exit(code=1) from exc
    linked.write_csv(frame, out_file)
    out.print(f"Wrote {frame.height:,} rows to {out_file} (recorded as a share to {recipient})")
    if withheld:
        out.print(f"Left out {withheld:,} person(s) under a restriction of processing")


@export_app.command("links")
def export_links(
    out_file: Annotated[Path, typer.Option("--out", help="CSV to write.")],
    recipient: Recipient,
    reason: ShareReason,
    by: By = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """``source,table,local_key,person_id`` for every person-level row."""
    _export(data_dir, out_file, "links", recipient, reason, by)


@export_app.command("households")
def export_households(
    out_file: Annotated[Path, typer.Option("--out", help="CSV to write.")],
    recipient: Recipient,
    reason: ShareReason,
    by: By = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """``person_id,household_id`` for every person."""
    _export(data_dir, out_file, "households", recipient, reason, by)


@app.command()
def dev(data_dir: DataDir = Path("data"), config: ConfigDir = DEFAULT_CONFIG_DIR) -> None:
    """Open the Dagster UI on this data directory (dagster dev)."""
    import os

    settings = _settings(data_dir, None, config)
    _prepare_instance(settings)
    os.execvp(
        sys.executable, [sys.executable, "-m", "dagster", "dev", "-m", "pipelines.definitions"]
    )


if __name__ == "__main__":
    app()
