"""Subject access export: what a disclosure officer could hand over as it stands (the main
section) never carries what a source marked confidential from the subject, events shared
with other people, or clerical review of another person's record; the rectifications of the
person are there; and everyone whose data the export carries finds it in their history."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import sdv_load, write_delivery
from family_view_county import EXTRACT_DATE
from test_sar import INGEST, Export, _child, _sdv

from warehouse import review
from warehouse.rectification import rectifications
from warehouse.sources import DEFAULT_CONFIG_DIR, ColumnType, load_sources


@dataclass
class Disclosed:
    export: Export
    member: str  # another member of the child's household
    stranger: str  # someone the child has nothing to do with but a similar record
    stranger_record: str
    shared: set[tuple[str, str]]  # (source, source_key) of the child's events others share
    sharers: set[str]  # who shares them


@pytest.fixture(scope="module")
def disclosed(published_county, tmp_path_factory) -> Disclosed:
    """The child of test_sar (household, a police incident with others) exported after the
    DPO rectified their surname, with a rectification recorded when the child and a household
    member were one person (since split), and a pair of the child's record and a stranger's
    queued for clerical review."""
    root = tmp_path_factory.mktemp("sar_disclosure")
    county = published_county.copy(root / "county")
    child = _child(county)
    with county.store().reader() as con:
        (surname,) = con.execute(
            "select surname from person where person_id = ?", [child]
        ).fetchall()[0]
        child_record = con.execute(
            "select min(record_id) from person_records where person_id = ?", [child]
        ).fetchall()[0][0]
        member, member_record = con.execute(
            "select person_id, min(record_id) from person_records where person_id in "
            "(select person_id from household_members where person_id <> $c and household_id "
            "in (select household_id from household_members where person_id = $c)) "
            "group by person_id order by person_id limit 1",
            {"c": child},
        ).fetchall()[0]
        stranger, stranger_record = con.execute(
            "select person_id, min(record_id) from person_records where person_id not in "
            "(select person_id from household_members where household_id in "
            " (select household_id from household_members where person_id = $c)) "
            "and person_id not in (select related_person_id from relationships "
            " where person_id = $c union select person_id from relationships "
            " where related_person_id = $c) "
            "and person_id not in (select o.person_id from timeline t join timeline o "
            " using (source, source_key) where t.person_id = $c) "
            "group by person_id order by person_id limit 1",
            {"c": child},
        ).fetchall()[0]
        shared = con.execute(
            "select distinct t.source, t.source_key, o.person_id from timeline t "
            "join timeline o using (source, source_key) "
            "where t.person_id = ? and o.person_id <> t.person_id",
            [child],
        ).fetchall()
    rectified = _sdv(
        county, "rectify", child, "--field", "surname", "--old", surname, "--new", "Ashdown",
        "--reason", "misspelt", "--requester", "the child's mother", "--by", "dpo1",
    )  # fmt: skip
    assert rectified.exit_code == 0, rectified.output
    engine = county.engine()
    with engine.begin() as conn:
        conn.execute(
            rectifications.insert().values(
                person_id=member,
                record_ids=json.dumps(sorted([child_record, member_record])),
                field="forename",
                old_value="Kim",
                new_value="Kimberley",
                source_value="Kim",
                reason="preferred name",
                requester="the member",
                recorded_by="dpo1",
                recorded_at=datetime.now(UTC),
            )
        )
    displayed = {"forename": "kimberley", "surname": "stranger-surname"}
    review.enqueue(
        engine,
        pl.DataFrame(
            {
                "record_id_l": [child_record],
                "record_id_r": [stranger_record],
                "match_probability": [0.6],
                "match_weight": [1.2],
                "levels": ["{}"],
                "record_l": [json.dumps({"forename": "child"})],
                "record_r": [json.dumps(displayed)],
            }
        ),
        "run-test",
    )
    review.decide_records(
        engine, child_record, stranger_record, "reject", "rev1", "different school and dob"
    )
    review.split_person(
        engine, "P-FORMER", [[child_record], [member_record]], "rev1", "twins recorded as one"
    )
    out = root / "export"
    result = _sdv(county, "sar", child, "--out", str(out), "--reason", "SAR-9", "--by", "dpo1")
    assert result.exit_code == 0, result.output
    return Disclosed(
        Export(county, child, out, result.output),
        member,
        stranger,
        stranger_record,
        {(s, k) for s, k, _ in shared},
        {p for *_, p in shared},
    )


def test_events_shared_with_other_people_only_in_review(disclosed):
    """A police incident with others present, an early help family episode: the curated
    event row (offence, DASH risk, family role, need) is about them too."""
    export, timeline = disclosed.export, "curated__family_view__timeline"
    assert "police" in {s for s, _ in disclosed.shared}
    main = {(r["source"], r["source_key"]) for r in export.rows("main", timeline)}
    assert main and not main & disclosed.shared
    reviewed = {(r["source"], r["source_key"]): r for r in export.rows("review", timeline)}
    assert disclosed.shared <= reviewed.keys()
    for key in disclosed.shared:
        assert "about other people" in reviewed[key]["_review_reasons"]


def test_the_persons_rectifications_are_exported_and_others_held_back(disclosed):
    table = "operational__rectification__rectifications"
    main = disclosed.export.rows("main", table)
    assert [(r["field"], r["new_value"], r["requester"]) for r in main] == [
        ("surname", "Ashdown", "the child's mother")
    ]
    held = disclosed.export.rows("review", table)
    assert [(r["person_id"], r["new_value"]) for r in held] == [(disclosed.member, "Kimberley")]
    assert "names another person" in held[0]["_review_reasons"]


def test_review_pairs_naming_another_record_only_in_review(disclosed):
    export = disclosed.export
    for path in export.files("main"):
        text = path.read_text(encoding="utf-8")
        assert disclosed.stranger_record not in text and "stranger-surname" not in text, path.name
    pairs = export.rows("review", "operational__review__review_pairs")
    assert [disclosed.stranger_record in (p["record_id_l"], p["record_id_r"]) for p in pairs] == [
        True
    ]
    assert "stranger-surname" in pairs[0]["record_l"] + pairs[0]["record_r"]
    assert "names another person" in pairs[0]["_review_reasons"]


def test_reviewers_decisions_and_splits_of_the_persons_records_are_exported(disclosed):
    """A reviewer's decision on the child's record (with their reason) and the split that
    moved it are held about the child too; a decision naming a stranger's record is for
    review only."""
    export = disclosed.export
    decisions = export.rows("review", "operational__review__review_decisions")
    assert [(d["decision"], d["reason"]) for d in decisions] == [
        ("reject", "different school and dob")
    ]
    assert "names another person" in decisions[0]["_review_reasons"]
    splits = export.rows("main", "operational__review__person_splits")
    assert [(s["person_id"], s["reason"]) for s in splits] == [
        ("P-FORMER", "twins recorded as one")
    ]


def _exports_in_history(county, person_id: str) -> list[dict]:
    result = _sdv(county, "audit", "--person", person_id, "--json")
    assert result.exit_code == 0, result.output
    return [
        e for e in json.loads(result.output)["events"] if e["action"] == "subject_access_export"
    ]


def test_everyone_whose_data_the_export_carries_finds_it_in_their_history(disclosed):
    export = disclosed.export
    (own,) = _exports_in_history(export.county, export.child)
    assert own["detail"]["reason"] == "SAR-9" and own["detail"]["subject"] == export.child
    # The household member, the others at the child's incidents, and the stranger whose
    # record the clerical review pair shows.
    for other in {disclosed.member, disclosed.stranger, *disclosed.sharers}:
        assert [e["seq"] for e in _exports_in_history(export.county, other)] == [own["seq"]]
    # And the member's own subject access export lists it as a disclosure of their data.
    out = export.out.parent / "member-export"
    result = _sdv(export.county, "sar", disclosed.member, "--out", str(out), "--reason", "SAR-10")
    assert result.exit_code == 0, result.output
    with (out / "recipients.csv").open(newline="") as handle:
        actions = {(r["user_id"], r["action"]) for r in csv.DictReader(handle)}
    assert ("dpo1", "subject_access_export") in actions


def _rewrite_delivery(county, landing: Path, sources, day: str, flags: dict[str, dict]) -> None:
    """council_csc's delivery redelivered on ``day`` by a system writing booleans Y/N, with
    ``flags``' episodes changed (episode id to column values)."""
    source = sources["council_csc"]
    generated = county.root / "generated" / "landing" / "council_csc" / EXTRACT_DATE.isoformat()
    tables = {}
    for table, spec in source.tables.items():
        booleans = [c for c, col in spec.columns.items() if col.type is ColumnType.boolean]
        with (generated / source.file_name(table)).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            for column in booleans:
                row[column] = {"true": "Y", "false": "N"}.get(row[column], row[column])
            if table == "episodes":
                row.update(flags.get(row["episode_id"], {}))
        tables[table] = rows
    write_delivery(landing, source, day, tables)


def test_confidential_as_the_source_writes_it_held_back_in_every_layer(
    published_county, tmp_path, monkeypatch
):
    """A source writing ``Y`` for true (and a padded `` Y ``): staging reads both as
    confidential, so every copy of the row is held back, raw and quarantined as delivered
    and the copy of the same episode an earlier delivery carried unmarked."""
    county = published_county.copy(tmp_path / "county")
    config = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, config)
    spec_path = config / "sources" / "council_csc.yaml"
    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    spec |= {"true_values": ["Y"], "false_values": ["N"]}
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    sources = load_sources(config)
    con = county.connect()
    try:
        csc_person, episodes = con.execute(
            "select csc_person_id, list(episode_id order by episode_id) "
            "from current.council_csc__episodes group by all "
            "having count(*) >= 3 and not bool_or(coalesce(confidential_from_subject, false)) "
            "order by all limit 1"
        ).fetchall()[0]
    finally:
        con.close()
    marked, padded, quarantined = episodes[:3]
    with county.store().reader() as snap:
        (person,) = snap.execute(
            "select person_id from person_records where record_id = ?",
            [f"council_csc|people|{csc_person}"],
        ).fetchall()[0]
    landing = tmp_path / "landing"
    _rewrite_delivery(
        county,
        landing,
        sources,
        "2026-11-21",
        {
            marked: {"confidential_from_subject": "Y"},
            padded: {"confidential_from_subject": " Y "},
            # Quarantined, so no staged copy says it is confidential: only its own text does.
            quarantined: {"confidential_from_subject": " Y", "start_date": "31/02/2026"},
        },
    )
    loaded = sdv_load(landing, county.data, config)
    assert loaded.exit_code == 0, loaded.output
    monkeypatch.setenv("SDV_CONFIG_DIR", str(config))
    out = tmp_path / "export"
    result = _sdv(county, "sar", person, "--out", str(out), "--reason", "SAR-11")
    assert result.exit_code == 0, result.output
    export = Export(county, person, out, result.output)

    held = {marked, padded, quarantined}
    leaked = [
        (r["_layer"], r["_delivery_id"], r["episode_id"])
        for r in export.rows("main")
        if r["_layer"] in INGEST and r.get("episode_id") in held
    ]
    assert not leaked
    reviewed = {
        (r["_layer"], r["episode_id"], r["_extract_date"])
        for r in export.rows("review")
        if r.get("episode_id") in held and "confidential" in r["_review_reasons"]
    }
    tonight, before = "2026-11-21", EXTRACT_DATE.isoformat()
    for episode in (marked, padded):
        assert {("raw", episode, tonight), ("staged", episode, tonight)} <= reviewed
        assert ("raw", episode, before) in reviewed  # the unmarked earlier copy
    assert ("quarantine", quarantined, tonight) in reviewed
