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

from rapidfuzz.distance import JaroWinkler
from rapidfuzz.process import extract

# Jaro-Winkler at or above this counts as the same name: "Jonson" finds "Johnson".
SIMILARITY = 0.85


@dataclass(frozen=True)
class _Name:
    person_id: str
    forename: str | None
    keys: frozenset[str]


class NameIndex:
    """Every name a person is recorded under, grouped by normalised surname."""

    def __init__(self, rows: list[tuple[str, str | None, str | None, list[str] | None]]) -> None:
        by_surname: dict[str, list[_Name]] = defaultdict(list)
        for person_id, forename, surname, keys in rows:
            if surname:
                by_surname[surname].append(_Name(person_id, forename, frozenset(keys or ())))
        self._by_surname = dict(by_surname)
        self._surnames = list(self._by_surname)

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
        a nickname of the forename; surname alone scores surname + 1) over their names."""
        close = extract(
            surname,
            self._surnames,
            scorer=JaroWinkler.normalized_similarity,
            score_cutoff=SIMILARITY,
            limit=None,
        )
        keys = set(forename_keys)
        best: dict[str, float] = {}
        for name, surname_score, _ in close:
            for entry in self._by_surname[name]:
                if forename is None:
                    forename_score = 1.0
                else:
                    forename_score = JaroWinkler.normalized_similarity(
                        forename, entry.forename or ""
                    )
                    if keys & entry.keys:
                        forename_score = 1.0
                    if forename_score < SIMILARITY:
                        continue
                score = surname_score + forename_score
                if score > best.get(entry.person_id, -1.0):
                    best[entry.person_id] = score
        return best
