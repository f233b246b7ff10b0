"""Hard rules: evidence that two records are different people, whatever the score says.

A probability is an average over the population; a safeguarding view cannot let an average
merge two children. These rules veto a link outright:

- two different valid NHS numbers, or two valid UPNs with nothing in common;
- twins: the same date of birth and surname but forenames that are not the same name
  (not equal, not a nickname or preferred name of each other, not a likely typo), unless
  the records share an NHS number or UPN (twins never do);
- dates of birth that cannot be one date mistyped (not equal, not day and month swapped,
  more than one of day, month and year different);
- birth-year ranges that do not overlap (estimated dates, ages at an incident, and the
  cap a contact gets from their child's date of birth: a father is not his son);
- a school contact is never the pupil whose UPN the contact row carries, and two contacts
  of one pupil are two different people;
- one record says Jr and the other Sr;
- a clerical reviewer said "different people" (``cannot``).

They are applied twice: to scored pairs (vectorised, before clustering) and between
whole clusters while clustering (``Profile``), so a chain of links can never join two
records that would be vetoed as a pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

import polars as pl
from rapidfuzz.distance import DamerauLevenshtein


def dates_compatible(a: date, b: date) -> bool:
    """Equal, day/month swapped, or only one of day, month, year different."""
    if a == b:
        return True
    if a.year == b.year and a.month == b.day and a.day == b.month:
        return True
    return (a.year == b.year) + (a.month == b.month) + (a.day == b.day) == 2


def names_related(a: str | None, b: str | None, keys_a: set[str], keys_b: set[str]) -> bool:
    """Could these two forenames be one person's? Unknown counts as related.

    Related: equal, a nickname or preferred/middle name of the other, one keystroke apart
    (``Rachell``/``Rachel``, ``Chalres``/``Charles``), or one keystroke from one of the
    other's forms (``Alfrd`` and a pupil ``Algred`` known as ``Alfie``, i.e. Alfred), or one
    a short form of the other (``Alf``/``Alfredd``, ``Nedu``/``Chinedu``). Deliberately not a
    fuzzy score: twins are often given names that sound alike, and a twin's record must
    never be absorbed as a typo.
    """
    if not a or not b or a == b or keys_a & keys_b:
        return True
    short, long = sorted((a, b), key=len)
    if len(short) >= 3 and (long.startswith(short) or long.endswith(short)):
        return True
    return any(
        min(len(x), len(y)) >= 3 and DamerauLevenshtein.distance(x, y) <= 1
        for x in {a, *keys_a}
        for y in {b, *keys_b}
    )


@dataclass
class Profile:
    """What a cluster says about who it is, enough to test the rules against another."""

    members: set[str] = field(default_factory=set)
    nhs: set[str] = field(default_factory=set)
    upns: set[str] = field(default_factory=set)
    child_upns: set[str] = field(default_factory=set)
    suffixes: set[str] = field(default_factory=set)
    year_lo: int = -10_000
    year_hi: int = 10_000
    # (dob, surname, forename, forename keys incl. preferred/middle) per record with a dob
    births: list[tuple[date, str | None, str | None, frozenset[str]]] = field(default_factory=list)
    cannot: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, row: dict, cannot: set[str]) -> Profile:
        keys = set(row["forename_keys"] or [])
        keys.update(n for n in (row["forename_alt"], row["middle_name"]) if n)
        births = []
        if row["dob"] is not None and row["dob_exact"]:
            births.append((row["dob"], row["surname"], row["forename"], frozenset(keys)))
        return cls(
            members={row["unique_id"]},
            nhs={row["nhs_number"]} if row["nhs_number"] else set(),
            upns=set(row["upn_keys"] or []),
            child_upns={row["child_upn"]} if row["child_upn"] else set(),
            suffixes={row["suffix"]} if row["suffix"] else set(),
            year_lo=row["year_lo"] if row["year_lo"] is not None else -10_000,
            year_hi=row["year_hi"] if row["year_hi"] is not None else 10_000,
            births=births,
            cannot=cannot,
        )

    @property
    def identified(self) -> bool:
        """Whether any record has an identity of its own: NHS number, UPN or exact birth."""
        return bool(self.nhs or self.upns or self.births)

    def conflict(self, other: Profile) -> str | None:
        """The rule that forbids merging these clusters, or None."""
        if self.nhs and other.nhs and self.nhs != other.nhs:
            return "different NHS numbers"
        if self.upns and other.upns and not self.upns & other.upns:
            return "different UPNs"
        if self.child_upns & other.upns or other.child_upns & self.upns:
            return "contact of this pupil"
        if self.child_upns & other.child_upns:  # each cluster holds its own contact row
            return "two contacts of one pupil"
        if {"jr", "sr"} <= self.suffixes | other.suffixes:
            return "Jr and Sr"
        if max(self.year_lo, other.year_lo) > min(self.year_hi, other.year_hi):
            return "birth years incompatible"
        if self.cannot & other.members or other.cannot & self.members:
            return "reviewer: different people"
        # A shared NHS number or UPN is the same person, whatever the names say.
        identified = bool(self.nhs & other.nhs or self.upns & other.upns)
        for dob_a, sur_a, fore_a, keys_a in self.births:
            for dob_b, sur_b, fore_b, keys_b in other.births:
                if not dates_compatible(dob_a, dob_b):
                    return "dates of birth incompatible"
                if (
                    not identified
                    and dob_a == dob_b
                    and sur_a == sur_b
                    and not names_related(fore_a, fore_b, set(keys_a), set(keys_b))
                ):
                    return "twins"
        return None

    def copy(self) -> Profile:
        return Profile(
            set(self.members),
            set(self.nhs),
            set(self.upns),
            set(self.child_upns),
            set(self.suffixes),
            self.year_lo,
            self.year_hi,
            list(self.births),
            set(self.cannot),
        )

    def absorb(self, other: Profile) -> None:
        self.members |= other.members
        self.nhs |= other.nhs
        self.upns |= other.upns
        self.child_upns |= other.child_upns
        self.suffixes |= other.suffixes
        self.year_lo = max(self.year_lo, other.year_lo)
        self.year_hi = min(self.year_hi, other.year_hi)
        self.births.extend(other.births)
        self.cannot |= other.cannot


def profile_seeds(records: pl.DataFrame) -> dict[str, Profile]:
    """Each record's own Profile by unique id, made once and never changed.

    Clustering runs several times a night over the same records (``matching.link``);
    making half a million profiles afresh each time cost more than the clustering did.
    ``Profiles`` shares these until a join needs a profile of its own. The columns are
    prepared in Polars and read out as plain lists: building a dict per row was most of
    the cost.
    """
    keys = (
        pl.concat_list(
            pl.col("forename_keys").fill_null([]),
            pl.col("forename_alt").cast(pl.String),
            pl.col("middle_name").cast(pl.String),
        )
        .list.drop_nulls()
        .list.unique()
    )
    born = pl.col("dob").is_not_null() & pl.col("dob_exact").fill_null(False)
    frame = records.select(
        "unique_id",
        pl.col("nhs_number").replace("", None),
        pl.col("upn_keys").fill_null([]),
        pl.col("child_upn").replace("", None),
        pl.col("suffix").replace("", None),
        pl.col("year_lo").fill_null(-10_000),
        pl.col("year_hi").fill_null(10_000),
        pl.when(born).then("dob").alias("dob"),
        "surname",
        "forename",
        pl.when(born).then(keys).alias("keys"),
    )
    seeds: dict[str, Profile] = {}
    for uid, nhs, upns, child, suffix, lo, hi, dob, sur, fore, names in zip(
        *(frame[c].to_list() for c in frame.columns), strict=True
    ):
        seeds[uid] = Profile(
            {uid},
            {nhs} if nhs else set(),
            set(upns),
            {child} if child else set(),
            {suffix} if suffix else set(),
            lo,
            hi,
            [(dob, sur, fore, frozenset(names))] if dob is not None else [],
            set(),
        )
    return seeds


class Profiles(dict[str, Profile]):
    """Each cluster root's Profile during one clustering, copied from its seed on write.

    A record alone is its seed (shared by every clustering of the night); the first join
    into it copies the seed, so seeds never change. A record a reviewer said is a
    different person from someone gets a copy carrying that ``cannot`` set.
    """

    def __init__(self, seeds: Mapping[str, Profile], forbidden: Mapping[str, set[str]]) -> None:
        super().__init__()
        self._seeds = seeds
        self._forbidden = forbidden
        self._own: set[str] = set()

    def __missing__(self, uid: str) -> Profile:
        profile = self._seeds[uid]
        if uid in self._forbidden:
            profile = profile.copy()
            profile.cannot = set(self._forbidden[uid])
            self._own.add(uid)
        self[uid] = profile
        return profile

    def join(self, root: str, other: str) -> None:
        """Absorb cluster ``other`` into cluster ``root`` (both roots)."""
        profile = self[root]
        if root not in self._own:
            profile = self[root] = profile.copy()
            self._own.add(root)
        profile.absorb(self.pop(other))


def pair_vetoes(pairs: pl.DataFrame, records: pl.DataFrame) -> pl.DataFrame:
    """Vectorised first pass of the rules over scored pairs: adds a boolean ``veto``.

    The NHS number, contact, Jr/Sr and birth-year rules are cheap in Polars, and so is
    "no forename": a record without one links only on an identifier, an exact date of
    birth or (school contacts) the same phone number for the same role, never on surname
    and address alone (nor on a score: a link a rule ``asserted`` to the unique candidate
    is not refused for the missing forename). UPN (current and former), date and twin
    rules are left to :meth:`Profile.conflict` during clustering.
    """
    cols = [
        "unique_id",
        "forename",
        "dob",
        "nhs_number",
        "upn",
        "child_upn",
        "suffix",
        "year_lo",
        "year_hi",
        "phone",
        "relationship",
    ]
    side = records.select(cols)
    joined = pairs.join(
        side.rename({c: f"{c}_l" for c in cols}), on="unique_id_l", how="left"
    ).join(side.rename({c: f"{c}_r" for c in cols}), on="unique_id_r", how="left")
    # A school contact's phone number given for the same role (the mother of two pupils)
    # is, like an exact date of birth, enough to let a strong score stand; a household
    # landline shared by mother and father is not, because their roles differ. (Phones
    # are shared too often to link on alone: this only lifts the "no forename" veto.)
    same_contact = (pl.col("phone_l") == pl.col("phone_r")) & (
        pl.col("relationship_l") == pl.col("relationship_r")
    )
    identified = (
        (pl.col("nhs_number_l") == pl.col("nhs_number_r"))
        | (pl.col("upn_l") == pl.col("upn_r"))
        | (pl.col("dob_l") == pl.col("dob_r"))
        | same_contact
    ).fill_null(False)
    if "asserted" in joined.columns:
        # A rule found the record's unique candidate (``matching.unnamed``): the veto
        # guards scores on surname and address, not that evidence.
        identified = identified | pl.col("asserted").fill_null(False)
    veto = (
        (pl.col("nhs_number_l") != pl.col("nhs_number_r")).fill_null(False)
        | (pl.col("child_upn_l") == pl.col("upn_r")).fill_null(False)
        | (pl.col("child_upn_r") == pl.col("upn_l")).fill_null(False)
        | (pl.concat_str("suffix_l", "suffix_r").is_in(["jrsr", "srjr"])).fill_null(False)
        | (pl.col("year_lo_l") > pl.col("year_hi_r")).fill_null(False)
        | (pl.col("year_lo_r") > pl.col("year_hi_l")).fill_null(False)
        | ((pl.col("forename_l").is_null() | pl.col("forename_r").is_null()) & ~identified)
    )
    return joined.with_columns(veto.alias("veto")).select(*pairs.columns, "veto")


def breaches(records: pl.DataFrame, person_records: pl.DataFrame) -> pl.DataFrame:
    """Persons that break an identifier or twin rule: what the nightly check reads back.

    ``person_records`` maps ``record_id`` to ``person_id``. Returns ``person_id, rule``.
    """
    held = records.join(
        person_records.select(pl.col("record_id").alias("unique_id"), "person_id"), on="unique_id"
    )
    nhs = (
        held.drop_nulls("nhs_number")
        .group_by("person_id")
        .agg(pl.col("nhs_number").n_unique().alias("n"))
        .filter(pl.col("n") > 1)
        .select("person_id", pl.lit("two valid NHS numbers").alias("rule"))
    )
    upn_sets = held.filter(pl.col("upn_keys").list.len() > 0).select("person_id", "upn_keys")
    upn_bad = []
    # Records agreeing on their UPNs share them: only a person whose records give more
    # than one set of UPNs needs comparing set by set.
    several = (
        upn_sets.group_by("person_id")
        .agg("upn_keys", pl.col("upn_keys").n_unique().alias("sets"))
        .filter(pl.col("sets") > 1)
    )
    for person, sets, _ in several.iter_rows():
        groups = [set(s) for s in sets]
        if any(not a & b for i, a in enumerate(groups) for b in groups[i + 1 :]):
            upn_bad.append(person)
    upn = pl.DataFrame(
        {"person_id": upn_bad, "rule": ["UPNs with nothing in common"] * len(upn_bad)},
        schema={"person_id": pl.String, "rule": pl.String},
    )
    twins_bad = []
    # Records with an NHS number or UPN first, as clustering saw them: a shared identifier
    # is the same person whatever the names say ("Sunit" and "Suntia" Kaur of one NHS
    # number are one woman with a misspelt name, not twins), so the check applies the rule
    # clustering applied instead of flagging every misspelling it rightly let through.
    born = (
        held.filter(pl.col("dob_exact"))
        .with_columns(
            (pl.col("nhs_number").is_null() & (pl.col("upn_keys").list.len() == 0)).alias("_bare")
        )
        .sort("person_id", "_bare", "unique_id")
        .select(
            "person_id",
            "nhs_number",
            "upn_keys",
            "dob",
            "surname",
            "forename",
            "forename_keys",
            "forename_alt",
            "middle_name",
        )
    )
    # Only a person with two dated records of one birthday and surname under different
    # forenames can break the twin rule; the rest (nearly everyone) need no profiles.
    candidates = (
        born.filter(pl.col("dob").is_not_null() & (pl.col("forename").fill_null("") != ""))
        .group_by("person_id", "dob", "surname")
        .agg(pl.col("forename").n_unique().alias("forenames"))
        .filter(pl.col("forenames") > 1)
        .get_column("person_id")
        .unique()
    )
    multi = born.filter(pl.col("person_id").is_in(candidates.implode()))
    names = [c for c in multi.columns if c != "person_id"]
    # One row of lists per person, read as tuples: slicing a frame per person cost seconds.
    for person, *values in multi.group_by("person_id", maintain_order=True).agg(names).iter_rows():
        profile = None
        for row in zip(*values, strict=True):
            fields = dict(zip(names, row, strict=True))
            single = Profile.of({**_BLANK, **fields, "unique_id": "", "dob_exact": True}, set())
            if profile is not None and profile.conflict(single) == "twins":
                twins_bad.append(person)
                break
            if profile is None:
                profile = single
            else:
                profile.absorb(single)
    twins = pl.DataFrame(
        {"person_id": twins_bad, "rule": ["twins"] * len(twins_bad)},
        schema={"person_id": pl.String, "rule": pl.String},
    )
    return pl.concat([nhs, upn, twins]).sort("person_id")


_BLANK = {
    "nhs_number": None,
    "upn_keys": [],
    "child_upn": None,
    "suffix": None,
    "year_lo": None,
    "year_hi": None,
}
