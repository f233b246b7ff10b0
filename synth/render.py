"""How each agency writes down a person: formats and the small distortions of each system.

Kept apart from the source logic so the choices are visible in one place: which system uses
one address line and which two, who writes postcodes in lower case, who uses nicknames.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

from synth.geography import Address
from synth.names import misspell, surname_variant
from synth.population import Person

#: Probability that a system writes a postcode in some non-canonical case or spacing.
POSTCODE_MESS = {
    "council_csc/people": 0.1,
    "council_eh/people": 0.15,
    "police/persons": 0.35,
    "police/incidents": 0.3,
    "health/patients": 0.08,
    "school/pupils": 0.05,
    "school/contacts": 0.12,
}


def iso(d: date | None) -> str:
    return d.isoformat() if d else ""


def ts(d: date, rng: random.Random, lo: int = 7, hi: int = 19) -> str:
    """An ISO 8601 timestamp on day ``d`` (no wall clock: derived from the stream)."""
    return (
        f"{d.isoformat()}T{rng.randint(lo, hi):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
    )


def swap_day_month(d: date) -> date:
    """The classic keying error; only when the swapped date exists and differs."""
    if d.day <= 12 and d.day != d.month:
        return date(d.year, d.day, d.month)
    return d


def maybe_swap(d: date, rng: random.Random, p: float, before: date) -> date:
    """Swap day and month with chance ``p``, unless that would put the date after ``before``."""
    if rng.random() < p:
        swapped = swap_day_month(d)
        if swapped < before:
            return swapped
    return d


def postcode(pc: str, rng: random.Random, mess: float) -> str:
    if rng.random() >= mess:
        return pc
    return rng.choice(
        [
            pc.replace(" ", ""),
            pc.lower(),
            pc.lower().replace(" ", ""),
            pc.replace(" ", "  "),
            pc.title(),
        ]
    )


def nhs(n: str, rng: random.Random, spaced: float) -> str:
    """NHS numbers as delivered: sometimes ``999 123 4567``."""
    return f"{n[:3]} {n[3:6]} {n[6:]}" if rng.random() < spaced else n


def forename(p: Person, rng: random.Random, nick: float, typo: float) -> str:
    """The name a system holds: the familiar form with ``nick`` chance, or a typo."""
    r = rng.random()
    if p.nick and r < nick:
        return p.nick
    if rng.random() < typo:
        return misspell(rng, p.forename)
    return p.forename


def surname(p: Person, rng: random.Random, variant: float, typo: float, jr: float = 0.0) -> str:
    s = p.surname
    if rng.random() < variant:
        s = surname_variant(rng, s)
    elif rng.random() < typo:
        s = misspell(rng, s)
    if p.jr and rng.random() < jr:
        s = f"{s} Jr"
    return s


def address(table: str, addr: Address | None, rng: random.Random) -> dict[str, str]:
    """Address columns for ``table`` in that system's style (None = not held)."""
    mess = POSTCODE_MESS.get(table, 0.1)
    if addr is None:
        cols = {
            "council_csc/people": ("address_line_1", "address_line_2", "town", "postcode", "uprn"),
            "council_eh/people": ("address_line_1", "address_line_2", "town", "postcode"),
            "police/persons": ("address_line_1", "town", "postcode"),
            "health/patients": ("address_line_1", "address_line_2", "town", "postcode"),
            "school/pupils": ("address_line_1", "address_line_2", "town", "postcode", "uprn"),
            "school/contacts": ("address_line_1", "postcode"),
        }[table]
        return dict.fromkeys(cols, "")
    pc = postcode(addr.postcode, rng, mess)
    if table == "council_csc/people":
        return {
            "address_line_1": addr.one_line(),
            "address_line_2": addr.locality,
            "town": addr.town,
            "postcode": pc,
            "uprn": addr.uprn if rng.random() < 0.85 else "",
        }
    if table == "police/persons":
        town = addr.town.upper() if rng.random() < 0.2 else addr.town
        line = addr.one_line()
        if addr.flat and rng.random() < 0.3:
            line = f"{addr.flat.split(' ')[1]}/{addr.street_line()}"
        return {"address_line_1": line, "town": town, "postcode": pc}
    if table == "school/contacts":
        line = addr.one_line() if rng.random() < 0.9 else addr.street_line()
        return {"address_line_1": line, "postcode": pc}
    line1, line2 = addr.two_lines()
    out = {"address_line_1": line1, "address_line_2": line2, "town": addr.town, "postcode": pc}
    if table == "school/pupils":
        out["uprn"] = addr.uprn if rng.random() < 0.92 else ""
    return out


def days_between(rng: random.Random, lo: date, hi: date) -> date:
    """A uniform date in [lo, hi] (hi if the range is empty)."""
    span = (hi - lo).days
    return hi if span <= 0 else lo + timedelta(days=rng.randint(0, span))


def recent(rng: random.Random, before: date, mean_days: float, floor: date) -> date:
    """A date before ``before``, exponentially weighted to the recent past, not before floor."""
    d = before - timedelta(days=1 + int(rng.expovariate(1.0 / mean_days)))
    return max(d, floor)
