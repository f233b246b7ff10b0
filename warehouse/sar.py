"""Subject access (UK GDPR Art. 15): everything held about one person, where it came from and
who has seen it, with what must be reviewed before disclosure kept apart.

The person is named by tonight's person id; the export follows that id to the person's
source records (``source|table|local_key``, the snapshot's ``person_records``), and to the
records of theirs no source delivers any more but whose rows are still held (a replaced
temporary UPN: :mod:`warehouse.retired`), and gathers, from every layer:

* **ingest** (``raw``, ``staged``, ``quarantine``): every delivered row about those records
  (:mod:`warehouse.subjects`), once for each delivery that carried it, each with its
  provenance: source, table, layer, delivery id, delivery (extract) date, file and row
  number;
* **linked**: the person's records (retired ones too), household and relationship rows, and
  the linkage events that created or merged their id;
* **curated** (the published Family View snapshot): person, child summary, involvement,
  timeline, household, relationships and organisations;
* **operational**: restrictions and rectifications recorded against the records, the
  clerical review queue's pairs naming them, and the **recipients**: every audited read of
  the person (who, role, organisation, when, purpose, lawful basis, outcome).

A row goes to the main section only if it is about the subject alone. A row also about
anyone else (a relationship, a police incident with other people present, an early help
family episode, a pupil's contact, another household member) or that its source marked
confidential from the subject goes to ``review_before_disclosure`` with the reason: a
disclosure officer decides what of it may be released (redacting third parties), so it is
never mixed into what can be handed over as it stands. What the curated layer derives from
confidential rows goes to review too (the agency's involvement, the child summary): a
confidential episode must not reach the subject as its team, practitioner or status.

Nothing here decides disclosure; it gathers, separates and records. The export itself is
audited (purpose ``subject_rights``): who ran it, why, and counts, never the data; the event
names the subject and every other person whose rows it carries, so each of them finds it in
their own history.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import sqlalchemy as sa
from jinja2 import Environment
from sqlalchemy.engine import Engine

from warehouse import audit, linked, retired, review, subjects
from warehouse.publish import SnapshotStore, person_record_ids
from warehouse.rectification import rectifications
from warehouse.restriction import restrictions
from warehouse.review import review_pairs
from warehouse.sources import ColumnType, Source

# Staging's own reading of a delivered value: the raw and quarantined copies of a row must be
# judged by the rule that typed the staged copy, or one copy reaches main while another is
# held back.
from warehouse.staging import typed_value as staged_value
from warehouse.store import connect, table_exists
from warehouse.tombstone import normalised

MAIN, REVIEW = "main", "review"
SECTION_KEYS = {MAIN: "main", REVIEW: "review_before_disclosure"}
ABOUT_OTHERS = "about other people"
CONFIDENTIAL = "confidential from subject"
NAMES_ANOTHER = "names another person"
OTHER_MEMBER = "another household member"
DERIVED_CONFIDENTIAL = "derived from records confidential from the subject"
CONFIDENTIAL_COLUMN = "confidential_from_subject"
# Columns naming people by person id, and by source record id: who else a row is about,
# for the export's audit event.
PERSON_COLUMNS = ("person_id", "related_person_id", "previous_person_ids", "_shared_with")
RECORD_COLUMNS = ("record_id", "record_ids", "record_id_l", "record_id_r", "_other_records")
# Curated tables held per person; aggregates and the search index are not about anyone.
CURATED_OWN = ("person", "child_summary", "involvement", "person_organisations")
PROVENANCE = (
    "_layer",
    "_source",
    "_table",
    "_delivery_id",
    "_extract_date",
    "_source_file",
    "_row_number",
)


class SarError(ValueError):
    """A subject access export that cannot be made; the message says why."""


@dataclass(frozen=True)
class Subject:
    """Whose data: tonight's id, the ids their records held before, and the records."""

    person_id: str
    record_ids: tuple[str, ...]
    former_person_ids: tuple[str, ...]
    snapshot: str
    as_of: str
    # Records of theirs that no source delivers any more, whose rows are still held.
    retired_record_ids: tuple[str, ...] = ()

    @property
    def all_record_ids(self) -> tuple[str, ...]:
        """Tonight's records and the retired ones: everything held is about these."""
        return tuple(sorted({*self.record_ids, *self.retired_record_ids}))


@dataclass(frozen=True)
class Block:
    """Rows of one table of one layer, in one section of the export."""

    section: str  # MAIN or REVIEW
    layer: str  # raw, staged, quarantine, linked, curated, operational
    source: str
    table: str
    rows: pl.DataFrame

    @property
    def name(self) -> str:
        return f"{self.layer}__{self.source}__{self.table}"


@dataclass
class SubjectAccess:
    """Everything gathered for one request."""

    subject: Subject
    blocks: list[Block]
    recipients: list[dict[str, Any]]
    generated_at: datetime
    by: str
    reason: str
    notes: list[str] = field(default_factory=list)
    # Everyone else whose data the rows carry (household members, relations, others at an
    # incident): named in the export's audit event, so their own history shows it.
    others_named: tuple[str, ...] = ()

    def section(self, section: str) -> list[Block]:
        return [b for b in self.blocks if b.section == section]

    def counts(self) -> dict[str, int]:
        return {
            SECTION_KEYS[s]: sum(b.rows.height for b in self.section(s)) for s in (MAIN, REVIEW)
        } | {"recipients": len(self.recipients)}


# -- splitting rows between main and review ---------------------------------------------------


def _when(condition: pl.Expr, reason: str) -> pl.Expr:
    return pl.when(condition.fill_null(False)).then(pl.lit(reason))


def _split(
    frame: pl.DataFrame,
    reasons: list[pl.Expr],
    layer: str,
    source: str,
    table: str,
    review_only: tuple[str, ...] = (),
) -> list[Block]:
    """Rows with any reason go to review carrying ``_review_reasons``; the rest to main.
    ``review_only`` columns (who else a row is about) are kept for the reviewer alone."""
    if frame.is_empty():
        return []
    if not reasons:
        return [Block(MAIN, layer, source, table, frame.drop(review_only, strict=False))]
    marked = frame.with_columns(
        pl.concat_str(reasons, separator="; ", ignore_nulls=True).alias("_review_reasons")
    )
    review = marked.filter(pl.col("_review_reasons") != "")
    main = (
        marked.filter(pl.col("_review_reasons") == "")
        .drop("_review_reasons")
        .drop(review_only, strict=False)
    )
    return [
        Block(section, layer, source, table, rows)
        for section, rows in ((MAIN, main), (REVIEW, review))
        if not rows.is_empty()
    ]


def _confidential(frame: pl.DataFrame, source: Source) -> pl.Series:
    """The source's flag per row, typed (staged) or as delivered (raw, quarantine). Delivered
    text is read as staging reads it (trimmed, the source's ``true_values``): a row staged as
    confidential is confidential in every layer, whatever the source writes for true."""
    if CONFIDENTIAL_COLUMN not in frame.columns:
        return pl.Series(CONFIDENTIAL_COLUMN, [False] * frame.height, dtype=pl.Boolean)
    if frame.schema[CONFIDENTIAL_COLUMN] == pl.Boolean:
        return frame[CONFIDENTIAL_COLUMN].fill_null(False)
    typed, _ = staged_value(source, CONFIDENTIAL_COLUMN, ColumnType.boolean)
    as_text = frame.select(pl.col(CONFIDENTIAL_COLUMN).cast(pl.String))
    return as_text.select(typed.fill_null(False)).to_series()


def _local_keys(frame: pl.DataFrame, source: Source, table: str) -> pl.Series:
    """Each row's local key as staged (:func:`warehouse.tombstone.normalised`), the same in
    every layer and delivery: what ties the copies of one record together. Null for a row
    without one (a quarantined row may lack it), which ties it to nothing."""
    spec = source.tables[table]
    columns = spec.local_key
    if not columns or not set(columns) <= set(frame.columns):
        return pl.Series("_local_key", [None] * frame.height, dtype=pl.String)
    parts = [normalised(spec, c).fill_null("") for c in columns]
    return frame.select(
        pl.when(pl.all_horizontal(part == "" for part in parts))
        .then(None)
        .otherwise(pl.concat_str(parts, separator="|"))
    ).to_series()


def _labelled(frame: pl.DataFrame, layer: str, source: str, table: str) -> pl.DataFrame:
    """Where each row lives, in its first columns (a row read alone still says so)."""
    return frame.select(
        pl.lit(layer).alias("_layer"),
        pl.lit(source).alias("_source"),
        pl.lit(table).alias("_table"),
        pl.exclude("_layer", "_source", "_table"),
    )


# -- resolving the subject --------------------------------------------------------------------


def resolve_subject(
    snapshot: duckdb.DuckDBPyConnection,
    warehouse: duckdb.DuckDBPyConnection,
    store: SnapshotStore,
    person_id: str,
) -> tuple[Subject, set[str], int]:
    """The subject, every other person id in tonight's snapshot (to recognise rows naming
    someone else), and how many of the subject's former ids another person holds now (a
    split): reads under those ids were of both people, so they are not listed as the
    subject's recipients."""
    current = store.current()
    assert current is not None  # reader() has already refused an unpublished store
    records = person_record_ids(snapshot, person_id)
    if not records:
        raise SarError(
            f"no person {person_id!r} in the published snapshot {current.snapshot}: "
            "give the person id as shown in the Family View"
        )
    others = {
        pid
        for (pid,) in snapshot.execute(
            "select distinct person_id from person_records where person_id <> ?", [person_id]
        ).fetchall()
    }
    former = linked.earlier_ids(warehouse, person_id)
    subject = Subject(
        person_id, tuple(records), tuple(sorted(former - others)), current.snapshot, current.as_of
    )
    return subject, others, len(former & others)


# -- gathering ---------------------------------------------------------------------------------


def ingest_blocks(
    con: duckdb.DuckDBPyConnection, sources: dict[str, Source], record_ids: Iterable[str]
) -> list[Block]:
    """Every raw, staged and quarantined row about the records, with its provenance.

    A record one delivery marked confidential from the subject is held back in every copy
    (each layer, each delivery, even one that did not mark it): the source has said the
    subject must not be given it."""
    own = sorted(set(record_ids))
    found: list[tuple[subjects.Relation, pl.DataFrame, pl.Series, pl.Series]] = []
    for relation in subjects.relations(con, sources):
        rows = subjects.rows_about(con, sources[relation.source], relation, set(own))
        if rows.is_empty():
            continue
        rows = _labelled(rows.drop("_rowid"), relation.schema, relation.source, relation.table)
        rows = rows.with_columns(
            pl.col("_about")
            .list.eval(pl.element().filter(~pl.element().is_in(own)))
            .alias("_other_records")
        )
        front = [c for c in PROVENANCE if c in rows.columns]
        rows = rows.select(*front, pl.exclude(front)).sort(
            [c for c in ("_extract_date", "_row_number") if c in rows.columns]
        )
        source = sources[relation.source]
        keys = _local_keys(rows, source, relation.table)
        found.append((relation, rows, _confidential(rows, source), keys))
    held = {
        (relation.source, relation.table, key)
        for relation, _, flags, keys in found
        for flag, key in zip(flags, keys, strict=True)
        if flag and key is not None
    }
    blocks: list[Block] = []
    for relation, rows, flags, keys in found:
        marked = {k for s, t, k in held if (s, t) == (relation.source, relation.table)}
        reasons = [
            _when(pl.col("_other_records").list.len() > 0, ABOUT_OTHERS),
            _when(pl.lit(flags | keys.is_in(sorted(marked))), CONFIDENTIAL),
        ]
        blocks += _split(
            rows,
            reasons,
            relation.schema,
            relation.source,
            relation.table,
            review_only=("_other_records",),
        )
    return blocks


def confidential_records(
    blocks: Iterable[Block], sources: dict[str, Source]
) -> dict[str, set[str]]:
    """Per source, the local keys of ingest rows about the subject that the source marked
    confidential from them (for what the curated layer derives from those rows)."""
    held: dict[str, set[str]] = {}
    for b in blocks:
        if b.section != REVIEW or b.layer not in subjects.INGEST_SCHEMAS:
            continue
        rows = b.rows.filter(pl.col("_review_reasons").str.contains(CONFIDENTIAL, literal=True))
        if not rows.is_empty():
            keys = _local_keys(rows, sources[b.source], b.table).drop_nulls()
            held.setdefault(b.source, set()).update(keys.to_list())
    return held


def _query(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> pl.DataFrame:
    return con.sql(sql, params=params).pl()


def linked_blocks(
    con: duckdb.DuckDBPyConnection, subject: Subject, others: set[str]
) -> list[Block]:
    """The linkage's rows about the person: records, household, relationships, id events."""
    blocks: list[Block] = []
    pid, ids = subject.person_id, [subject.person_id, *subject.former_person_ids]

    def add(table: str, sql: str, params: list[Any], reasons: list[pl.Expr]) -> None:
        if not table_exists(con, "linked", table):
            return
        rows = _labelled(_query(con, sql, params), "linked", "linkage", table)
        blocks.extend(_split(rows, reasons, "linked", "linkage", table))

    add(
        "person_records",
        "select * from linked.person_records where list_contains(?, record_id) order by record_id",
        [list(subject.record_ids)],
        [_when(pl.col("person_id") != pid, NAMES_ANOTHER)],
    )
    add(
        "retired_records",
        "select * from linked.retired_records where list_contains(?, record_id) order by record_id",
        [list(subject.retired_record_ids)],
        [_when(pl.col("person_id").is_in(sorted(others)), NAMES_ANOTHER)],
    )
    add(
        "household_members",
        "select * from linked.household_members where household_id in "
        "(select household_id from linked.household_members where person_id = ?) "
        "order by person_id <> ?, person_id",
        [pid, pid],
        [_when(pl.col("person_id") != pid, OTHER_MEMBER)],
    )
    add(
        "person_relationships",
        "select * from linked.person_relationships where person_id = ? or related_person_id = ? "
        "order by all",
        [pid, pid],
        [_when(pl.lit(True), NAMES_ANOTHER)],
    )
    add(
        "person_events",
        "select e.* from linked.person_events e join linked.runs r using (run_id) "
        "where list_contains(?, e.person_id) or list_has_any(e.previous_person_ids, ?) "
        "order by r.started_at, e.person_id",
        [ids, ids],
        [
            _when(
                pl.col("person_id").is_in(sorted(others))
                | pl.col("previous_person_ids")
                .list.eval(pl.element().is_in(sorted(others)))
                .list.any(),
                NAMES_ANOTHER,
            )
        ],
    )
    return blocks


def _confidential_agencies(
    snapshot: duckdb.DuckDBPyConnection, person_id: str, sources: Collection[str]
) -> set[str]:
    """Agencies holding something about the person that is confidential from them: those
    of their confidential timeline rows, and those fed by a source (``sources``) that
    marked an ingest row about them confidential (an agency is named by its source when
    the timeline does not map it)."""
    rows = snapshot.execute(
        "select distinct agency from timeline where person_id = ? and confidential_from_subject "
        "union select distinct agency from timeline where list_contains(?, source)",
        [person_id, sorted(sources)],
    ).fetchall()
    return {agency for (agency,) in rows} | set(sources)


def curated_blocks(
    snapshot: duckdb.DuckDBPyConnection,
    subject: Subject,
    confidential: dict[str, set[str]] | None = None,
) -> list[Block]:
    """The person's rows in tonight's Family View (not aggregates or the search index).

    ``confidential``: per source, the local keys of ingest rows about the person that it
    marked confidential from them (:func:`confidential_records`); an event keyed by one is
    held back even if the snapshot predates the marking. Involvement and the child summary
    carry no flag of their own but are built from those rows (an episode's service, dates,
    team and practitioner; the social care status and key workers), so with any
    confidential row the summary, and that agency's involvement, go to review."""
    pid = subject.person_id
    blocks: list[Block] = []
    confidential = confidential or {}
    agencies = _confidential_agencies(snapshot, pid, confidential.keys())
    held_events = pl.concat_str("source", "source_key", separator="|").is_in(
        sorted(f"{s}|{k}" for s, keys in confidential.items() for k in keys)
    )

    def add(
        table: str,
        sql: str,
        params: list[Any],
        reasons: list[pl.Expr],
        review_only: tuple[str, ...] = (),
    ) -> None:
        rows = _labelled(_query(snapshot, sql, params), "curated", "family_view", table)
        rows = rows.with_columns(pl.lit(subject.snapshot).alias("_snapshot"))
        blocks.extend(_split(rows, reasons, "curated", "family_view", table, review_only))

    derived = {
        "child_summary": [_when(pl.lit(bool(agencies)), DERIVED_CONFIDENTIAL)],
        "involvement": [_when(pl.col("agency").is_in(sorted(agencies)), DERIVED_CONFIDENTIAL)],
    }
    for table in CURATED_OWN:
        add(
            table,
            f'select * from "{table}" where person_id = ? order by all',
            [pid],
            derived.get(table, []),
        )
    # An event is about everyone its source row is about (others at a police incident, the
    # family of an early help episode): each of them has a timeline row of the same source
    # and source key.
    add(
        "timeline",
        "select t.*, coalesce((select list_sort(list(distinct o.person_id)) from timeline o "
        "where o.source = t.source and o.source_key = t.source_key "
        "and o.person_id <> t.person_id), []) as _shared_with "
        "from timeline t where t.person_id = ? order by t.event_date, t.event_id",
        [pid],
        [
            _when(pl.col("confidential_from_subject") | held_events, CONFIDENTIAL),
            _when(pl.col("_shared_with").list.len() > 0, ABOUT_OTHERS),
        ],
        review_only=("_shared_with",),
    )
    add(
        "household_members",
        "select * from household_members where household_id in "
        "(select household_id from household_members where person_id = ?) "
        "order by person_id <> ?, person_id",
        [pid, pid],
        [_when(pl.col("person_id") != pid, OTHER_MEMBER)],
    )
    add(
        "relationships",
        "select * from relationships where person_id = ? or related_person_id = ? order by all",
        [pid, pid],
        [_when(pl.lit(True), NAMES_ANOTHER)],
    )
    return blocks


def _recorded_against(
    engine: Engine,
    table: sa.Table,
    source: str,
    subject: Subject,
    others: set[str],
    person_ids: Collection[str] = (),
) -> list[Block]:
    """Rows of an operational ``table`` recorded against the person's records (its
    ``record_ids``), or naming one of ``person_ids``; those also naming someone else's
    record or id go to review."""
    own = set(subject.all_record_ids)
    with engine.connect() as conn:
        rows = [r._asdict() for r in conn.execute(sa.select(table).order_by("id"))]
    found = [
        {**r, "record_ids": json.loads(r["record_ids"])}
        for r in rows
        if own & set(json.loads(r["record_ids"])) or r["person_id"] in person_ids
    ]
    if not found:
        return []
    frame = _labelled(
        pl.DataFrame(found, infer_schema_length=None), "operational", source, table.name
    )
    reasons = [
        _when(
            pl.col("person_id").is_in(sorted(others))
            | pl.col("record_ids").list.eval(~pl.element().is_in(sorted(own))).list.any(),
            NAMES_ANOTHER,
        )
    ]
    return _split(frame, reasons, "operational", source, table.name)


def restriction_blocks(engine: Engine, subject: Subject, others: set[str]) -> list[Block]:
    """Restrictions of processing recorded against the person's records, lifted or not."""
    return _recorded_against(engine, restrictions, "restriction", subject, others)


def rectification_blocks(engine: Engine, subject: Subject, others: set[str]) -> list[Block]:
    """Rectifications of the person's fields (old, new and source values), lapsed or not:
    kept against their records, or named by their id (current or former) when recorded."""
    ids = {subject.person_id, *subject.former_person_ids}
    return _recorded_against(engine, rectifications, "rectification", subject, others, ids)


def review_pair_blocks(engine: Engine, subject: Subject) -> list[Block]:
    """The clerical review of the person's records: pairs queued with one of them (each
    holds both records' displayed fields, the other usually someone else's), reviewers'
    decisions on such pairs (with their reasons), and the splits that moved them."""
    own = sorted(subject.all_record_ids)
    decisions, splits, split_records = (
        review.review_decisions,
        review.person_splits,
        review.person_split_records,
    )
    queries = {
        "review_pairs": sa.select(review_pairs)
        .where(review_pairs.c.record_id_l.in_(own) | review_pairs.c.record_id_r.in_(own))
        .order_by(review_pairs.c.first_queued_at, review_pairs.c.pair_id),
        "review_decisions": sa.select(decisions)
        .where(decisions.c.record_id_l.in_(own) | decisions.c.record_id_r.in_(own))
        .order_by(decisions.c.id),
        "person_splits": sa.select(splits, split_records.c.group_no, split_records.c.record_id)
        .join(split_records, split_records.c.split_id == splits.c.id)
        .where(split_records.c.record_id.in_(own))
        .order_by(splits.c.id, split_records.c.record_id),
    }
    pair = ~pl.col("record_id_l").is_in(own) | ~pl.col("record_id_r").is_in(own)
    blocks: list[Block] = []
    with engine.connect() as conn:
        for table, query in queries.items():
            found = [r._asdict() for r in conn.execute(query)]
            if not found:
                continue
            frame = _labelled(
                pl.DataFrame(found, infer_schema_length=None), "operational", "review", table
            )
            reasons = [] if table == "person_splits" else [_when(pair, NAMES_ANOTHER)]
            blocks += _split(frame, reasons, "operational", "review", table)
    return blocks


def _others_named(
    snapshot: duckdb.DuckDBPyConnection, subject: Subject, blocks: Iterable[Block]
) -> tuple[str, ...]:
    """Every other person the rows name: by person id, or by a source record of theirs
    (tonight's person for it). Delivered rows are read only for the records the export
    found them about: a source's own columns are its local keys, not person ids."""
    people: set[str] = set()
    records: set[str] = set()
    for block in blocks:
        delivered = block.layer in subjects.INGEST_SCHEMAS
        for names, found in (
            (() if delivered else PERSON_COLUMNS, people),
            (("_other_records",) if delivered else RECORD_COLUMNS, records),
        ):
            for column in names:
                if column not in block.rows.columns:
                    continue
                values = block.rows[column]
                if isinstance(values.dtype, pl.List):
                    values = values.explode()
                found.update(v for v in values.cast(pl.String).to_list() if v)
    records -= set(subject.all_record_ids)
    if records:
        people |= {
            pid
            for (pid,) in snapshot.execute(
                "select distinct person_id from person_records where list_contains(?, record_id)",
                [sorted(records)],
            ).fetchall()
        }
    return tuple(sorted(people - {subject.person_id, *subject.former_person_ids}))


def recipients(engine: Engine, subject: Subject) -> list[dict[str, Any]]:
    """Who has been given the person's data: every audited event naming their ids, as who,
    when, why and how it ended (not the other people an event may name)."""
    ids = {subject.person_id, *subject.former_person_ids}
    return [
        {
            "occurred_at": e.occurred_at.isoformat(),
            "user_id": e.user_id,
            "role": e.role,
            "organisation": e.organisation,
            "action": e.action,
            "purpose": e.purpose,
            "lawful_basis": e.lawful_basis,
            "outcome": e.outcome,
            "tables": list(e.tables),
            "columns": list(e.columns),
            "as_person_id": sorted(ids & set(e.person_ids)),
            "audit_seq": e.seq,
        }
        for e in audit.person_history(engine, sorted(ids))
    ]


def gather(
    *,
    warehouse: Path,
    store: SnapshotStore,
    engine: Engine,
    sources: dict[str, Source],
    person_id: str,
    by: str,
    reason: str,
) -> SubjectAccess:
    """Everything held about ``person_id``, split into main and review, with recipients."""
    if not warehouse.exists():
        raise SarError(f"no warehouse at {warehouse}: nothing has been loaded")
    con = connect(warehouse, read_only=True)
    try:
        with store.reader() as snapshot:
            subject, others, shared = resolve_subject(snapshot, con, store, person_id.strip())
            subject = replace(
                subject,
                retired_record_ids=tuple(
                    sorted(retired.records_of(con, sources, subject.person_id, subject.record_ids))
                ),
            )
            ingest = ingest_blocks(con, sources, subject.all_record_ids)
            blocks = [
                *ingest,
                *linked_blocks(con, subject, others),
                *curated_blocks(snapshot, subject, confidential_records(ingest, sources)),
                *restriction_blocks(engine, subject, others),
                *rectification_blocks(engine, subject, others),
                *review_pair_blocks(engine, subject),
            ]
            named = _others_named(snapshot, subject, blocks)
    finally:
        con.close()
    return SubjectAccess(
        subject=subject,
        blocks=blocks,
        recipients=recipients(engine, subject),
        generated_at=datetime.now(UTC),
        by=by,
        reason=reason,
        notes=[
            f"{shared} former person id(s) of this person now belong to someone else (a split "
            "by linkage): accesses under them are not listed; check them with `sdv audit`."
        ]
        if shared
        else [],
        others_named=named,
    )


# -- writing -------------------------------------------------------------------------------------


def _csv_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """Lists as ``a; b`` text: CSV has no nested values."""
    return frame.with_columns(
        pl.col(c).cast(pl.List(pl.String)).list.join("; ")
        for c, dtype in frame.schema.items()
        if isinstance(dtype, pl.List)
    )


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return json.loads(json.dumps(frame.to_dicts(), default=str))


def provenance(sar: SubjectAccess) -> dict[str, Any]:
    """Counts per section, layer, source and table, and the deliveries the rows came from."""
    counts = [
        {
            "section": SECTION_KEYS[b.section],
            "layer": b.layer,
            "source": b.source,
            "table": b.table,
            "rows": b.rows.height,
        }
        for b in sar.blocks
    ]
    deliveries: dict[tuple[str, str, str], set[str]] = {}
    for block in sar.blocks:
        if {"_delivery_id", "_extract_date", "_source_file"} <= set(block.rows.columns):
            for d, day, file in block.rows.select(
                "_delivery_id", "_extract_date", "_source_file"
            ).iter_rows():
                deliveries.setdefault((block.source, str(day), d), set()).add(file)
    return {
        "counts": counts,
        "deliveries": [
            {"source": s, "extract_date": day, "delivery_id": d, "files": sorted(files)}
            for (s, day, d), files in sorted(deliveries.items())
        ],
        "snapshot": sar.subject.snapshot,
        "snapshot_as_of": sar.subject.as_of,
    }


def per_source(sar: SubjectAccess) -> list[dict[str, Any]]:
    """Rows per source in each section, for the summary's first table."""
    totals: dict[str, dict[str, int]] = {}
    for block in sar.blocks:
        entry = totals.setdefault(block.source, {MAIN: 0, REVIEW: 0})
        entry[block.section] += block.rows.height
    return [{"source": s, "main": t[MAIN], "review": t[REVIEW]} for s, t in sorted(totals.items())]


def as_json(sar: SubjectAccess) -> dict[str, Any]:
    subject = sar.subject
    return {
        "subject": {
            "person_id": subject.person_id,
            "former_person_ids": list(subject.former_person_ids),
            "record_ids": list(subject.record_ids),
            "retired_record_ids": list(subject.retired_record_ids),
        },
        "generated_at": sar.generated_at.isoformat(),
        "by": sar.by,
        "reason": sar.reason,
        **{
            SECTION_KEYS[section]: [
                {
                    "layer": b.layer,
                    "source": b.source,
                    "table": b.table,
                    "file": f"{section}/{b.name}.csv",
                    "rows": _rows(b.rows),
                }
                for b in sar.section(section)
            ]
            for section in (MAIN, REVIEW)
        },
        "recipients": sar.recipients,
        "provenance": provenance(sar),
        "notes": sar.notes,
    }


_HTML = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Subject access export: {{ s.person_id }}</title>
<style>
body{font-family:sans-serif;margin:2em;max-width:80em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
th,td{border:1px solid #999;padding:.2em .4em;text-align:left;vertical-align:top}
th{background:#eee} .review{border:3px solid #b00;padding:0 1em;margin-top:2em}
.review h2{color:#b00}
</style></head><body>
<h1>Subject access export</h1>
<p>Person <b>{{ s.person_id }}</b>{% if s.former_person_ids %} (formerly
{{ s.former_person_ids | join(", ") }}){% endif %}: {{ s.record_ids | length }} source
records{% if s.retired_record_ids %}, and {{ s.retired_record_ids | length }} no source
delivers any more whose rows are still held{% endif %}. Family View snapshot
{{ s.snapshot }} (as of {{ s.as_of }}).</p>
<p>Generated {{ generated_at }} by {{ by }}. Reason: {{ reason }}</p>
{% for note in notes %}<p><b>Note:</b> {{ note }}</p>{% endfor %}
<h2>Rows held, per source</h2>
<table><tr><th>source</th><th>main</th><th>review before disclosure</th></tr>
{% for r in sources %}<tr><td>{{ r.source }}</td><td>{{ r.main }}</td><td>{{ r.review }}</td></tr>
{% endfor %}</table>
<h2>Recipients: who has seen this person's data</h2>
{% if recipients %}<table><tr><th>when</th><th>who</th><th>role</th><th>organisation</th>
<th>action</th><th>purpose</th><th>lawful basis</th><th>outcome</th><th>tables</th></tr>
{% for r in recipients %}<tr><td>{{ r.occurred_at }}</td><td>{{ r.user_id }}</td>
<td>{{ r.role }}</td><td>{{ r.organisation or "" }}</td><td>{{ r.action }}</td>
<td>{{ r.purpose }}</td><td>{{ r.lawful_basis or "" }}</td><td>{{ r.outcome }}</td>
<td>{{ r.tables | join(", ") }}</td></tr>
{% endfor %}</table>{% else %}<p>No recorded access.</p>{% endif %}
{% macro blocks(items) %}{% for b in items %}
<h3>{{ b.layer }} / {{ b.source }} / {{ b.table }} ({{ b.rows | length }} rows)</h3>
<table><tr>{% for c in b.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in b.rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table>{% endfor %}{% endmacro %}
<h2>Data about the person</h2>
{{ blocks(main) }}
<div class="review">
<h2>Review before disclosure: not to be released as it stands</h2>
<p>These rows are also about other people (family members, others present at an incident,
other household members) or their source marked them confidential from the subject. Each
carries its reason. Decide what may be disclosed, redacting third parties, before release.</p>
{% if review %}{{ blocks(review) }}{% else %}<p>Nothing to review.</p>{% endif %}
</div></body></html>
"""
)


def summary_html(sar: SubjectAccess) -> str:
    def view(section: str) -> list[dict[str, Any]]:
        return [
            {
                "layer": b.layer,
                "source": b.source,
                "table": b.table,
                "columns": b.rows.columns,
                "rows": [
                    ["" if v is None else v for v in row.values()]
                    for row in _rows(_csv_ready(b.rows))
                ],
            }
            for b in sar.section(section)
        ]

    return _HTML.render(
        s=sar.subject,
        generated_at=sar.generated_at.isoformat(timespec="seconds"),
        by=sar.by,
        reason=sar.reason,
        sources=per_source(sar),
        recipients=sar.recipients,
        notes=sar.notes,
        main=view(MAIN),
        review=view(REVIEW),
    )


def check_out_dir(out_dir: Path) -> None:
    """Refuse a folder already holding files: an export must not mix with anything else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SarError(f"{out_dir} is a file, not a folder: give a new or empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise SarError(
            f"{out_dir} is not empty: give a new or empty folder, so the export holds only "
            "this person's data"
        )


def write_export(sar: SubjectAccess, out_dir: Path) -> list[Path]:
    """``sar.json``, one CSV per section and table, ``recipients.csv`` and ``summary.html``."""
    check_out_dir(out_dir)
    written: list[Path] = []
    for block in sar.blocks:
        path = out_dir / block.section / f"{block.name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        _csv_ready(block.rows).write_csv(path)
        written.append(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    if sar.recipients:
        recipients_path = out_dir / "recipients.csv"
        _csv_ready(pl.DataFrame(sar.recipients, infer_schema_length=None)).write_csv(
            recipients_path
        )
        written.append(recipients_path)
    (out_dir / "sar.json").write_text(
        json.dumps(as_json(sar), indent=2, default=str), encoding="utf-8"
    )
    (out_dir / "summary.html").write_text(summary_html(sar), encoding="utf-8")
    return [*written, out_dir / "sar.json", out_dir / "summary.html"]


def export_subject_access(
    *,
    warehouse: Path,
    store: SnapshotStore,
    engine: Engine,
    sources: dict[str, Source],
    person_id: str,
    out_dir: Path,
    reason: str,
    by: str,
) -> SubjectAccess:
    """Gather, write into ``out_dir`` and audit a subject access export.

    The export is audited after it is written; if the audit refuses it, the files are
    removed again, so no export exists that the audit does not show.
    """
    if not reason.strip() or not by.strip():
        raise SarError("a subject access export needs a reason and who made it")
    check_out_dir(out_dir)
    existed = out_dir.exists()
    sar = gather(
        warehouse=warehouse,
        store=store,
        engine=engine,
        sources=sources,
        person_id=person_id,
        by=by,
        reason=reason,
    )
    write_export(sar, out_dir)
    try:
        audit.record_rights_action(
            engine,
            by=by,
            action="subject_access_export",
            person_ids=[sar.subject.person_id, *sar.others_named],
            tables=sorted({f"{b.layer}.{b.source}__{b.table}" for b in sar.blocks}),
            detail={"reason": reason, "counts": sar.counts(), "subject": sar.subject.person_id},
        )
    except Exception:
        _remove(out_dir, existed)
        raise
    return sar


def _remove(out_dir: Path, existed: bool) -> None:
    if existed:
        for child in out_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
