"""The five agencies' systems: who each one knows, what it records, and how it changes.

``County`` turns the true population into rows of the thirteen extract tables and then
evolves them night by night (moves, births, new events, a surname change, corrections).
Coverage follows the brief: health holds nearly everyone, schools every pupil and their
contacts, children's social care a few per cent of children and their adults, early help a
few per cent more, police the people at incidents. Sources refresh addresses at different
speeds, which is where "they moved house" comes from.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from datetime import date, timedelta

from matching.identifiers import normalise_postcode
from synth import render as R
from synth.geography import Practice, School, phone_pool
from synth.names import NameBank, misspell
from synth.population import Household, Person, PopulationBuilder, relationships, year_group
from synth.schema import TABLES
from synth.tables import Row, Table, maybe_malform

#: Chance per nightly delivery that a source picks up a move it has not yet recorded.
CATCH_UP = {
    "council_csc": 0.04,
    "council_eh": 0.03,
    "police": 0.0,
    "health": 0.12,
    "school": 0.05,
}
#: Mean days before a source records a new address (base population).
ADDRESS_LAG = {"health": 150, "school": 120, "council_eh": 200, "council_csc": 150}
_CSC_REL = {
    "mother": "mother",
    "father": "father",
    "step_parent": "step_parent",
    "carer": "carer",
    "sibling": "sibling",
    "half_sibling": "sibling",
    "grandparent": "grandparent",
}
_REFERRAL_SOURCES = (
    "POLICE",
    "SCHOOLS",
    "HEALTH_SERVICES",
    "LA_SERVICES",
    "INDIVIDUAL",
    "ANONYMOUS",
)
_CP_CATEGORIES = ("NEGLECT", "NEGLECT", "EMOTIONAL", "EMOTIONAL", "PHYSICAL", "SEXUAL", "MULTIPLE")
_LEGAL = ("C2", "C2", "V2", "V2", "E1", "L2", "J2")
_AREAS = ("North", "South", "East", "West")
_SUMMARIES = {
    "referral": (
        ("Referral received raising concerns about home conditions.", False),
        ("Contact from school about attendance and presentation.", False),
        ("Police notification following domestic incident at the address.", False),
        ("Health visitor concerned about missed appointments.", False),
        ("Anonymous report of children left unsupervised.", False),
    ),
    "assessment": (
        ("Single assessment completed; needs identified around parenting capacity.", False),
        ("Assessment found no further action required.", False),
        ("Worker's view is that the parents are not engaging consistently.", True),
        ("In my professional opinion the risk of harm is escalating.", True),
    ),
    "cin_plan": (
        ("Child in need plan agreed with family; review in three months.", False),
        ("Plan focuses on school attendance and routines at home.", False),
        ("Practitioner considers progress to be slow.", True),
    ),
    "cp_plan": (
        ("Initial child protection conference held; plan made.", False),
        ("Review conference: plan continues.", False),
        ("Social worker believes the child remains at risk of significant harm.", True),
    ),
    "looked_after": (
        ("Child accommodated; placement with local authority foster carers.", False),
        ("Care order granted; care plan reviewed.", False),
        ("IRO view: placement is meeting the child's needs.", True),
    ),
    "care_leaver": (
        ("Pathway plan in place; personal adviser allocated.", False),
        ("Supported with accommodation and education plans.", False),
    ),
}
_EH_NEEDS = (
    "school_attendance",
    "domestic_abuse",
    "parenting",
    "mental_health",
    "housing",
    "substance_misuse",
)
_EH_OUTCOMES = (
    "needs_met",
    "needs_met",
    "stepped_down",
    "stepped_up_to_csc",
    "disengaged",
    "moved_out_of_area",
)
_OFFENCES = {
    "domestic_abuse": (
        "Common assault",
        "Assault occasioning actual bodily harm",
        "Controlling or coercive behaviour",
        "Criminal damage",
        "Harassment",
        "Breach of non-molestation order",
    ),
    "crime": (
        "Burglary dwelling",
        "Theft from person",
        "Shoplifting",
        "Criminal damage",
        "Possession of cannabis",
        "Assault occasioning actual bodily harm",
        "Theft of motor vehicle",
        "Fraud by false representation",
        "Public order offence",
    ),
    "asb": ("", "", "Public order offence"),
}
_REASONS = {
    "ed_attendance": (
        "Fall, minor head injury",
        "Abdominal pain",
        "Asthma exacerbation",
        "Fracture, wrist",
        "Burn, hand",
        "Self-harm",
        "Alcohol intoxication",
        "Laceration",
        "Chest pain",
        "Febrile illness",
    ),
    "health_visitor_contact": (
        "New birth visit",
        "6-8 week review",
        "1 year review",
        "2 year review",
        "Feeding support",
        "Targeted visit",
    ),
    "school_nurse_contact": (
        "Emotional wellbeing",
        "Enuresis",
        "Weight management",
        "Safeguarding follow-up",
        "Sexual health advice",
    ),
    "camhs_referral": (
        "Low mood",
        "Anxiety",
        "Self-harm",
        "Eating difficulties",
        "Neurodevelopmental assessment",
    ),
    "maternity_booking": ("Booking appointment", "Late booking"),
    "safeguarding_referral": (
        "Concern about neglect",
        "Domestic abuse disclosure",
        "Unexplained injury",
        "Parental substance misuse",
    ),
}
_EXCLUSION_REASONS = ("PA", "PP", "VA", "VP", "DB", "DB", "DB", "DA", "DM", "TH", "BU", "OT")
_SEN = ("N", "K", "E")


def count(rng: random.Random, mean: float, floor: int = 0) -> int:
    """An integer with expectation ``mean`` (stochastic rounding), at least ``floor``."""
    n = int(mean) + (rng.random() < mean - int(mean))
    return max(floor, n)


def terms_completed(on: date, n: int = 3) -> list[tuple[str, date, date]]:
    """The last ``n`` school terms that ended before ``on``: (label, start, end)."""
    out = []
    y = on.year + 1
    while len(out) < n:
        for label, start, end in (
            (f"{y}-SUM", date(y, 5, 1), date(y, 8, 31)),
            (f"{y}-SPR", date(y, 1, 1), date(y, 4, 30)),
            (f"{y - 1}-AUT", date(y - 1, 9, 1), date(y - 1, 12, 31)),
        ):
            if end < on and len(out) < n:
                out.append((label, start, end))
        y -= 1
    return out[::-1]


def year_label(yg: int) -> str:
    return "N1" if yg == -1 else "R" if yg == 0 else str(yg)


class County:
    """All five sources' rows for one population, plus the changes between deliveries."""

    def __init__(
        self,
        pop: PopulationBuilder,
        names: NameBank,
        base: date,
        rngs: Callable[[str], random.Random],
    ) -> None:
        self.pop = pop
        self.persons = pop.persons
        self.households = pop.households
        self.names = names
        self.base = base
        self.rngs = rngs
        self.tables: dict[str, Table] = {name: Table(spec) for name, spec in TABLES.items()}
        self.rows_of: dict[int, list[tuple[Table, Row]]] = defaultdict(list)
        self.stale: list[tuple[Table, Row]] = []
        self._used_keys: dict[str, set[int]] = defaultdict(set)
        self._key_rng = rngs("keys")
        self.phones = phone_pool()
        self.rel = relationships(self.persons)
        self.csc_id: dict[int, str] = {}
        self.csc_cases: dict[int, list[int]] = {}  # household -> children
        self.eh_family: dict[int, str] = {}
        self.patient: dict[int, Row] = {}
        self.nominal: dict[int, list[Row]] = {}
        self.pupil: dict[int, Row] = {}
        self.pupil_school: dict[int, School] = {}
        self.schools: dict[str, list[School]] = {}
        self.practices: dict[str, list[Practice]] = {}
        self.attendance_terms: set[str] = set()
        self.n_households = len(self.households)
        self._staff: dict[str, list[tuple[str, str, str]]] = {}

    # -- plumbing -------------------------------------------------------------------------

    def key(self, kind: str, fmt: str, lo: int, hi: int) -> str:
        """A unique random local key: ids are not ordered by household, as real ones are not."""
        used = self._used_keys[kind]
        while True:
            n = self._key_rng.randrange(lo, hi)
            if n not in used:
                used.add(n)
                return fmt.format(n)

    def person_row(
        self, table: str, key: str, values: dict[str, str], p: Person, asof: date | None
    ) -> Row:
        t = self.tables[table]
        row = t.add(key, values, p.pid, asof)
        self.rows_of[p.pid].append((t, row))
        if t.spec.source != "police" and asof is not None and p.last_move() > asof:
            self.stale.append((t, row))
        return row

    def staff(self, source: str, rng: random.Random) -> tuple[str, str, str]:
        """(name, email, area) of an allocated worker; staff are not people in the truth."""
        if source not in self._staff:
            n = max(4, self.n_households // (300 if source == "council_csc" else 500))
            domain = {
                "council_csc": "childrens-services.council.example",
                "council_eh": "earlyhelp.council.example",
            }[source]
            pool = []
            for _ in range(n):
                first, last = self.names.staff_name(rng)
                local = f"{first}.{last}".lower().replace("'", "").replace(" ", "")
                pool.append((f"{first} {last}", f"{local}@{domain}", rng.choice(_AREAS)))
            self._staff[source] = pool
        return rng.choice(self._staff[source])

    def p(self, pid: int | None) -> Person | None:
        return self.persons[pid - 1] if pid else None

    def alive_on(self, p: Person, d: date) -> bool:
        return p.dob < d and (p.dod is None or p.dod > d)

    def asof_for(self, p: Person, rng: random.Random, lag_mean: float, latest: date) -> date:
        """When a source last refreshed ``p``'s address: may predate a recent move."""
        move = p.last_move()
        lag = rng.expovariate(1.0 / lag_mean)
        if move + timedelta(days=lag) < latest:
            return latest
        return max(p.dob, move - timedelta(days=1))

    # -- build ----------------------------------------------------------------------------

    def build(self, progress: Callable[[str, int, int], None] | None = None) -> None:
        steps = [
            ("school", self.build_school),
            ("health", self.build_health),
            ("council_csc", self.build_csc),
            ("council_eh", self.build_eh),
            ("police", self.build_police),
        ]
        for i, (name, fn) in enumerate(steps):
            if progress:
                progress("sources", i, len(steps))
            fn(self.rngs(f"build/{name}"))
        self._ensure_mover()
        if progress:
            progress("sources", len(steps), len(steps))

    def _ensure_mover(self) -> None:
        """Guarantee at least one person whose sources disagree on address, even in a tiny
        county: if chance produced none, one source is left holding a mover's old address."""
        for rows in self.rows_of.values():
            delivered = {normalise_postcode(t.get(r, "postcode")) for t, r in rows}
            if len(delivered - {None}) > 1:
                return
        for pid, rows in self.rows_of.items():
            p = self.persons[pid - 1]
            current = [(t, r) for t, r in rows if t.spec.source != "police"]
            if len(p.addr_hist) > 1 and len(current) > 1:
                t, row = current[0]
                moved = p.addr_hist[-1][0]
                self.refresh_address(t, row, moved - timedelta(days=1), self.rngs("mover"))
                self.stale.append((t, row))
                return

    # -- school ---------------------------------------------------------------------------

    def build_school(self, rng: random.Random) -> None:
        base = self.base
        pupils: list[tuple[Person, int]] = []
        for p in self.persons:
            if not p.upn or p.dod is not None:
                continue
            yg = year_group(p.dob, base)
            share = 0.3 if yg == -1 else 0.55 if yg >= 12 else 0.993
            if rng.random() < share:
                pupils.append((p, yg))
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for p, yg in pupils:
            counts[self.households[p.hid].town][0 if yg <= 6 else 1] += 1
        self.schools = self.pop.geo.make_schools(rng, {t: (c[0], c[1]) for t, c in counts.items()})
        chosen: dict[tuple[int, str], School] = {}
        for p, yg in pupils:
            hh = self.households[p.hid]
            phase = "primary" if yg <= 6 else "secondary"
            town_schools = [s for s in self.schools[hh.town] if s.phase == phase]
            if yg >= 12:
                town_schools = [s for s in town_schools if s.sixth_form] or town_schools
            school = chosen.get((hh.hid, phase))
            if school is None or (yg >= 12 and not school.sixth_form):
                school = rng.choice(town_schools)
                chosen[(hh.hid, phase)] = school
            self.add_pupil(p, yg, school, rng)
        for p, _ in pupils:
            if p.pid in self.pupil:
                self.add_contacts(p, rng, base)
        self.attendance_terms = set()
        for label, start, end in terms_completed(base):
            self.add_attendance_term(label, start, end, rng)
        for p, yg in pupils:
            if p.pid in self.pupil:
                hh = self.households[p.hid]
                rate = (0.04 if yg >= 7 else 0.006) * (0.5 + 4 * hh.needs)
                for _ in range(rng.randint(1, 3) if rng.random() < rate else 0):
                    self.add_exclusion(
                        p,
                        rng,
                        R.days_between(rng, base - timedelta(days=365), base - timedelta(days=1)),
                    )

    def add_pupil(self, p: Person, yg: int, school: School, rng: random.Random) -> None:
        base = self.base
        hh = self.households[p.hid]
        cohort = p.dob.year if p.dob.month >= 9 else p.dob.year - 1
        start_year = cohort + (4 if yg == -1 else 5 if school.phase == "primary" else 12)
        if school.phase == "primary" and yg >= 0 and rng.random() < 0.3:
            start_year = cohort + 4  # came up from the school's nursery class
        entry = date(start_year, 9, rng.randint(2, 7))
        if p.care_start and p.care_start > entry:
            entry = p.care_start + timedelta(days=rng.randint(5, 40))
        elif rng.random() < 0.08:
            entry = R.days_between(rng, max(entry, base - timedelta(days=700)), base)
        entry = min(entry, base - timedelta(days=1))
        leaving = ""
        if rng.random() < 0.008:
            leaving = R.iso(
                R.days_between(
                    rng, max(entry, base - timedelta(days=120)), base - timedelta(days=1)
                )
            )
        preferred_fore = p.nick if p.nick and rng.random() < 0.4 else ""
        preferred_sur = ""
        if p.step_parents and rng.random() < 0.35:
            preferred_sur = self.persons[p.step_parents[0] - 1].surname
        elif "-" in p.surname and rng.random() < 0.25:
            preferred_sur = rng.choice(p.surname.split("-"))
        legal_sur = p.surname if rng.random() > 0.02 else misspell(rng, p.surname)
        sen = rng.choices(_SEN, (84 - 30 * hh.needs, 13 + 20 * hh.needs, 3 + 10 * hh.needs))[0]
        asof = self.asof_for(p, rng, ADDRESS_LAG["school"], base - timedelta(days=1))
        values = {
            "upn": p.upn,
            "former_upn": p.former_upn,
            "school_urn": school.urn,
            "school_name": school.name,
            "legal_forename": p.forename if rng.random() > 0.01 else misspell(rng, p.forename),
            "preferred_forename": preferred_fore,
            "legal_surname": legal_sur,
            "preferred_surname": preferred_sur,
            "dob": R.iso(R.maybe_swap(p.dob, rng, 0.003, base)),
            "gender": p.sex,
            "year_group": year_label(yg),
            "sen_provision": sen,
            "fsm_eligible": "true" if rng.random() < 0.06 + 0.85 * hh.needs else "false",
            "entry_date": R.iso(entry),
            "leaving_date": leaving,
        }
        values.update(R.address("school/pupils", p.address_at(asof), rng))
        self.pupil[p.pid] = self.person_row("school/pupils", p.upn, values, p, asof)
        self.pupil_school[p.pid] = school

    def contact_candidates(self, p: Person) -> list[tuple[Person, str, bool]]:
        """(person, relationship, parental responsibility) in the order a school holds them."""
        out: list[tuple[Person, str, bool]] = []
        seen: set[int] = set()

        def add(pid: int | None, rel: str, pr: bool) -> None:
            q = self.p(pid)
            if q is None or q.pid in seen or q.dod is not None or q.age_on(self.base) < 18:
                return
            seen.add(q.pid)
            out.append((q, rel, pr))

        if p.care == "foster":
            for other, r in p.extra:
                if r == "carer":
                    add(other, "carer", False)
        mother, father = self.p(p.mother), self.p(p.father)
        if father is not None and mother is not None and father.hid == p.hid != mother.hid:
            add(p.father, "father", True)
        add(p.mother, "mother", True)
        add(p.father, "father", True)
        for s in p.step_parents:
            add(s, "carer", False)
        for gp in self.grandparents(p):
            kinship = self.persons[gp - 1].hid == p.hid and p.mother is None
            add(gp, "grandparent", kinship)  # kinship carers hold parental responsibility
        return out

    def grandparents(self, p: Person) -> list[int]:
        out = [o for o, r in p.extra if r == "grandparent"]
        for parent in (self.p(p.mother), self.p(p.father)):
            if parent is not None:
                out += [gp for gp in (parent.mother, parent.father) if gp]
        return out

    def add_contacts(self, p: Person, rng: random.Random, on: date) -> None:
        pupil = self.pupil[p.pid]
        upn = self.tables["school/pupils"].get(pupil, "upn")
        cands = self.contact_candidates(p)
        want = rng.choices((1, 2, 3), (20, 50, 30))[0]
        cands = cands[:want]
        if not cands or (len(cands) < want and rng.random() < 0.15):
            # A family friend or neighbour: an adult from another household.
            for _ in range(20):
                q = self.persons[rng.randrange(len(self.persons))]
                if q.dod is None and q.age_on(on) >= 25 and q.hid != p.hid:
                    cands.append((q, "other", False))
                    break
        for priority, (q, relation, pr) in enumerate(cands[:3], start=1):
            asof = self.asof_for(q, rng, ADDRESS_LAG["school"], on - timedelta(days=1))
            sur = q.surname
            if q.surname != p.surname and relation in ("mother", "father") and rng.random() < 0.15:
                sur = p.surname  # the school assumed the parent shares the child's surname
            elif rng.random() < 0.03:
                sur = misspell(rng, sur)
            values = {
                "upn": upn,
                "contact_forename": R.forename(q, rng, nick=0.6, typo=0.02),
                "contact_surname": sur,
                "relationship": relation,
                "parental_responsibility": "true" if pr else "false",
                "phone": self.phones[(q.pid * 7919) % len(self.phones)]
                if rng.random() < 0.95
                else "",
                "priority": str(priority),
            }
            values.update(R.address("school/contacts", q.address_at(asof), rng))
            self.person_row("school/contacts", f"{upn}|{priority}", values, q, asof)

    def add_attendance_term(
        self, label: str, start: date, end: date, rng: random.Random, new: bool = False
    ) -> None:
        if label in self.attendance_terms:
            return
        self.attendance_terms.add(label)
        t = self.tables["school/attendance"]
        full = {"AUT": 140, "SPR": 118, "SUM": 126}[label[-3:]]
        for pid, row in self.pupil.items():
            p = self.persons[pid - 1]
            school = self.pupil_school[pid]
            if self.tables["school/pupils"].get(row, "year_group") == "N1":
                continue
            entry = date.fromisoformat(self.tables["school/pupils"].get(row, "entry_date"))
            leaving = self.tables["school/pupils"].get(row, "leaving_date")
            if entry > end or (leaving and date.fromisoformat(leaving) < start):
                continue
            possible = full + (int(school.urn) % 7) - 3
            if entry > start:
                possible = max(2, round(possible * (end - entry).days / (end - start).days))
            needs = self.households[p.hid].needs
            rate = min(0.7, rng.expovariate(1 / 0.045) + needs * rng.uniform(0, 0.25))
            absent = min(possible, round(possible * rate))
            auth = round(absent * rng.uniform(0.45, 0.9))
            upn = self.tables["school/pupils"].get(row, "upn")
            r = t.add(
                f"{upn}|{school.urn}|{label}",
                {
                    "upn": upn,
                    "school_urn": school.urn,
                    "term": label,
                    "sessions_possible": str(possible),
                    "sessions_authorised_absent": str(auth),
                    "sessions_unauthorised_absent": str(absent - auth),
                },
            )
            if new:
                maybe_malform(t, r, rng)

    def add_exclusion(self, p: Person, rng: random.Random, when: date, new: bool = False) -> None:
        while when.weekday() >= 5:
            when -= timedelta(days=1)
        school = self.pupil_school[p.pid]
        perm = school.phase == "secondary" and rng.random() < 0.02
        upn = self.tables["school/pupils"].get(self.pupil[p.pid], "upn")
        t = self.tables["school/exclusions"]
        r = t.add(
            f"{upn}|{when.isoformat()}|{len(t.rows)}",
            {
                "upn": upn,
                "school_urn": school.urn,
                "start_date": R.iso(when),
                "category": "PERM" if perm else "SUSP",
                "sessions": "" if perm else str(rng.randint(1, 10)),
                "reason": rng.choice(_EXCLUSION_REASONS),
            },
        )
        if new:
            maybe_malform(t, r, rng)

    # -- health ---------------------------------------------------------------------------

    def build_health(self, rng: random.Random) -> None:
        base = self.base
        by_town: dict[str, int] = defaultdict(int)
        for hh in self.households:
            by_town[hh.town] += len(hh.members)
        self.practices = self.pop.geo.make_practices(rng, by_town)
        registered = [p for p in self.persons if p.dod is None and (p.care or rng.random() < 0.975)]
        for p in registered:
            self.add_patient(p, rng, base)
        dups = max(1, round(len(registered) * 0.009))
        for p in rng.sample(registered, min(dups, len(registered))):
            self.add_patient(p, rng, base, duplicate=True)
        for p in registered:
            self.base_encounters(p, rng)

    def practice_for(self, p: Person, town: str) -> Practice:
        options = self.practices.get(town) or next(iter(self.practices.values()))
        return options[(p.hid * 31 + 7) % len(options)]

    def add_patient(
        self,
        p: Person,
        rng: random.Random,
        on: date,
        duplicate: bool = False,
        baby_name: bool = False,
    ) -> Row:
        asof = self.asof_for(p, rng, ADDRESS_LAG["health"], on - timedelta(days=1))
        if duplicate:
            asof = max(p.dob, p.addr_hist[0][0]) if rng.random() < 0.5 else asof
        addr = p.address_at(asof)
        given = R.forename(p, rng, nick=0.05, typo=0.015)
        family = R.surname(p, rng, variant=0.04, typo=0.01)
        number = p.nhs if rng.random() < 0.975 else ""
        birth = R.maybe_swap(p.dob, rng, 0.005, on)
        if duplicate:
            # A second registration (temporary resident, or re-registered after a move).
            number = "" if rng.random() < 0.5 else p.nhs
            given = R.forename(p, rng, nick=0.4, typo=0.2)
            if p.former_surname and rng.random() < 0.4:
                family = p.former_surname
            birth = R.maybe_swap(p.dob, rng, 0.1, on)
        if baby_name:
            given = "Baby"
        gender = {"M": "male", "F": "female"}[p.sex] if rng.random() > 0.003 else "unknown"
        values = {
            "nhs_number": R.nhs(number, rng, 0.1) if number else "",
            "given_name": given,
            "family_name": family,
            "birth_date": R.iso(birth),
            "gender": gender,
            "gp_practice_code": self.practice_for(p, addr.town).code,
        }
        values.update(R.address("health/patients", addr, rng))
        key = self.key("patient", "LP{:08d}", 10**7, 10**8)
        values["local_patient_id"] = key
        row = self.person_row("health/patients", key, values, p, asof)
        if not duplicate:
            self.patient[p.pid] = row
        else:
            self.patient.setdefault(-p.pid, row)  # duplicates keyed by negative pid
        return row

    def add_encounter(
        self,
        p: Person,
        kind: str,
        when: date,
        rng: random.Random,
        new: bool = False,
        concern: bool | None = None,
    ) -> None:
        row = self.patient.get(p.pid)
        if row is None:
            return
        dup = self.patient.get(-p.pid)
        if dup is not None and rng.random() < 0.3:
            row = dup
        if concern is None:
            concern = kind == "safeguarding_referral" or rng.random() < 0.02 + (
                0.3 if self.households[p.hid].needs > 0.5 else 0.0
            ) * (kind == "ed_attendance")
        t = self.tables["health/encounters"]
        key = self.key("encounter", "E{:09d}", 10**8, 10**9)
        r = t.add(
            key,
            {
                "encounter_id": key,
                "local_patient_id": row.key,
                "encounter_type": kind,
                "encounter_date": R.iso(when),
                "reason": rng.choice(_REASONS[kind]) if rng.random() < 0.9 else "",
                "safeguarding_concern": "true" if concern else "false",
            },
        )
        if new:
            maybe_malform(t, r, rng)

    def base_encounters(self, p: Person, rng: random.Random) -> None:
        base = self.base
        floor = max(p.dob, base - timedelta(days=3 * 365))
        age = p.age_on(base)
        needs = self.households[p.hid].needs
        if age < 5:
            for _ in range(rng.randint(1, 2)):
                self.add_encounter(
                    p,
                    "health_visitor_contact",
                    R.days_between(rng, p.dob + timedelta(days=10), base - timedelta(days=1)),
                    rng,
                )
        elif age < 19 and rng.random() < 0.05 + needs * 0.2:
            self.add_encounter(
                p, "school_nurse_contact", R.days_between(rng, floor, base - timedelta(days=1)), rng
            )
        if 11 <= age < 18 and rng.random() < 0.02 + needs * 0.1:
            self.add_encounter(
                p, "camhs_referral", R.days_between(rng, floor, base - timedelta(days=1)), rng
            )
        if rng.random() < 0.22 + needs * 0.3:
            for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 4)):
                self.add_encounter(
                    p, "ed_attendance", R.days_between(rng, floor, base - timedelta(days=1)), rng
                )
        if (p.care or needs > 0.45) and age < 18 and rng.random() < 0.4:
            self.add_encounter(
                p,
                "safeguarding_referral",
                R.days_between(rng, floor, base - timedelta(days=1)),
                rng,
            )
        if p.mother and age < 1:
            mother = self.persons[p.mother - 1]
            booking = p.dob - timedelta(days=rng.randint(180, 230))
            if mother.dod is None and booking < base:
                self.add_encounter(mother, "maternity_booking", booking, rng)

    # -- children's social care -----------------------------------------------------------

    def build_csc(self, rng: random.Random) -> None:
        base = self.base
        in_care: dict[int, list[Person]] = defaultdict(list)
        for p in self.persons:
            if p.care:
                in_care[p.home_hid].append(p)
        family_hh = [hh for hh in self.households if self.kids_of(hh) or hh.hid in in_care]
        chosen = list(in_care)
        chosen += [
            hid
            for hid, fl in sorted(self.pop.flags.items())
            if "deceased_parent" in fl and hid not in in_care
        ]
        target = max(3, round(len(family_hh) * 0.05))
        weighted = sorted(
            (hh for hh in family_hh if hh.hid not in set(chosen)),
            key=lambda hh: rng.random() ** (1.0 / (hh.needs**2 + 0.004)),
            reverse=True,
        )
        chosen += [hh.hid for hh in weighted[: max(0, target - len(chosen))]]
        for hid in chosen:
            self.open_csc_case(self.households[hid], rng, base, in_care.get(hid, []))
        people = self.tables["council_csc/people"]
        if not any(people.get(r, "former_surname") for r in people.rows):
            # Even a small county's social care should hold a changed surname.
            for hh in weighted:
                mothers = [self.p(k.mother) for k in self.kids_of(hh)]
                renamed = [m for m in mothers if m is not None and m.former_surname]
                if renamed and hh.hid not in self.csc_cases:
                    self.open_csc_case(hh, rng, base, [])
                    row = next(r for t, r in self.rows_of[renamed[0].pid] if t is people)
                    people.set(row, "former_surname", renamed[0].former_surname)
                    break
        for p in self.persons:
            if p.care_leaver and p.dod is None:
                self.csc_care_leaver(p, rng)

    def kids_of(self, hh: Household) -> list[Person]:
        return [
            q
            for pid in hh.members
            if (q := self.persons[pid - 1]).dod is None
            and q.age_on(self.base) < 18
            and q.dob < self.base
        ]

    def csc_person(self, p: Person, rng: random.Random, asof: date, child: bool) -> str:
        if p.pid in self.csc_id:
            return self.csc_id[p.pid]
        key = self.key("csc", "{:07d}", 10**6, 10**7)
        dob, est = R.iso(R.maybe_swap(p.dob, rng, 0.01, asof)), "false"
        if not child:
            r = rng.random()
            if r < 0.18:
                dob, est = "", ""
            elif r < 0.24:
                dob, est = R.iso(date(p.dob.year + rng.randint(-1, 1), 1, 1)), "true"
        addr = None if (p.care and rng.random() < 0.3) else p.address_at(asof)
        values = {
            "csc_person_id": key,
            "forename": R.forename(p, rng, nick=0.08, typo=0.02),
            "middle_names": p.middle if rng.random() < 0.7 else "",
            "surname": R.surname(p, rng, variant=0.06, typo=0.015, jr=0.35),
            "former_surname": p.former_surname if rng.random() < 0.85 else "",
            "dob": dob,
            "dob_estimated": est,
            "sex": p.sex if rng.random() > 0.01 else "U",
            "ethnicity": p.ethnicity if rng.random() < 0.85 else rng.choice(("", "NOBT")),
            "nhs_number": R.nhs(p.nhs, rng, 0.15)
            if rng.random() < (0.75 if child else 0.45)
            else "",
            "upn": p.upn if child and p.upn and rng.random() < 0.7 else "",
            "date_of_death": R.iso(p.dod),
            "updated_at": R.ts(asof, rng),
        }
        values.update(R.address("council_csc/people", addr, rng))
        self.person_row("council_csc/people", key, values, p, asof)
        self.csc_id[p.pid] = key
        return key

    def csc_timeline(
        self, kid: Person, rng: random.Random, on: date, referral: date | None = None
    ) -> list[tuple[str, date, date | None, str]]:
        """Episodes for one child: referral, usually assessment, perhaps a plan or care."""
        last = on - timedelta(days=1)
        floor = max(kid.dob + timedelta(days=1), on - timedelta(days=5 * 365))
        if kid.care_start:
            ref = max(floor, kid.care_start - timedelta(days=rng.randint(20, 400)))
        else:
            ref = max(referral, floor) if referral else R.recent(rng, on, 500, floor)
        if ref > last:
            ref = last
        out: list[tuple[str, date, date | None, str]] = [
            (
                "referral",
                ref,
                min(last, ref + timedelta(days=rng.randint(0, 1))),
                rng.choice(_REFERRAL_SOURCES),
            )
        ]
        if kid.care_start or rng.random() < 0.75:
            a_start = min(last, ref + timedelta(days=rng.randint(1, 7)))
            a_end: date | None = a_start + timedelta(days=rng.randint(10, 45))
            if kid.care_start:
                a_end = min(a_end, kid.care_start)
            if a_end >= on:
                a_end = None
            out.append(("assessment", a_start, a_end, ""))
            after = a_end or a_start
            if kid.care_start:
                if rng.random() < 0.5 and kid.care_start > after:
                    out.append(("cp_plan", after, kid.care_start, rng.choice(_CP_CATEGORIES)))
                out.append(("looked_after", kid.care_start, None, rng.choice(_LEGAL)))
            elif a_end is not None:
                r = rng.random()
                kind = "cp_plan" if r < 0.15 else "cin_plan" if r < 0.5 else ""
                if kind:
                    start = min(last, a_end + timedelta(days=rng.randint(0, 14)))
                    end: date | None = start + timedelta(days=rng.randint(90, 700))
                    if end >= on:
                        end = None
                    cat = rng.choice(_CP_CATEGORIES) if kind == "cp_plan" else ""
                    out.append((kind, start, end, cat))
        return out

    def add_episode(
        self,
        csc_key: str,
        kind: str,
        start: date,
        end: date | None,
        cat: str,
        rng: random.Random,
        new: bool = False,
    ) -> None:
        name, email, area = self.staff("council_csc", rng)
        team = {
            "referral": f"Front Door {area}",
            "assessment": f"Assessment Team {area}",
            "cin_plan": f"Family Safeguarding {area}",
            "cp_plan": f"Family Safeguarding {area}",
            "looked_after": "Children in Care",
            "care_leaver": "Leaving Care Service",
        }[kind]
        summary, opinion = rng.choice(_SUMMARIES[kind])
        t = self.tables["council_csc/episodes"]
        key = self.key("episode", "EP{:07d}", 10**6, 10**7)
        allocated = kind != "referral" or rng.random() < 0.3
        r = t.add(
            key,
            {
                "episode_id": key,
                "csc_person_id": csc_key,
                "episode_type": kind,
                "start_date": R.iso(start),
                "end_date": R.iso(end),
                "category": cat,
                "team": team,
                "worker_name": name if allocated else "",
                "worker_email": email if allocated else "",
                "summary": summary if rng.random() < 0.9 else "",
                "summary_is_opinion": "true" if opinion else "false",
                "confidential_from_subject": "true" if rng.random() < 0.05 else "false",
            },
        )
        if new:
            maybe_malform(t, r, rng)

    def open_csc_case(
        self, hh: Household, rng: random.Random, on: date, in_care: list[Person], new: bool = False
    ) -> None:
        kids = [k for k in self.kids_of(hh) if not k.care] + in_care
        if not kids:
            return
        referral = (
            R.recent(rng, on, 500, on - timedelta(days=5 * 365))
            if not new
            else (on - timedelta(days=1))
        )
        timelines = {}
        latest = on - timedelta(days=5 * 365)
        for k in kids:
            tl = self.csc_timeline(k, rng, on, referral if not k.care_start else None)
            timelines[k.pid] = tl
            for _, s, e, _ in tl:
                latest = max(latest, e or s)
        asof = min(on - timedelta(days=1), latest + timedelta(days=rng.randint(0, 20)))
        adults: list[Person] = []
        for k in kids:
            for pid in (
                k.mother,
                k.father,
                *k.step_parents,
                *(o for o, r in k.extra if r in ("carer", "grandparent")),
            ):
                q = self.p(pid)
                if q is not None and q not in adults:
                    adults.append(q)
        for pid in hh.members:
            q = self.persons[pid - 1]
            if (
                q not in adults
                and q not in kids
                and q.age_on(on) >= 18
                and q.dod is None
                and rng.random() < 0.5
            ):
                adults.append(q)
        t = self.tables["council_csc/people"]
        case_people = kids + adults
        for q in case_people:
            existed = q.pid in self.csc_id
            self.csc_person(q, rng, asof, q in kids)
            if new and not existed:
                maybe_malform(t, self.rows_of[q.pid][-1][1], rng)
        for k in kids:
            for kind, s, e, cat in timelines[k.pid]:
                self.add_episode(self.csc_id[k.pid], kind, s, e, cat, rng, new)
        rt = self.tables["council_csc/relationships"]
        for k in kids:
            for q in case_people:
                if q is k:
                    continue
                rel = self.rel.get((k.pid, q.pid))
                csc_rel = _CSC_REL.get(rel or "", "other" if q.hid == k.hid else "")
                if not csc_rel:
                    continue
                a, b = self.csc_id[k.pid], self.csc_id[q.pid]
                r = rt.add(
                    f"{a}|{b}",
                    {"csc_person_id": a, "related_csc_person_id": b, "relationship": csc_rel},
                )
                if new:
                    maybe_malform(rt, r, rng)
        self.csc_cases[hh.hid] = [k.pid for k in kids]

    def csc_care_leaver(self, p: Person, rng: random.Random) -> None:
        eighteen = date(p.dob.year + 18, p.dob.month, min(p.dob.day, 28))
        key = self.csc_person(p, rng, self.base - timedelta(days=rng.randint(1, 60)), True)
        start = max(p.dob + timedelta(days=400), eighteen - timedelta(days=rng.randint(365, 2500)))
        self.add_episode(key, "looked_after", start, eighteen, rng.choice(_LEGAL), rng)
        self.add_episode(key, "care_leaver", eighteen, None, "", rng)

    # -- early help -----------------------------------------------------------------------

    def build_eh(self, rng: random.Random) -> None:
        family_hh = [
            hh
            for hh in self.households
            if hh.kind not in ("foster", "residential") and self.kids_of(hh)
        ]
        target = max(3, round(len(family_hh) * 0.1))
        weighted = sorted(
            family_hh, key=lambda hh: rng.random() ** (1.0 / (hh.needs + 0.01)), reverse=True
        )
        for hh in weighted[:target]:
            self.open_eh_family(hh, rng, self.base)

    def open_eh_family(
        self, hh: Household, rng: random.Random, on: date, new: bool = False
    ) -> None:
        if hh.hid in self.eh_family:
            return
        fam = self.key("family", "F{:06d}", 10**5, 10**6)
        self.eh_family[hh.hid] = fam
        last = on - timedelta(days=1)
        starts = [last if new else R.recent(rng, on, 450, on - timedelta(days=3 * 365))]
        if not new and rng.random() < 0.25:
            starts.append(R.recent(rng, starts[0], 400, on - timedelta(days=4 * 365)))
        latest = max(starts)
        et = self.tables["council_eh/episodes"]
        for s in starts:
            end: date | None = s + timedelta(days=rng.randint(60, 400))
            if end >= on:
                end = None
            name, email, _ = self.staff("council_eh", rng)
            key = self.key("eh_episode", "EHE{:06d}", 10**5, 10**6)
            r = et.add(
                key,
                {
                    "eh_episode_id": key,
                    "family_id": fam,
                    "start_date": R.iso(s),
                    "end_date": R.iso(end),
                    "lead_practitioner": name,
                    "lead_practitioner_email": email,
                    "primary_need": rng.choices(_EH_NEEDS, (25, 15, 25, 15, 12, 8))[0],
                    "outcome": rng.choice(_EH_OUTCOMES) if end else "",
                },
            )
            if new:
                maybe_malform(et, r, rng)
            latest = max(latest, end or s)
        asof = min(last, latest)
        members = [self.persons[pid - 1] for pid in hh.members]
        kids = self.kids_of(hh)
        parents = {pid for k in kids for pid in (k.mother, k.father, *k.step_parents) if pid}
        pt = self.tables["council_eh/people"]
        people: list[tuple[Person, str]] = []
        for q in members:
            if q.dod is not None or q.dob >= on:
                continue
            if q in kids:
                role = "child"
            elif q.pid in parents:
                role = "parent"
            elif any(
                (k.pid, q.pid) in self.rel and self.rel[(k.pid, q.pid)] == "grandparent"
                for k in kids
            ):
                role = "carer"
            else:
                role = "other_adult"
            people.append((q, role))
        for k in kids[:1]:
            away = self.p(k.father)
            if away is not None and away.hid != hh.hid and away.dod is None and rng.random() < 0.2:
                people.append((away, "parent"))
        for q, role in people:
            child = role == "child"
            values = {
                "eh_person_id": "",
                "family_id": fam,
                "forename": R.forename(q, rng, nick=0.3, typo=0.02),
                "surname": R.surname(q, rng, variant=0.05, typo=0.01),
                "dob": R.iso(R.maybe_swap(q.dob, rng, 0.01, on))
                if rng.random() < (0.96 if child else 0.75)
                else "",
                "sex": q.sex,
                "nhs_number": R.nhs(q.nhs, rng, 0.1)
                if rng.random() < (0.5 if child else 0.3)
                else "",
                "upn": q.upn if child and q.upn and rng.random() < 0.6 else "",
                "role_in_family": role,
                "updated_at": R.ts(asof, rng),
            }
            key = self.key("eh", "EH{:06d}", 10**5, 10**6)
            values["eh_person_id"] = key
            values.update(R.address("council_eh/people", q.address_at(asof), rng))
            row = self.person_row("council_eh/people", key, values, q, asof)
            if new:
                maybe_malform(pt, row, rng)

    # -- police ---------------------------------------------------------------------------

    def build_police(self, rng: random.Random) -> None:
        base = self.base
        h = self.n_households
        floor = base - timedelta(days=3 * 365)
        # Domestic abuse: couples, step-families and separated parents, weighted by needs.
        da = [
            hh
            for hh in self.households
            if hh.kind in ("couple_kids", "single_parent", "blended", "couple_young", "multigen")
        ]
        da.sort(key=lambda hh: rng.random() ** (1.0 / (hh.needs**1.5 + 0.003)), reverse=True)
        for hh in da[: max(2, round(h * 0.03))]:
            for _ in range(rng.choices((1, 2, 3, 4), (55, 25, 12, 8))[0]):
                self.incident_da(hh, R.recent(rng, base, 350, floor), rng)
        teens = [p for p in self.persons if p.dod is None and 12 <= p.age_on(base) < 18]
        teens.sort(
            key=lambda p: (
                rng.random() ** (1.0 / (self.households[p.hid].needs + (1.0 if p.care else 0.01)))
            ),
            reverse=True,
        )
        for p in teens[: max(1, round(h * 0.003))]:
            for _ in range(rng.choices((1, 2, 4), (70, 20, 10))[0]):
                self.incident_missing(p, R.recent(rng, base, 300, floor), rng)
        for _ in range(max(1, round(h * 0.003))):
            self.incident_child_concern(rng, R.recent(rng, base, 400, floor))
        for _ in range(round(h * 0.03)):
            self.incident_street("asb", rng, R.recent(rng, base, 400, floor))
        for _ in range(round(h * 0.06)):
            self.incident_street("crime", rng, R.recent(rng, base, 400, floor))

    def nominal_for(
        self,
        p: Person,
        when: date,
        role: str,
        rng: random.Random,
        victim: Person | None = None,
        new: bool = False,
    ) -> str:
        """The nominal police use for ``p``: usually the existing one, sometimes a new dupe."""
        existing = self.nominal.get(p.pid)
        if existing and (len(existing) > 1 or rng.random() > 0.1):
            return rng.choice(existing).key
        asof = when
        age = p.age_on(when)
        child = age < 18
        present = role == "child_present"
        dob = ""
        age_txt = ""
        if present and rng.random() < 0.75:
            age_txt = str(max(0, age + (rng.choice((-1, 1)) if rng.random() < 0.2 else 0)))
        elif rng.random() < (0.9 if not child else 0.8):
            dob = R.iso(R.maybe_swap(p.dob, rng, 0.02, when))
        elif rng.random() < 0.7:
            age_txt = str(age)
        sur = R.surname(p, rng, variant=0.08, typo=0.05, jr=0.4)
        if present and victim is not None and victim.surname != p.surname and rng.random() < 0.2:
            sur = victim.surname  # recorded under the parent's surname
        sex = p.sex if rng.random() > (0.05 if present else 0.01) else "U"
        key = self.key("nominal", "N{:08d}", 10**7, 10**8)
        pnc = ""
        if not child and role == "suspect" and rng.random() < 0.6:
            pnc = f"{rng.randint(0, 99):02d}/{rng.randrange(10**6):06d}{rng.choice('ABCDEFGHJK')}"
        values = {
            "nominal_id": key,
            "forename": R.forename(p, rng, nick=0.5 if present or not child else 0.3, typo=0.1),
            "surname": sur,
            "dob": dob,
            "age_at_incident": age_txt,
            "sex": sex,
            "pnc_id": pnc,
        }
        if existing:
            # A duplicate nominal: created because the first one was not found, so it
            # differs from it somewhere a search would have looked.
            t = self.tables["police/persons"]
            first = existing[0]
            for _ in range(6):
                r = rng.random()
                if r < 0.4:
                    values["forename"] = p.nick or misspell(rng, p.forename)
                elif r < 0.7:
                    values["dob"], values["age_at_incident"] = "", str(age)
                elif r < 0.85:
                    values["dob"] = R.iso(R.swap_day_month(p.dob))
                else:
                    values["surname"] = misspell(rng, p.surname)
                if any(values[c] != t.get(first, c) for c in ("forename", "surname", "dob")):
                    break
        values.update(R.address("police/persons", p.address_at(asof), rng))
        row = self.person_row("police/persons", key, values, p, asof)
        if new:
            maybe_malform(self.tables["police/persons"], row, rng)
        self.nominal.setdefault(p.pid, []).append(row)
        return key

    def add_incident(
        self,
        kind: str,
        when: date,
        rng: random.Random,
        postcode: str,
        people: list[tuple[Person, str]],
        new: bool = False,
        encompass: str = "",
        dash: str = "",
    ) -> None:
        it = self.tables["police/incidents"]
        vt = self.tables["police/involvements"]
        ref = self.key("incident", "INC{:08d}", 10**7, 10**8)
        evening = rng.random() < 0.6
        r = it.add(
            ref,
            {
                "incident_ref": ref,
                "occurred_at": R.ts(when, rng, 17 if evening else 6, 23 if evening else 16),
                "incident_type": kind,
                "offence": rng.choice(_OFFENCES[kind])
                if kind in _OFFENCES and rng.random() < 0.6
                else "",
                "dash_risk": dash,
                "encompass_notified": encompass,
                "location_postcode": R.postcode(postcode, rng, R.POSTCODE_MESS["police/incidents"]),
            },
        )
        if new:
            maybe_malform(it, r, rng)
        seen: set[tuple[str, str]] = set()
        victim = next((q for q, role in people if role == "victim"), None)
        for q, role in people:
            nom = self.nominal_for(q, when, role, rng, victim, new)
            if (nom, role) in seen:
                continue
            seen.add((nom, role))
            v = vt.add(
                f"{ref}|{nom}|{role}", {"incident_ref": ref, "nominal_id": nom, "role": role}
            )
            if new:
                maybe_malform(vt, v, rng)

    def incident_da(self, hh: Household, when: date, rng: random.Random, new: bool = False) -> None:
        adults = [
            q
            for pid in hh.members
            if (q := self.persons[pid - 1]).dob < when
            and q.age_on(when) >= 18
            and self.alive_on(q, when)
        ]
        women = [q for q in adults if q.sex == "F"]
        if not adults:
            return
        victim = women[0] if women and rng.random() < 0.9 else rng.choice(adults)
        suspect = self.p(victim.partner)
        if suspect is None or not self.alive_on(suspect, when):
            exes = [self.p(k.father) for k in self.kids_of(hh) if k.mother == victim.pid]
            exes = [x for x in exes if x is not None and self.alive_on(x, when)]
            suspect = exes[0] if exes else None
        if suspect is None:
            others = [q for q in adults if q is not victim]
            if not others:
                return
            suspect = others[0]
        people = [(victim, "victim"), (suspect, "suspect")]
        school_age = False
        for pid in hh.members:
            q = self.persons[pid - 1]
            if self.alive_on(q, when) and q.age_on(when) < 18 and rng.random() < 0.8 and not q.care:
                people.append((q, "child_present"))
                school_age = school_age or 0 <= year_group(q.dob, when) <= 13
        if rng.random() < 0.15:
            neighbour = self.persons[rng.randrange(len(self.persons))]
            if (
                neighbour.hid != hh.hid
                and self.alive_on(neighbour, when)
                and neighbour.age_on(when) >= 18
            ):
                people.append((neighbour, "reporting_person"))
        encompass = "true" if school_age and rng.random() < 0.85 else "false"
        dash = rng.choices(("standard", "medium", "high"), (60, 30, 10))[0]
        self.add_incident(
            "domestic_abuse",
            when,
            rng,
            victim.address_at(when).postcode,
            people,
            new,
            encompass,
            dash,
        )

    def incident_missing(
        self, p: Person, when: date, rng: random.Random, new: bool = False
    ) -> None:
        if not self.alive_on(p, when):
            return
        people = [(p, "missing_person")]
        reporter = None
        if p.care == "foster":
            reporter = next((self.persons[o - 1] for o, r in p.extra if r == "carer"), None)
        elif not p.care:
            reporter = self.p(p.mother) or self.p(p.father)
        if reporter is not None and self.alive_on(reporter, when):
            people.append((reporter, "reporting_person"))
        self.add_incident("missing_person", when, rng, p.address_at(when).postcode, people, new, "")

    def incident_child_concern(self, rng: random.Random, when: date, new: bool = False) -> None:
        for _ in range(30):
            child = self.persons[rng.randrange(len(self.persons))]
            if self.alive_on(child, when) and child.age_on(when) < 16:
                break
        else:
            return
        people = [(child, "victim")]
        parent = self.p(child.mother)
        if parent is not None and self.alive_on(parent, when):
            people.append((parent, "reporting_person" if rng.random() < 0.5 else "suspect"))
        self.add_incident(
            "child_concern",
            when,
            rng,
            child.address_at(when).postcode,
            people,
            new,
            "false" if rng.random() < 0.5 else "",
        )

    def incident_street(self, kind: str, rng: random.Random, when: date, new: bool = False) -> None:
        people: list[tuple[Person, str]] = []
        suspect = None
        for _ in range(40):
            q = self.persons[rng.randrange(len(self.persons))]
            age = q.age_on(when)
            needy = self.households[q.hid].needs
            lo = 14 if kind == "asb" else 16
            if (
                self.alive_on(q, when)
                and lo <= age <= 55
                and rng.random() < 0.15 + needy
                and (q.sex == "M" or rng.random() < 0.3)
            ):
                suspect = q
                break
        if suspect is not None and rng.random() < 0.85:
            people.append((suspect, "suspect"))
        for role, share in (
            ("victim", 0.8 if kind == "crime" else 0.2),
            ("reporting_person", 0.5),
            ("witness", 0.25),
        ):
            if rng.random() < share:
                q = self.persons[rng.randrange(len(self.persons))]
                if (
                    self.alive_on(q, when)
                    and q.age_on(when) >= 16
                    and q not in (x for x, _ in people)
                ):
                    people.append((q, role))
        if not people:
            return
        where = people[0][0].address_at(when).postcode
        self.add_incident(kind, when, rng, where, people, new, "")

    # -- between deliveries -----------------------------------------------------------------

    def refresh_address(self, t: Table, row: Row, when: date, rng: random.Random) -> None:
        p = self.persons[row.pid - 1]
        row.asof = when
        for col, v in R.address(t.spec.name, p.address_at(when), rng).items():
            t.set(row, col, v)
        if t.spec.source in ("council_csc", "council_eh"):
            t.set(row, "updated_at", R.ts(when, rng))
        if t.spec.name == "health/patients" and rng.random() < 0.5:
            t.set(row, "gp_practice_code", self.practice_for(p, p.address_at(when).town).code)

    def evolve(self, day: date, rng: random.Random) -> None:
        """One night's changes, dated the day before the delivery ``day``."""
        scale = self.n_households / 20000
        last = day - timedelta(days=1)
        self._moves(rng, last, scale)
        self._births(rng, last, scale)
        self._surname_changes(rng, last, scale)
        self._new_events(rng, day, scale)
        self._corrections(rng, last)

    def _moves(self, rng: random.Random, last: date, scale: float) -> None:
        eligible = [
            hh for hh in self.households if hh.kind not in ("foster", "residential") and hh.members
        ]
        for hh in rng.sample(eligible, min(len(eligible), count(rng, 5.5 * scale, 1))):
            self.pop.move(hh, last, rng)
            for pid in hh.members:
                for t, row in self.rows_of[pid]:
                    if t.spec.source == "police":
                        continue
                    if rng.random() < 2 * CATCH_UP[t.spec.source]:
                        self.refresh_address(t, row, last, rng)
                    else:
                        self.stale.append((t, row))
        still = []
        for t, row in self.stale:
            p = self.persons[row.pid - 1]
            if row.asof is None or p.last_move() <= row.asof:
                continue
            if rng.random() < CATCH_UP[t.spec.source]:
                self.refresh_address(t, row, last, rng)
            else:
                still.append((t, row))
        self.stale = still

    def _births(self, rng: random.Random, last: date, scale: float) -> None:
        kinds = ("couple_kids", "couple_young", "single_parent", "blended", "multigen")
        mothers = [
            p
            for p in self.persons
            if p.sex == "F"
            and p.dod is None
            and not p.care
            and 18 <= p.age_on(last) <= 43
            and self.households[p.hid].kind in kinds
        ]
        for mother in rng.sample(mothers, min(len(mothers), count(rng, 1.4 * scale, 1))):
            dob = last - timedelta(days=rng.randint(0, 3))
            baby = self.pop.birth(mother, dob, rng)
            row = self.add_patient(
                baby, rng, last + timedelta(days=1), baby_name=rng.random() < 0.3
            )
            maybe_malform(self.tables["health/patients"], row, rng)
            self.add_encounter(baby, "health_visitor_contact", last, rng, new=True)
            if mother.pid in self.patient:
                self.add_encounter(
                    mother,
                    "maternity_booking",
                    dob - timedelta(days=rng.randint(180, 230)),
                    rng,
                    new=True,
                )

    def _surname_changes(self, rng: random.Random, last: date, scale: float) -> None:
        """A woman takes her partner's surname; some systems hear about it, some do not."""
        cands = [
            p
            for p in self.persons
            if p.sex == "F"
            and p.dod is None
            and p.partner
            and p.age_on(last) >= 18
            and not p.former_surname
            and self.persons[p.partner - 1].sex == "M"
            and self.persons[p.partner - 1].surname != p.surname
        ]
        updates = {
            "health/patients": ("family_name", 0.6),
            "council_csc/people": ("surname", 0.7),
            "council_eh/people": ("surname", 0.5),
            "school/contacts": ("contact_surname", 0.3),
        }
        for q in rng.sample(cands, min(len(cands), count(rng, scale, 1))):
            old = q.surname
            q.former_surname, q.surname = old, self.persons[q.partner - 1].surname
            for t, row in self.rows_of[q.pid]:
                col, prob = updates.get(t.spec.name, ("", 0.0))
                if col and rng.random() < prob:
                    t.set(row, col, q.surname)
                    if t.spec.name == "council_csc/people":
                        t.set(row, "former_surname", old)
                    if t.spec.source in ("council_csc", "council_eh"):
                        t.set(row, "updated_at", R.ts(last, rng))

    def _new_events(self, rng: random.Random, day: date, scale: float) -> None:
        last = day - timedelta(days=1)
        # Health encounters.
        registered = [pid for pid in self.patient if pid > 0]
        for pid in rng.sample(
            registered, min(len(registered), count(rng, len(registered) * 0.45 / 365))
        ):
            p = self.persons[pid - 1]
            age = p.age_on(last)
            if age < 5:
                kind = rng.choice(("health_visitor_contact", "ed_attendance"))
            elif age < 18:
                kind = rng.choices(
                    (
                        "school_nurse_contact",
                        "camhs_referral",
                        "ed_attendance",
                        "safeguarding_referral",
                    ),
                    (25, 6, 60, 9),
                )[0]
            else:
                kind = rng.choices(("ed_attendance", "safeguarding_referral"), (95, 5))[0]
            self.add_encounter(p, kind, last, rng, new=True)
        # Police incidents.
        da = [
            hh
            for hh in self.households
            if hh.needs > 0.3
            and hh.kind in ("couple_kids", "single_parent", "blended", "couple_young")
        ]
        for _ in range(count(rng, 3.0 * scale) if da else 0):
            self.incident_da(rng.choice(da), last, rng, new=True)
        for _ in range(count(rng, 3.0 * scale)):
            self.incident_street("crime", rng, last, new=True)
        for _ in range(count(rng, 1.5 * scale)):
            self.incident_street("asb", rng, last, new=True)
        for _ in range(count(rng, 0.2 * scale)):
            self.incident_child_concern(rng, last, new=True)
        # Children's social care: new referrals, and plans that end.
        ep = self.tables["council_csc/episodes"]
        for _ in range(count(rng, 1.4 * scale, 1)):
            if self.csc_cases and rng.random() < 0.5:
                hid = rng.choice(sorted(self.csc_cases))
                kid = self.persons[rng.choice(self.csc_cases[hid]) - 1]
                if kid.dod is None and kid.age_on(last) < 18:
                    self.add_episode(
                        self.csc_id[kid.pid],
                        "referral",
                        last,
                        last,
                        rng.choice(_REFERRAL_SOURCES),
                        rng,
                        new=True,
                    )
                    continue
            fresh = [
                hh
                for hh in rng.sample(self.households, min(200, len(self.households)))
                if hh.hid not in self.csc_cases
                and hh.kind not in ("foster", "residential")
                and self.kids_of(hh)
            ]
            if fresh:
                self.open_csc_case(fresh[0], rng, day, [], new=True)
        for row in ep.rows:
            if (
                not ep.get(row, "end_date")
                and ep.get(row, "episode_type") in ("assessment", "cin_plan", "cp_plan")
                and rng.random() < 0.004
            ):
                ep.set(row, "end_date", R.iso(last))
        # Early help: new families, and episodes that close.
        for _ in range(count(rng, 0.5 * scale)):
            fresh = [
                hh
                for hh in rng.sample(self.households, min(200, len(self.households)))
                if hh.hid not in self.eh_family
                and hh.kind not in ("foster", "residential")
                and self.kids_of(hh)
            ]
            if fresh:
                self.open_eh_family(fresh[0], rng, day, new=True)
        eh = self.tables["council_eh/episodes"]
        for row in eh.rows:
            if not eh.get(row, "end_date") and rng.random() < 0.004:
                eh.set(row, "end_date", R.iso(last))
                eh.set(row, "outcome", rng.choice(_EH_OUTCOMES))
        # Schools: suspensions, and a term's attendance once the term has ended.
        pupils = sorted(self.pupil)
        for pid in rng.sample(pupils, min(len(pupils), count(rng, len(pupils) * 0.02 / 190))):
            self.add_exclusion(self.persons[pid - 1], rng, last, new=True)
        for label, start, end in terms_completed(day):
            if label not in self.attendance_terms:
                self.add_attendance_term(label, start, end, rng, new=True)

    def _corrections(self, rng: random.Random, last: date) -> None:
        """Systems fix a few rows: a defect corrected, a newborn's placeholder name replaced."""
        defective = [(t, row) for t in self.tables.values() for row in t.rows if row.defect]
        for t, row in rng.sample(
            defective, min(len(defective), count(rng, len(defective) * 0.01, 1))
        ):
            row.defect = None
            if t.spec.source in ("council_csc", "council_eh") and t.spec.person_key:
                t.set(row, "updated_at", R.ts(last, rng))
        pt = self.tables["health/patients"]
        for row in pt.rows:
            if pt.get(row, "given_name") == "Baby" and rng.random() < 0.3:
                pt.set(row, "given_name", self.persons[row.pid - 1].forename)
