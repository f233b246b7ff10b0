"""Polars' bulk reader is used only where the ``csv`` module would read the same fields:
on every file, adversarial or random, ``parse_csv`` gives exactly what the record-by-record
reader gives (frame or error), and the check the bulk reader's result must pass is sound."""

import csv
import io
import random
from pathlib import Path

import polars as pl
import pytest
from conftest import ATTENDANCE_HEADER as HEADER
from polars.testing import assert_frame_equal

from warehouse.landing import DeliveryError
from warehouse.reader import MAX_FIELD_CHARS, _parse_bulk, _parse_careful, _render_field, parse_csv

PATH = Path("attendance.csv")
HEAD = ",".join(HEADER)


def _same_as_careful(sources, text: str) -> bool:
    """Assert parse_csv and the careful reader agree (frame or error message); return
    whether the bulk reader took the file."""
    source = sources["school"]
    table = source.tables["attendance"]
    decoded = text.removeprefix("\ufeff")  # what parse_csv hands either reader
    bulk_error = careful_error = None
    try:
        bulk = _parse_bulk(decoded, PATH, source, table)
    except DeliveryError as exc:
        bulk, bulk_error = None, str(exc)
    try:
        careful = _parse_careful(decoded, PATH, source, table)
    except DeliveryError as exc:
        careful, careful_error = None, str(exc)
    if bulk_error is not None:
        assert bulk_error == careful_error
        return True
    if careful_error is not None:
        assert bulk is None
        with pytest.raises(DeliveryError) as raised:
            parse_csv(text.encode(), PATH, source, "attendance")
        assert str(raised.value) == careful_error
        return False
    if bulk is not None:
        assert_frame_equal(bulk, careful)
    assert_frame_equal(parse_csv(text.encode(), PATH, source, "attendance"), careful)
    return bulk is not None


# name: (text, whether the bulk reader may take it)
ADVERSARIAL = {
    "plain crlf": (HEAD + "\r\nB1,1,T,2,3,4\r\nB2,5,T,6,7,8\r\n", True),
    "plain lf, no final newline": (HEAD + "\nB1,1,T,2,3,4\nB2,5,T,6,7,8", True),
    "quoted delimiter": (HEAD + '\r\nB1,"1,5",T,2,3,4\r\n', True),
    "doubled quotes": (HEAD + '\r\nB1,"say ""hi""",T,2,3,4\r\n', True),
    "quoted crlf and lone cr and lf": (HEAD + '\r\nB1,"a\r\nb","c\rd","e\nf",3,4\r\n', True),
    "whitespace-only fields": (HEAD + "\r\nB1,  ,\t,2, ,4\r\n", True),
    "empty fields": (HEAD + "\r\nB1,,,,,\r\n", True),
    "unicode": (HEAD + "\r\nÉcole,ß,٣,１,\u00a0,\u2028\r\n", True),
    "bom inside a field": (HEAD + "\r\n\ufeffB1,1,T,2,3,4\r\n", True),
    "bom at the start": ("\ufeff" + HEAD + "\r\nB1,1,T,2,3,4\r\n", True),
    "two boms at the start": ("\ufeff\ufeff" + HEAD + "\r\nB1,1,T,2,3,4\r\n", False),
    "quoted empty field": (HEAD + '\r\nB1,"",T,2,3,4\r\n', False),
    "needlessly quoted field": (HEAD + '\r\n"B1",1,T,2,3,4\r\n', False),
    "quote inside an unquoted field": (HEAD + '\r\nB1,1"5,T,2,3,4\r\n', False),
    "quote ending an unquoted field": (HEAD + '\r\nB1,15",T,2,3,4\r\n', False),
    "text after a closing quote": (HEAD + '\r\nB1,"abc"def,T,2,3,4\r\n', False),
    "unclosed quote": (HEAD + '\r\nB1,"abc,T,2,3,4\r\n', False),
    "trailing delimiter": (HEAD + "\r\nB1,1,T,2,3,4,\r\n", False),
    "trailing delimiter on the header too": (HEAD + ",\r\nB1,1,T,2,3,4,\r\n", True),
    "short record": (HEAD + "\r\nB1,1,T\r\n", False),
    "long record": (HEAD + "\r\nB1,1,T,2,3,4,5\r\n", False),
    "blank line": (HEAD + "\r\nB1,1,T,2,3,4\r\n\r\nB2,5,T,6,7,8\r\n", False),
    "blank lines at the end": (HEAD + "\r\nB1,1,T,2,3,4\r\n\r\n\r\n", False),
    "cr line ends": (HEAD + "\rB1,1,T,2,3,4\rB2,5,T,6,7,8\r", False),
    "mixed line ends": (HEAD + "\r\nB1,1,T,2,3,4\nB2,5,T,6,7,8\r\n", False),
    "lone cr in an unquoted field": (HEAD + "\r\nB1,1\r5,T,2,3,4\r\n", False),
    "header again": (HEAD + "\r\nB1,1,T,2,3,4\r\n" + HEAD + "\r\n", False),
    "header again, padded and with a bom": (
        HEAD + "\r\nB1,1,T,2,3,4\r\n \ufeffupn ,school_urn," + ",".join(HEADER[2:]) + "\r\n",
        False,
    ),
    "header look-alike": (HEAD + "\r\nupn,school_urn,term,x,y,z\r\n", True),
    "header only": (HEAD + "\r\n", False),
    "semicolons": (HEAD.replace(",", ";") + "\r\nB1;1;T;2;3;4\r\n", False),
    "unknown column": (HEAD + ",extra\r\nB1,1,T,2,3,4,5\r\n", True),
    "missing column": (",".join(HEADER[:-1]) + "\r\nB1,1,T,2,3\r\n", True),
    "duplicated column": (HEAD + ",upn\r\nB1,1,T,2,3,4,5\r\n", True),
    "a field at the size limit": (HEAD + "\r\nB1," + "x" * MAX_FIELD_CHARS + ",T,2,3,4\r\n", False),
    "a field over the size limit": (
        HEAD + "\r\nB1," + "x" * (MAX_FIELD_CHARS + 1) + ",T,2,3,4\r\n",
        False,
    ),
    "a quoted field over the size limit": (
        HEAD + '\r\nB1,"' + "x" * (MAX_FIELD_CHARS + 5) + '",T,2,3,4\r\n',
        False,
    ),
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_files_read_as_the_csv_module_reads_them(sources, name):
    text, bulk_may_take = ADVERSARIAL[name]
    assert _same_as_careful(sources, text) == bulk_may_take


def _mutate(text: str, rng: random.Random) -> str:
    """A random small corruption of the kind a broken export makes."""
    at = rng.randrange(len(text) + 1)
    what = rng.choice(['"', ",", "\r", "\n", "\r\n", "", "x", '""'])
    cut = rng.choice([0, 0, 1])
    return text[:at] + what + text[at + cut :]


def test_random_files_read_as_the_csv_module_reads_them(sources):
    """Files written the way exports write CSV, some then corrupted by a stray quote,
    delimiter, line break or cut: the result is always the careful reader's, and the bulk
    reader took both kinds of file (so both paths were exercised)."""
    rng = random.Random(5)
    alphabet = ["a", "Z", "0", " ", ",", '"', "\n", "\r", "\r\n", "é", "", "\t", "\ufeff", ";"]
    took = {True: 0, False: 0}
    for round_ in range(400):
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator=rng.choice(["\r\n", "\n"]))
        writer.writerow(HEADER)
        for _ in range(rng.randrange(1, 20)):
            writer.writerow(
                ["".join(rng.choice(alphabet) for _ in range(rng.randrange(4))) for _ in HEADER]
            )
        text = buffer.getvalue()
        mutated = round_ % 2 == 1
        if mutated:
            text = _mutate(text, rng)
        took[mutated] += _same_as_careful(sources, text)
    # Not every written file is well formed: with a "\n" line ending the csv module's
    # writer leaves a lone "\r" unquoted, which its reader takes for a line break.
    assert took[False] > 80
    assert 10 < took[True] < 190  # corrupted files sometimes still go the bulk way


def test_rendering_is_what_the_csv_module_reads_back():
    """The check's premise: records rendered as :func:`_render_field` writes them are read
    back by the ``csv`` module into exactly those fields (null read back as empty)."""
    rng = random.Random(3)
    alphabet = ["a", " ", ",", ";", '"', "\n", "\r", "\r\n", "\t", "é", "\ufeff", "\x0b", "\u2028"]
    for delimiter in (",", ";", "\t", "|"):
        for ending in ("\r\n", "\n"):
            rows = [
                [
                    None
                    if rng.random() < 0.1
                    else "".join(rng.choice(alphabet) for _ in range(rng.randrange(5)))
                    for _ in range(4)
                ]
                for _ in range(300)
            ]
            grid = pl.DataFrame(rows, schema=["a", "b", "c", "d"], orient="row")
            text = grid.select(
                pl.concat_str(
                    [_render_field(c, delimiter) for c in grid.columns], separator=delimiter
                ).str.join(ending)
            ).item()
            back = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
            assert back == [["" if v is None else v for v in row] for row in rows]
