"""The one-pass reader of well-formed files gives exactly what the record-by-record reader
gives, and hands every unusual file to it (which decides errors and quarantine reasons)."""

import csv
import io
import random
from pathlib import Path

import pytest
from conftest import ATTENDANCE_HEADER as HEADER
from polars.testing import assert_frame_equal

from warehouse.landing import DeliveryError
from warehouse.reader import _parse_careful, _parse_uniform, parse_csv

PATH = Path("attendance.csv")


def _both(sources, text: str):
    source = sources["school"]
    table = source.tables["attendance"]
    return _parse_uniform(text, PATH, source, table), _parse_careful(text, PATH, source, table)


WELL_FORMED = {
    "quoted delimiters, quotes and newlines": (
        ",".join(HEADER) + "\r\n"
        'B1,"10,0001","2026\r\nSPR","say ""30""",  ,\r\n'
        "B2,100002,2026-SPR,30,1,0\r\n"
    ),
    "lf, no final newline": ",".join(HEADER) + "\nB1,1,T,2,3,4\nB2,,,,,",
    "cr line ends": ",".join(HEADER) + "\rB1,1,T,2,3,4\rB2,5,T,6,7,8\r",
    "reordered header": (
        "school_urn, upn ,term,sessions_possible,sessions_authorised_absent,"
        "sessions_unauthorised_absent\nU1,B1,T,1,2,3\n"
    ),
    "header cells only look alike": (
        ",".join(HEADER) + "\n" + "upn,school_urn,term,sessions_possible,x,y\n"
    ),
    "unicode and whitespace": ",".join(HEADER) + "\nÉcole ß,\t,  ,٣,１,\u00a0\n",
}


@pytest.mark.parametrize("name", WELL_FORMED)
def test_well_formed_files_take_one_pass_with_the_careful_result(sources, name):
    uniform, careful = _both(sources, WELL_FORMED[name])
    assert uniform is not None
    assert_frame_equal(uniform, careful)


UNUSUAL = {
    "short record": ",".join(HEADER) + "\nB1,1,T,2,3,4\nB2,1\n",
    "long record": ",".join(HEADER) + "\nB1,1,T,2,3,4,5,6\n",
    "blank line": ",".join(HEADER) + "\nB1,1,T,2,3,4\n\nB2,1,T,2,3,4\n",
    "header again": ",".join(HEADER)
    + "\nB1,1,T,2,3,4\n \ufeffupn ,school_urn,"
    + ",".join(HEADER[2:])
    + "\n",
    "bad quoting": ",".join(HEADER) + '\nB1,1,T,2,3,4\nB2,"1"x,T,2,3,4\n',
    "bad quoting after the header again": ",".join(HEADER)
    + "\n"
    + ",".join(HEADER)
    + '\nB2,"1"x,T,2,3,4\n',
    "header only": ",".join(HEADER) + "\n",
}


@pytest.mark.parametrize("name", UNUSUAL)
def test_unusual_files_are_left_to_the_careful_reader(sources, name):
    """Declined by the one-pass reader; parse_csv's frame or error is the careful one's
    (an early repeated header is still reported before a later quoting error)."""
    text = UNUSUAL[name]
    source, table = sources["school"], sources["school"].tables["attendance"]
    assert _parse_uniform(text, PATH, source, table) is None
    try:
        careful = _parse_careful(text, PATH, source, table)
    except DeliveryError as exc:
        with pytest.raises(DeliveryError) as raised:
            parse_csv(text.encode(), PATH, source, "attendance")
        assert str(raised.value) == str(exc)
        assert ("line 2" in str(exc)) == (name == "bad quoting after the header again")
    else:
        assert_frame_equal(parse_csv(text.encode(), PATH, source, "attendance"), careful)


def test_generated_files_parse_as_the_careful_reader_parses_them(sources):
    """Many random files, written the way exports write CSV, some with a record cut short
    or padded: the result (frame or error) is always the careful reader's."""
    rng = random.Random(11)
    alphabet = ["a", "Z", "0", "7", " ", ",", '"', "\n", "\r\n", "é", "", "\t", "\ufeff"]
    source, table = sources["school"], sources["school"].tables["attendance"]
    fast_used = 0
    for _ in range(300):
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator=rng.choice(["\r\n", "\n"]))
        writer.writerow(HEADER)
        for _ in range(rng.randrange(1, 30)):
            width = 6 if rng.random() < 0.97 else rng.choice([1, 5, 7])
            writer.writerow(
                [
                    "".join(rng.choice(alphabet) for _ in range(rng.randrange(5)))
                    for _ in range(width)
                ]
            )
        text = buffer.getvalue()
        fast_used += _parse_uniform(text, PATH, source, table) is not None
        assert_frame_equal(
            parse_csv(text.encode(), PATH, source, "attendance"),
            _parse_careful(text, PATH, source, table),
        )
    assert 50 < fast_used < 300  # both paths were exercised
