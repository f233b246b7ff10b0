"""Records with no forename linked to the one person at their address who fits
(``matching.unnamed``), and contact rows that are no rivals (``matching.contacts``).
Built like ``test_linkage_rules``: canonical rows, hand clusters."""

from __future__ import annotations

from typing import Any

import polars as pl

from matching.contacts import contact_links
from matching.link import resolve
from matching.unnamed import UNNAMED_LINK_PROBABILITY, unnamed_links
from tests.test_linkage_rules import (
    CONFIG,
    NHS_A,
    NHS_B,
    NHS_C,
    UPN_X,
    UPN_Y,
    groups,
    pairs,
    rec,
    run,
    std,
)

HOME = {"address_line_1": "6 Foxglove Place", "postcode": "TA26 8RT"}
ELSEWHERE = {"address_line_1": "14 York Drive", "postcode": "TA7 5DP"}

PUPIL = rec("school|pupils|X", forename="Ava", surname="Jenkins", dob="2015-06-01", sex="F",
            upn=UPN_X, **HOME)  # fmt: skip
HARRIET = rec("health|patients|H", forename="Harriet", surname="Jenkins", dob="1986-04-02",
              sex="F", nhs_number=NHS_A, **HOME)  # fmt: skip
# "Mrs Jenkins, mother" on the school's form: the forename was left blank.
UNNAMED_MOTHER = rec("school|contacts|X1", forename=None, surname="Jenkins", child_upn=UPN_X,
                     relationship="mother", **HOME)  # fmt: skip


def _records(*records: dict[str, Any]) -> pl.DataFrame:
    return std(*records)


def _own(records: pl.DataFrame) -> pl.DataFrame:
    return records.select("unique_id", pl.col("unique_id").alias("cluster_id"))


def _links(*records: dict[str, Any]) -> list[tuple[str, str]]:
    frame = _records(*records)
    links = unnamed_links(frame, _own(frame))
    assert set(links["match_probability"].to_list()) <= {UNNAMED_LINK_PROBABILITY}
    assert links["asserted"].all()
    return sorted(links.select("unique_id_l", "unique_id_r").rows())


def test_a_contact_with_no_forename_links_to_the_one_woman_of_that_surname_at_home() -> None:
    assert _links(PUPIL, HARRIET, UNNAMED_MOTHER) == [("health|patients|H", "school|contacts|X1")]


def test_the_link_survives_clustering_although_a_forename_is_missing() -> None:
    # A score alone for this pair is refused (no forename, no shared identifier) ...
    records = _records(PUPIL, HARRIET, UNNAMED_MOTHER)
    scored = pairs(("health|patients|H", "school|contacts|X1", 0.99))
    assert frozenset({"health|patients|H", "school|contacts|X1"}) not in groups(
        run(records, scored)
    )
    # ... but the asserted link to the unique candidate is made, even with that score
    # beside it.
    result = resolve(
        records,
        scored,
        CONFIG,
        {"comparisons": []},
        previous_registry=pl.DataFrame(schema={"record_id": pl.String, "person_id": pl.String}),
        run_id="t",
    )
    person = dict(result.person_records.select("record_id", "person_id").iter_rows())
    assert person["health|patients|H"] == person["school|contacts|X1"]
    assert person["school|pupils|X"] != person["health|patients|H"]


def test_two_women_of_that_surname_and_age_at_home_link_neither() -> None:
    # The pupil's grandmother (born 1962) also fits "Jenkins, mother" by sex and age: the
    # contact may be either, and a mother merged with her own mother is the worst mistake.
    grandmother = rec("health|patients|G", forename="Jean", surname="Jenkins",
                      dob="1962-09-09", sex="F", nhs_number=NHS_B, **HOME)  # fmt: skip
    assert _links(PUPIL, HARRIET, grandmother, UNNAMED_MOTHER) == []


def test_no_link_on_another_surname_sex_or_age() -> None:
    other_surname = {**HARRIET, "surname": "Jenks"}
    assert _links(PUPIL, other_surname, UNNAMED_MOTHER) == []
    father = {**UNNAMED_MOTHER, "relationship": "father"}
    assert _links(PUPIL, HARRIET, father) == []
    # A sister born 2010 cannot be the mother of a girl born in 2015.
    sister = {**HARRIET, "dob": "2010-01-01"}
    assert _links(PUPIL, sister, UNNAMED_MOTHER) == []


def test_no_link_at_another_address() -> None:
    assert _links(PUPIL, {**HARRIET, **ELSEWHERE}, UNNAMED_MOTHER) == []


def test_the_child_is_never_the_candidate() -> None:
    # "Jenkins, carer" gives no sex and no age cap: the pupil is the only Jenkins at home,
    # but a contact is never the pupil whose form it is on.
    carer = {**UNNAMED_MOTHER, "relationship": "carer"}
    assert _links(PUPIL, carer) == []


def test_a_gp_record_with_no_given_name_links_to_the_named_father() -> None:
    # The health row (NHS number, exact date of birth) lost its given name; the father is
    # on the school's form as "Kofi Okonkwo".
    pupil = rec("school|pupils|X", forename="Ama", surname="Okonkwo", dob="2012-03-03",
                sex="F", upn=UPN_X, **HOME)  # fmt: skip
    gp = rec("health|patients|K", forename=None, surname="Okonkwo", dob="1972-01-25",
             sex="M", nhs_number=NHS_A, **HOME)  # fmt: skip
    kofi = rec("school|contacts|X2", forename="Kofi", surname="Okonkwo", child_upn=UPN_X,
               relationship="father", **HOME)  # fmt: skip
    assert _links(pupil, gp, kofi) == [("health|patients|K", "school|contacts|X2")]
    # A son born 2010 is no candidate for a man born 1972, and a brother born 1974 is
    # none either (both dates are known) ...
    son = rec("health|patients|S", forename="Kwesi", surname="Okonkwo", dob="2010-01-01",
              sex="M", nhs_number=NHS_B, **HOME)  # fmt: skip
    brother = rec("health|patients|B", forename="Kwame", surname="Okonkwo", dob="1974-05-05",
                  sex="M", nhs_number=NHS_C, **HOME)  # fmt: skip
    assert _links(pupil, gp, kofi, son, brother) == [("health|patients|K", "school|contacts|X2")]
    # ... but a man the police met there "aged about 54", who may be born in 1972, is.
    police = rec("police|persons|P", forename="Kwame", surname="Okonkwo", sex="M",
                 age_at_incident="54", first_seen="2026-01-01", last_seen="2026-01-01",
                 **HOME)  # fmt: skip
    assert _links(pupil, gp, kofi, police) == []


def test_hard_rules_still_refuse_an_unnamed_link() -> None:
    # The unique candidate has another valid NHS number: two people, whatever fits.
    gp = rec("health|patients|U", forename=None, surname="Jenkins", dob="1986-04-02", sex="F",
             nhs_number=NHS_C, **HOME)  # fmt: skip
    records = _records(PUPIL, HARRIET, gp)
    links = unnamed_links(records, _own(records))
    assert links.height == 1
    result = run(records, links)
    assert frozenset({"health|patients|H", "health|patients|U"}) not in groups(result)


# --- contacts: persons known only from contact rows are no rivals ------------------------

SIBLING = rec("school|pupils|Y", forename="Leo", surname="Rees", dob="2013-02-02", sex="M",
              upn=UPN_Y, **HOME)  # fmt: skip
SOPHIE_GP = rec("health|patients|S", forename="Sophie", surname="Edwards", dob="1985-11-13",
                sex="F", nhs_number=NHS_A, **HOME)  # fmt: skip


def _sophie_contact(upn: str, key: str, surname: str) -> dict[str, Any]:
    return rec(f"school|contacts|{key}", forename="Sophie", surname=surname, child_upn=upn,
               relationship="mother", **HOME)  # fmt: skip


def test_two_forms_naming_one_mother_both_link_to_her_own_record() -> None:
    # "Sophie, mother" on two siblings' forms, each under the child's surname, and Sophie's
    # GP record at the address: each contact row is the same woman, not a second Sophie.
    records = std(PUPIL, SIBLING, SOPHIE_GP, _sophie_contact(UPN_X, "X1", "Jenkins"),
                  _sophie_contact(UPN_Y, "Y1", "Rees"))  # fmt: skip
    links = contact_links(records, _own(records))
    assert sorted(links.select("unique_id_l", "unique_id_r").rows()) == [
        ("health|patients|S", "school|contacts|X1"),
        ("health|patients|S", "school|contacts|Y1"),
    ]


def test_a_second_sophie_with_a_record_of_her_own_is_still_a_rival() -> None:
    other = rec("police|persons|P", forename="Sophie", surname="Rees", dob="1990-01-01",
                sex="F", **HOME)  # fmt: skip
    records = std(PUPIL, SIBLING, SOPHIE_GP, other, _sophie_contact(UPN_X, "X1", "Jenkins"),
                  _sophie_contact(UPN_Y, "Y1", "Rees"))  # fmt: skip
    assert contact_links(records, _own(records)).is_empty()
