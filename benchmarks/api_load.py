"""Load generator for the Family View API: latency percentiles under concurrent clients.

Start the API (``sdv serve --data-dir DIR``), then run, e.g.::

    python -m benchmarks.api_load --url http://127.0.0.1:8000 --token TOKEN \\
        --data-dir DIR --clients 16 --duration 60 --out api_load.json

``--clients`` threads each hold one keep-alive HTTP connection (urllib3: about half the
CPU a request of httpx, which matters because the generator shares the server's cores) and
send requests back to back (a closed loop: a client sends its next request when the
previous answer arrives) for ``--duration`` seconds or until ``--requests`` have been sent
in all. Each request is drawn from the mix (``--mix search=1,child=1,timeline=1``):

* ``search``: ``/people/search`` with a sampled child's forename and surname, and half the
  time their date of birth;
* ``child``: ``/children/{id}``, the child profile;
* ``timeline``: ``/people/{id}/timeline`` (first page), for people with events.

People are sampled from the published snapshot in ``<data-dir>/published``, opened
read-only, so use a token whose role sees everyone (the demo social worker) or expect 404s
(counted as errors). ``--warmup`` seconds of requests are sent first and not measured.
The report gives p50, p95 and p99 latency, mean and max per endpoint and overall, and the
throughput; ``--out`` writes it as JSON. Every request is audited by the server, so a run
adds its request count to the audit trail.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3

from benchmarks import calibrate
from warehouse.publish import SnapshotStore, open_snapshot

ENDPOINTS = ("search", "child", "timeline")


@dataclass(frozen=True)
class Sample:
    children: list[tuple[str, str, str, str | None]]  # person_id, forename, surname, dob
    with_events: list[str]


@dataclass
class Result:
    endpoint: str
    status: int  # 0: no answer (connection error or timeout)
    seconds: float


@dataclass
class Shared:
    deadline: float
    remaining: int | None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        """Whether a client may send another request."""
        if time.perf_counter() >= self.deadline:
            return False
        if self.remaining is None:
            return True
        with self.lock:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            return True


def sample_people(data_dir: Path, size: int, seed: int) -> Sample:
    """Children (with names and dates of birth) and people with timeline events."""
    store = SnapshotStore(data_dir / "published")
    current = store.current()
    if current is None:
        raise SystemExit(f"nothing is published under {store.root}")
    con = open_snapshot(store.path(current.snapshot))
    try:
        con.execute("select setseed(?)", [(seed % 1000) / 1000])
        children = con.execute(
            "select person_id, forename, surname, cast(dob as varchar) from child_summary "
            "where forename is not null and surname is not null order by random() limit ?",
            [size],
        ).fetchall()
        with_events = con.execute(
            "select person_id from (select distinct person_id from timeline) "
            "order by random() limit ?",
            [size],
        ).fetchall()
    finally:
        con.close()
    if not children:
        raise SystemExit("the published snapshot has no children to sample")
    return Sample([tuple(row) for row in children], [row[0] for row in with_events])


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in ENDPOINTS:
            raise argparse.ArgumentTypeError(f"unknown endpoint {name!r}: use {ENDPOINTS}")
        try:
            mix[name] = float(weight or 1)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"weight of {name} must be a number") from err
    if not mix or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("the mix needs a positive weight")
    return mix


def _request(endpoint: str, sample: Sample, rng: random.Random) -> tuple[str, dict[str, Any]]:
    if endpoint == "timeline" and sample.with_events:
        return f"/people/{rng.choice(sample.with_events)}/timeline", {"limit": 50}
    person_id, forename, surname, dob = rng.choice(sample.children)
    if endpoint == "search":
        params: dict[str, Any] = {"name": f"{forename} {surname}"}
        if dob and rng.random() < 0.5:
            params["dob"] = dob
        return "/people/search", params
    if endpoint == "timeline":
        return f"/people/{person_id}/timeline", {"limit": 50}
    return f"/children/{person_id}", {}


def client_loop(
    url: str,
    headers: dict[str, str],
    sample: Sample,
    mix: dict[str, float],
    shared: Shared,
    seed: int,
    timeout: float,
    results: list[Result],
) -> None:
    rng = random.Random(seed)
    names, weights = list(mix), list(mix.values())
    connection, prefix = _connection(url, headers, timeout)
    with connection:
        while shared.take():
            endpoint = rng.choices(names, weights)[0]
            path, params = _request(endpoint, sample, rng)
            target = prefix + (f"{path}?{urlencode(params)}" if params else path)
            started = time.perf_counter()
            try:
                status = connection.request("GET", target).status
            except urllib3.exceptions.HTTPError:
                status = 0
            results.append(Result(endpoint, status, time.perf_counter() - started))


def _connection(
    url: str, headers: dict[str, str], timeout: float
) -> tuple[urllib3.HTTPConnectionPool, str]:
    """One keep-alive connection to ``url`` (http or https): a pool of one, no retries, so
    a failed request counts as an error instead of being sent again; and the path every
    request goes under (an API served under a path, e.g. ``/family-view``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"--url must be http(s)://host[:port], not {url!r}")
    pool = urllib3.connection_from_url(
        url,
        maxsize=1,
        block=True,
        headers=headers,
        timeout=urllib3.Timeout(total=timeout),
        retries=False,
    )
    return pool, parts.path.rstrip("/")


def run(
    url: str,
    headers: dict[str, str],
    sample: Sample,
    mix: dict[str, float],
    clients: int,
    seconds: float,
    requests: int | None,
    seed: int,
    timeout: float,
) -> tuple[list[Result], float]:
    """Run ``clients`` closed-loop clients; the results and the wall time taken."""
    shared = Shared(time.perf_counter() + seconds, requests)
    per_client: list[list[Result]] = [[] for _ in range(clients)]
    threads = [
        threading.Thread(
            target=client_loop,
            args=(url, headers, sample, mix, shared, seed + i, timeout, per_client[i]),
            daemon=True,
        )
        for i in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for results in per_client for r in results], time.perf_counter() - started


def percentile(ordered: list[float], p: float) -> float:
    """The p-th percentile (0-100) of sorted values, interpolating between ranks."""
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(results: list[Result], elapsed: float) -> dict[str, Any]:
    def stats(group: list[Result]) -> dict[str, Any]:
        ordered = sorted(r.seconds * 1000 for r in group)
        statuses = Counter(str(r.status) for r in group)
        return {
            "requests": len(group),
            "errors": sum(1 for r in group if not 200 <= r.status < 300),
            "statuses": dict(sorted(statuses.items())),
            "throughput_rps": round(len(group) / elapsed, 1) if elapsed else None,
            "p50_ms": round(percentile(ordered, 50), 2),
            "p95_ms": round(percentile(ordered, 95), 2),
            "p99_ms": round(percentile(ordered, 99), 2),
            "mean_ms": round(sum(ordered) / len(ordered), 2) if ordered else None,
            "max_ms": round(ordered[-1], 2) if ordered else None,
        }

    by_endpoint: dict[str, list[Result]] = defaultdict(list)
    for result in results:
        by_endpoint[result.endpoint].append(result)
    return {
        "elapsed_s": round(elapsed, 2),
        "overall": stats(results),
        "endpoints": {name: stats(by_endpoint[name]) for name in ENDPOINTS if name in by_endpoint},
    }


def print_report(report: dict[str, Any]) -> None:
    header = f"{'endpoint':<10} {'requests':>9} {'errors':>7} {'req/s':>8} "
    header += f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    print(header)
    print("-" * len(header))
    rows = [*report["endpoints"].items(), ("overall", report["overall"])]
    for name, s in rows:
        print(
            f"{name:<10} {s['requests']:>9,} {s['errors']:>7,} {s['throughput_rps']:>8.1f} "
            f"{s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} {s['p99_ms']:>8.1f} {s['max_ms']:>8.1f}"
        )
    print(
        f"\n{report['overall']['requests']:,} requests from {report['clients']} clients in "
        f"{report['elapsed_s']}s: {report['overall']['throughput_rps']} requests/s"
    )
    if "machine_probe_at_start" in report:
        print(calibrate.describe(report["machine_probe_at_start"], report["machine_probe_at_end"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.api_load",
        description="Load-test the Family View API: p50/p95/p99 latency per endpoint.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="The running API.")
    parser.add_argument(
        "--token",
        default=os.environ.get("SDV_API_TOKEN"),
        help="Bearer token (default: $SDV_API_TOKEN).",
    )
    parser.add_argument("--purpose", help="X-Purpose header (default: the user's own).")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SDV_DATA_DIR", "data")),
        help="Data directory whose published snapshot people are sampled from.",
    )
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients.")
    parser.add_argument("--duration", type=float, default=30.0, help="Seconds to measure.")
    parser.add_argument("--requests", type=int, help="Stop after this many requests in all.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Unmeasured seconds first.")
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix("search=1,child=1,timeline=1"),
        help="Endpoint weights, e.g. search=2,child=1,timeline=1.",
    )
    parser.add_argument("--sample", type=int, default=1000, help="People sampled.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=30.0, help="Per-request seconds.")
    parser.add_argument("--out", type=Path, help="Write the report here as JSON.")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token (or set SDV_API_TOKEN)")
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients must be at least 1 and --duration positive")

    headers = {"Authorization": f"Bearer {args.token}"}
    if args.purpose:
        headers["X-Purpose"] = args.purpose
    connection, prefix = _connection(args.url, headers, args.timeout)
    with connection:
        try:
            health = connection.request("GET", f"{prefix}/health")
            if health.status != 200:
                print(f"{args.url}/health answered {health.status}", file=sys.stderr)
                return 1
            sample = sample_people(args.data_dir.resolve(), args.sample, args.seed)
            probe = connection.request("GET", f"{prefix}/children/{sample.children[0][0]}")
        except urllib3.exceptions.HTTPError as err:
            print(f"the API at {args.url} is not answering: {err}", file=sys.stderr)
            return 1
    if probe.status in (401, 403):
        print(f"the token is refused: {probe.status} {probe.data.decode()}", file=sys.stderr)
        return 1

    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    probed = calibrate.probe()  # the machine's speed this hour, the server idle
    common = (args.url, headers, sample, args.mix, args.clients)
    if args.warmup > 0:
        run(*common, args.warmup, None, args.seed + 10_000, args.timeout)
    results, elapsed = run(*common, args.duration, args.requests, args.seed, args.timeout)
    report = {
        "url": args.url,
        "started_at": started_at,
        "clients": args.clients,
        "mix": args.mix,
        "sampled_children": len(sample.children),
        **summarise(results, elapsed),
        "machine_probe_at_start": probed,
        "machine_probe_at_end": calibrate.probe(),
    }
    print_report(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"Written to {args.out}")
    return 0 if report["overall"]["errors"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
