"""What the API fuzzer knows about the world it fuzzes: people, their cases, tokens per role, and
the leak check (infra/fuzz.py drives it).

Why a world at all: schemathesis draws requests from the OpenAPI document alone, and an access
rule is exercised only when a request names something real — a case that exists, owned by
someone, on some departments. So every accepted application is remembered with its owner, and
each generated request is sent *as a role* (anonymous, a forged token, the case's owner, another
applicant, a clerk, a department on or off the case, a supervisor, a register, the system, the
receipt's status link) with its path naming a known case, department or bundle most of the time.

A response leaks when it names a resident ID, a subject token or a case that the caller may not
see: for a person, only their own cases (a receipt's link: its one case); for a clerk, the ones
it filed; for a department, cases with a service of its own. Supervisors, registers and the
system may see any case. What the request itself carried is never counted.

The registers (一处变更) are a world of their own: every company a register write brought into
the register is remembered with its entity class, date of establishment and status, so a change,
a deregistration or a 个转企 names one that exists and may take it (`company_for`), and what the
path's company decides about a body — a date not before its establishment, a type that fits its
entity class — is made to fit it, as the register's own client would (`fit_register_body`).

The data is synthetic: resident IDs with a valid GB 11643 check character for random birth dates,
USCCs with a valid GB 32100 one in real regions; nothing here describes a real person.
"""
from __future__ import annotations

import random
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from hypothesis import strategies as st

from catalog.validators import resident_id_check_char, uscc_check_char
from producers import identity
from producers.api_form_schema import FUTURE_DATE, PAST_DATE, RESIDENT_ID, USCC
from producers.register_schema import ENTITY_USCC, MARKET_USCC, REGION_CODE, company_types

ROLES = ("anonymous", "bad_token", "owner", "other_applicant", "clerk", "department_on_case",
         "department_off_case", "supervisor", "register", "system", "receipt_link")
#: roles that may read every case: their responses are not leak-checked
SEE_ALL = frozenset({"supervisor", "register", "system"})
_PROVINCES = ("11", "31", "44", "51", "61", "33")
RID = re.compile(r"(?<![0-9A-Za-z])[1-8][0-9]{16}[0-9X](?![0-9A-Za-z])")
CASE = re.compile(r"case-[0-9a-f]{20}")
SUBJECT = re.compile(r"p_[0-9a-f]{32}")
#: path parameters filled from what the world harvested (else left as generated)
HARVESTED = ("escalation_id", "rectification_id", "change_event_id", "uscc")
#: real 行政区划代码 (GB/T 2260 districts): 东城 朝阳 海淀 (北京), 和平 (天津), 黄浦 徐汇 浦东 (上海), 鼓楼
#: (南京), 西湖 (杭州), 武昌 (武汉), 天河 (广州), 南山 (深圳), 渝中 (重庆), 锦江 (成都), 雁塔 (西安)
REGION_CODES = ("110101", "110105", "110108", "120101", "310101", "310104", "310115", "320106", "330106",
                "420106", "440106", "440305", "500103", "510104", "610113")
REGISTER_PREFIX = "/api/v1/registers/"
USCC_ORG = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # GB 32100's alphabet (no I, O, S, V, Z)
#: per entity class (the 2nd character of a USCC), the company types that fit it (the register rules')
TYPES_BY_CLASS = {c: company_types(c) for c in ENTITY_USCC}


def resident_ids() -> st.SearchStrategy[str]:
    """公民身份号码 with a real birth date (not after today) and the right check character."""
    def make(parts: tuple[str, int, date, int]) -> str:
        prov, area, born, seq = parts
        first17 = f"{prov}{area:04d}{born:%Y%m%d}{seq:03d}"
        return first17 + resident_id_check_char(first17)

    return st.tuples(st.sampled_from(_PROVINCES), st.integers(100, 9999),
                     st.dates(date(1930, 1, 1), date.today()), st.integers(0, 999)).map(make)


def usccs() -> st.SearchStrategy[str]:
    def make(parts: tuple[str, str, str]) -> str:
        first17 = "".join(parts)
        return first17 + uscc_check_char(first17)

    alphabet = "[0-9A-HJ-NPQRTUWXY]"
    return st.tuples(st.from_regex(f"{alphabet}{{2}}", fullmatch=True), st.from_regex("[0-9]{6}", fullmatch=True),
                     st.from_regex(f"{alphabet}{{9}}", fullmatch=True)).map(make)


def market_usccs(classes: str = "123") -> st.SearchStrategy[str]:
    """Codes registered by market regulation (9), of one of the entity classes, in a real region."""
    def make(parts: tuple[str, str, str]) -> str:
        first17 = "9" + "".join(parts)
        return first17 + uscc_check_char(first17)

    return st.tuples(st.sampled_from(classes), st.sampled_from(REGION_CODES),
                     st.text(USCC_ORG, min_size=9, max_size=9)).map(make)


def register_formats() -> None:
    """The formats api_form_schema.py and register_schema.py name, as schemathesis strategies (idempotent)."""
    import schemathesis

    today = date.today()
    schemathesis.openapi.format(RESIDENT_ID, resident_ids())
    schemathesis.openapi.format(USCC, usccs())
    schemathesis.openapi.format(MARKET_USCC, market_usccs())
    for entity_class, name in ENTITY_USCC.items():
        schemathesis.openapi.format(name, market_usccs(entity_class))
    schemathesis.openapi.format(REGION_CODE, st.sampled_from(REGION_CODES))
    schemathesis.openapi.format(PAST_DATE, st.dates(date(1950, 1, 1), today).map(date.isoformat))
    schemathesis.openapi.format(FUTURE_DATE, st.dates(today, today + timedelta(days=3650)).map(date.isoformat))


def random_resident_id(rng: random.Random) -> str:
    born = date(1930, 1, 1) + timedelta(days=rng.randrange((date.today() - date(1930, 1, 1)).days))
    first17 = f"{rng.choice(_PROVINCES)}{rng.randrange(100, 9999):04d}{born:%Y%m%d}{rng.randrange(1000):03d}"
    return first17 + resident_id_check_char(first17)


@dataclass
class KnownCase:
    case_id: str
    owner_rid: str
    owner_subject: str
    departments: tuple[str, ...]
    link_token: str | None
    filed_by: str  # the caller's subject: the applicant, or the clerk who filed
    rids: frozenset[str] = frozenset()  # every resident ID its form carried (the owner may see them)


@dataclass
class KnownCompany:
    """A company the fuzz brought into the register (or converted into one), as it stands."""
    uscc: str
    established_on: str
    status: str = "active"  # active | deregistered | converted

    @property
    def entity_class(self) -> str:
        return self.uscc[1]


@dataclass
class Caller:
    """Who a request is sent as: the role, the token, and what it may see."""
    role: str
    token: str | None
    subject: str | None = None
    rid: str | None = None
    department: str | None = None
    case_id: str | None = None  # a receipt's link is bound to this case

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@dataclass
class World:
    departments: tuple[str, ...]
    bundles: tuple[str, ...]
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    cases: dict[str, KnownCase] = field(default_factory=dict)
    people: dict[str, str] = field(default_factory=dict)  # resident ID → subject token, of every caller
    subjects: set[str] = field(default_factory=set)
    harvest: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in HARVESTED})
    companies: dict[str, KnownCompany] = field(default_factory=dict)
    #: new people and codes for register writes: unseeded, since a database keeps the last run's
    #: (a second run of the same seed would find its companies registered, its people deceased)
    ids: random.Random = field(default_factory=random.Random)
    #: every change an accepted register write recorded: event id → register (the follow-up's list)
    register_changes: dict[str, str] = field(default_factory=dict)
    register_keys: set[str] = field(default_factory=set)   # their register keys: USCCs, person tokens
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- who is calling -------------------------------------------------------------------------
    def person(self, rid: str | None = None) -> tuple[str, str]:
        rid = rid or random_resident_id(self.rng)
        subject = identity.subject_token(rid)
        with self._lock:
            self.people[rid] = subject
            self.subjects.add(subject)
        return rid, subject

    def caller(self, role: str, case: KnownCase | None) -> Caller:
        """A token for `role`, about `case` when the request names one."""
        staff = f"{self.rng.randrange(1, 10**6)}"
        if role == "anonymous":
            return Caller(role, None)
        if role == "bad_token":
            token = self.rng.choice([
                "not-a-jwt", identity.issue_token("p_forged", "applicant", secret="not-the-secret-that-signs-tokens-here-at-all"),
                identity.issue_token("p_expired", "applicant", now=0, ttl_s=60)])
            return Caller(role, token)
        if role == "owner" and case is not None:
            return Caller(role, identity.applicant_token(case.owner_rid), case.owner_subject, case.owner_rid)
        if role in ("owner", "other_applicant"):
            rid, subject = self.person()
            return Caller(role, identity.applicant_token(rid), subject, rid)
        if role == "clerk":
            return Caller(role, identity.clerk_token(f"W-{staff}"), identity.staff_subject(f"W-{staff}"))
        if role in ("department_on_case", "department_off_case"):
            on = set(case.departments) if case else set()
            pool = sorted(on) if role == "department_on_case" and on else sorted(set(self.departments) - on)
            dept = self.rng.choice(pool or list(self.departments))
            return Caller(role, identity.department_token(dept, f"D-{staff}"), identity.staff_subject(f"D-{staff}"),
                          department=dept)
        if role == "supervisor":
            return Caller(role, identity.supervisor_token(f"S-{staff}"), identity.staff_subject(f"S-{staff}"))
        if role == "register":
            return Caller(role, identity.issue_token("register:fuzz", "register", "register", staff_id=f"R-{staff}"),
                          "register:fuzz")
        if role == "system":
            return Caller(role, identity.issue_token("system:fuzz", "system", "system",
                                                     staff_id=self.rng.choice([None, f"Y-{staff}"])), "system:fuzz")
        if role == "receipt_link":
            target = case or self.any_case()
            if target is not None and target.link_token:
                return Caller(role, target.link_token, target.owner_subject, case_id=target.case_id)
            rid, subject = self.person()
            return Caller(role, identity.status_link_token(subject, f"case-{uuid.uuid4().hex[:20]}"), subject)
        raise ValueError(f"unknown role {role!r}")

    # -- what exists ----------------------------------------------------------------------------
    def any_case(self) -> KnownCase | None:
        with self._lock:
            return self.rng.choice(list(self.cases.values())) if self.cases else None

    def remember_case(self, case: KnownCase) -> None:
        with self._lock:
            self.cases[case.case_id] = case

    def remember(self, name: str, value: Any) -> None:
        if isinstance(value, str) and value and name in self.harvest:
            with self._lock:
                if value not in self.harvest[name] and len(self.harvest[name]) < 5000:
                    self.harvest[name].append(value)

    def harvest_from(self, value: Any, depth: int = 0) -> None:
        """Ids a response or an accepted request named (escalations, rectifications, companies):
        later requests name them in their paths."""
        if depth > 6:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                self.remember(k, v)
                if k in ("event_id", "change_id") and isinstance(v, str):
                    self.remember("change_event_id", v)
                self.harvest_from(v, depth + 1)
        elif isinstance(value, list):
            for v in value[:200]:
                self.harvest_from(v, depth + 1)

    def path_value(self, name: str, generated: Any, case: KnownCase | None, caller: Caller, route: str = "") -> Any:
        """A real value for a path parameter most of the time, the generated one otherwise."""
        r = self.rng.random()
        if name == "case_id" and case is not None and r < 0.85:
            return case.case_id
        if name == "uscc" and route.startswith(REGISTER_PREFIX) and r < 0.7:
            company = self.company_for(route)
            if company is not None:
                return company.uscc
        if name == "department" and r < 0.8:
            return caller.department if caller.department and r < 0.6 else self.rng.choice(self.departments)
        if name in ("code", "bundle") and r < 0.8:
            return self.rng.choice(self.bundles)
        if name in self.harvest and self.harvest[name] and r < 0.7:
            with self._lock:
                return self.rng.choice(self.harvest[name])
        return generated

    # -- the registers -------------------------------------------------------------------------
    def company_for(self, route: str) -> KnownCompany | None:
        """An active company the route may act on: an individual business for 个转企, any other."""
        wanted = "2" if route.endswith("/conversion") else None
        with self._lock:
            pool = [c for c in self.companies.values()
                    if c.status == "active" and wanted in (None, c.entity_class)]
            return self.rng.choice(pool) if pool else None

    def fit_register_body(self, route: str, company: KnownCompany | None, body: dict[str, Any]) -> dict[str, Any]:
        """What the path's company decides about a body, made to fit it: a date of deregistration or
        conversion not before its establishment, a new type that fits its entity class."""
        if company is None:
            return body
        body = dict(body)
        for name in ("deregistered_on", "converted_on"):
            if isinstance(body.get(name), str) and body[name] < company.established_on:
                body[name] = self._date_since(company.established_on)
        changes, fitting = body.get("changes"), TYPES_BY_CLASS[company.entity_class]
        if isinstance(changes, dict) and changes.get("company_type") not in (None, *fitting):
            body["changes"] = {**changes, "company_type": self.rng.choice(fitting)}
        return body

    def fresh_resident_id(self) -> str:
        """A person no register write named yet (Hypothesis repeats values: a second death is refused)."""
        return random_resident_id(self.ids)

    def fresh_uscc(self, entity_class: str) -> str:
        """A code of market regulation of `entity_class` that no register write named yet."""
        first17 = "9" + entity_class + self.ids.choice(REGION_CODES) + "".join(
            self.ids.choice(USCC_ORG) for _ in range(9))
        return first17 + uscc_check_char(first17)

    def _date_since(self, first: str) -> str:
        start = date.fromisoformat(first)
        return (start + timedelta(days=self.rng.randrange((date.today() - start).days + 1))).isoformat()

    def register_accepted(self, route: str, path_uscc: str | None, body: Any, answer: Any) -> None:
        """An accepted register write: its changes for the follow-up, and the companies it made or closed."""
        recorded = answer.get("recorded") if isinstance(answer, dict) else None
        if not isinstance(recorded, list):
            return
        body = body if isinstance(body, dict) else {}
        with self._lock:
            for r in recorded:
                if isinstance(r, dict) and r.get("event_id"):
                    self.register_changes[str(r["event_id"])] = str(r.get("register"))
                    self.register_keys.add(str(r.get("key")))
            fields = body.get("fields") if isinstance(body.get("fields"), dict) else {}
            if route == REGISTER_PREFIX + "company" and isinstance(body.get("uscc"), str):
                self.companies[body["uscc"]] = KnownCompany(body["uscc"], str(fields.get("established_on")).strip())
            old = self.companies.get(path_uscc or "")
            if old is not None and route.endswith("/deregistration"):
                old.status = "deregistered"
            elif old is not None and route.endswith("/conversion") and isinstance(body.get("company_uscc"), str):
                old.status = "converted"
                self.companies[body["company_uscc"]] = KnownCompany(body["company_uscc"], old.established_on)

    # -- the leak check -------------------------------------------------------------------------
    def may_see(self, caller: Caller, case: KnownCase) -> bool:
        if caller.role in SEE_ALL:
            return True
        if caller.case_id is not None:
            return case.case_id == caller.case_id
        if caller.department is not None:
            return caller.department in case.departments
        return caller.subject is not None and caller.subject in (case.owner_subject, case.filed_by)

    def leaks(self, caller: Caller, request_text: str, response_text: str) -> list[str]:
        """What the response names that the caller may not see (kinds and ids of synthetic data)."""
        if caller.role in SEE_ALL or not response_text:
            return []
        named_cases = set(CASE.findall(response_text)) - {caller.case_id}
        named_rids = set(RID.findall(response_text)) - {caller.rid}
        named_subjects = set(SUBJECT.findall(response_text)) - {caller.subject}
        if not (named_cases or named_rids or named_subjects):
            return []
        with self._lock:
            cases, people = dict(self.cases), dict(self.people)
        found = [f"case {cid}" for cid in sorted(named_cases)
                 if cid in cases and cid not in request_text and not self.may_see(caller, cases[cid])]
        named_rids = {r for r in named_rids if r in people and r not in request_text}
        named_subjects = {s for s in named_subjects if s in self.subjects and s not in request_text}
        if named_rids or named_subjects:  # the people of the cases it may see are its to see
            visible = [c for c in cases.values() if self.may_see(caller, c)]
            named_rids -= {r for c in visible for r in (*c.rids, c.owner_rid)}
            named_subjects -= {c.owner_subject for c in visible}
            found += [f"resident id of {people[r]}" for r in sorted(named_rids)]
            found += [f"subject {s}" for s in sorted(named_subjects)]
        return found
