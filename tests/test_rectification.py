"""Rectification: a recorded correction shows in the curated Family View from the next
publish, follows the person through re-linking, gives way when a source delivers a value of
its own, and names the users who saw the old value so they can be told."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from conftest import sdv_load
from typer.testing import CliRunner

from assets.linkage import run_linkage
from matching.config import load_linkage_config
from pipelines.cli import app
from warehouse import audit, corrections, rectification
from warehouse.access import AccessLayer, User
from warehouse.policy import load_policy
from warehouse.store import connect

EXTRACT = "2026-11-20"
NEXT = "2026-11-21"


@pytest.fixture
def county(published_county, tmp_path):
    return published_county.copy(tmp_path / "county")


def _pupil(county, *, unread: bool = False) -> dict:
    """A child aged 3 to 15 whose surname comes from their one school record and dob from
    their one health record (so a later delivery of those two sources decides both);
    ``unread``: one nobody has read yet (the shared county's audit holds other tests' reads)."""
    query = """
        select p.person_id, p.forename, p.surname, p.dob, p.age,
               max(r.record_id) filter (where r.record_id like 'school|pupils|%') as pupil,
               max(r.record_id) filter (where r.record_id like 'health|patients|%') as patient
        from child_summary c join person p using (person_id)
        join person_records r using (person_id)
        where p.age between 3 and 15
          and json_extract_string(p.field_sources, '$.surname') = 'school.pupils'
          and json_extract_string(p.field_sources, '$.dob') = 'health.patients'
        group by all
        having count(*) filter (where r.record_id like 'school|pupils|%') = 1
           and count(*) filter (where r.record_id like 'health|patients|%') = 1
        order by 1
    """
    with county.store().reader() as con:
        candidates = con.sql(query).pl().to_dicts()
    engine = county.engine()
    return next(
        c for c in candidates if not unread or not audit.person_history(engine, c["person_id"])
    )


def _sdv(county, *args: str):
    return CliRunner().invoke(app, [*args, "--data-dir", str(county.data)])


def _rectify(county, person_id: str, field: str, old: str, new: str, by: str = "dpo1"):
    return _sdv(
        county, "rectify", person_id, "--field", field, "--old", old, "--new", new,
        "--reason", "birth certificate seen", "--requester", "the child's mother", "--by", by,
    )  # fmt: skip


def _published_row(county, table: str, person_id: str) -> dict:
    with county.store().reader() as con:
        rows = con.sql(f"select * from {table} where person_id = ?", params=[person_id]).pl()
    return rows.to_dicts()[0]


def test_rectified_surname_and_dob_show_in_person_and_child_summary(county):
    child = _pupil(county)
    new_dob = child["dob"] + timedelta(days=366)  # a year younger
    assert (
        _rectify(county, child["person_id"], "surname", child["surname"], "Exemplar").exit_code == 0
    )
    result = _rectify(county, child["person_id"], "dob", str(child["dob"]), new_dob.isoformat())
    assert result.exit_code == 0, result.output
    assert "next publish (sdv publish)" in result.output

    # Nothing changes for readers until the next publish.
    assert _published_row(county, "person", child["person_id"])["surname"] == child["surname"]
    built, _, _ = county.publish()
    assert built.lapsed == 0

    person = _published_row(county, "person", child["person_id"])
    assert person["surname"] == "Exemplar"
    assert person["dob"] == new_dob
    assert person["age"] == child["age"] - 1
    sources = json.loads(person["field_sources"])
    assert sources["surname"] == sources["dob"] == "rectification"
    assert f"{child['forename']} {child['surname']}" in person["alternative_names"]
    summary = _published_row(county, "child_summary", child["person_id"])
    assert (summary["surname"], summary["dob"], summary["age"]) == (
        "Exemplar",
        new_dob,
        child["age"] - 1,
    )
    found = AccessLayer(county.store(), load_policy(), county.engine()).search(
        User("sw", "social_worker"), "safeguarding", f"{child['forename']} Exemplar"
    )
    assert child["person_id"] in {r["person_id"] for r in found}

    events = [e for e in audit.person_history(county.engine(), child["person_id"])]
    rectified = [e for e in events if e.action == "rectify"]
    assert [e.detail["field"] for e in rectified] == ["surname", "dob"]
    assert all(e.purpose == "subject_rights" for e in rectified)
    text = json.dumps([e.detail for e in rectified])
    assert "Exemplar" not in text and new_dob.isoformat() not in text  # no values audited


def test_users_who_read_before_the_correction_are_listed_to_be_told(county):
    child = _pupil(county)
    access = AccessLayer(county.store(), load_policy(), county.engine())
    access.person(User("sw-reader", "social_worker"), "safeguarding", child["person_id"])
    with county.store().reader() as con:
        (other,) = con.sql(
            "select person_id from person where person_id <> ? order by 1 limit 1",
            params=[child["person_id"]],
        ).fetchall()[0]
    access.person(User("never-saw", "social_worker"), "safeguarding", other)

    result = _rectify(county, child["person_id"], "surname", child["surname"], "Exemplar")
    assert result.exit_code == 0, result.output
    assert "sw-reader" in result.output
    assert "never-saw" not in result.output

    later = User("after", "police")
    access.person(later, "safeguarding", child["person_id"])
    (done,) = rectification.listed(county.engine())
    seen = rectification.viewers(county.engine(), [child["person_id"]], done.recorded_at)
    by_user = {v.user_id: v for v in seen}
    assert (by_user["sw-reader"].role, by_user["sw-reader"].reads) == ("social_worker", 1)
    assert "never-saw" not in by_user and "after" not in by_user


def test_readers_until_the_publish_that_applies_it_saw_the_old_value_too(county):
    """The old value is served until the next publish: who reads the person in between
    must be told as well, and `sdv rectifications --viewers` finds them any time later;
    readers after that publish saw the new value and are not listed."""
    child = _pupil(county)
    access = AccessLayer(county.store(), load_policy(), county.engine())
    access.person(User("before", "social_worker"), "safeguarding", child["person_id"])
    result = _rectify(county, child["person_id"], "surname", child["surname"], "Exemplar")
    assert result.exit_code == 0, result.output
    assert "--viewers 1" in result.output
    access.person(User("in-between", "police"), "safeguarding", child["person_id"])

    pending = _sdv(county, "rectifications", "--viewers", "1")
    assert pending.exit_code == 0, pending.output
    assert "not yet published" in pending.output
    assert "before" in pending.output and "in-between" in pending.output

    county.publish()
    access.person(User("afterwards", "health"), "direct_care", child["person_id"])
    listed = _sdv(county, "rectifications", "--viewers", "1")
    assert listed.exit_code == 0, listed.output
    assert "until the publish of" in listed.output
    assert "before" in listed.output and "in-between" in listed.output
    assert "afterwards" not in listed.output

    unknown = _sdv(county, "rectifications", "--viewers", "99")
    assert unknown.exit_code == 1 and "No rectification 99" in unknown.output


def test_a_rollback_past_a_correction_says_the_old_value_is_back(county):
    """Kept snapshots are not corrected: rolling back to one built before a rectification
    serves the old value again, and the operator is told which corrections that undoes."""
    child = _pupil(county)
    assert (
        _rectify(county, child["person_id"], "surname", child["surname"], "Exemplar").exit_code == 0
    )
    county.publish()
    assert _published_row(county, "person", child["person_id"])["surname"] == "Exemplar"

    back = _sdv(county, "rollback", "--reason", "bad publish")
    assert back.exit_code == 0, back.output
    assert _published_row(county, "person", child["person_id"])["surname"] == child["surname"]
    assert "1 rectification(s) recorded since it was built are not in it (1)" in back.output

    county.publish()  # the next publish applies it again
    assert _published_row(county, "person", child["person_id"])["surname"] == "Exemplar"


def test_nobody_to_tell_when_nobody_read_the_person(county):
    child = _pupil(county, unread=True)
    result = _rectify(county, child["person_id"], "forename", child["forename"], "Exemplia")
    assert result.exit_code == 0, result.output
    assert "no one to tell" in result.output


def _redeliver(county, source: str, table: str, key: str, changes: dict[str, str]) -> Path:
    """Tomorrow's delivery of ``source``: today's files, one row of ``table`` changed."""
    landing = county.root / "landing-next"
    today = county.root / "generated" / "landing" / source / EXTRACT
    folder = landing / source / NEXT
    shutil.copytree(today, folder)
    path = folder / f"{table}.csv"
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    for row in rows[1:]:
        if row[0] == key:
            for column, value in changes.items():
                row[header.index(column)] = value
            break
    else:
        raise AssertionError(f"{key} not in {path}")
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    path.write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["extract_date"] = NEXT
    manifest["files"][path.name]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return landing


def _load_and_link(county, landing: Path) -> None:
    loaded = sdv_load(landing, county.data)
    assert loaded.exit_code == 0, loaded.output
    con = connect(county.warehouse)
    try:
        run_linkage(con, county.engine(), load_linkage_config(), county.data / "models")
    finally:
        con.close()


def test_a_source_delivering_its_own_value_wins_and_the_rectification_lapses(county):
    child = _pupil(county)
    pid = child["person_id"]
    assert _rectify(county, pid, "surname", child["surname"], "Exemplar").exit_code == 0
    new_dob = child["dob"] + timedelta(days=366)
    assert _rectify(county, pid, "dob", str(child["dob"]), new_dob.isoformat()).exit_code == 0
    county.publish()
    assert _published_row(county, "person", pid)["surname"] == "Exemplar"

    # Tomorrow the school sends a surname of its own (and health its unchanged dob).
    upn = child["pupil"].split("|")[2]
    landing = _redeliver(county, "school", "pupils", upn, {"legal_surname": "Delivered"})
    _load_and_link(county, landing)
    built, _, _ = county.publish()
    assert built.lapsed == 1

    person = _published_row(county, "person", pid)
    assert person["surname"] == "Delivered"
    assert json.loads(person["field_sources"])["surname"] == "school.pupils"
    assert person["dob"] == new_dob  # the source still gives the old dob: still corrected
    assert _published_row(county, "child_summary", pid)["surname"] == "Delivered"
    by_field = {r.field: r for r in rectification.listed(county.engine())}
    assert by_field["surname"].lapsed_at is not None
    assert "school.pupils now delivers a new value" in by_field["surname"].lapsed_reason
    assert by_field["dob"].lapsed_at is None
    assert [r.field for r in rectification.listed(county.engine(), active_only=True)] == ["dob"]

    listing = _sdv(county, "rectifications", "--by", "dpo2")
    assert listing.exit_code == 0, listing.output
    assert "lapsed" in listing.output and "active" in listing.output
    # The list shows corrected values: reading it is on record, as who read whose.
    [read] = [e for e in audit.person_history(county.engine(), pid) if e.user_id == "dpo2"]
    assert (read.action, read.role, read.purpose) == (
        "rectifications_read",
        "dpo",
        "subject_rights",
    )


def test_a_corrected_delivery_takes_over_from_the_rectification(county):
    child = _pupil(county)
    pid = child["person_id"]
    new_dob = child["dob"] + timedelta(days=366)
    assert _rectify(county, pid, "dob", str(child["dob"]), new_dob.isoformat()).exit_code == 0
    # Both sources correct their records: the person is one again, with the right dob.
    patient, upn = child["patient"].split("|")[2], child["pupil"].split("|")[2]
    _redeliver(county, "health", "patients", patient, {"birth_date": str(new_dob)})
    landing = _redeliver(county, "school", "pupils", upn, {"dob": str(new_dob)})
    _load_and_link(county, landing)
    county.publish()
    person = _published_row(county, "person", pid)
    assert person["dob"] == new_dob
    assert json.loads(person["field_sources"])["dob"] == "health.patients"
    (done,) = rectification.listed(county.engine())
    assert "health.patients now delivers the corrected value" in done.lapsed_reason


def test_rectification_follows_the_person_through_a_new_person_id(county):
    child = _pupil(county)
    assert (
        _rectify(county, child["person_id"], "surname", child["surname"], "Exemplar").exit_code == 0
    )
    con = connect(county.warehouse)
    try:
        for table in ("person_records", "household_members"):
            con.execute(
                f"update linked.{table} set person_id = 'PMERGED000001' where person_id = ?",
                [child["person_id"]],
            )
    finally:
        con.close()
    county.publish()
    assert _published_row(county, "person", "PMERGED000001")["surname"] == "Exemplar"


def test_a_second_correction_of_the_same_field_supersedes_the_first(county):
    child = _pupil(county)
    pid = child["person_id"]
    assert _rectify(county, pid, "surname", child["surname"], "Exemplar").exit_code == 0
    county.publish()
    assert _rectify(county, pid, "surname", "Exemplar", "Exemplary").exit_code == 0
    first, second = rectification.listed(county.engine())
    assert first.lapsed_reason and "superseded" in first.lapsed_reason
    assert second.source_value == child["surname"]  # still held against the source's value
    published = _sdv(county, "publish")  # the nightly Dagster job applies them too
    assert published.exit_code == 0, published.output
    assert _published_row(county, "person", pid)["surname"] == "Exemplary"
    assert rectification.listed(county.engine(), active_only=True) == [second]


@pytest.mark.parametrize(
    ("field", "old", "new", "message"),
    [
        ("favourite_colour", "x", "y", "'favourite_colour' cannot be rectified"),
        ("dob", "{dob}", "2015-02-30", "is not a date: write it YYYY-MM-DD"),
        ("dob", "{dob}", "2099-01-01", "not a plausible date"),
        ("nhs_number", "{nhs_number}", "999 123 4567", "not a valid NHS number"),
        ("surname", "{surname}", "", "cannot be corrected to nothing"),
        ("sex", "{sex}", "X", "not a sex code"),
        ("postcode", "{postcode}", "NOT A CODE", "not a UK postcode"),
        ("surname", "Nobody", "Exemplar", "in the published view, not 'Nobody'"),
    ],
)
def test_bad_corrections_are_refused_naming_what_and_why(county, field, old, new, message):
    child = _pupil(county)
    person = _published_row(county, "person", child["person_id"])
    old = old.format(**{k: "" if v is None else v for k, v in person.items()})
    result = _rectify(county, child["person_id"], field, old, new)
    assert result.exit_code == 1
    assert message in result.output
    if field == "surname" and old == "Nobody":  # names the value people actually saw
        assert repr(child["surname"]) in result.output
    assert rectification.listed(county.engine()) == []


def test_unknown_person_and_unaccountable_corrections_are_refused(county):
    result = _rectify(county, "PNOSUCHPERSON", "surname", "A", "B")
    assert result.exit_code == 1
    assert "no person PNOSUCHPERSON" in result.output
    with pytest.raises(rectification.RectificationError, match="needs a reason"):
        rectification.rectify(
            county.engine(), person_id="P1", record_ids=["a|b|c"], field="surname",
            old="A", new="B", current="A", field_source="school.pupils", reason=" ",
            requester="mother", recorded_by="dpo",
        )  # fmt: skip
    assert rectification.viewers(county.engine(), [], datetime.now(UTC)) == []


def test_old_value_matches_however_it_is_written(county):
    """``--old`` is compared as the field's value, not as typed: case, spacing, format."""
    child = _pupil(county)
    result = _rectify(county, child["person_id"], "surname", child["surname"].upper(), "Exemplar")
    assert result.exit_code == 0, result.output
    assert rectification.normalise_value("postcode", "xw16  8yw") == "XW16 8YW"
    assert rectification.normalise_value("sex", "female") == "F"


def _golden(rows: list[dict]) -> pl.DataFrame:
    base = {
        "forename": "Ada", "surname": "Lowe", "alternative_names": [], "dob": date(2015, 1, 1),
        "age": 11, "is_child": True, "date_of_death": None, "deceased": False,
        "postcode": "XW16 3WE", "postcode_district": "XW16",
        "field_sources": '{"surname": "school.pupils"}',
    }  # fmt: skip
    types = {"alternative_names": pl.List(pl.String), "date_of_death": pl.Date}
    return pl.DataFrame([{**base, **row} for row in rows], schema_overrides=types)


def test_correction_holds_while_the_source_is_silent_and_split_parts_keep_it():
    """Applied per person the records reach tonight: a part still showing the old value
    keeps the correction (no lapse); a source with no value does not end it."""
    person = _golden(
        [
            {"person_id": "P1", "surname": "Lowe"},  # the source still has the old value
            {"person_id": "P2", "surname": "Other"},  # split off: a new value of its own
            {"person_id": "P3", "surname": None},  # source sends nothing
        ]
    )
    records = pl.DataFrame(
        {"person_id": ["P1", "P2", "P3"], "record_id": ["s|t|1", "s|t|2", "s|t|3"]}
    )
    active = pl.DataFrame(
        {
            "id": [1, 2],
            "record_ids": [["s|t|1", "s|t|2"], ["s|t|3"]],
            "field": ["surname", "surname"],
            "new_value": ["Fixed", "Fixed"],
            "source_value": ["Lowe", "Lowe"],
        }
    )
    out, lapsed = corrections.apply(person, records, active, date(2026, 11, 20), 18)
    assert out["surname"].to_list() == ["Fixed", "Other", "Fixed"]
    assert out.filter(pl.col("person_id") == "P1")["alternative_names"].to_list() == [["Ada Lowe"]]
    assert lapsed == []
    only_new = active.filter(pl.col("id") == 1).with_columns(
        pl.Series("record_ids", [["s|t|2"]], dtype=pl.List(pl.String))
    )
    out, lapsed = corrections.apply(person, records, only_new, date(2026, 11, 20), 18)
    assert out["surname"].to_list() == ["Lowe", "Other", None]
    assert lapsed == [corrections.Lapsed(1, "school.pupils now delivers a new value")]


def test_a_corrected_dob_or_date_of_death_rederives_age_child_and_deceased():
    person = _golden([{"person_id": "P1"}])
    records = pl.DataFrame({"person_id": ["P1"], "record_id": ["s|t|1"]})
    active = pl.DataFrame(
        {
            "id": [1, 2],
            "record_ids": [["s|t|1"], ["s|t|1"]],
            "field": ["dob", "date_of_death"],
            "new_value": ["2005-06-01", "2026-01-02"],
            "source_value": ["2015-01-01", None],
        }
    )
    out, _ = corrections.apply(person, records, active, date(2026, 11, 20), 18)
    row = out.row(0, named=True)
    assert (row["dob"], row["age"], row["is_child"]) == (date(2005, 6, 1), 21, False)
    assert (row["date_of_death"], row["deceased"]) == (date(2026, 1, 2), True)
