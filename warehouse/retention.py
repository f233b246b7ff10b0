"""Retention: destroy what each source's data-sharing agreement says must no longer be kept.

Every source's agreement sets a retention rule (``agreement.retention``), optionally
overridden per table (``agreement.table_retention``), and each table says which columns
date its rows (``event_dates``, ``event_terms``) and, for a person table, which holds the
date of birth (``dob_column``). :func:`plan` works out, as of one date, exactly which rows
of ``raw`` (every record ever delivered), ``staged`` and ``quarantine`` have expired
(and with them the ``delivered`` rows saying which deliveries carried those records);
:func:`apply` destroys them in one transaction and records how many per source, table and
layer in ``meta.retention_runs`` (counts only: the proof of destruction must not itself
hold what was destroyed). ``current`` is a view over ``staged`` and follows. Given the
operational store, it also destroys what people recorded there about the records that went
(review items and decisions, splits, rectifications, restrictions:
:func:`warehouse.erasure.purge_operational`), recorded in the same run as source and layer
``operational``, one row per table.

Semantics (the agreement is about *records*, so clocks are per person-level record):

* **Whose rows.** Each row is about the person-level records ``warehouse.subjects`` maps it
  to: a person row is about its own record; an episode about its child; an early help
  episode about every member of the family; a police incident about everyone involved.
* **years_after_last_event N.** A record's clock is the last dated event about it in that
  source, across all layers and deliveries: every ``event_dates`` value (timestamps by
  their date) and ``event_terms`` value (``2026-AUT`` is 31 Dec 2026, ``-SPR`` 30 Apr,
  ``-SUM`` 31 Aug: the term's end at the latest, so never early) of every row about it. An
  involvement has no date of its own: its person is dated through the incident, which is
  about everyone involved. A row expires on last event + N years.
* **until_age A.** A row expires on the A-th birthday of the record(s) it is about. Date of
  birth comes from ``dob_column``; if deliveries disagree the latest date is used (the
  youngest the source has ever said the person is: never early). A person table without a
  date of birth (a school contact) follows the records it is about (the pupil): a pupil's
  contact is kept exactly as long as the pupil.
* **A row about several records** (a shared incident, a family's episode, a relationship)
  expires only when every record it is about has expired under the row's table's rule.
* **No orphans.** A person-level row is kept while any kept row of that source names its
  record directly (an episode kept to the 75th birthday keeps its child's ``people`` row;
  a kept relationship keeps both people); it goes with the last of them. A row that
  reaches the person only through something shared (a family's episode, an incident)
  does not hold the person row: once the person's own rows (their involvement) go, the
  shared row is no longer about them at all, so holding would make a second run on the
  same date destroy more than the first. Runs are idempotent. The records whose person
  rows are all destroyed are :attr:`RetentionPlan.expired_records`, for the linked layer
  and snapshots to follow.
* **Kept snapshots.** An expired record leaves every kept snapshot and analysts' file
  (:func:`warehouse.purge.purge_published`). A row that is not a person row can go while
  its person stays (a child's encounter eight years after the last, their record kept to
  25): what the curated build made of it (its timeline event, the service it fed, and the
  child summary computed from those) leaves every kept snapshot and analysts' file too, so
  ``sdv rollback`` cannot serve it. :func:`enforce` finds those rows by running the curated
  queries over the destroyed rows before they go, for each snapshot the queries it was
  built under (kept in the snapshot: :mod:`warehouse.derived`).
* **later_of.** Kept until the last of its rules runs out (health: a child's record to the
  25th birthday, an adult's 8 years after the last encounter); undetermined while any of
  them is.
* **Boundaries.** Destroyed ON the expiry date (``expiry <= as_of``), kept the day before.
  Adding years to 29 February gives 1 March in a common year (the anniversary has not
  passed on 28 February): a leap-day birthday or event is kept one day longer, never less.
* **Undetermined.** A row whose expiry cannot be read from its dates is never destroyed
  silently: it is counted in ``undetermined``. Under years_after_last_event a record with
  no dated event falls back to the newest extract date of any row about it (the last day
  the source is known to have held it), so it goes N years after the source stops
  delivering it. Under until_age a record with no date of birth is kept (no date is safe
  to assume) until the source supplies one or someone decides. A row that reaches no
  record at all is dated by its own events the same way.

As of: the newest loaded extract date unless given (:func:`default_as_of`), so a run is
reproducible from the warehouse alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from sqlalchemy.engine import Engine

from warehouse import audit, erasure, landing_retention, purge
from warehouse.audit_config import AuditConfig
from warehouse.curated_config import CuratedConfig, load_curated_config
from warehouse.derived import DerivedError, Traced, trace
from warehouse.operational import ensure_schema, holds_table
from warehouse.pseudonymise import load_key
from warehouse.sources import RetentionLaterOf, RetentionRule, RetentionUntilAge, Source, Table
from warehouse.store import RECORD_ID, connect, holds_records_once, relation_name, table_exists
from warehouse.subjects import Relation, key_sql, relations, row_subjects

RUNS_DDL = """
CREATE SCHEMA IF NOT EXISTS meta;
CREATE TABLE IF NOT EXISTS meta.retention_runs (
    run_id VARCHAR NOT NULL,
    as_of DATE NOT NULL,
    source VARCHAR NOT NULL,
    table_name VARCHAR NOT NULL,
    layer VARCHAR NOT NULL,            -- raw | staged | quarantine | operational
    rule VARCHAR NOT NULL,             -- e.g. "until_age 25", "years_after_last_event 6"
    rows_destroyed BIGINT NOT NULL,
    rows_undetermined BIGINT NOT NULL,
    recorded_at TIMESTAMP NOT NULL
);
"""
COUNT_SCHEMA = {
    "source": pl.String,
    "table": pl.String,
    "layer": pl.String,
    "rule": pl.String,
    "rows": pl.Int64,
    "destroy": pl.Int64,
    "undetermined": pl.Int64,
}
_TERM_ENDS = {"AUT": "12-31", "SPR": "04-30", "SUM": "08-31"}
_ORPHAN = "~row|"  # pseudo record for a row that reaches no person-level record
OPERATIONAL = "operational"  # source and layer of the run's rows counting operational rows


class RetentionError(ValueError):
    """Retention cannot run as asked; the message says why."""


@dataclass(frozen=True)
class RetentionPlan:
    """What retention would destroy as of ``as_of``: rowids per relation, counts per
    source/table/layer (``COUNT_SCHEMA``), and the person-level records that go entirely."""

    as_of: date
    targets: dict[Relation, tuple[int, ...]]
    counts: pl.DataFrame
    expired_records: tuple[str, ...]
    rows_seen: dict[Relation, int] = field(default_factory=dict)

    @property
    def destroyed(self) -> int:
        return int(self.counts["destroy"].sum())

    def per_source(self) -> dict[str, dict[str, int]]:
        """``{source: {"destroy": n, "undetermined": n}}`` (for metadata and the audit)."""
        totals = self.counts.group_by("source").agg(pl.col("destroy", "undetermined").sum())
        return {
            row["source"]: {"destroy": row["destroy"], "undetermined": row["undetermined"]}
            for row in totals.sort("source").to_dicts()
        }


@dataclass(frozen=True)
class RetentionRun:
    run_id: str
    plan: RetentionPlan
    destroyed: dict[str, int]  # "<file>:<schema.table>" -> rows deleted (ingest and linked)
    # operational table -> rows deleted or stripped of the records; empty without the store
    operational: dict[str, int] = field(default_factory=dict)


def anniversary(day: pl.Expr, years: int) -> pl.Expr:
    """``day`` + ``years`` years; 29 February lands on 1 March in a common year."""
    shifted = day.dt.offset_by(f"{years}y")
    leap = (day.dt.month() == 2) & (day.dt.day() == 29) & (shifted.dt.day() == 28)
    return pl.when(leap).then(shifted.dt.offset_by("1d")).otherwise(shifted)


def rule_text(rule: RetentionRule) -> str:
    if isinstance(rule, RetentionLaterOf):
        return f"later_of({', '.join(rule_text(r) for r in rule.rules)})"
    value = rule.age if isinstance(rule, RetentionUntilAge) else rule.years
    return f"{rule.rule} {value}"


def _rule_expiry(rule: RetentionRule) -> tuple[pl.Expr, pl.Expr]:
    """(expiry, unknown) of one rule over a frame with ``dob``, ``last_event`` and
    ``last_delivered``: a later_of rule expires with the last of its rules, and is
    undetermined (kept) when any of them is."""
    if isinstance(rule, RetentionUntilAge):
        return anniversary(pl.col("dob"), rule.age), pl.col("dob").is_null()
    if isinstance(rule, RetentionLaterOf):
        parts = [_rule_expiry(r) for r in rule.rules]
        expiries = [e for e, _ in parts]
        expiry = (
            pl.when(pl.any_horizontal(e.is_null() for e in expiries))
            .then(None)
            .otherwise(pl.max_horizontal(expiries))
        )
        return expiry, pl.any_horizontal(u for _, u in parts)
    clock = pl.coalesce("last_event", "last_delivered")
    return anniversary(clock, rule.years), pl.col("last_event").is_null()


def default_as_of(con: duckdb.DuckDBPyConnection) -> date:
    """The newest loaded extract date: retention's "today", deterministic from the data."""
    if table_exists(con, "meta", "deliveries"):
        row = con.execute(
            "select max(extract_date) from meta.deliveries where status = 'loaded'"
        ).fetchall()
        if row and row[0][0] is not None:
            return row[0][0]
    raise RetentionError("no delivery has been loaded yet: give --as-of or load a delivery")


def _as_date(frame: pl.DataFrame, column: str, source: Source) -> pl.Expr:
    """A dating column as a Date, whatever the layer stores (typed in staged, text in raw
    and quarantine, read with the source's own formats; unreadable values are null)."""
    dtype = frame.schema[column]
    if dtype == pl.Date:
        return pl.col(column)
    if isinstance(dtype, pl.Datetime):
        return pl.col(column).dt.date()
    text = pl.col(column).cast(pl.String).str.strip_chars()
    dates = [text.str.to_date(f, strict=False) for f in source.date_formats]
    stamps = [
        text.str.to_datetime(f, strict=False, time_unit="us").dt.date()
        for f in source.timestamp_formats
    ]
    return pl.coalesce([*dates, *stamps])


def _term_end(column: str) -> pl.Expr:
    parts = pl.col(column).cast(pl.String).str.strip_chars().str.to_uppercase()
    year = parts.str.extract(r"^(\d{4})-(?:AUT|SPR|SUM)$", 1)
    season = parts.str.extract(r"^\d{4}-(AUT|SPR|SUM)$", 1)
    month_day = season.replace_strict(_TERM_ENDS, default=None, return_dtype=pl.String)
    return pl.concat_str([year, pl.lit("-"), month_day]).str.to_date("%Y-%m-%d", strict=False)


def _rows(con: duckdb.DuckDBPyConnection, source: Source, rel: Relation) -> pl.DataFrame:
    """One relation's rows: ``_rowid, _self`` (a person row's own record), ``_event`` (its
    last dated event), ``_dob`` and ``_extract_date``."""
    spec: Table = source.tables[rel.table]
    columns = [*spec.event_dates, *spec.event_terms]
    if spec.dob_column:
        columns.append(spec.dob_column)
    selected = "".join(f', t."{c}"' for c in dict.fromkeys(columns))
    self_sql = (
        f"'{source.name}|{rel.table}|' || {key_sql(spec.local_key, 't', spec)}"
        if spec.person_level
        else "null"
    )
    # A raw or staged record is held once however many deliveries carried it: its newest
    # delivery is in ``delivered`` (warehouse.store).
    name = relation_name(source.name, rel.table)
    delivered, last = "", "t._extract_date"
    if holds_records_once(con, rel.schema, name):
        delivered = (
            f" left join (select {RECORD_ID} as _id, max(_extract_date) as _last "
            f'from delivered."{name}" group by 1) d on d._id = t.{RECORD_ID}'
        )
        last = "coalesce(d._last, t._extract_date)"
    frame = con.sql(
        f"select t.rowid as _rowid, cast({last} as date) as _extract_date, "
        f"cast({self_sql} as varchar) as _self{selected} from {rel.name} t{delivered}"
    ).pl()
    events = [_as_date(frame, c, source) for c in spec.event_dates]
    events += [_term_end(c) for c in spec.event_terms]
    return frame.select(
        pl.col("_rowid").cast(pl.Int64),
        pl.col("_self").cast(pl.String),
        (pl.max_horizontal(events) if events else pl.lit(None, dtype=pl.Date)).alias("_event"),
        (_as_date(frame, spec.dob_column, source) if spec.dob_column else pl.lit(None))
        .cast(pl.Date)
        .alias("_dob"),
        pl.col("_extract_date").cast(pl.Date),
    ).with_columns(layer=pl.lit(rel.schema), table=pl.lit(rel.table))


def _source_rows(
    con: duckdb.DuckDBPyConnection, source: Source, rels: list[Relation]
) -> pl.DataFrame:
    """Every row of the source in every layer, once per record it is about (``record_id``);
    a row about no record is about a pseudo record of its own."""
    frames = []
    for rel in rels:
        own = _rows(con, source, rel)
        about = row_subjects(con, source, rel)
        joined = own.join(about, on="_rowid", how="left").with_columns(
            record_id=pl.coalesce(
                "record_id",
                pl.format(f"{_ORPHAN}{rel.schema}|{rel.table}|{{}}", pl.col("_rowid")),
            ),
            direct=pl.col("direct").fill_null(True),
        )
        frames.append(joined)
    return pl.concat(frames, how="vertical_relaxed")


def _record_clocks(rows: pl.DataFrame, source: Source) -> pl.DataFrame:
    """Per record: last event, newest extract date delivering anything about it, and the
    date of birth (own, else that of the records its own rows are about)."""
    clocks = rows.group_by("record_id").agg(
        pl.col("_event").max().alias("last_event"),
        pl.col("_extract_date").max().alias("last_delivered"),
    )
    own_dob = (
        rows.filter(pl.col("_self") == pl.col("record_id"))
        .group_by("record_id")
        .agg(pl.col("_dob").max().alias("own_dob"))
    )
    without_dob = [
        f"{source.name}|{name}|"
        for name, t in source.tables.items()
        if t.person_level and t.dob_column is None
    ]
    followed = (
        rows.filter(
            pl.col("_self").is_not_null()
            & (pl.col("_self") != pl.col("record_id"))
            & pl.any_horizontal(
                [pl.col("_self").str.starts_with(p) for p in without_dob] or [pl.lit(False)]
            )
        )
        .join(own_dob, on="record_id")
        .group_by("_self")
        .agg(pl.col("own_dob").max().alias("followed_dob"))
        .rename({"_self": "record_id"})
    )
    return (
        clocks.join(own_dob, on="record_id", how="left")
        .join(followed, on="record_id", how="left")
        .with_columns(dob=pl.coalesce("own_dob", "followed_dob"))
        .drop("own_dob", "followed_dob")
    )


def _row_expiry(rows: pl.DataFrame, clocks: pl.DataFrame, source: Source) -> pl.DataFrame:
    """Per row (layer, table, _rowid): ``expiry`` (null = undetermined and kept) and
    ``undetermined``, the latest expiry of every record it is about."""
    joined = rows.join(clocks, on="record_id", how="left")
    parts = []
    for table in source.tables:
        rule = source.agreement.table_retention.get(table, source.agreement.retention)
        mine = joined.filter(pl.col("table") == table)
        expiry, unknown = _rule_expiry(rule)
        mine = mine.with_columns(expiry=expiry, unknown=unknown)
        parts.append(mine.with_columns(rule=pl.lit(rule_text(rule))))
    return (
        pl.concat(parts)
        .group_by("layer", "table", "_rowid")
        .agg(
            pl.when(pl.col("expiry").is_null().any())
            .then(None)
            .otherwise(pl.col("expiry").max())
            .alias("expiry"),
            pl.col("unknown").any().alias("undetermined"),
            pl.col("_self").first(),
            pl.col("rule").first(),
        )
    )


def _hold_person_rows(decided: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """Keep a person row while any kept row of the source names its record directly;
    repeat, as a kept person row (a contact) may itself name another record (the pupil)."""
    about = rows.filter("direct").select("layer", "table", "_rowid", "record_id")
    while True:
        kept = decided.filter(~pl.col("destroy")).join(about, on=["layer", "table", "_rowid"])
        held = pl.col("destroy") & pl.col("_self").is_in(kept["record_id"].unique().implode())
        if decided.filter(held).is_empty():
            return decided
        decided = decided.with_columns(destroy=pl.when(held).then(False).otherwise("destroy"))


def _plan_source(
    con: duckdb.DuckDBPyConnection, source: Source, rels: list[Relation], as_of: date
) -> tuple[pl.DataFrame, list[str]]:
    rows = _source_rows(con, source, rels)
    clocks = _record_clocks(rows, source)
    decided = _row_expiry(rows, clocks, source).with_columns(
        destroy=pl.col("expiry").is_not_null() & (pl.col("expiry") <= as_of)
    )
    decided = _hold_person_rows(decided, rows)
    people = decided.filter(pl.col("_self").is_not_null())
    gone = set(people.filter(pl.col("destroy"))["_self"].to_list())
    gone -= set(people.filter(~pl.col("destroy"))["_self"].to_list())
    return decided, sorted(gone)


def plan(
    con: duckdb.DuckDBPyConnection, sources: Mapping[str, Source], as_of: date | None = None
) -> RetentionPlan:
    """What has expired as of ``as_of`` (default :func:`default_as_of`) in every ingest
    layer; reads only, so a dry run is just this."""
    as_of = as_of or default_as_of(con)
    targets: dict[Relation, tuple[int, ...]] = {}
    seen: dict[Relation, int] = {}
    counts: list[dict[str, Any]] = []
    expired: list[str] = []
    for source in sources.values():
        rels = list(relations(con, {source.name: source}))
        if not rels:
            continue
        decided, gone = _plan_source(con, source, rels, as_of)
        expired += gone
        for rel in rels:
            mine = decided.filter((pl.col("layer") == rel.schema) & (pl.col("table") == rel.table))
            ids = tuple(sorted(mine.filter(pl.col("destroy"))["_rowid"].to_list()))
            if ids:
                targets[rel] = ids
            seen[rel] = mine.height
            rule = source.agreement.table_retention.get(rel.table, source.agreement.retention)
            counts.append(
                {
                    "source": rel.source,
                    "table": rel.table,
                    "layer": rel.schema,
                    "rule": rule_text(rule),
                    "rows": mine.height,
                    "destroy": len(ids),
                    "undetermined": int(mine["undetermined"].sum()),
                }
            )
    frame = pl.DataFrame(counts, schema=COUNT_SCHEMA).sort("source", "table", "layer")
    return RetentionPlan(as_of, targets, frame, tuple(expired), seen)


def _row_count(con: duckdb.DuckDBPyConnection, rel: Relation) -> int:
    return con.execute(f"select count(*) from {rel.name}").fetchall()[0][0]


def purge_operational(
    engine: Engine, record_ids: Iterable[str], *, dry_run: bool = False
) -> dict[str, int]:
    """Rows of the operational store only about expired ``record_ids`` destroyed, per table
    (every table of :data:`warehouse.erasure.OPERATIONAL_TABLES`, zeros included, so the
    run's record shows each was looked at). The records' period is over, so what people
    recorded about them is too: a review pair either of whose records expired is moot, a
    rectification or restriction goes once all its records have (one naming kept records
    too only loses the expired ids). A dry run counts in a transaction it rolls back, and
    creates no store to do it."""
    counts = dict.fromkeys(erasure.OPERATIONAL_TABLES, 0)
    records = set(record_ids)
    if not records:
        return counts
    if dry_run:
        if not all(holds_table(engine, t) for t in erasure.OPERATIONAL_TABLES):
            return counts  # no store (or none with these tables): nothing recorded there
    else:
        ensure_schema(engine)
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            changed = erasure.purge_operational(conn, records, (), None)
        except BaseException:
            transaction.rollback()
            raise
        if dry_run:
            transaction.rollback()
        else:
            transaction.commit()
    return counts | {k.removeprefix(f"{OPERATIONAL}:"): n for k, n in changed.items()}


def apply(
    con: duckdb.DuckDBPyConnection,
    plan: RetentionPlan,
    path: Path | None = None,
    operational: Engine | None = None,
) -> RetentionRun:
    """Destroy what ``plan`` found in the ingest layers and the linked layer, and record
    counts per source/table/layer, all in one transaction. The plan must come from this
    warehouse with nothing written since (the nightly asset holds the single-writer pool);
    a changed table aborts the run.

    With ``operational`` (the operational store), its rows about the expired records go
    too (:func:`purge_operational`) and are counted in the same run. That store commits
    just before the warehouse does: should the warehouse then fail, its records are still
    there and the next run plans them again, whereas the other way round a failure would
    leave rows about records no later run can find.

    With ``path`` (the warehouse file behind ``con``), the file is then rewritten so no
    destroyed value survives in a free block (:func:`warehouse.purge.rewrite_database`):
    close ``con`` straight afterwards. The landing zone and kept snapshots come next
    (:func:`enforce`)."""
    run_id = uuid.uuid4().hex
    now = datetime.now(UTC).replace(tzinfo=None)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(RUNS_DDL)
        for rel, expected in plan.rows_seen.items():
            if _row_count(con, rel) != expected:
                raise RetentionError(
                    f"{rel.name} changed since retention was planned: plan again and re-run"
                )
        destroyed = purge.purge_ingest(con, plan.targets)
        planned = sum(len(rowids) for rowids in plan.targets.values())
        if purge.targeted_rows(destroyed) != planned:
            raise RetentionError(
                f"destroyed {purge.targeted_rows(destroyed)} rows of the {planned} planned: "
                "nothing kept"
            )
        # Linkage's own copies of expired records (scores, fingerprints, record links); the
        # people themselves are retired by the next linkage run, which keeps their ids.
        destroyed |= purge.purge_linked(con, plan.expired_records, ())
        operational_rows: dict[str, int] = {}
        if operational is not None:
            operational_rows = purge_operational(operational, plan.expired_records)
        rows = list(plan.counts.iter_rows(named=True))
        rows += [
            {
                "source": OPERATIONAL,
                "table": table,
                "layer": OPERATIONAL,
                "rule": "with its records",
                "destroy": n,
                "undetermined": 0,
            }
            for table, n in operational_rows.items()
        ]
        for row in rows:
            con.execute(
                "insert into meta.retention_runs values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    plan.as_of,
                    row["source"],
                    row["table"],
                    row["layer"],
                    row["rule"],
                    row["destroy"],
                    row["undetermined"],
                    now,
                ],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    if path is not None and plan.destroyed:
        purge.rewrite_database(con, path)
    else:
        con.execute("CHECKPOINT")
    return RetentionRun(run_id, plan, destroyed, operational_rows)


@dataclass(frozen=True)
class Enforced:
    """What one retention run found and did: what the CLI prints and the asset records."""

    plan: RetentionPlan
    done: RetentionRun | None  # None for a dry run
    folders: list[landing_retention.LandingFolder]  # landing folders destroyed (or due)
    # rows removed (or, for a child summary, computed again) per "<file>:<table>" of every
    # kept snapshot and analysts' file: the expired records' rows and those made from
    # destroyed rows that were not person rows (warehouse.derived)
    published: dict[str, int]
    audit_trail: audit.Expiry | None = None  # None: the trail is kept in full (no keep_years)
    audit_refused: str | None = None  # why the trail's due events were not destroyed
    # erased records a restored backup brought back, destroyed again first (or found)
    erased_again: erasure.Reapplied = field(default_factory=erasure.Reapplied)
    # operational store rows about the expired records, per table, destroyed (or due)
    operational: dict[str, int] = field(default_factory=dict)

    @cached_property
    def detail(self) -> dict[str, Any]:
        """Counts only, for the audit trail and the asset's metadata: no record ids (they
        carry UPNs and local keys). Computed once for both."""
        return {
            "run_id": self.done.run_id if self.done else None,
            "as_of": self.plan.as_of.isoformat(),
            "per_source": self.plan.per_source(),
            "records_expired": len(self.plan.expired_records),
            "published_rows": sum(self.published.values()),
            # per curated table, over every kept snapshot and analysts' file
            "published_tables": purge.per_table(self.published),
            "landing_folders": landing_retention.per_source(self.folders),
            "audit_events": self.audit_trail.destroyed if self.audit_trail else None,
            "erased_records_found_again": self.erased_again.records,
            "operational_rows": self.operational,
        } | ({"audit_trail_refused": self.audit_refused} if self.audit_refused else {})


def enforce(
    warehouse: Path,
    landing: Path,
    sources: Mapping[str, Source],
    *,
    published_dir: Path,
    data_dir: Path,
    operational: Engine,
    actor: tuple[str, str],
    audit_config: AuditConfig | None = None,
    as_of: date | None = None,
    dry_run: bool = False,
    curated: CuratedConfig | None = None,
) -> Enforced:
    """Everything a retention run does, in order, for `sdv retention` and the nightly asset
    alike, so that neither can leave a step out.

    First, destroy again any erased record a restored backup brought back
    (:func:`warehouse.erasure.reapply`, which records its own audit event). Then plan, and
    unless ``dry_run``: destroy the expired rows in the warehouse and the operational
    store's rows about the expired records (:func:`apply`), then the landing folders past
    their keep period (judged on the same date), then the expired records in every kept
    snapshot and analysts' file, and the curated rows made from destroyed rows that were
    not person rows, found before the rows go with the queries each snapshot was built
    under (stored in it; ``curated``'s, default ``config/curated.yaml``, for one built
    before snapshots stored theirs: :func:`warehouse.derived.trace`; tonight's publish
    rebuilds the current view without them), then the audit trail's events past
    ``audit_config``'s ``keep_years`` (:func:`warehouse.audit.expire`, which records its
    own cut), then append one audit event as ``actor`` (user id, role) with counts only. A
    dry run changes nothing and records nothing, and counts the operational rows that
    would go.
    """
    erased_again = erasure.Reapplied()
    if erasure.any_tombstones(operational):  # the key is read only when it is needed
        erased_again = erasure.reapply(
            warehouse=warehouse,
            published_dir=published_dir,
            engine=operational,
            sources=sources,
            key=load_key(data_dir),
            landing=landing,
            actor=actor,
            dry_run=dry_run,
        )
    con = connect(warehouse)
    try:
        found = plan(con, sources, as_of)
        derived = Traced()
        if not dry_run and published_dir.exists():
            try:  # before the rows go: what each kept snapshot made of them, by its own queries
                today = curated or load_curated_config()
                derived = trace(con, found.targets, published_dir, today)
            except DerivedError as exc:
                raise RetentionError(str(exc)) from exc
        done = None if dry_run else apply(con, found, warehouse, operational)
    finally:
        con.close()
    if done is not None:
        operational_rows = done.operational
    else:
        operational_rows = purge_operational(operational, found.expired_records, dry_run=True)
    con = connect(warehouse)  # apply may have rewritten the file
    try:
        run_id = done.run_id if done else None
        folders = landing_retention.run(con, landing, sources, found.as_of, run_id)
    finally:
        con.close()
    published: dict[str, int] = {}
    if done is not None and (done.plan.expired_records or derived) and published_dir.exists():
        published = purge.purge_published(
            published_dir, done.plan.expired_records, load_key(data_dir), derived
        )
    if done is not None:
        ensure_schema(operational)
    trail, refused = None, None
    if audit_config is not None and audit_config.keep_years is not None:
        try:
            trail = audit.expire(
                operational,
                audit_config.cutoff(found.as_of),
                actor=actor,
                keep_years=audit_config.keep_years,
                dry_run=dry_run,
            )
        except audit.AuditError as exc:
            if dry_run:
                raise
            refused = exc  # the rows are gone all the same: record that first, then fail
    result = Enforced(
        found,
        done,
        folders,
        published,
        trail,
        str(refused) if refused else None,
        erased_again,
        operational_rows,
    )
    if done is not None:
        user_id, role = actor
        audit.append(
            operational,
            audit.AuditEvent(
                user_id=user_id,
                role=role,
                purpose="retention",
                action="retention",
                outcome="allowed",
                detail=result.detail,
            ),
        )
    if refused is not None:
        raise refused
    return result


def runs(con: duckdb.DuckDBPyConnection, run_ids: Iterable[str] | None = None) -> pl.DataFrame:
    """Recorded retention runs (all, or those named), newest first."""
    if not table_exists(con, "meta", "retention_runs"):
        return pl.DataFrame()
    frame = con.sql("select * from meta.retention_runs order by recorded_at desc, run_id").pl()
    if run_ids is not None:
        frame = frame.filter(pl.col("run_id").is_in(list(run_ids)))
    return frame
