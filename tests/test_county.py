"""A generated county through the real nightly job: every row accounted for, exactly the
deliberately broken rows quarantined (with their reason), bad identifiers flagged."""

import duckdb
import polars as pl
import pytest
from conftest import sdv_load
from typer.testing import CliRunner

from pipelines.cli import app
from warehouse.store import per_delivery_sql

HOUSEHOLDS = 300


@pytest.fixture(scope="module")
def county(tmp_path_factory):
    root = tmp_path_factory.mktemp("county")
    runner = CliRunner()
    generated = runner.invoke(
        app,
        [
            "generate",
            "--households",
            str(HOUSEHOLDS),
            "--seed",
            "11",
            "--extract-date",
            "2026-11-20",
            "--deliveries",
            "2",
            "--out",
            str(root),
        ],
    )
    assert generated.exit_code == 0, generated.output
    loaded = sdv_load(root / "landing", root / "data")
    assert loaded.exit_code == 0, loaded.output
    return root


def query(root, sql: str) -> pl.DataFrame:
    con = duckdb.connect(str(root / "data" / "warehouse.duckdb"), read_only=True)
    try:
        return con.sql(sql).pl()
    finally:
        con.close()


def tables(root, schema: str) -> list[str]:
    return query(
        root,
        "SELECT table_name FROM information_schema.tables "
        f"WHERE table_schema = '{schema}' ORDER BY 1",
    )["table_name"].to_list()


def test_both_deliveries_of_all_five_sources_loaded(county):
    loaded = query(
        county,
        "SELECT source, count(*) AS n FROM meta.deliveries "
        "WHERE status = 'loaded' GROUP BY 1 ORDER BY 1",
    )
    assert loaded.rows() == [
        (s, 2) for s in ("council_csc", "council_eh", "health", "police", "school")
    ]
    assert len(tables(county, "raw")) == 14


def test_every_delivered_row_is_in_raw_and_in_staged_or_quarantine(county):
    for name in tables(county, "raw"):
        counts = query(
            county,
            f"""
            SELECT (SELECT count(*) FROM ({per_delivery_sql("raw", name)})) AS raw,
                   (SELECT count(*) FROM ({per_delivery_sql("staged", name)})) AS staged,
                   (SELECT count(*) FROM quarantine."{name}") AS quarantined""",
        ).row(0)
        assert counts[0] == counts[1] + counts[2], name
        assert counts[0] > 0, name


def test_exactly_the_malformed_rows_are_quarantined_with_their_reason(county):
    truth = pl.read_csv(county / "truth" / "malformed_rows.csv", infer_schema=False)
    expected = truth.filter(pl.col("expected_outcome") == "quarantine").select(
        "source", "table", "extract_date", pl.col("row_number").cast(pl.Int64), pl.col("defect")
    )
    assert expected.height > 0
    got = pl.concat(
        [
            query(
                county,
                f"""SELECT '{name.split("__")[0]}' AS source,
                                 '{name.split("__")[1]}' AS "table",
                                 strftime(_extract_date, '%Y-%m-%d') AS extract_date,
                                 _row_number AS row_number, _reason_code AS defect
                          FROM quarantine."{name}" """,
            )
            for name in tables(county, "quarantine")
        ]
    )
    key = ["source", "table", "extract_date", "row_number", "defect"]
    assert sorted(got.select(key).rows()) == sorted(expected.select(key).rows())


def test_flagged_identifiers_are_kept_and_marked_invalid(county):
    truth = pl.read_csv(county / "truth" / "malformed_rows.csv", infer_schema=False)
    flagged = truth.filter(pl.col("expected_outcome") == "flag")
    assert flagged.height > 0
    for row in flagged.iter_rows(named=True):
        name = f"{row['source']}__{row['table']}"
        found = query(
            county,
            f"""SELECT "{row["column"]}_valid" AS valid FROM ({per_delivery_sql("staged", name)})
                                  WHERE _row_number = {int(row["row_number"])}
                                    AND _extract_date = DATE '{row["extract_date"]}'""",
        )
        assert found["valid"].to_list() == [False], row


def test_loading_again_changes_nothing(county):
    before = query(county, "SELECT count(*) AS n, max(recorded_at) AS t FROM meta.deliveries")
    raw_before = query(county, 'SELECT count(*) AS n FROM raw."health__patients"')
    result = sdv_load(county / "landing", county / "data")
    assert result.exit_code == 0, result.output
    assert query(county, "SELECT count(*) AS n, max(recorded_at) AS t FROM meta.deliveries").equals(
        before
    )
    assert query(county, 'SELECT count(*) AS n FROM raw."health__patients"').equals(raw_before)
