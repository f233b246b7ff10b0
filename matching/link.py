"""One night's resolution: scored pairs in, persons with stable ids and a review queue out.

The steps, each its own module so each can be tested alone:

1. constrained clustering of the scored pairs (``matching.cluster``);
2. school contacts linked through their child (``matching.contacts``), records that name
   themselves the same child's mother or father linked to each other
   (``matching.parents``), records with no identity of their own linked to the one
   person at their address who fits (``matching.residents``) or to their family at its
   new address (``matching.moves``), records with no forename linked to the one person at
   their address with their surname, sex and age (``matching.unnamed``), then clustering
   again with those links added (twice: ``LINK_ROUNDS``);
3. stable person ids from last night's registry (``matching.registry``);
4. the clerical review queue: pairs between the review and match thresholds that ended
   up in different persons, and pairs held back as ambiguous.

Incremental scoring lives here too: only records whose linkage fields changed since the
last run are re-scored (``changed_records``), and yesterday's scores are kept for pairs of
unchanged records, which is sound because a pair's score depends only on its two records
and the saved model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from matching import regions as regions_module
from matching.allocation import collector_paused
from matching.cluster import Clustering, cluster
from matching.config import LinkageConfig
from matching.contacts import contact_links
from matching.digests import fields_text, sha256_hex
from matching.edges import EDGE_SCHEMA
from matching.model import MODEL_COLUMNS
from matching.moves import move_links
from matching.parents import parent_links
from matching.regions import Reusable
from matching.registry import Assignment, assign_person_ids
from matching.residents import resident_links
from matching.rules import pair_vetoes, profile_seeds
from matching.unnamed import unnamed_links

DISPLAY_COLUMNS = [
    "source",
    "source_table",
    "local_key",
    "forename",
    "forename_alt",
    "middle_name",
    "surname",
    "surname_alt",
    "dob",
    "year_lo",
    "year_hi",
    "sex",
    "nhs_number",
    "upn",
    "child_upn",
    "relationship",
    "postcode",
    "address_key",
]


# Rounds of rule links (contacts, parents, residents, moves) after the first clustering.
LINK_ROUNDS = 2


@dataclass(frozen=True)
class LinkResult:
    person_records: pl.DataFrame
    # Tonight's persons: ``clusters`` for every record, ``vetoed`` its ambiguous pairs,
    # ``links`` only those made tonight (none in regions that kept last night's persons).
    clustering: Clustering
    assignment: Assignment
    review: pl.DataFrame
    state: pl.DataFrame  # unique_id, region, resolve_hash (``matching.regions``)
    ambiguous: pl.DataFrame  # the final clustering's pairs held back as ambiguous
    reclustered: dict[str, int]  # records and regions clustered tonight, of how many


@dataclass(frozen=True)
class Outcome:
    """Persons of a set of records: ``clusters`` (unique_id, cluster_id), ``confidence``
    (unique_id, match_confidence) and the ``ambiguous`` pairs held back."""

    clusters: pl.DataFrame
    confidence: pl.DataFrame
    ambiguous: pl.DataFrame


AMBIGUOUS = "ambiguous: fits two people"
AMBIGUOUS_SCHEMA = {
    "unique_id_l": pl.String,
    "unique_id_r": pl.String,
    "match_probability": pl.Float64,
}


# Everything a record's scores and hard rules depend on.
FINGERPRINT_COLUMNS = [
    *(c for c in MODEL_COLUMNS if c != "forename_canon"),
    "suffix",
    "dob_exact",
    "child_upn",
    "relationship",
]


def fingerprints(records: pl.DataFrame) -> pl.DataFrame:
    """A sha256 of each record's linkage fields: a changed fingerprint means re-score it.

    Nulls are written as a marker of their own, so "no postcode" differs from any postcode.
    """
    text = records.select(fields_text(records, FINGERPRINT_COLUMNS).alias("t"))["t"]
    return records.select("unique_id").with_columns(sha256_hex(text, 20, "fingerprint"))


def changed_records(current: pl.DataFrame, previous: pl.DataFrame | None) -> set[str]:
    """Unique ids of records that are new or whose linkage fields changed."""
    if previous is None or previous.is_empty():
        return set(current["unique_id"].to_list())
    joined = current.join(previous, on="unique_id", how="left", suffix="_before")
    changed = joined.filter(pl.col("fingerprint") != pl.col("fingerprint_before").fill_null(""))
    return set(changed["unique_id"].to_list())


def merge_scores(
    cached: pl.DataFrame, fresh: pl.DataFrame, records: pl.DataFrame, changed: set[str]
) -> pl.DataFrame:
    """Yesterday's scores for pairs of unchanged, still-present records plus tonight's."""
    present = records["unique_id"].implode()
    moved = pl.Series(sorted(changed), dtype=pl.String).implode()
    keep = cached.filter(
        pl.col("unique_id_l").is_in(present)
        & pl.col("unique_id_r").is_in(present)
        & ~pl.col("unique_id_l").is_in(moved)
        & ~pl.col("unique_id_r").is_in(moved)
    )
    return pl.concat([keep, fresh], how="diagonal_relaxed").unique(
        ["unique_id_l", "unique_id_r"], keep="last", maintain_order=True
    )


def _confidence(records: pl.DataFrame, links: pl.DataFrame) -> pl.DataFrame:
    """Per record, the strongest link that joined it to its person (null if on its own)."""
    ends = pl.concat(
        [
            links.select(pl.col("unique_id_l").alias("unique_id"), "match_probability"),
            links.select(pl.col("unique_id_r").alias("unique_id"), "match_probability"),
        ]
    )
    best = ends.group_by("unique_id").agg(pl.col("match_probability").max())
    return (
        records.select("unique_id")
        .join(best, on="unique_id", how="left")
        .rename({"match_probability": "match_confidence"})
    )


def level_labels(model: dict[str, Any]) -> dict[str, dict[int, str]]:
    """``gamma_<comparison>`` value -> the level's chart label, from a saved Splink model."""
    labels: dict[str, dict[int, str]] = {}
    for comparison in model["comparisons"]:
        levels = [lvl for lvl in comparison["comparison_levels"] if not lvl.get("is_null_level")]
        name = comparison["output_column_name"]
        labels[name] = {
            len(levels) - 1 - i: lvl["label_for_charts"] for i, lvl in enumerate(levels)
        }
        labels[name][-1] = "null"
    return labels


def review_queue(
    records: pl.DataFrame,
    pairs: pl.DataFrame,
    clustering: Clustering,
    config: LinkageConfig,
    model: dict[str, Any],
) -> pl.DataFrame:
    """Pairs a person should look at, with both records and the levels behind the score."""
    t = config.thresholds
    person = clustering.clusters.select("unique_id", "cluster_id")
    band = pairs.filter(
        (pl.col("match_probability") >= t.review) & (pl.col("match_probability") < t.match)
    )
    ambiguous = clustering.vetoed.filter(pl.col("reason").str.starts_with("ambiguous"))
    band = pl.concat(
        [
            band,
            pairs.join(
                ambiguous.select("unique_id_l", "unique_id_r"), on=["unique_id_l", "unique_id_r"]
            ),
        ],
        how="diagonal_relaxed",
    ).unique(["unique_id_l", "unique_id_r"])
    band = pair_vetoes(band, records).filter(~pl.col("veto")).drop("veto")
    band = band.join(
        person.rename({"unique_id": "unique_id_l", "cluster_id": "c_l"}), on="unique_id_l"
    )
    band = band.join(
        person.rename({"unique_id": "unique_id_r", "cluster_id": "c_r"}), on="unique_id_r"
    )
    band = band.filter(pl.col("c_l") != pl.col("c_r"))
    if band.is_empty():
        return pl.DataFrame(
            schema={
                "record_id_l": pl.String,
                "record_id_r": pl.String,
                "match_probability": pl.Float64,
                "match_weight": pl.Float64,
                "levels": pl.String,
                "record_l": pl.String,
                "record_r": pl.String,
            }
        )
    labels = level_labels(model)
    gammas = [c for c in band.columns if c.startswith("gamma_")]
    shown = records.select("unique_id", *DISPLAY_COLUMNS)
    details = {
        row["unique_id"]: json.dumps(
            {k: v for k, v in row.items() if k != "unique_id"}, default=str
        )
        for row in shown.filter(
            pl.col("unique_id").is_in(
                pl.concat([band["unique_id_l"], band["unique_id_r"]]).implode()
            )
        ).iter_rows(named=True)
    }
    levels = [
        json.dumps(
            {g[6:]: labels.get(g[6:], {}).get(v, str(v)) for g, v in zip(gammas, row, strict=True)}
        )
        for row in band.select(gammas).iter_rows()
    ]
    return band.select(
        pl.col("unique_id_l").alias("record_id_l"),
        pl.col("unique_id_r").alias("record_id_r"),
        "match_probability",
        "match_weight",
        pl.Series("levels", levels, dtype=pl.String),
        pl.col("unique_id_l").replace_strict(details, default=None).alias("record_l"),
        pl.col("unique_id_r").replace_strict(details, default=None).alias("record_r"),
    ).sort("match_probability", descending=True)


def link_clusters(
    records: pl.DataFrame,
    pairs: pl.DataFrame,
    config: LinkageConfig,
    *,
    constraints: pl.DataFrame | None = None,
    relationships: pl.DataFrame | None = None,
) -> Clustering:
    """Steps 1 and 2 of the module doc: cluster, add the rules' links, cluster again."""
    t = config.thresholds
    seeds = profile_seeds(records)

    def clustered(links: pl.DataFrame) -> Clustering:
        return cluster(
            records,
            links,
            threshold=t.match,
            max_cluster_size=t.max_cluster_size,
            constraints=constraints,
            seeds=seeds,
        )

    links = pairs
    final = clustered(links)
    # Each pass reads persons: a contact joined to a person in the first round can name
    # the person that the second round's parent or moved-household links need.
    for _ in range(LINK_ROUNDS):
        found = [
            contact_links(records, final.clusters),
            parent_links(records, final.clusters, relationships),
            resident_links(records, final.clusters),
            move_links(records, final.clusters),
            unnamed_links(records, final.clusters),
        ]
        # A pair a rule asserted stays asserted when a score for it ranks higher.
        links = (
            pl.concat([links, *found], how="diagonal_relaxed")
            .with_columns(
                pl.col("asserted")
                .fill_null(False)
                .any()
                .over("unique_id_l", "unique_id_r")
                .alias("asserted")
            )
            # Stable: a pair a score and a rule give one probability keeps the row listed
            # first, whichever records are resolved with it (a region or the county).
            .sort("match_probability", descending=True, maintain_order=True)
            .unique(["unique_id_l", "unique_id_r"], keep="first", maintain_order=True)
        )
        final = clustered(links)
    return final


def _finish(
    records: pl.DataFrame,
    pairs: pl.DataFrame,
    config: LinkageConfig,
    model: dict[str, Any],
    outcome: Outcome,
    *,
    previous_registry: pl.DataFrame,
    run_id: str,
    used_ids: set[str] | None,
    links: pl.DataFrame,
    state: pl.DataFrame,
    reclustered: dict[str, int],
) -> LinkResult:
    """Steps 3 and 4 of the module doc, on every record's person (``outcome``)."""
    t = config.thresholds
    clusters = outcome.clusters.with_columns(
        pl.len().over("cluster_id").alias("cluster_size")
    ).with_columns((pl.col("cluster_size") > t.max_cluster_size).alias("oversized"))
    clustering = Clustering(
        clusters=records.select("unique_id").join(clusters, on="unique_id", maintain_order="left"),
        links=links,
        vetoed=outcome.ambiguous.with_columns(pl.lit(AMBIGUOUS).alias("reason")),
    )
    assignment = assign_person_ids(
        previous_registry,
        clustering.clusters.select(pl.col("unique_id").alias("record_id"), "cluster_id"),
        run_id,
        used_ids=used_ids,
    )
    person_records = (
        records.select("unique_id", "source", "source_table", "local_key", "from_quarantine")
        .join(assignment.registry.rename({"record_id": "unique_id"}), on="unique_id")
        .join(outcome.confidence, on="unique_id")
        .join(clusters.select("unique_id", "cluster_size", "oversized"), on="unique_id")
        .rename({"unique_id": "record_id"})
    )
    return LinkResult(
        person_records=person_records,
        clustering=clustering,
        assignment=assignment,
        review=review_queue(records, pairs, clustering, config, model),
        state=state,
        ambiguous=outcome.ambiguous,
        reclustered=reclustered,
    )


def _outcome(records: pl.DataFrame, clustering: Clustering) -> Outcome:
    """What the rest of the night needs from one clustering of ``records``."""
    ambiguous = clustering.vetoed.filter(pl.col("reason").str.starts_with("ambiguous"))
    return Outcome(
        clusters=clustering.clusters.select(
            "unique_id", pl.concat_str(pl.lit("r#"), "cluster_id").alias("cluster_id")
        ),
        confidence=_confidence(records, clustering.links),
        ambiguous=ambiguous.select(*AMBIGUOUS_SCHEMA).cast(AMBIGUOUS_SCHEMA),
    )


@collector_paused()
def resolve(
    records: pl.DataFrame,
    pairs: pl.DataFrame,
    config: LinkageConfig,
    model: dict[str, Any],
    *,
    previous_registry: pl.DataFrame,
    run_id: str,
    constraints: pl.DataFrame | None = None,
    used_ids: set[str] | None = None,
    relationships: pl.DataFrame | None = None,
    previous: Reusable | None = None,
    salt: str = "",
) -> LinkResult:
    """Cluster, add contact, parent, resident and move links, cluster again, assign stable ids,
    queue review. ``relationships`` are the sources' own relationship tables
    (``warehouse.person_rows.read_relationships``), read by ``matching.parents``.

    With ``previous`` (last night's regions and outcomes, ``matching.regions``), regions
    whose records, pairs, constraints and relationships are all unchanged keep last night's
    persons and only the others are clustered again (one ``link_clusters`` call on all of
    them); the result is the same as clustering everything. ``salt`` names what else the
    stored outcomes depend on (the model version): a different salt re-clusters everything.
    """
    state = regions_module.region_state(
        records,
        pairs,
        threshold=config.thresholds.match,
        constraints=constraints,
        relationships=relationships,
        salt=regions_module.salt(config, salt),
    )
    clean = regions_module.clean_records(state, previous)
    dirty = records.join(clean, on="unique_id", how="anti")
    dirty_ids = dirty["unique_id"].implode()
    dirty_pairs = pairs.filter(
        pl.col("unique_id_l").is_in(dirty_ids) & pl.col("unique_id_r").is_in(dirty_ids)
    )
    parts: list[Outcome] = []
    links = pl.DataFrame(schema=EDGE_SCHEMA)
    if dirty.height:
        clustering = link_clusters(
            dirty, dirty_pairs, config, constraints=constraints, relationships=relationships
        )
        parts.append(_outcome(dirty, clustering))
        links = clustering.links
    if clean.height and previous is not None:
        parts.append(Outcome(*regions_module.reused(previous, clean)))
    outcome = Outcome(
        clusters=pl.concat([p.clusters for p in parts]),
        confidence=pl.concat([p.confidence for p in parts]),
        ambiguous=pl.concat([p.ambiguous for p in parts]),
    )
    dirty_regions = state.join(dirty.select("unique_id"), on="unique_id")["region"].n_unique()
    reclustered = {
        "records": dirty.height,
        "regions": dirty_regions,
        "regions_total": state["region"].n_unique(),
        "largest_region": int(state.group_by("region").len()["len"].max() or 0),
    }
    return _finish(
        records,
        pairs,
        config,
        model,
        outcome,
        previous_registry=previous_registry,
        run_id=run_id,
        used_ids=used_ids,
        links=links,
        state=state,
        reclustered=reclustered,
    )


def run_id_for(prints: pl.DataFrame, model_version: str, started: datetime) -> str:
    """A run id unique to the run (its start time) that also names what it saw: the model
    and the records' fingerprints (``fingerprints``), so runs over one input are recognisable."""
    digest = hashlib.sha256(model_version.encode())
    digest.update(prints.sort("unique_id").write_csv().encode())
    return f"{started:%Y%m%dT%H%M%S%f}-{digest.hexdigest()[:12]}"
