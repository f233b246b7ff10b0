"""Prediction on Splink's Spark backend, with the model file trained on DuckDB.

A regional partnership's records may outgrow one machine's memory for scoring (every
candidate pair is compared); training does not (it samples), so training stays on DuckDB
and only prediction moves. Nothing is retrained for Spark: the saved model is loaded as
it is and only its SQL is translated.

Why translation is needed: a saved Splink model stores each comparison level's SQL in the
dialect it was built in. Splink 5 does not translate a loaded model's comparison levels,
and DuckDB's SQL is not Spark's: ``"col"`` is an identifier in DuckDB and a string literal
in Spark, and the list and string functions have other names. ``spark_model`` rewrites
each condition with sqlglot (DuckDB to Spark) and maps the functions sqlglot cannot know
about from names alone:

- ``list_has_any`` -> ``arrays_overlap`` (sqlglot writes Spark's ``&&``, which Spark
  does not accept for arrays);
- ``jaro_winkler_similarity`` -> ``jaro_winkler``, the Scala UDF Splink ships in its
  similarity jar (``damerau_levenshtein`` comes from the same jar under its DuckDB name);
- ``len`` of a list column -> ``size`` (``len`` means string length in Spark).

The jar is put on the session's classpath here and Splink's ``SparkAPI`` registers its
functions when it is created. Results come back to Polars through Arrow (``toArrow``), so
clustering, hard rules and everything after run unchanged on either backend's pairs.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import sqlglot
from sqlglot import exp

from matching.config import SparkOptions
from matching.model import model_frame, pairs_frame, score

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from splink import Linker

# DuckDB functions whose Spark equivalent has another name; sqlglot parses the first two
# into typed expressions, so they are matched by type rather than by name.
_RENAMED: dict[type[exp.Expression], str] = {
    exp.ArrayOverlaps: "arrays_overlap",
    exp.JarowinklerSimilarity: "jaro_winkler",
}


def _list_columns(schema: pl.Schema) -> set[str]:
    return {name for name, dtype in schema.items() if isinstance(dtype, pl.List)}


def _base_column(node: exp.Expression) -> str | None:
    """``forename_keys_l`` or ``l.forename_keys`` -> ``forename_keys``."""
    if not isinstance(node, exp.Column):
        return None
    name = node.name
    for suffix in ("_l", "_r"):
        if not node.table and name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def spark_sql(condition: str, list_columns: set[str]) -> str:
    """One DuckDB condition from a saved model as Spark SQL (see module docstring)."""
    if condition.strip().upper() == "ELSE":
        return condition

    def rewrite(node: exp.Expression) -> exp.Expression:
        for kind, name in _RENAMED.items():
            if isinstance(node, kind):
                return exp.Anonymous(this=name, expressions=[node.this, node.expression])
        if isinstance(node, exp.Length) and _base_column(node.this) in list_columns:
            return exp.Anonymous(this="size", expressions=[node.this])
        return node

    tree = sqlglot.parse_one(condition, read="duckdb").transform(rewrite)
    return tree.sql(dialect="spark")


def spark_model(model: dict[str, Any], schema: pl.Schema) -> dict[str, Any]:
    """A copy of a saved (DuckDB) model whose SQL runs on Spark; parameters untouched.

    ``schema`` is the model frame's, so ``len`` is turned into ``size`` only for list
    columns. The copy's ``sql_dialect`` markers are dropped, as Splink would otherwise try
    to translate the blocking rules a second time.
    """
    lists = _list_columns(schema)
    out = copy.deepcopy(model)
    out.pop("sql_dialect", None)
    for comparison in out["comparisons"]:
        for level in comparison["comparison_levels"]:
            level["sql_condition"] = spark_sql(level["sql_condition"], lists)
    rules = []
    for rule in out["blocking_rules_to_generate_predictions"]:
        if isinstance(rule, str):
            rule = {"blocking_rule": rule}
        rule = {k: v for k, v in rule.items() if k != "sql_dialect"}
        rule["blocking_rule"] = spark_sql(rule["blocking_rule"], lists)
        rules.append(rule)
    out["blocking_rules_to_generate_predictions"] = rules
    return out


def spark_session(options: SparkOptions) -> SparkSession:
    """The Spark session Splink runs on, with Splink's similarity jar on its classpath.

    ``getOrCreate``: in a process that already has a session (a notebook, a test module,
    ``spark-submit``) that session is used and settings fixed at JVM start (master, driver
    memory, jars) are the existing ones; that session must then have the jar itself.
    """
    from pyspark.sql import SparkSession
    from splink.backends.spark import similarity_jar_location

    jars = [similarity_jar_location()]
    conf = dict(options.conf)
    if conf.get("spark.jars"):
        jars.append(conf.pop("spark.jars"))
    builder = (
        SparkSession.builder.master(options.master)
        .appName(options.app_name)
        .config("spark.jars", ",".join(jars))
        .config("spark.driver.memory", options.driver_memory)
        .config("spark.sql.shuffle.partitions", str(options.shuffle_partitions))
        # Dates are compared as dates; a fixed zone keeps any timestamp reading identical
        # on every executor whatever the machine's zone.
        .config("spark.sql.session.timeZone", "UTC")
    )
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    if options.checkpoint_dir:
        session.sparkContext.setCheckpointDir(options.checkpoint_dir)
    return session


def _linker(
    session: SparkSession, frame: pl.DataFrame, model: dict[str, Any], options: SparkOptions
) -> Linker:
    from splink import Linker
    from splink.backends.spark import SparkAPI

    db_api = SparkAPI(
        spark_session=session,
        break_lineage_method=options.break_lineage,
        num_partitions_on_repartition=options.shuffle_partitions,
    )
    df = db_api.register(frame.to_arrow(), table_name="records")
    return Linker(df, spark_model(model, frame.schema), log_level=logging.ERROR)


def _to_polars(result: Any) -> pl.DataFrame:
    """A Splink result on Spark as Polars, through Arrow, typed as the DuckDB path's."""
    frame = pl.from_arrow(result.as_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    frame = pairs_frame(frame)
    gammas = [c for c in frame.columns if c.startswith("gamma_")]
    return frame.with_columns(pl.col(gammas).cast(pl.Int32))


def predict(
    records: pl.DataFrame,
    model_path: Path,
    options: SparkOptions,
    *,
    changed: set[str] | None = None,
    threshold: float = 0.01,
) -> pl.DataFrame:
    """``matching.model.predict`` on Spark: same model file, same pairs, same columns."""
    frame = model_frame(records)
    model = json.loads(Path(model_path).read_text(encoding="utf-8"))
    # A session of its own on the shared context: its temporary views (Splink registers
    # ``records``) and UDF registrations go with it, so predictions in one process cannot
    # collide, while the JVM, executors and classpath are shared.
    session = spark_session(options).newSession()
    try:
        linker = _linker(session, frame, model, options)
        db_api = linker._db_api

        def register(part: pl.DataFrame, name: str) -> Any:
            return db_api.register(part.to_arrow(), table_name=name)

        return score(linker, frame, register, _to_polars, changed=changed, threshold=threshold)
    finally:
        # Splink persists its intermediate tables; a long-lived session would otherwise
        # hold every night's in executor memory.
        session.catalog.clearCache()
