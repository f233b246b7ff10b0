"""Synthetic names: frequency-weighted sampling and the ways agencies garble them.

Name frequencies matter to record linkage (a match on ``Smith`` is weak evidence, on
``Penhaligon`` strong), and first names follow fashion (a ``Margaret`` is rarely a child,
an ``Isla`` rarely a grandmother), so the lists in ``synth/data`` carry a weight per birth
era. The distortions here are the ones the spec promises: nicknames, one-character
misspellings, hyphenated and apostrophised surnames recorded differently.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data"

GROUPS = ("general", "south_asian", "polish", "african")
GROUP_WEIGHTS = (0.86, 0.07, 0.04, 0.03)

#: DfE ethnicity codes by name group; deliberately coarse, only there to be plausible.
_ETHNICITY = {
    "general": (
        ("WBRI", 88),
        ("WIRI", 2),
        ("WOTH", 3),
        ("MWBC", 2),
        ("BCRB", 2),
        ("MOTH", 1),
        ("CHNE", 1),
        ("OOTH", 1),
    ),
    "south_asian": (("APKN", 50), ("AIND", 35), ("ABAN", 15)),
    "polish": (("WOTH", 100),),
    "african": (("BAFR", 90), ("BOTH", 10)),
}

_VOWELS = "aeiou"
_NEIGHBOURS = {
    "a": "es",
    "b": "vn",
    "c": "kxs",
    "d": "sf",
    "e": "ai",
    "f": "dg",
    "g": "fh",
    "h": "gj",
    "i": "ey",
    "j": "hk",
    "k": "cj",
    "l": "k",
    "m": "n",
    "n": "m",
    "o": "ia",
    "p": "o",
    "r": "te",
    "s": "az",
    "t": "ry",
    "u": "yi",
    "v": "b",
    "w": "e",
    "y": "i",
    "z": "s",
}


class Weighted:
    """Draws from a fixed list by weight with one bisect (fast enough for 10^6 draws)."""

    def __init__(self, items: list[str], weights: list[float]) -> None:
        self.items = items
        self.cum = list(itertools.accumulate(weights))
        self.total = self.cum[-1]

    def __call__(self, rng: random.Random) -> str:
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.total)]


@dataclass(frozen=True)
class _Forename:
    name: str
    sex: str
    group: str
    weights: tuple[float, float, float]


def _era(birth_year: int) -> int:
    return 0 if birth_year < 1970 else 1 if birth_year < 2000 else 2


class NameBank:
    """Name lists loaded once from ``synth/data`` with per-(sex, group, era) samplers."""

    def __init__(self) -> None:
        with (DATA / "forenames.csv").open(newline="", encoding="utf-8") as fh:
            rows = [
                _Forename(
                    r["name"],
                    r["sex"],
                    r["group"],
                    (
                        float(r["born_before_1970"]),
                        float(r["born_1970_1999"]),
                        float(r["born_2000_on"]),
                    ),
                )
                for r in csv.DictReader(fh)
            ]
        self._forenames: dict[tuple[str, str, int], Weighted] = {}
        for sex in "MF":
            for group in GROUPS:
                pool = [r for r in rows if r.sex == sex and r.group == group]
                for era in range(3):
                    self._forenames[(sex, group, era)] = Weighted(
                        [r.name for r in pool], [r.weights[era] for r in pool]
                    )
        with (DATA / "surnames.csv").open(newline="", encoding="utf-8") as fh:
            srows = list(csv.DictReader(fh))
        self._surnames = {
            g: Weighted(
                [r["name"] for r in srows if r["group"] == g],
                [float(r["frequency"]) for r in srows if r["group"] == g],
            )
            for g in GROUPS
        }
        self.nick_map: dict[str, list[str]] = {}
        with (DATA / "nicknames.csv").open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                self.nick_map.setdefault(r["name"], []).extend(r["nicknames"].split("|"))
        self._group = Weighted(list(GROUPS), list(GROUP_WEIGHTS))
        self._ethnicity = {
            g: Weighted([c for c, _ in codes], [w for _, w in codes])
            for g, codes in _ETHNICITY.items()
        }
        self.streets = _read_column(DATA / "streets.csv")
        self.localities = _read_column(DATA / "localities.csv")
        # Staff names (social workers, practitioners) come from the same lists.
        self._staff_forenames = Weighted(
            [r.name for r in rows if r.group == "general"],
            [r.weights[1] for r in rows if r.group == "general"],
        )

    def group(self, rng: random.Random) -> str:
        return self._group(rng)

    def forename(self, rng: random.Random, sex: str, group: str, birth_year: int) -> str:
        # A minority of every group carries a name from the general list.
        if group != "general" and rng.random() < 0.15:
            group = "general"
        return self._forenames[(sex, group, _era(birth_year))](rng)

    def surname(self, rng: random.Random, group: str) -> str:
        return self._surnames[group](rng)

    def ethnicity(self, rng: random.Random, group: str) -> str:
        return self._ethnicity[group](rng)

    def staff_name(self, rng: random.Random) -> tuple[str, str]:
        return self._staff_forenames(rng), self._surnames["general"](rng)

    def nickname(self, rng: random.Random, name: str) -> str | None:
        """A familiar form of ``name`` (``Alfred`` -> ``Alfie``), or None when it has none."""
        options = self.nick_map.get(name)
        return rng.choice(options) if options else None


def _read_column(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [r["name"] for r in csv.DictReader(fh)]


def misspell(rng: random.Random, name: str) -> str:
    """One plausible keying error (substitute, delete, insert or transpose one character).

    The first letter is kept, as it usually is in real typos, so the result stays a hard but
    fair case for fuzzy matching (Jaro-Winkler and Levenshtein both see one edit).
    """
    if len(name) < 3:
        return name + name[-1].lower()
    for _ in range(8):
        i = rng.randrange(1, len(name))
        ch = name[i].lower()
        op = rng.random()
        if op < 0.4 and ch in _NEIGHBOURS:
            new = rng.choice(_VOWELS if ch in _VOWELS else _NEIGHBOURS[ch])
            out = name[:i] + new + name[i + 1 :]
        elif op < 0.6 and len(name) > 3:
            out = name[:i] + name[i + 1 :]
        elif op < 0.8:
            out = name[:i] + ch + name[i:]
        elif i < len(name) - 1:
            out = name[:i] + name[i + 1] + name[i] + name[i + 2 :]
        else:
            continue
        if out != name and out.replace("-", "").replace("'", "").replace(" ", "").isalpha():
            return out
    return name[:-1] if len(name) > 3 else name + "e"


def surname_variant(rng: random.Random, surname: str) -> str:
    """How another system records the same surname: punctuation and barrels differ.

    ``O'Brien`` -> ``OBrien`` / ``O Brien``; ``Smith-Jones`` -> ``Smith Jones`` / ``Smith`` /
    ``Jones``; ``McDonald`` -> ``Mcdonald``. Returns the surname unchanged when none applies.
    """
    if "'" in surname:
        return surname.replace("'", rng.choice(["", " "]))
    if "-" in surname:
        first, second = surname.split("-", 1)
        return rng.choice([f"{first} {second}", first, second, surname.upper()])
    if " " in surname:
        first, second = surname.split(" ", 1)
        return rng.choice([f"{first}-{second}", second, first + second])
    if surname.startswith(("Mc", "Mac")) and len(surname) > 3:
        cut = 2 if surname.startswith("Mc") else 3
        return rng.choice(
            [surname[:cut] + surname[cut:].lower(), surname[:cut] + " " + surname[cut:]]
        )
    return surname
