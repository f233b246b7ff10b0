"""Independence regions: parts of a night's records that ``matching.link.resolve`` settles
each on its own, so a second night need only re-resolve the parts that changed.

A *region* is a connected component of a static graph over the records. The graph does
not depend on the clustering: its edges are a superset of every way one record can change
another record's outcome in ``resolve`` (its person, its confidence, the links and vetoes
around it), whatever the clustering turns out to be. Then every cluster lies inside one
region, every rule link joins two records of one region, and resolving each region alone
(its records, the pairs among them, all constraints and relationships) gives the same
clusters as resolving everything at once. The argument, step by step of ``resolve``:

1. ``cluster``. Union-find joins the two ends of a pair scored at or above
   ``thresholds.match`` (edge: *strong pairs*) or of a reviewer's ``must_link`` (edge:
   *constraints*, both kinds, so a record's constraints always lie inside its region).
   Edges are taken in one total order (weight, then ids), so the joins inside a region
   happen in the same order with or without the other regions, and every veto
   (``rules.Profile.conflict``) compares two clusters of the one region. ``_ambiguous``
   compares the candidates a weak record has strong pairs with: one region. The held-back
   records are revisited in id order until nothing changes; a region's joins depend only
   on its own held records, and a pass that changes nothing in a region changes nothing
   there later, so the extra passes another region causes do nothing. A ``cannot_link``
   outside a region can never be tested (its two records are never in one cluster).
2. Rule links (each module's own joins and windows):
   - ``contacts``: a contact reaches its child's records through the pupil's UPN (edge:
     ``child_upn`` to ``upn_keys``), then candidates sharing an address key of the kinds
     ``contacts._addresses`` builds with the contact or any record of the child's person.
     The ``full`` key is exact for the searching side, so every pair of records sharing it
     can count (edge: *full address*). A ``building`` key match counts only when the
     searching record gives no flat (edge: a building's records, when one gives no flat).
     A ``street`` key match counts only when one of the two has no postcode (edge: a
     street address's records, when one has no postcode). Everything after the row
     filter (the windows over the contact, the contact-only rivals of a candidate's
     person) reads only those rows and the persons of their records.
   - ``parents``: statements about one child, from contact rows (UPN edge), relationship
     tables (edge: ``record_id`` to ``related_record_id``) and early help families (edge:
     ``family_id``); candidates are statements about the same child's person, and the
     unique-candidate window runs over one record's statements, all joined by these edges.
   - ``residents`` and ``unnamed``: candidates at the same postcode and address key (the
     full address edge); ``unnamed`` also reads the child's person (UPN edge).
   - ``moves``: joins weak and known records on surname between two addresses; every
     window and group is over one pair of addresses (A, B), so the outcome of (A, B)
     depends only on its own rows and the persons of their records. A pair of addresses
     yields a link only if two different persons at A each match one of two different
     persons at B (one to one); so there are two records at A and two at B, each pair
     matching on surname, birth years, sex and ``moves._fits``, the A side with no identity
     of its own (an identified record is always in an identified person, never weak).
     Those address pairs are edges (``_move_edges``); any other address pair yields no
     link under any clustering, and its rows touch no other pair's windows.
   Each rule's links then go through ``cluster`` again: inside a region, as above.
3. ``assign_person_ids`` reads only the record-to-cluster grouping (its anchor is a
   record id), so it runs on all records after the regions are put back together.
4. ``review_queue`` reads scored pairs below ``thresholds.match`` too, which may cross
   regions; it is cheap and is run on everything (``matching.link.resolve_regions``).
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from matching.config import LinkageConfig
from matching.digests import fields_text, sha256_hex
from matching.model import MODEL_COLUMNS
from matching.moves import ADDRESS, MIN_MEMBERS, PLACEABLE, PLACED_FIELDS
from matching.rules import names_related

# Every standardised column resolve() and the rule modules read (pairs are scored from
# ``link.FINGERPRINT_COLUMNS``, a subset). A test resolves records cut down to these.
RESOLVE_COLUMNS = [
    "unique_id",
    "source",
    "source_table",
    "local_key",
    "from_quarantine",
    "forename",
    "forename_alt",
    "forename_keys",
    "middle_name",
    "surname",
    "surname_alt",
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
    "phone",
    "postcode",
    "address_key",
    "family_id",
    "role_in_family",
]


def _address_edges(records: pl.DataFrame) -> list[pl.DataFrame]:
    """Record-to-key edges for the address keys a rule can match on (module doc, step 2)."""
    has_key = pl.col("address_key").is_not_null()
    has_postcode = pl.col("postcode").is_not_null()
    full = records.filter(has_key & has_postcode).select(
        "unique_id", pl.concat_str([pl.lit("full"), "postcode", "address_key"], separator="#")
    )
    building_key = pl.concat_str(
        [pl.lit("building"), "postcode", pl.col("address_key").str.replace(r"^[^|]*", "")],
        separator="#",
    )
    no_flat = pl.col("address_key").str.split("|").list.first() == ""
    building = (
        records.filter(has_key & has_postcode)
        .select("unique_id", building_key.alias("key"), no_flat.alias("loose"))
        .filter(pl.col("loose").any().over("key"))
        .select("unique_id", "key")
    )
    street = (
        records.filter(has_key)
        .select(
            "unique_id",
            pl.concat_str([pl.lit("street"), "address_key"], separator="#").alias("key"),
            pl.col("postcode").is_null().alias("loose"),
        )
        .filter(pl.col("loose").any().over("key"))
        .select("unique_id", "key")
    )
    return [full, building, street]


def _identifier_edges(records: pl.DataFrame) -> list[pl.DataFrame]:
    """A contact row to its pupil's records (UPN), an early help family's members."""
    upn = records.select("unique_id", pl.col("upn_keys").alias("key")).explode("key")
    child = records.select("unique_id", pl.col("child_upn").alias("key"))
    family = records.select(
        "unique_id", pl.concat_str([pl.lit("family"), "family_id"], separator="#")
    )
    return [
        pl.concat([upn, child])
        .drop_nulls("key")
        .select("unique_id", pl.concat_str([pl.lit("upn"), "key"], separator="#")),
        family,
    ]


def _move_edges(records: pl.DataFrame) -> pl.DataFrame:
    """``unique_id, key``: a record at A joined to the full-address key of each address B
    that ``moves.move_links`` could ever link A with (module doc, step 2).

    The surname join is the county's largest, so it is pruned by what a link needs first
    (two weak records at A, two records at B) and made on integer codes only; names and
    dates are read for the rows that are left.
    """
    placed = (
        records.filter(PLACEABLE)
        .select(
            "unique_id",
            ADDRESS,
            *PLACED_FIELDS,
            (
                pl.col("dob_exact").fill_null(False)
                | pl.col("nhs_number").is_not_null()
                | (pl.col("upn_keys").list.len().fill_null(0) > 0)
            ).alias("identity"),
        )
        .filter(pl.len().over("address") >= MIN_MEMBERS)
        .with_row_index("row")
        .with_columns(
            pl.col("address").rank("dense").cast(pl.UInt32).alias("place"),
            pl.col("surname").rank("dense").cast(pl.UInt32).alias("name"),
        )
    )
    narrow = ["row", "place", "name", "sex", "year_lo", "year_hi"]
    weak = placed.filter(~pl.col("identity")).filter(pl.len().over("address") >= MIN_MEMBERS)
    two_each = (pl.col("row").n_unique().over("place", "place_c") >= MIN_MEMBERS) & (
        pl.col("row_c").n_unique().over("place", "place_c") >= MIN_MEMBERS
    )
    pairs = (
        weak.lazy()
        .select(narrow)
        .join(placed.lazy().select(narrow), on="name", suffix="_c")
        .filter(
            (pl.col("place") != pl.col("place_c"))
            & ~(pl.col("year_lo") > pl.col("year_hi_c")).fill_null(False)
            & ~(pl.col("year_lo_c") > pl.col("year_hi")).fill_null(False)
            & ~(pl.col("sex") != pl.col("sex_c")).fill_null(False)
        )
        .select("row", "place", "row_c", "place_c")
        .collect(engine="streaming")
        .filter(two_each)
    )
    if pairs.is_empty():
        return pl.DataFrame(schema={"unique_id": pl.String, "key": pl.String})
    details = ["forename", "forename_keys", "dob", "dob_exact"]
    side = placed.select("row", *details)
    pairs = (
        pairs.join(side, on="row")
        .join(side.rename({"row": "row_c", **{c: f"{c}_c" for c in details}}), on="row_c")
        .filter(_dates_fit())
    )
    # ``moves._fits`` is names_related and then the dates, done above in Polars; the names
    # once per distinct pair of names (most rows repeat one).
    names = pairs.select("forename", "forename_c", "forename_keys", "forename_keys_c").unique()
    related = [
        names_related(a, b, set(ka or []), set(kb or [])) for a, b, ka, kb in names.iter_rows()
    ]
    names = names.filter(pl.Series(related, dtype=pl.Boolean))
    pairs = pairs.join(
        names, on=["forename", "forename_c", "forename_keys", "forename_keys_c"], nulls_equal=True
    ).filter(two_each)
    names = placed.select("row", "unique_id", "address")
    return (
        pairs.select("row", "row_c")
        .join(names.select("row", "unique_id"), on="row")
        .join(names.select(pl.col("row").alias("row_c"), "address"), on="row_c")
        .select("unique_id", pl.concat_str([pl.lit("full"), "address"], separator="#").alias("key"))
        .unique()
    )


def _dates_fit() -> pl.Expr:
    """``rules.dates_compatible`` when both dates are exact (``moves._fits``), in Polars:
    equal, day and month swapped, or one of day, month and year different."""
    a, b = pl.col("dob"), pl.col("dob_c")
    same = (
        (a.dt.year() == b.dt.year()).cast(pl.Int8)
        + (a.dt.month() == b.dt.month()).cast(pl.Int8)
        + (a.dt.day() == b.dt.day()).cast(pl.Int8)
    )
    swapped = (
        (a.dt.year() == b.dt.year()) & (a.dt.month() == b.dt.day()) & (a.dt.day() == b.dt.month())
    )
    both = pl.col("dob_exact").fill_null(False) & pl.col("dob_exact_c").fill_null(False)
    return (~both | (a == b) | swapped | (same == 2)).fill_null(True)


def _pair_edges(
    ids: pl.DataFrame,
    pairs: pl.DataFrame,
    threshold: float,
    constraints: pl.DataFrame | None,
    relationships: pl.DataFrame | None,
) -> pl.DataFrame:
    """``unique_id, key``: strong pairs, reviewers' decisions and relationship rows, as an
    edge from one record to the other (both present tonight)."""
    parts = [
        pairs.filter(pl.col("match_probability") >= threshold).select(
            pl.col("unique_id_l").alias("unique_id"), pl.col("unique_id_r").alias("key")
        )
    ]
    if constraints is not None and not constraints.is_empty():
        parts.append(
            constraints.select(
                pl.col("record_id_l").alias("unique_id"), pl.col("record_id_r").alias("key")
            )
        )
    if relationships is not None and not relationships.is_empty():
        parts.append(
            relationships.select(
                pl.col("record_id").alias("unique_id"), pl.col("related_record_id").alias("key")
            )
        )
    edges = pl.concat([p.cast(pl.String) for p in parts])
    present = ids["unique_id"].implode()
    return edges.filter(pl.col("unique_id").is_in(present) & pl.col("key").is_in(present))


def _components(nodes: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Each node's component, named by its smallest node.

    SciPy's connected components (compiled; a Python union-find took ~1.2 s of every
    night at 100,000 households) number components arbitrarily; nodes are visited in
    order, so the first node carrying each label is that component's smallest."""
    graph = coo_array((np.ones(len(left), dtype=np.int8), (left, right)), shape=(nodes, nodes))
    _, labels = connected_components(graph, directed=False)
    _, smallest = np.unique(labels, return_index=True)
    return smallest[labels]


def regions(
    records: pl.DataFrame,
    pairs: pl.DataFrame,
    *,
    threshold: float,
    constraints: pl.DataFrame | None = None,
    relationships: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """``unique_id, region``: each record's region, named by its smallest unique id."""
    ids = records.select("unique_id")
    shared = pl.concat(
        [
            e.rename({e.columns[1]: "key"})
            for e in [*_address_edges(records), *_identifier_edges(records), _move_edges(records)]
        ]
    ).drop_nulls()
    # Records sharing a key are joined through the key's first record (a star, so the
    # component search below sees only records and no more edges than it needs).
    edges = pl.concat(
        [
            _pair_edges(ids, pairs, threshold, constraints, relationships).rename({"key": "other"}),
            shared.select("unique_id", pl.col("unique_id").min().over("key").alias("other")),
        ]
    ).filter(pl.col("unique_id") != pl.col("other"))
    # Records numbered in sorted order, so a component's smallest number is its smallest id.
    names = ids.sort("unique_id")["unique_id"]
    index = names.to_frame("unique_id").with_row_index("i")
    numbered = edges.join(index.rename({"i": "a"}), on="unique_id").join(
        index.rename({"unique_id": "other", "i": "b"}), on="other"
    )
    roots = _components(names.len(), numbered["a"].to_numpy(), numbered["b"].to_numpy())
    root_of = pl.Series("root", roots, dtype=pl.UInt32)
    frame = pl.DataFrame({"unique_id": names, "root": root_of})
    return (
        records.select("unique_id")
        .join(
            frame.with_columns(pl.col("unique_id").gather(pl.col("root")).alias("region")),
            on="unique_id",
            how="left",
            maintain_order="left",
        )
        .select("unique_id", "region")
    )


@dataclass(frozen=True)
class Reusable:
    """Last night's regions and what resolve made of them, read back from the warehouse.

    ``state``: unique_id, region, resolve_hash (``region_state``); ``persons``: unique_id,
    person_id, match_confidence; ``ambiguous``: unique_id_l, unique_id_r, match_probability
    (pairs the final clustering held back as ambiguous, for the review queue).
    """

    state: pl.DataFrame
    persons: pl.DataFrame
    ambiguous: pl.DataFrame


# The modules whose code decides a region's outcome: stored outcomes made by other code
# are not reused (``salt``).
_RESOLVE_MODULES = (
    "cluster",
    "contacts",
    "edges",
    "link",
    "moves",
    "parents",
    "regions",
    "residents",
    "rules",
    "unnamed",
)


def salt(config: LinkageConfig, extra: str) -> str:
    """What every stored outcome also depends on: the thresholds, ``extra`` (the model
    version) and the code of the modules that resolve records."""
    digest = hashlib.sha256(repr(config.thresholds).encode())
    digest.update(extra.encode())
    for name in _RESOLVE_MODULES:
        # The file the module was loaded from: its source, or its compiled code where a
        # deployment ships only that; either changes when the code does.
        origin = importlib.import_module(f"matching.{name}").__spec__.origin
        digest.update(Path(origin).read_bytes())
    return digest.hexdigest()[:20]


def _touching(frame: pl.DataFrame | None, left: str, right: str) -> pl.DataFrame:
    """``unique_id, text``: per record, every row of ``frame`` naming it at either end."""
    schema = {"unique_id": pl.String, "text": pl.String}
    if frame is None or frame.is_empty():
        return pl.DataFrame(schema=schema)
    text = pl.concat_str(
        [pl.col(c).cast(pl.String).fill_null("\x00") for c in frame.columns], separator="\x1f"
    )
    rows = frame.select(left, right, text.alias("text"))
    ends = pl.concat(
        [
            rows.select(pl.col(left).alias("unique_id"), "text"),
            rows.select(pl.col(right).alias("unique_id"), "text"),
        ]
    )
    return ends.group_by("unique_id").agg(pl.col("text").sort().str.join("\x1e")).cast(schema)


def record_hashes(
    records: pl.DataFrame,
    *,
    constraints: pl.DataFrame | None,
    relationships: pl.DataFrame | None,
    salt: str,
) -> pl.DataFrame:
    """``unique_id, resolve_hash``: a sha256 of everything resolve reads about a record:
    its ``RESOLVE_COLUMNS`` and model columns, the reviewers' decisions and relationship
    rows that name it, and ``salt``. Nulls are a marker of their own."""
    columns = [*RESOLVE_COLUMNS, *(c for c in MODEL_COLUMNS if c in records.columns)]
    text = (
        records.select("unique_id", fields_text(records, dict.fromkeys(columns)).alias("fields"))
        .join(
            _touching(constraints, "record_id_l", "record_id_r").rename({"text": "decided"}),
            on="unique_id",
            how="left",
            maintain_order="left",
        )
        .join(
            _touching(relationships, "record_id", "related_record_id").rename({"text": "related"}),
            on="unique_id",
            how="left",
            maintain_order="left",
        )
        .select(
            "unique_id",
            pl.concat_str(
                [
                    pl.lit(salt),
                    "fields",
                    pl.col("decided").fill_null(""),
                    pl.col("related").fill_null(""),
                ],
                separator="\x1d",
            ).alias("t"),
        )
    )
    return text.select("unique_id", sha256_hex(text["t"], 24, "resolve_hash"))


def region_state(
    records: pl.DataFrame,
    pairs: pl.DataFrame,
    *,
    threshold: float,
    constraints: pl.DataFrame | None,
    relationships: pl.DataFrame | None,
    salt: str,
) -> pl.DataFrame:
    """``unique_id, region, resolve_hash``: what tonight stores for tomorrow's reuse."""
    found = regions(
        records,
        pairs,
        threshold=threshold,
        constraints=constraints,
        relationships=relationships,
    )
    hashes = record_hashes(records, constraints=constraints, relationships=relationships, salt=salt)
    return found.join(hashes, on="unique_id", maintain_order="left")


def clean_records(state: pl.DataFrame, previous: Reusable | None) -> pl.DataFrame:
    """``unique_id`` of the records in clean regions: regions whose record set is exactly
    one of last night's regions, every record unchanged (``resolve_hash``) and given a
    person last night. Their persons can be kept (module doc)."""
    if previous is None:
        return pl.DataFrame(schema={"unique_id": pl.String})
    before = previous.state.select(
        "unique_id",
        pl.col("region").alias("region_before"),
        pl.col("resolve_hash").alias("hash_before"),
    )
    sizes = before.group_by("region_before").agg(pl.len().alias("size_before"))
    had_person = previous.persons.select("unique_id", pl.lit(True).alias("had_person"))
    same = (
        (pl.col("region_before") == pl.col("region"))
        & (pl.col("hash_before") == pl.col("resolve_hash"))
        & pl.col("had_person")
    ).fill_null(False)
    verdict = (
        state.join(before, on="unique_id", how="left")
        .join(had_person, on="unique_id", how="left")
        .group_by("region")
        .agg(same.all().alias("same"), pl.len().alias("size"))
        .join(sizes, left_on="region", right_on="region_before", how="left")
        .filter(pl.col("same") & (pl.col("size") == pl.col("size_before")))
    )
    return state.join(verdict.select("region"), on="region").select("unique_id")


def reused(
    previous: Reusable, clean: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Last night's clusters (named by person id), confidence and ambiguous pairs of the
    ``clean`` records: a person is one cluster (``registry``: one id per cluster)."""
    persons = previous.persons.join(clean, on="unique_id")
    ids = clean["unique_id"].implode()
    ambiguous = previous.ambiguous.filter(
        pl.col("unique_id_l").is_in(ids) & pl.col("unique_id_r").is_in(ids)
    )
    return (
        persons.select("unique_id", pl.concat_str(pl.lit("p#"), "person_id").alias("cluster_id")),
        persons.select("unique_id", pl.col("match_confidence").cast(pl.Float64)),
        ambiguous.select(
            "unique_id_l", "unique_id_r", pl.col("match_probability").cast(pl.Float64)
        ),
    )
