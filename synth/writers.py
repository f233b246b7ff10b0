"""Writing deliveries (CSV + manifest) and the ground-truth files.

Output is byte-deterministic: rows are sorted by their stable key, CSVs use the csv module's
RFC 4180 dialect (CRLF line ends, minimal quoting), manifests are written with fixed key
order, and nothing depends on the clock or on hash randomisation.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from synth.population import Household, Person, relationships
from synth.schema import SOURCES
from synth.tables import FLAG, Table

BOM = b"\xef\xbb\xbf"

PERSON_ROWS_HEADER = ["source", "table", "local_key", "extract_date", "true_person_id"]
PERSONS_HEADER = [
    "true_person_id",
    "true_household_id",
    "is_child",
    "sex",
    "dob",
    "forename",
    "surname",
    "twin_group",
    "deceased",
]
RELATIONSHIPS_HEADER = ["true_person_id", "related_true_person_id", "relationship"]
MALFORMED_HEADER = [
    "source",
    "table",
    "extract_date",
    "file",
    "row_number",
    "local_key",
    "column",
    "defect",
    "expected_outcome",
]


@dataclass
class DeliveryResult:
    rows_per_table: dict[str, int] = field(default_factory=dict)
    malformed: int = 0


def _key_of(table: Table, values: list[str]) -> str:
    """The local key as delivered: person key, or the natural key of an event row."""
    spec = table.spec
    cols = spec.person_key or {
        "council_csc/episodes": ("episode_id",),
        "council_csc/relationships": ("csc_person_id", "related_csc_person_id"),
        "council_eh/episodes": ("eh_episode_id",),
        "police/incidents": ("incident_ref",),
        "police/involvements": ("incident_ref", "nominal_id", "role"),
        "health/encounters": ("encounter_id",),
        "school/attendance": ("upn", "school_urn", "term"),
    }.get(spec.name, ())
    return "|".join(values[table.idx[c]] for c in cols)


def write_delivery(
    landing: Path,
    day: date,
    tables: dict[str, Table],
    person_rows: csv.writer,  # type: ignore[valid-type]
    malformed: csv.writer,  # type: ignore[valid-type]
) -> DeliveryResult:
    """Write every source's folder for ``day``; stream truth rows to the open writers."""
    result = DeliveryResult()
    stamp = day.isoformat()
    for source in SOURCES:
        folder = landing / source / stamp
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, dict[str, object]] = {}
        for name, table in tables.items():
            if table.spec.source != source:
                continue
            rows = sorted(table.rows, key=lambda r: r.key)
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\r\n")
            writer.writerow(table.spec.column_names)
            rel_file = f"{source}/{stamp}/{table.spec.table}.csv"
            is_person = bool(table.spec.person_key)
            for n, row in enumerate(rows, start=1):
                values = row.rendered()
                writer.writerow(values)
                if is_person:
                    person_rows.writerow(
                        [source, table.spec.table, row.key, stamp, f"TP{row.pid:07d}"]
                    )
                if row.defect is not None:
                    col, defect, _ = row.defect
                    malformed.writerow(
                        [
                            source,
                            table.spec.table,
                            stamp,
                            rel_file,
                            n,
                            row.key if is_person else _key_of(table, values),
                            table.spec.columns[col].name,
                            defect,
                            "flag" if defect in FLAG else "quarantine",
                        ]
                    )
                    result.malformed += 1
            data = buf.getvalue().encode("utf-8")
            if table.spec.bom:
                data = BOM + data
            (folder / f"{table.spec.table}.csv").write_bytes(data)
            files[f"{table.spec.table}.csv"] = {
                "rows": len(rows),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            result.rows_per_table[name] = len(rows)
        manifest = {"source": source, "extract_date": stamp, "files": files}
        (folder / "manifest.json").write_text(
            json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
        )
    return result


def open_truth_csv(path: Path, header: list[str]):
    """Open a truth CSV for streaming; returns (file handle, writer)."""
    fh = path.open("w", newline="", encoding="utf-8")
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(header)
    return fh, writer


def write_population_truth(
    truth: Path, persons: list[Person], households: list[Household], on: date
) -> None:
    """``persons.csv`` and ``relationships.csv`` as of the last delivery."""
    fh, w = open_truth_csv(truth / "persons.csv", PERSONS_HEADER)
    with fh:
        for p in persons:
            w.writerow(
                [
                    p.true_id,
                    households[p.hid].true_id,
                    "true" if p.age_on(on) < 18 else "false",
                    p.sex,
                    p.dob.isoformat(),
                    p.forename,
                    p.surname,
                    p.twin_group,
                    "true" if p.dod is not None else "false",
                ]
            )
    rel = relationships(persons)
    fh, w = open_truth_csv(truth / "relationships.csv", RELATIONSHIPS_HEADER)
    with fh:
        for (a, b), r in sorted(rel.items()):
            w.writerow([f"TP{a:07d}", f"TP{b:07d}", r])


def iter_csv(path: Path) -> Iterable[list[str]]:
    """Read back a CSV written here (BOM tolerated); used by callers and tests alike."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        yield from csv.reader(fh)
