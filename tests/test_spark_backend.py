"""Linkage on Splink's Spark backend (local mode) agrees with DuckDB, from one saved model.

A small county (150 households) is generated and loaded once. A model is trained on DuckDB
and saved; then the nightly linkage runs twice on copies of the same warehouse, once with
the shipped configuration (DuckDB) and once with the same file but ``model.backend:
spark``. Both read the same model file. The tests compare what each run wrote: the scored
pairs (same pairs, same comparison levels, probabilities equal to rounding) and the
persons (the same records grouped together), then incremental scoring on Spark against
DuckDB's.

The Spark tests need Java (Spark 4 needs 17 or later); they are skipped only when there is
none. pyspark itself comes from the ``spark`` extra, which ``make test`` installs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import sdv_load

from assets.linkage import run_linkage
from matching import model as splink_model
from matching.config import (
    DEFAULT_LINKAGE_CONFIG,
    LinkageConfig,
    LinkageConfigError,
    SparkOptions,
    load_linkage_config,
)
from matching.spark import spark_sql
from matching.standardise import standardise
from synth.generate import generate_county
from warehouse import linked
from warehouse.operational import engine_for
from warehouse.person_rows import read_person_rows, read_relationships
from warehouse.store import connect

HOUSEHOLDS = 150
SEED = 5
EXTRACT = date(2026, 11, 19)
# Splink computes the same sums of match weights on both engines; only floating-point
# rounding may differ.
TOLERANCE = 1e-9

HAS_JAVA = bool(shutil.which("java") or os.environ.get("JAVA_HOME"))


@pytest.fixture(scope="module")
def java() -> None:
    """Spark local mode needs Java 17+: skipped without it on a laptop, a failure in CI
    (``.ci/run`` installs it), so CI never passes without comparing the engines."""
    if HAS_JAVA:
        return
    if os.environ.get("CI"):
        pytest.fail("no Java runtime: .ci/run should have installed one (Spark 4 needs 17+)")
    pytest.skip("no Java runtime (Spark 4 needs Java 17+)")


needs_java = pytest.mark.usefixtures("java")

# Local mode on two cores, sized for a small county: few partitions, no UI, no progress
# bars; the C2 compiler is left out because a JVM that lives a minute never recoups it.
TEST_SPARK = {
    "master": "local[2]",
    "shuffle_partitions": 2,
    "driver_memory": "1g",
    "conf": {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    },
}


def _config_text(backend: str) -> str:
    """The shipped linkage.yaml with the backend (and test-sized Spark options) swapped in."""
    config = load_linkage_config()
    data = config.model_dump(mode="json")
    data["model"] = {"backend": backend, "spark": TEST_SPARK}
    return yaml.safe_dump(data, sort_keys=False)


@dataclass
class Linked:
    pairs: pl.DataFrame
    persons: pl.DataFrame  # record_id, person_id
    run: dict


@dataclass
class County:
    root: Path
    records: pl.DataFrame  # standardised
    model_path: Path
    configs: dict[str, LinkageConfig]

    def link(self, backend: str) -> Linked:
        """``run_linkage`` (full) on a fresh copy of the loaded data with ``backend``."""
        data = self.root / f"data-{backend}"
        shutil.copytree(self.root / "data", data)
        con = connect(data / "warehouse.duckdb")
        try:
            outcome = run_linkage(
                con,
                engine_for(f"sqlite:///{data / 'operational.db'}"),
                self.configs[backend],
                self.model_path.parent,
                full=True,
            )
            pairs = linked.read_table(con, "scored_pairs")
            persons = linked.read_table(con, "person_records")
        finally:
            con.close()
        assert pairs is not None and persons is not None
        return Linked(
            pairs=pairs, persons=persons.select("record_id", "person_id"), run=outcome.run
        )


@pytest.fixture(scope="module")
def county(tmp_path_factory) -> Iterator[County]:
    saved = dict(os.environ)  # the CLI exports its settings to the environment
    root = tmp_path_factory.mktemp("spark_county")
    generate_county(HOUSEHOLDS, SEED, EXTRACT, root / "generated")
    loaded = sdv_load(root / "generated" / "landing", root / "data")
    assert loaded.exit_code == 0, loaded.output
    configs = {}
    for backend in ("duckdb", "spark"):
        path = root / f"linkage-{backend}.yaml"
        path.write_text(_config_text(backend), encoding="utf-8")
        configs[backend] = load_linkage_config(path)
    config = configs["duckdb"]
    con = connect(root / "data" / "warehouse.duckdb", read_only=True)
    try:
        records = standardise(
            read_person_rows(con, config), config, read_relationships(con, config)
        )
    finally:
        con.close()
    trained = splink_model.train(records, config, root / "models")
    yield County(root=root, records=records, model_path=trained.path, configs=configs)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def spark_session(java: None, county: County) -> Iterator[object]:
    """One local Spark session for the module (the JVM takes seconds to start); the
    backend's own ``getOrCreate`` then finds it."""
    from matching.spark import spark_session as make_session

    session = make_session(county.configs["spark"].model.spark)
    yield session
    session.stop()


@pytest.fixture(scope="module")
def duckdb_run(county: County) -> Linked:
    return county.link("duckdb")


@pytest.fixture(scope="module")
def spark_run(county: County, spark_session: object) -> Linked:
    return county.link("spark")


def _joined(duck: pl.DataFrame, spark: pl.DataFrame) -> pl.DataFrame:
    return duck.join(spark, on=["unique_id_l", "unique_id_r"], how="full", suffix="_spark")


def _assert_same_scores(duck: pl.DataFrame, spark: pl.DataFrame) -> None:
    joined = _joined(duck, spark)
    only_duck = joined.filter(pl.col("unique_id_l_spark").is_null())
    only_spark = joined.filter(pl.col("unique_id_l").is_null())
    assert only_duck.is_empty(), f"pairs scored on DuckDB only: {only_duck.head(5)}"
    assert only_spark.is_empty(), f"pairs scored on Spark only: {only_spark.head(5)}"
    difference = (joined["match_probability"] - joined["match_probability_spark"]).abs().max()
    assert difference is not None and difference < TOLERANCE
    weights = (joined["match_weight"] - joined["match_weight_spark"]).abs().max()
    assert weights is not None and weights < 1e-6
    for gamma in (c for c in duck.columns if c.startswith("gamma_")):
        differ = joined.filter(pl.col(gamma) != pl.col(f"{gamma}_spark"))
        assert differ.is_empty(), f"{gamma} differs on {differ.height} pairs"


def _groups(persons: pl.DataFrame) -> set[frozenset[str]]:
    grouped = persons.group_by("person_id").agg("record_id")["record_id"]
    return {frozenset(ids) for ids in grouped.to_list()}


# --- configuration (no Spark needed) ----------------------------------------------------


def test_backend_defaults_to_duckdb():
    assert load_linkage_config().model.backend == "duckdb"


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ({"backend": "bigquery"}, "model.backend"),
        ({"backend": "spark", "spark": {"shuffle_partitions": 0}}, "shuffle_partitions"),
        ({"backend": "spark", "spark": {"driver_memory": "lots"}}, "driver_memory"),
        ({"backend": "spark", "spark": {"break_lineage": "parquet"}}, "checkpoint_dir"),
        ({"backend": "spark", "spark": {"executors": 4}}, "executors"),
    ],
)
def test_invalid_backend_settings_are_refused(tmp_path: Path, model: dict, problem: str):
    data = yaml.safe_load(DEFAULT_LINKAGE_CONFIG.read_text(encoding="utf-8"))
    data["model"] = model
    path = tmp_path / "linkage.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(LinkageConfigError, match=problem):
        load_linkage_config(path)


@pytest.mark.parametrize("lineage", ["parquet", "checkpoint"])
def test_lineage_written_to_storage_needs_a_checkpoint_dir(tmp_path: Path, lineage: str):
    # The counterpart of the refusal above: the same file is accepted once it names the
    # storage, and refused without it, for both ways of writing lineage out.
    data = yaml.safe_load(DEFAULT_LINKAGE_CONFIG.read_text(encoding="utf-8"))
    spark = {"break_lineage": lineage, "checkpoint_dir": "s3a://bucket/checkpoints"}
    data["model"] = {"backend": "spark", "spark": spark}
    path = tmp_path / "linkage.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    options = load_linkage_config(path).model.spark
    assert (options.break_lineage, options.checkpoint_dir) == (lineage, spark["checkpoint_dir"])
    for missing in ({}, {"checkpoint_dir": ""}):
        data["model"]["spark"] = {"break_lineage": lineage, **missing}
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        with pytest.raises(LinkageConfigError, match=f"'{lineage}' needs a checkpoint_dir"):
            load_linkage_config(path)
    # Lineage kept in memory needs no storage.
    assert SparkOptions(break_lineage="persist").checkpoint_dir is None


@pytest.mark.parametrize(
    ("duckdb_sql", "spark"),
    [
        ('"nhs_number_l" = "nhs_number_r"', "`nhs_number_l` = `nhs_number_r`"),
        ("list_has_any(upn_keys_l, upn_keys_r)", "ARRAYS_OVERLAP(upn_keys_l, upn_keys_r)"),
        ("list_contains(surname_alt_l, surname_r)", "ARRAY_CONTAINS(surname_alt_l, surname_r)"),
        ("len(upn_keys_l) = 0", "SIZE(upn_keys_l) = 0"),
        ("len(forename_l) = 0", "LENGTH(forename_l) = 0"),
        (
            "jaro_winkler_similarity(surname_l, surname_r) >= 0.88",
            "JARO_WINKLER(surname_l, surname_r) >= 0.88",
        ),
        ("damerau_levenshtein(a_l, a_r) <= 1", "DAMERAU_LEVENSHTEIN(a_l, a_r) <= 1"),
        ("(day(dob_l) = day(dob_r))::int = 1", "CAST((DAY(dob_l) = DAY(dob_r)) AS INT) = 1"),
        ('l."dob" = r."dob"', "l.`dob` = r.`dob`"),
        ("ELSE", "ELSE"),
    ],
)
def test_saved_duckdb_sql_is_translated_for_spark(duckdb_sql: str, spark: str):
    assert spark_sql(duckdb_sql, {"upn_keys", "surname_alt"}) == spark


# --- Spark local mode ---------------------------------------------------------------------


@needs_java
def test_spark_scores_the_same_pairs_as_duckdb(duckdb_run: Linked, spark_run: Linked):
    assert spark_run.pairs.height == duckdb_run.pairs.height > 0
    _assert_same_scores(duckdb_run.pairs, spark_run.pairs)
    assert duckdb_run.run["model_version"] == spark_run.run["model_version"]


@needs_java
def test_spark_links_the_same_pairs_above_the_match_threshold(
    county: County, duckdb_run: Linked, spark_run: Linked
):
    threshold = county.configs["duckdb"].thresholds.match

    def linked_pairs(pairs: pl.DataFrame) -> set[tuple[str, str]]:
        above = pairs.filter(pl.col("match_probability") >= threshold)
        return set(above.select("unique_id_l", "unique_id_r").iter_rows())

    assert linked_pairs(spark_run.pairs) == linked_pairs(duckdb_run.pairs)
    assert linked_pairs(duckdb_run.pairs)


@needs_java
def test_spark_run_gives_the_same_persons(duckdb_run: Linked, spark_run: Linked):
    assert spark_run.persons.height == duckdb_run.persons.height
    assert _groups(spark_run.persons) == _groups(duckdb_run.persons)
    assert spark_run.run["persons"] == duckdb_run.run["persons"]
    assert spark_run.run["review_pairs"] == duckdb_run.run["review_pairs"]


@needs_java
def test_incremental_scoring_on_spark_matches_duckdb(county: County, spark_session: object):
    """Changed records against the rest and among themselves, as on a second night."""
    ids = county.records["unique_id"].sort()
    changed = set(ids.gather_every(7).to_list())
    duck = splink_model.predict(county.records, county.model_path, changed=changed)
    spark = splink_model.predict(
        county.records,
        county.model_path,
        changed=changed,
        options=county.configs["spark"].model,
    )
    assert duck.height > 0
    _assert_same_scores(duck, spark)
    touches = pl.col("unique_id_l").is_in(changed) | pl.col("unique_id_r").is_in(changed)
    assert spark.filter(~touches).is_empty()
