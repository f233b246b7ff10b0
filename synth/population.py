"""The true population: people, households and family relations, before any agency sees them.

Everything the sources deliver is derived from this model, and the truth files describe it,
so linkage can be scored against it. It is built to contain the cases that make linkage
hard: twins, fathers and sons sharing a name, step-families with half-siblings, separated
parents living at other addresses, grandparents in other households, children in care living
away from their parents, deceased parents, and households that moved recently.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

from matching.identifiers import nhs_check_digit, upn_check_letter
from synth.geography import Address, Geography, Town
from synth.names import NameBank

_FAR_PAST = date(1900, 1, 1)
_UPN_END_LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZ"
HOME_LA = "998"  # fictional local authority codes: 998 is this county, 996/997 elsewhere

KIND_WEIGHTS: dict[str, float] = {
    "single_young": 6.0,
    "single_mid": 10.0,
    "single_old": 13.0,
    "couple_young": 7.5,
    "couple_mid": 9.5,
    "couple_old": 10.0,
    "couple_kids": 17.0,
    "single_parent": 7.5,
    "blended": 3.5,
    "multigen": 2.5,
    "kinship": 0.5,
    "adult_kids": 6.0,
    "sharers": 2.5,
}
FAMILY_KINDS = ("couple_kids", "single_parent", "blended", "multigen", "kinship")


@dataclass(slots=True, eq=False)
class Person:
    pid: int
    hid: int
    sex: str  # M | F
    dob: date
    forename: str
    middle: str
    surname: str
    former_surname: str
    group: str
    ethnicity: str
    nhs: str = ""
    addr_hist: list[tuple[date, Address]] = field(default_factory=list)
    mother: int | None = None
    father: int | None = None
    partner: int | None = None
    step_parents: list[int] = field(default_factory=list)
    #: Explicit relations not implied by parent links: (other pid, what they are to me).
    extra: list[tuple[int, str]] = field(default_factory=list)
    twin_group: str = ""
    dod: date | None = None
    jr: bool = False  # shares forename and surname with his father
    care: str = ""  # "" | "foster" | "residential"
    care_start: date | None = None
    care_leaver: bool = False
    home_hid: int = -1  # birth household of a child in care
    upn: str = ""
    former_upn: str = ""
    nick: str = ""  # the familiar name this person goes by, "" if none

    @property
    def address(self) -> Address:
        return self.addr_hist[-1][1]

    def address_at(self, when: date) -> Address:
        """The address this person lived at on ``when`` (sources lag behind moves)."""
        for start, addr in reversed(self.addr_hist):
            if start <= when:
                return addr
        return self.addr_hist[0][1]

    def last_move(self) -> date:
        return self.addr_hist[-1][0]

    def age_on(self, when: date) -> int:
        return when.year - self.dob.year - ((when.month, when.day) < (self.dob.month, self.dob.day))

    @property
    def true_id(self) -> str:
        return f"TP{self.pid:07d}"


@dataclass(slots=True, eq=False)
class Household:
    hid: int
    kind: str
    town: str
    members: list[int] = field(default_factory=list)
    needs: float = 0.0  # propensity to be known to services (0..1)
    address: Address | None = None

    @property
    def true_id(self) -> str:
        return f"TH{self.hid + 1:06d}"


def years_before(d: date, years: float) -> date:
    return d - timedelta(days=int(years * 365.25))


def academic_year(d: date) -> int:
    """Year in which the academic year containing ``d`` started (September)."""
    return d.year if d.month >= 9 else d.year - 1


def year_group(dob: date, on: date) -> int:
    """School year for a child on ``on``: 0 = Reception, -1 = nursery (N1), 11 = Year 11."""
    cohort = dob.year if dob.month >= 9 else dob.year - 1
    return academic_year(on) - cohort - 5


class PopulationBuilder:
    """Builds households in a fixed order from one ``rng`` so a seed gives one county."""

    def __init__(
        self,
        rng: random.Random,
        names: NameBank,
        geo: Geography,
        base: date,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.rng = rng
        self.names = names
        self.geo = geo
        self.base = base
        self.progress = progress
        self.persons: list[Person] = []
        self.households: list[Household] = []
        self._nhs_used: set[str] = set()
        self._upn_used: set[str] = set()
        self._twin_groups = 0

    # -- small helpers -----------------------------------------------------------------

    def dob_for_age(self, lo: float, hi: float) -> date:
        days = int(self.rng.uniform(lo, hi) * 365.25) + 1
        return self.base - timedelta(days=days)

    def new_nhs(self) -> str:
        """A unique, valid NHS number from the range reserved for testing (999...)."""
        while True:
            first = f"999{self.rng.randrange(10**6):06d}"
            check = nhs_check_digit(first)
            if check is not None and first not in self._nhs_used:
                self._nhs_used.add(first)
                return f"{first}{check}"

    def new_upn(self, dob: date, temporary: bool = False) -> str:
        """A unique, valid UPN allocated when the child first entered school."""
        rng = self.rng
        la = HOME_LA if rng.random() < 0.88 else rng.choice(("996", "997"))
        cohort = dob.year if dob.month >= 9 else dob.year - 1
        yy = f"{(cohort + 4 + rng.choice((0, 0, 0, 1))) % 100:02d}"
        while True:
            last = rng.choice(_UPN_END_LETTERS) if temporary else str(rng.randrange(10))
            rest = f"{la}{yy}{rng.randrange(10**6):06d}{last}"
            if rest not in self._upn_used:
                self._upn_used.add(rest)
                return upn_check_letter(rest) + rest

    def person(
        self,
        hid: int,
        sex: str,
        dob: date,
        surname: str,
        group: str,
        forename: str | None = None,
    ) -> Person:
        rng, names = self.rng, self.names
        forename = forename or names.forename(rng, sex, group, dob.year)
        r = rng.random()
        middle = ""
        if r < 0.65:
            middle = names.forename(rng, sex, group, dob.year)
            if r < 0.12:
                middle += " " + names.forename(rng, sex, group, dob.year)
            if forename in middle.split(" "):
                middle = ""
        p = Person(
            pid=len(self.persons) + 1,
            hid=hid,
            sex=sex,
            dob=dob,
            forename=forename,
            middle=middle,
            surname=surname,
            former_surname="",
            group=group,
            ethnicity=names.ethnicity(rng, group),
            nhs=self.new_nhs(),
        )
        if rng.random() < 0.35:
            p.nick = names.nickname(rng, forename) or ""
        self.persons.append(p)
        hh = self.households[hid] if hid < len(self.households) else None
        if hh is not None:
            hh.members.append(p.pid)
        return p

    def adult(self, hid: int, sex: str, lo: float, hi: float, group: str, surname: str = ""):
        dob = self.dob_for_age(lo, hi)
        return self.person(hid, sex, dob, surname or self.names.surname(self.rng, group), group)

    def couple(self, hid: int, lo: float, hi: float, group: str, married_p: float = 0.6):
        """Two adults; a married woman usually takes her husband's surname (former_surname)."""
        rng = self.rng
        man = self.adult(hid, "M", lo, hi, group)
        other_group = group if rng.random() < 0.9 else self.names.group(rng)
        sex = "M" if rng.random() < 0.03 else "F"  # a few same-sex couples
        age_gap = rng.uniform(-2, 6)
        woman_age = max(18.2, (self.base - man.dob).days / 365.25 - age_gap)
        partner = self.person(
            hid,
            sex,
            self.dob_for_age(woman_age, woman_age + 0.01),
            self.names.surname(rng, other_group),
            other_group,
        )
        married = rng.random() < married_p
        if married and sex == "F" and rng.random() < 0.8:
            partner.former_surname = partner.surname
            partner.surname = man.surname
        man.partner, partner.partner = partner.pid, man.pid
        return man, partner, married and sex == "F"

    def children(
        self,
        hid: int,
        n: int,
        mother: Person | None,
        father: Person | None,
        surname: str,
        group: str,
        eldest_max: float = 17.9,
        eldest_min: float = 0.0,
        twins: bool = False,
    ) -> list[Person]:
        """Siblings spaced at least ten months apart, born while the mother was 17-45."""
        rng = self.rng
        anchor = mother or father
        assert anchor is not None
        anchor_age = (self.base - anchor.dob).days / 365.25
        hi = min(eldest_max, anchor_age - 17.5)
        lo = min(eldest_min, hi)
        if hi <= 0:
            return []
        # The eldest is skewed older so that, with younger siblings after, child ages come
        # out roughly flat across 0-17 as in a real county.
        lo = max(0.0, lo)
        eldest = lo + (hi - lo) * rng.random() ** 0.6
        dob = self.dob_for_age(eldest, eldest + 0.001)
        kids: list[Person] = []
        twin_at = rng.randrange(n) if twins else -1
        for i in range(n):
            if dob >= self.base - timedelta(days=2):
                break
            sex = rng.choice("MF")
            kid = self.person(hid, sex, dob, surname, group)
            kid.mother = mother.pid if mother else None
            kid.father = father.pid if father else None
            kids.append(kid)
            if i == twin_at:
                self._twin_groups += 1
                tg = f"TW{self._twin_groups:05d}"
                twin_sex = sex if rng.random() < 0.5 else ("F" if sex == "M" else "M")
                twin = self.person(hid, twin_sex, dob, surname, group)
                while twin.forename == kid.forename:
                    twin.forename = self.names.forename(rng, twin_sex, group, dob.year)
                twin.mother, twin.father = kid.mother, kid.father
                kid.twin_group = twin.twin_group = tg
                kids.append(twin)
            dob = dob + timedelta(days=rng.randint(330, 2000))
        if twins and not any(k.twin_group for k in kids) and kids:
            # The twin slot fell after the last birth that fits; twin the youngest instead.
            last = kids[-1]
            self._twin_groups += 1
            tg = f"TW{self._twin_groups:05d}"
            twin = self.person(hid, rng.choice("MF"), last.dob, surname, group)
            while twin.forename == last.forename:
                twin.forename = self.names.forename(rng, twin.sex, group, last.dob.year)
            twin.mother, twin.father = last.mother, last.father
            last.twin_group = twin.twin_group = tg
            kids.append(twin)
        return kids

    def namesake(self, father: Person, kids: list[Person]) -> None:
        """Give one son his father's forename and surname (the ``Jr`` case)."""
        sons = [k for k in kids if k.sex == "M" and not k.twin_group]
        if not sons:
            candidates = [k for k in kids if not k.twin_group]
            if not candidates:
                return
            sons = [candidates[0]]
            sons[0].sex = "M"
            sons[0].middle = ""  # drawn for a girl; replaced below
        son = sons[0]
        son.forename = father.forename
        son.surname = father.surname
        son.nick = self.names.nickname(self.rng, son.forename) or ""
        if son.middle == "" or self.rng.random() < 0.3:
            son.middle = father.middle
        son.jr = True

    def kid_surname(self, father: Person | None, mother: Person, shared: bool) -> str:
        """Children mostly take the father's surname; some a hyphenated or the mother's."""
        if father is None:
            return mother.surname
        if shared:
            return father.surname
        r = self.rng.random()
        if r < 0.62:
            return father.surname
        if r < 0.8:
            return mother.surname
        if r < 0.96 and "-" not in father.surname + mother.surname:
            a, b = father.surname, mother.former_surname or mother.surname
            return f"{a}-{b}" if self.rng.random() < 0.6 else f"{b}-{a}"
        if " " not in father.surname + mother.surname:
            return f"{mother.surname} {father.surname}"
        return father.surname

    def n_kids(self, weights: tuple[int, ...] = (42, 40, 13, 4, 1)) -> int:
        return self.rng.choices(range(1, len(weights) + 1), weights)[0]

    # -- household kinds ----------------------------------------------------------------

    def build(self, n_households: int) -> None:
        """Create ``n_households`` households (linked ones, e.g. grandparents, included)."""
        rng = self.rng
        kinds = rng.choices(list(KIND_WEIGHTS), list(KIND_WEIGHTS.values()), k=n_households)
        self.flags: dict[int, set[str]] = {}

        def pick(pool_kinds: tuple[str, ...], k: int, flag: str, convert: str = "") -> None:
            pool = [i for i, kd in enumerate(kinds) if kd in pool_kinds and i not in self.flags]
            for i in rng.sample(pool, min(k, len(pool))):
                self.flags.setdefault(i, set()).add(flag)
                if convert:
                    kinds[i] = convert

        h = n_households
        self.lac_quota = max(1, round(h * 0.47 * 0.0068))
        homes = h // 8000
        self.residential_capacity = 4 * homes
        foster = max(1, -(-(self.lac_quota - min(self.lac_quota // 4, 4 * homes)) * 10 // 17))
        pick(("couple_mid", "couple_young"), foster, "foster", "foster")
        pick(("sharers", "single_mid"), homes, "residential", "residential")
        pick(
            ("couple_kids", "single_parent", "blended", "multigen"),
            max(1, round(h * 0.0042)),
            "twins",
        )
        pick(
            ("couple_kids", "multigen", "adult_kids", "blended"),
            max(1, round(h * 0.0078)),
            "namesake",
        )
        pick(("single_parent", "kinship"), max(1, round(h * 0.001)), "deceased_parent")
        pick(("single_young",), max(1, round(h * 0.0012)), "care_leaver")

        towns = [self.geo.pick_town(rng) for _ in range(h)]
        self.households = [Household(i, kinds[i], towns[i].name) for i in range(h)]
        self._stacks: dict[str, list[int]] = {}
        for i in range(h - 1, -1, -1):
            if i not in self.flags:
                self._stacks.setdefault(kinds[i], []).append(i)
        self._done: set[int] = set()
        for hh in self.households:
            if hh.hid in self._done:
                continue
            self._done.add(hh.hid)
            hh.needs = min(1.0, rng.betavariate(0.7, 6.0))
            getattr(self, f"_b_{hh.kind}")(hh, self.flags.get(hh.hid, set()))
            if self.progress and hh.hid % 2000 == 0:
                self.progress("population", hh.hid, h)
        if self.progress:
            self.progress("population", h, h)
        # Addresses, then recent moves, then children in care (who leave home).
        for hh in self.households:
            hh.address = self.geo.new_address(self.geo.by_name[hh.town])
            for pid in hh.members:
                self.persons[pid - 1].addr_hist = [(_FAR_PAST, hh.address)]
        self._movers()
        self._place_children_in_care()
        self._school_ids()

    def _claim(self, kinds: tuple[str, ...], near: Household) -> Household | None:
        """Take a not-yet-built household for a relative who lives elsewhere."""
        for kind in kinds:
            stack = self._stacks.get(kind, [])
            while stack:
                hid = stack.pop()
                if hid not in self._done:
                    self._done.add(hid)
                    hh = self.households[hid]
                    if self.rng.random() < 0.65:
                        hh.town = near.town
                    hh.needs = min(1.0, near.needs * self.rng.uniform(0.5, 1.2))
                    return hh
        return None

    def _b_single_young(self, hh: Household, flags: set[str]) -> None:
        if "care_leaver" in flags:
            p = self.adult(hh.hid, self.rng.choice("MF"), 18.1, 21.5, self.names.group(self.rng))
            p.care_leaver = True
            hh.needs = max(hh.needs, 0.4)
        else:
            self.adult(hh.hid, self.rng.choice("MF"), 18.1, 35, self.names.group(self.rng))

    def _b_single_mid(self, hh: Household, flags: set[str]) -> None:
        p = self.adult(hh.hid, self.rng.choice("MF"), 35, 65, self.names.group(self.rng))
        if p.sex == "F" and self.rng.random() < 0.3:
            p.former_surname = self.names.surname(self.rng, p.group)

    def _b_single_old(self, hh: Household, flags: set[str]) -> None:
        sex = "F" if self.rng.random() < 0.62 else "M"
        p = self.adult(hh.hid, sex, 65, 96, self.names.group(self.rng))
        if sex == "F" and self.rng.random() < 0.7:
            p.former_surname = self.names.surname(self.rng, p.group)

    def _b_couple_young(self, hh: Household, flags: set[str]) -> None:
        self.couple(hh.hid, 20, 40, self.names.group(self.rng), 0.4)

    def _b_couple_mid(self, hh: Household, flags: set[str]) -> None:
        self.couple(hh.hid, 40, 65, self.names.group(self.rng), 0.7)

    def _b_couple_old(self, hh: Household, flags: set[str]) -> None:
        self.couple(hh.hid, 65, 92, self.names.group(self.rng), 0.85)

    def _family_couple(self, hid: int, lo: float, hi: float, group: str, married_p: float):
        man, woman, shared = self.couple(hid, lo, hi, group, married_p)
        if woman.sex != "F":
            woman.sex = "F"
            woman.forename = self.names.forename(self.rng, "F", woman.group, woman.dob.year)
            woman.nick = ""
        return man, woman, shared

    def _b_couple_kids(self, hh: Household, flags: set[str]) -> None:
        group = self.names.group(self.rng)
        man, woman, shared = self._family_couple(hh.hid, 22, 56, group, 0.6)
        surname = self.kid_surname(man, woman, shared)
        kids = self.children(
            hh.hid, self.n_kids(), woman, man, surname, group, twins="twins" in flags
        )
        if "namesake" in flags:
            self.namesake(man, kids)
        if self.rng.random() < 0.3:
            self._grandparents(hh, self.rng.choice([man, woman]))

    def _other_parent(self, hh: Household, sex: str, near: Person, deceased: bool):
        """The child's other parent: in another household, or dead, or None (not known)."""
        rng = self.rng
        age = (self.base - near.dob).days / 365.25 + rng.uniform(-3, 5)
        age = max(18.5, age)
        if deceased:
            p = self.adult(hh.hid, sex, age, age + 0.01, near.group)
            p.dod = self.base  # placeholder until the children's dobs are known
            return p
        if rng.random() < 0.45:
            other = self._claim(("single_young", "single_mid"), hh)
            if other is not None:
                other.kind = "single_mid" if age >= 35 else "single_young"
                return self.adult(other.hid, sex, age, age + 0.01, near.group)
        return None

    def _b_single_parent(self, hh: Household, flags: set[str]) -> None:
        rng = self.rng
        group = self.names.group(rng)
        hh.needs = min(1.0, hh.needs + 0.1)
        sex = "F" if rng.random() < 0.88 else "M"
        parent = self.adult(hh.hid, sex, 19, 52, group)
        if sex == "F" and rng.random() < 0.3:
            parent.former_surname = self.names.surname(rng, group)
        dead = "deceased_parent" in flags or rng.random() < 0.04
        other = self._other_parent(hh, "M" if sex == "F" else "F", parent, dead)
        mother, father = (parent, other) if sex == "F" else (other, parent)
        known = other is not None and rng.random() < 0.5
        surname = other.surname if known and other is not None else parent.surname
        kids = self.children(
            hh.hid,
            self.n_kids((50, 35, 12, 3)),
            mother,
            father,
            surname,
            group,
            twins="twins" in flags,
        )
        if other is not None and other.dod is not None:
            last = max((k.dob for k in kids), default=self.base - timedelta(days=400))
            span = max(31, (self.base - last).days - 30)
            other.dod = last + timedelta(days=rng.randint(30, span))
            if other.dod >= self.base:
                other.dod = self.base - timedelta(days=15)
        if rng.random() < 0.25:
            self._grandparents(hh, parent)

    def _b_blended(self, hh: Household, flags: set[str]) -> None:
        """Mother, stepfather, her children by an earlier partner and their half-siblings."""
        rng = self.rng
        group = self.names.group(rng)
        hh.needs = min(1.0, hh.needs + 0.08)
        mother = self.adult(hh.hid, "F", 25, 50, group)
        stepdad = self.adult(hh.hid, "M", 25, 55, group)
        mother.partner, stepdad.partner = stepdad.pid, mother.pid
        if rng.random() < 0.5:
            mother.former_surname, mother.surname = mother.surname, stepdad.surname
        ex = self._other_parent(hh, "M", stepdad, False)
        birth_name = mother.former_surname or mother.surname
        older_name = ex.surname if ex is not None and rng.random() < 0.7 else birth_name
        older = self.children(
            hh.hid, rng.choice((1, 1, 2)), mother, ex, older_name, group, eldest_min=6
        )
        for k in older:
            k.step_parents.append(stepdad.pid)
        youngest_age = min(((self.base - k.dob).days / 365.25 for k in older), default=6)
        joint = self.children(
            hh.hid,
            rng.choice((1, 1, 2)),
            mother,
            stepdad,
            stepdad.surname,
            group,
            eldest_max=max(0.2, youngest_age - 1),
            twins="twins" in flags,
        )
        if "namesake" in flags:
            self.namesake(stepdad, joint)
        if rng.random() < 0.2:
            own = self.person(
                hh.hid, rng.choice("MF"), self.dob_for_age(5, 17), stepdad.surname, group
            )
            own.father = stepdad.pid
            own.step_parents.append(mother.pid)

    def _b_multigen(self, hh: Household, flags: set[str]) -> None:
        rng = self.rng
        group = self.names.group(rng) if rng.random() < 0.7 else "south_asian"
        gm = self.adult(hh.hid, "F", 58, 86, group)
        gf = None
        if rng.random() < 0.5:
            gf = self.adult(hh.hid, "M", (self.base - gm.dob).days / 365.25, 88, group)
            gm.former_surname, gm.surname = gm.surname, gf.surname
            gm.partner, gf.partner = gf.pid, gm.pid
        gm_age = (self.base - gm.dob).days / 365.25
        lo, hi = max(20.0, gm_age - 40), max(20.5, gm_age - 19)
        if rng.random() < 0.5 or "namesake" in flags:
            dad = self.adult(hh.hid, "M", lo, hi, group, gm.surname)
            dad.mother, dad.father = gm.pid, gf.pid if gf else None
            mum = None
            if rng.random() < 0.7:
                mum = self.adult(hh.hid, "F", max(18.5, lo - 3), hi, group)
                mum.partner, dad.partner = dad.pid, mum.pid
                if rng.random() < 0.6:
                    mum.former_surname, mum.surname = mum.surname, dad.surname
            kids = self.children(
                hh.hid,
                self.n_kids((45, 35, 20)),
                mum,
                dad,
                dad.surname,
                group,
                twins="twins" in flags,
            )
            if "namesake" in flags:
                self.namesake(dad, kids)
        else:
            mum = self.adult(hh.hid, "F", lo, hi, group, gm.surname)
            mum.mother, mum.father = gm.pid, gf.pid if gf else None
            kids = self.children(
                hh.hid,
                self.n_kids((45, 35, 20)),
                mum,
                None,
                mum.surname,
                group,
                twins="twins" in flags,
            )

    def _b_kinship(self, hh: Household, flags: set[str]) -> None:
        """Grandparents bringing up grandchildren whose parent is dead or lives elsewhere."""
        rng = self.rng
        group = self.names.group(rng)
        hh.needs = min(1.0, hh.needs + 0.15)
        gm = self.adult(hh.hid, "F", 48, 76, group)
        gf = None
        if rng.random() < 0.55:
            gf = self.adult(hh.hid, "M", (self.base - gm.dob).days / 365.25, 80, group)
            gm.former_surname, gm.surname = gm.surname, gf.surname
            gm.partner, gf.partner = gf.pid, gm.pid
        gm_age = (self.base - gm.dob).days / 365.25
        r = rng.random()
        parent: Person | None = None
        age = rng.uniform(max(18.5, gm_age - 40), max(19.0, gm_age - 19))
        if "deceased_parent" in flags or r < 0.25:
            parent = self.adult(hh.hid, "F", age, age + 0.01, group, gm.surname)
            parent.dod = self.base
        elif r < 0.65:
            other = self._claim(("single_young", "single_mid"), hh)
            if other is not None:
                other.kind = "single_mid" if age >= 35 else "single_young"
                parent = self.adult(other.hid, "F", age, age + 0.01, group, gm.surname)
        if parent is not None:
            parent.mother, parent.father = gm.pid, gf.pid if gf else None
            kids = self.children(hh.hid, self.n_kids((45, 40, 15)), parent, None, gm.surname, group)
            if parent.dod is not None:
                last = max((k.dob for k in kids), default=self.base - timedelta(days=400))
                span = max(31, (self.base - last).days - 30)
                parent.dod = min(
                    self.base - timedelta(days=15), last + timedelta(days=rng.randint(30, span))
                )
        else:
            kids = self.children(
                hh.hid,
                self.n_kids((45, 40, 15)),
                gm,
                None,
                gm.surname,
                group,
                eldest_max=min(17.9, gm_age - 38),
            )
            for k in kids:
                k.mother = None
                k.extra.append((gm.pid, "grandparent"))
                if gf:
                    k.extra.append((gf.pid, "grandparent"))

    def _b_adult_kids(self, hh: Household, flags: set[str]) -> None:
        rng = self.rng
        group = self.names.group(rng)
        man, woman, shared = self._family_couple(hh.hid, 42, 68, group, 0.75)
        surname = self.kid_surname(man, woman, shared)
        kids = self.children(
            hh.hid,
            self.n_kids((50, 38, 12)),
            woman,
            man,
            surname,
            group,
            eldest_min=18.2,
            eldest_max=34,
        )
        if "namesake" in flags:
            self.namesake(man, kids)

    def _b_sharers(self, hh: Household, flags: set[str]) -> None:
        for _ in range(self.rng.randint(2, 4)):
            self.adult(hh.hid, self.rng.choice("MF"), 19, 36, self.names.group(self.rng))

    def _b_foster(self, hh: Household, flags: set[str]) -> None:
        rng = self.rng
        group = self.names.group(rng)
        hh.needs = 0.02
        if rng.random() < 0.8:
            man, woman, _ = self._family_couple(hh.hid, 35, 63, group, 0.8)
        else:
            woman = self.adult(hh.hid, "F", 35, 63, group)
            man = None
        if rng.random() < 0.3:
            self.children(
                hh.hid, 1, woman, man, man.surname if man else woman.surname, group, eldest_min=10
            )

    def _b_residential(self, hh: Household, flags: set[str]) -> None:
        hh.needs = 0.02  # a children's home: staff are not modelled, only the children

    def _grandparents(self, hh: Household, parent: Person) -> None:
        """Parents of ``parent`` living in another household (contacts, kinship, csc)."""
        if parent.mother is not None or parent.father is not None:
            return
        rng = self.rng
        p_age = (self.base - parent.dob).days / 365.25
        gp_age = p_age + rng.uniform(20, 36)
        kinds = ("couple_old", "single_old") if gp_age >= 65 else ("couple_mid", "single_mid")
        if rng.random() < 0.4:
            kinds = kinds[::-1]
        other = self._claim(kinds, hh)
        if other is None:
            return
        birth_surname = parent.former_surname or parent.surname
        if parent.sex == "M" and not parent.former_surname:
            birth_surname = parent.surname
        if other.kind.startswith("couple"):
            gf = self.adult(other.hid, "M", gp_age, gp_age + 0.01, parent.group, birth_surname)
            gm = self.adult(other.hid, "F", gp_age - 2, gp_age - 1.99, parent.group)
            gm.former_surname, gm.surname = gm.surname, birth_surname
            gf.partner, gm.partner = gm.pid, gf.pid
            parent.mother, parent.father = gm.pid, gf.pid
        else:
            gm = self.adult(other.hid, "F", gp_age, gp_age + 0.01, parent.group)
            gm.former_surname, gm.surname = gm.surname, birth_surname
            parent.mother = gm.pid

    # -- after everyone exists ----------------------------------------------------------

    def _movers(self) -> None:
        """About 8% of households moved in the last two years; sources may hold the old one."""
        rng = self.rng
        eligible = [
            hh for hh in self.households if hh.kind not in ("foster", "residential") and hh.members
        ]
        k = max(1, round(len(self.households) * 0.08))
        for hh in rng.sample(eligible, min(k, len(eligible))):
            town = self.geo.by_name[hh.town] if rng.random() < 0.7 else self.geo.pick_town(rng)
            old = self._address_elsewhere(town, hh.address)
            moved = self.base - timedelta(days=rng.randint(3, 730))
            for pid in hh.members:
                p = self.persons[pid - 1]
                if p.dob < moved:
                    p.addr_hist = [(_FAR_PAST, old), (moved, hh.address)]

    def _place_children_in_care(self) -> None:
        rng = self.rng
        fosters = [hh for hh in self.households if hh.kind == "foster"]
        homes = [hh for hh in self.households if hh.kind == "residential"]
        capacity = {hh.hid: rng.randint(1, 3) for hh in fosters}
        home_cap = {hh.hid: 4 for hh in homes}
        candidates = [
            p
            for p in self.persons
            if p.dod is None
            and p.age_on(self.base) < 17
            and self.households[p.hid].kind in FAMILY_KINDS
            and any(q is not None and self.persons[q - 1].dod is None for q in (p.mother, p.father))
        ]
        keyed = sorted(
            candidates,
            key=lambda p: rng.random() ** (1.0 / (self.households[p.hid].needs ** 2 + 0.002)),
            reverse=True,
        )
        placed = 0
        for p in keyed:
            if placed >= self.lac_quota:
                break
            if p.care:
                continue
            group = [p]
            siblings = [
                self.persons[s - 1]
                for s in self.households[p.hid].members
                if s != p.pid
                and self.persons[s - 1].mother == p.mother
                and self.persons[s - 1].age_on(self.base) < 17
                and not self.persons[s - 1].care
            ]
            if rng.random() < 0.3:
                group += siblings[:1]
            # Twins are always placed together.
            twins = {c.twin_group for c in group if c.twin_group}
            group += [s for s in siblings if s.twin_group in twins and s not in group]
            teen = all(c.age_on(self.base) >= 12 for c in group)
            home = next((h for h in homes if home_cap[h.hid] >= len(group)), None)
            if teen and home is not None and (rng.random() < 0.5 or not home.members):
                target, kind = home, "residential"
                home_cap[home.hid] -= len(group)
            else:
                open_f = [h for h in fosters if capacity[h.hid] >= len(group)]
                target = rng.choice(open_f or fosters)
                capacity[target.hid] -= len(group)
                kind = "foster"
            start = self.base - timedelta(
                days=rng.randint(14, max(15, min(5 * 365, (self.base - p.dob).days - 30)))
            )
            for c in group:
                c.care, c.care_start, c.home_hid = kind, start, c.hid
                self.households[c.hid].members.remove(c.pid)
                self.households[c.hid].needs = max(self.households[c.hid].needs, 0.5)
                c.hid = target.hid
                target.members.append(c.pid)
                c.addr_hist = [e for e in c.addr_hist if e[0] < start] + [(start, target.address)]
                if kind == "foster":
                    for carer in target.members:
                        cp = self.persons[carer - 1]
                        if cp.age_on(self.base) >= 18:
                            c.extra.append((carer, "carer"))
                placed += 1
        for hh in homes:
            if not hh.members:  # too few teenagers in care: it becomes an ordinary household
                hh.kind = "single_mid"
                self._b_single_mid(hh, set())
                for pid in hh.members:
                    self.persons[pid - 1].addr_hist = [(_FAR_PAST, hh.address)]

    def _school_ids(self) -> None:
        """UPNs for everyone of nursery to sixth-form age; a few temporary or replaced."""
        rng = self.rng
        for p in self.persons:
            if p.dod is None and -1 <= year_group(p.dob, self.base) <= 13:
                r = rng.random()
                p.upn = self.new_upn(p.dob, temporary=r < 0.01)
                if 0.01 <= r < 0.025:
                    p.former_upn = self.new_upn(p.dob, temporary=True)

    # -- changes between deliveries -----------------------------------------------------

    def _address_elsewhere(self, town: Town, current: Address | None) -> Address:
        """A new address whose postcode differs from ``current`` (a move is visible)."""
        for _ in range(50):
            addr = self.geo.new_address(town)
            if current is None or addr.postcode != current.postcode:
                return addr
            town = self.geo.pick_town(self.rng)
        return addr

    def move(self, hh: Household, day: date, rng: random.Random) -> None:
        town = self.geo.by_name[hh.town] if rng.random() < 0.75 else self.geo.pick_town(rng)
        hh.address = self._address_elsewhere(town, hh.address)
        hh.town = hh.address.town
        for pid in hh.members:
            p = self.persons[pid - 1]
            if p.dod is None:
                p.addr_hist.append((day, hh.address))

    def birth(self, mother: Person, day: date, rng: random.Random) -> Person:
        hh = self.households[mother.hid]
        father = self.persons[mother.partner - 1] if mother.partner else None
        if father is not None and father.sex != "M":
            father = None
        surname = father.surname if father is not None and rng.random() < 0.75 else mother.surname
        build_rng, self.rng = self.rng, rng  # births draw from the delivery's stream
        baby = self.person(hh.hid, rng.choice("MF"), day, surname, mother.group)
        self.rng = build_rng
        baby.mother = mother.pid
        baby.father = father.pid if father else None
        baby.addr_hist = [(day, hh.address)]
        return baby


_INVERSE = {"carer": "cared_for_child", "grandparent": "grandchild"}


def relationships(persons: list[Person]) -> dict[tuple[int, int], str]:
    """True family relations, both directions: ``(a, b) -> what b is to a``.

    Derived from parent, step-parent, partner and explicit links so births added between
    deliveries get their siblings and grandparents without extra bookkeeping.
    """
    rel: dict[tuple[int, int], str] = {}

    def add(a: int, b: int, r: str) -> None:
        if a != b and (a, b) not in rel:
            rel[(a, b)] = r

    children_of: dict[int, list[int]] = {}
    for p in persons:
        for parent, name in ((p.mother, "mother"), (p.father, "father")):
            if parent is not None:
                add(p.pid, parent, name)
                add(parent, p.pid, "child")
                children_of.setdefault(parent, []).append(p.pid)
        for s in p.step_parents:
            add(p.pid, s, "step_parent")
            add(s, p.pid, "step_child")
        if p.partner is not None:
            add(p.pid, p.partner, "partner")
        for other, r in p.extra:
            add(p.pid, other, r)
            add(other, p.pid, _INVERSE.get(r, "other"))
    for p in persons:
        sibs = set(children_of.get(p.mother, [])) | set(children_of.get(p.father, []))
        for s in sorted(sibs):
            if s == p.pid:
                continue
            q = persons[s - 1]
            full = q.mother == p.mother and q.father == p.father
            add(p.pid, s, "sibling" if full else "half_sibling")
        for parent in (p.mother, p.father):
            if parent is None:
                continue
            pp = persons[parent - 1]
            for gp in (pp.mother, pp.father):
                if gp is not None:
                    add(p.pid, gp, "grandparent")
                    add(gp, p.pid, "grandchild")
    return rel
