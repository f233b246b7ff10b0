"""Every quarantine reason, identifier flags that never drop a row, and file-level errors."""

from pathlib import Path

import polars as pl
import pytest

from warehouse.landing import DeliveryError
from warehouse.reader import RawTable, parse_csv
from warehouse.staging import (
    BAD_BOOLEAN,
    BAD_INTEGER,
    DUPLICATE_KEY,
    MISSING_REQUIRED,
    REASON_CODES,
    UNPARSEABLE_DATE,
    WRONG_FIELD_COUNT,
    stage_table,
)

SCHOOL_ATTENDANCE = (
    "upn,school_urn,term,sessions_possible,sessions_authorised_absent,"
    "sessions_unauthorised_absent\r\n"
)


def stage(sources, source: str, table: str, text: str):
    data = text.encode("utf-8")
    frame = parse_csv(data, Path(f"{table}.csv"), sources[source], table)
    return stage_table(RawTable(source, table, f"{table}.csv", "sha", frame), sources[source])


def reasons(result) -> dict[int, str]:
    return dict(result.quarantine.select("_row_number", "_reason_code").iter_rows())


def test_every_reason_code_is_produced_and_explained(sources):
    police = (
        "nominal_id,forename,surname,dob,age_at_incident,sex,address_line_1,town,postcode,pnc_id\n"
        "N1,Alfie,Smith,2014-03-02,,M,,,TA1 2DY,\n"  # good
        "N2,,Smith,2014-03-02,,M,,,,\n"  # missing_required (forename)
        "N3,Bea,Smith,2014-13-45,,F,,,,\n"  # unparseable_date
        "N4,Cal,Smith,,ten,M,,,,\n"  # bad_integer
        "N5,Dot,Smith\n"  # wrong_field_count
        "N1,Alfie,Smith,2014-03-02,,M,,,,\n"  # duplicate_key (repeats record 1)
    )
    result = stage(sources, "police", "persons", police)
    got = reasons(result)
    assert got == {
        2: MISSING_REQUIRED,
        3: UNPARSEABLE_DATE,
        4: BAD_INTEGER,
        5: WRONG_FIELD_COUNT,
        6: DUPLICATE_KEY,
    }
    assert result.staged["nominal_id"].to_list() == ["N1"]
    text = dict(result.quarantine.select("_row_number", "_reason").iter_rows())
    assert text[2] == "required column 'forename' is empty"
    assert "'2014-13-45' is not a date" in text[3]
    assert "'ten' is not a whole number" in text[4]
    assert "3 fields, the header has 10" in text[5]
    assert "repeats record 1" in text[6]

    episodes = (
        "episode_id,csc_person_id,episode_type,start_date,end_date,category,team,worker_name,"
        "worker_email,summary,summary_is_opinion,confidential_from_subject\n"
        "E1,P1,cp_plan,2026-01-05,,NEGLECT,,,,,true,false\n"
        "E2,P1,cp_plan,2026-01-05,,NEGLECT,,,,,yes?,false\n"
    )
    bad_bool = stage(sources, "council_csc", "episodes", episodes)
    assert reasons(bad_bool) == {2: BAD_BOOLEAN}
    seen = {
        MISSING_REQUIRED,
        UNPARSEABLE_DATE,
        BAD_INTEGER,
        WRONG_FIELD_COUNT,
        DUPLICATE_KEY,
        BAD_BOOLEAN,
    }
    assert seen == set(REASON_CODES)


def test_unparseable_timestamp_is_quarantined(sources):
    text = (
        "incident_ref,occurred_at,incident_type,offence,dash_risk,encompass_notified,"
        "location_postcode\n"
        "I1,2026-11-01T22:15:00,domestic_abuse,,high,true,\n"
        "I2,yesterday evening,domestic_abuse,,high,true,\n"
    )
    assert reasons(stage(sources, "police", "incidents", text)) == {2: UNPARSEABLE_DATE}


def test_every_problem_of_a_row_is_listed(sources):
    text = SCHOOL_ATTENDANCE + ",123456,2026-SPR,lots,x,\n"
    result = stage(sources, "school", "attendance", text)
    row = result.quarantine.row(0, named=True)
    assert row["_reason_code"] == f"{MISSING_REQUIRED},{BAD_INTEGER}"
    assert "'upn' is empty" in row["_reason"] and "'lots'" in row["_reason"]


def test_every_row_lands_in_exactly_one_place(sources):
    lines = [SCHOOL_ATTENDANCE.strip()]
    for i in range(200):
        possible = "notanumber" if i % 7 == 0 else "30"
        lines.append(f"B80120000{i:04d},100001,2026-SPR,{possible},1,0")
    result = stage(sources, "school", "attendance", "\n".join(lines) + "\n")
    assert result.staged.height + result.quarantine.height == 200
    assert set(result.staged["_row_number"]) | set(result.quarantine["_row_number"]) == set(
        range(1, 201)
    )


def test_invalid_identifiers_are_flagged_not_dropped(sources):
    text = (
        "eh_person_id,family_id,forename,surname,dob,sex,nhs_number,upn,address_line_1,"
        "address_line_2,town,postcode,role_in_family,updated_at\n"
        "E1,F1,Amy,Test,2015-01-01,F,943 476 5919,B801200005001,,,,ta1 2dy,child,"
        "2026-11-01T10:00:00\n"
        "E2,F1,Ben,Test,2015-01-01,M,9434765918,A801200005001,,,,not a postcode,child,\n"
        "E3,F1,Cat,Test,,F,,,,,,,parent,\n"
    )
    result = stage(sources, "council_eh", "people", text)
    assert result.quarantine.height == 0
    staged = result.staged.sort("_row_number")
    assert staged["nhs_number"].to_list() == ["9434765919", "9434765918", None]
    assert staged["nhs_number_valid"].to_list() == [True, False, None]
    assert staged["upn_valid"].to_list() == [True, False, None]
    assert staged["postcode"].to_list() == ["TA1 2DY", "not a postcode", None]
    assert staged["postcode_valid"].to_list() == [True, False, None]
    assert staged.schema["dob"] == pl.Date
    assert staged.schema["updated_at"] == pl.Datetime("us")


def test_types_are_parsed(sources):
    text = SCHOOL_ATTENDANCE + "B801200005001,100001,2026-SPR, 30 ,2,\n"
    staged = stage(sources, "school", "attendance", text).staged
    assert staged["sessions_possible"].to_list() == [30]
    assert staged["sessions_unauthorised_absent"].to_list() == [None]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "file is empty"),
        (b"upn,school_urn,term,sessions_possible,sessions_authorised_absent\n", "lacks column"),
        (SCHOOL_ATTENDANCE.strip().encode() + b",extra\n", "unexpected column"),
        (
            b"upn,upn,term,sessions_possible,sessions_authorised_absent,"
            b"sessions_unauthorised_absent\n",
            "repeats column",
        ),
        (SCHOOL_ATTENDANCE.encode() + b"B8012\xff\xfe,1,2,3,4,5\n", "line 2: byte"),
        (SCHOOL_ATTENDANCE.encode() + b'"B801,"x"y,1,2,3,4\n', "not valid CSV"),
        (SCHOOL_ATTENDANCE.encode() + b"a,b\x00c,1,2,3,4\n", "not valid CSV"),
    ],
    ids=[
        "empty",
        "missing-column",
        "extra-column",
        "duplicate-header",
        "bad-utf8",
        "bad-quote",
        "nul-byte",
    ],
)
def test_broken_files_are_rejected_with_file_and_reason(sources, data, message):
    with pytest.raises(DeliveryError) as err:
        parse_csv(
            data, Path("/landing/school/2026-11-20/attendance.csv"), sources["school"], "attendance"
        )
    assert "attendance.csv" in str(err.value)
    assert message in str(err.value)


def test_bom_is_ignored(sources):
    data = "\ufeff".encode() + (SCHOOL_ATTENDANCE + "B801200005001,100001,2026-SPR,30,,\n").encode()
    frame = parse_csv(data, Path("attendance.csv"), sources["school"], "attendance")
    assert frame["upn"].to_list() == ["B801200005001"]
