"""A fictional county: towns, streets, unique addresses with postcodes and UPRNs, schools,
GP practices and telephone numbers.

Postcodes use the area code ``XW``, which no real UK postcode uses, so generated addresses
are of valid UK shape (``XW12 3AB``) but can never be a real household's. Telephone numbers
come from Ofcom's ranges reserved for drama, for the same reason. Every household gets its
own address, because shared addresses between unrelated households would make address
evidence meaningless in a way real data is not.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass, field

from synth.names import DATA, Weighted

AREA = "XW"
#: Inward-code letters the Royal Mail uses (no C, I, K, M, O or V).
_UNIT_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
_SUFFIXES = (
    "Road",
    "Street",
    "Lane",
    "Close",
    "Avenue",
    "Drive",
    "Way",
    "Crescent",
    "Gardens",
    "Place",
    "Terrace",
    "Grove",
    "Court",
    "View",
    "Rise",
    "Walk",
    "Mews",
)
_HOUSE_NAMES = (
    "Rose Cottage",
    "The Old Forge",
    "Orchard House",
    "The Willows",
    "Ivy Cottage",
    "Hillcrest",
    "The Coach House",
    "Meadow View",
    "Old School House",
    "The Laurels",
    "Brook Cottage",
    "Westering",
)
_SAINTS = ("Mary", "John", "Andrew", "Peter", "Michael", "Joseph", "George", "Bede", "Anne")


@dataclass(frozen=True, slots=True)
class Address:
    flat: str  # "" or "Flat 2"
    number: str  # "14" or a house name
    street: str
    locality: str
    town: str
    postcode: str  # canonical "XW12 3AB"
    uprn: str

    def street_line(self) -> str:
        if self.number.isdigit():
            return f"{self.number} {self.street}"
        return f"{self.number}, {self.street}"

    def one_line(self) -> str:
        """``Flat 2, 14 High Street`` — how single-line systems (police) hold it."""
        return f"{self.flat}, {self.street_line()}" if self.flat else self.street_line()

    def two_lines(self) -> tuple[str, str]:
        """``("Flat 2", "14 High Street")`` or ``("14 High Street", locality)``."""
        if self.flat:
            return self.flat, self.street_line()
        return self.street_line(), self.locality


@dataclass(slots=True)
class _Street:
    name: str
    locality: str
    district: str
    flatted: bool
    length: int = 90  # highest house number before the street is full
    next_number: int = 1
    flats_left: int = 0
    building: str = ""
    named: list[str] = field(default_factory=list)
    postcode: str = ""
    on_postcode: int = 0


@dataclass
class Town:
    name: str
    districts: list[str]
    weight: float
    streets: list[_Street] = field(default_factory=list)
    unused_names: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class School:
    urn: str
    name: str
    phase: str  # primary | secondary
    town: str
    sixth_form: bool


@dataclass(frozen=True, slots=True)
class Practice:
    code: str
    town: str


class Geography:
    """Allocates unique addresses on demand; deterministic for a given ``rng``."""

    def __init__(self, rng: random.Random, streets: list[str], localities: list[str]) -> None:
        self.rng = rng
        with (DATA / "towns.csv").open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        stems = sorted({s.split(" ")[0] for s in streets if not s.startswith(("The", "St"))})
        combos = [
            f"{stem} {suffix}" for stem in stems for suffix in _SUFFIXES if stem not in _SUFFIXES
        ]
        self.towns: list[Town] = []
        for r in rows:
            names = list(streets)
            rng.shuffle(names)
            extra = [c for c in combos if c not in set(streets)]
            rng.shuffle(extra)
            self.towns.append(
                Town(
                    r["town"],
                    [f"{AREA}{d}" for d in r["districts"].split("|")],
                    float(r["weight"]),
                    unused_names=names + extra,
                )
            )
        self._town_pick = Weighted([t.name for t in self.towns], [t.weight for t in self.towns])
        self.by_name = {t.name: t for t in self.towns}
        self.localities = localities
        self._postcodes: set[str] = set()
        self._uprns: set[int] = set()

    def pick_town(self, rng: random.Random) -> Town:
        return self.by_name[self._town_pick(rng)]

    def _new_postcode(self, district: str) -> str:
        while True:
            unit = (
                f"{self.rng.randrange(10)}{self.rng.choice(_UNIT_LETTERS)}"
                f"{self.rng.choice(_UNIT_LETTERS)}"
            )
            pc = f"{district} {unit}"
            if pc not in self._postcodes:
                self._postcodes.add(pc)
                return pc

    def _new_uprn(self) -> str:
        while True:
            n = self.rng.randrange(10**10)
            if n not in self._uprns:
                self._uprns.add(n)
                return f"99{n:010d}"

    def _new_street(self, town: Town) -> _Street:
        name = town.unused_names.pop() if town.unused_names else f"{len(town.streets)} Street"
        locality = self.rng.choice(self.localities) if self.rng.random() < 0.25 else ""
        flatted = self.rng.random() < 0.15
        street = _Street(
            name, locality, self.rng.choice(town.districts), flatted, self.rng.randint(20, 120)
        )
        town.streets.append(street)
        return street

    def new_address(self, town: Town) -> Address:
        """A never-before-used address in ``town`` (an existing street while it has room)."""
        rng = self.rng
        # Several streets fill at once, each to its own length, so even a small county has
        # many streets (and some blocks of flats) rather than one long road per town.
        open_streets = [s for s in town.streets[-6:] if s.next_number < s.length or s.flats_left]
        if len(open_streets) < 4:
            open_streets.append(self._new_street(town))
        street = rng.choice(open_streets)
        if street.on_postcode <= 0:
            street.postcode = self._new_postcode(street.district)
            street.on_postcode = rng.randint(8, 25)
        street.on_postcode -= 1
        flat = ""
        if street.flats_left:
            # Flats in one building share its street number, counting down as they are let.
            flat = f"Flat {street.flats_left}"
            street.flats_left -= 1
            number = street.building
        elif street.flatted and rng.random() < 0.7:
            street.building = str(street.next_number)
            street.next_number += rng.choice((1, 2))
            size = rng.randint(3, 8)
            flat = f"Flat {size}"
            street.flats_left = size - 1
            number = street.building
        else:
            number = str(street.next_number)
            street.next_number += rng.choice((1, 1, 2, 2, 3))
            if not street.flatted and rng.random() < 0.04:
                name = rng.choice(_HOUSE_NAMES)
                if name not in street.named:
                    street.named.append(name)
                    number = name
        return Address(
            flat, number, street.name, street.locality, town.name, street.postcode, self._new_uprn()
        )

    # -- services ------------------------------------------------------------------------

    def make_schools(
        self, rng: random.Random, pupils_by_town: dict[str, tuple[int, int]]
    ) -> dict[str, list[School]]:
        """Primaries of ~250 and secondaries of ~900 pupils, at least one of each per town."""
        used: set[int] = set()
        out: dict[str, list[School]] = {}

        def urn() -> str:
            while True:
                n = rng.randrange(100000, 150000)
                if n not in used:
                    used.add(n)
                    return str(n)

        for town in self.towns:
            primary, secondary = pupils_by_town.get(town.name, (0, 0))
            schools: list[School] = []
            for i in range(max(1, math.ceil(primary / 250))):
                style = rng.random()
                if style < 0.3:
                    name = f"St {rng.choice(_SAINTS)}'s CofE Primary School"
                elif style < 0.55 and i == 0:
                    name = f"{town.name} Community Primary School"
                elif style < 0.8:
                    stem = rng.choice(town.unused_names or ["Park Road"]).split(" ")[0]
                    name = f"{stem} Primary School"
                else:
                    name = f"{rng.choice(self.localities)} Primary Academy"
                if any(s.name == name for s in schools):
                    name = f"{name.rsplit(' ', 1)[0]} {i + 1} School"
                schools.append(School(urn(), name, "primary", town.name, False))
            for i in range(max(1, math.ceil(secondary / 900))):
                name = [
                    f"{town.name} Academy",
                    f"{town.name} High School",
                    f"St {rng.choice(_SAINTS)}'s Catholic School",
                    f"{town.name} Community College",
                ][i % 4]
                schools.append(School(urn(), name, "secondary", town.name, rng.random() < 0.7))
            out[town.name] = schools
        return out

    def make_practices(self, rng: random.Random, persons_by_town: dict[str, int]) -> dict:
        """GP practices of ~8,000 patients with ODS-shaped codes (letter + five digits)."""
        used: set[str] = set()
        out: dict[str, list[Practice]] = {}
        for town in self.towns:
            practices = []
            for _ in range(max(1, math.ceil(persons_by_town.get(town.name, 0) / 8000))):
                while True:
                    code = f"{rng.choice('JKLMNP')}{rng.randrange(80, 90)}{rng.randrange(1000):03d}"
                    if code not in used:
                        used.add(code)
                        break
                practices.append(Practice(code, town.name))
            out[town.name] = practices
        return out


def phone_pool() -> list[str]:
    """Ofcom drama numbers: reserved, so no generated number can ring a real person."""
    pool = [f"07700 900{n:03d}" for n in range(1000)]
    for code in ("0113", "0114", "0115", "0116", "0117", "0118", "0121", "0131", "0141"):
        pool += [f"{code} 496 0{n:03d}" for n in range(1000)]
    pool += [f"020 7946 0{n:03d}" for n in range(1000)]
    pool += [f"01632 960{n:03d}" for n in range(1000)]
    return pool
