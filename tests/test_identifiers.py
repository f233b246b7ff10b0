"""Identifier checks on known valid and invalid values (NHS number, UPN, postcode, UPRN)."""

import random

import polars as pl
import pytest

from matching.identifiers import (
    is_temporary_upn,
    is_valid_nhs_number,
    is_valid_upn,
    nhs_check_digit,
    nhs_number_expr,
    nhs_valid_expr,
    normalise_postcode,
    postcode_expr,
    upn_check_letter,
    upn_valid_expr,
)

VALID_NHS = ["9434765919", "943 476 5919", "943-476-5919", "4010232137", "9990000018"]
INVALID_NHS = [
    "9434765918",  # wrong check digit
    "4010232138",
    "943476591",  # nine digits
    "94347659190",  # eleven digits
    "94347A5919",  # not all digits
    "9990000000",  # 999000000 has check digit 10: no valid number starts so
    "",
    None,
]


@pytest.mark.parametrize("value", VALID_NHS)
def test_valid_nhs_numbers(value):
    assert is_valid_nhs_number(value)


@pytest.mark.parametrize("value", INVALID_NHS)
def test_invalid_nhs_numbers(value):
    assert not is_valid_nhs_number(value)


def test_nhs_check_digit_ten_means_no_valid_number():
    assert nhs_check_digit("999000000") is None
    assert nhs_check_digit("943476591") == 9


def test_nhs_expressions_match_scalar_rule():
    values = [*VALID_NHS, *[v for v in INVALID_NHS if v is not None], None]
    frame = pl.DataFrame({"n": values}).with_columns(clean=nhs_number_expr("n"))
    flags = frame.with_columns(ok=nhs_valid_expr("clean"))["ok"].to_list()
    expected = [None if v is None or v == "" else is_valid_nhs_number(v) for v in values]
    assert flags == expected
    assert frame["clean"][1] == "9434765919"  # spaces removed


VALID_UPN = ["B801200005001", "b801200005001"]
INVALID_UPN = ["A801200005001", "B80120000500", "B80120000A001", "I801200005001", "", None]


@pytest.mark.parametrize("value", VALID_UPN)
def test_valid_upns(value):
    assert is_valid_upn(value)


@pytest.mark.parametrize("value", INVALID_UPN)
def test_invalid_upns(value):
    assert not is_valid_upn(value)


def test_temporary_upn_check_letter_uses_final_letter_value():
    rest = "80120000500A"
    upn = upn_check_letter(rest) + rest
    assert is_valid_upn(upn)
    assert is_temporary_upn(upn)
    # "A" is worth 0 at position 13, so it checks like a final digit 0.
    assert upn_check_letter(rest) == upn_check_letter("801200005000")
    wrong = ("B" if upn[0] != "B" else "C") + rest
    assert not is_valid_upn(wrong)


def test_upn_expression_flags_nulls_as_null():
    frame = pl.DataFrame({"u": ["B801200005001", "A801200005001", None]})
    assert frame.select(upn_valid_expr("u"))["u"].to_list() == [True, False, None]


def _generated_upns(count: int, seed: int) -> list[str | None]:
    """Valid UPNs (permanent and temporary) and every way of spoiling one: wrong or
    lower-case check letter, a character swapped for a letter, a disallowed letter, a
    non-ASCII digit or other Unicode, padding Python strips (including the information
    separators Polars does not), too short, too long, empty, null."""
    rng = random.Random(seed)
    letters = "ABCDEFGHJKLMNPQRTUVWXYZ"
    spoilers = "0123456789ABCZIOS a-\u0663\uff13\u00df\u00b2\u00e9"
    values: list[str | None] = []
    for _ in range(count):
        body = "".join(rng.choice("0123456789") for _ in range(11))
        body += rng.choice("0123456789" + letters)
        value: str | None = upn_check_letter(body) + body
        kind = rng.randrange(10)
        if kind == 1:
            value = value.lower()
        elif kind == 2:
            value = rng.choice([" ", "\t", "\x1f", "\xa0"]) + value + rng.choice(["", " ", "\x1c"])
        elif kind == 3:
            value = rng.choice(letters) + value[1:]
        elif kind == 4:
            i = rng.randrange(13)
            value = value[:i] + rng.choice(spoilers) + value[i + 1 :]
        elif kind == 5:
            value = value[: rng.randrange(14)]
        elif kind == 6:
            value += rng.choice("0A ")
        elif kind == 7:
            value = None
        elif kind == 8:
            value = "".join(
                rng.choice("0123456789AIOSZ\u0663 \t") for _ in range(rng.randrange(16))
            )
        values.append(value)
    return values


def test_upn_expression_agrees_with_the_scalar_rule_on_many_values():
    """The vectorised check staging uses gives exactly what is_valid_upn gives, value by
    value (null for null), over valid UPNs and many kinds of invalid ones."""
    values = _generated_upns(50_000, seed=7)
    flags = pl.DataFrame({"u": values}, schema={"u": pl.String}).select(upn_valid_expr("u"))
    expected = [None if v is None else is_valid_upn(v) for v in values]
    assert flags["u"].to_list() == expected
    assert 0.3 < sum(1 for e in expected if e) / len(values) < 0.7  # both kinds well covered


def test_upn_expression_on_full_width_digits_and_empty_columns():
    """Python counts non-ASCII digits as digits, so such a UPN can be valid; the check
    must agree, and cope with a column of nulls or no rows."""
    body = "801200005001"
    wide = upn_check_letter(body) + "\uff18" + body[1:]
    frame = pl.DataFrame({"u": [wide, " " + wide.lower(), "\u00df" * 13]})
    assert frame.select(upn_valid_expr("u"))["u"].to_list() == [
        is_valid_upn(wide),
        is_valid_upn(" " + wide.lower()),
        False,
    ]
    assert is_valid_upn(wide)
    nulls = pl.DataFrame({"u": [None, None]}, schema={"u": pl.String})
    assert nulls.select(upn_valid_expr("u"))["u"].to_list() == [None, None]
    empty = pl.DataFrame({"u": []}, schema={"u": pl.String})
    assert empty.select(upn_valid_expr("u"))["u"].to_list() == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ta1 2dy", "TA1 2DY"),
        ("TA12DY", "TA1 2DY"),
        ("  sw1a   1aa ", "SW1A 1AA"),
        ("M1 1AE", "M1 1AE"),
        ("b338th", "B33 8TH"),
        ("cr2 6xh", "CR2 6XH"),
        ("GIR 0AA", "GIR 0AA"),
    ],
)
def test_postcodes_normalise(raw, expected):
    assert normalise_postcode(raw) == expected


@pytest.mark.parametrize("raw", ["", "TA1", "12345", "TA1 2DYX", "QQQ 1AA", "TA1 2CI", None])
def test_unparseable_postcodes_are_none(raw):
    assert normalise_postcode(raw) is None


def test_postcode_expression_matches_scalar_rule():
    values = ["ta12dy", "sw1a 1aa", "nonsense", None]
    got = pl.DataFrame({"p": values}).select(postcode_expr("p"))["p"].to_list()
    assert got == [normalise_postcode(v) for v in values]
