"""Stable person ids across nightly linkage runs.

Linkage clusters every person-level record each night and numbers the clusters arbitrarily.
Practitioners' bookmarks and other agencies' systems need ids that only change when the
evidence does, so this module carries last night's person ids onto tonight's clusters. A
record linked yesterday keeps its id today unless the evidence changed, and every merge and
split is recorded with the ids before and after, so downstream users can follow them.

Vocabulary: a *contributor* to a cluster is a previous person id with at least one of its
records in that cluster; *shared* is how many. A cluster is named by its *anchor*, its
smallest record_id, which is stable and comparable whatever type the run's cluster ids are.

Rules, in the order they are applied:

1. Home. Each previous id P has one home: the cluster holding most of P's surviving records
   (tie: the cluster with the smallest anchor). P can only ever be carried onto its home.
2. Keeper. Each cluster keeps, among the previous ids whose home it is, the one contributing
   most records (tie: lexicographically smallest id). So a cluster gets at most one previous
   id and a previous id goes to at most one cluster, even when merges and splits happen
   together. A previous id whose home was kept by another id is absorbed: it is no longer used
   for any record (its minority fragments elsewhere do not inherit it either).
3. A cluster that keeps P and has no other contributor emits no event, whether or not new
   records joined it or some of P's records left it (those leavers are reported by the
   cluster they went to).
4. Merge. A cluster that keeps an id and has several contributors emits ``merge`` with
   ``person_id`` the kept id and ``previous_person_ids`` every contributor (sorted).
5. Split. A cluster with contributors but no kept id (it holds only fragments whose home is
   elsewhere) gets a new id and emits ``split`` with ``previous_person_ids`` its contributors
   (usually just the one id it split from).
6. New. A cluster with no contributors gets a new id and emits ``new``; these are emitted on
   every run, including the first, so users can see tonight's new persons.
7. Retired. A previous id none of whose records were delivered tonight emits ``retired`` with
   ``person_id`` null (there is no id after), ``previous_person_ids`` [P] and ``records`` 0.
   An absorbed id is not retired: the merge event (rule 4) says where it went.
8. New ids are ``"P"`` + the first 12 hex digits (uppercase) of sha256 of the cluster's anchor,
   so the same input always gives the same ids. If that id was ever issued (``used_ids``),
   is in the previous registry, or is taken by another cluster tonight (the cluster with the
   smaller anchor wins), it is rehashed as sha256(f"{anchor}#{k}") for k = 1, 2, ... until
   free. An id that belonged to someone else is never reused.

Every step is a join or group_by; the only Python loops are sha256 per newly minted id (Polars
has no sha256) and the rehash loop over the rare clashing ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

EVENT_KINDS = ("new", "merge", "split", "retired")

REGISTRY_SCHEMA: dict[str, pl.DataType] = {"record_id": pl.String(), "person_id": pl.String()}
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "event": pl.String(),
    "person_id": pl.String(),
    "previous_person_ids": pl.List(pl.String()),
    "records": pl.Int64(),
}
CHANGES_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String(),
    "person_id_before": pl.String(),
    "person_id_after": pl.String(),
}


@dataclass(frozen=True)
class Assignment:
    """Tonight's registry (one row per clustered record) and the identity events behind it."""

    registry: pl.DataFrame
    events: pl.DataFrame

    def event_counts(self) -> dict[str, int]:
        """Events per kind, every kind present (zero when none), for run summaries."""
        counts = dict.fromkeys(EVENT_KINDS, 0)
        for kind, n in self.events.group_by("event").len().iter_rows():
            counts[kind] = n
        return counts

    @property
    def issued_ids(self) -> set[str]:
        """Ids minted tonight; add them to the caller's ever-issued set for the next run."""
        minted = self.events.filter(pl.col("event").is_in(["new", "split"]))
        return set(minted["person_id"].to_list())


def assign_person_ids(
    previous: pl.DataFrame,
    clusters: pl.DataFrame,
    run_id: str,
    used_ids: set[str] | None = None,
) -> Assignment:
    """Carry last night's person ids onto tonight's clusters by the rules in the module doc.

    ``previous`` has ``record_id``, ``person_id`` (may be empty); ``clusters`` has
    ``record_id``, ``cluster_id`` (any type); ``used_ids`` is every id ever issued, so retired
    ids are never handed to someone else.
    """
    prev = _prepare_previous(previous)
    records = _prepare_clusters(clusters)
    contributions = _contributions(records, prev)
    keepers = _keepers(_homes(contributions))
    persons = _name_clusters(records, contributions, keepers, prev, used_ids or set())
    registry = (
        records.join(persons.select("anchor", "person_id"), on="anchor", how="left")
        .select("record_id", "person_id")
        .sort("record_id")
    )
    events = pl.concat([_cluster_events(persons, run_id), _retired_events(prev, records, run_id)])
    return Assignment(registry=registry, events=_sort_events(events))


def registry_changes(previous: pl.DataFrame, registry: pl.DataFrame) -> pl.DataFrame:
    """Records present in both registries whose person id changed: who needs telling.

    Brand-new records had no id to change and removed records have none after, so neither is
    listed; a removed person shows up as a ``retired`` event instead.
    """
    before = _prepare_previous(previous).rename({"person_id": "person_id_before"})
    after = _as_registry(registry).rename({"person_id": "person_id_after"})
    return (
        before.join(after, on="record_id", how="inner")
        .filter(pl.col("person_id_before") != pl.col("person_id_after"))
        .select(list(CHANGES_SCHEMA))
        .cast(CHANGES_SCHEMA)
        .sort("record_id")
    )


def new_person_id(anchor: str, attempt: int = 0) -> str:
    """Deterministic id for a cluster from its smallest record_id; ``attempt`` > 0 rehashes."""
    text = anchor if attempt == 0 else f"{anchor}#{attempt}"
    return "P" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12].upper()


def _as_registry(frame: pl.DataFrame) -> pl.DataFrame:
    """Select and type ``record_id``/``person_id``, so an untyped empty frame is accepted."""
    missing = set(REGISTRY_SCHEMA) - set(frame.columns)
    if missing:
        raise ValueError(f"registry frame lacks columns {sorted(missing)}")
    return frame.select(list(REGISTRY_SCHEMA)).cast(REGISTRY_SCHEMA)


def _prepare_previous(previous: pl.DataFrame) -> pl.DataFrame:
    """Last night's registry, checked: one non-null person id per record."""
    prev = _as_registry(previous)
    if prev.select(pl.any_horizontal(pl.all().is_null().any())).item():
        raise ValueError("previous registry has null record_id or person_id")
    if prev["record_id"].is_duplicated().any():
        raise ValueError("previous registry has a record_id more than once")
    return prev


def _prepare_clusters(clusters: pl.DataFrame) -> pl.DataFrame:
    """Tonight's records with their cluster's anchor (smallest record_id) in place of the
    run-specific cluster id, which may be any type and means nothing across runs."""
    missing = {"record_id", "cluster_id"} - set(clusters.columns)
    if missing:
        raise ValueError(f"clusters frame lacks columns {sorted(missing)}")
    frame = clusters.select(pl.col("record_id").cast(pl.String), "cluster_id")
    if frame.select(pl.any_horizontal(pl.all().is_null().any())).item():
        raise ValueError("clusters has null record_id or cluster_id")
    if frame["record_id"].is_duplicated().any():
        raise ValueError("clusters has a record_id in more than one row")
    return frame.select("record_id", pl.col("record_id").min().over("cluster_id").alias("anchor"))


def _contributions(records: pl.DataFrame, prev: pl.DataFrame) -> pl.DataFrame:
    """(anchor, previous person_id, shared): how many of each old person's records each
    cluster holds. Only previously registered records count."""
    return (
        records.join(prev, on="record_id", how="inner")
        .group_by("anchor", "person_id")
        .agg(pl.len().cast(pl.Int64).alias("shared"))
    )


def _homes(contributions: pl.DataFrame) -> pl.DataFrame:
    """Each previous id's home cluster: most of its records, tie smallest anchor."""
    return contributions.sort(
        ["person_id", "shared", "anchor"], descending=[False, True, False]
    ).unique("person_id", keep="first", maintain_order=True)


def _keepers(homes: pl.DataFrame) -> pl.DataFrame:
    """Per cluster, the one previous id (among those at home there) that it keeps: most
    records, tie lexicographically smallest id."""
    return (
        homes.sort(["anchor", "shared", "person_id"], descending=[False, True, False])
        .unique("anchor", keep="first", maintain_order=True)
        .select("anchor", pl.col("person_id").alias("kept_id"))
    )


def _name_clusters(
    records: pl.DataFrame,
    contributions: pl.DataFrame,
    keepers: pl.DataFrame,
    prev: pl.DataFrame,
    used_ids: set[str],
) -> pl.DataFrame:
    """One row per cluster: anchor, size, contributors, kept_id (null when minted), person_id."""
    contributors = contributions.group_by("anchor").agg(
        pl.col("person_id").sort().alias("contributors")
    )
    clusters = (
        records.group_by("anchor")
        .agg(pl.len().cast(pl.Int64).alias("records"))
        .join(contributors, on="anchor", how="left")
        .join(keepers, on="anchor", how="left")
        .with_columns(pl.col("contributors").fill_null(pl.lit([], dtype=pl.List(pl.String))))
        .sort("anchor")
    )
    needs_id = clusters.filter(pl.col("kept_id").is_null())["anchor"]
    minted = _mint_ids(needs_id, prev["person_id"], used_ids)
    return clusters.join(minted, on="anchor", how="left").with_columns(
        pl.coalesce("kept_id", "minted_id").alias("person_id")
    )


def _mint_ids(anchors: pl.Series, previous_ids: pl.Series, used_ids: set[str]) -> pl.DataFrame:
    """New ids for the given anchors (sorted), never one already in use or ever issued.

    Clashes (with previous or used ids, or between tonight's candidates) are rare, so only
    those go through the Python rehash loop; the smaller anchor keeps the first hash.
    """
    candidates = pl.DataFrame(
        {
            "anchor": anchors,
            "minted_id": pl.Series([new_person_id(a) for a in anchors.to_list()], dtype=pl.String),
        },
        schema={"anchor": pl.String, "minted_id": pl.String},
    ).sort("anchor")
    taken_before = pl.concat([previous_ids, pl.Series(sorted(used_ids), dtype=pl.String)])
    clash = pl.col("minted_id").is_in(taken_before.implode()) | (
        pl.int_range(pl.len()).over("minted_id") > 0
    )
    candidates = candidates.with_columns(clash.alias("clash"))
    if not candidates["clash"].any():
        return candidates.drop("clash")
    taken = set(taken_before.to_list()) | set(
        candidates.filter(~pl.col("clash"))["minted_id"].to_list()
    )
    fixed: dict[str, str] = {}
    for anchor in candidates.filter(pl.col("clash"))["anchor"].to_list():
        attempt = 1
        while (person_id := new_person_id(anchor, attempt)) in taken:
            attempt += 1
        taken.add(person_id)
        fixed[anchor] = person_id
    return candidates.with_columns(
        pl.col("anchor").replace_strict(fixed, default=pl.col("minted_id")).alias("minted_id")
    ).drop("clash")


def _cluster_events(persons: pl.DataFrame, run_id: str) -> pl.DataFrame:
    """new / split / merge events from the per-cluster naming (rules 3 to 6)."""
    n_contributors = pl.col("contributors").list.len()
    minted = pl.col("kept_id").is_null()
    event = (
        pl.when(minted & (n_contributors == 0))
        .then(pl.lit("new"))
        .when(minted)
        .then(pl.lit("split"))
        .when(n_contributors > 1)
        .then(pl.lit("merge"))
        .otherwise(None)
    )
    return (
        persons.with_columns(event.alias("event"), pl.lit(run_id).alias("run_id"))
        .filter(pl.col("event").is_not_null())
        .select(
            "run_id",
            "event",
            "person_id",
            pl.col("contributors").alias("previous_person_ids"),
            "records",
        )
        .cast(EVENT_SCHEMA)
    )


def _retired_events(prev: pl.DataFrame, records: pl.DataFrame, run_id: str) -> pl.DataFrame:
    """Previous ids none of whose records were delivered tonight (rule 7)."""
    surviving = prev.join(records.select("record_id"), on="record_id", how="semi")
    gone = (
        prev.select("person_id")
        .unique()
        .join(surviving.select("person_id").unique(), on="person_id", how="anti")
    )
    return gone.select(
        pl.lit(run_id).alias("run_id"),
        pl.lit("retired").alias("event"),
        pl.lit(None, dtype=pl.String).alias("person_id"),
        pl.concat_list("person_id").alias("previous_person_ids"),
        pl.lit(0).alias("records"),
    ).cast(EVENT_SCHEMA)


def _sort_events(events: pl.DataFrame) -> pl.DataFrame:
    """A stable order (kind, then id after, then first id before) for reproducible output."""
    order = pl.col("event").replace_strict(
        {kind: i for i, kind in enumerate(EVENT_KINDS)}, return_dtype=pl.Int8
    )
    return events.sort(
        order, "person_id", pl.col("previous_person_ids").list.first(), nulls_last=True
    )
