"""Name search candidates from one snapshot's ``person_names``, held in memory.

Scoring every name row with Jaro-Winkler in SQL on each search costs a scan of the whole
index (about 100,000 rows for a 20,000-household county) per request. People share
surnames, so the distinct surnames are far fewer (under 2,000 there): this index scores
those with rapidfuzz (the same Jaro-Winkler as DuckDB's ``jaro_winkler_similarity``), then
scores forenames only for people holding a close surname. The access layer still applies
scope, restriction, date of birth and column grants in SQL on the candidates it returns,
so this module decides nothing about who may see whom.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import JaroWinkler
from rapidfuzz.process import cdist, extract

# Jaro-Winkler at or above this counts as the same name: "Jonson" finds "Johnson".
SIMILARITY = 0.85


@dataclass(frozen=True)
class _Group:
    """The names under one surname, as arrays rapidfuzz scores in one call."""

    person_ids: list[str]
    forenames: list[str]  # "" where none was recorded
    by_key: dict[str, list[int]]  # nickname key -> positions holding it


class NameIndex:
    """Every name a person is recorded under, grouped by normalised surname."""

    def __init__(self, rows: list[tuple[str, str | None, str | None, list[str] | None]]) -> None:
        groups: dict[str, _Group] = {}
        for person_id, forename, surname, keys in rows:
            if not surname:
                continue
            group = groups.get(surname)
            if group is None:
                group = groups[surname] = _Group([], [], defaultdict(list))
            position = len(group.person_ids)
            group.person_ids.append(person_id)
            group.forenames.append(forename or "")
            for key in set(keys or ()):
                group.by_key[key].append(position)
        self._groups = groups
        self._surnames = list(groups)

    @classmethod
    def load(cls, con: Any) -> NameIndex:
        """From ``person_names`` through ``con`` (a DuckDB or SQLite cursor on a snapshot)."""
        rows = con.execute(
            "select person_id, forename_norm, surname_norm, forename_keys from person_names"
        ).fetchall()
        return cls(rows)

    def candidates(
        self, surname: str, forename: str | None, forename_keys: list[str]
    ) -> dict[str, float]:
        """Person id -> best score (surname similarity plus forename similarity, or 1 for
        a nickname of the forename; surname alone scores surname + 1) over their names.

        A common surname holds thousands of names, so each group's forenames are scored
        in one rapidfuzz call (in float64, the same values as one at a time) and only the
        names that pass are visited in Python."""
        close = extract(
            surname,
            self._surnames,
            scorer=JaroWinkler.normalized_similarity,
            score_cutoff=SIMILARITY,
            limit=None,
        )
        best: dict[str, float] = {}
        for name, surname_score, _ in close:
            group = self._groups[name]
            if forename is None:
                scores = np.ones(len(group.person_ids))
            else:
                scores = cdist(
                    [forename],
                    group.forenames,
                    scorer=JaroWinkler.normalized_similarity,
                    dtype=np.float64,
                )[0]
                for key in forename_keys:
                    scores[group.by_key.get(key, [])] = 1.0
            for position in np.flatnonzero(scores >= SIMILARITY).tolist():
                score = surname_score + float(scores[position])
                person_id = group.person_ids[position]
                if score > best.get(person_id, -1.0):
                    best[person_id] = score
        return best
