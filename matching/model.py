"""The Splink 5 model: comparisons, blocking, training and prediction (DuckDB backend;
prediction on Spark is ``matching.spark``).

One ``dedupe_only`` model runs over the standardised rows of every person-level table at
once, because the same person appears within a source (duplicates) as well as across them.

Design choices, each answering a failure of a plain model (``shared/linkage-notes.md``):

- Names are compared on several levels (exact with term-frequency adjustment, preferred or
  middle name, nickname, fuzzy), and surnames also on former and preferred names and on the
  parts of a double-barrelled name, so a real person's variants score high.
- Dates of birth have levels for day and month swapped and for one part wrong, and a
  birth-year-range level for estimated dates and police ``age_at_incident``.
- Identifier u-probabilities are computed, not sampled: two random records almost never
  share an NHS number or UPN, so random sampling cannot see the level and Splink would
  fall back to a default that under-weights the strongest evidence we have.
- EM is trained on blocks that contain mostly true matches (NHS number; name and date of
  birth) and never on surname-and-postcode, which is mostly households and would teach the
  model that "same household" means "same person".
- Address agreement is evidence, but the decision to merge relatives is not left to the
  weights: ``matching.rules`` vetoes pairs whose identities conflict.

Training writes a versioned JSON model plus Splink's charts as HTML; nightly prediction
loads a saved model, so a night's results are reproducible from its inputs and the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from splink import DuckDBAPI, Linker, SettingsCreator, block_on

from matching.config import LinkageConfig, ModelOptions

# Columns Splink needs from the standardised frame (list columns included).
MODEL_COLUMNS = [
    "unique_id",
    "forename",
    "forename_alt",
    "forename_keys",
    "forename_canon",
    "middle_name",
    "surname",
    "surname_alt",
    "surname_tokens",
    "dob",
    "year_lo",
    "year_hi",
    "sex",
    "nhs_number",
    "upn",
    "upn_keys",
    "postcode",
    "postcode_district",
    "address_key",
    "uprn",
    "phone",
]

_TF_COLUMNS = ("forename", "surname")


def _null(*cols: str) -> dict[str, Any]:
    cond = " or ".join(f'"{c}_l" is null or "{c}_r" is null' for c in cols)
    return {"sql_condition": cond, "label_for_charts": "null", "is_null_level": True}


def _level(sql: str, label: str, **extra: Any) -> dict[str, Any]:
    return {"sql_condition": sql, "label_for_charts": label, **extra}


def _else() -> dict[str, Any]:
    return {"sql_condition": "ELSE", "label_for_charts": "all other"}


def _forename() -> dict[str, Any]:
    alt = (
        "forename_alt_l = forename_r or forename_l = forename_alt_r "
        "or forename_alt_l = forename_alt_r or middle_name_l = forename_r "
        "or forename_l = middle_name_r"
    )
    return {
        "output_column_name": "forename",
        "comparison_description": "forename: exact, preferred/middle, nickname, fuzzy",
        "comparison_levels": [
            _null("forename"),
            _level(
                "forename_l = forename_r",
                "exact",
                tf_adjustment_column="forename",
                tf_adjustment_weight=1.0,
            ),
            _level(alt, "preferred or middle name"),
            _level("list_has_any(forename_keys_l, forename_keys_r)", "nickname"),
            _level(
                "jaro_winkler_similarity(forename_l, forename_r) >= 0.88 "
                "or damerau_levenshtein(forename_l, forename_r) <= 1",
                "fuzzy",
            ),
            _else(),
        ],
    }


def _surname() -> dict[str, Any]:
    alt = (
        "list_contains(surname_alt_l, surname_r) or list_contains(surname_alt_r, surname_l) "
        "or list_has_any(surname_alt_l, surname_alt_r)"
    )
    return {
        "output_column_name": "surname",
        "comparison_description": "surname: exact, former/preferred, part, fuzzy",
        "comparison_levels": [
            _null("surname"),
            _level(
                "surname_l = surname_r",
                "exact",
                tf_adjustment_column="surname",
                tf_adjustment_weight=1.0,
            ),
            _level(alt, "former or preferred surname"),
            _level("list_has_any(surname_tokens_l, surname_tokens_r)", "part of surname"),
            _level("jaro_winkler_similarity(surname_l, surname_r) >= 0.88", "fuzzy"),
            _else(),
        ],
    }


def _dob() -> dict[str, Any]:
    swapped = (
        "year(dob_l) = year(dob_r) and month(dob_l) = day(dob_r) and day(dob_l) = month(dob_r)"
    )
    one_part = (
        "(year(dob_l) = year(dob_r))::int + (month(dob_l) = month(dob_r))::int "
        "+ (day(dob_l) = day(dob_r))::int = 2"
    )
    overlap = "year_lo_l <= year_hi_r and year_lo_r <= year_hi_l"
    return {
        "output_column_name": "dob",
        "comparison_description": "date of birth: exact, swapped, one part, year range",
        "comparison_levels": [
            {
                "sql_condition": "year_lo_l is null or year_lo_r is null",
                "label_for_charts": "null",
                "is_null_level": True,
            },
            _level("dob_l = dob_r", "exact"),
            _level(swapped, "day and month swapped"),
            _level(one_part, "one part different"),
            _level(overlap, "birth years overlap"),
            _else(),
        ],
    }


def _exact(column: str, description: str, *, u: float | None = None) -> dict[str, Any]:
    exact = _level(f'"{column}_l" = "{column}_r"', "exact")
    if u is not None:
        exact |= {"u_probability": u, "fix_u_probability": True}
    return {
        "output_column_name": column,
        "comparison_description": description,
        "comparison_levels": [_null(column), exact, _else()],
    }


def _upn(u: float) -> dict[str, Any]:
    return {
        "output_column_name": "upn",
        "comparison_description": "pupil's own UPN (current or former)",
        "comparison_levels": [
            {
                "sql_condition": "len(upn_keys_l) = 0 or len(upn_keys_r) = 0",
                "label_for_charts": "null",
                "is_null_level": True,
            },
            _level(
                "list_has_any(upn_keys_l, upn_keys_r)",
                "exact",
                u_probability=u,
                fix_u_probability=True,
            ),
            _else(),
        ],
    }


def _address() -> dict[str, Any]:
    return {
        "output_column_name": "address",
        "comparison_description": "UPRN, address and postcode",
        "comparison_levels": [
            {
                "sql_condition": "(postcode_l is null and address_key_l is null) "
                "or (postcode_r is null and address_key_r is null)",
                "label_for_charts": "null",
                "is_null_level": True,
            },
            _level("uprn_l = uprn_r", "same UPRN"),
            _level("address_key_l = address_key_r and postcode_l = postcode_r", "same address"),
            _level("postcode_l = postcode_r", "same postcode"),
            _level("address_key_l = address_key_r", "same address, other postcode"),
            _level("postcode_district_l = postcode_district_r", "same district"),
            _else(),
        ],
    }


def blocking_rules() -> list[Any]:
    """Candidate pairs: every rule is an equality, so each block stays small.

    Between them they cover the messy cases in the extract spec: a changed surname
    (forename and postcode), a move (names and date of birth), a nickname (canonical
    forename), a day/month swap or a typo in the date (surname or forename and birth
    year), a child known only by an approximate age (forename, surname), a contact with no
    date of birth (names, phone), both names misspelt (same address and sex).
    """
    return [
        block_on("nhs_number"),
        block_on("upn"),
        block_on("dob"),
        block_on("surname", "postcode"),
        block_on("forename", "postcode"),
        block_on("forename_canon", "surname"),
        block_on("surname", "year_lo"),
        block_on("forename_canon", "year_lo"),
        block_on("forename_canon", "address_key"),
        block_on("postcode", "address_key", "sex"),
        block_on("phone"),
    ]


def _identifier_u(records: pl.DataFrame, column: str) -> float:
    """Chance two random records share a value: sum of squared value shares."""
    values = records.select(pl.col(column).explode() if column == "upn_keys" else pl.col(column))
    values = values.drop_nulls()
    n = records.height
    if values.height == 0 or n < 2:
        return 1e-6
    counts = values.group_by(values.columns[0]).len()["len"]
    pairs = float((counts * (counts - 1)).sum()) / 2.0
    return max(pairs / (n * (n - 1) / 2.0), 1e-9)


def model_settings(records: pl.DataFrame) -> SettingsCreator:
    return SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="unique_id",
        comparisons=[
            _forename(),
            _surname(),
            _dob(),
            _exact("sex", "sex"),
            _exact("nhs_number", "NHS number", u=_identifier_u(records, "nhs_number")),
            _upn(_identifier_u(records, "upn_keys")),
            _address(),
            _exact("phone", "phone number (contacts)"),
        ],
        blocking_rules_to_generate_predictions=blocking_rules(),
        retain_matching_columns=True,
        retain_intermediate_calculation_columns=True,
        max_iterations=20,
    )


def model_frame(records: pl.DataFrame) -> pl.DataFrame:
    """The standardised frame as Splink sees it (adds the canonical forename for blocking)."""
    return records.with_columns(
        pl.col("forename_keys").list.first().alias("forename_canon"),
    ).select(MODEL_COLUMNS)


@dataclass(frozen=True)
class TrainedModel:
    path: Path
    version: str
    charts: dict[str, Path]
    # "comparison: level" of every level no EM session could observe (see train()).
    untrained: tuple[str, ...] = ()


# What Splink's EM logs once per session for each level the session's blocking rule hides
# (blocking on NHS number, no pair disagrees on it). Expected, and repeated for every
# session: train() reports the levels left untrained once, from the model itself.
_UNOBSERVED = "not observed in dataset, unable to train m value"
_EM_LOGGER = "splink.internals.expectation_maximisation"


class _DropUnobserved(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _UNOBSERVED not in record.getMessage()


def untrained_levels(model: dict[str, Any]) -> list[str]:
    """Levels of a saved model without a trained m-probability, as "comparison: level".

    Splink scores them with its default m (0.95 spread over a comparison's levels), so a
    data engineer must be able to see which they are: the model's own record of what its
    EM sessions could not learn.
    """
    found = []
    for comparison in model["comparisons"]:
        name = comparison.get("output_column_name") or comparison["comparison_description"]
        for level in comparison["comparison_levels"]:
            if level.get("is_null_level"):
                continue
            if not isinstance(level.get("m_probability"), int | float):  # None, or a note
                found.append(f"{name}: {level.get('label_for_charts', level['sql_condition'])}")
    return found


def _linker(
    con: duckdb.DuckDBPyConnection, frame: pl.DataFrame, settings: Any, *, quiet: bool = False
) -> Linker:
    """A linker on an in-memory DuckDB; ``quiet`` for prediction, where Splink's notes on
    levels training never observed (e.g. phone numbers outside contacts) are noise."""
    db_api = DuckDBAPI(con)
    df = db_api.register(frame.to_arrow(), table_name="records")
    return Linker(df, settings, log_level=logging.ERROR if quiet else logging.WARNING)


def train(records: pl.DataFrame, config: LinkageConfig, out_dir: Path) -> TrainedModel:
    """Estimate the model on tonight's records and save it as a new version.

    u by random sampling (identifiers computed and fixed), the prior from records that
    share an NHS number, m by EM on blocks of likely matches. A level none of the EM
    sessions could observe keeps Splink's default m; Splink's note of it from every session
    is dropped, and the result lists those levels once (``TrainedModel.untrained``).
    """
    frame = model_frame(records)
    con = duckdb.connect()
    quiet = _DropUnobserved()
    logging.getLogger(_EM_LOGGER).addFilter(quiet)
    try:
        linker = _linker(con, frame, model_settings(frame))
        linker.training.estimate_probability_two_random_records_match(
            [block_on("nhs_number"), block_on("upn")], recall=0.6
        )
        linker.training.estimate_u_using_random_sampling(
            max_pairs=config.training.u_max_pairs, seed=config.training.seed
        )
        for rule in (
            block_on("nhs_number"),
            block_on("forename", "surname", "dob"),
            block_on("upn"),
        ):
            linker.training.estimate_parameters_using_expectation_maximisation(
                rule, record_sample_proportion=1.0
            )
        model = linker.misc.save_model_to_json()
        out_dir.mkdir(parents=True, exist_ok=True)
        body = json.dumps(model, indent=2, sort_keys=True, default=str)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        version = f"{stamp}-{hashlib.sha256(body.encode()).hexdigest()[:8]}"
        path = out_dir / f"linkage-model-{version}.json"
        path.write_text(body, encoding="utf-8")
        charts = {
            "match_weights": out_dir / f"linkage-model-{version}-match-weights.html",
            "m_u_parameters": out_dir / f"linkage-model-{version}-m-u.html",
        }
        linker.visualisations.match_weights_chart().save(str(charts["match_weights"]), inline=True)
        linker.visualisations.m_u_parameters_chart().save(
            str(charts["m_u_parameters"]), inline=True
        )
        return TrainedModel(
            path=path, version=version, charts=charts, untrained=tuple(untrained_levels(model))
        )
    finally:
        logging.getLogger(_EM_LOGGER).removeFilter(quiet)
        con.close()


_PAIR_COLUMNS = ["unique_id_l", "unique_id_r", "match_weight", "match_probability"]


def pairs_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """Splink's prediction output cut to what linkage keeps: ids, score, comparison levels."""
    gammas = [c for c in frame.columns if c.startswith("gamma_")]
    return frame.select(_PAIR_COLUMNS + gammas)


def _pairs(result: Any) -> pl.DataFrame:
    return pairs_frame(result.as_duckdbpyrelation().pl())


def score(
    linker: Linker,
    frame: pl.DataFrame,
    register: Callable[[pl.DataFrame, str], Any],
    to_pairs: Callable[[Any], pl.DataFrame],
    *,
    changed: set[str] | None,
    threshold: float,
) -> pl.DataFrame:
    """Score with a linker on any Splink backend; see ``predict``.

    ``register`` puts a frame into the linker's database under a name and ``to_pairs``
    brings a result back as Polars, the only two steps that differ between backends, so
    DuckDB and Spark choose the same pairs the same way.
    """
    if changed is None:
        return to_pairs(linker.inference.predict(threshold_match_probability=threshold))
    for column in _TF_COLUMNS:
        linker.table_management.compute_tf_table(column)
    is_changed = pl.col("unique_id").is_in(sorted(changed))
    parts = []
    if frame.filter(is_changed).height:
        new = register(frame.filter(is_changed), "changed")
        old = register(frame.filter(~is_changed), "unchanged")
        between = linker.inference.predict_between(new, old, threshold_match_probability=threshold)
        within = linker.inference.predict_within(new, threshold_match_probability=threshold)
        parts = [to_pairs(between), to_pairs(within)]
    if not parts:
        return pl.DataFrame(schema={c: pl.Float64 for c in _PAIR_COLUMNS})
    pairs = pl.concat(parts, how="diagonal_relaxed")
    lo = pl.min_horizontal("unique_id_l", "unique_id_r")
    hi = pl.max_horizontal("unique_id_l", "unique_id_r")
    return pairs.with_columns(lo.alias("unique_id_l"), hi.alias("unique_id_r"))


def predict(
    records: pl.DataFrame,
    model_path: Path,
    *,
    changed: set[str] | None = None,
    threshold: float = 0.01,
    options: ModelOptions | None = None,
) -> pl.DataFrame:
    """Score candidate pairs with a saved model; one row per pair, ``unique_id_l < _r``.

    With ``changed`` (unique ids of new or changed records) only pairs touching those
    records are scored: changed against unchanged (``predict_between``) and changed among
    themselves (``predict_within``). Term frequencies always come from the full set.

    ``options.backend`` ``spark`` scores on Splink's Spark backend (``matching.spark``)
    with the same model file; otherwise on an in-memory DuckDB.
    """
    if options is not None and options.backend == "spark":
        # Imported here: pyspark is an optional extra and the DuckDB path must not need it.
        from matching import spark

        return spark.predict(
            records, model_path, options.spark, changed=changed, threshold=threshold
        )
    frame = model_frame(records)
    model = json.loads(Path(model_path).read_text(encoding="utf-8"))
    con = duckdb.connect()
    try:
        linker = _linker(con, frame, model, quiet=True)
        db_api = linker._db_api

        def register(part: pl.DataFrame, name: str) -> Any:
            return db_api.register(part.to_arrow(), table_name=name)

        return score(linker, frame, register, _pairs, changed=changed, threshold=threshold)
    finally:
        con.close()
