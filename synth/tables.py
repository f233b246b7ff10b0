"""Rows held by each source between deliveries, and the deliberate defects they carry.

A row is stored once and rendered into every delivery, so local keys stay stable and a
defect persists from night to night until the source "corrects" it, as in a real system.
Each defect is stored as (column, kind, bad value) and applied only when the row is written;
the clean value underneath can keep changing (an address update) without losing the defect.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date

from matching.identifiers import is_valid_nhs_number, is_valid_upn, normalise_postcode
from synth.schema import BOOL, DATE, INT, TIMESTAMP, TableSpec

QUARANTINE = ("missing_required", "unparseable_date", "bad_integer", "bad_boolean")
FLAG = ("invalid_nhs_number", "invalid_upn", "invalid_postcode")
#: Share of a table's rows given each defect family: 0.2-0.5% per quarantine family (the
#: brief), a little more for flagged identifiers but well under the 5% invalid rate at
#: which the pipeline's identifier checks reject a delivery.
RATES = {
    "missing_required": 0.003,
    "unparseable_date": 0.003,
    "bad_integer": 0.003,
    "bad_boolean": 0.003,
    "invalid_nhs_number": 0.006,
    "invalid_upn": 0.006,
    "invalid_postcode": 0.006,
}
_UPN_LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZ"


@dataclass(slots=True, eq=False)
class Row:
    key: str  # local key of a person-level row; natural sort key of an event row
    vals: list[str]
    pid: int = 0  # true person (person-level rows only)
    asof: date | None = None  # when the source last refreshed this person's address
    defect: tuple[int, str, str] | None = None  # (column index, defect, delivered value)

    def rendered(self) -> list[str]:
        if self.defect is None:
            return self.vals
        out = list(self.vals)
        out[self.defect[0]] = self.defect[2]
        return out


@dataclass(eq=False)
class Table:
    spec: TableSpec
    rows: list[Row] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.idx = {c.name: i for i, c in enumerate(self.spec.columns)}

    def add(self, key: str, values: dict[str, str], pid: int = 0, asof: date | None = None):
        """Append a row from ``{column: value}``; unknown columns are a programming error."""
        vals = [""] * len(self.spec.columns)
        for col, v in values.items():
            vals[self.idx[col]] = v
        row = Row(key, vals, pid, asof)
        self.rows.append(row)
        return row

    def set(self, row: Row, column: str, value: str) -> None:
        row.vals[self.idx[column]] = value

    def get(self, row: Row, column: str) -> str:
        return row.vals[self.idx[column]]


# -- defects -------------------------------------------------------------------------------


def _candidate_columns(spec: TableSpec, row: Row, family: str) -> list[int]:
    """Columns of ``row`` that can carry ``family`` without touching the person key."""
    cols = spec.columns
    key = set(spec.person_key) | set(spec.referenced)
    v = row.vals
    if family == "missing_required":
        return [i for i, c in enumerate(cols) if c.required and c.name not in key and v[i]]
    if family == "unparseable_date":
        return [i for i, c in enumerate(cols) if c.kind in (DATE, TIMESTAMP) and v[i]]
    if family == "bad_integer":
        return [i for i, c in enumerate(cols) if c.kind == INT and c.name not in key and v[i]]
    if family == "bad_boolean":
        return [i for i, c in enumerate(cols) if c.kind == BOOL and v[i]]
    if family == "invalid_nhs_number":
        return [i for i, c in enumerate(cols) if c.name == "nhs_number" and v[i]]
    if family == "invalid_upn":
        return [
            i
            for i, c in enumerate(cols)
            if c.name == "upn"
            and c.name not in key
            and v[i]
            and not spec.table.startswith(("attendance", "exclusions", "contacts"))
        ]
    if family == "invalid_postcode":
        return [
            i for i, c in enumerate(cols) if c.name in ("postcode", "location_postcode") and v[i]
        ]
    raise ValueError(family)


def bad_value(rng: random.Random, family: str, kind: str, value: str) -> str:
    """A delivered value that really has the defect (checked against the shared rules)."""
    if family == "missing_required":
        return ""
    if family == "unparseable_date":
        y, m, d = [*value[:10].split("-"), "2020", "01", "01"][:3]
        y = y if y.isdigit() and len(y) == 4 else "2020"
        bad = rng.choice(
            [
                f"{y}-13-{d}",
                f"{y}-{m}-{rng.randint(32, 45)}",
                f"31/02/{y}",
                f"{y}-02-30",
                f"{y}-00-{d}",
                f"30/02/{y}",
            ]
        )
        if kind == TIMESTAMP:
            return f"{bad}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        return bad
    if family == "bad_integer":
        return rng.choice(["twelve", "six", "ten", "1O", "five sessions", "x", "?"])
    if family == "bad_boolean":
        return rng.choice(["yes?", "maybe", "Y/N", "tbc", "ture", "-"])
    if family == "invalid_nhs_number":
        digits = [c for c in value if c.isdigit()]
        for _ in range(20):
            new_last = str((int(digits[-1]) + rng.randint(1, 9)) % 10)
            out = value[: value.rfind(digits[-1])] + new_last
            if not is_valid_nhs_number(out):
                return out
        raise AssertionError("could not invalidate NHS number")
    if family == "invalid_upn":
        for _ in range(40):
            out = rng.choice(_UPN_LETTERS) + value[1:]
            if not is_valid_upn(out):
                return out
        raise AssertionError("could not invalidate UPN")
    if family == "invalid_postcode":
        for _ in range(40):
            compact = value.replace(" ", "").upper()
            out = rng.choice(
                [
                    value[:-1],
                    value + "X",
                    compact[:-3] + " " + compact[-3:-2] + "C" + compact[-1],
                    "NFA",
                    "N/K",
                    value.replace(" ", "  ", 1)[:-2] + "1" + value[-1],
                    compact[:2] + "O" + compact[3:],
                ]
            )
            if out and normalise_postcode(out) is None:
                return out
        return "UNKNOWN"
    raise ValueError(family)


def malform(table: Table, row: Row, family: str, rng: random.Random) -> bool:
    """Give ``row`` one defect of ``family`` if it has a column that can carry it."""
    if row.defect is not None:
        return False
    cols = _candidate_columns(table.spec, row, family)
    if not cols:
        return False
    i = rng.choice(cols)
    row.defect = (i, family, bad_value(rng, family, table.spec.columns[i].kind, row.vals[i]))
    return True


def malform_base(table: Table, rng: random.Random) -> None:
    """Defects for the first delivery: an exact share per family, one defect per row."""
    for family in QUARANTINE + FLAG:
        pool = [
            r for r in table.rows if r.defect is None and _candidate_columns(table.spec, r, family)
        ]
        if not pool:
            continue
        expected = len(pool) * RATES[family]
        k = int(expected) + (rng.random() < expected - int(expected))
        if family in FLAG:
            k = min(k, len(pool) // 50)  # keep invalid identifiers under 2% of those present
        for row in rng.sample(pool, k):
            malform(table, row, family, rng)


def maybe_malform(table: Table, row: Row, rng: random.Random) -> None:
    """Defects for a row added between deliveries, at the same rates."""
    for family in QUARANTINE + FLAG:
        if rng.random() < RATES[family] and malform(table, row, family, rng):
            return


def ensure_every_defect(tables: list[Table], rng: random.Random) -> None:
    """Give even a tiny county one row of every defect family, so tests of each
    quarantine reason and each flag have something to find."""
    present = {r.defect[1] for t in tables for r in t.rows if r.defect}
    for family in QUARANTINE + FLAG:
        if family in present:
            continue
        pools = [
            (t, [r for r in t.rows if r.defect is None and _candidate_columns(t.spec, r, family)])
            for t in tables
        ]
        pools = [(t, pool) for t, pool in pools if pool]
        if pools:
            table, pool = max(pools, key=lambda tp: len(tp[1]))
            malform(table, rng.choice(pool), family, rng)
