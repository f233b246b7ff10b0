"""Name search candidates: typos within the Jaro-Winkler threshold and nicknames are found,
and each person scores their best name, exactly as scoring every name one at a time."""

from __future__ import annotations

import random

import pytest
from rapidfuzz.distance import JaroWinkler

from warehouse.name_index import SIMILARITY, NameIndex

ROWS = [
    ("P1", "jonathan", "smith", ["jonathan", "jon", "john"]),
    ("P1", "jon", "smyth", ["jonathan", "jon", "john"]),  # P1's other recorded name
    ("P2", "john", "smith", ["john", "jon", "jack"]),
    ("P3", "jane", "smith", ["jane"]),
    ("P4", None, "smith", None),  # no forename recorded
    ("P5", "jonathon", "smith", ["jonathon"]),
    ("P6", "mary", "jones", ["mary", "molly"]),
    ("P7", "john", None, ["john"]),  # no surname: never a candidate
]


def _one_at_a_time(rows, surname, forename, keys):
    """What the index must equal: every name scored on its own."""
    best: dict[str, float] = {}
    for person_id, fore, sur, fore_keys in rows:
        if not sur:
            continue
        surname_score = JaroWinkler.normalized_similarity(surname, sur)
        if surname_score < SIMILARITY:
            continue
        if forename is None:
            forename_score = 1.0
        else:
            forename_score = JaroWinkler.normalized_similarity(forename, fore or "")
            if set(keys) & set(fore_keys or ()):
                forename_score = 1.0
            if forename_score < SIMILARITY:
                continue
        best[person_id] = max(best.get(person_id, -1.0), surname_score + forename_score)
    return best


def test_a_typo_a_nickname_and_a_second_name_are_found():
    index = NameIndex(ROWS)
    found = index.candidates("smith", "jon", ["jonathan", "jon", "john"])
    # P1 and P2 by a nickname; P5's "jonathon" is close to "jon"; Jane is not John; P4
    # has no forename to match.
    assert set(found) == {"P1", "P2", "P5"}
    assert found["P1"] == pytest.approx(2.0)
    assert found["P2"] == pytest.approx(2.0)
    assert found["P5"] == pytest.approx(1.0 + JaroWinkler.normalized_similarity("jon", "jonathon"))
    typo = index.candidates("smith", "jonathen", [])
    assert set(typo) == {"P1", "P5"}  # "john" is too far from "jonathen"
    # P1's best name: "jonathan smith", not "jon smyth"
    jonathan = JaroWinkler.normalized_similarity("jonathen", "jonathan")
    assert typo["P1"] == pytest.approx(1.0 + jonathan)


def test_surname_alone_finds_everyone_under_a_close_surname():
    found = NameIndex(ROWS).candidates("smyth", None, [])
    assert set(found) == {"P1", "P2", "P3", "P4", "P5"}
    assert found["P1"] == pytest.approx(2.0)  # "smyth" exactly, plus one for no forename
    assert "P6" not in found and "P7" not in found


def test_scores_equal_scoring_each_name_on_its_own():
    rng = random.Random(7)
    letters = "abcdehjlmnorsty"

    def word() -> str:
        return "".join(rng.choice(letters) for _ in range(rng.randint(3, 7)))

    surnames = [word() for _ in range(25)]
    forenames = [word() for _ in range(40)]
    rows = []
    for n in range(1500):
        fore = rng.choice([*forenames, None])
        keys = None if fore is None else [fore, rng.choice(forenames)]
        rows.append((f"P{n % 900}", fore, rng.choice([*surnames, None]), keys))
    index = NameIndex(rows)
    for _ in range(300):
        surname = rng.choice(surnames)
        if rng.random() < 0.3:  # a typo
            surname = surname[:-1] + rng.choice(letters)
        forename = rng.choice([*forenames, None])
        keys = [] if forename is None else [forename, rng.choice(forenames)]
        # exactly: the API rounds and ranks by these scores
        assert index.candidates(surname, forename, keys) == _one_at_a_time(
            rows, surname, forename, keys
        )
