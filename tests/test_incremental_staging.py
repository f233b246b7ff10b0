"""Staging a delivery by reusing the previous one's work gives exactly the from-scratch rows.

Sources deliver full snapshots; staging takes the values of records it staged before from
the previous delivery (``_record_hash``). These tests pin down that nothing a user relies
on changes: staged and quarantine rows (every column but load time) are those a fresh
staging gives, whatever changed between the nights, and a changed record is restaged.
"""

from datetime import date
from pathlib import Path

import polars as pl
import pytest
from conftest import police_tables, to_per_delivery_layout
from polars.testing import assert_frame_equal

from warehouse.landing import Delivery
from warehouse.reader import RawTable, parse_csv
from warehouse.staging import RECORD_HASH, StagedTable, stage_table
from warehouse.store import connect, load_delivery, migrate_layout, per_delivery_sql
from warehouse.tombstone import Tombstones, record_hash

KEY = b"k" * 32

EH_HEADER = (
    "eh_person_id,family_id,forename,surname,dob,sex,nhs_number,upn,address_line_1,"
    "address_line_2,town,postcode,role_in_family,updated_at\n"
)
NIGHT_1 = [
    "E1,F1,Amy,Test,2015-01-01,F,943 476 5919,B801200005001,1 Road,,Town,ta1 2dy,child,"
    "2026-11-01T10:00:00",
    "E2,F1,Ben,Test,2015-01-01,M,9434765918,A801200005001,,,,not a postcode,child,",
    "E3,F1,Cat,Test,,F,,,,,,,parent,",
    "E4,F2,Dan,Other,2012-05-06,M,,,2 Lane,,Town,ZZ9 9ZZ,child,2026-11-02T09:00:00",
    "E5,F2,,Other,2012-05-06,M,,,,,,,child,",  # missing forename: quarantined
    "E6,F2,Eve,Other,2014-13-01,F,,,,,,,child,",  # bad date: quarantined
    "E7,F3,Fay,Third,2016-02-02,F,,b801200005001,,,,,child,",
    "E8,F3,Gus,Third,2016-02-02,M,,,,,,,child,",
]
NIGHT_2 = [
    # E2 moved before E1 (record numbers shift); E1 itself unchanged.
    "E2,F1,Ben,Test,2015-01-01,M,9434765918,A801200005001,,,,not a postcode,child,",
    "E1,F1,Amy,Test,2015-01-01,F,943 476 5919,B801200005001,1 Road,,Town,ta1 2dy,child,"
    "2026-11-01T10:00:00",
    # E3 changed (moved house): must be restaged with the new values.
    "E3,F1,Cat,Test,,F,,,9 New Street,,Town,TA1 2DY,parent,2026-11-19T08:00:00",
    # E4 removed. E5 unchanged and still broken. E6 corrected: now stages.
    "E5,F2,,Other,2012-05-06,M,,,,,,,child,",
    "E6,F2,Eve,Other,2014-12-01,F,,,,,,,child,",
    # A new record that repeats E7's key *before* it: the unchanged E7 becomes the duplicate.
    "E7,F9,Fay,Newkey,2016-02-02,F,,,,,,,child,",
    "E7,F3,Fay,Third,2016-02-02,F,,b801200005001,,,,,child,",
    # E8 unchanged, but erased since night 1 (a tombstone was added between the nights).
    "E8,F3,Gus,Third,2016-02-02,M,,,,,,,child,",
    # New records: a birth, and an exact copy of an earlier unchanged record's key.
    "E9,F1,Hal,Test,2026-11-18,M,,,1 Road,,Town,TA1 2DY,child,",
    "E1,F1,Amy,Test,2015-01-01,F,943 476 5919,B801200005001,1 Road,,Town,ta1 2dy,child,"
    "2026-11-01T10:00:00",
    # A short record identical in its fields to nothing staged: wrong field count.
    "E10,F1,Ivy",
]


def _raw(sources, lines: list[str]) -> RawTable:
    data = (EH_HEADER + "\n".join(lines) + "\n").encode()
    frame = parse_csv(data, Path("people.csv"), sources["council_eh"], "people")
    return RawTable("council_eh", "people", "people.csv", "sha", frame)


def _stage(sources, lines, tombstones=None, previous=None) -> StagedTable:
    return stage_table(_raw(sources, lines), sources["council_eh"], tombstones, previous)


def _erased(*keys: str) -> Tombstones:
    return Tombstones.of([record_hash(f"council_eh|people|{k}", KEY) for k in keys], KEY)


@pytest.mark.parametrize("tombstones", [None, "E8"])
def test_incremental_staging_equals_staging_from_scratch(sources, tombstones):
    stones = _erased(tombstones) if tombstones else None
    night_1 = _stage(sources, NIGHT_1)
    incremental = _stage(sources, NIGHT_2, stones, previous=night_1.staged)
    scratch = _stage(sources, NIGHT_2, stones)
    assert_frame_equal(incremental.staged, scratch.staged)
    assert_frame_equal(incremental.quarantine, scratch.quarantine)
    reasons = dict(scratch.quarantine.select("_row_number", "_reason_code").iter_rows())
    expected = {4: "missing_required", 7: "duplicate_key", 10: "duplicate_key"}
    expected[11] = "wrong_field_count,missing_required"
    if tombstones:
        expected[8] = "erased"
    assert reasons == expected


def test_a_changed_record_is_restaged_and_an_unchanged_one_reused(sources):
    night_1 = _stage(sources, NIGHT_1)
    # Doctor the previous values of the unchanged E1: if they come through, the record was
    # reused; the changed E3 must not pick up its old row's values.
    doctored = night_1.staged.with_columns(
        pl.when(pl.col("eh_person_id") == "E1")
        .then(pl.lit("Reused"))
        .otherwise(pl.col("surname"))
        .alias("surname")
    )
    result = _stage(sources, NIGHT_2, previous=doctored).staged
    by_id = {r["eh_person_id"]: r for r in result.iter_rows(named=True)}
    assert by_id["E1"]["surname"] == "Reused"
    assert by_id["E1"]["_row_number"] == 2  # its new record number, not night 1's
    assert by_id["E3"]["address_line_1"] == "9 New Street"
    assert by_id["E3"]["postcode_valid"] is True
    assert by_id["E6"]["dob"] == date(2014, 12, 1)


def test_a_record_staged_under_other_rules_is_not_reused(sources):
    """The record hash covers the staging rules: another date format restages all."""
    source = sources["council_eh"]
    night_1 = _stage(sources, NIGHT_1)
    doctored = night_1.staged.with_columns(pl.lit("Reused").alias("surname"))
    other = source.model_copy(update={"date_formats": ["%Y-%m-%d", "%d/%m/%Y"]})
    result = stage_table(_raw(sources, NIGHT_2), other, previous=doctored)
    assert "Reused" not in result.staged["surname"].to_list()
    assert_frame_equal(
        result.staged.drop(RECORD_HASH), _stage(sources, NIGHT_2).staged.drop(RECORD_HASH)
    )


def test_same_fields_with_a_shape_error_are_not_reused(sources):
    """A record that was whole last night and is short tonight is judged afresh."""
    line = "E1,F1,Amy,Test,2015-01-01,F,,,,,,,child,"
    night_1 = _stage(sources, [line])
    short = _stage(sources, [line.rstrip(",")], previous=night_1.staged)
    assert short.staged.is_empty()
    assert short.quarantine["_reason_code"].to_list() == ["wrong_field_count"]


# -- through the warehouse ------------------------------------------------------------------


def _rows(con, schema: str, table: str, day: str) -> pl.DataFrame:
    """What the delivery of ``day`` left in ``schema`` (one row per record it carried)."""
    name = f"police__{table}"
    relation = (
        f'quarantine."{name}"' if schema == "quarantine" else f"({per_delivery_sql(schema, name)})"
    )
    return (
        con.sql(
            f"SELECT * EXCLUDE (_loaded_at) FROM {relation} "
            "WHERE _extract_date = ? ORDER BY _row_number",
            params=[date.fromisoformat(day)],
        )
        .pl()
        .drop(RECORD_HASH, strict=False)
    )


def _police_nights() -> tuple[dict, dict]:
    night_1 = police_tables(6)
    night_1["persons"][4]["dob"] = "31/02/2015"  # quarantined
    night_2 = police_tables(7)
    night_2["persons"][4]["dob"] = "31/02/2015"
    night_2["persons"][1]["postcode"] = "TA1 2DY"  # moved
    del night_2["persons"][2]  # N3 no longer delivered
    night_2["persons"].insert(0, dict(night_2["persons"][2]))  # N4's key repeated first
    night_2["incidents"][0]["dash_risk"] = "high"
    return night_1, night_2


@pytest.mark.parametrize("old_warehouse", ["", "per_delivery", "per_delivery_unhashed"])
def test_second_delivery_loads_as_if_from_scratch(
    tmp_path, delivery_writer, sources, old_warehouse
):
    """Night 2 loaded on top of night 1 (tombstone added in between) equals night 2 loaded
    into an empty warehouse; also when night 1 was stored as every delivery's copy of each
    record (converted on opening), with or without staged record hashes."""
    police = sources["police"]
    night_1, night_2 = _police_nights()
    stones = Tombstones.of([record_hash("police|persons|N6", KEY)], KEY)
    first = delivery_writer("police", "2026-11-19", night_1)
    second = delivery_writer("police", "2026-11-20", night_2)

    nightly = connect(tmp_path / "nightly.duckdb")
    load_delivery(nightly, Delivery("police", date(2026, 11, 19), first), police)
    if old_warehouse:
        to_per_delivery_layout(nightly, keep_hashes=old_warehouse == "per_delivery")
        assert migrate_layout(nightly) == [f"police__{t}" for t in sorted(police.tables)]
    result = load_delivery(nightly, Delivery("police", date(2026, 11, 20), second), police, stones)
    scratch = connect(tmp_path / "scratch.duckdb")
    fresh = load_delivery(scratch, Delivery("police", date(2026, 11, 20), second), police, stones)

    assert result.tables == fresh.tables
    for table in police.tables:
        for schema in ("raw", "staged", "quarantine"):
            assert_frame_equal(
                _rows(nightly, schema, table, "2026-11-20"),
                _rows(scratch, schema, table, "2026-11-20"),
            )
    reasons = dict(
        scratch.execute(
            'SELECT nominal_id, _reason_code FROM quarantine."police__persons"'
        ).fetchall()
    )
    assert reasons == {"N5": "unparseable_date", "N4": "duplicate_key", "N6": "erased"}
    hashes = nightly.execute(
        f"SELECT count(*), count({RECORD_HASH}) FROM "
        f"({per_delivery_sql('staged', 'police__persons')}) WHERE _extract_date = '2026-11-20'"
    ).fetchall()
    assert hashes[0][0] == hashes[0][1] > 0  # tonight's rows can be reused tomorrow
    nightly.close()
    scratch.close()
