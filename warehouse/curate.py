"""Build the curated Family View tables from the current deliveries and the linkage.

Everything source-specific comes from configuration: person-level rows are read through
the linkage mapping (``config/linkage.yaml``), and golden-record survivorship, events,
involvements and the child summary through ``config/curated.yaml``. The result is a dict of
frames whose columns are exactly those of :mod:`warehouse.curated_schema`; the publisher
writes them into a new snapshot file.

Dates that decide status ("open", "in the last 12 months", "this academic year") are taken
relative to the *as-of date* of the data (the newest loaded delivery), never the wall
clock, so rebuilding a snapshot from the same deliveries gives the same answer.

Event and involvement rows whose person key the linkage does not know are not dropped
silently: :class:`CuratedBuild` counts them per agency for the publish checks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import duckdb
import polars as pl

from matching.config import LinkageConfig
from matching.identifiers import (
    nhs_number_expr,
    nhs_valid_expr,
    postcode_expr,
    upn_valid_expr,
)
from matching.standardise import nickname_table
from warehouse import corrections
from warehouse.curated_config import CuratedConfig, Query
from warehouse.curated_schema import TABLES
from warehouse.person_rows import read_person_rows
from warehouse.sources import Source
from warehouse.store import table_exists

_NAME_FIELDS = ("forename", "middle_names", "surname")
_ADDRESS = ("address_line_1", "address_line_2", "town", "postcode", "uprn")


class CurationError(RuntimeError):
    """The curated tables cannot be built (a configured query failed, no linkage yet)."""


@dataclass
class CuratedBuild:
    as_of: date
    tables: dict[str, pl.DataFrame]
    # Rows of events/involvements/attributes whose person the linkage does not know, per
    # "<section>:<agency or table>": reported by the publish checks, never silently lost.
    unlinked: dict[str, int] = field(default_factory=dict)
    # Rectifications a source has overtaken tonight: the caller records them as lapsed.
    lapsed: list[corrections.Lapsed] = field(default_factory=list)


def as_of_date(con: duckdb.DuckDBPyConnection) -> date:
    """The newest loaded extract date: "today" for everything the snapshot says."""
    if table_exists(con, "meta", "deliveries"):
        row = con.sql(
            "select max(extract_date) from meta.deliveries where status = 'loaded'"
        ).fetchall()
        if row and row[0][0] is not None:
            return row[0][0]
    raise CurationError("no delivery has been loaded yet: nothing to curate")


def _linked_rows(
    con: duckdb.DuckDBPyConnection,
    query: Query,
    links: pl.DataFrame,
    unlinked: dict[str, int],
    label: str,
    sql: str | None = None,
) -> pl.DataFrame | None:
    """Run a configured query and attach each row's ``person_id`` through its person table.

    A table not delivered yet gives None (the first nights run before every agency has
    sent everything); any other query error fails naming the section. Rows whose key no
    linked person holds are counted in ``unlinked[label]``, never silently dropped.
    """
    try:
        frame = con.sql(sql or query.sql).pl()
    except duckdb.CatalogException:
        return None
    except duckdb.Error as err:
        raise CurationError(f"{label}: configured query failed: {err}") from err
    resolved, missing = _resolve(frame, query.source, query.table, links)
    if missing:
        unlinked[label] = unlinked.get(label, 0) + missing
    return resolved


def _to_date(column: str) -> pl.Expr:
    return pl.col(column).str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)


def _per_distinct(column: pl.Expr, function, dtype: pl.DataType) -> pl.Expr:
    """``function`` of each value of ``column`` (null stays null), called once per distinct
    value: what ``map_elements`` gives, without a Python call for every row."""

    def apply(values: pl.Series) -> pl.Series:
        distinct = values.drop_nulls().unique()
        mapping = pl.DataFrame(
            [distinct.rename("_v"), pl.Series("_f", [function(v) for v in distinct], dtype=dtype)]
        )
        return (
            values.rename("_v")
            .to_frame()
            .join(mapping, on="_v", how="left", maintain_order="left")
            .get_column("_f")
            .rename(values.name)
        )

    return column.map_batches(apply, return_dtype=dtype)


def _json_values(column: pl.Expr) -> pl.Expr:
    """``json.dumps`` of each value of a string column (null -> ``null``), byte for byte.

    The curated JSON columns (provenance, key workers, deliveries) are assembled in
    Polars from these pieces instead of a Python call per row; a column holds few distinct
    values (table names, teams, practitioners), so each is encoded once.
    """

    def encode(values: pl.Series) -> pl.Series:
        distinct = values.drop_nulls().unique()
        encoded = pl.Series([json.dumps(v) for v in distinct.to_list()], dtype=pl.String)
        return values.replace_strict(distinct, encoded, return_dtype=pl.String)

    return column.cast(pl.String).map_batches(encode, return_dtype=pl.String).fill_null("null")


def _json_object(pairs: list[tuple[str, pl.Expr]]) -> pl.Expr:
    """``json.dumps`` of a dict with the given (key, value) entries in that order; an entry
    whose value is null is left out (the caller decides what counts as missing)."""
    entries = [
        pl.when(value.is_not_null()).then(pl.lit(json.dumps(key) + ": ") + _json_values(value))
        for key, value in pairs
    ]
    return pl.lit("{") + pl.concat_str(entries, separator=", ", ignore_nulls=True) + pl.lit("}")


def _record_links(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    if not table_exists(con, "linked", "person_records"):
        raise CurationError("linkage has not run yet: no linked.person_records")
    return con.sql(
        "select source, source_table, local_key, person_id from linked.person_records"
    ).pl()


def _resolve(
    frame: pl.DataFrame, source: str, table: str, links: pl.DataFrame
) -> tuple[pl.DataFrame, int]:
    """Attach ``person_id`` through (source, table, local_key); count keys not linked."""
    keyed = frame.with_columns(
        pl.lit(source).alias("source"),
        pl.lit(table).alias("source_table"),
        pl.col("local_key").cast(pl.String),
    )
    joined = keyed.join(links, on=["source", "source_table", "local_key"], how="left")
    missing = joined.filter(pl.col("person_id").is_null()).height
    return joined.filter(pl.col("person_id").is_not_null()), missing


# --- person -----------------------------------------------------------------------------


def _person_rows(
    con: duckdb.DuckDBPyConnection, linkage: LinkageConfig, links: pl.DataFrame
) -> pl.DataFrame:
    rows = read_person_rows(con, linkage)
    # Tables map only the fields they have: the rest are absent, read as null.
    wanted = (
        *_NAME_FIELDS, "dob", "dob_estimated", "sex", "nhs_number", "upn", *_ADDRESS,
        "date_of_death", "updated_at", "last_seen", "preferred_forename",
        "preferred_surname", "former_surname",
    )  # fmt: skip
    rows = rows.with_columns(
        pl.lit(None, dtype=pl.String).alias(c) for c in wanted if c not in rows.columns
    )
    sex_values = {k.lower(): v for k, v in linkage.sex_values.items()}
    sex = pl.col("sex").str.strip_chars().str.to_lowercase()
    rows = rows.join(links, on=["source", "source_table", "local_key"], how="inner")
    # Lazily, so the NHS number is cleaned once rather than once per check digit (the
    # engine shares the repeated sub-expressions): same expressions, same values.
    return (
        rows.lazy()
        .with_columns(
            (pl.col("source") + "." + pl.col("source_table")).alias("_table"),
            pl.coalesce(_to_date("updated_at"), _to_date("last_seen"), pl.col("extract_date"))
            .cast(pl.Date)
            .alias("_record_date"),
            pl.when(nhs_valid_expr("nhs_number"))
            .then(nhs_number_expr("nhs_number"))
            .alias("nhs_number"),
            pl.when(upn_valid_expr("upn")).then(pl.col("upn")).alias("upn"),
            sex.replace_strict(sex_values, default=sex.str.to_uppercase())
            .replace_strict({"M": "M", "F": "F"}, default="U")
            .alias("sex"),
            *(pl.col(c).str.strip_chars().replace("", None).alias(c) for c in _NAME_FIELDS),
        )
        .collect()
    )


def _newest_first(rows: pl.DataFrame, fields: list[str]) -> pl.DataFrame:
    """Each person's records (``fields`` and what :func:`_survive` needs), the most recent
    first; two of one date by the lower local key, every night (not whichever the delivery
    happened to list first), so a surviving value does not flap. Sorted once for all."""
    needed = ["person_id", "_record_date", "local_key", "_table", "dob_estimated", *fields]
    return rows.select(list(dict.fromkeys(needed))).sort(
        ["person_id", "_record_date", "local_key"], descending=[False, True, False]
    )


def _survive(newest_first: pl.DataFrame, field_name: str, order: list[str]) -> pl.DataFrame:
    """Per person, the value of ``field_name`` from the first table in ``order`` holding it
    (the most recent record of that table when it holds several).

    ``newest_first`` is :func:`_newest_first`'s order: keeping each person's rows of their
    best table, in that order, the first row is the one to take, with no sort per field.
    """
    preference = {name: i for i, name in enumerate(order)}
    rank = pl.col("_table").replace_strict(preference, default=None, return_dtype=pl.Int32)
    return (
        newest_first.filter(pl.col(field_name).is_not_null())
        .with_columns(rank.alias("_rank"))
        .filter(pl.col("_rank") == pl.col("_rank").min().over("person_id"))
        .group_by("person_id", maintain_order=True)
        .first()
        .select(
            "person_id",
            pl.col(field_name),
            pl.col("_table").alias(f"_src_{field_name}"),
            *([pl.col("dob_estimated")] if field_name == "dob" else []),
        )
    )


def _alternative_names(rows: pl.DataFrame, golden: pl.DataFrame) -> pl.DataFrame:
    variants = []
    for fore, sur in (
        ("forename", "surname"),
        ("preferred_forename", "surname"),
        ("forename", "preferred_surname"),
        ("forename", "former_surname"),
    ):
        variants.append(
            rows.select(
                "person_id",
                pl.concat_str(
                    [pl.col(fore).str.strip_chars(), pl.col(sur).str.strip_chars()], separator=" "
                ).alias("name"),
            )
        )
    names = pl.concat(variants).drop_nulls("name").unique()
    current = golden.select(
        "person_id", pl.concat_str(["forename", "surname"], separator=" ").alias("_current")
    )
    return (
        names.join(current, on="person_id", how="left")
        .filter(pl.col("name") != pl.col("_current").fill_null(""))
        .group_by("person_id")
        .agg(pl.col("name").sort().alias("alternative_names"))
    )


def _attributes(
    con: duckdb.DuckDBPyConnection, config: CuratedConfig, links: pl.DataFrame, unlinked: dict
) -> pl.DataFrame:
    frames = []
    for query in config.attributes:
        resolved = _linked_rows(con, query, links, unlinked, f"attributes:{query.person_table}")
        if resolved is None:
            continue
        frames.append(
            resolved.with_columns(
                pl.concat_str(["source", "source_table", "local_key"], separator="|").alias(
                    "_record"
                )
            )
            .drop("source", "source_table", "local_key")
            .with_columns(pl.all().exclude("person_id", "_record").cast(pl.String))
        )
    if not frames:
        return pl.DataFrame(schema={"person_id": pl.String})
    merged = pl.concat(frames, how="diagonal_relaxed")
    # A pupil on roll is preferred over a record at a school they have left; otherwise
    # records are taken in (table, local key) order, the same every night.
    on_roll = [pl.col("on_roll").fill_null("false")] if "on_roll" in merged.columns else []
    merged = merged.sort(
        [*on_roll, pl.col("_record")], descending=[True] * len(on_roll) + [False]
    ).drop("_record")
    return merged.group_by("person_id", maintain_order=True).agg(pl.all().drop_nulls().first())


def build_person(
    rows: pl.DataFrame,
    attributes: pl.DataFrame,
    households: pl.DataFrame,
    config: CuratedConfig,
    as_of: date,
) -> pl.DataFrame:
    persons = rows.select("person_id").unique()
    golden = persons
    sources_of: dict[str, str] = {}
    newest_first = _newest_first(rows, list(config.survivorship))
    for field_name, order in config.survivorship.items():
        survived = _survive(newest_first, field_name, order)
        golden = golden.join(survived, on="person_id", how="left")
        sources_of[field_name] = f"_src_{field_name}"
    address = (
        rows.filter(pl.col("address_line_1").is_not_null() | pl.col("postcode").is_not_null())
        # Records dated the same day (often: a record without an update time is dated by
        # its delivery): the first by table and local key, every night.
        .sort(
            ["person_id", "_record_date", "_table", "local_key"],
            descending=[False, True, False, False],
        )
        .group_by("person_id", maintain_order=True)
        .first()
        .select(
            "person_id",
            *_ADDRESS,
            pl.col("_record_date").alias("address_as_of"),
            pl.col("_table").alias("_src_address"),
        )
    )
    sources_of["address"] = "_src_address"
    golden = golden.join(address, on="person_id", how="left")
    stats = rows.group_by("person_id").agg(
        pl.col("source").unique().sort().alias("sources"),
        pl.len().cast(pl.Int32).alias("record_count"),
    )
    golden = golden.join(_alternative_names(rows, golden), on="person_id", how="left")
    golden = golden.join(stats, on="person_id", how="left")
    golden = golden.join(attributes, on="person_id", how="left")
    golden = golden.join(
        households.select("person_id", "household_id").unique("person_id"),
        on="person_id",
        how="left",
    )
    for missing in ("ethnicity", "school_urn", "school_name", "gp_practice_code", "sen_provision"):
        if missing not in golden.columns:
            golden = golden.with_columns(pl.lit(None, dtype=pl.String).alias(missing))
    dob = _to_date("dob")
    age = (
        pl.lit(as_of).dt.year()
        - dob.dt.year()
        - (
            (pl.lit(as_of).dt.month() < dob.dt.month())
            | (
                (pl.lit(as_of).dt.month() == dob.dt.month())
                & (pl.lit(as_of).dt.day() < dob.dt.day())
            )
        ).cast(pl.Int32)
    )
    # {field: table} of the fields that have a source, keys sorted (as json sort_keys).
    provenance = _json_object(
        [
            (name, pl.when(pl.col(src) != "").then(pl.col(src)))
            for name, src in sorted(sources_of.items())
        ]
    )
    valid_postcode = postcode_expr("postcode")
    postcode = pl.coalesce(valid_postcode, pl.col("postcode").str.strip_chars())
    # Lazily: the date of birth, age and postcode expressions repeat, and are worked out once.
    return (
        golden.lazy()
        .select(
            "person_id",
            "forename",
            "middle_names",
            "surname",
            pl.col("alternative_names").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            dob.alias("dob"),
            (pl.col("dob_estimated").str.to_lowercase() == "true")
            .fill_null(False)
            .alias("dob_estimated"),
            age.cast(pl.Int32).alias("age"),
            (age < config.child_summary.adult_age).alias("is_child"),
            pl.col("sex").fill_null("U"),
            "ethnicity",
            "nhs_number",
            "upn",
            "address_line_1",
            "address_line_2",
            "town",
            postcode.alias("postcode"),
            # Only a real postcode has a district; "N/K" or "NFA" stay without one.
            valid_postcode.str.split(" ").list.first().alias("postcode_district"),
            "uprn",
            "address_as_of",
            _to_date("date_of_death").alias("date_of_death"),
            _to_date("date_of_death").is_not_null().alias("deceased"),
            "household_id",
            "school_urn",
            "school_name",
            "gp_practice_code",
            "sen_provision",
            "sources",
            "record_count",
            provenance.alias("field_sources"),
        )
        .sort("person_id")
        .collect()
    )


def normalise_name(expr: pl.Expr) -> pl.Expr:
    """Lower case, accents dropped, letters only: how names are compared in search."""
    return (
        expr.str.normalize("NFKD")
        .str.to_lowercase()
        .str.replace_all(r"[^a-z]", "")
        .replace("", None)
    )


def build_person_names(rows: pl.DataFrame) -> pl.DataFrame:
    """Every (forename, surname) a person's records use, for typo- and nickname-tolerant
    search: preferred and former names included."""
    nicknames = nickname_table()
    forenames, surnames = (
        ("forename", "preferred_forename"),
        (
            "surname",
            "preferred_surname",
            "former_surname",
        ),
    )
    # Each name column normalised once, then paired (not once per pair it is in).
    normalised = rows.select(
        "person_id", *(normalise_name(pl.col(c)).alias(c) for c in (*forenames, *surnames))
    )
    pairs = pl.concat(
        normalised.select(
            "person_id",
            pl.col(fore).alias("forename_norm"),
            pl.col(sur).alias("surname_norm"),
        )
        for fore in forenames
        for sur in surnames
    )
    pairs = pairs.filter(pl.col("surname_norm").is_not_null()).unique().sort(pl.all())
    return pairs.with_columns(
        pl.col("forename_norm")
        .pipe(_per_distinct, lambda n: list(nicknames.get(n, (n,))), pl.List(pl.String))
        .fill_null(pl.lit([], dtype=pl.List(pl.String)))
        .alias("forename_keys")
    )


# --- events and involvement -------------------------------------------------------------


def _event_id(agency: str, index: int) -> pl.Expr:
    return pl.concat_str(
        [pl.lit(f"{agency}|{index}"), pl.col("event_key").cast(pl.String), "person_id"],
        separator="|",
    ).map_batches(_event_hashes, return_dtype=pl.String)


def _event_hashes(keys: pl.Series) -> pl.Series:
    """``E`` + the first 16 hex digits of each key's SHA-256 (null stays null): one tight
    loop over the column rather than a ``map_elements`` call per row."""
    sha256 = hashlib.sha256
    return pl.Series(
        [None if k is None else "E" + sha256(k.encode()).hexdigest()[:16] for k in keys.to_list()],
        dtype=pl.String,
    )


def build_timeline(
    con: duckdb.DuckDBPyConnection, config: CuratedConfig, links: pl.DataFrame, unlinked: dict
) -> pl.DataFrame:
    columns = TABLES["timeline"].column_names
    frames = []
    for index, source in enumerate(config.timeline):
        sensitivity = source.sensitivity_sql or f"'{source.sensitivity}'"
        sql = f"select *, {sensitivity} as sensitivity from ({source.sql})"
        resolved = _linked_rows(con, source, links, unlinked, f"timeline:{source.agency}", sql)
        if resolved is None:
            continue
        for optional in ("measure", "measure_of"):
            if optional not in resolved.columns:
                resolved = resolved.with_columns(pl.lit(None, dtype=pl.Float64).alias(optional))
        frames.append(
            resolved.select(
                _event_id(source.agency, index).alias("event_id"),
                "person_id",
                pl.col("event_date").cast(pl.Date),
                pl.col("end_date").cast(pl.Date),
                pl.lit(source.agency).alias("agency"),
                pl.col("event_type").cast(pl.String),
                pl.col("role").cast(pl.String),
                pl.col("detail").cast(pl.String).replace("", None),
                pl.col("summary").cast(pl.String),
                pl.col("is_opinion").cast(pl.Boolean).fill_null(False),
                pl.col("confidential_from_subject").cast(pl.Boolean).fill_null(False),
                pl.col("sensitivity").cast(pl.String),
                pl.col("measure").cast(pl.Float64),
                pl.col("measure_of").cast(pl.Float64),
                pl.lit(source.source).alias("source"),
                pl.col("event_key").cast(pl.String).alias("source_key"),
            )
        )
    if not frames:
        return _empty("timeline")
    timeline = pl.concat(frames).unique("event_id", keep="first")
    return timeline.select(columns).sort("person_id", "event_date", "event_id")


def build_involvement(
    con: duckdb.DuckDBPyConnection,
    config: CuratedConfig,
    links: pl.DataFrame,
    unlinked: dict,
    as_of: date,
) -> pl.DataFrame:
    frames = []
    for source in config.involvement:
        resolved = _linked_rows(con, source, links, unlinked, f"involvement:{source.agency}")
        if resolved is None:
            continue
        frames.append(
            resolved.select(
                "person_id",
                pl.lit(source.agency).alias("agency"),
                pl.col("service").cast(pl.String),
                pl.col("start_date").cast(pl.Date),
                pl.col("end_date").cast(pl.Date),
                *(
                    pl.col(c).cast(pl.String)
                    for c in ("team", "practitioner", "practitioner_email", "organisation")
                ),
            )
        )
    if not frames:
        return _empty("involvement")
    rows = pl.concat(frames).with_columns(
        (pl.col("end_date").is_null() | (pl.col("end_date") > as_of)).alias("_open")
    )
    # The lead practitioner of a service is the one on its latest open row, else latest row.
    # Two rows as open and as recent (say two GP registrations without dates): the rest of
    # the row decides, so the same rows give the same lead every night in any order.
    latest = rows.sort(
        [
            "person_id", "agency", "service", "_open", "start_date", "end_date",
            "organisation", "team", "practitioner", "practitioner_email",
        ],
        descending=[False, False, False, True, True, True, False, False, False, False],
        nulls_last=True,
    )  # fmt: skip
    return (
        latest.group_by("person_id", "agency", "service", maintain_order=True)
        .agg(
            pl.when(pl.col("_open").any())
            .then(pl.lit("open"))
            .otherwise(pl.lit("closed"))
            .first()
            .alias("status"),
            pl.col("start_date").min(),
            pl.when(pl.col("_open").any())
            .then(pl.lit(None, dtype=pl.Date))
            .otherwise(pl.col("end_date").max())
            .first()
            .alias("end_date"),
            pl.col("team").first(),
            pl.col("practitioner").first(),
            pl.col("practitioner_email").first(),
            pl.col("organisation").first(),
        )
        .select(TABLES["involvement"].column_names)
        .sort("person_id", "agency", "service")
    )


def build_organisations(
    con: duckdb.DuckDBPyConnection, config: CuratedConfig, links: pl.DataFrame, unlinked: dict
) -> pl.DataFrame:
    """Each person's organisations, typed as each ``organisations`` entry declares: the type
    is the configuration's, so the role policy checked at load is what the tables hold."""
    frames = []
    for query in config.organisations:
        label = f"organisations:{query.person_table}"
        resolved = _linked_rows(con, query, links, unlinked, label)
        if resolved is None:
            continue
        if "organisation_type" in resolved.columns:
            # Two sources of the type, one the policy cannot see: refused, not overridden.
            raise CurationError(
                f"{label}: the query returns organisation_type, but the entry declares it "
                f"(organisation_type: {query.organisation_type}): drop it from the query"
            )
        frames.append(
            resolved.select(
                "person_id",
                pl.lit(query.organisation_type, pl.String).alias("organisation_type"),
                pl.col("organisation_id").cast(pl.String),
            )
        )
    if not frames:
        return _empty("person_organisations")
    return pl.concat(frames).unique().sort(TABLES["person_organisations"].column_names)


# --- households, summary, agreements, aggregates -----------------------------------------


def build_households(
    members: pl.DataFrame, person: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    # A death ends the person's membership: they stay listed (deceased, to_date the date of
    # death) so the household's history reads right, but are not counted as living there.
    members = (
        members.join(person.select("person_id", "date_of_death"), on="person_id", how="left")
        .with_columns(
            pl.coalesce("to_date", "date_of_death").alias("to_date"),
            pl.col("date_of_death").is_not_null().alias("deceased"),
        )
        .select(TABLES["household_members"].column_names)
    )
    at = members.filter(~pl.col("deceased")).join(
        person.select(
            "person_id",
            "is_child",
            "address_line_1",
            "town",
            "postcode",
            "postcode_district",
            "uprn",
        ),
        on="person_id",
        how="left",
    )
    address = (
        at.filter(pl.col("address_line_1").is_not_null() | pl.col("postcode").is_not_null())
        .group_by("household_id", "address_line_1", "town", "postcode", "postcode_district", "uprn")
        .len()
        # Ties (two addresses as common) are broken on every column, not left to the
        # sort's whim: the same deliveries always give the same household address.
        .sort(
            ["household_id", "len", "address_line_1", "town", "postcode", "uprn"],
            descending=[False, True, False, False, False, False],
            nulls_last=[False, False, False, True, True, True],  # the known town etc.
        )
        .group_by("household_id", maintain_order=True)
        .first()
        .drop("len")
    )
    counts = at.group_by("household_id").agg(
        pl.len().cast(pl.Int32).alias("members"),
        pl.col("is_child").fill_null(False).sum().cast(pl.Int32).alias("children"),
    )
    household = (
        counts.join(address, on="household_id", how="left")
        .select(TABLES["household"].column_names)
        .sort("household_id")
    )
    return household, members.sort("household_id", "person_id")


def _academic_year_start(as_of: date, month_day: str) -> date:
    month, day = (int(p) for p in month_day.split("-"))
    start = date(as_of.year, month, day)
    return start if start <= as_of else date(as_of.year - 1, month, day)


def _academic_year(month_day: str) -> pl.Expr:
    """The calendar year an event's academic year starts in."""
    month, day = (int(p) for p in month_day.split("-"))
    date_ = pl.col("event_date")
    before = (date_.dt.month() < month) | ((date_.dt.month() == month) & (date_.dt.day() < day))
    return date_.dt.year() - before.cast(pl.Int32)


def summary_people(
    person: pl.DataFrame, adult_age: int, transition_months: int, as_of: date
) -> pl.DataFrame:
    """Children, and young people who reached the adult age within the transition window.

    A child turning 18 does not vanish from the Family View overnight: they stay for
    ``transition_months`` as ``age_status`` "adult" with ``transition_to_adult`` set, so the
    practitioners handing over to adult services still see them (and why)."""
    adult_on = pl.col("dob").dt.offset_by(f"{adult_age}y")
    window_start = pl.lit(as_of).dt.offset_by(f"-{transition_months}mo")
    turned_adult = (
        pl.col("dob").is_not_null()
        & ~pl.col("is_child")
        & (adult_on <= pl.lit(as_of))
        & (adult_on > window_start)
    )
    return person.filter(pl.col("is_child") | turned_adult).with_columns(
        pl.when(pl.col("is_child"))
        .then(pl.lit("child"))
        .otherwise(pl.lit("adult"))
        .alias("age_status"),
        (~pl.col("is_child")).alias("transition_to_adult"),
    )


def build_child_summary(
    person: pl.DataFrame,
    involvement: pl.DataFrame,
    timeline: pl.DataFrame,
    records_sources: pl.DataFrame,
    deliveries: dict[str, date],
    config: CuratedConfig,
    as_of: date,
) -> pl.DataFrame:
    rules = config.child_summary
    children = summary_people(person, rules.adult_age, rules.transition_months, as_of)
    open_services = involvement.filter(pl.col("status") == "open")
    care = open_services.filter(pl.col("agency") == rules.social_care.agency)
    order = {s: i for i, s in enumerate(rules.social_care.statuses)}
    status = (
        care.with_columns(
            pl.col("service")
            .replace_strict(order, default=None, return_dtype=pl.Int32)
            .alias("_rank")
        )
        .filter(pl.col("_rank").is_not_null())
        .sort("person_id", "_rank")
        .group_by("person_id", maintain_order=True)
        .agg(
            pl.col("service").first().alias("social_care_status"),
            (pl.col("service") == "cin_plan").any().alias("cin_open"),
            (pl.col("service") == "cp_plan").any().alias("cp_open"),
            (pl.col("service") == "looked_after").any().alias("looked_after"),
        )
    )
    early_help = (
        open_services.filter(
            (pl.col("agency") == rules.early_help.agency)
            & (pl.col("service") == rules.early_help.service)
        )
        .select("person_id", pl.lit(True).alias("early_help_open"))
        .unique()
    )
    window_start = as_of - timedelta(days=rules.domestic_abuse.window_days)
    abuse = (
        timeline.filter(
            (pl.col("agency") == rules.domestic_abuse.agency)
            & (pl.col("event_type") == rules.domestic_abuse.event_type)
            & (pl.col("event_date") > window_start)
            & (pl.col("event_date") <= as_of)
        )
        .group_by("person_id")
        .agg(pl.col("source_key").n_unique().cast(pl.Int32).alias("domestic_abuse_12m"))
    )
    year_start = _academic_year_start(as_of, rules.academic_year_start)
    this_year = timeline.filter(
        (pl.col("event_date") >= year_start) & (pl.col("event_date") <= as_of)
    )
    attendance_events = timeline.filter(
        (pl.col("agency") == rules.attendance.agency)
        & (pl.col("event_type") == rules.attendance.event_type)
        & (pl.col("event_date") <= as_of)
    ).with_columns(_academic_year(rules.academic_year_start).alias("_year"))
    # Returns for the current year may not be in yet: report the latest year that has them.
    attendance = (
        attendance_events.filter(pl.col("_year") == pl.col("_year").max().over("person_id"))
        .group_by("person_id")
        .agg(
            (100 * pl.col("measure").sum() / pl.col("measure_of").sum())
            .round(1)
            .alias("attendance_pct"),
            pl.format(
                "{}/{}",
                pl.col("_year").first(),
                (pl.col("_year").first() + 1).cast(pl.String).str.slice(2, 2),
            ).alias("attendance_year"),
        )
    )
    suspensions = (
        this_year.filter(
            (pl.col("agency") == rules.suspensions.agency)
            & pl.col("event_type").is_in(rules.suspensions.event_types)
        )
        .group_by("person_id")
        .agg(pl.len().cast(pl.Int32).alias("suspensions"))
    )
    workers = (
        open_services.filter(pl.col("practitioner").is_not_null())
        .sort("person_id", "agency", "service")
        .with_columns(
            # One JSON object per worker; a null value is written as null, not left out.
            pl.concat_str(
                pl.lit("{"),
                pl.concat_str(
                    [
                        pl.lit(json.dumps(key) + ": ") + _json_values(pl.col(column))
                        for key, column in (
                            ("agency", "agency"),
                            ("service", "service"),
                            ("name", "practitioner"),
                            ("email", "practitioner_email"),
                            ("team", "team"),
                        )
                    ],
                    separator=", ",
                ),
                pl.lit("}"),
            ).alias("_worker")
        )
        .group_by("person_id", maintain_order=True)
        .agg(pl.col("_worker").str.join(", "))
        .select(
            "person_id", pl.concat_str(pl.lit("["), "_worker", pl.lit("]")).alias("key_workers")
        )
    )
    delivered = (
        records_sources.with_columns(
            pl.col("source")
            .replace_strict({s: d.isoformat() for s, d in deliveries.items()}, default=None)
            .alias("_date")
        )
        # {source: last delivery date or null}, keys sorted (as json sort_keys).
        .sort("person_id", "source")
        .with_columns(
            pl.concat_str(
                _json_values(pl.col("source")), pl.lit(": "), _json_values(pl.col("_date"))
            ).alias("_pair")
        )
        .group_by("person_id", maintain_order=True)
        .agg(pl.col("_pair").str.join(", "))
        .select(
            "person_id",
            pl.concat_str(pl.lit("{"), "_pair", pl.lit("}")).alias("sources_last_delivered"),
        )
    )
    summary = children.select(
        "person_id",
        "forename",
        "surname",
        "dob",
        "age",
        "sen_provision",
        "school_urn",
        "school_name",
        "gp_practice_code",
        "deceased",
        "age_status",
        "transition_to_adult",
    )
    for frame in (status, early_help, abuse, attendance, suspensions, workers, delivered):
        summary = summary.join(frame, on="person_id", how="left")
    return (
        summary.with_columns(
            pl.col("social_care_status").fill_null("none"),
            *(pl.col(c).fill_null(False) for c in ("cin_open", "cp_open", "looked_after")),
            pl.col("early_help_open").fill_null(False),
            pl.col("domestic_abuse_12m").fill_null(0),
            pl.col("suspensions").fill_null(0),
            pl.col("key_workers").fill_null("[]"),
        )
        .select(TABLES["child_summary"].column_names)
        .sort("person_id")
    )


def build_source_deliveries(
    deliveries: dict[str, date], sources: dict[str, Source]
) -> pl.DataFrame:
    rows = []
    for name, source in sorted(sources.items()):
        agreement = source.agreement
        rows.append(
            {
                "source": name,
                "last_extract_date": deliveries.get(name),
                "controller": agreement.controller,
                "purpose": " ".join(agreement.purpose.split()),
                "lawful_basis": agreement.lawful_basis.article_6,
                "retention": agreement.retention.model_dump_json(),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            c: _polars_type(c, "source_deliveries")
            for c in TABLES["source_deliveries"].column_names
        },
    )


def suppress(frame: pl.DataFrame, counts: list[str], min_count: int) -> pl.DataFrame:
    """Null every count under ``min_count`` (but above zero) and flag the row suppressed.

    Zero rows never appear (groups come from data), so a published count is either
    at least ``min_count`` or withheld.
    """
    small = pl.any_horizontal([pl.col(c) < min_count for c in counts])
    return frame.with_columns(
        *(pl.when(small).then(None).otherwise(pl.col(c)).cast(pl.Int32).alias(c) for c in counts),
        small.alias("suppressed"),
    )


def complement(frame: pl.DataFrame, counts: list[str], by: list[str]) -> pl.DataFrame:
    """Within each ``by`` group, never exactly one suppressed row: if one is, suppress the
    smallest published row of the group too.

    A lone suppressed cell can be recovered by subtraction wherever the group's total is
    known or closely estimated (here a status's county-wide count in ``agg_involvement``
    less the districts shown); with two withheld, the difference is only their sum.
    The first count column ranks the rows, then the rest of the row, so the choice is the
    same every night."""
    ranked = frame.with_row_index("_row")
    lone = (
        ranked.group_by(by)
        .agg(pl.col("suppressed").sum().alias("_withheld"), pl.len().alias("_rows"))
        .filter((pl.col("_withheld") == 1) & (pl.col("_rows") > 1))
        .select(by)
    )
    if lone.is_empty():
        return frame
    second = (
        ranked.join(lone, on=by, how="semi", nulls_equal=True)
        .filter(~pl.col("suppressed"))
        .sort([*counts, *by, "_row"], nulls_last=True)
        .group_by(by, maintain_order=True)
        .first()["_row"]
    )
    hide = pl.col("_row").is_in(second.implode())
    return ranked.with_columns(
        *(pl.when(hide).then(None).otherwise(pl.col(c)).alias(c) for c in counts),
        (pl.col("suppressed") | hide).alias("suppressed"),
    ).drop("_row")


def build_aggregates(
    child_summary: pl.DataFrame, person: pl.DataFrame, involvement: pl.DataFrame, min_count: int
) -> dict[str, pl.DataFrame]:
    district = person.select("person_id", pl.col("postcode_district").fill_null("unknown"))
    # Counts of children: the young adults in transition are not children any more.
    child_summary = child_summary.filter(pl.col("age_status") == "child")
    by_status = (
        child_summary.join(district, on="person_id", how="left")
        .group_by("postcode_district", "social_care_status")
        .agg(pl.len().alias("children"))
    )
    by_service = involvement.group_by("agency", "service", "status").agg(
        pl.col("person_id").n_unique().alias("people")
    )
    abuse = (
        child_summary.filter(pl.col("domestic_abuse_12m") > 0)
        .join(district, on="person_id", how="left")
        .group_by("postcode_district")
        .agg(pl.len().alias("children"), pl.col("domestic_abuse_12m").sum().alias("incidents"))
    )
    # Sorted by their groups, so a snapshot's rows come out in the same order every time.
    return {
        "agg_children_by_status": complement(
            suppress(by_status, ["children"], min_count), ["children"], ["social_care_status"]
        ).sort("postcode_district", "social_care_status", nulls_last=True),
        "agg_involvement": suppress(by_service, ["people"], min_count).sort(
            "agency", "service", "status", nulls_last=True
        ),
        "agg_domestic_abuse": suppress(abuse, ["children", "incidents"], min_count).sort(
            "postcode_district", nulls_last=True
        ),
    }


# --- the whole build ----------------------------------------------------------------------


_DUCK_TO_POLARS = {
    "VARCHAR": pl.String,
    "DATE": pl.Date,
    "BOOLEAN": pl.Boolean,
    "INTEGER": pl.Int32,
    "DOUBLE": pl.Float64,
    "VARCHAR[]": pl.List(pl.String),
}


def _polars_type(column: str, table_name: str) -> pl.DataType:
    return _DUCK_TO_POLARS[TABLES[table_name].column(column).type]


def _empty(table_name: str) -> pl.DataFrame:
    table = TABLES[table_name]
    return pl.DataFrame(schema={c.name: _DUCK_TO_POLARS[c.type] for c in table.columns})


def conform(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with exactly the schema's columns, in order and type; a missing or extra
    column is a programming error caught here rather than in front of a user."""
    table = TABLES[name]
    if set(frame.columns) != set(table.column_names):
        raise CurationError(
            f"{name}: built columns {sorted(frame.columns)} differ from the schema "
            f"{sorted(table.column_names)}"
        )
    return frame.select(pl.col(c.name).cast(_DUCK_TO_POLARS[c.type]) for c in table.columns)


def latest_deliveries(con: duckdb.DuckDBPyConnection) -> dict[str, date]:
    rows = con.sql(
        "select source, max(extract_date) from meta.deliveries where status = 'loaded' "
        "group by source"
    ).fetchall()
    return {source: extract_date for source, extract_date in rows}


# The order the curated tables are written in (snapshot, analysts' file, serving copy).
TABLE_ORDER: tuple[str, ...] = (
    "person",
    "household",
    "household_members",
    "relationships",
    "involvement",
    "timeline",
    "child_summary",
    "person_names",
    "person_records",
    "person_organisations",
    "source_deliveries",
    "agg_children_by_status",
    "agg_involvement",
    "agg_domestic_abuse",
)


def build(
    con: duckdb.DuckDBPyConnection,
    linkage: LinkageConfig,
    config: CuratedConfig,
    sources: dict[str, Source],
    rectifications: pl.DataFrame | None = None,
    on_table: Callable[[str, pl.DataFrame], None] | None = None,
) -> CuratedBuild:
    """Every curated table from the warehouse behind ``con`` (read only), with the active
    ``rectifications`` (see :mod:`warehouse.corrections`) applied to the golden records.

    ``on_table(name, frame)`` is called with each finished (conformed) table as soon as it
    is final, so a caller can start writing it while the rest are built; the tables are
    built in the same order, and returned in ``TABLE_ORDER``, either way.
    """
    finished: dict[str, pl.DataFrame] = {}

    def done(name: str, frame: pl.DataFrame) -> None:
        finished[name] = conform(name, frame)
        if on_table is not None:
            on_table(name, finished[name])

    as_of = as_of_date(con)
    links = _record_links(con)
    unlinked: dict[str, int] = {}
    rows = _person_rows(con, linkage, links)
    members = con.sql("select * from linked.household_members").pl()
    attributes = _attributes(con, config, links, unlinked)
    person = build_person(rows, attributes, members, config, as_of)
    person_records = links.select(
        "person_id",
        pl.concat_str(["source", "source_table", "local_key"], separator="|").alias("record_id"),
    ).sort("person_id", "record_id")
    person, lapsed = corrections.apply(
        person, person_records, rectifications, as_of, config.child_summary.adult_age
    )
    done("person", person)
    household, household_members = build_households(members, person)
    done("household", household)
    done("household_members", household_members)
    relationships = con.sql(
        "select person_id, related_person_id, relationship, evidence "
        "from linked.person_relationships order by all"
    ).pl()
    done("relationships", relationships)
    timeline = build_timeline(con, config, links, unlinked)
    involvement = build_involvement(con, config, links, unlinked, as_of)
    done("involvement", involvement)
    done("timeline", timeline)
    deliveries = latest_deliveries(con)
    records_sources = links.select("person_id", "source").unique()
    child_summary = build_child_summary(
        person, involvement, timeline, records_sources, deliveries, config, as_of
    )
    done("child_summary", child_summary)
    # The golden name too: a rectified name is searchable from the night it shows.
    done(
        "person_names",
        build_person_names(
            pl.concat([rows, person.select("person_id", *_NAME_FIELDS)], how="diagonal_relaxed")
        ),
    )
    done("person_records", person_records)
    done("person_organisations", build_organisations(con, config, links, unlinked))
    done("source_deliveries", build_source_deliveries(deliveries, sources))
    for name, frame in build_aggregates(
        child_summary, person, involvement, config.aggregates.min_count
    ).items():
        done(name, frame)
    missing = set(TABLES) - set(finished)
    if missing:
        raise CurationError(f"no builder for curated tables {sorted(missing)}")
    if set(TABLE_ORDER) != set(finished):
        raise CurationError(f"TABLE_ORDER does not list exactly {sorted(finished)}")
    return CuratedBuild(
        as_of=as_of,
        tables={name: finished[name] for name in TABLE_ORDER},
        unlinked=unlinked,
        lapsed=lapsed,
    )
