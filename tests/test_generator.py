"""The synthetic county generator: format contract, truth files and the hard linkage cases.

Every other test and benchmark uses this generator as its fixture factory, so these tests
check what they rely on: files exactly in the extract-spec format, manifests that verify,
ground truth that joins to every person-level row, deliberate defects that really are
defects (and nothing else is), deterministic output, and the cases that make linkage hard.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import date, datetime
from pathlib import Path

import pytest

from matching.identifiers import is_valid_nhs_number, is_valid_upn, normalise_postcode
from synth.generate import GenerationSummary, generate_county

EXTRACT = date(2026, 3, 2)


def _w(text: str) -> list[str]:
    return text.split()


# Written out from extract-spec.md (not imported from synth) so a drift in either shows up.
# "*" marks a required column; ":d" date, ":t" timestamp, ":i" integer, ":b" boolean.
SPEC: dict[str, list[str]] = {
    "council_csc/people": _w(
        "csc_person_id* forename* middle_names surname* former_surname dob:d "
        "dob_estimated:b sex ethnicity nhs_number upn address_line_1 "
        "address_line_2 town postcode uprn date_of_death:d updated_at:t"
    ),
    "council_csc/episodes": _w(
        "episode_id* csc_person_id* episode_type* start_date*:d end_date:d "
        "category team worker_name worker_email summary summary_is_opinion:b "
        "confidential_from_subject:b"
    ),
    "council_csc/relationships": _w("csc_person_id* related_csc_person_id* relationship*"),
    "council_eh/people": _w(
        "eh_person_id* family_id* forename* surname* dob:d sex nhs_number upn "
        "address_line_1 address_line_2 town postcode role_in_family "
        "updated_at:t"
    ),
    "council_eh/episodes": _w(
        "eh_episode_id* family_id* start_date*:d end_date:d lead_practitioner "
        "lead_practitioner_email primary_need outcome"
    ),
    "police/persons": _w(
        "nominal_id* forename* surname* dob:d age_at_incident:i sex "
        "address_line_1 town postcode pnc_id"
    ),
    "police/incidents": _w(
        "incident_ref* occurred_at*:t incident_type* offence dash_risk "
        "encompass_notified:b location_postcode"
    ),
    "police/involvements": _w("incident_ref* nominal_id* role*"),
    "health/patients": _w(
        "local_patient_id* nhs_number given_name* family_name* birth_date*:d "
        "gender address_line_1 address_line_2 town postcode gp_practice_code"
    ),
    "health/encounters": _w(
        "encounter_id* local_patient_id* encounter_type* encounter_date*:d "
        "reason safeguarding_concern:b"
    ),
    "school/pupils": _w(
        "upn* former_upn school_urn* school_name legal_forename* "
        "preferred_forename legal_surname* preferred_surname dob*:d gender "
        "year_group sen_provision fsm_eligible:b address_line_1 address_line_2 "
        "town postcode uprn entry_date:d leaving_date:d"
    ),
    "school/contacts": _w(
        "upn* contact_forename* contact_surname* relationship "
        "parental_responsibility:b address_line_1 postcode phone priority:i"
    ),
    "school/attendance": _w(
        "upn* school_urn* term* sessions_possible*:i "
        "sessions_authorised_absent:i sessions_unauthorised_absent:i"
    ),
    "school/exclusions": _w("upn* school_urn* start_date*:d category* sessions:i reason"),
}
PERSON_KEYS = {
    "council_csc/people": ("csc_person_id",),
    "council_eh/people": ("eh_person_id",),
    "police/persons": ("nominal_id",),
    "health/patients": ("local_patient_id",),
    "school/pupils": ("upn",),
    "school/contacts": ("upn", "priority"),
}
ENUMS: dict[tuple[str, str], set[str]] = {
    ("council_csc/people", "sex"): set(_w("M F U")),
    ("council_csc/episodes", "episode_type"): set(
        _w("referral assessment cin_plan cp_plan looked_after care_leaver")
    ),
    ("council_csc/relationships", "relationship"): set(
        _w("mother father step_parent carer sibling grandparent other")
    ),
    ("council_eh/people", "role_in_family"): set(_w("child parent carer other_adult")),
    ("police/persons", "sex"): set(_w("M F U")),
    ("police/incidents", "incident_type"): set(
        _w("domestic_abuse missing_person child_concern asb crime")
    ),
    ("police/incidents", "dash_risk"): set(_w("standard medium high")),
    ("police/involvements", "role"): set(
        _w("victim suspect witness child_present missing_person reporting_person")
    ),
    ("health/patients", "gender"): set(_w("male female unknown")),
    ("health/encounters", "encounter_type"): set(
        _w(
            "ed_attendance health_visitor_contact school_nurse_contact "
            "camhs_referral maternity_booking safeguarding_referral"
        )
    ),
    ("school/pupils", "gender"): set(_w("M F")),
    ("school/pupils", "sen_provision"): set(_w("N K E")),
    ("school/pupils", "year_group"): {"N1", "R", *map(str, range(1, 15))},
    ("school/contacts", "relationship"): set(_w("mother father carer grandparent other")),
    ("school/exclusions", "category"): set(_w("SUSP PERM")),
}
QUARANTINE = {"missing_required", "unparseable_date", "bad_integer", "bad_boolean"}
FLAGGED = {"invalid_nhs_number", "invalid_upn", "invalid_postcode"}


def _columns(table: str) -> list[tuple[str, str, bool]]:
    """(name, type letter, required) from the shorthand above."""
    out = []
    for token in SPEC[table]:
        name, _, kind = token.partition(":")
        out.append((name.rstrip("*"), kind or "s", name.endswith("*")))
    return out


def _read(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return list(csv.reader(fh))


def _dicts(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


class County:
    """A generated county read back: rows by (date, table) and the truth files."""

    def __init__(self, summary: GenerationSummary) -> None:
        self.summary = summary
        self.rows: dict[tuple[str, str], list[dict[str, str]]] = {}
        for day in summary.extract_dates:
            for table in SPEC:
                source, name = table.split("/")
                path = summary.landing / source / day.isoformat() / f"{name}.csv"
                self.rows[(day.isoformat(), table)] = _dicts(path)
        self.persons = {r["true_person_id"]: r for r in _dicts(summary.truth / "persons.csv")}
        self.person_rows = _dicts(summary.truth / "person_rows.csv")
        self.relationships = _dicts(summary.truth / "relationships.csv")
        self.malformed = _dicts(summary.truth / "malformed_rows.csv")
        self.bad: dict[tuple[str, str, int], dict[str, str]] = {}
        for m in self.malformed:
            key = (m["extract_date"], f"{m['source']}/{m['table']}", int(m["row_number"]))
            assert key not in self.bad, f"row malformed twice: {key}"
            self.bad[key] = m

    def clean(self, day: str, table: str) -> list[dict[str, str]]:
        return [
            r
            for n, r in enumerate(self.rows[(day, table)], start=1)
            if (day, table, n) not in self.bad
        ]

    def last(self) -> str:
        return self.summary.extract_dates[-1].isoformat()


@pytest.fixture(scope="module")
def county(tmp_path_factory: pytest.TempPathFactory) -> County:
    out = tmp_path_factory.mktemp("county")
    summary = generate_county(500, seed=11, extract_date=EXTRACT, out=out, deliveries=2)
    return County(summary)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = generate_county(200, seed=3, extract_date=EXTRACT, out=tmp_path / "a", deliveries=2)
    generate_county(200, seed=3, extract_date=EXTRACT, out=tmp_path / "b", deliveries=2)
    generate_county(200, seed=4, extract_date=EXTRACT, out=tmp_path / "c", deliveries=2)
    first, again, other = (_tree_bytes(tmp_path / n) for n in "abc")
    assert first == again
    assert len(first) == 2 * len(SPEC) + 2 * 5 + 4  # CSVs, manifests per delivery; truth
    assert set(first) == set(other)
    assert all(first[k] != other[k] for k in first if k.endswith("patients.csv"))
    assert a.households == 200
    assert a.extract_dates == [date(2026, 3, 1), EXTRACT]


def test_output_does_not_depend_on_python_hash_randomisation(tmp_path: Path) -> None:
    """Separate processes (different PYTHONHASHSEED) must still write identical bytes."""
    script = (
        "import sys; from datetime import date; from pathlib import Path;"
        "from synth.generate import generate_county;"
        "generate_county(150, seed=9, extract_date=date(2026, 3, 2), out=Path(sys.argv[1]))"
    )
    root = Path(__file__).resolve().parents[1]
    for n in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": n}
        subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / n)], check=True, cwd=root, env=env
        )
    assert _tree_bytes(tmp_path / "1") == _tree_bytes(tmp_path / "2")


def test_summary_describes_what_was_written(county: County) -> None:
    s = county.summary
    assert s.landing.name == "landing" and s.truth.name == "truth"
    assert s.households == 500
    assert s.persons == len(county.persons)
    assert s.rows_per_table == {t: len(county.rows[(county.last(), t)]) for t in SPEC}
    assert s.malformed_rows == len(county.malformed)


def test_every_table_has_exactly_the_spec_columns(county: County) -> None:
    for day in county.summary.extract_dates:
        for table in SPEC:
            source, name = table.split("/")
            header = _read(county.summary.landing / source / day.isoformat() / f"{name}.csv")[0]
            assert header == [c for c, _, _ in _columns(table)], table


def test_manifests_match_their_files(county: County) -> None:
    landing = county.summary.landing
    sources = sorted(p.name for p in landing.iterdir())
    assert sources == ["council_csc", "council_eh", "health", "police", "school"]
    for source in sources:
        for folder in sorted((landing / source).iterdir()):
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            assert manifest["source"] == source
            assert manifest["extract_date"] == folder.name
            csvs = sorted(p.name for p in folder.glob("*.csv"))
            assert sorted(manifest["files"]) == csvs
            for name, entry in manifest["files"].items():
                data = (folder / name).read_bytes()
                assert entry["sha256"] == hashlib.sha256(data).hexdigest()
                assert entry["rows"] == len(_read(folder / name)) - 1
                assert data.endswith(b"\r\n")


def test_health_files_carry_a_bom_and_others_do_not(county: County) -> None:
    folder = county.summary.landing
    day = county.last()
    assert (folder / "health" / day / "patients.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert not (folder / "school" / day / "pupils.csv").read_bytes().startswith(b"\xef\xbb\xbf")


def test_person_rows_truth_lists_every_person_level_row_once(county: County) -> None:
    truth = Counter(
        (r["extract_date"], f"{r['source']}/{r['table']}", r["local_key"])
        for r in county.person_rows
    )
    assert max(truth.values()) == 1
    in_files = Counter()
    for day in county.summary.extract_dates:
        for table, cols in PERSON_KEYS.items():
            for row in county.rows[(day.isoformat(), table)]:
                in_files[(day.isoformat(), table, "|".join(row[c] for c in cols))] += 1
    assert max(in_files.values()) == 1, "local keys must be unique within a delivery"
    assert set(in_files) == set(truth)
    assert {r["true_person_id"] for r in county.person_rows} <= set(county.persons)


def test_malformed_rows_really_have_their_defect(county: County) -> None:
    assert county.malformed, "the fixture county should carry deliberate defects"
    for (day, table, n), m in county.bad.items():
        row = county.rows[(day, table)][n - 1]
        source, name = table.split("/")
        assert m["file"].endswith(f"{source}/{day}/{name}.csv")
        if table in PERSON_KEYS:
            assert m["local_key"] == "|".join(row[c] for c in PERSON_KEYS[table])
        kinds = {c: (k, req) for c, k, req in _columns(table)}
        kind, required = kinds[m["column"]]
        value = row[m["column"]]
        defect = m["defect"]
        assert m["expected_outcome"] == ("quarantine" if defect in QUARANTINE else "flag")
        if defect == "missing_required":
            assert required and value == ""
            assert m["column"] not in PERSON_KEYS.get(table, ())
        elif defect == "unparseable_date":
            assert kind in "dt" and value
            with pytest.raises(ValueError):
                (date if kind == "d" else datetime).fromisoformat(value)
        elif defect == "bad_integer":
            assert kind == "i"
            with pytest.raises(ValueError):
                int(value)
        elif defect == "bad_boolean":
            assert kind == "b" and value not in ("true", "false", "")
        elif defect == "invalid_nhs_number":
            assert value and not is_valid_nhs_number(value)
        elif defect == "invalid_upn":
            assert value and not is_valid_upn(value)
        elif defect == "invalid_postcode":
            assert value and normalise_postcode(value) is None
        else:
            pytest.fail(f"unknown defect {defect}")
    found = {m["defect"] for m in county.malformed}
    assert found == QUARANTINE | FLAGGED


def test_rows_not_listed_as_malformed_are_valid(county: County) -> None:
    for day in county.summary.extract_dates:
        d = day.isoformat()
        for table in SPEC:
            for row in county.clean(d, table):
                for col, kind, required in _columns(table):
                    v = row[col]
                    if required:
                        assert v, (table, col, row)
                    if not v:
                        continue
                    if kind == "d":
                        assert date.fromisoformat(v) <= day, (table, col, v)
                    elif kind == "t":
                        assert datetime.fromisoformat(v) < datetime.combine(
                            day, datetime.min.time()
                        )
                    elif kind == "i":
                        assert int(v) >= 0
                    elif kind == "b":
                        assert v in ("true", "false"), (table, col, v)
                    if col == "nhs_number":
                        assert is_valid_nhs_number(v), v
                    if col in ("upn", "former_upn"):
                        assert is_valid_upn(v), (table, v)
                    if col in ("postcode", "location_postcode"):
                        assert normalise_postcode(v) is not None, (table, v)
                    if (table, col) in ENUMS:
                        assert v in ENUMS[(table, col)], (table, col, v)


def test_nhs_numbers_are_in_the_test_range_and_valid_unless_flagged(county: County) -> None:
    flagged = {
        (m["extract_date"], f"{m['source']}/{m['table']}", int(m["row_number"]))
        for m in county.malformed
        if m["defect"] == "invalid_nhs_number"
    }
    seen = spaced = 0
    for (day, table), rows in county.rows.items():
        if not rows or "nhs_number" not in rows[0]:
            continue
        for n, row in enumerate(rows, start=1):
            v = row["nhs_number"]
            if not v:
                continue
            seen += 1
            spaced += " " in v
            digits = v.replace(" ", "")
            assert len(digits) == 10 and digits.startswith("999"), v
            assert is_valid_nhs_number(v) == ((day, table, n) not in flagged)
    assert seen and spaced, "some NHS numbers should be delivered with spaces"


def test_references_point_at_rows_that_exist(county: County) -> None:
    for day in county.summary.extract_dates:
        d = day.isoformat()
        csc = {r["csc_person_id"] for r in county.rows[(d, "council_csc/people")]}
        for r in county.clean(d, "council_csc/episodes"):
            assert r["csc_person_id"] in csc
        for r in county.clean(d, "council_csc/relationships"):
            assert r["csc_person_id"] in csc and r["related_csc_person_id"] in csc
        eh_families = {r["family_id"] for r in county.rows[(d, "council_eh/episodes")]}
        for r in county.clean(d, "council_eh/people"):
            assert r["family_id"] in eh_families
        nominals = {r["nominal_id"] for r in county.rows[(d, "police/persons")]}
        incidents = {r["incident_ref"] for r in county.rows[(d, "police/incidents")]}
        for r in county.clean(d, "police/involvements"):
            assert r["nominal_id"] in nominals and r["incident_ref"] in incidents
        patients = {r["local_patient_id"] for r in county.rows[(d, "health/patients")]}
        for r in county.clean(d, "health/encounters"):
            assert r["local_patient_id"] in patients
        pupils = {r["upn"]: r for r in county.rows[(d, "school/pupils")]}
        for table in ("school/contacts", "school/attendance", "school/exclusions"):
            for r in county.clean(d, table):
                assert r["upn"] in pupils, table
                if table != "school/contacts" and pupils[r["upn"]]["school_urn"]:
                    assert r["school_urn"] == pupils[r["upn"]]["school_urn"]
        for r in county.clean(d, "school/attendance"):
            absent = int(r["sessions_authorised_absent"]) + int(r["sessions_unauthorised_absent"])
            assert absent <= int(r["sessions_possible"])
        for r in county.clean(d, "school/pupils"):
            assert len(r["school_urn"]) == 6 and r["school_urn"].isdigit()
        for r in county.rows[(d, "health/patients")]:
            code = r["gp_practice_code"]
            assert len(code) == 6 and code[0].isalpha() and code[1:].isdigit()


def _rows_by_person(county: County, day: str) -> dict[str, list[tuple[str, dict[str, str]]]]:
    keyed = {}
    for table, cols in PERSON_KEYS.items():
        for row in county.rows[(day, table)]:
            keyed[(table, "|".join(row[c] for c in cols))] = row
    out: dict[str, list[tuple[str, dict[str, str]]]] = defaultdict(list)
    for r in county.person_rows:
        if r["extract_date"] == day:
            table = f"{r['source']}/{r['table']}"
            out[r["true_person_id"]].append((table, keyed[(table, r["local_key"])]))
    return out


def test_truth_contains_the_hard_linkage_cases(county: County) -> None:
    persons = county.persons
    # Twins: same surname, dob and household, different forenames.
    twins = defaultdict(list)
    for p in persons.values():
        if p["twin_group"]:
            twins[p["twin_group"]].append(p)
    assert twins
    for group in twins.values():
        assert len(group) >= 2
        assert len({(p["surname"], p["dob"], p["true_household_id"]) for p in group}) == 1
        assert len({p["forename"] for p in group}) == len(group)
    rels = defaultdict(dict)
    for r in county.relationships:
        rels[r["true_person_id"]][r["related_true_person_id"]] = r["relationship"]
    # A child in care: related to a parent who lives in a different household.
    in_care = [
        c
        for c, related in rels.items()
        if persons[c]["is_child"] == "true"
        and "carer" in related.values()
        and any(
            rel in ("mother", "father")
            and persons[o]["deceased"] == "false"
            and persons[o]["true_household_id"] != persons[c]["true_household_id"]
            for o, rel in related.items()
        )
    ]
    assert in_care
    # Father and son sharing forename and surname.
    assert any(
        rel == "father"
        and persons[c]["forename"] == persons[f]["forename"]
        and persons[c]["surname"] == persons[f]["surname"]
        for c, related in rels.items()
        for f, rel in related.items()
    )
    assert any(p["deceased"] == "true" for p in persons.values())
    # The same person twice in one source table (health or police), under two keys.
    day = county.last()
    per_table = Counter(
        (r["source"], r["table"], r["true_person_id"])
        for r in county.person_rows
        if r["extract_date"] == day
    )
    dup_tables = {(s, t) for (s, t, _), n in per_table.items() if n > 1 and t != "contacts"}
    assert ("health", "patients") in dup_tables
    # A mover: one person's rows carry different (valid) postcodes.
    by_person = _rows_by_person(county, day)
    movers = [
        pid
        for pid, rows in by_person.items()
        if len(
            {
                normalise_postcode(r["postcode"])
                for _, r in rows
                if normalise_postcode(r["postcode"] or None)
            }
        )
        > 1
    ]
    assert movers
    # School contacts name the adult, not the pupil, and carry no dob.
    contact_people = {r["true_person_id"] for r in county.person_rows if r["table"] == "contacts"}
    assert contact_people
    assert all(persons[p]["is_child"] == "false" for p in contact_people)


def test_messiness_the_spec_promises_is_present(county: County) -> None:
    day = county.last()
    persons = county.persons
    by_person = _rows_by_person(county, day)
    police = county.rows[(day, "police/persons")]
    assert any(not r["dob"] and r["age_at_incident"] for r in police)
    pupils = county.rows[(day, "school/pupils")]
    assert any(r["preferred_forename"] for r in pupils)
    assert any("-" in r["legal_surname"] or " " in r["legal_surname"] for r in pupils)
    assert sum(bool(r["uprn"]) for r in pupils) > 0.8 * len(pupils)
    csc = county.rows[(day, "council_csc/people")]
    assert any(r["former_surname"] for r in csc)
    assert any(r["date_of_death"] for r in csc)
    assert any(r["encompass_notified"] == "true" for r in county.rows[(day, "police/incidents")])
    postcodes = [
        r["postcode"] for t in PERSON_KEYS for r in county.rows[(day, t)] if r.get("postcode")
    ]
    assert any(p != p.upper() or " " not in p for p in postcodes)
    patients = county.rows[(day, "health/patients")]
    assert any(r["address_line_1"].startswith("Flat ") for r in csc + police + patients)
    # Police often hold a nickname or a misspelling; some dobs have day and month swapped.
    nicknamed = swapped = 0
    for pid, rows in by_person.items():
        truth = persons[pid]
        for table, row in rows:
            if table == "police/persons" and row["forename"] != truth["forename"]:
                nicknamed += 1
            dob = row.get("dob") or row.get("birth_date")
            y, m, d = truth["dob"].split("-")
            if dob and m != d and dob == f"{y}-{d}-{m}":
                swapped += 1
    assert nicknamed and swapped
    # Missing identifiers: some patients lack an NHS number, some social care children a UPN
    # (children: adults never have one, so an adult's blank UPN says nothing).
    assert any(not r["nhs_number"] for r in patients)
    csc_children = [
        row
        for pid, rows in by_person.items()
        if persons[pid]["is_child"] == "true"
        for table, row in rows
        if table == "council_csc/people"
    ]
    assert any(r["upn"] for r in csc_children)
    assert any(not r["upn"] for r in csc_children)
    eh_children = [
        r for r in county.rows[(day, "council_eh/people")] if r["role_in_family"] == "child"
    ]
    assert any(r["upn"] for r in eh_children)
    assert any(not r["upn"] for r in eh_children)


def test_two_deliveries_are_full_snapshots_that_differ(county: County) -> None:
    first, second = (d.isoformat() for d in county.summary.extract_dates)
    assert (first, second) == ("2026-03-01", "2026-03-02")
    for source in ("council_csc", "council_eh", "police", "health", "school"):
        folders = sorted(p.name for p in (county.summary.landing / source).iterdir())
        assert folders == [first, second]
    changed = [t for t in SPEC if county.rows[(first, t)] != county.rows[(second, t)]]
    assert "health/patients" in changed and "health/encounters" in changed
    # Local keys are stable: nothing delivered yesterday vanishes from today's snapshot.
    for table, cols in PERSON_KEYS.items():
        keys = [
            {"|".join(r[c] for c in cols) for r in county.rows[(d, table)]} for d in (first, second)
        ]
        assert keys[0] <= keys[1], table
    dates = {r["extract_date"] for r in county.person_rows}
    assert dates == {first, second}
