"""Independence regions (``matching.regions``): a second night that re-clusters only the
regions that changed gives exactly what resolving everything gives.

One small generated county is loaded and linked once (the model trained on it); the tests
then work on its standardised records and scored pairs. Random second nights change them
as deliveries do (families moving, new and removed records, corrected names, dates and NHS
numbers, new school contacts, reviewers' decisions, relationship rows), re-score the
changed records (any score will do: the property holds for any pairs, as long as pairs
between unchanged records are yesterday's, as incremental scoring keeps them), and compare
``resolve`` with last night's regions to ``resolve`` without.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from conftest import sdv_load
from typer.testing import CliRunner

from assets.linkage import newest_model, run_linkage
from matching import regions as regions_module
from matching.config import LinkageConfig, load_linkage_config
from matching.contacts import contact_links
from matching.link import LinkResult, link_clusters, resolve
from matching.moves import move_links
from matching.parents import parent_links
from matching.regions import RESOLVE_COLUMNS, Reusable, clean_records, regions
from matching.residents import resident_links
from matching.standardise import standardise
from matching.unnamed import unnamed_links
from pipelines.cli import app
from synth.generate import generate_county
from tests.test_linkage_rules import rec, rows
from tests.test_moves import FLORENCE, KAREN, _police
from warehouse import linked
from warehouse.operational import engine_for
from warehouse.person_rows import read_person_rows, read_relationships
from warehouse.store import connect

HOUSEHOLDS = 250
SEED = 29
FIRST, SECOND = "2026-11-19", "2026-11-20"


@dataclass
class Night:
    """What ``resolve`` reads on one night."""

    records: pl.DataFrame
    pairs: pl.DataFrame
    constraints: pl.DataFrame
    relationships: pl.DataFrame


@dataclass
class Base:
    root: Path
    generated: Path
    landing: Path
    data: Path
    config: LinkageConfig
    model: dict[str, Any]
    night: Night


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Iterator[Base]:
    """The county's first delivery loaded and linked by ``sdv link`` (which trains)."""
    saved = dict(os.environ)  # the CLI exports its settings to the environment
    root = tmp_path_factory.mktemp("regions_county")
    generated, landing, data = root / "generated", root / "landing", root / "data"
    generate_county(HOUSEHOLDS, SEED, date.fromisoformat(SECOND), generated, deliveries=2)
    _deliver(generated, landing, FIRST)
    assert sdv_load(landing, data).exit_code == 0
    result = CliRunner().invoke(app, ["link", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    config = load_linkage_config()
    con = connect(data / "warehouse.duckdb", read_only=True)
    try:
        related = read_relationships(con, config)
        records = standardise(read_person_rows(con, config), config, related)
        pairs = linked.read_table(con, "scored_pairs")
    finally:
        con.close()
    assert pairs is not None
    model_path = newest_model(data / "models")
    assert model_path is not None
    model = json.loads(model_path.read_text())
    constraints = pl.DataFrame(
        schema={"record_id_l": pl.String, "record_id_r": pl.String, "constraint": pl.String}
    )
    yield Base(root, generated, landing, data, config, model,
               Night(records, pairs, constraints, related))  # fmt: skip
    os.environ.clear()
    os.environ.update(saved)


def _deliver(generated: Path, landing: Path, extract_date: str) -> None:
    for source in sorted((generated / "landing").iterdir()):
        shutil.copytree(source / extract_date, landing / source.name / extract_date)


# --------------------------------------------------------------------------- resolving


def _resolve(base: Base, night: Night, before: LinkResult | None, reuse: bool) -> LinkResult:
    previous = None
    registry = pl.DataFrame(schema={"record_id": pl.String, "person_id": pl.String})
    if before is not None:
        registry = before.person_records.select("record_id", "person_id")
        if reuse:
            previous = Reusable(
                state=before.state,
                persons=before.person_records.select(
                    pl.col("record_id").alias("unique_id"), "person_id", "match_confidence"
                ),
                ambiguous=before.ambiguous,
            )
    return resolve(
        night.records,
        night.pairs,
        base.config,
        base.model,
        previous_registry=registry,
        run_id="run",
        constraints=night.constraints,
        used_ids=set(registry["person_id"].to_list()),
        relationships=night.relationships,
        previous=previous,
        salt="model",
    )


def _same(incremental: LinkResult, full: LinkResult, *, hashes: bool = True) -> None:
    """Persons, confidence, sizes, identity events, review queue, regions (and, with
    ``hashes``, what is stored for tomorrow) all equal."""
    columns = ["record_id", "person_id", "match_confidence", "cluster_size", "oversized"]
    assert (
        incremental.person_records.select(columns)
        .sort("record_id")
        .equals(full.person_records.select(columns).sort("record_id"))
    )
    events = incremental.assignment.events.with_columns(
        pl.col("previous_person_ids").list.join(",")
    )
    expected = full.assignment.events.with_columns(pl.col("previous_person_ids").list.join(","))
    assert events.sort(pl.all(), nulls_last=True).equals(expected.sort(pl.all(), nulls_last=True))
    assert incremental.review.sort("record_id_l", "record_id_r").equals(
        full.review.sort("record_id_l", "record_id_r")
    )
    kept = ["unique_id", "region", *(["resolve_hash"] if hashes else [])]
    assert (
        incremental.state.select(kept)
        .sort("unique_id")
        .equals(full.state.select(kept).sort("unique_id"))
    )
    assert incremental.ambiguous.sort(pl.all()).equals(full.ambiguous.sort(pl.all()))


# --------------------------------------------------------------------------- second nights


def _weight(p: float) -> float:
    return math.log2(p / (1 - p))


def _set(records: pl.DataFrame, uid: str, **values: Any) -> pl.DataFrame:
    """``records`` with one record's columns replaced (types kept)."""
    is_it = pl.col("unique_id") == uid
    return records.with_columns(
        pl.when(is_it).then(pl.lit(v, dtype=records.schema[c])).otherwise(pl.col(c)).alias(c)
        for c, v in values.items()
    )


class SecondNight:
    """Random changes to one night's input; ``touched`` are the records to re-score."""

    def __init__(self, night: Night, rng: random.Random) -> None:
        self.records = night.records
        self.pairs = night.pairs
        self.constraints = night.constraints
        self.relationships = night.relationships
        self.rng = rng
        self.touched: set[str] = set()

    def pick(self, frame: pl.DataFrame | None = None) -> dict[str, Any]:
        frame = self.records if frame is None else frame
        return frame.row(self.rng.randrange(frame.height), named=True)

    def addressed(self) -> pl.DataFrame:
        return self.records.filter(
            pl.col("postcode").is_not_null() & pl.col("address_key").is_not_null()
        )

    def move_family(self) -> None:
        """A household moves: into another family's address, or to a new one."""
        home = self.pick(self.addressed())
        there = self.pick(self.addressed())
        if self.rng.random() < 0.5:
            there = {**there, "address_key": f"|{self.rng.randrange(999)}|new street"}
        movers = self.records.filter(
            (pl.col("postcode") == home["postcode"])
            & (pl.col("address_key") == home["address_key"])
        )["unique_id"].to_list()
        for uid in movers:
            self.records = _set(
                self.records, uid, postcode=there["postcode"], address_key=there["address_key"]
            )
        self.touched.update(movers)

    def new_record(self) -> None:
        """Another source's row for someone already known (sometimes a different name)."""
        row = self.pick()
        uid = f"zz|new|{self.rng.getrandbits(48):012x}"
        copy = self.records.filter(pl.col("unique_id") == row["unique_id"]).with_columns(
            pl.lit(uid).alias("unique_id")
        )
        if self.rng.random() < 0.3:
            copy = copy.with_columns(pl.lit(self.pick()["forename"]).alias("forename"))
        self.records = pl.concat([self.records, copy])
        self.touched.add(uid)

    def remove_record(self) -> None:
        uid = self.pick()["unique_id"]
        self.records = self.records.filter(pl.col("unique_id") != uid)
        self.touched.add(uid)

    def correct_record(self) -> None:
        """A corrected forename, date of birth or NHS number."""
        row = self.pick()
        kind = self.rng.choice(["forename", "dob", "nhs"])
        if kind == "forename":
            self.records = _set(self.records, row["unique_id"], forename=self.pick()["forename"])
        elif kind == "dob" and row["dob"] is not None:
            dob = row["dob"] + timedelta(days=self.rng.choice([1, 31, 365]))
            self.records = _set(self.records, row["unique_id"], dob=dob)
        else:
            nhs = self.pick(self.records.filter(pl.col("nhs_number").is_not_null()))["nhs_number"]
            self.records = _set(
                self.records, row["unique_id"], nhs_number=self.rng.choice([None, nhs])
            )
        self.touched.add(row["unique_id"])

    def new_contact(self) -> None:
        """A school contact row for another pupil, at that pupil's address."""
        contacts = self.records.filter(pl.col("child_upn").is_not_null())
        pupils = self.addressed().filter(pl.col("upn_keys").list.len() > 0)
        if contacts.is_empty() or pupils.is_empty():
            return
        contact, pupil = self.pick(contacts), self.pick(pupils)
        adult = self.pick(
            self.addressed().filter(
                (pl.col("postcode") == pupil["postcode"])
                & (pl.col("address_key") == pupil["address_key"])
            )
        )
        uid = f"zz|contact|{self.rng.getrandbits(48):012x}"
        row = self.records.filter(pl.col("unique_id") == contact["unique_id"]).with_columns(
            pl.lit(uid).alias("unique_id"),
            pl.lit(pupil["upn_keys"][0]).alias("child_upn"),
            pl.lit(pupil["postcode"]).alias("postcode"),
            pl.lit(pupil["address_key"]).alias("address_key"),
            pl.lit(adult["forename"]).alias("forename"),
            pl.lit(pupil["surname"]).alias("surname"),
        )
        self.records = pl.concat([self.records, row])
        self.touched.add(uid)

    def decide(self) -> None:
        """A reviewer's decision on two records at one address."""
        row = self.pick(self.addressed())
        there = self.addressed().filter(
            (pl.col("postcode") == row["postcode"]) & (pl.col("address_key") == row["address_key"])
        )
        other = self.pick(there)["unique_id"]
        if other == row["unique_id"]:
            return
        left, right = sorted([row["unique_id"], other])
        kind = self.rng.choice(["must_link", "cannot_link"])
        decision = pl.DataFrame(
            {"record_id_l": [left], "record_id_r": [right], "constraint": [kind]}
        )
        self.constraints = pl.concat([self.constraints, decision])

    def relate(self) -> None:
        """A relationship row added (a child's father) or one dropped."""
        if self.relationships.height and self.rng.random() < 0.3:
            drop = self.rng.randrange(self.relationships.height)
            self.relationships = (
                self.relationships.with_row_index("i").filter(pl.col("i") != drop).drop("i")
            )
            return
        child, father = self.pick()["unique_id"], self.pick()["unique_id"]
        row = {c: None for c in self.relationships.columns}
        row.update(record_id=child, related_record_id=father, relationship="father")
        self.relationships = pl.concat(
            [self.relationships, pl.DataFrame([row], schema=self.relationships.schema)]
        )

    def rescore(self) -> None:
        """Pairs of touched records scored again (at random, near people like them);
        every other pair kept, as ``link.merge_scores`` keeps them."""
        touched = pl.Series(sorted(self.touched), dtype=pl.String).implode()
        present = self.records["unique_id"].implode()
        kept = self.pairs.filter(
            ~pl.col("unique_id_l").is_in(touched)
            & ~pl.col("unique_id_r").is_in(touched)
            & pl.col("unique_id_l").is_in(present)
            & pl.col("unique_id_r").is_in(present)
        )
        fresh = []
        alive = self.records.filter(pl.col("unique_id").is_in(touched))
        for row in alive.iter_rows(named=True):
            near = self.records.filter(
                (pl.col("surname") == row["surname"])
                | (
                    (pl.col("postcode") == row["postcode"])
                    & (pl.col("address_key") == row["address_key"])
                )
            )["unique_id"].to_list()
            for other in self.rng.sample(near, min(4, len(near))):
                if other == row["unique_id"]:
                    continue
                p = self.rng.choice([0.2, 0.6, 0.9, 0.97, 0.999])
                left, right = sorted([row["unique_id"], other])
                fresh.append((left, right, p, _weight(p)))
        frame = pl.DataFrame(
            fresh,
            schema={"unique_id_l": pl.String, "unique_id_r": pl.String,
                    "match_probability": pl.Float64, "match_weight": pl.Float64},
            orient="row",
        )  # fmt: skip
        self.pairs = pl.concat([kept, frame], how="diagonal_relaxed").unique(
            ["unique_id_l", "unique_id_r"], keep="last", maintain_order=True
        )

    def night(self) -> Night:
        self.rescore()
        return Night(self.records, self.pairs, self.constraints, self.relationships)


CHANGES: list[Callable[[SecondNight], None]] = [
    SecondNight.move_family,
    SecondNight.new_record,
    SecondNight.remove_record,
    SecondNight.correct_record,
    SecondNight.new_contact,
    SecondNight.decide,
    SecondNight.relate,
]


@pytest.mark.parametrize("seed", range(6))
def test_random_second_and_third_nights_match_a_full_resolve(base: Base, seed: int) -> None:
    rng = random.Random(seed)
    before = _resolve(base, base.night, None, reuse=False)
    night = base.night
    for _ in range(2):
        changing = SecondNight(night, rng)
        for change in CHANGES:
            for _ in range(rng.randrange(1, 4)):
                change(changing)
        night = changing.night()
        incremental = _resolve(base, night, before, reuse=True)
        full = _resolve(base, night, before, reuse=False)
        _same(incremental, full)
        # Most of the county was reused, and some of it was clustered again.
        assert 0 < incremental.reclustered["records"] < night.records.height / 2
        before = incremental


def test_an_unchanged_night_reuses_everything(base: Base) -> None:
    before = _resolve(base, base.night, None, reuse=False)
    again = _resolve(base, base.night, before, reuse=True)
    assert again.reclustered["records"] == 0
    _same(again, _resolve(base, base.night, before, reuse=False))


def test_other_thresholds_or_model_reuse_nothing(base: Base) -> None:
    before = _resolve(base, base.night, None, reuse=False)
    previous = Reusable(before.state, before.person_records.rename({"record_id": "unique_id"}),
                        before.ambiguous)  # fmt: skip

    def clean(config: LinkageConfig, model: str) -> pl.DataFrame:
        state = regions_module.region_state(
            base.night.records,
            base.night.pairs,
            threshold=config.thresholds.match,
            constraints=None,
            relationships=base.night.relationships,
            salt=regions_module.salt(config, model),
        )
        return clean_records(state, previous)

    # The same night, thresholds and model (``_resolve`` salts with "model") reuse every
    # record: what changes below is all that stops it.
    assert clean(base.config, "model").height == base.night.records.height
    assert clean(base.config, "another model").is_empty()
    # A match threshold a hair higher moves few pairs across it, so nearly every region
    # is the same, but every stored outcome was decided with the old threshold.
    thresholds = base.config.thresholds.model_copy(
        update={"match": base.config.thresholds.match + 0.01}
    )
    stricter = base.config.model_copy(update={"thresholds": thresholds})
    assert clean(stricter, "model").is_empty()


def test_resolve_reads_only_the_hashed_columns(base: Base) -> None:
    # A column resolve read but record_hashes did not hash could change unseen.
    night = base.night
    cut = Night(night.records.select(RESOLVE_COLUMNS), night.pairs, night.constraints,
                night.relationships)  # fmt: skip
    cut_result = _resolve(base, cut, None, reuse=False)
    _same(cut_result, _resolve(base, night, None, reuse=False), hashes=False)


# --------------------------------------------------------------------------- the region argument


def _groups(night: Night, threshold: float, parts: int = 3) -> list[pl.DataFrame]:
    """The records split into ``parts`` sets of whole regions (chosen by region id)."""
    found = regions(
        night.records,
        night.pairs,
        threshold=threshold,
        constraints=night.constraints,
        relationships=night.relationships,
    )
    ids = sorted(found["region"].unique().to_list())
    part = {region: i % parts for i, region in enumerate(ids)}
    found = found.with_columns(pl.col("region").replace_strict(part).alias("part"))
    return [
        night.records.join(found.filter(pl.col("part") == i).select("unique_id"), on="unique_id")
        for i in range(parts)
    ]


def _grouping(clusters: pl.DataFrame) -> set[frozenset[str]]:
    return {
        frozenset(members)
        for members in clusters.group_by("cluster_id").agg("unique_id")["unique_id"].to_list()
    }


def _edges(frame: pl.DataFrame) -> set[tuple[str, str, float]]:
    return set(frame.select("unique_id_l", "unique_id_r", "match_probability").rows())


RULES: dict[str, Callable[[pl.DataFrame, pl.DataFrame, pl.DataFrame | None], pl.DataFrame]] = {
    "contacts": lambda r, c, _rel: contact_links(r, c),
    "parents": parent_links,
    "residents": lambda r, c, _rel: resident_links(r, c),
    "moves": lambda r, c, _rel: move_links(r, c),
    "unnamed": lambda r, c, _rel: unnamed_links(r, c),
}


def _rule_breaks(night: Night, config: LinkageConfig) -> list[str]:
    """The rule modules whose links over everything differ from their links over each
    part of the regions alone, on every clustering a night goes through (first, last)."""
    t = config.thresholds
    parts = _groups(night, t.match)
    final = link_clusters(night.records, night.pairs, config, constraints=night.constraints,
                          relationships=night.relationships)  # fmt: skip
    from matching.cluster import cluster

    first = cluster(night.records, night.pairs, threshold=t.match,
                    max_cluster_size=t.max_cluster_size, constraints=night.constraints)  # fmt: skip
    broken = []
    for name, rule in RULES.items():
        for clustering in (first, final):
            everything = _edges(rule(night.records, clustering.clusters, night.relationships))
            alone: set[tuple[str, str, float]] = set()
            for part in parts:
                clusters = clustering.clusters.join(part.select("unique_id"), on="unique_id")
                alone |= _edges(rule(part, clusters, night.relationships))
            if alone != everything:
                broken.append(name)
                break
    return broken


@pytest.mark.parametrize("seed", range(3))
def test_each_rule_module_links_within_regions(base: Base, seed: int) -> None:
    rng = random.Random(100 + seed)
    changing = SecondNight(base.night, rng)
    for change in CHANGES:
        for _ in range(3):
            change(changing)
    assert _rule_breaks(changing.night(), base.config) == []


def test_regions_resolved_alone_are_the_county_resolved(base: Base) -> None:
    night = base.night
    everything = link_clusters(night.records, night.pairs, base.config,
                               constraints=night.constraints,
                               relationships=night.relationships)  # fmt: skip
    grouping: set[frozenset[str]] = set()
    links: set[tuple[str, str, float]] = set()
    for part in _groups(night, base.config.thresholds.match):
        ids = part["unique_id"].implode()
        pairs = night.pairs.filter(
            pl.col("unique_id_l").is_in(ids) & pl.col("unique_id_r").is_in(ids)
        )
        alone = link_clusters(part, pairs, base.config, constraints=night.constraints,
                              relationships=night.relationships)  # fmt: skip
        grouping |= _grouping(alone.clusters)
        links |= _edges(alone.links)
    assert grouping == _grouping(everything.clusters)
    assert links == _edges(everything.links)


def test_a_region_graph_without_address_edges_is_caught(
    base: Base, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tests above can fail: without the address keys, residents and contacts found at
    # an address reach across regions.
    monkeypatch.setattr(regions_module, "_address_edges", lambda records: [])
    assert {"residents", "contacts"} & set(_rule_breaks(base.night, base.config))


def test_clean_regions_are_exactly_last_nights() -> None:
    state = pl.DataFrame(
        {"unique_id": ["a", "b", "c", "d", "e"], "region": ["a", "a", "c", "d", "d"],
         "resolve_hash": ["1", "2", "3", "4", "5"]}
    )  # fmt: skip
    persons = pl.DataFrame({"unique_id": ["a", "b", "c", "d", "e"], "person_id": list("PPQRR"),
                            "match_confidence": [0.9, 0.9, None, 0.99, 0.99]})  # fmt: skip
    ambiguous = pl.DataFrame(schema={"unique_id_l": pl.String, "unique_id_r": pl.String,
                                     "match_probability": pl.Float64})  # fmt: skip
    same = Reusable(state, persons, ambiguous)
    assert clean_records(state, same)["unique_id"].sort().to_list() == list("abcde")
    # b's hash changed: region a is dirty; c lost a region mate f: dirty; d, e gained one.
    tonight = pl.DataFrame(
        {"unique_id": ["a", "b", "c", "d", "e", "g"], "region": ["a", "a", "c", "d", "d", "d"],
         "resolve_hash": ["1", "X", "3", "4", "5", "6"]}
    )  # fmt: skip
    last = state.vstack(pl.DataFrame({"unique_id": ["f"], "region": ["c"], "resolve_hash": ["7"]}))
    assert clean_records(tonight, Reusable(last, persons, ambiguous)).is_empty()
    assert clean_records(state, None).is_empty()


# --------------------------------------------------------------------------- the nightly run


def _review_rows(data: Path) -> pl.DataFrame:
    """The review queue as stored, without the times and run ids that differ per run."""
    engine = engine_for(f"sqlite:///{data / 'operational.db'}")
    with engine.connect() as conn:
        rows = pl.read_database("select * from review_pairs", conn)
    engine.dispose()
    drop = ["first_queued_at", "last_queued_at", "last_run_id"]
    return rows.drop(drop).sort(pl.all(), nulls_last=True)


def test_second_delivery_through_run_linkage_matches_a_full_resolve(
    base: Base, tmp_path: Path
) -> None:
    landing, incremental, full = tmp_path / "landing", tmp_path / "inc", tmp_path / "full"
    shutil.copytree(base.landing, landing)
    shutil.copytree(base.data, incremental)
    _deliver(base.generated, landing, SECOND)
    assert sdv_load(landing, incremental).exit_code == 0
    shutil.copytree(incremental, full)
    outcomes = {}
    for data, reuse in ((incremental, True), (full, False)):
        con = connect(data / "warehouse.duckdb")
        try:
            outcomes[reuse] = run_linkage(
                con,
                engine_for(f"sqlite:///{data / 'operational.db'}"),
                base.config,
                data / "models",
                reuse_regions=reuse,
            )
            persons = linked.read_table(con, "person_records")
            assert persons is not None
            run_id = outcomes[reuse].run["run_id"]
            events = con.sql(
                "select event, person_id, array_to_string(previous_person_ids, ',') as ids, "
                f"records from linked.person_events where run_id = '{run_id}'"
            ).pl()
        finally:
            con.close()
        outcomes[reuse] = (
            outcomes[reuse],
            persons.drop("run_id").sort("record_id"),
            events.sort(pl.all(), nulls_last=True),
            _review_rows(data),
        )
    run, persons, events, queue = outcomes[True]
    full_run, full_persons, full_events, full_queue = outcomes[False]
    assert persons.equals(full_persons)
    assert events.equals(full_events)
    assert queue.equals(full_queue)
    assert 0 < run.run["reclustered"]["records"] < full_run.run["reclustered"]["records"]


# --------------------------------------------------------------------------- hand-made regions


def _region_sets(frame: pl.DataFrame) -> set[frozenset[str]]:
    found = regions(frame, pl.DataFrame(schema=EMPTY_PAIRS), threshold=0.9)
    return {frozenset(g) for g in found.group_by("region").agg("unique_id")["unique_id"]}


EMPTY_PAIRS = {
    "unique_id_l": pl.String,
    "unique_id_r": pl.String,
    "match_probability": pl.Float64,
    "match_weight": pl.Float64,
}


def test_a_family_that_moved_is_one_region_with_its_new_home() -> None:
    # test_moves' family: the police hold Karen and Florrie at the old address, the GP at
    # the new one; move_links links them, so both addresses are one region.
    records = standardise(
        rows(
            KAREN, FLORENCE, _police("P1", "Karen", "48", "F"), _police("P2", "Florrie", "15", "F")
        ),
        load_linkage_config(),
    )
    assert _region_sets(records) == {frozenset(records["unique_id"])}
    # One person alone at the other address is never linked: two regions.
    alone = records.filter(pl.col("unique_id") != "police|persons|P2")
    assert len(_region_sets(alone)) == 2


def test_address_keys_join_a_building_without_a_flat_and_a_street_without_a_postcode() -> None:
    config = load_linkage_config()
    flat = rec("health|patients|A", forename="Ann", surname="Roe", postcode="TA1 1AA",
               address_line_1="Flat 1, 15 Meadow Court")  # fmt: skip
    other_flat = rec("health|patients|B", forename="Bea", surname="Poe", postcode="TA1 1AA",
                     address_line_1="Flat 2, 15 Meadow Court")  # fmt: skip
    building = rec("police|persons|C", forename="Cy", surname="Doe", postcode="TA1 1AA",
                   address_line_1="15 Meadow Court")  # fmt: skip
    no_postcode = rec("police|persons|D", forename="Di", surname="Moe",
                      address_line_1="Flat 2, 15 Meadow Court")  # fmt: skip
    # Two flats both given are two homes.
    assert len(_region_sets(standardise(rows(flat, other_flat), config))) == 2
    # The building without its flat may be either flat; the address without a postcode
    # may be the flat with one.
    for third in (building, no_postcode):
        records = standardise(rows(flat, other_flat, third), config)
        joined = {s for s in _region_sets(records) if len(s) > 1}
        assert joined, third


def test_a_warehouse_without_stored_regions_resolves_everything(base: Base, tmp_path: Path) -> None:
    # A warehouse linked before regions were stored: the next run clusters every record,
    # and stores regions for the run after.
    data = tmp_path / "data"
    shutil.copytree(base.data, data)
    con = connect(data / "warehouse.duckdb")
    try:
        con.execute("drop table linked.record_regions")
        engine = engine_for(f"sqlite:///{data / 'operational.db'}")
        first = run_linkage(con, engine, base.config, data / "models")
        assert first.run["reclustered"]["records"] == first.run["records"]
        again = run_linkage(con, engine, base.config, data / "models")
        assert again.run["reclustered"]["records"] == 0
    finally:
        con.close()


def _components_by_search(nodes: int, edges: list[tuple[int, int]]) -> list[int]:
    """Each node's component named by its smallest node, by plain graph search."""
    neighbours: dict[int, set[int]] = {n: set() for n in range(nodes)}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    name = [-1] * nodes
    for start in range(nodes):  # in order: the first node reached names its component
        if name[start] >= 0:
            continue
        name[start], stack = start, [start]
        while stack:
            for other in neighbours[stack.pop()]:
                if name[other] < 0:
                    name[other] = start
                    stack.append(other)
    return name


@pytest.mark.parametrize("seed", range(5))
def test_components_are_named_by_their_smallest_record(seed: int) -> None:
    # A region's name is stored and compared with the next night's: a component named any
    # other way would make every region look new, and every night cluster everything.
    rng = random.Random(seed)
    nodes = rng.randint(0, 300)
    edges = (
        [(rng.randrange(nodes), rng.randrange(nodes)) for _ in range(rng.randint(0, nodes))]
        if nodes
        else []
    )
    left = np.array([a for a, _ in edges], dtype=np.int64)
    right = np.array([b for _, b in edges], dtype=np.int64)
    found = regions_module._components(nodes, left, right)
    assert found.tolist() == _components_by_search(nodes, edges)
