"""Standardise person-level rows for linkage (Polars).

Every person-level table arrives mapped onto the linkage fields (``matching.config``) as
text. This module turns them into one frame of comparable values:

- names: lower-case ASCII, punctuation and spacing removed (``O'Neill`` = ``O Neill`` =
  ``oneill``); ``Jr``/``Sr`` taken off into ``suffix``; hyphenated and double-barrelled
  surnames also kept as their parts; legal, preferred and former names all kept, because
  agencies record different ones; forenames expanded to their formal names with the
  nickname table shipped in ``matching/data/nicknames.csv`` (``Alfie`` -> ``alfred``);
- dates of birth: parsed, with partial or impossible values (``1977-00-18``,
  ``31/02/1988``) kept as a year, estimated dates and police ``age_at_incident`` (at the
  person's incidents, give or take ``AGE_SLACK`` years) turned into a birth-year range
  (``year_lo`` to ``year_hi``) so a child known only as "about 7" can still be compared;
- roles: a contact's birth-year range is narrowed from the pupil's date of birth (a
  parent 12 to 60 years older, a grandparent 30 or more), and adults by role are adults:
  this is what keeps a father apart from the son who shares his name;
- addresses: postcode normalised, sector and district; the first address line reduced to
  a key of flat, house number or name, and street (``Flat 1, 15 Exeter Terrace`` and
  ``1/15 Exeter Tce`` -> ``1|15|exeter terrace``); UPRN where present;
- identifiers: only valid NHS numbers and UPNs are kept as match keys (an invalid one is
  never evidence).
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import polars as pl

from matching.config import LINKAGE_FIELDS, LinkageConfig
from matching.identifiers import nhs_number_expr, nhs_valid_expr, postcode_expr, upn_valid_expr

# Optional, from the table's ``age_reference_sql``: when an age could have been recorded.
_AGE_SEEN = ("first_seen", "last_seen", "min_age", "min_age_at")
NICKNAMES_CSV = Path(__file__).resolve().parent / "data" / "nicknames.csv"

# An age given by a witness or an officer's estimate is approximate, by this many years.
AGE_SLACK = 2
# Years between a contact's birth and their child's, by relationship (min, max).
_GAP_MIN = {"mother": 12, "father": 12, "step_parent": 12, "grandparent": 30}
_GAP_MAX = {"mother": 60, "father": 70}
_ADULT_RELATIONSHIPS = ("carer", "step_parent")
_SEX_OF_RELATIONSHIP = {"mother": "F", "father": "M"}
_ADULT_ROLES = ("parent", "carer", "other_adult")
ADULT_AGE = 16
_SUFFIXES = {"jr": "jr", "jnr": "jr", "junior": "jr", "sr": "sr", "snr": "sr", "senior": "sr"}
_STREET_WORDS = {
    "rd": "road",
    "st": "street",
    "ave": "avenue",
    "av": "avenue",
    "cres": "crescent",
    "cl": "close",
    "ct": "court",
    "dr": "drive",
    "gdns": "gardens",
    "gr": "grove",
    "ln": "lane",
    "pl": "place",
    "sq": "square",
    "ter": "terrace",
    "terr": "terrace",
    "tce": "terrace",
    "pde": "parade",
    "grn": "green",
    "wk": "walk",
}

STANDARD_COLUMNS = [
    "unique_id",
    "source",
    "source_table",
    "local_key",
    "extract_date",
    "from_quarantine",
    "forename",
    "forename_alt",
    "forename_keys",
    "middle_name",
    "surname",
    "surname_alt",
    "surname_tokens",
    "suffix",
    "dob",
    "dob_exact",
    "year_lo",
    "year_hi",
    "sex",
    "nhs_number",
    "upn",
    "upn_keys",
    "child_upn",
    "relationship",
    "postcode",
    "postcode_sector",
    "postcode_district",
    "address_key",
    "uprn",
    "phone",
    "family_id",
    "role_in_family",
    "date_of_death",
    "updated_at",
    "address_as_of",
]


@cache
def nickname_table(path: Path = NICKNAMES_CSV) -> dict[str, tuple[str, ...]]:
    """Map a lower-case forename to the formal names it may stand for (itself included)."""
    formal: dict[str, set[str]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            name, nick = _compact(row["name"]), _compact(row["nickname"])
            formal.setdefault(nick, {nick}).add(name)
            formal.setdefault(name, {name})
    return {k: tuple(sorted(v)) for k, v in formal.items()}


def _compact(value: str) -> str:
    return "".join(ch for ch in value.lower() if "a" <= ch <= "z")


def _ascii_lower(expr: pl.Expr) -> pl.Expr:
    """Lower-case, accents stripped (``Zoë`` -> ``zoe``), apostrophes dropped."""
    return (
        expr.str.normalize("NFKD")
        .str.replace_all(r"[^\x00-\x7f]", "")
        .str.to_lowercase()
        .str.replace_all(r"['`’.]", "")
    )


def _tokens(expr: pl.Expr) -> pl.Expr:
    """Words of a name; an empty list (never null) when the name is missing."""
    words = _ascii_lower(expr.fill_null("")).str.replace_all(r"[^a-z]+", " ").str.split(" ")
    return words.list.eval(pl.element().filter(pl.element().str.len_chars() > 0))


def _strip_suffix(tokens: pl.Expr) -> pl.Expr:
    return tokens.list.eval(pl.element().filter(~pl.element().is_in(list(_SUFFIXES))))


def _suffix(tokens: pl.Expr) -> pl.Expr:
    found = tokens.list.eval(pl.element().filter(pl.element().is_in(list(_SUFFIXES))))
    return found.list.first().replace_strict(_SUFFIXES, default=None)


def _join(tokens: pl.Expr) -> pl.Expr:
    joined = tokens.list.join("")
    return pl.when(joined.str.len_chars() > 0).then(joined).otherwise(None)


_NAME_INPUTS = [
    "preferred_forename",
    "middle_names",
    "former_surname",
    "preferred_surname",
]


def _names(frame: pl.DataFrame) -> pl.DataFrame:
    """The name columns, worked out once per distinct set of written names and joined back:
    a county's records share their names about five to a set (one person in several
    agencies, a family's surname), and the token work costs more than the join."""
    frame = frame.rename({"forename": "_in_forename", "surname": "_in_surname"})
    keys = ["_in_forename", "_in_surname", *_NAME_INPUTS]
    distinct = frame.select(keys).unique()
    named = _name_columns(
        distinct.with_columns(
            pl.col("_in_forename").alias("forename"), pl.col("_in_surname").alias("surname")
        )
    )
    return frame.join(named, on=keys, how="left", nulls_equal=True, maintain_order="left").drop(
        "_in_forename", "_in_surname"
    )


def _name_columns(frame: pl.DataFrame) -> pl.DataFrame:
    nick = nickname_table()
    fore = _tokens(pl.col("forename"))
    sur = _tokens(pl.col("surname"))
    frame = frame.with_columns(
        _join(_strip_suffix(fore)).alias("_fn_full"),
        _strip_suffix(fore).list.first().alias("forename"),
        _join(_tokens(pl.col("preferred_forename"))).alias("forename_alt"),
        _tokens(pl.col("middle_names")).list.first().alias("middle_name"),
        _join(_strip_suffix(sur)).alias("surname"),
        pl.coalesce(_suffix(sur), _suffix(fore)).alias("suffix"),
        _strip_suffix(sur).alias("_sur_tokens"),
        _join(_tokens(pl.col("former_surname"))).alias("_former"),
        _join(_tokens(pl.col("preferred_surname"))).alias("_preferred_sn"),
        _tokens(pl.col("former_surname")).alias("_former_tokens"),
        _tokens(pl.col("preferred_surname")).alias("_preferred_tokens"),
    )
    # Nickname keys per distinct (forename, preferred forename): a county has a few
    # thousand of those among half a million rows, so the Python lookup runs that often.
    pairs = frame.select("forename", "forename_alt").unique()
    keys = [sorted({k for n in pair if n for k in nick.get(n, (n,))}) for pair in pairs.iter_rows()]
    pairs = pairs.with_columns(pl.Series("forename_keys", keys, dtype=pl.List(pl.String)))
    frame = frame.join(
        pairs, on=["forename", "forename_alt"], how="left", nulls_equal=True, maintain_order="left"
    )
    return frame.with_columns(
        pl.when(pl.col("forename").str.len_chars() > 0).then(pl.col("forename")),
        pl.concat_list(pl.col("_former"), pl.col("_preferred_sn"))
        .list.drop_nulls()
        .list.unique()
        .alias("surname_alt"),
        pl.concat_list("_sur_tokens", "_former_tokens", "_preferred_tokens")
        .list.drop_nulls()
        .list.eval(pl.element().filter(pl.element().str.len_chars() >= 2))
        .list.unique()
        .list.sort()
        .alias("surname_tokens"),
    )


def _date(expr: pl.Expr) -> pl.Expr:
    return expr.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)


def _dates(frame: pl.DataFrame) -> pl.DataFrame:
    """Full dates where parseable; a partial date (bad day or month) still gives its year."""
    extract_year = pl.col("extract_date").dt.year()
    first_seen = pl.coalesce(_date(pl.col("first_seen")).dt.year(), extract_year)
    last_seen = pl.coalesce(_date(pl.col("last_seen")).dt.year(), extract_year)
    # A date that does not parse (``1977-00-18``, ``31/02/1988``) still gives its year.
    partial_year = pl.coalesce(
        pl.col("dob").str.extract(r"^((?:19|20)\d\d)\b", 1),
        pl.col("dob").str.extract(r"\b((?:19|20)\d\d)\s*$", 1),
    ).cast(pl.Int32, strict=False)
    age = pl.col("age_at_incident").cast(pl.Int32, strict=False)
    estimated = pl.col("dob_estimated").str.to_lowercase().is_in(["true", "1", "yes", "y"])
    frame = frame.with_columns(
        _date(pl.col("dob")).alias("_dob"),
        _date(pl.col("date_of_death")).alias("date_of_death"),
        pl.col("updated_at").str.slice(0, 19).str.to_datetime(strict=False).alias("updated_at"),
        estimated.fill_null(False).alias("_estimated"),
        partial_year.alias("_partial_year"),
        age.alias("_age"),
    )
    year = pl.col("_dob").dt.year().cast(pl.Int32)
    slack = pl.when(pl.col("_estimated")).then(2).otherwise(0)
    return frame.with_columns(
        pl.col("_dob").alias("dob"),
        (pl.col("_dob").is_not_null() & ~pl.col("_estimated")).alias("dob_exact"),
        pl.coalesce(
            year - slack, pl.col("_partial_year"), first_seen - pl.col("_age") - AGE_SLACK - 1
        )
        .cast(pl.Int32)
        .alias("year_lo"),
        pl.min_horizontal(
            pl.coalesce(
                year + slack, pl.col("_partial_year"), last_seen - pl.col("_age") + AGE_SLACK
            ),
            # A role only someone that old can have (``min_age_at``): unless the record
            # has its own date of birth, which is about the person, not their role.
            pl.when(pl.col("_dob").is_null() | pl.col("_estimated")).then(
                _date(pl.col("min_age_at")).dt.year() - pl.col("min_age").cast(pl.Int32)
            ),
        )
        .cast(pl.Int32)
        .alias("year_hi"),
    )


def _street(expr: pl.Expr) -> pl.Expr:
    words = expr.str.split(" ").list.eval(
        pl.element().replace(_STREET_WORDS).filter(pl.element().str.len_chars() > 0)
    )
    return words.list.join(" ")


def _derived_per_distinct(
    frame: pl.DataFrame, keys: list[str], derived: list[pl.Expr]
) -> pl.DataFrame:
    """``derived`` columns worked out once per distinct value of ``keys`` and joined back.

    A county's half a million rows hold far fewer addresses and postcodes (a household's
    members share them), and the regular expressions cost more than the join.
    """
    distinct = frame.select(keys).unique().with_columns(derived)
    return frame.join(distinct, on=keys, how="left", nulls_equal=True, maintain_order="left")


def _addresses(frame: pl.DataFrame) -> pl.DataFrame:
    """``flat|number-or-house-name|street`` from the address lines, blank when unknown."""
    lines = pl.concat_str(
        [pl.col("address_line_1").fill_null(""), pl.col("address_line_2").fill_null("")],
        separator=", ",
    )
    # "6/26 Windsor Way" is flat 6 at number 26, the way many systems write a flat.
    slashed = _ascii_lower(lines).str.replace(r"^\s*(\d+[a-z]?)\s*/\s*(\d+[a-z]?)\b", "flat $1, $2")
    text = slashed.str.replace_all(r"[^a-z0-9, ]+", " ")
    flat = text.str.extract(r"\b(?:flat|apartment|apt|unit)\s+([a-z0-9]+)", 1)
    rest = text.str.replace(r"\b(?:flat|apartment|apt|unit)\s+[a-z0-9]+\s*,?", "")
    number = rest.str.extract(r"\b(\d+[a-z]?)\b", 1)
    street_after_number = rest.str.extract(r"\b\d+[a-z]?\s+([a-z ]+)", 1)
    segments = rest.str.split(",").list.eval(pl.element().str.strip_chars()).list.drop_nulls()
    segments = segments.list.eval(pl.element().filter(pl.element().str.len_chars() > 0))
    house_name = segments.list.first()
    street_no_number = segments.list.get(1, null_on_oob=True)
    street = pl.when(number.is_not_null()).then(street_after_number).otherwise(street_no_number)
    key = pl.concat_str(
        [
            flat.fill_null(""),
            pl.coalesce(number, house_name.str.replace_all(" ", "")).fill_null(""),
            _street(street.str.strip_chars().fill_null("")),
        ],
        separator="|",
    )
    postcode = postcode_expr("_postcode_given")
    frame = _derived_per_distinct(
        frame,
        ["address_line_1", "address_line_2"],
        [pl.when(key.str.replace_all(r"\|", "") != "").then(key).alias("address_key")],
    )
    frame = _derived_per_distinct(
        frame.rename({"postcode": "_postcode_given"}),
        ["_postcode_given"],
        [
            postcode.alias("postcode"),
            postcode.str.slice(0, postcode.str.len_chars() - 2).alias("postcode_sector"),
            postcode.str.split(" ").list.first().alias("postcode_district"),
        ],
    ).drop("_postcode_given")
    return frame.with_columns(
        pl.col("uprn").str.replace_all(r"\D", "").str.strip_chars_start("0").alias("uprn"),
        pl.col("phone").str.replace_all(r"\D", "").alias("phone"),
    )


def _identifiers(frame: pl.DataFrame) -> pl.DataFrame:
    own_upn = pl.when(upn_valid_expr("upn")).then(pl.col("upn").str.to_uppercase())
    former = pl.when(upn_valid_expr("former_upn")).then(pl.col("former_upn").str.to_uppercase())
    return frame.with_columns(
        pl.when(nhs_valid_expr("nhs_number"))
        .then(nhs_number_expr("nhs_number"))
        .alias("nhs_number"),
        own_upn.alias("upn"),
        pl.concat_list(own_upn, former).list.drop_nulls().list.unique().alias("upn_keys"),
        pl.col("child_upn").str.to_uppercase().str.replace_all(" ", "").alias("child_upn"),
        pl.col("relationship").str.to_lowercase().alias("relationship"),
        pl.col("sex").str.to_lowercase().str.strip_chars().alias("sex"),
    )


def _age_from_roles(frame: pl.DataFrame) -> pl.DataFrame:
    """Narrow each birth-year range with what a row's role says about the person's age.

    A contact is compared with the pupil they are a contact for: a mother or father is
    12 to 60 years older, a grandparent at least 30; a carer, and an early-help parent or
    carer, is an adult. This is what keeps a father from being merged with the son who
    shares his name, and a grandmother from being taken for the mother of the same name.
    """
    children = (
        frame.filter(pl.col("upn").is_not_null() & pl.col("dob").is_not_null())
        .group_by("upn")
        .agg(pl.col("dob").dt.year().median().cast(pl.Int32).alias("_child_year"))
        .rename({"upn": "child_upn"})
    )
    frame = frame.join(children, on="child_upn", how="left")
    rel = pl.col("relationship")
    gap_min = rel.replace_strict(_GAP_MIN, default=None, return_dtype=pl.Int32)
    gap_max = rel.replace_strict(_GAP_MAX, default=None, return_dtype=pl.Int32)
    adult = rel.is_in(_ADULT_RELATIONSHIPS) | pl.col("role_in_family").is_in(_ADULT_ROLES)
    adult_cap = pl.when(adult).then(pl.col("extract_date").dt.year() - ADULT_AGE)
    return frame.with_columns(
        pl.min_horizontal("year_hi", pl.col("_child_year") - gap_min, adult_cap).alias("year_hi"),
        pl.max_horizontal("year_lo", pl.col("_child_year") - gap_max).alias("year_lo"),
    )


def _age_from_recorded(frame: pl.DataFrame, relationships: pl.DataFrame | None) -> pl.DataFrame:
    """Narrow birth-year ranges with sources' own records of who is whose parent.

    Children's social care records "Ellie Bailey is the mother of Ava": if Ava was born in
    2015, Ellie was born 1955 to 2003 even though her own record has no date of birth, so
    she is not taken for her daughter of the same name. It works both ways (a child is 12
    or more years younger than a parent whose birth year is known), and uses the same gaps
    as school contacts. A record with its own exact date of birth keeps it: the
    relationship may be miscoded, the date of birth is about the person.
    """
    if relationships is None or relationships.is_empty():
        return frame
    years = frame.select("unique_id", "year_lo", "year_hi")
    rel = pl.col("relationship").str.to_lowercase()
    gaps = relationships.select(
        pl.col("record_id").alias("child"),
        pl.col("related_record_id").alias("parent"),
        rel.replace_strict(_GAP_MIN, default=None, return_dtype=pl.Int32).alias("gap_min"),
        rel.replace_strict(_GAP_MAX, default=None, return_dtype=pl.Int32).alias("gap_max"),
    ).filter(pl.col("gap_min").is_not_null())
    child = years.rename({"unique_id": "child", "year_lo": "c_lo", "year_hi": "c_hi"})
    parent = years.rename({"unique_id": "parent", "year_lo": "p_lo", "year_hi": "p_hi"})
    known = gaps.join(child, on="child").join(parent, on="parent")
    parent_caps = known.group_by(pl.col("parent").alias("unique_id")).agg(
        (pl.col("c_hi") - pl.col("gap_min")).min().alias("_cap_hi"),
        (pl.col("c_lo") - pl.col("gap_max")).max().alias("_cap_lo"),
    )
    child_caps = known.group_by(pl.col("child").alias("unique_id")).agg(
        (pl.col("p_lo") + pl.col("gap_min")).max().alias("_floor_lo"),
        (pl.col("p_hi") + pl.col("gap_max")).min().alias("_floor_hi"),
    )
    frame = frame.join(parent_caps, on="unique_id", how="left").join(
        child_caps, on="unique_id", how="left"
    )
    # A record's own exact date of birth beats what is inferred from someone else's.
    own = pl.col("dob_exact")
    return frame.with_columns(
        pl.when(own)
        .then("year_hi")
        .otherwise(pl.min_horizontal("year_hi", "_cap_hi", "_floor_hi"))
        .alias("year_hi"),
        pl.when(own)
        .then("year_lo")
        .otherwise(pl.max_horizontal("year_lo", "_cap_lo", "_floor_lo"))
        .alias("year_lo"),
    ).drop("_cap_hi", "_cap_lo", "_floor_lo", "_floor_hi")


def standardise(
    rows: pl.DataFrame, config: LinkageConfig, relationships: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Standardise rows already mapped onto the linkage fields (all text) for linkage.

    ``rows`` has ``source``, ``source_table``, ``local_key``, ``extract_date`` (date),
    ``from_quarantine`` and any of the linkage fields; missing fields are treated as null.
    ``relationships`` (``record_id, related_record_id, relationship``, as read by
    ``warehouse.person_rows.read_relationships``) narrows the birth years of parents and
    children who have none of their own.
    """
    missing = [f for f in (*LINKAGE_FIELDS, *_AGE_SEEN) if f not in rows.columns]
    frame = rows.with_columns([pl.lit(None, dtype=pl.String).alias(f) for f in missing])
    frame = frame.with_columns(
        pl.concat_str(["source", "source_table", "local_key"], separator="|").alias("unique_id")
    )
    frame = _identifiers(frame)
    frame = _names(frame)
    frame = _dates(frame)
    frame = _addresses(frame)
    frame = frame.with_columns(
        # A mother is a woman and a father a man, whether or not the row has a sex column:
        # that keeps a school contact "Michelle, mother" from being taken for a Michael.
        pl.coalesce(
            pl.col("sex").replace_strict(config.sex_values, default=None),
            pl.col("relationship").replace_strict(_SEX_OF_RELATIONSHIP, default=None),
        ).alias("sex"),
        pl.when(pl.col("family_id").is_not_null())
        .then(pl.concat_str([pl.col("source"), pl.col("family_id")], separator="|"))
        .alias("family_id"),
    )
    frame = _age_from_recorded(frame, relationships)
    frame = _age_from_roles(frame)
    # How current the address is: a care record's update, a police incident, else the extract.
    frame = frame.with_columns(
        pl.coalesce(
            pl.col("updated_at").dt.date(), _date(pl.col("last_seen")), pl.col("extract_date")
        ).alias("address_as_of")
    )
    return frame.select(STANDARD_COLUMNS)
