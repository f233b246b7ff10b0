"""Linkage scoring against hand-built truth folders whose right answers are worked by hand."""

from __future__ import annotations

import csv
import itertools
import json
import random
from pathlib import Path

import polars as pl
import pytest

from matching.evaluate import (
    PERSONS_COLUMNS,
    EvaluationError,
    Truth,
    evaluate,
    read_truth,
    summary_lines,
    write_report,
)

DATE = "2026-11-21"

# One family (H1: father P1 and son P3 both "John Smith", mother P2, twins P4/P5 with a
# triplet P8 who has no records) and a couple in H2 (P6, P7).
PERSONS = [
    ("P1", "H1", "false", "M", "1980-01-01", "John", "Smith", ""),
    ("P2", "H1", "false", "F", "1982-02-02", "Mary", "Smith", ""),
    ("P3", "H1", "true", "M", "2010-03-03", "John", "Smith", ""),
    ("P4", "H1", "true", "F", "2015-04-04", "Amy", "Smith", "T1"),
    ("P5", "H1", "true", "F", "2015-04-04", "Beth", "Smith", "T1"),
    ("P8", "H1", "true", "F", "2015-04-04", "Cara", "Smith", "T1"),
    ("P6", "H2", "false", "F", "1970-06-06", "Zoe", "Jones", ""),
    ("P7", "H2", "false", "F", "1971-07-07", "Ann", "Jones", ""),
]

# 11 records; true pairs: P1 1, P3 1, P4 1, P6 1 = 4.
RECORDS = {
    ("health", "patients", "h1"): "P1",
    ("police", "persons", "x1"): "P1",
    ("health", "patients", "h2"): "P2",
    ("health", "patients", "h3"): "P3",
    ("school", "pupils", "00123"): "P3",
    ("health", "patients", "h4"): "P4",
    ("school", "pupils", "A123456789012|1"): "P4",
    ("health", "patients", "h5"): "P5",
    ("health", "patients", "h6"): "P6",
    ("council_csc", "people", "c6"): "P6",
    ("health", "patients", "h7"): "P7",
}

# Directed rows, both directions where the generator writes both. Unordered pairs with
# records: {P1,P2} {P1,P3} {P2,P3} {P1,P4} {P4,P5} {P6,P7}; parent-child: {P1,P3} {P2,P3}
# {P1,P4}. {P1,P8} is dropped because P8 has no records.
RELATIONSHIPS = [
    ("P1", "P2", "partner"),
    ("P2", "P1", "partner"),
    ("P1", "P3", "child"),
    ("P3", "P1", "father"),
    ("P2", "P3", "child"),
    ("P3", "P2", "mother"),
    ("P1", "P4", "child"),
    ("P4", "P1", "father"),
    ("P4", "P5", "sibling"),
    ("P5", "P4", "sibling"),
    ("P6", "P7", "partner"),
    ("P1", "P8", "child"),
]


def _write(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_truth(
    folder: Path,
    records: dict[tuple[str, str, str], str] | None = None,
    persons: list[tuple] | None = None,
    relationships: list[tuple] | None = None,
    extra_rows: tuple[tuple, ...] = (),
) -> Path:
    """Write a truth folder like the generator's; ``extra_rows`` are raw person_rows rows."""
    folder.mkdir(parents=True, exist_ok=True)
    records = RECORDS if records is None else records
    person_rows = [(*key, DATE, tp) for key, tp in records.items()] + list(extra_rows)
    persons = PERSONS if persons is None else persons
    _write(
        folder / "person_rows.csv",
        ["source", "table", "local_key", "extract_date", "true_person_id"],
        person_rows,
    )
    _write(folder / "persons.csv", PERSONS_COLUMNS, [(*p, "false") for p in persons])
    _write(
        folder / "relationships.csv",
        ["true_person_id", "related_true_person_id", "relationship"],
        RELATIONSHIPS if relationships is None else relationships,
    )
    return folder


def links_from(assignment: dict[tuple[str, str, str], str | None]) -> pl.DataFrame:
    rows = [(*key, pid) for key, pid in assignment.items()]
    return pl.DataFrame(
        rows, schema=["source", "table", "local_key", "person_id"], orient="row"
    ).with_columns(pl.col("person_id").cast(pl.String))


def households_from(mapping: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame(
        {"person_id": list(mapping), "household_id": list(mapping.values())},
        schema={"person_id": pl.String, "household_id": pl.String},
    )


TRUE_HOUSEHOLDS = {p[0]: p[1] for p in PERSONS}


@pytest.fixture
def truth(tmp_path: Path) -> Truth:
    return read_truth(write_truth(tmp_path / "truth"))


def relinked(**changes: str | None) -> dict[tuple[str, str, str], str | None]:
    """The perfect linkage with some records (named by local_key) given another person_id."""
    assignment: dict[tuple[str, str, str], str | None] = dict(RECORDS)
    for key in RECORDS:
        if key[2] in changes:
            assignment[key] = changes[key[2]]
    return assignment


def test_perfect_linkage_scores_one_everywhere(truth: Truth) -> None:
    metrics = evaluate(links_from(RECORDS), households_from(TRUE_HOUSEHOLDS), truth)
    assert metrics["records_in_truth"] == 11
    assert metrics["records_linked"] == 11
    assert (metrics["records_missing"], metrics["records_unknown"]) == (0, 0)
    assert metrics["pairwise"] == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "true_pairs": 4,
        "predicted_pairs": 4,
        "true_positive_pairs": 4,
        "false_positive_pairs": 0,
        "false_negative_pairs": 0,
    }
    persons = metrics["persons"]
    assert persons["true_persons"] == 7  # P8 has no records
    assert persons["predicted_persons"] == 7
    assert persons["resolved_to_one_id"] == persons["resolved_exactly"] == 1.0
    assert metrics["twins"] == {"pairs": 1, "merged": 0, "examples": []}
    assert metrics["parent_child"]["pairs"] == 3
    assert metrics["parent_child"]["merged"] == 0
    assert metrics["relatives"]["pairs"] == 6
    assert metrics["relatives_merged"] == 0
    households = metrics["households"]
    assert households["persons"] == 7
    assert households["true_pairs"] == 11  # H1: 5 persons with records, H2: 2
    assert (households["precision"], households["recall"], households["f1"]) == (1.0, 1.0, 1.0)


def test_false_merge_of_two_singletons_lowers_precision_exactly(truth: Truth) -> None:
    # P2 (H1) and P7 (H2) share id M; M lives in H1.
    links = links_from(relinked(h2="M", h7="M"))
    households = households_from({**TRUE_HOUSEHOLDS, "M": "H1"})
    metrics = evaluate(links, households, truth)
    pairwise = metrics["pairwise"]
    assert (pairwise["predicted_pairs"], pairwise["true_positive_pairs"]) == (5, 4)
    assert pairwise["precision"] == pytest.approx(4 / 5)
    assert pairwise["recall"] == 1.0
    assert pairwise["f1"] == pytest.approx(8 / 9)
    persons = metrics["persons"]
    assert persons["predicted_persons"] == 6
    assert persons["resolved_to_one_id"] == 1.0
    assert persons["resolved_exactly"] == pytest.approx(5 / 7)
    assert metrics["relatives_merged"] == 0
    # Households over persons: predicted H1 = {P1..P5, P7} (15 pairs), true 11, common 10.
    households = metrics["households"]
    assert (households["predicted_pairs"], households["true_positive_pairs"]) == (15, 10)
    assert households["precision"] == pytest.approx(10 / 15)
    assert households["recall"] == pytest.approx(10 / 11)
    assert households["f1"] == pytest.approx(2 * (2 / 3) * (10 / 11) / (2 / 3 + 10 / 11))


def test_split_lowers_recall_exactly(truth: Truth) -> None:
    metrics = evaluate(links_from(relinked(x1="P1b")), households_from(TRUE_HOUSEHOLDS), truth)
    pairwise = metrics["pairwise"]
    assert (pairwise["true_pairs"], pairwise["true_positive_pairs"]) == (4, 3)
    assert pairwise["precision"] == 1.0
    assert pairwise["recall"] == pytest.approx(3 / 4)
    assert pairwise["f1"] == pytest.approx(6 / 7)
    persons = metrics["persons"]
    assert persons["predicted_persons"] == 8
    assert persons["resolved_to_one_id"] == pytest.approx(6 / 7)
    assert persons["resolved_exactly"] == pytest.approx(6 / 7)


def test_missing_link_rows_count_as_singletons_and_unknown_rows_are_ignored(
    truth: Truth,
) -> None:
    assignment = relinked()
    del assignment[("police", "persons", "x1")]  # P1's second record: breaks a true pair
    assignment[("health", "patients", "h7")] = None  # P7's only record: no pair to lose
    assignment[("health", "patients", "zz")] = "P1"  # not in truth
    metrics = evaluate(links_from(assignment), households_from(TRUE_HOUSEHOLDS), truth)
    assert metrics["records_in_truth"] == 11
    assert metrics["records_linked"] == 9
    assert metrics["records_missing"] == 2
    assert metrics["records_unknown"] == 1
    pairwise = metrics["pairwise"]
    assert (pairwise["true_pairs"], pairwise["predicted_pairs"]) == (4, 3)
    assert (pairwise["precision"], pairwise["recall"]) == (1.0, pytest.approx(3 / 4))
    persons = metrics["persons"]
    assert persons["predicted_persons"] == 8  # six ids + two missing records
    # P1 is split (one linked, one missing); P7's lone missing record is one predicted person.
    assert persons["resolved_to_one_id_count"] == 6
    assert persons["resolved_exactly_count"] == 6
    households = metrics["households"]
    assert households["persons_without_household"] == 1  # P7
    assert (households["predicted_pairs"], households["true_positive_pairs"]) == (10, 10)
    assert households["recall"] == pytest.approx(10 / 11)


def test_twins_merged_are_counted(truth: Truth) -> None:
    links = links_from(relinked(h4="T", h5="T"))  # Amy's school record stays apart
    metrics = evaluate(links, households_from({**TRUE_HOUSEHOLDS, "T": "H1"}), truth)
    twins = metrics["twins"]
    assert (twins["pairs"], twins["merged"]) == (1, 1)
    assert twins["examples"] == [
        {
            "a": "P4",
            "forename_a": "Amy",
            "surname_a": "Smith",
            "dob_a": "2015-04-04",
            "b": "P5",
            "forename_b": "Beth",
            "surname_b": "Smith",
            "dob_b": "2015-04-04",
            "shared_person_ids": ["T"],
        }
    ]
    assert metrics["parent_child"]["merged"] == 0
    assert metrics["relatives_merged"] == 1
    assert metrics["relatives"]["merged_rows_by_relationship"] == {"sibling": 2}
    pairwise = metrics["pairwise"]
    assert (pairwise["predicted_pairs"], pairwise["true_positive_pairs"]) == (4, 3)
    assert pairwise["precision"] == pytest.approx(3 / 4)
    assert pairwise["recall"] == pytest.approx(3 / 4)


def test_father_and_son_of_the_same_name_merged(truth: Truth) -> None:
    # John Smith senior and junior become one person, and their mother/wife joins them.
    links = links_from(relinked(h1="J", x1="J", h3="J", **{"00123": "J"}, h2="J"))
    metrics = evaluate(links, households_from({**TRUE_HOUSEHOLDS, "J": "H1"}), truth)
    parent_child = metrics["parent_child"]
    assert parent_child["pairs"] == 3
    assert parent_child["merged"] == 2  # {P1,P3} and {P2,P3}
    assert parent_child["merged_same_name"] == 1  # only the two Johns
    assert [(e["a"], e["b"]) for e in parent_child["examples"]] == [("P1", "P3"), ("P2", "P3")]
    assert metrics["relatives_merged"] == 3  # plus partners {P1,P2}
    assert metrics["relatives"]["merged_rows_by_relationship"] == {
        "child": 2,
        "father": 1,
        "mother": 1,
        "partner": 2,
    }
    assert metrics["twins"]["merged"] == 0
    persons = metrics["persons"]
    assert persons["resolved_to_one_id"] == 1.0
    assert persons["resolved_exactly"] == pytest.approx(4 / 7)


# Household example: Q1, Q2, Q4 (and Q7, no records) live in H1; Q3, Q5, Q6 in H2.
HH_PERSONS = [
    (q, h, "false", "F", "1990-01-01", f"N{q}", "S", "")
    for q, h in [
        ("Q1", "H1"),
        ("Q2", "H1"),
        ("Q3", "H2"),
        ("Q4", "H1"),
        ("Q5", "H2"),
        ("Q6", "H2"),
        ("Q7", "H1"),
    ]
]
HH_HOUSEHOLDS = {"a": "X", "b": "Y", "c": "Y", "d": "Y", "e": "X"}  # no row for "f"


@pytest.mark.parametrize(
    ("q1_ids", "expected"),
    [
        # Tie between a and b: smallest id a, so Q1 is in X with Q4.
        # Predicted X {Q1,Q4}, Y {Q2,Q3}; true H1 {Q1,Q2,Q4} (3 pairs), H2 {Q3,Q5,Q6} (3).
        (["b", "a"], {"predicted_pairs": 2, "true_positive_pairs": 1, "f1": 1 / 4}),
        # Majority b: Q1 in Y with Q2 and Q3 (3 pairs, only {Q1,Q2} true); Q4 alone in X.
        (["b", "b", "a"], {"predicted_pairs": 3, "true_positive_pairs": 1, "f1": 2 / 9}),
    ],
)
def test_household_scores_place_each_person_by_its_main_id(
    tmp_path: Path, q1_ids: list[str], expected: dict
) -> None:
    records = {("health", "patients", f"q1-{i}"): "Q1" for i in range(len(q1_ids))}
    records |= {("health", "patients", q.lower()): q for q in ("Q2", "Q3", "Q4", "Q5", "Q6")}
    truth = read_truth(write_truth(tmp_path, records, HH_PERSONS, relationships=[]))
    assignment = {("health", "patients", f"q1-{i}"): pid for i, pid in enumerate(q1_ids)}
    assignment |= {
        ("health", "patients", "q2"): "c",
        ("health", "patients", "q3"): "d",
        ("health", "patients", "q4"): "e",
        ("health", "patients", "q6"): "f",  # f has no household; Q5 has no link at all
    }
    households = evaluate(links_from(assignment), households_from(HH_HOUSEHOLDS), truth)[
        "households"
    ]
    assert households["persons"] == 6
    assert households["persons_without_household"] == 2
    assert households["true_pairs"] == 6
    assert households["predicted_pairs"] == expected["predicted_pairs"]
    assert households["true_positive_pairs"] == expected["true_positive_pairs"]
    assert households["f1"] == pytest.approx(expected["f1"])
    precision = expected["true_positive_pairs"] / expected["predicted_pairs"]
    assert households["precision"] == pytest.approx(precision)


def test_truth_rows_repeated_across_extract_dates_keep_the_latest(tmp_path: Path) -> None:
    extra = [
        ("health", "patients", "h1", "2026-01-01", "P2"),  # an earlier, different answer
        ("health", "patients", "h1", "2026-12-31", "P1"),  # a later delivery, same answer
        ("school", "pupils", "00123", "2025-09-01", "P3"),
        ("health", "patients", "h1", "2025-01-01", "P7"),  # older still, but last in the file
    ]
    truth = read_truth(write_truth(tmp_path, extra_rows=tuple(extra)))
    rows = truth.person_rows
    assert rows.height == 11
    assert rows.filter(pl.col("local_key") == "h1")["true_person_id"].to_list() == ["P1"]
    assert set(rows["local_key"]) >= {"00123", "A123456789012|1"}
    assert all(dtype == pl.String for dtype in truth.persons.schema.values())
    metrics = evaluate(links_from(RECORDS), households_from(TRUE_HOUSEHOLDS), truth)
    assert metrics["records_in_truth"] == 11
    assert metrics["pairwise"]["true_pairs"] == 4


def test_latest_extract_date_decides_a_changed_answer(tmp_path: Path) -> None:
    # The file is not in date order: h2's newest answer (P7) is followed by an older
    # delivery with yet another answer (P5), and h5's older answer (P4) is written after
    # its 2026-11-21 one. The latest extract_date decides, not the position in the file.
    extra = [
        ("health", "patients", "h2", "2027-01-01", "P7"),
        ("health", "patients", "h2", "2025-06-30", "P5"),
        ("health", "patients", "h5", "2026-01-01", "P4"),
    ]
    truth = read_truth(write_truth(tmp_path, extra_rows=tuple(extra)))
    answers = dict(
        truth.person_rows.filter(pl.col("local_key").is_in(["h2", "h5"]))
        .select("local_key", "true_person_id")
        .iter_rows()
    )
    assert answers == {"h2": "P7", "h5": "P5"}
    assert truth.person_rows.height == 11


@pytest.mark.parametrize("name", ["person_rows.csv", "persons.csv", "relationships.csv"])
def test_missing_truth_file_names_the_file(tmp_path: Path, name: str) -> None:
    folder = write_truth(tmp_path)
    (folder / name).unlink()
    with pytest.raises(EvaluationError, match=rf"{name}: file not found"):
        read_truth(folder)


@pytest.mark.parametrize(
    ("name", "column"),
    [
        ("person_rows.csv", "extract_date"),
        ("persons.csv", "twin_group"),
        ("relationships.csv", "relationship"),
    ],
)
def test_missing_truth_column_names_file_and_column(tmp_path: Path, name: str, column: str) -> None:
    folder = write_truth(tmp_path)
    frame = pl.read_csv(folder / name, infer_schema=False).drop(column)
    frame.write_csv(folder / name)
    with pytest.raises(EvaluationError, match=rf"{name}: missing column\(s\) {column}"):
        read_truth(folder)


def test_evaluation_error_is_a_value_error() -> None:
    assert issubclass(EvaluationError, ValueError)


def test_record_linked_to_two_person_ids_is_refused(truth: Truth) -> None:
    links = pl.concat([links_from(RECORDS), links_from({("health", "patients", "h1"): "P9"})])
    with pytest.raises(EvaluationError, match="health/patients/h1"):
        evaluate(links, households_from(TRUE_HOUSEHOLDS), truth)


def test_missing_links_column_is_refused(truth: Truth) -> None:
    with pytest.raises(EvaluationError, match="links: missing column"):
        evaluate(links_from(RECORDS).drop("person_id"), households_from(TRUE_HOUSEHOLDS), truth)


def test_all_singletons_have_precision_one_and_recall_zero(truth: Truth) -> None:
    singletons = {key: f"s{i}" for i, key in enumerate(RECORDS)}
    metrics = evaluate(links_from(singletons), households_from({}), truth)
    pairwise = metrics["pairwise"]
    assert (pairwise["precision"], pairwise["recall"], pairwise["f1"]) == (1.0, 0.0, 0.0)
    assert metrics["persons"]["predicted_persons"] == 11
    assert metrics["households"]["recall"] == 0.0
    assert metrics["households"]["persons_without_household"] == 7


def test_contingency_counts_match_enumerated_pairs(tmp_path: Path) -> None:
    """Cross-check the n*(n-1)/2 arithmetic against listing every pair, on random data."""
    rng = random.Random(20)
    records = {("s", "t", f"k{i}"): f"T{rng.randrange(15)}" for i in range(60)}
    persons = [(t, "H", "false", "F", "", "", "", "") for t in sorted(set(records.values()))]
    truth = read_truth(write_truth(tmp_path, records, persons, relationships=[]))
    predicted = {key: (f"p{rng.randrange(12)}" if rng.random() > 0.1 else None) for key in records}
    pairwise = evaluate(links_from(predicted), households_from({}), truth)["pairwise"]
    pairs = list(itertools.combinations(records, 2))
    same_true = {p for p in pairs if records[p[0]] == records[p[1]]}
    same_pred = {
        p for p in pairs if predicted[p[0]] is not None and predicted[p[0]] == predicted[p[1]]
    }
    assert pairwise["true_pairs"] == len(same_true)
    assert pairwise["predicted_pairs"] == len(same_pred)
    assert pairwise["true_positive_pairs"] == len(same_true & same_pred)


def test_report_is_json_and_summary_is_readable(tmp_path: Path, truth: Truth) -> None:
    metrics = evaluate(
        links_from(relinked(h2="M", h7="M")), households_from(TRUE_HOUSEHOLDS), truth
    )
    path = tmp_path / "reports" / "nested" / "evaluation.json"
    write_report(metrics, path)
    assert json.loads(path.read_text()) == metrics
    lines = summary_lines(metrics)
    assert "pairwise precision 0.80000 recall 1.00000 F1 0.88889" in lines
    assert lines[0] == "records 11 in truth, 11 linked, 0 missing, 0 unknown"
