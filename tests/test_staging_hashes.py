"""``_record_hash`` values are stored and compared with the next night's: however they are
computed, they must stay the very values written before (a SHA-256 of the rules'
fingerprint then the record's JSON, first 32 hex digits)."""

import hashlib
import json
import random

import polars as pl
from polars.testing import assert_series_equal

from warehouse.reader import ROW_NUMBER, SHAPE_ERROR
from warehouse.staging import RECORD_HASH, record_hashes, rules_fingerprint

SOURCE, TABLE = "police", "involvements"  # columns: incident_ref, nominal_id, role


def _frame(sources, rows: list[tuple[str | None, ...]]) -> pl.DataFrame:
    columns = [*sources[SOURCE].tables[TABLE].columns, SHAPE_ERROR]
    frame = pl.DataFrame(rows, schema={c: pl.String for c in columns}, orient="row")
    return frame.with_columns(pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias(ROW_NUMBER))


def _expected(sources, record_json: str) -> str:
    prefix = rules_fingerprint(sources[SOURCE], TABLE)
    return hashlib.sha256((prefix + record_json).encode()).hexdigest()[:32]


def test_hash_is_of_the_fingerprint_then_the_record_json(sources):
    """Spelled out by hand: null as JSON null, text escaped as JSON, non-ASCII as UTF-8."""
    assert list(sources[SOURCE].tables[TABLE].columns) == ["incident_ref", "nominal_id", "role"]
    frame = _frame(
        sources,
        [
            ("I1", "N1", "victim", None),
            ("I2", None, "", "record has 2 fields, the header has 3"),
            ('Zoë "Jr"', "a\\b\n\t", "😀", None),
            ("\x00\x1f\r", "\ufeff𝄞", "\x7f\u2028", "\x08\x0c"),
        ],
    )
    expected = [
        _expected(
            sources, '{"incident_ref":"I1","nominal_id":"N1","role":"victim","_shape_error":null}'
        ),
        _expected(
            sources,
            '{"incident_ref":"I2","nominal_id":null,"role":"",'
            '"_shape_error":"record has 2 fields, the header has 3"}',
        ),
        _expected(
            sources,
            '{"incident_ref":"Zoë \\"Jr\\"","nominal_id":"a\\\\b\\n\\t","role":"😀",'
            '"_shape_error":null}',
        ),
        # Control characters escaped (short forms where JSON has them), the byte-order
        # mark, DEL, U+2028 and a character beyond the BMP as they are, in UTF-8.
        _expected(
            sources,
            '{"incident_ref":"\\u0000\\u001f\\r","nominal_id":"\ufeff𝄞",'
            '"role":"\x7f\u2028","_shape_error":"\\b\\f"}',
        ),
    ]
    assert_series_equal(
        record_hashes(frame, sources[SOURCE], TABLE), pl.Series(RECORD_HASH, expected)
    )


def _as_before(frame: pl.DataFrame, source, table_name: str) -> pl.Series:
    """How the hashes were computed when the stored ones were written, spelled out without
    Polars: compact JSON (no spaces), text as UTF-8 (not ``\\u`` escapes) but control
    characters escaped, as the hand-pinned rows above show."""
    columns = [*source.tables[table_name].columns, SHAPE_ERROR]
    prefix = rules_fingerprint(source, table_name).encode()
    encoded = [
        json.dumps(dict(zip(columns, row, strict=True)), separators=(",", ":"), ensure_ascii=False)
        for row in frame.select(columns).iter_rows()
    ]
    return pl.Series(
        RECORD_HASH,
        [hashlib.sha256(prefix + r.encode()).hexdigest()[:32] for r in encoded],
        pl.String,
    )


def test_hashes_are_those_stored_before_on_any_text(sources):
    rng = random.Random(9)
    alphabet = [
        "a",
        "Z",
        "0",
        " ",
        ",",
        '"',
        "\\",
        "\n",
        "\r",
        "\t",
        "\x00",
        "\x1f",
        "é",
        "😀",
        "\ufeff",
    ]
    rows = [
        tuple(
            None if rng.random() < 0.2 else "".join(rng.choices(alphabet, k=rng.randrange(6)))
            for _ in range(4)
        )
        for _ in range(2000)
    ]
    # And each awkward character on its own, whatever the draw above gave.
    rows += [(c, c * 2, f"x{c}y", None) for c in [*alphabet, "\x7f", "\u2028", "𝄞", "\x08"]]
    frame = _frame(sources, rows)
    assert_series_equal(
        record_hashes(frame, sources[SOURCE], TABLE), _as_before(frame, sources[SOURCE], TABLE)
    )
    for table in sources["health"].tables:  # other tables: other fingerprints and columns
        raw = pl.DataFrame(
            {c: ["x", None] for c in sources["health"].tables[table].columns}
            | {SHAPE_ERROR: [None, "short"]}
        )
        assert_series_equal(
            record_hashes(raw, sources["health"], table), _as_before(raw, sources["health"], table)
        )


def test_no_records_no_hashes(sources):
    hashes = record_hashes(_frame(sources, []), sources[SOURCE], TABLE)
    assert hashes.name == RECORD_HASH and hashes.dtype == pl.String and hashes.len() == 0
