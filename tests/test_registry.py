"""Person id registry: exact outcomes for each rule, invariants on random clusterings, scale."""

from __future__ import annotations

import random
import re
import time

import polars as pl
import pytest

import matching.registry as registry_module
from matching.registry import (
    Assignment,
    assign_person_ids,
    new_person_id,
    registry_changes,
)

EMPTY = pl.DataFrame({"record_id": [], "person_id": []})
ID_FORMAT = re.compile(r"^P[0-9A-F]{12}$")


def clustering(groups: list[list[str]], labels: list[object] | None = None) -> pl.DataFrame:
    """A clusters frame from lists of record ids, with the given (or 0..n) cluster labels."""
    labels = labels if labels is not None else list(range(len(groups)))
    return pl.DataFrame(
        {
            "record_id": [r for group in groups for r in group],
            "cluster_id": [
                label for label, group in zip(labels, groups, strict=True) for _ in group
            ],
        }
    )


def ids_of(assignment: Assignment) -> dict[str, str]:
    return dict(assignment.registry.iter_rows())


def events_as_tuples(assignment: Assignment) -> list[tuple[str, str | None, list[str], int]]:
    return [
        (row["event"], row["person_id"], row["previous_person_ids"], row["records"])
        for row in assignment.events.iter_rows(named=True)
    ]


def first_run(groups: list[list[str]]) -> Assignment:
    return assign_person_ids(EMPTY, clustering(groups), "run-1")


def test_first_run_ids_are_deterministic_and_well_formed():
    groups = [["health|patients|H000002", "edu|pupils|E000009"], ["health|patients|H000001"]]
    one = first_run(groups)
    two = assign_person_ids(EMPTY, clustering(groups[::-1], ["b", "a"]), "run-1")
    assert one.registry.equals(two.registry)
    assert one.events.equals(two.events)
    ids = ids_of(one)
    assert all(ID_FORMAT.match(pid) for pid in ids.values())
    # the id is the hash of the cluster's smallest record_id
    assert ids["health|patients|H000002"] == new_person_id("edu|pupils|E000009")
    assert ids["health|patients|H000001"] == new_person_id("health|patients|H000001")
    assert one.registry.columns == ["record_id", "person_id"]
    assert one.event_counts() == {"new": 2, "merge": 0, "split": 0, "retired": 0}
    assert one.issued_ids == set(ids.values())
    assert {row[0] for row in events_as_tuples(one)} == {"new"}
    assert sorted(one.events["records"].to_list()) == [1, 2]


def test_unchanged_clustering_with_new_cluster_ids_keeps_every_id():
    groups = [["a1", "a2"], ["b1"], ["c1", "c2", "c3"]]
    before = first_run(groups)
    after = assign_person_ids(
        before.registry, clustering(groups, ["zz", "yy", "xx"]), "run-2", before.issued_ids
    )
    assert after.registry.equals(before.registry)
    assert after.events.height == 0
    assert registry_changes(before.registry, after.registry).height == 0


def test_new_record_joining_a_person_keeps_the_id_without_event():
    before = first_run([["a1", "a2"], ["b1"]])
    after = assign_person_ids(before.registry, clustering([["a0", "a1", "a2"], ["b1"]]), "run-2")
    ids = ids_of(after)
    assert ids["a0"] == ids["a1"] == ids_of(before)["a1"]
    assert after.events.height == 0


def test_merge_keeps_the_bigger_persons_id_and_lists_both():
    before = first_run([["a1", "a2", "a3"], ["b1", "b2"]])
    a, b = ids_of(before)["a1"], ids_of(before)["b1"]
    after = assign_person_ids(before.registry, clustering([["a1", "a2", "a3", "b1", "b2"]]), "r2")
    assert set(ids_of(after).values()) == {a}
    assert events_as_tuples(after) == [("merge", a, sorted([a, b]), 5)]
    changes = registry_changes(before.registry, after.registry)
    assert changes.to_dicts() == [
        {"record_id": r, "person_id_before": b, "person_id_after": a} for r in ("b1", "b2")
    ]


def test_merge_tie_keeps_the_smallest_id():
    before = first_run([["a1", "a2"], ["b1", "b2"]])
    a, b = ids_of(before)["a1"], ids_of(before)["b1"]
    after = assign_person_ids(before.registry, clustering([["a1", "a2", "b1", "b2"]]), "r2")
    assert set(ids_of(after).values()) == {min(a, b)}
    assert events_as_tuples(after) == [("merge", min(a, b), sorted([a, b]), 4)]


def test_split_keeps_the_id_on_the_bigger_part():
    before = first_run([["a1", "a2", "a3"]])
    a = ids_of(before)["a1"]
    after = assign_person_ids(before.registry, clustering([["a1"], ["a2", "a3"]]), "r2")
    ids = ids_of(after)
    assert ids["a2"] == ids["a3"] == a
    # hash("a1") is A's own id (a1 anchored A last night), so the split-off part is rehashed
    assert a == new_person_id("a1")
    assert ids["a1"] == new_person_id("a1", 1)
    assert events_as_tuples(after) == [("split", ids["a1"], [a], 1)]


def test_split_tie_keeps_the_id_on_the_cluster_with_the_smallest_record():
    before = first_run([["a1", "a2", "a3", "a4"]])
    a = ids_of(before)["a1"]
    after = assign_person_ids(before.registry, clustering([["a2", "a4"], ["a1", "a3"]]), "r2")
    ids = ids_of(after)
    assert ids["a1"] == ids["a3"] == a
    assert ids["a2"] == ids["a4"] != a
    assert events_as_tuples(after) == [("split", ids["a2"], [a], 2)]


def test_simultaneous_merge_and_split_gives_unique_ids_and_events():
    # A = {a1, a2, a3}, B = {b1, b2}; tonight {A1+B1} = {a1, a2, b1}, {A2} = {a3}, {B2} = {b2}
    before = first_run([["a1", "a2", "a3"], ["b1", "b2"]])
    a, b = ids_of(before)["a1"], ids_of(before)["b1"]
    tonight = clustering([["a1", "a2", "b1"], ["a3"], ["b2"]], ["m", "s1", "s2"])
    after = assign_person_ids(before.registry, tonight, "r2")
    ids = ids_of(after)
    assert ids["a1"] == ids["a2"] == ids["b1"] == a
    # B's majority went into A, so B is absorbed; its remnant and A's remnant get new ids
    assert ids["a3"] == new_person_id("a3")
    assert ids["b2"] == new_person_id("b2")
    assert len({ids["a1"], ids["a3"], ids["b2"]}) == 3
    assert b not in ids.values()
    assert sorted(events_as_tuples(after)) == sorted(
        [
            ("merge", a, sorted([a, b]), 3),
            ("split", ids["a3"], [a], 1),
            ("split", ids["b2"], [b], 1),
        ]
    )


def test_minority_fragment_never_inherits_an_absorbed_id():
    # B = {b1, b2, b3}: two records join A, one is left alone; B must not live on in b3
    before = first_run([["a1", "a2", "a3"], ["b1", "b2", "b3"]])
    a, b = ids_of(before)["a1"], ids_of(before)["b1"]
    tonight = clustering([["a1", "a2", "a3", "b1", "b2"], ["b3"]])
    after = assign_person_ids(before.registry, tonight, "r2")
    ids = ids_of(after)
    assert ids["b1"] == a
    assert ids["b3"] not in {a, b}
    assert sorted(events_as_tuples(after)) == [
        ("merge", a, sorted([a, b]), 5),
        ("split", ids["b3"], [b], 1),
    ]


def test_removed_records_retire_their_person():
    before = first_run([["a1", "a2"], ["b1"], ["c1", "c2"]])
    c = ids_of(before)["c1"]
    after = assign_person_ids(before.registry, clustering([["a1", "a2"], ["b1"], ["d1"]]), "r2")
    assert after.registry["record_id"].to_list() == ["a1", "a2", "b1", "d1"]
    assert events_as_tuples(after) == [
        ("new", new_person_id("d1"), [], 1),
        ("retired", None, [c], 0),
    ]
    assert after.events["run_id"].unique().to_list() == ["r2"]
    assert after.event_counts() == {"new": 1, "merge": 0, "split": 0, "retired": 1}


def test_partly_removed_person_keeps_its_id_silently():
    before = first_run([["a1", "a2", "a3"]])
    after = assign_person_ids(before.registry, clustering([["a2", "a3"]]), "r2")
    assert set(ids_of(after).values()) == {ids_of(before)["a1"]}
    assert after.events.height == 0


def test_new_id_never_reuses_a_used_or_previous_id():
    used = {new_person_id("x1"), new_person_id("x1", 1)}
    after = assign_person_ids(EMPTY, clustering([["x1"], ["y1"]]), "r1", used_ids=used)
    ids = ids_of(after)
    assert ids["x1"] == new_person_id("x1", 2)
    assert ids["y1"] == new_person_id("y1")
    assert not set(ids.values()) & used
    # an id still held in the previous registry (even by a retiring person) is also taken
    previous = pl.DataFrame({"record_id": ["gone"], "person_id": [new_person_id("z1")]})
    after = assign_person_ids(previous, clustering([["z1"]]), "r2")
    assert ids_of(after)["z1"] == new_person_id("z1", 1)


def test_clashing_new_ids_tonight_are_rehashed(monkeypatch: pytest.MonkeyPatch):
    real = registry_module.new_person_id

    def colliding(anchor: str, attempt: int = 0) -> str:
        return "PAAAAAAAAAAAA" if attempt == 0 else real(anchor, attempt)

    monkeypatch.setattr(registry_module, "new_person_id", colliding)
    after = assign_person_ids(EMPTY, clustering([["b"], ["a"], ["c"]]), "r1")
    ids = ids_of(after)
    assert ids == {"a": "PAAAAAAAAAAAA", "b": real("b", 1), "c": real("c", 1)}


def test_accepts_any_cluster_id_type_and_validates_input():
    groups = [["a1", "a2"], ["b1"]]
    by_int = first_run(groups)
    by_str = assign_person_ids(EMPTY, clustering(groups, ["x", "y"]), "run-1")
    assert by_int.registry.equals(by_str.registry)
    with pytest.raises(ValueError, match="more than one row"):
        assign_person_ids(EMPTY, clustering([["a1"], ["a1"]]), "r1")
    with pytest.raises(ValueError, match="lacks columns"):
        assign_person_ids(EMPTY, pl.DataFrame({"record_id": ["a"]}), "r1")
    with pytest.raises(ValueError, match="more than once"):
        assign_person_ids(
            pl.DataFrame({"record_id": ["a", "a"], "person_id": ["P1", "P2"]}),
            clustering([["a"]]),
            "r1",
        )


def _random_night(rng: random.Random, previous: dict[str, str]) -> list[list[str]]:
    """Tonight's groups: most previous persons' records, some dropped, some moved, some new."""
    by_person: dict[str, list[str]] = {}
    for record, person in sorted(previous.items()):
        by_person.setdefault(person, []).append(record)
    records = [r for r in sorted(previous) if rng.random() > 0.15]
    records += [f"n{rng.randrange(10_000):04d}" for _ in range(rng.randrange(4))]
    records = sorted(set(records))
    n_clusters = max(1, len(by_person) + rng.randrange(-2, 3))
    home = {p: rng.randrange(n_clusters) for p in by_person}
    groups: list[list[str]] = [[] for _ in range(n_clusters)]
    for record in records:
        stay = record in previous and rng.random() < 0.7
        groups[home[previous[record]] if stay else rng.randrange(n_clusters)].append(record)
    return [g for g in groups if g]


def _check_invariants(previous: dict[str, str], groups: list[list[str]], result: Assignment, used):
    ids = ids_of(result)
    assert sorted(ids) == sorted(r for g in groups for r in g)
    cluster_ids = [{ids[r] for r in g} for g in groups]
    assert all(len(s) == 1 for s in cluster_ids), "a cluster got more than one id"
    person_of_cluster = [s.pop() for s in cluster_ids]
    assert len(set(person_of_cluster)) == len(groups), "an id went to two clusters"

    old_ids = set(previous.values())
    kept = set(person_of_cluster) & old_ids
    minted = set(person_of_cluster) - old_ids
    assert not minted & set(used), "a used id was reissued"
    assert minted == result.issued_ids
    events = result.events
    assert set(events.filter(pl.col("event") == "merge")["person_id"]) <= kept
    # every previous id that disappeared is accounted for by some event
    mentioned = {p for ps in events["previous_person_ids"].to_list() for p in ps}
    assert old_ids - kept <= mentioned
    # rule 1: sole contributor whose surviving records all landed here keeps its id
    surviving: dict[str, set[int]] = {}
    for i, g in enumerate(groups):
        for r in g:
            if r in previous:
                surviving.setdefault(previous[r], set()).add(i)
    for i, g in enumerate(groups):
        contributors = {previous[r] for r in g if r in previous}
        if len(contributors) == 1:
            (p,) = contributors
            if surviving[p] == {i}:
                assert person_of_cluster[i] == p
    # events name each resulting person at most once and sizes match
    live = events.filter(pl.col("person_id").is_not_null())
    assert live["person_id"].is_unique().all()
    size = {pid: sum(1 for v in ids.values() if v == pid) for pid in set(ids.values())}
    for pid, n in live.select("person_id", "records").iter_rows():
        assert size[pid] == n


@pytest.mark.parametrize("seed", range(300))
def test_random_clusterings_keep_ids_unique(seed: int):
    rng = random.Random(seed)
    n = rng.randrange(1, 25)
    records = [f"r{i:03d}" for i in range(n)]
    first_groups: list[list[str]] = [[] for _ in range(rng.randrange(1, n + 1))]
    for record in records:
        first_groups[rng.randrange(len(first_groups))].append(record)
    first_groups = [g for g in first_groups if g]
    first = first_run(first_groups)
    previous = ids_of(first)
    used = first.issued_ids | {new_person_id(f"n{rng.randrange(10_000):04d}") for _ in range(3)}
    for night in range(3):
        groups = _random_night(rng, previous)
        result = assign_person_ids(first.registry, clustering(groups), f"r{night}", used)
        _check_invariants(previous, groups, result, used)
        # reproducible whatever the row order and cluster labels
        shuffled = clustering(groups, [f"c{rng.random()}" for _ in groups]).sample(
            fraction=1.0, shuffle=True, seed=seed
        )
        again = assign_person_ids(first.registry.reverse(), shuffled, f"r{night}", used)
        assert again.registry.equals(result.registry)
        assert again.events.equals(result.events)
        first, previous = result, ids_of(result)
        used = used | result.issued_ids


def test_performance_200k_records_with_one_percent_changes():
    rng = random.Random(7)
    n = 200_000
    records = [f"health|patients|H{i:07d}" for i in range(n)]
    cluster_of = [i // 2 for i in range(n)]  # persons of two records each
    start = time.perf_counter()
    first = assign_person_ids(
        EMPTY, pl.DataFrame({"record_id": records, "cluster_id": cluster_of}), "night-1"
    )
    print(f"\n200k records, first run: {time.perf_counter() - start:.2f}s")
    changed = rng.sample(range(n), n // 100)
    third = len(changed) // 3
    tonight = dict(enumerate(cluster_of))
    for i in changed[:third]:
        tonight[i] = rng.randrange(n // 2)  # moved to another person (merges and splits)
    for i in changed[third : 2 * third]:
        tonight[i] = n + i  # split off alone
    for i in changed[2 * third :]:
        del tonight[i]  # no longer delivered
    arrivals = {f"health|patients|N{i:07d}": -1 - i for i in range(third)}  # new persons
    clusters = pl.DataFrame(
        {
            "record_id": [records[i] for i in tonight] + list(arrivals),
            "cluster_id": [c * 7 + 3 for c in tonight.values()] + list(arrivals.values()),
        }
    ).sample(fraction=1.0, shuffle=True, seed=1)  # new labels, new row order
    start = time.perf_counter()
    result = assign_person_ids(first.registry, clusters, "night-2", first.issued_ids)
    changes = registry_changes(first.registry, result.registry)
    elapsed = time.perf_counter() - start
    print(f"200k records, 1% re-clustered: {elapsed:.2f}s, {result.event_counts()}")
    assert result.registry.height == clusters.height
    assert result.event_counts()["new"] == third
    per_cluster = result.registry.join(clusters, on="record_id").group_by("cluster_id")
    assert per_cluster.agg(pl.col("person_id").n_unique())["person_id"].max() == 1
    assert result.registry.group_by("person_id").agg(pl.col("record_id").first()).height == (
        clusters["cluster_id"].n_unique()
    )
    assert 0 < changes.height < n // 20
