"""A family's records at an old address linked to the family at its new one
(``matching.moves``). Built like ``test_linkage_rules``: canonical rows, hand clusters."""

from __future__ import annotations

from typing import Any

import polars as pl

from matching.config import load_linkage_config
from matching.moves import MOVE_LINK_PROBABILITY, move_links
from matching.standardise import standardise
from tests.test_linkage_rules import NHS_A, NHS_B, NHS_C, nhs, rec, rows

CONFIG = load_linkage_config()
NEW = {"address_line_1": "88 Middle Drive", "postcode": "TA13 6JS"}
OLD = {"address_line_1": "35 Castle Terrace", "postcode": "TA12 4EH"}
NHS_D = nhs("999000004")


def _police(key: str, forename: str, age: str, sex: str, **where: Any) -> dict[str, Any]:
    return rec(f"police|persons|{key}", forename=forename, surname="Griffiths", sex=sex,
               age_at_incident=age, first_seen="2026-01-01", last_seen="2026-01-01",
               **(where or OLD))  # fmt: skip


KAREN = rec("health|patients|K", forename="Karen", surname="Griffiths", dob="1977-12-21",
            sex="F", nhs_number=NHS_A, **NEW)  # fmt: skip
FLORENCE = rec("health|patients|F", forename="Florence", surname="Griffiths",
               dob="2010-12-05", sex="F", nhs_number=NHS_B, **NEW)  # fmt: skip


def _links(*records: dict[str, Any]) -> list[tuple[str, str]]:
    frame = standardise(rows(*records), CONFIG)
    clusters = frame.select("unique_id", pl.col("unique_id").alias("cluster_id"))
    links = move_links(frame, clusters)
    assert set(links["match_probability"].to_list()) <= {MOVE_LINK_PROBABILITY}
    return sorted(links.select("unique_id_l", "unique_id_r").rows())


def test_two_people_matching_at_another_address_are_the_family_that_moved() -> None:
    # The police hold Karen and "Florrie" (about 15) at the old address; the GP has both
    # at the new one.
    found = _links(KAREN, FLORENCE, _police("P1", "Karen", "48", "F"),
                   _police("P2", "Florrie", "15", "F"))  # fmt: skip
    assert found == [
        ("health|patients|F", "police|persons|P2"),
        ("health|patients|K", "police|persons|P1"),
    ]


def test_one_person_alone_at_another_address_is_not_linked() -> None:
    # A single namesake elsewhere may be anyone: one match is no family.
    assert _links(KAREN, FLORENCE, _police("P1", "Karen", "48", "F")) == []


def test_a_match_that_is_not_one_to_one_is_not_linked() -> None:
    # Two girls at the new address answer to "Flo" (Florence and her sister Flora): which
    # one the police met is a guess, so neither is linked. That leaves Karen as the only
    # one-to-one match, and one match is no family (MIN_MEMBERS people must match one to
    # one), so Karen is not linked either.
    flora = rec("health|patients|F2", forename="Flora", surname="Griffiths", dob="2011-11-11",
                sex="F", nhs_number=NHS_C, **NEW)  # fmt: skip
    police = [_police("P1", "Karen", "48", "F"), _police("P2", "Flo", "15", "F"),
              _police("P3", "Ann", "80", "F")]  # fmt: skip
    assert _links(KAREN, FLORENCE, flora, *police) == []
    # With Ann at the new address too, Karen and Ann are two one-to-one matches: they are
    # linked, and "Flo" still is not.
    ann = rec("health|patients|A", forename="Ann", surname="Griffiths", dob="1946-01-01",
              sex="F", nhs_number=NHS_D, **NEW)  # fmt: skip
    assert _links(KAREN, FLORENCE, flora, ann, *police) == [
        ("health|patients|A", "police|persons|P3"),
        ("health|patients|K", "police|persons|P1"),
    ]


def test_wrong_age_or_sex_is_not_a_match() -> None:
    # The police "Karen" is a man and "Florence" is 40: the two addresses share no family.
    found = _links(KAREN, FLORENCE, _police("P1", "Karen", "48", "M"),
                   _police("P2", "Florence", "40", "F"))  # fmt: skip
    assert found == []


def test_records_with_an_identity_are_not_moved_by_their_family() -> None:
    # The police records carry exact dates of birth: their scores decide, not the family.
    dated = [
        rec("police|persons|P1", forename="Karen", surname="Griffiths", dob="1977-12-21",
            sex="F", **OLD),
        rec("police|persons|P2", forename="Florence", surname="Griffiths", dob="2010-12-05",
            sex="F", **OLD),
    ]  # fmt: skip
    assert _links(KAREN, FLORENCE, *dated) == []
