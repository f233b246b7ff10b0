"""Score a person linkage against the synthetic generator's ground truth.

The generator writes a truth folder (``person_rows.csv``, ``persons.csv``,
``relationships.csv``) saying which true person every person-level record belongs to. This
module compares a linkage (one ``person_id`` per record) and a household assignment (one
``household_id`` per ``person_id``) with it. The numbers are meant to be compared with other
tools, so the definitions are spelled out here and kept fixed:

Units
    A *record* is one person-level row of one source table, identified by
    ``(source, table, local_key)``. Truth lists a record once per delivery it appeared in; it is
    counted once, with the true person of its latest ``extract_date``.

Records
    ``records_in_truth`` counts truth records; ``records_linked`` those with a non-null
    ``person_id`` in ``links``; ``records_missing`` the rest. A missing record is scored as its
    own singleton predicted person: it can never be part of a predicted pair, so it only costs
    recall (and, for persons, only when its true person has other records). ``records_unknown``
    counts ``links`` rows whose key is not in truth; they are ignored everywhere else.

Pairwise (records)
    A *pair* is an unordered pair of distinct records. True pairs share a true person,
    predicted pairs share a ``person_id``, true-positive pairs do both. Counts come from
    cluster sizes (sum of n*(n-1)/2 per true person, per person_id, per (person_id, true
    person) cell), never by listing pairs. precision = TP / predicted, recall = TP / true,
    F1 their harmonic mean; precision (recall) is 1.0 when there are no predicted (true) pairs
    and F1 is 0.0 when both are 0.

Persons
    Only true persons with at least one record count. A true person is *resolved to one id*
    when all its records fall in one predicted person (a missing record is a predicted person
    of its own), and *resolved exactly* when that predicted person holds no other true
    person's records. ``predicted_persons`` counts predicted persons over truth records:
    distinct ``person_id`` values plus missing records.

Family confusion
    A pair of distinct true persons (both with records) is *merged* when some ``person_id``
    carries records of both. Twins are pairs sharing a ``twin_group``; parent-child pairs come
    from relationships ``father``, ``mother``, ``child``, ``step_parent`` and ``step_child``;
    ``relatives_merged`` uses every relationship. Relationship rows are directed; pairs are
    unordered and deduplicated. ``merged_same_name`` counts merged parent-child pairs whose
    forename and surname are identical strings in ``persons.csv``.

Households
    The unit is the true person (with at least one record), not the record. Each true person
    gets the household of the ``person_id`` holding most of its records (ties: smallest
    ``person_id``); with no linked record, or a ``person_id`` absent from ``households`` or
    with a null ``household_id``, it is a singleton household. Pairwise precision, recall and
    F1 then compare those households with ``true_household_id`` exactly as for records (a
    true person missing from ``persons.csv`` is a true household of its own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

KEY = ["source", "table", "local_key"]
PERSON_ROWS_COLUMNS = [*KEY, "extract_date", "true_person_id"]
PERSONS_COLUMNS = [
    "true_person_id",
    "true_household_id",
    "is_child",
    "sex",
    "dob",
    "forename",
    "surname",
    "twin_group",
    "deceased",
]
RELATIONSHIPS_COLUMNS = ["true_person_id", "related_true_person_id", "relationship"]
PARENT_CHILD = ("father", "mother", "child", "step_parent", "step_child")
MAX_EXAMPLES = 20


class EvaluationError(ValueError):
    """Truth or linkage input that cannot be scored (missing file or column, conflicts)."""


@dataclass(frozen=True)
class Truth:
    """The generator's answer: one row per record, per true person, per directed relationship.

    All columns are strings so keys such as ``00123`` or ``A123456789012|1`` survive intact.
    """

    person_rows: pl.DataFrame
    persons: pl.DataFrame
    relationships: pl.DataFrame


# --- reading truth ------------------------------------------------------------------------


def _read_csv(path: Path, columns: list[str]) -> pl.DataFrame:
    """Read ``columns`` of ``path`` as strings; name the file in every failure."""
    if not path.is_file():
        raise EvaluationError(f"{path}: file not found")
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        raise EvaluationError(f"{path}: cannot be read as CSV ({exc})") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EvaluationError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame.select(columns)


def _latest_per_record(person_rows: pl.DataFrame) -> pl.DataFrame:
    """One row per record: a record delivered on several dates keeps its latest truth."""
    return (
        person_rows.sort("extract_date", nulls_last=False)
        .unique(KEY, keep="last")
        .sort(KEY)
        .drop("extract_date")
    )


def read_truth(truth_dir: Path) -> Truth:
    """Load a generator truth folder, one row per record and per true person."""
    truth_dir = Path(truth_dir)
    rows_path = truth_dir / "person_rows.csv"
    persons_path = truth_dir / "persons.csv"
    person_rows = _read_csv(rows_path, PERSON_ROWS_COLUMNS)
    persons = _read_csv(persons_path, PERSONS_COLUMNS)
    relationships = _read_csv(truth_dir / "relationships.csv", RELATIONSHIPS_COLUMNS)
    blank = person_rows.filter(pl.any_horizontal(pl.col(*KEY, "true_person_id").is_null()))
    if blank.height:
        raise EvaluationError(f"{rows_path}: {blank.height} row(s) lack a key or true_person_id")
    duplicated = persons.filter(pl.col("true_person_id").is_duplicated())
    if duplicated.height:
        example = duplicated["true_person_id"][0]
        raise EvaluationError(f"{persons_path}: true_person_id {example} appears more than once")
    relationships = relationships.drop_nulls(["true_person_id", "related_true_person_id"])
    return Truth(_latest_per_record(person_rows), persons, relationships)


# --- preparing the linkage ----------------------------------------------------------------


def _require(frame: pl.DataFrame, name: str, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EvaluationError(f"{name}: missing column(s) {', '.join(missing)}")


def _prepare_links(links: pl.DataFrame) -> pl.DataFrame:
    """One person_id per record key; keys compared as strings like truth's.

    Exact duplicate rows are harmless and dropped; a key with two person_ids is a broken
    linkage and is refused rather than scored arbitrarily.
    """
    _require(links, "links", [*KEY, "person_id"])
    links = links.select(*KEY, "person_id").with_columns(pl.col(*KEY).cast(pl.String)).unique()
    conflicting = links.filter(pl.struct(KEY).is_duplicated())
    if conflicting.height:
        example = "/".join(str(v) for v in conflicting.row(0)[:3])
        raise EvaluationError(f"links: record {example} carries more than one person_id")
    return links


def _prepare_households(households: pl.DataFrame, person_id_dtype: pl.DataType) -> pl.DataFrame:
    """One household_id per person_id, of the same type as the links' person_id."""
    _require(households, "households", ["person_id", "household_id"])
    households = households.select("person_id", "household_id").unique()
    if households.schema["person_id"] != person_id_dtype:
        raise EvaluationError(
            f"households: person_id is {households.schema['person_id']} but links has "
            f"{person_id_dtype}"
        )
    if households["person_id"].is_duplicated().any():
        example = households.filter(pl.col("person_id").is_duplicated())["person_id"][0]
        raise EvaluationError(f"households: person_id {example} has more than one household_id")
    return households


def _attach_predictions(person_rows: pl.DataFrame, links: pl.DataFrame) -> pl.DataFrame:
    """Truth records with their person_id (null when the linkage has no row for them)."""
    return person_rows.join(links, on=KEY, how="left")


# --- pair counting ------------------------------------------------------------------------


def _pair_count(frame: pl.DataFrame, columns: list[str]) -> int:
    """Sum of n*(n-1)/2 over groups of ``columns``; a null in any column is a singleton."""
    sizes = frame.drop_nulls(columns).group_by(columns).len()["len"].cast(pl.Int64)
    return int((sizes * (sizes - 1) // 2).sum())


def _ratio(numerator: int, denominator: int) -> float:
    """Share with an empty denominator read as "nothing wrong" (1.0)."""
    return numerator / denominator if denominator else 1.0


def _pair_scores(frame: pl.DataFrame, predicted: str, true: str) -> dict[str, Any]:
    """Pairwise precision, recall and F1 of two clusterings of the same rows."""
    true_pairs = _pair_count(frame, [true])
    predicted_pairs = _pair_count(frame, [predicted])
    true_positive = _pair_count(frame, [predicted, true])
    precision = _ratio(true_positive, predicted_pairs)
    recall = _ratio(true_positive, true_pairs)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_pairs": true_pairs,
        "predicted_pairs": predicted_pairs,
        "true_positive_pairs": true_positive,
        "false_positive_pairs": predicted_pairs - true_positive,
        "false_negative_pairs": true_pairs - true_positive,
    }


# --- persons ------------------------------------------------------------------------------


def _person_resolution(records: pl.DataFrame) -> dict[str, Any]:
    """How many true persons ended up as exactly one predicted person, and a clean one."""
    true_per_id = (
        records.drop_nulls("person_id")
        .group_by("person_id")
        .agg(true_on_id=pl.col("true_person_id").n_unique())
    )
    per_person = (
        records.join(true_per_id, on="person_id", how="left")
        .group_by("true_person_id")
        .agg(
            clusters=pl.col("person_id").drop_nulls().n_unique() + pl.col("person_id").null_count(),
            most_on_id=pl.col("true_on_id").fill_null(1).max(),
        )
        .with_columns(one=pl.col("clusters") == 1)
        .with_columns(exact=pl.col("one") & (pl.col("most_on_id") == 1))
    )
    true_persons = per_person.height
    one = int(per_person["one"].sum())
    exact = int(per_person["exact"].sum())
    predicted = true_per_id.height + records["person_id"].null_count()
    return {
        "true_persons": true_persons,
        "predicted_persons": predicted,
        "resolved_to_one_id": _ratio(one, true_persons),
        "resolved_exactly": _ratio(exact, true_persons),
        "resolved_to_one_id_count": one,
        "resolved_exactly_count": exact,
    }


# --- merged true-person pairs -------------------------------------------------------------


def _unordered(pairs: pl.DataFrame, with_records: pl.DataFrame) -> pl.DataFrame:
    """Distinct unordered pairs (a < b) of different true persons who both have records."""
    return (
        pairs.select(
            a=pl.min_horizontal("a", "b"),
            b=pl.max_horizontal("a", "b"),
        )
        .filter(pl.col("a") != pl.col("b"))
        .unique()
        .join(with_records.rename({"true_person_id": "a"}), on="a", how="semi")
        .join(with_records.rename({"true_person_id": "b"}), on="b", how="semi")
        .sort("a", "b")
    )


def _merged(pairs: pl.DataFrame, ids: pl.DataFrame) -> pl.DataFrame:
    """Pairs whose two true persons share a person_id, with the shared ids.

    Joins each pair to the first person's ids and then checks the second person: the work
    is bounded by the pairs asked about, however large a predicted cluster is.
    """
    return (
        pairs.join(ids.rename({"true_person_id": "a"}), on="a")
        .join(ids.rename({"true_person_id": "b"}), on=["b", "person_id"], how="inner")
        .group_by("a", "b")
        .agg(shared_person_ids=pl.col("person_id").cast(pl.String).sort())
        .sort("a", "b")
    )


def _with_people(merged: pl.DataFrame, persons: pl.DataFrame) -> pl.DataFrame:
    """Add both persons' names and dates of birth, for examples and same-name checks."""
    details = ["forename", "surname", "dob"]
    for side in ("a", "b"):
        people = persons.select(
            pl.col("true_person_id").alias(side), *(pl.col(c).alias(f"{c}_{side}") for c in details)
        )
        merged = merged.join(people, on=side, how="left")
    return merged.select(
        "a", *(f"{c}_a" for c in details), "b", *(f"{c}_b" for c in details), "shared_person_ids"
    )


def _examples(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return frame.head(MAX_EXAMPLES).to_dicts()


def _twins(persons: pl.DataFrame, with_records: pl.DataFrame, ids: pl.DataFrame) -> dict:
    """Twins (and other multiples) are the hardest pairs to keep apart: same dob, address."""
    members = persons.drop_nulls("twin_group").select("twin_group", a="true_person_id")
    pairs = _unordered(
        members.join(members.rename({"a": "b"}), on="twin_group").select("a", "b"),
        with_records,
    )
    merged = _with_people(_merged(pairs, ids), persons)
    return {"pairs": pairs.height, "merged": merged.height, "examples": _examples(merged)}


def _parent_child(
    relationships: pl.DataFrame,
    persons: pl.DataFrame,
    with_records: pl.DataFrame,
    ids: pl.DataFrame,
) -> dict:
    """Parent and child merged into one person, split out for the Junior/Senior namesakes."""
    directed = relationships.filter(pl.col("relationship").is_in(PARENT_CHILD))
    pairs = _unordered(
        directed.select(a="true_person_id", b="related_true_person_id"), with_records
    )
    merged = _with_people(_merged(pairs, ids), persons).with_columns(
        same_name=(
            (pl.col("forename_a") == pl.col("forename_b"))
            & (pl.col("surname_a") == pl.col("surname_b"))
        ).fill_null(False)
    )
    same_name = int(merged["same_name"].sum())
    return {
        "pairs": pairs.height,
        "merged": merged.height,
        "merged_same_name": same_name,
        "examples": _examples(merged),
    }


def _relatives(
    relationships: pl.DataFrame, with_records: pl.DataFrame, ids: pl.DataFrame
) -> dict[str, Any]:
    """Merged pairs over every relationship, plus directed rows hit, by relationship."""
    directed = relationships.select("relationship", a="true_person_id", b="related_true_person_id")
    pairs = _unordered(directed.select("a", "b"), with_records)
    merged = _merged(pairs, ids).select("a", "b")
    hit = directed.with_columns(
        pl.min_horizontal("a", "b").alias("a"), pl.max_horizontal("a", "b").alias("b")
    ).join(merged, on=["a", "b"], how="semi")
    by_relationship = hit.group_by("relationship").len().sort("relationship")
    return {
        "pairs": pairs.height,
        "merged": merged.height,
        "merged_rows_by_relationship": dict(by_relationship.iter_rows()),
    }


# --- households ---------------------------------------------------------------------------


def _household_scores(
    records: pl.DataFrame, households: pl.DataFrame, persons: pl.DataFrame
) -> dict[str, Any]:
    """Household pairwise scores over true persons, each placed by its main person_id."""
    main_id = (
        records.drop_nulls("person_id")
        .group_by("true_person_id", "person_id")
        .len()
        .sort(["true_person_id", "len", "person_id"], descending=[False, True, False])
        .unique("true_person_id", keep="first")
        .select("true_person_id", "person_id")
    )
    placed = (
        records.select("true_person_id")
        .unique()
        .join(main_id, on="true_person_id", how="left")
        .join(households, on="person_id", how="left")
        .join(
            persons.select("true_person_id", "true_household_id"), on="true_person_id", how="left"
        )
    )
    scores = _pair_scores(placed, predicted="household_id", true="true_household_id")
    return {
        "persons": placed.height,
        "persons_without_household": placed["household_id"].null_count(),
        **scores,
    }


# --- entry points -------------------------------------------------------------------------


def evaluate(links: pl.DataFrame, households: pl.DataFrame, truth: Truth) -> dict[str, Any]:
    """Score ``links`` (record -> person_id) and ``households`` (person_id -> household_id).

    Returns plain ints, floats, strings, lists and dicts so the result can go straight to
    JSON or Dagster metadata. See the module docstring for every definition.
    """
    links = _prepare_links(links)
    households = _prepare_households(households, links.schema["person_id"])
    records = _attach_predictions(truth.person_rows, links)
    with_records = records.select("true_person_id").unique()
    ids = records.drop_nulls("person_id").select("true_person_id", "person_id").unique()
    unknown = links.join(truth.person_rows, on=KEY, how="anti").height
    missing = records["person_id"].null_count()
    relatives = _relatives(truth.relationships, with_records, ids)
    return {
        "records_in_truth": records.height,
        "records_linked": records.height - missing,
        "records_missing": missing,
        "records_unknown": unknown,
        "pairwise": _pair_scores(records, predicted="person_id", true="true_person_id"),
        "persons": _person_resolution(records),
        "twins": _twins(truth.persons, with_records, ids),
        "parent_child": _parent_child(truth.relationships, truth.persons, with_records, ids),
        "relatives_merged": relatives["merged"],
        "relatives": relatives,
        "households": _household_scores(records, households, truth.persons),
    }


def write_report(metrics: dict[str, Any], path: Path) -> None:
    """Write the metrics as indented JSON, creating the folder, for diffing between runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """A few lines for a terminal or Dagster metadata; the JSON report has the detail."""
    pw = metrics["pairwise"]
    persons = metrics["persons"]
    hh = metrics["households"]
    twins = metrics["twins"]
    pc = metrics["parent_child"]
    return [
        f"records {metrics['records_in_truth']} in truth, {metrics['records_linked']} linked, "
        f"{metrics['records_missing']} missing, {metrics['records_unknown']} unknown",
        f"pairwise precision {pw['precision']:.5f} recall {pw['recall']:.5f} F1 {pw['f1']:.5f}",
        f"persons {persons['true_persons']} true, {persons['predicted_persons']} predicted; "
        f"resolved to one id {persons['resolved_to_one_id']:.5f}, "
        f"exactly {persons['resolved_exactly']:.5f}",
        f"twins merged {twins['merged']} of {twins['pairs']} pairs; parent-child merged "
        f"{pc['merged']} of {pc['pairs']} ({pc['merged_same_name']} same name); "
        f"relatives merged {metrics['relatives_merged']}",
        f"households precision {hh['precision']:.5f} recall {hh['recall']:.5f} F1 {hh['f1']:.5f}",
    ]
