"""Cluster scored pairs into persons, under rules no probability may override.

Plain connected components at a threshold lets one weak link chain two families together.
Instead, links are applied strongest first (a reviewer's "same person" before any score)
and two clusters are joined only if no hard rule (``matching.rules``) objects to any of
their members: the result is the same as connected components wherever the evidence is
consistent, and never contains a vetoed pair.

Clusters larger than ``max_cluster_size`` are kept but flagged for review: a cluster that
size is more likely a chain of mistakes than a person.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from matching.rules import Profile, Profiles, pair_vetoes, profile_seeds


@dataclass(frozen=True)
class Clustering:
    clusters: pl.DataFrame  # unique_id, cluster_id, cluster_size, oversized
    links: pl.DataFrame  # the pairs that joined clusters: unique_id_l, unique_id_r, probability
    vetoed: pl.DataFrame  # pairs above the threshold a rule refused: ..., reason


def _constraint_sets(constraints: pl.DataFrame | None, kind: str) -> pl.DataFrame:
    if constraints is None or constraints.is_empty():
        return pl.DataFrame(schema={"record_id_l": pl.String, "record_id_r": pl.String})
    return constraints.filter(pl.col("constraint") == kind).select("record_id_l", "record_id_r")


# Match weight (bits) by which a weak record's best link must beat a link to someone who
# cannot be the same person for the best to be taken: 2**5, 32 to 1 on the evidence.
AMBIGUITY_MARGIN = 5.0


def _ambiguous(records: pl.DataFrame, edges: pl.DataFrame, profiles: Profiles) -> set[str]:
    """Records without identity of their own (no exact date of birth, NHS number or UPN)
    whose strong links reach two people who cannot be one: a child at an incident known
    as "Adaeze, about 4" with two sisters of that name at the address. Linking to either
    would be a guess, so neither is made and the pairs go to review instead, unless one
    link is ``AMBIGUITY_MARGIN`` bits stronger than the other (then it is no guess).
    Held-back records are looked at again at the end of ``cluster``.
    """
    weak = records.filter(
        ~pl.col("dob_exact") & pl.col("nhs_number").is_null() & (pl.col("upn_keys").list.len() == 0)
    ).select("unique_id")
    ends = pl.concat(
        [
            edges.select(
                pl.col("unique_id_l").alias("record"),
                pl.col("unique_id_r").alias("other"),
                "match_weight",
            ),
            edges.select(
                pl.col("unique_id_r").alias("record"),
                pl.col("unique_id_l").alias("other"),
                "match_weight",
            ),
        ]
    ).join(weak, left_on="record", right_on="unique_id")
    ends = ends.filter(pl.len().over("record") >= 2)
    if ends.is_empty():
        return set()
    found: set[str] = set()
    for record, others, weights in ends.group_by("record").agg("other", "match_weight").iter_rows():
        candidates = [(profiles[o], w) for o, w in zip(others, weights, strict=True)]
        # Two candidates who cannot be one person are rivals unless one is far the better
        # fit; then the better is linked first and clustering refuses the other.
        if any(
            abs(wa - wb) < AMBIGUITY_MARGIN and a.conflict(b) is not None
            for i, (a, wa) in enumerate(candidates)
            for b, wb in candidates[i + 1 :]
        ):
            found.add(record)
    return found


def cluster(
    records: pl.DataFrame,
    pairs: pl.DataFrame,
    *,
    threshold: float,
    max_cluster_size: int,
    constraints: pl.DataFrame | None = None,
    seeds: Mapping[str, Profile] | None = None,
) -> Clustering:
    """Constrained clustering of ``records`` (standardised) using scored ``pairs``.

    ``constraints`` (``record_id_l, record_id_r, constraint``) are clerical decisions:
    ``must_link`` pairs are joined first (still subject to identifier rules), and
    ``cannot_link`` pairs are never in one cluster. ``seeds`` are the records'
    ``rules.profile_seeds`` when the caller clusters the same records more than once.
    """
    ids = set(records["unique_id"].to_list())
    must = _constraint_sets(constraints, "must_link").filter(
        pl.col("record_id_l").is_in(ids) & pl.col("record_id_r").is_in(ids)
    )
    cannot = _constraint_sets(constraints, "cannot_link")
    forbidden: dict[str, set[str]] = {}
    for left, right in cannot.iter_rows():
        forbidden.setdefault(left, set()).add(right)
        forbidden.setdefault(right, set()).add(left)

    asserted = ["asserted"] if "asserted" in pairs.columns else []
    strong = pairs.filter(pl.col("match_probability") >= threshold).select(
        "unique_id_l", "unique_id_r", "match_probability", "match_weight", *asserted
    )
    strong = pair_vetoes(strong, records).drop(asserted)
    early_vetoes = strong.filter("veto").with_columns(
        pl.lit("identifiers, names or birth years").alias("reason")
    )
    strong = strong.filter(~pl.col("veto")).drop("veto")
    seeds = profile_seeds(records) if seeds is None else seeds
    # The records' profiles before any joins, for judging ambiguity; clustering's own
    # profiles grow as it joins.
    ambiguous = _ambiguous(records, strong, Profiles(seeds, forbidden))
    strong = strong.filter(
        ~pl.col("unique_id_l").is_in(ambiguous) & ~pl.col("unique_id_r").is_in(ambiguous)
    )
    reviewed = must.rename(
        {"record_id_l": "unique_id_l", "record_id_r": "unique_id_r"}
    ).with_columns(pl.lit(1.0).alias("match_probability"), pl.lit(1e9).alias("match_weight"))
    # Ties (every contact link has one weight) are broken by record id, so one night's
    # input always gives one result, whatever order the scores arrived in.
    edges = pl.concat([reviewed, strong], how="vertical_relaxed").sort(
        ["match_weight", "unique_id_l", "unique_id_r"], descending=[True, False, False]
    )

    profiles = Profiles(seeds, forbidden)
    parent = {uid: uid for uid in seeds}
    ambiguous_pairs = pairs.filter(
        (pl.col("match_probability") >= threshold)
        & (pl.col("unique_id_l").is_in(ambiguous) | pl.col("unique_id_r").is_in(ambiguous))
    ).select("unique_id_l", "unique_id_r", "match_probability")

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    joined: list[tuple[str, str, float]] = []
    refused: list[tuple[str, str, float, str]] = []
    for left, right, probability, _weight in edges.iter_rows():
        a, b = find(left), find(right)
        if a == b:
            continue
        reason = profiles[a].conflict(profiles[b])
        if reason is not None:
            refused.append((left, right, probability, reason))
            continue
        if len(profiles[a].members) < len(profiles[b].members):
            a, b = b, a
        profiles.join(a, b)
        parent[b] = a
        joined.append((left, right, probability))

    # A record held back as ambiguous is looked at again once everything else is joined:
    # a candidate the rules now forbid it to join (the mother of the same name is already
    # the pupil's other contact) is no rival, and if one person is left, or one is now far
    # the best fit (its records are one person with the record's certain twin row), that
    # is who it is.
    held = pairs.filter(
        (pl.col("match_probability") >= threshold)
        & (pl.col("unique_id_l").is_in(ambiguous) | pl.col("unique_id_r").is_in(ambiguous))
    )
    held = pair_vetoes(held, records).filter(~pl.col("veto"))
    options: dict[str, list[tuple[float, str, str, str, float]]] = {}
    for left, right, probability, weight in held.select(
        "unique_id_l", "unique_id_r", "match_probability", "match_weight"
    ).iter_rows():
        for record, other in ((left, right), (right, left)):
            if record in ambiguous:
                options.setdefault(record, []).append((weight, other, left, right, probability))
    progress = True
    while progress:
        progress = False
        for record in sorted(options):
            home = find(record)
            rivals: dict[str, tuple[float, str, str, str, float]] = {}
            for option in options[record]:
                root = find(option[1])
                if root != home and profiles[home].conflict(profiles[root]) is None:
                    rivals[root] = max(rivals.get(root, option), option)
            # A rival with no identity of its own (another police child "about 10" not
            # yet linked to anyone) is not a second person; persons with one come first.
            known = {root: best for root, best in rivals.items() if profiles[root].identified}
            ranked = sorted((known or rivals).items(), key=lambda item: item[1], reverse=True)
            if not ranked or (
                len(ranked) > 1 and ranked[0][1][0] - ranked[1][1][0] < AMBIGUITY_MARGIN
            ):
                continue
            root, (_, _, left, right, probability) = ranked[0]
            a, b = home, root
            if len(profiles[a].members) < len(profiles[b].members):
                a, b = b, a
            profiles.join(a, b)
            parent[b] = a
            joined.append((left, right, probability))
            del options[record]
            progress = True

    roots = [find(uid) for uid in records["unique_id"]]
    clusters = pl.DataFrame({"unique_id": records["unique_id"], "cluster_id": roots})
    clusters = clusters.with_columns(pl.len().over("cluster_id").alias("cluster_size"))
    clusters = clusters.with_columns((pl.col("cluster_size") > max_cluster_size).alias("oversized"))
    schema = {"unique_id_l": pl.String, "unique_id_r": pl.String, "match_probability": pl.Float64}
    vetoed = pl.concat(
        [
            early_vetoes.select(*schema, "reason"),
            ambiguous_pairs.with_columns(pl.lit("ambiguous: fits two people").alias("reason")),
            pl.DataFrame(refused, schema={**schema, "reason": pl.String}, orient="row"),
        ],
        how="vertical_relaxed",
    )
    return Clustering(
        clusters=clusters,
        links=pl.DataFrame(joined, schema=schema, orient="row"),
        vetoed=vetoed,
    )
