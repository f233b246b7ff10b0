"""Read one source table as delivered (a CSV file or a database table) into a raw frame.

The raw frame keeps every record exactly as delivered (as text, empty = null), with its
1-based record number and any *shape* problem (wrong number of fields) noted so staging can
quarantine it. Problems that make the whole file untrustworthy — binary data, undecodable
bytes, an empty file, a missing or duplicated header column, an unknown column, another
delimiter than the source's, the header row repeated further down, a field longer than
``MAX_FIELD_CHARS``, a manifest mismatch — raise :class:`DeliveryError` naming the file, the
line where we can, and the reason.

We parse with the standard library's ``csv`` module rather than a fast bulk reader because
we need record-level control: a record with a missing field must be quarantined with its
number, not abort the file or shift its neighbours' columns.

Nearly every file is well formed, so a file is first read by Polars' CSV reader
(:func:`_parse_bulk`), whose result is kept only when it is provably what the ``csv``
module reads (the records written back as the ``csv`` module writes them are the file's
text itself); otherwise it is read in one pass of the ``csv`` module and handed to Polars
column by column (:func:`_parse_uniform`); only if anything at all is unusual (a record of
another width, a blank line, the header again, a CSV error) is it read again record by
record (:func:`_parse_careful`), which decides the outcome and the error message exactly as
before. All three give the same frame on a file any of them accepts, so which one read a
file never shows.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa

from matching.allocation import collector_paused
from warehouse.landing import MANIFEST, Delivery, DeliveryError, Manifest, file_sha256
from warehouse.sources import Source, Table

ROW_NUMBER = "_row_number"
SHAPE_ERROR = "_shape_error"
MAX_FIELD_CHARS = 1 << 20  # 1 MiB: a longer field is a broken file, not a long address

_ENCODINGS = {"utf-8": "utf-8", "windows-1252": "cp1252", "latin-1": "latin-1"}
_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_EXTRA_PREVIEW = 200  # characters of surplus fields kept in a wrong-shape reason
_EXTRA_FIELDS = 20  # surplus fields looked at for that preview


@dataclass(frozen=True)
class RawTable:
    """One delivered table: records as text, in spec column order."""

    source: str
    table: str
    origin: str  # file name, or "db:<table or query>"
    sha256: str
    frame: pl.DataFrame  # spec columns (String) + _row_number + _shape_error

    @property
    def rows(self) -> int:
        return self.frame.height


def _decode(data: bytes, encoding: str, path: Path) -> str:
    try:
        text = data.decode(_ENCODINGS[encoding])
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DeliveryError(
            path,
            f"line {line}: byte {exc.start} is not valid {encoding} ({exc.reason}); "
            f"check the source's 'encoding' setting",
        ) from exc
    return text.removeprefix("\ufeff")


def _map_header(header: Sequence[str], table: Table, path: Path) -> list[str]:
    """Apply the config's renames and check the header names exactly the spec's columns."""
    mapped = [table.renames.get(h.strip(), h.strip()) for h in header]
    duplicates = sorted(c for c, n in Counter(mapped).items() if n > 1)
    if duplicates:
        raise DeliveryError(path, f"header repeats column(s) {duplicates}")
    unknown = [c for c in mapped if c not in table.columns]
    if unknown:
        raise DeliveryError(
            path,
            f"header has unexpected column(s) {unknown}; map them onto the spec with "
            f"'renames' in the source config",
        )
    missing = [c for c in table.columns if c not in mapped]
    if missing:
        raise DeliveryError(path, f"header lacks column(s) {missing}")
    return mapped


def _frame(
    columns: list[str],
    records: Iterable[list[str | None]],
    errors: list[str | None],
    spec_order: Iterable[str],
) -> pl.DataFrame:
    records = list(records)
    data: dict[str, list[str | None]] = {c: [] for c in columns}
    if records:
        for name, values in zip(columns, zip(*records, strict=True), strict=True):
            data[name] = list(values)
    frame = pl.DataFrame(data, schema={c: pl.String for c in columns})
    frame = frame.select(list(spec_order)).with_columns(
        pl.Series(ROW_NUMBER, range(1, len(records) + 1), dtype=pl.Int64),
        pl.Series(SHAPE_ERROR, errors, dtype=pl.String),
    )
    return frame


def _check_delimiter(header: Sequence[str], table: Table, delimiter: str, path: Path) -> None:
    """A one-column header where the spec has many means the file uses another delimiter.

    Without this the reason would be an "unexpected column" named after the whole header
    line, which sends the reader looking at renames instead of at the export's settings.
    """
    if len(header) != 1 or len(table.columns) == 1:
        return
    for other, name in _DELIMITERS.items():
        if other != delimiter and other in header[0]:
            raise DeliveryError(
                path,
                f"header is a single column {header[0][:60]!r}: the file looks "
                f"{name}-separated but the source expects {_DELIMITERS.get(delimiter, delimiter)}"
                f"-separated; fix the export or the source's 'delimiter' setting",
            )


def _shape_error(fields: list[str], width: int) -> str:
    """Why a record has the wrong shape, keeping (a preview of) any fields beyond the
    header's width: they are dropped from the record's columns, so the reason carries them
    and nothing the agency sent disappears without trace."""
    error = f"record has {len(fields)} fields, the header has {width}"
    if len(fields) > width:
        # A preview, built from a few fields cut short: a line of millions of fields must
        # not be copied whole into its reason.
        shown = [f[:_EXTRA_PREVIEW] for f in fields[width : width + _EXTRA_FIELDS]]
        extra = repr(shown)
        if len(fields) - width > len(shown) or len(extra) > _EXTRA_PREVIEW:
            extra = extra[:_EXTRA_PREVIEW] + "..."
        error += f"; extra fields {extra}"
    return error


def _cells(fields: Sequence[str]) -> list[str]:
    """Fields as compared with the header: trimmed, and without the BOM a second file's
    header carries when two exports are joined."""
    return [f.strip().removeprefix("\ufeff") for f in fields]


def _header_repeated(header: Sequence[str], records: Iterable[Sequence[str]]) -> bool:
    """Whether a record is the header again (two exports joined): the one-pass readers
    then decline the file, for :func:`_parse_careful` to name the line."""
    again = _cells(header)
    first = again[0]
    return any(
        fields[0].strip().removeprefix("\ufeff") == first and _cells(fields) == again
        for fields in records
    )


def parse_csv(data: bytes, path: Path, source: Source, table_name: str) -> pl.DataFrame:
    """Parse delivered CSV bytes into a raw frame (see module docstring)."""
    table = source.tables[table_name]
    # Before decoding: none of the supported encodings has NUL bytes in text, so a NUL
    # means binary data (or a UTF-16 export), which deserves that reason rather than a
    # decoding error at some arbitrary byte.
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise DeliveryError(
            path,
            f"line {line}: not valid CSV: contains a NUL byte (binary data, or a UTF-16 "
            "export?); expected CSV text",
        )
    text = _decode(data, source.encoding, path)
    if not text.strip():
        raise DeliveryError(path, "file is empty: expected a header row")
    csv.field_size_limit(MAX_FIELD_CHARS)  # process-wide, so set whichever reader reads
    bulk = _parse_bulk(text, path, source, table)
    if bulk is not None:
        return bulk
    # Parsing makes millions of small objects and no reference cycles; left on, the cyclic
    # garbage collector rescans them again and again (half the parse time of a big file).
    with collector_paused():
        uniform = _parse_uniform(text, path, source, table)
        if uniform is not None:
            return uniform
        return _parse_careful(text, path, source, table)


def _reader(text: str, source: Source) -> Any:
    return csv.reader(io.StringIO(text, newline=""), delimiter=source.delimiter, strict=True)


def _render_field(name: str, delimiter: str) -> pl.Expr:
    """One field as the ``csv`` module's writer writes it by default (``QUOTE_MINIMAL``):
    quoted, with its quotes doubled, when it holds the delimiter, a quote or a line break,
    else as it is. Null and empty are both written empty."""
    value = pl.col(name).fill_null("")
    quoted = pl.concat_str(pl.lit('"'), value.str.replace_all('"', '""', literal=True), pl.lit('"'))
    special = value.str.contains_any([delimiter, '"', "\r", "\n"])
    return pl.when(special).then(quoted).otherwise(value)


def _well_formed(records: pl.DataFrame, table: Table) -> pl.DataFrame:
    """The raw frame of a file with no shape errors, from its records as text columns
    named as in the spec: the spec's columns in order, empty fields null, numbered 1.."""
    return records.select(
        [pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in table.columns]
    ).with_columns(
        pl.int_range(1, records.height + 1, dtype=pl.Int64).alias(ROW_NUMBER),
        pl.lit(None, dtype=pl.String).alias(SHAPE_ERROR),
    )


def _parse_bulk(text: str, path: Path, source: Source, table: Table) -> pl.DataFrame | None:
    """The raw frame of a plainly written, well-formed file, read by Polars' CSV reader;
    None for anything else, which the ``csv`` module then reads as before.

    Polars is many times faster than the ``csv`` module but does not read every file as it
    does (a quote inside an unquoted field, a lone carriage return, a blank line, a ragged
    record...). So its result is not trusted but checked: every record is written back the
    way the ``csv`` module's writer writes (:func:`_render_field`, fields joined by the
    delimiter, records by the file's line ending) and the result must be the delivered text
    itself, character for character. The ``csv`` module reads such text back into exactly
    the fields it was written from: outside quotes only the delimiter and line breaks mean
    anything and a rendered unquoted field holds neither, nor a quote; inside quotes
    everything is literal but a doubled quote, and a closing quote is followed by a
    delimiter or the line end. So when the check holds, the ``csv`` module would give
    these records, field for field, and any file where the two readers might differ fails
    the check. Two more conditions keep the rest of the careful reader's judgement: at
    least two columns (a record of one empty field is a blank line to the ``csv`` module),
    and no field near ``MAX_FIELD_CHARS``. The header repeated is looked for as
    :func:`_parse_uniform` does, and declines too. Null and empty are not told apart here,
    but the raw frame makes both null anyway.
    """
    delimiter = source.delimiter
    data = text.encode()
    try:
        grid = pl.read_csv(
            data,
            has_header=False,
            separator=delimiter,
            quote_char='"',
            comment_prefix=None,
            infer_schema=False,
            empty_string_is_null=False,
            truncate_ragged_lines=False,
            raise_if_empty=True,
        )
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException):
        return None  # a file Polars cannot read: the csv module judges it
    if grid.width < 2 or grid.height < 2:
        return None
    ending = "\r\n" if "\r\n" in text[: text.find("\n") + 1] else "\n"
    raw = grid.columns
    rendered = grid.select(
        pl.concat_str([_render_field(c, delimiter) for c in raw], separator=delimiter)
        .str.join(ending)
        .cast(pl.Binary)
    ).item()
    if data != rendered and data != rendered + ending.encode():
        return None
    longest = grid.select(pl.max_horizontal(pl.col(raw).str.len_chars().max())).item()
    if longest >= MAX_FIELD_CHARS:
        return None
    header = [v or "" for v in grid.row(0)]
    _check_delimiter(header, table, delimiter, path)
    columns = _map_header(header, table, path)
    records = grid.slice(1).rename(dict(zip(raw, columns, strict=True)))
    # Only records whose first field holds the header's first name can repeat it.
    maybe_header = records.filter(
        pl.col(columns[0]).fill_null("").str.contains(_cells(header)[0], literal=True)
    )
    if _header_repeated(header, ([v or "" for v in row] for row in maybe_header.rows())):
        return None
    return _well_formed(records, table)


def _parse_uniform(text: str, path: Path, source: Source, table: Table) -> pl.DataFrame | None:
    """The raw frame of a file whose every record has the header's width, read in one pass
    of the ``csv`` module; None when the file has anything else (a CSV error, a blank line,
    a record of another width, the header repeated), for :func:`_parse_careful` to judge.

    Same result as the careful reader on such a file: the same records (the same reader),
    numbered 1.., empty fields null, no shape errors.
    """
    reader = _reader(text, source)
    try:
        header = next(reader)
        records = list(reader)
    except csv.Error:
        return None
    if not records:
        return None
    _check_delimiter(header, table, source.delimiter, path)
    columns = _map_header(header, table, path)
    width = len(columns)
    if any(len(fields) != width for fields in records):
        return None
    if _header_repeated(header, records):
        return None
    frame = pl.DataFrame(
        [
            pl.Series(name, values, dtype=pl.String)
            for name, values in zip(columns, zip(*records, strict=True), strict=True)
        ]
    )
    del records
    return _well_formed(frame, table)


def _parse_careful(text: str, path: Path, source: Source, table: Table) -> pl.DataFrame:
    """Record by record: a record of the wrong width is kept with its shape error, a blank
    line skipped, a repeated header or CSV error rejects the file naming the line."""
    reader = _reader(text, source)
    try:
        header = next(reader)
        _check_delimiter(header, table, source.delimiter, path)
        columns = _map_header(header, table, path)
        width = len(columns)
        header_again = _cells(header)
        first = header_again[0]
        records: list[list[str | None]] = []
        errors: list[str | None] = []
        for fields in reader:
            if not fields:
                continue  # a blank line carries no data
            if (
                len(fields) == width
                and fields[0].strip().removeprefix("\ufeff") == first
                and _cells(fields) == header_again
            ):
                # Two exports joined together: what follows may repeat or contradict what
                # came before, so no record of this file can be trusted as a snapshot.
                raise DeliveryError(
                    path,
                    f"line {reader.line_num}: repeats the header row (two files joined "
                    "together?); deliver one header per file",
                )
            error = None
            if len(fields) != width:
                error = _shape_error(fields, width)
                fields = (fields + [""] * width)[:width]
            records.append([v if v != "" else None for v in fields])
            errors.append(error)
    except csv.Error as exc:
        reason = str(exc)
        if reason.startswith("field larger than field limit"):
            reason = (
                f"a field is longer than {MAX_FIELD_CHARS:,} characters (an unclosed quote, "
                "or not this table's data)"
            )
        raise DeliveryError(path, f"line {reader.line_num}: not valid CSV: {reason}") from exc
    return _frame(columns, records, errors, table.columns)


def read_file_table(
    delivery: Delivery, source: Source, table_name: str, manifest: Manifest | None
) -> RawTable:
    """Read and check one delivered file against the manifest (rows and sha256)."""
    name = source.file_name(table_name)
    path = delivery.folder / name
    if not path.is_file():
        raise DeliveryError(path, "file is missing from the delivery")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if manifest is not None:
        if name not in manifest.files:
            raise DeliveryError(path, "file is not listed in manifest.json")
        expected_rows, expected_sha = manifest.files[name]
        if sha != expected_sha:
            raise DeliveryError(
                path,
                f"sha256 {sha} does not match manifest {expected_sha}: file altered or "
                "incompletely written",
            )
    frame = parse_csv(data, path, source, table_name)
    if manifest is not None and frame.height != expected_rows:
        raise DeliveryError(path, f"{frame.height} data rows but manifest says {expected_rows}")
    return RawTable(delivery.source, table_name, name, sha, frame)


def _as_text(value: Any) -> str | None:
    """Database values onto the spec's text conventions (ISO dates, true/false)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    text = str(value)
    return text if text != "" else None


def read_database_table(source: Source, table_name: str) -> RawTable:
    """Read a configured database table or query through SQLAlchemy into a raw frame.

    Rows are ordered by the table's local key so that the same database contents always
    give the same record numbers and checksum (loading it twice changes nothing).
    """
    table = source.tables[table_name]
    db = table.database
    assert db is not None
    origin = f"db:{db.db_schema + '.' if db.db_schema else ''}{db.table or 'query'}"
    engine = sa.create_engine(db.resolved_url())
    try:
        with engine.connect() as conn:
            if db.query is not None:
                result = conn.execute(sa.text(db.query))
            else:
                target = sa.Table(db.table, sa.MetaData(), schema=db.db_schema, autoload_with=conn)
                result = conn.execute(sa.select(target))
            header = list(result.keys())
            rows = [[_as_text(v) for v in row] for row in result]
    except sa.exc.SQLAlchemyError as exc:
        raise DeliveryError(
            origin, f"database read failed: {exc.__class__.__name__}: {exc}"
        ) from exc
    finally:
        engine.dispose()
    columns = _map_header(header, table, Path(origin))
    if table.local_key:
        key_idx = [columns.index(k) for k in table.local_key]
        rows.sort(key=lambda r: tuple(r[i] or "" for i in key_idx))
    frame = _frame(columns, rows, [None] * len(rows), table.columns)
    digest = hashlib.sha256()
    for row in frame.drop(ROW_NUMBER, SHAPE_ERROR).iter_rows():
        digest.update(("\x1f".join("" if v is None else v for v in row) + "\x1e").encode())
    return RawTable(source.name, table_name, origin, digest.hexdigest(), frame)


def file_checksums(delivery: Delivery, source: Source) -> dict[str, str] | None:
    """sha256 per table file, or None when a table is read from a database or a file is
    missing. Lets an already-loaded delivery be recognised without parsing it again."""
    sums: dict[str, str] = {}
    for name, cfg in source.tables.items():
        path = delivery.folder / source.file_name(name)
        if cfg.database is not None or not path.is_file():
            return None
        sums[name] = file_sha256(path)
    return sums


def read_delivery(delivery: Delivery, source: Source, manifest: Manifest | None) -> list[RawTable]:
    """Every table of a delivery, or a DeliveryError before anything is returned.

    A file in the folder that no table of the source reads (a second part of a split
    export, a table the config does not know yet) rejects the delivery: loading the rest
    would lose that file's rows without a word. Hidden files (``.DS_Store``, a transfer
    tool's partial files) are not the agency's data and are left alone, and a source read
    wholly from its database has no folder of files to check."""
    expected = {source.file_name(t) for t, c in source.tables.items() if c.database is None}
    stray = sorted(
        p.name
        for p in (delivery.folder.iterdir() if expected and delivery.folder.is_dir() else ())
        if not p.name.startswith(".") and p.name != MANIFEST and p.name not in expected
    )
    if stray:
        raise DeliveryError(
            delivery.folder / stray[0],
            f"file(s) no table of source {source.name!r} reads: {stray} (its tables' files: "
            f"{sorted(expected)}); the delivery is rejected rather than loaded without them",
        )
    if manifest is not None:
        unexpected = sorted(set(manifest.files) - expected)
        if unexpected:
            raise DeliveryError(
                delivery.manifest_path,
                f"manifest lists file(s) not in the source config: {unexpected}",
            )
    tables = []
    for name, cfg in source.tables.items():
        if cfg.database is not None:
            tables.append(read_database_table(source, name))
        else:
            tables.append(read_file_table(delivery, source, name, manifest))
    return tables
