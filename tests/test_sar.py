"""Subject access export: every row about the person from every source and layer, nothing
about anyone else outside the review section, and who has seen the person's data."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from warehouse import audit
from warehouse.access import AccessLayer, User
from warehouse.policy import load_policy

INGEST = ("raw", "staged", "quarantine")
# Independently of warehouse.subjects: which rows of each table are about a person, by the
# source keys the extract spec gives (record keys per source: see _keys).
ABOUT_SQL = {
    ("council_csc", "people"): "list_contains($csc, csc_person_id)",
    ("council_csc", "episodes"): "list_contains($csc, csc_person_id)",
    ("council_csc", "relationships"): (
        "list_contains($csc, csc_person_id) or list_contains($csc, related_csc_person_id)"
    ),
    ("council_eh", "people"): "list_contains($eh, eh_person_id)",
    ("council_eh", "episodes"): (
        "family_id in (select family_id from raw.council_eh__people "
        "where list_contains($eh, eh_person_id))"
    ),
    ("police", "persons"): "list_contains($police, nominal_id)",
    ("police", "involvements"): "list_contains($police, nominal_id)",
    ("police", "incidents"): (
        "incident_ref in (select incident_ref from raw.police__involvements "
        "where list_contains($police, nominal_id))"
    ),
    ("health", "patients"): "list_contains($health, local_patient_id)",
    ("health", "encounters"): "list_contains($health, local_patient_id)",
    ("school", "pupils"): "list_contains($school, upn)",
    ("school", "contacts"): "list_contains($school, upn)",
    ("school", "attendance"): "list_contains($school, upn)",
    ("school", "exclusions"): "list_contains($school, upn)",
}
KEY_TABLES = {
    "csc": ("council_csc", "people"),
    "eh": ("council_eh", "people"),
    "police": ("police", "persons"),
    "health": ("health", "patients"),
    "school": ("school", "pupils"),
}


@dataclass
class Export:
    county: object
    child: str
    out: Path
    output: str

    def files(self, section: str) -> list[Path]:
        return sorted((self.out / section).glob("*.csv"))

    def rows(self, section: str, name: str | None = None) -> list[dict[str, str]]:
        found = []
        for path in self.files(section):
            if name is None or path.stem == name:
                with path.open(newline="", encoding="utf-8") as handle:
                    found += list(csv.DictReader(handle))
        return found


def _sdv(county, *args: str):
    return CliRunner().invoke(app, [*args, "--data-dir", str(county.data)])


def _child(county) -> str:
    """A child with records in social care, school, health and police, living with others,
    at an incident where other people were involved too."""
    with county.store().reader() as con:
        return con.sql(
            """
            with src as (
                select person_id, list(distinct split_part(record_id, '|', 1)) as sources
                from person_records group by person_id)
            select c.person_id from child_summary c join src using (person_id)
            where list_has_all(sources, ['council_csc', 'school', 'health', 'police'])
              and (select count(*) from household_members m where m.household_id in
                   (select household_id from household_members where person_id = c.person_id))
                  > 1
              and exists (select 1 from timeline t join timeline o using (source, source_key)
                          where t.person_id = c.person_id and o.person_id <> c.person_id
                            and t.source = 'police')
            order by c.person_id limit 1
            """
        ).fetchall()[0][0]


@pytest.fixture(scope="module")
def exported(published_county, tmp_path_factory) -> Export:
    """One export through the CLI, after a social worker and a police officer read the child."""
    root = tmp_path_factory.mktemp("sar")
    county = published_county.copy(root / "county")
    child = _child(county)
    access = AccessLayer(county.store(), load_policy(), county.engine())
    access.person(User("sw-ann", "social_worker"), "safeguarding", child)
    access.timeline(User("pc-bob", "police"), "safeguarding", child)
    restricted = _sdv(county, "restrict", child, "--reason", "accuracy contested", "--by", "dpo1")
    assert restricted.exit_code == 0, restricted.output
    out = root / "export"
    result = _sdv(county, "sar", child, "--out", str(out), "--reason", "SAR-0042", "--by", "dpo1")
    assert result.exit_code == 0, result.output
    return Export(county, child, out, result.output)


def _keys(county, person_id: str) -> dict[str, list[str]]:
    with county.store().reader() as con:
        records = [
            r
            for (r,) in con.execute(
                "select record_id from person_records where person_id = ?", [person_id]
            ).fetchall()
        ]
    return {
        name: [r.split("|", 2)[2] for r in records if tuple(r.split("|")[:2]) == table]
        for name, table in KEY_TABLES.items()
    }


def _expected_rows(county, person_id: str) -> set[tuple[str, str, str, str, str]]:
    keys = _keys(county, person_id)
    con = county.connect()
    try:
        found = set()
        for (source, table), where in ABOUT_SQL.items():
            for layer in INGEST:
                rows = con.execute(
                    f'select _delivery_id, _row_number from {layer}."{source}__{table}" '
                    f"where {where}",
                    {k: v for k, v in keys.items() if f"${k}" in where},
                ).fetchall()
                found |= {(layer, source, table, d, str(n)) for d, n in rows}
        return found
    finally:
        con.close()


def _exported_rows(export: Export) -> set[tuple[str, str, str, str, str]]:
    return {
        (r["_layer"], r["_source"], r["_table"], r["_delivery_id"], r["_row_number"])
        for section in ("main", "review")
        for r in export.rows(section)
        if r["_layer"] in INGEST
    }


def test_every_ingest_row_about_the_person_is_exported_with_provenance(exported):
    expected = _expected_rows(exported.county, exported.child)
    sources = {source for _, source, *_ in expected}
    assert {"council_csc", "school", "health", "police"} <= sources
    assert {layer for layer, *_ in expected} >= {"raw", "staged"}
    assert _exported_rows(exported) == expected
    for row in exported.rows("main") + exported.rows("review"):
        if row["_layer"] in INGEST:
            assert row["_extract_date"] and row["_source_file"] and row["_row_number"]
            assert "_rowid" not in row


def _other_identifiers(county, person_id: str) -> tuple[set[str], set[tuple[str, str, str]]]:
    """Everyone else's ids, NHS numbers, UPNs and local keys; and their name with dob."""
    with county.store().reader() as con:
        ids = con.execute(
            """
            select person_id from person where person_id <> $p
            union select nhs_number from person where person_id <> $p
            union select upn from person where person_id <> $p
            union select split_part(record_id, '|', 3) from person_records
                where person_id <> $p and split_part(record_id, '|', 2) <> 'contacts'
            union select record_id from person_records where person_id <> $p
            """,
            {"p": person_id},
        ).fetchall()
        own = con.execute(
            """
            select nhs_number from person where person_id = $p
            union select upn from person where person_id = $p
            union select split_part(record_id, '|', 3) from person_records where person_id = $p
            """,
            {"p": person_id},
        ).fetchall()
        named = con.execute(
            "select lower(forename), lower(surname), cast(dob as varchar) from person "
            "where person_id <> ? and dob is not null",
            [person_id],
        ).fetchall()
    values = {v for (v,) in ids if v} - {v for (v,) in own if v}
    return values, set(named)


def _cells(value: object) -> list[str]:
    if isinstance(value, dict):
        return [c for v in value.values() for c in _cells(v)]
    if isinstance(value, list):
        return [c for v in value for c in _cells(v)]
    return [] if value is None else [str(value).strip().lower()]


def test_nothing_about_anyone_else_outside_the_review_section(exported):
    others, named = _other_identifiers(exported.county, exported.child)
    others = {o.lower() for o in others}
    document = json.loads((exported.out / "sar.json").read_text())
    main_rows = [
        [c for v in row.values() for c in (v.split("; ") if v else [])]
        for row in exported.rows("main")
    ] + [_cells(row) for block in document["main"] for row in block["rows"]]
    assert main_rows
    for cells in main_rows:
        lowered = {c.lower() for c in cells}
        assert not lowered & others, f"another person's identifier in main: {lowered & others}"
        for forename, surname, dob in named:
            assert not {forename, surname, dob} <= lowered, "another person named in main"
    # The review section holds what is also about others: the child's household, and the
    # other people at the child's incidents.
    with exported.county.store().reader() as con:
        members = {
            p
            for (p,) in con.execute(
                "select person_id from household_members where household_id in (select "
                "household_id from household_members where person_id = ?) and person_id <> ?",
                [exported.child, exported.child],
            ).fetchall()
        }
    reviewed = exported.rows("review", "curated__family_view__household_members")
    assert members and members <= {r["person_id"] for r in reviewed}
    assert all(r["_review_reasons"] for r in exported.rows("review"))
    incidents = exported.rows("review", "raw__police__incidents")
    keys = _keys(exported.county, exported.child)["police"]
    assert incidents
    for incident in incidents:
        involved = incident["_about"].split("; ")
        assert set(involved) - {f"police|persons|{k}" for k in keys}, "others at the incident"
        assert incident["_review_reasons"] == "about other people"


def test_confidential_timeline_rows_only_in_review(published_county, tmp_path):
    county = published_county.copy(tmp_path / "county")
    with county.store().reader() as con:
        person, event_id, source_key, agency = con.sql(
            "select person_id, event_id, source_key, agency from timeline "
            "where confidential_from_subject "
            "and person_id in (select person_id from child_summary) order by all limit 1"
        ).fetchall()[0]
    out = tmp_path / "export"
    reason = "SAR-7 <script>alert(1)</script>"
    result = _sdv(county, "sar", person, "--out", str(out), "--reason", reason)
    assert result.exit_code == 0, result.output
    export = Export(county, person, out, result.output)
    reviewed = export.rows("review", "curated__family_view__timeline")
    assert event_id in {r["event_id"] for r in reviewed}
    assert all(
        r["confidential_from_subject"] == "false"
        for r in export.rows("main", "curated__family_view__timeline")
    )
    # Nor does the source row behind it reach the main section by another layer.
    for path in export.files("main"):
        assert source_key not in path.read_text(encoding="utf-8"), path.name
    # Nor what the Family View builds from it: the agency's involvement (the episode's
    # service, dates, team, practitioner) and the child summary (social care status, key
    # workers). Neither carries the episode id, so each must be held back whole.
    involvement = "curated__family_view__involvement"
    summary = "curated__family_view__child_summary"
    assert agency not in {r["agency"] for r in export.rows("main", involvement)}
    assert not export.rows("main", summary)
    held = [r for r in export.rows("review", involvement) if r["agency"] == agency]
    held += export.rows("review", summary)
    assert {r.get("agency") for r in held} == {agency, None}  # the summary has no agency
    assert all("confidential" in r["_review_reasons"] for r in held)
    assert any(
        r.get("episode_id") == source_key and "confidential" in r["_review_reasons"]
        for r in export.rows("review")
    )
    html = (out / "summary.html").read_text()
    assert "&lt;script&gt;alert(1)" in html and "<script>" not in html


def test_recipients_are_who_read_the_person_and_the_export_is_audited(exported):
    document = json.loads((exported.out / "sar.json").read_text())
    readers = {(r["user_id"], r["role"], r["purpose"]) for r in document["recipients"]}
    assert ("sw-ann", "social_worker", "safeguarding") in readers
    assert ("pc-bob", "police", "safeguarding") in readers
    assert all(r["as_person_id"] == [exported.child] for r in document["recipients"])
    with (exported.out / "recipients.csv").open(newline="") as handle:
        assert {r["user_id"] for r in csv.DictReader(handle)} >= {"sw-ann", "pc-bob"}
    history = audit.person_history(exported.county.engine(), [exported.child])
    event = history[-1]
    assert (event.action, event.purpose, event.user_id) == (
        "subject_access_export",
        "subject_rights",
        "dpo1",
    )
    assert event.detail["reason"] == "SAR-0042"
    assert event.detail["counts"]["main"] == sum(len(b["rows"]) for b in document["main"])


def test_restrictions_on_the_person_are_exported(exported):
    rows = exported.rows("main", "operational__restriction__restrictions")
    assert [(r["person_id"], r["reason"], r["recorded_by"]) for r in rows] == [
        (exported.child, "accuracy contested", "dpo1")
    ]


def test_export_holds_json_csv_and_a_readable_summary(exported):
    document = json.loads((exported.out / "sar.json").read_text())
    assert document["subject"]["person_id"] == exported.child
    assert document["by"] == "dpo1" and document["reason"] == "SAR-0042"
    layers = {b["layer"] for b in document["main"]}
    assert {"raw", "staged", "linked", "curated"} <= layers
    assert {b["table"] for b in document["main"] if b["layer"] == "curated"} >= {
        "person",
        "timeline",
        "involvement",
    }
    for section, key in (("main", "main"), ("review", "review_before_disclosure")):
        assert {f"{section}/{p.name}" for p in exported.files(section)} == {
            b["file"] for b in document[key]
        }
    assert not any(b["table"].startswith(("agg_", "person_names")) for b in document["main"])
    html = (exported.out / "summary.html").read_text()
    assert "Review before disclosure" in html and exported.child in html
    assert html.index("Data about the person") < html.index("Review before disclosure")
    delivered = {d["source"] for d in document["provenance"]["deliveries"]}
    assert {"council_csc", "school", "health", "police"} <= delivered


def test_refuses_a_non_empty_folder_and_an_unknown_person(published_county, tmp_path):
    county = published_county.copy(tmp_path / "county")
    child = _child(county)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("someone else's file")
    result = _sdv(county, "sar", child, "--out", str(busy), "--reason", "SAR-1")
    assert result.exit_code == 1
    assert "not empty" in result.output
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]

    missing = tmp_path / "missing"
    result = _sdv(county, "sar", "PNOSUCHPERSON", "--out", str(missing), "--reason", "SAR-2")
    assert result.exit_code == 1
    assert "no person 'PNOSUCHPERSON'" in result.output
    assert not missing.exists()
    assert not [e for e in audit.events(county.engine()) if e.action == "subject_access_export"]
