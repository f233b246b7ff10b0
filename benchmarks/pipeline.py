"""Pipeline benchmark: the nightly load at county scale, stage by stage, two nights running.

::

    python -m benchmarks.pipeline --sizes 5000,20000,100000 --out bench

For each size (households) it generates a synthetic county with two nightly deliveries
(the second has moves, births, new events and corrections), then runs, into a fresh data
directory:

* **night 1**: ingest the first delivery; train the linkage model (there is none yet:
  training is its own job, reported apart and not counted in the night); then the
  nightly ``link_and_publish`` run: link, build, check and publish the Family View;
* **night 2**: ingest the second delivery; ``link_and_publish`` (only new or changed
  records are re-scored);
* **night 3**: night 2's files delivered again the next day (the same records, a new
  extract date), then ``link_and_publish``: what a night costs when nothing changed, the
  floor under any second delivery while sources send full snapshots.

A night is two jobs, as the schedules run them: ``sdv load`` (every source's ingest run)
and the ``link_and_publish`` run. Each runs in a child process of its own, through the
same code the ``sdv`` commands and the Dagster schedules use, so a night's wall time
includes starting the processes and Dagster's runs, as at night. Between the two the
schedules (and ``sdv nightly``) run ``apply_retention``, its own job: it is timed in a
child too, but reported apart from the night's stages and total (the ``(retention)`` row,
and night 2 / night 1 with it), so that a night's figures compare with earlier rounds.
The child's peak resident memory comes from ``os.wait4``. The ``link_and_publish`` run's
split into stages comes from what its assets record themselves (``linked.runs`` timings
and the runs' ``stage_seconds`` / ``stage_peak_rss_mib`` metadata, see
:mod:`warehouse.stages`):

================  ==================================================================
ingest            ``sdv load`` of the night's delivery (all five sources)
standardise       read person-level rows of the current deliveries, standardise them
predict           fingerprint records, score pairs (night 2: only changed records)
cluster           constrained clustering, contacts and residents, stable ids
households        households and family relationships
link_write        write the linked tables (one transaction); the hard-rule checks
curate            the curated tables in memory
publish           write the snapshot, analysts' file and serving copy; check them
run_overhead      the rest of the ``link_and_publish`` job: process start, imports,
                  Dagster's run and its events, switching readers to the snapshot
================  ==================================================================

Rows per second: ``ingest`` counts rows delivered (every table of every source);
every other stage counts person-level rows (the records the linkage resolves).
Wall times depend on what else the machine is doing, so the load average at the start
and end of every stage is recorded, and each stage's CPU seconds (user + system of its
process) beside its wall time.

Writes ``OUT/pipeline.json``, ``OUT/pipeline.png`` (needs matplotlib, the ``bench``
dependency group: ``make bench`` installs it) and each child's output under
``OUT/logs/``; data goes under ``OUT/work/<size>/`` and is removed after each size
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import calibrate

STAGES = (
    "ingest",
    "standardise",
    "predict",
    "cluster",
    "households",
    "link_write",
    "curate",
    "publish",
    "run_overhead",
)
LINK_STAGES = ("standardise", "predict", "cluster", "households")
# What linked.runs records beyond LINK_STAGES: writing the linked tables, the hard rules.
LINK_WRITE_STAGES = ("publish", "check")
NIGHTS = ("night_1", "night_2", "night_3")
TITLES = {
    "night_1": "night 1",
    "night_2": "night 2 (second delivery)",
    "night_3": "night 3 (night 2's files again)",
}
# Done-when targets of the largest county: a nightly load within 10 minutes and 12 GiB,
# and a second delivery costing under a quarter of the first.
TARGET_HOUSEHOLDS = 100_000
TARGET_NIGHT_SECONDS = 600.0
TARGET_PEAK_MIB = 12 * 1024.0
TARGET_SECOND_NIGHT_RATIO = 0.25
GIB = 1024.0


# --------------------------------------------------------------------------- child side


def _settings(data_dir: Path, landing: Path) -> Any:
    from pipelines.settings import Settings
    from warehouse.sources import DEFAULT_CONFIG_DIR

    return Settings(
        data_dir=data_dir,
        landing=landing,
        warehouse=data_dir / "warehouse.duckdb",
        config_dir=DEFAULT_CONFIG_DIR,
    )


def _job(settings: Any, name: str) -> dict[str, Any]:
    from pipelines.cli import run_job

    ok, message, metadata = run_job(settings, name, "benchmark")
    if not ok:
        raise SystemExit(f"{name} failed: {message}")
    return metadata


def _child_generate(args: argparse.Namespace) -> dict[str, Any]:
    from synth.generate import generate_county

    summary = generate_county(
        args.households,
        args.seed,
        date.fromisoformat(args.extract_date),
        args.county,
        deliveries=2,
    )
    return {
        "households": summary.households,
        "persons": summary.persons,
        "rows": sum(summary.rows_per_table.values()),
        "extract_dates": [d.isoformat() for d in summary.extract_dates],
    }


def _child_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.cli import run_load
    from warehouse.store import connect, current_summary

    settings = _settings(args.data_dir, args.landing)
    outcomes = run_load(settings)
    failed = [o for o in outcomes if not o.ok]
    if failed or not outcomes:
        raise SystemExit(f"ingest failed: {failed or 'no deliveries found'}")
    con = connect(settings.warehouse, read_only=True)
    try:
        summary = current_summary(con)
    finally:
        con.close()
    return {
        "deliveries": len(outcomes),
        "rows": int(summary["rows_delivered"].sum()),
        "rows_loaded": int(summary["rows_loaded"].sum()),
    }


def _child_train(args: argparse.Namespace) -> dict[str, Any]:
    from assets.linkage import MODEL
    from pipelines.definitions import TRAIN_JOB

    meta = _job(_settings(args.data_dir, args.landing), TRAIN_JOB)[MODEL.to_user_string()]
    return {"rows": meta["records"], "model_version": meta["version"]}


def _child_retention(args: argparse.Namespace) -> dict[str, Any]:
    from assets.retention import RETENTION
    from pipelines.definitions import RETENTION_JOB

    meta = _job(_settings(args.data_dir, args.landing), RETENTION_JOB)[RETENTION.to_user_string()]
    return {
        "rows_destroyed": meta["rows_destroyed"],
        "records_expired": meta["records_expired"],
        "erased_records_destroyed_again": meta["erased_records_destroyed_again"],
    }


def _child_link_and_publish(args: argparse.Namespace) -> dict[str, Any]:
    from assets.family_view import PUBLISHED, SNAPSHOT
    from assets.linkage import PERSON_RECORDS
    from pipelines.definitions import NIGHTLY_JOB

    metadata = _job(_settings(args.data_dir, args.landing), NIGHTLY_JOB)
    if PUBLISHED.to_user_string() not in metadata:
        raise SystemExit("the snapshot was built but not published (a check failed?)")
    linkage = metadata[PERSON_RECORDS.to_user_string()]
    snapshot = metadata[SNAPSHOT.to_user_string()]
    return {
        "rows": linkage["records"],
        "persons": linkage["persons"],
        "changed_records": linkage["changed_records"],
        "scored_pairs": linkage["scored_pairs"],
        "link_stage_seconds": linkage["stage_seconds"],
        "link_stage_peak_mib": linkage["stage_peak_rss_mib"],
        "regions": linkage.get("regions"),
        "curated_rows": snapshot["rows"],
        "family_view_stage_seconds": snapshot["stage_seconds"],
        "family_view_stage_peak_mib": snapshot["stage_peak_rss_mib"],
    }


CHILD_JOBS = {
    "generate": _child_generate,
    "ingest": _child_ingest,
    "train": _child_train,
    "retention": _child_retention,
    "link_and_publish": _child_link_and_publish,
}


def child_main(argv: list[str]) -> None:
    """``python -m benchmarks.pipeline child JOB ...``: run one job, write its result."""
    from warehouse.stages import process_peak_mib

    parser = argparse.ArgumentParser(prog="benchmarks.pipeline child")
    parser.add_argument("job", choices=sorted(CHILD_JOBS))
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--landing", type=Path)
    parser.add_argument("--county", type=Path)
    parser.add_argument("--households", type=int)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--extract-date", default="")
    args = parser.parse_args(argv)
    os.environ.pop("SDV_TRUTH_DIR", None)  # scoring against truth is not part of a night
    result = CHILD_JOBS[args.job](args)
    # Stages reset the kernel's high-water mark, which lowers what wait4 reports: say ours.
    result["process_peak_mib"] = process_peak_mib()
    args.result.write_text(json.dumps(result, default=str), encoding="utf-8")


# -------------------------------------------------------------------------- parent side


@dataclass
class Measured:
    """One child process: what it returned and what it cost."""

    job: str
    wall_seconds: float
    cpu_seconds: float
    peak_mib: float
    load_before: list[float]
    load_after: list[float]
    result: dict[str, Any] = field(default_factory=dict)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def child_argv(job: str, result_file: Path, options: dict[str, Any]) -> list[str]:
    """Arguments of ``child_main`` for one job (``options`` as keyword arguments)."""
    argv = [job, "--result", str(result_file)]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def run_child(job: str, log_dir: Path, label: str, **options: Any) -> Measured:
    """Run one job in a child process; wall time, CPU time and peak RSS from ``os.wait4``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    result_file = log_dir / f"{label}.result.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.pipeline", "child"]
    command += child_argv(job, result_file, options)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDV_", "DAGSTER_"))}
    load_before = _load()
    with (log_dir / f"{label}.log").open("w", encoding="utf-8") as log:
        started = time.perf_counter()
        # Reaped with wait4, not Popen.wait: wait4 gives this child's own rusage.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=_project_root()
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    if code != 0:
        raise RuntimeError(f"{label} failed (exit {code}); see {log_dir / f'{label}.log'}")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    peak = max(usage.ru_maxrss / 1024, result.get("process_peak_mib") or 0.0)  # Linux: KiB
    return Measured(
        job=job,
        wall_seconds=round(wall, 2),
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 2),
        peak_mib=round(peak, 1),
        load_before=load_before,
        load_after=_load(),
        result=result,
    )


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def night_landing(county_landing: Path, extract_date: str, target: Path) -> Path:
    """A landing zone holding only one night's delivery of every source (symlinks).

    The nightly schedule loads the newest delivery; yesterday's is already in the
    warehouse, so tonight's landing zone as the job sees it is tonight's delivery.
    """
    for source, delivery in _deliveries(county_landing, extract_date):
        (target / source).mkdir(parents=True, exist_ok=True)
        (target / source / extract_date).symlink_to(delivery.resolve())
    return target


def _deliveries(county_landing: Path, extract_date: str) -> list[tuple[str, Path]]:
    """(source, folder) of every source's delivery for ``extract_date``."""
    sources = sorted(p for p in county_landing.iterdir() if p.is_dir())
    return [(s.name, s / extract_date) for s in sources if (s / extract_date).is_dir()]


def redelivery(county_landing: Path, extract_date: str, next_date: str, target: Path) -> Path:
    """A landing zone holding every source's ``extract_date`` delivery again, dated
    ``next_date``: the same files (hard links where the file system allows), the manifest's
    date moved. A source re-sending an unchanged snapshot the next day looks like this."""
    from warehouse.landing import MANIFEST

    for source, delivery in _deliveries(county_landing, extract_date):
        folder = target / source / next_date
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(delivery.iterdir()):
            if path.name == MANIFEST:
                manifest = json.loads(path.read_text(encoding="utf-8"))
                manifest["extract_date"] = next_date
                (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
                continue
            try:
                os.link(path, folder / path.name)
            except OSError:
                shutil.copy2(path, folder / path.name)
    return target


def _stage(
    seconds: float, rows: int, peak: float | None, peak_of: str, cpu: float | None, load: list
) -> dict[str, Any]:
    return {
        "wall_seconds": round(seconds, 3),
        "rows": rows,
        "rows_per_second": round(rows / seconds, 1) if seconds > 0 else None,
        "peak_rss_mib": peak,
        "peak_of": peak_of,  # "stage": its own peak; "process": the peak of its job's process
        "cpu_seconds": cpu,
        "load_average": load,
    }


def _recorded(
    names: Sequence[str], seconds: dict, peaks: dict, nightly: Measured, records: int
) -> dict[str, Any]:
    """One benchmark stage made of stages the ``link_and_publish`` run timed itself
    (``names``): their seconds summed, and the highest of their own peaks where they
    recorded one, else the process's."""
    own = [peaks[n] for n in names if peaks.get(n)]
    return _stage(
        sum(seconds[n] for n in names),
        records,
        max(own) if own else nightly.peak_mib,
        "stage" if own else "process",
        None,
        nightly.load_before,
    )


def night_stages(ingest: Measured, nightly: Measured) -> dict[str, Any]:
    """Split a night's two jobs into the benchmark's stages (see module docstring)."""
    records = int(nightly.result["rows"])
    linkage = nightly.result["link_stage_seconds"]
    family_view = nightly.result["family_view_stage_seconds"]
    of_linkage = (linkage, nightly.result["link_stage_peak_mib"], nightly, records)
    of_family_view = (family_view, nightly.result["family_view_stage_peak_mib"], nightly, records)
    stages: dict[str, Any] = {
        "ingest": _stage(
            ingest.wall_seconds,
            int(ingest.result["rows"]),
            ingest.peak_mib,
            "process",
            ingest.cpu_seconds,
            ingest.load_before,
        )
    }
    for name in LINK_STAGES:
        stages[name] = _recorded([name], *of_linkage)
    stages["link_write"] = _recorded(LINK_WRITE_STAGES, *of_linkage)
    stages["curate"] = _recorded(["curate"], *of_family_view)
    stages["publish"] = _recorded([k for k in family_view if k != "curate"], *of_family_view)
    recorded = sum(stages[n]["wall_seconds"] for n in STAGES[1:-1])
    stages["run_overhead"] = _stage(
        max(nightly.wall_seconds - recorded, 0.0),
        records,
        nightly.peak_mib,
        "process",
        nightly.cpu_seconds,
        nightly.load_after,
    )
    total = ingest.wall_seconds + nightly.wall_seconds
    return {
        "stages": stages,
        "total_wall_seconds": round(total, 2),
        "max_peak_rss_mib": max(ingest.peak_mib, nightly.peak_mib),
        "cpu_seconds": round(ingest.cpu_seconds + nightly.cpu_seconds, 2),
        "person_level_rows": records,
        "rows_delivered": int(ingest.result["rows"]),
        "changed_records_scored": int(nightly.result["changed_records"]),
        "scored_pairs": int(nightly.result["scored_pairs"]),
        "linkage_recorded_seconds": linkage,  # as in linked.runs (its "publish": link_write)
        "family_view_recorded_seconds": family_view,
        "jobs": {m.job: asdict(m) for m in (ingest, nightly)},
    }


def bench_size(households: int, out: Path, *, seed: int, extract_date: str, keep: bool) -> dict:
    """Generate one county, run both nights, return its section of the report."""
    work = out / "work" / str(households)
    if work.exists():
        shutil.rmtree(work)
    logs = out / "logs" / str(households)
    county, data = work / "county", work / "data"
    print(f"[{households:,} households] generating", flush=True)
    generated = run_child(
        "generate",
        logs,
        "generate",
        county=county,
        households=households,
        seed=seed,
        extract_date=extract_date,
    )
    dates = generated.result["extract_dates"]
    report: dict[str, Any] = {
        "households": households,
        "persons": generated.result["persons"],
        "generate": asdict(generated),
    }
    deliveries = county / "landing"
    landings = {
        "night_1": night_landing(deliveries, dates[0], work / "landing-night_1"),
        "night_2": night_landing(deliveries, dates[1], work / "landing-night_2"),
        # night 2's files again, the next day
        "night_3": redelivery(deliveries, dates[1], _next_day(dates[1]), work / "landing-night_3"),
    }
    training: Measured | None = None
    for index, night in enumerate(NIGHTS):
        options = {"data_dir": data, "landing": landings[night]}
        print(f"[{households:,} households] {night}: ingest", flush=True)
        ingest = run_child("ingest", logs, f"{night}-ingest", **options)
        print(f"[{households:,} households] {night}: retention", flush=True)
        retention = run_child("retention", logs, f"{night}-retention", **options)
        if index == 0:  # a fresh data directory has no model: train one, apart from the night
            print(f"[{households:,} households] training the model (not part of a night)")
            training = run_child("train", logs, "train", **options)
        print(f"[{households:,} households] {night}: link, curate and publish", flush=True)
        nightly = run_child("link_and_publish", logs, f"{night}-link_and_publish", **options)
        report[night] = night_stages(ingest, nightly)
        report[night]["retention"] = asdict(retention)
    assert training is not None
    report["train"] = asdict(training)
    first, second = report["night_1"]["total_wall_seconds"], report["night_2"]["total_wall_seconds"]
    report["second_night_ratio"] = round(second / first, 3) if first else None
    unchanged = report["night_3"]["total_wall_seconds"]
    report["unchanged_night_ratio"] = round(unchanged / first, 3) if first else None
    report["job_ratios"] = job_ratios(report["night_1"], report["night_2"])
    report["linkage_work_ratio"] = linkage_work_ratio(report["night_1"], report["night_2"])
    report["second_night_ratio_with_retention"] = with_retention_ratio(
        report["night_1"], report["night_2"]
    )
    if not keep:
        shutil.rmtree(work)
    return report


def _next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def job_ratios(first: dict[str, Any], second: dict[str, Any]) -> dict[str, float | None]:
    """Night 2 / night 1 per job: ``ingest`` and ``link_and_publish``."""
    ratios: dict[str, float | None] = {}
    for job, measured in first["jobs"].items():
        before = measured["wall_seconds"]
        after = second["jobs"][job]["wall_seconds"]
        ratios[job] = round(after / before, 3) if before else None
    return ratios


def with_retention(night: dict[str, Any]) -> float:
    """A night's wall seconds with its retention run, as the schedules run the three."""
    return night["total_wall_seconds"] + night["retention"]["wall_seconds"]


def with_retention_ratio(first: dict[str, Any], second: dict[str, Any]) -> float | None:
    """Night 2 / night 1, each with its retention run."""
    before = with_retention(first)
    return round(with_retention(second) / before, 3) if before else None


def linkage_work_ratio(first: dict[str, Any], second: dict[str, Any]) -> float | None:
    """Night 2 / night 1 of the linkage's own work (``linked.runs`` timings: standardise
    to the hard-rule check): the part of a night that handles only what changed (re-scores
    changed records, re-clusters the regions they reach), apart from the work every night
    does over every delivered row."""
    before = sum(first["linkage_recorded_seconds"].values())
    after = sum(second["linkage_recorded_seconds"].values())
    return round(after / before, 3) if before else None


def targets(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """The done-when targets, judged on the measurements (largest county where present)."""
    verdict: dict[str, Any] = {
        "second_night_under_quarter": {
            str(s["households"]): s["second_night_ratio"] < TARGET_SECOND_NIGHT_RATIO for s in sizes
        }
    }
    target = next((s for s in sizes if s["households"] == TARGET_HOUSEHOLDS), None)
    if target is not None:
        night = target["night_1"]
        verdict["night_1_under_10_minutes"] = night["total_wall_seconds"] < TARGET_NIGHT_SECONDS
        verdict["night_1_under_12_gib"] = night["max_peak_rss_mib"] < TARGET_PEAK_MIB
    return verdict


def _machine() -> dict[str, Any]:
    memory = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = round(pages / 1024**3, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_chart(report: dict[str, Any], path: Path) -> bool:
    """Wall seconds per stage against households, log-log, one panel per night."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (make bench installs it): no chart written")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(report["sizes"], key=lambda s: s["households"])
    x = [s["households"] for s in sizes]
    fig, axes = plt.subplots(1, len(NIGHTS), figsize=(19, 5.5), sharey=True)
    for axis, night in zip(axes, NIGHTS, strict=True):
        for stage in STAGES:
            y = [max(s[night]["stages"][stage]["wall_seconds"], 0.01) for s in sizes]
            axis.plot(x, y, marker="o", label=stage)
        totals = [s[night]["total_wall_seconds"] for s in sizes]
        axis.plot(x, totals, marker="s", color="black", linewidth=2.5, label="night total")
        kept = [max(s[night]["retention"]["wall_seconds"], 0.01) for s in sizes]
        axis.plot(x, kept, marker="^", color="grey", linestyle="--", label="retention (own job)")
        axis.axhline(TARGET_NIGHT_SECONDS, color="red", linestyle=":", label="10 minutes")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(x, [f"{v:,}" for v in x])
        axis.set_xlabel("households")
        axis.set_title(TITLES[night])
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("wall seconds")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle("Nightly load: wall time per stage against county size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table_lines(report: dict[str, Any]) -> list[str]:
    """The readable table: per size, night and stage, plus night totals and training."""
    header = (
        f"{'households':>10} {'night':>7} {'stage':<12} {'wall s':>9} {'rows':>9} "
        f"{'rows/s':>10} {'peak MiB':>10} {'of':<7}"
    )
    lines = [header, "-" * len(header)]
    for size in sorted(report["sizes"], key=lambda s: s["households"]):
        h = f"{size['households']:,}"
        for night in NIGHTS:
            data = size[night]
            for stage in STAGES:
                s = data["stages"][stage]
                lines.append(
                    f"{h:>10} {night[-1]:>7} {stage:<12} {_fmt(s['wall_seconds']):>9} "
                    f"{s['rows']:>9,} {_fmt(s['rows_per_second'], 0):>10} "
                    f"{_fmt(s['peak_rss_mib']):>10} {s['peak_of']:<7}"
                )
            lines.append(
                f"{h:>10} {night[-1]:>7} {'TOTAL':<12} {_fmt(data['total_wall_seconds']):>9} "
                f"{'':>9} {'':>10} {_fmt(data['max_peak_rss_mib']):>10} max"
            )
            kept = data["retention"]
            lines.append(
                f"{h:>10} {night[-1]:>7} {'(retention)':<12} {_fmt(kept['wall_seconds']):>9} "
                f"{'':>9} {'':>10} {_fmt(kept['peak_mib']):>10} process"
            )
        train = size["train"]
        lines.append(
            f"{h:>10} {'-':>7} {'(train)':<12} {_fmt(train['wall_seconds']):>9} "
            f"{train['result']['rows']:>9,} {'':>10} {_fmt(train['peak_mib']):>10} process"
        )
        gen = size["generate"]
        lines.append(
            f"{h:>10} {'-':>7} {'(generate)':<12} {_fmt(gen['wall_seconds']):>9} "
            f"{gen['result']['rows']:>9,} {'':>10} {_fmt(gen['peak_mib']):>10} process"
        )
        lines.append(
            f"{h:>10} second night / first night = {size['second_night_ratio']:.2f}; "
            f"changed records scored on night 2: {size['night_2']['changed_records_scored']:,}"
            f" of {size['night_2']['person_level_rows']:,}"
        )
        lines.append(
            f"{h:>10} night 3 (night 2's files again, nothing changed) / night 1 = "
            f"{size['unchanged_night_ratio']:.2f}; changed records scored: "
            f"{size['night_3']['changed_records_scored']:,}"
        )
        lines.append(
            f"{h:>10} the linkage's own work (standardise to hard-rule check), night 2 / "
            f"night 1 = {_fmt(size.get('linkage_work_ratio'), 2)}"
        )
        destroyed = " / ".join(
            f"{size[n]['retention']['result']['rows_destroyed']:,}" for n in NIGHTS
        )
        lines.append(
            f"{h:>10} with each night's retention run (its own job, not in TOTAL), night 2 / "
            f"night 1 = {_fmt(size.get('second_night_ratio_with_retention'), 2)}; rows it "
            f"destroyed, nights 1 / 2 / 3: {destroyed}"
        )
        per_job = ", ".join(
            f"{job} {_fmt(ratio, 2)}" for job, ratio in size.get("job_ratios", {}).items()
        )
        lines.append(f"{h:>10} per job, night 2 / night 1: {per_job}")
        lines.append("")
    lines.append(f"targets: {json.dumps(report['targets'])}")
    if "machine_probe_at_start" in report:
        start, end = report["machine_probe_at_start"], report.get("machine_probe_at_end")
        lines.append(calibrate.describe(start, end))
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        child_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(
        prog="benchmarks.pipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", default="5000,20000,100000", help="households, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--extract-date", default="2026-11-20", help="date of the second delivery (YYYY-MM-DD)"
    )
    parser.add_argument("--keep", action="store_true", help="keep each size's data under OUT/work")
    args = parser.parse_args(argv)
    try:
        second_delivery = date.fromisoformat(args.extract_date)
    except ValueError:
        parser.error(f"--extract-date {args.extract_date!r} is not a date (YYYY-MM-DD)")
    if second_delivery >= date.today():
        # Night 3 re-delivers night 2's files the day after; a load refuses a future date.
        parser.error(f"--extract-date {args.extract_date} must be before today ({date.today()})")
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_average_at_start": _load(),
        "machine_probe_at_start": calibrate.probe(),
        "seed": args.seed,
        "rows_per_second_basis": {
            "ingest": "rows delivered (every table of every source, the night's delivery)",
            "other stages": "person-level rows (the records the linkage resolves)",
        },
        "stages": list(STAGES),
        "sizes": [],
    }
    for households in sizes:
        report["sizes"].append(
            bench_size(
                households, out, seed=args.seed, extract_date=args.extract_date, keep=args.keep
            )
        )
        report["load_average_at_end"] = _load()
        report["machine_probe_at_end"] = calibrate.probe()
        report["targets"] = targets(report["sizes"])
        # Written after every size, so a long run leaves what it measured so far.
        (out / "pipeline.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    (out / "pipeline.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    charted = write_chart(report, out / "pipeline.png")
    print("\n".join(table_lines(report)))
    print(f"\nWrote {out / 'pipeline.json'}" + (f" and {out / 'pipeline.png'}" if charted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
