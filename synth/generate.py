"""Generate a synthetic county in the landing-zone format, with ground truth beside it.

This is the fixture factory for the pipeline's tests and benchmarks, including record
linkage, so it deliberately produces the hard cases (see ``extract-spec.md``, "What the
data is like", and ``linkage-notes.md``). Everything is synthetic: names are drawn from
frequency lists, postcodes use an area code no real postcode uses, NHS numbers come from
the range reserved for testing, telephone numbers from Ofcom's drama ranges.

Usage::

    summary = generate_county(20_000, seed=7, extract_date=date(2026, 3, 2), out=Path("demo"))

writes ``demo/landing/<source>/<date>/<table>.csv`` (+ ``manifest.json``) and
``demo/truth/{person_rows,persons,relationships,malformed_rows}.csv``:

- ``person_rows.csv``: every row of the six person-level tables in every delivery, with
  its ``true_person_id`` (contacts keyed ``upn|priority``), malformed rows included.
- ``persons.csv``: the population as of the last delivery; ``is_child`` = under 18 then.
- ``relationships.csv``: what the related person is to the first, both directions:
  mother, father, step_parent, sibling, half_sibling, grandparent, carer (foster carer),
  partner, and the inverses child, step_child, grandchild, cared_for_child.
- ``malformed_rows.csv``: every deliberate defect; ``file`` is relative to ``landing/``,
  ``row_number`` counts data records from 1, ``local_key`` is the person key or the
  table's natural key as delivered. A row carries at most one defect.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from synth.geography import Geography
from synth.names import NameBank
from synth.population import PopulationBuilder
from synth.sources import County
from synth.tables import ensure_every_defect, malform_base
from synth.writers import (
    MALFORMED_HEADER,
    PERSON_ROWS_HEADER,
    open_truth_csv,
    write_delivery,
    write_population_truth,
)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GenerationSummary:
    landing: Path  # out / "landing"
    truth: Path  # out / "truth"
    extract_dates: list[date]
    households: int
    persons: int
    rows_per_table: dict[str, int]  # "source/table" -> data rows written (last delivery)
    malformed_rows: int  # lines of truth/malformed_rows.csv, over all deliveries


def _stream(seed: int) -> Callable[[str], random.Random]:
    """Independent, named random streams: adding draws to one step leaves others unchanged."""

    def make(label: str) -> random.Random:
        digest = hashlib.sha256(f"{seed}\x00{label}".encode()).digest()
        return random.Random(int.from_bytes(digest[:16], "big"))

    return make


def generate_county(
    households: int,
    seed: int,
    extract_date: date,
    out: Path,
    *,
    deliveries: int = 1,
    progress: Progress | None = None,
) -> GenerationSummary:
    """Write ``deliveries`` nightly full snapshots ending on ``extract_date``, plus truth.

    The population is built as of the first delivery date and evolves night by night (moves,
    births, new events, a surname change, corrected records); each delivery is a complete
    snapshot of every source. Same arguments give byte-identical files. Files already at the
    same paths are overwritten; anything else under ``out`` is left alone.
    """
    if households < 1:
        raise ValueError("households must be at least 1")
    if deliveries < 1:
        raise ValueError("deliveries must be at least 1")
    out = Path(out)
    landing, truth = out / "landing", out / "truth"
    landing.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    rngs = _stream(seed)
    days = [extract_date - timedelta(days=deliveries - 1 - i) for i in range(deliveries)]
    base = days[0]

    names = NameBank()
    geo = Geography(rngs("geography"), names.streets, names.localities)
    builder = PopulationBuilder(rngs("population"), names, geo, base, progress)
    builder.build(households)
    county = County(builder, names, base, rngs)
    county.build(progress)
    for name, table in county.tables.items():
        malform_base(table, rngs(f"defects/{name}"))
    ensure_every_defect(list(county.tables.values()), rngs("defects"))

    rows_fh, rows_w = open_truth_csv(truth / "person_rows.csv", PERSON_ROWS_HEADER)
    bad_fh, bad_w = open_truth_csv(truth / "malformed_rows.csv", MALFORMED_HEADER)
    malformed = 0
    with rows_fh, bad_fh:
        for i, day in enumerate(days):
            if i > 0:
                county.evolve(day, rngs(f"evolve/{day.isoformat()}"))
            if progress:
                progress("deliveries", i, len(days))
            result = write_delivery(landing, day, county.tables, rows_w, bad_w)
            malformed += result.malformed
        if progress:
            progress("deliveries", len(days), len(days))
    write_population_truth(truth, builder.persons, builder.households, extract_date)
    return GenerationSummary(
        landing=landing,
        truth=truth,
        extract_dates=days,
        households=len(builder.households),
        persons=len(builder.persons),
        rows_per_table=result.rows_per_table,
        malformed_rows=malformed,
    )
