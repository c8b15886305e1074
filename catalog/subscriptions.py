"""Subscriptions as data (一处变更、多处联动): which department keeps a copy of which register fields.

`catalog/data/subscriptions.yaml` declares the master registers (company, person) with their
fields and, per department, the fields of each register it keeps. Everything here is pure:

    subs = load_subscriptions()
    subs.targets("company", {"name", "business_scope"})
    # {"bank": ("name",), "commerce": ("business_scope", "name"), "tax": (...), ...}

`targets` is the data-minimisation rule of the cascade: a department gets only the changed
fields it subscribes to, and a department none of whose fields changed gets nothing. Load
errors are reported like the rest of the catalog, every one with `file:line`.

What is personal is declared here too, once: a field's `pii: true` (sealed on every topic) and
a register's `subject` — whose data those fields are: `key` (the register key is the person's
token) or a resident_id field naming the natural person (the company's legal representative).
producers/register_changes.py seals by it; no consumer keeps its own list.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .loader import DEFAULT_ROOT, CatalogError, Problem, _display, read_yaml

__all__ = ["FIELD_TYPES", "RegisterField", "Register", "Subscription", "Subscriptions", "load_subscriptions",
           "SUBSCRIPTIONS_PATH", "SUBJECT_KEY"]

SUBSCRIPTIONS_PATH = DEFAULT_ROOT / "data" / "subscriptions.yaml"
DEPARTMENTS_PATH = DEFAULT_ROOT / "data" / "departments.yaml"
#: how a field's value is checked before it becomes an event (producers/register_values.py)
FIELD_TYPES = ("text", "uscc", "resident_id", "date", "amount", "enum", "region_code")
_ID = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class RegisterField:
    id: str
    zh: str
    en: str
    type: str
    options: tuple[str, ...] = ()
    max_length: int | None = None
    pii: bool = False


#: a register's `subject` when its personal fields are the register key's own (the person register)
SUBJECT_KEY = "key"


@dataclass(frozen=True)
class Register:
    code: str
    zh: str
    en: str
    key: str
    master: str | None  # the department that keeps the master register, if one does
    fields: Mapping[str, RegisterField] = field(default_factory=dict)
    #: whose personal data the `pii` fields are: `key` (the register key is the person's token), or
    #: the id of a resident_id field naming the natural person (the company's legal representative)
    subject: str = SUBJECT_KEY

    @property
    def personal_fields(self) -> frozenset[str]:
        """The fields sealed under the subject's data key on every topic (`pii: true`)."""
        return frozenset(f.id for f in self.fields.values() if f.pii)


@dataclass(frozen=True)
class Subscription:
    department: str
    register: str
    fields: frozenset[str]
    estimate: bool = False
    source: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Subscriptions:
    registers: Mapping[str, Register]
    subscriptions: tuple[Subscription, ...]

    def register(self, code: str) -> Register:
        try:
            return self.registers[code]
        except KeyError:
            raise KeyError(f"unknown register {code!r}") from None

    def fields_for(self, department: str, register: str) -> frozenset[str]:
        """The fields of `register` that `department` keeps a copy of (empty if none)."""
        for s in self.subscriptions:
            if s.department == department and s.register == register:
                return s.fields
        return frozenset()

    def departments(self, register: str | None = None) -> tuple[str, ...]:
        """Departments that keep a copy of `register` (of any register when None), sorted."""
        return tuple(sorted({s.department for s in self.subscriptions if register in (None, s.register)}))

    def targets(self, register: str, changed: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Department → the changed fields it subscribes to, sorted; departments with none are left out."""
        changed = frozenset(changed)
        out = {}
        for s in self.subscriptions:
            if s.register == register:
                mine = s.fields & changed
                if mine:
                    out[s.department] = tuple(sorted(mine))
        return dict(sorted(out.items()))

    def pair_count(self, register: str | None = None) -> int:
        """Department-field pairs kept in sync (上海 reports 77 data fields over 6 departments)."""
        return sum(len(s.fields) for s in self.subscriptions if register in (None, s.register))


# --- loading -------------------------------------------------------------------------------

def _known_departments(problems: list[Problem]) -> set[str]:
    doc = read_yaml(DEPARTMENTS_PATH, problems)
    return set(doc) if isinstance(doc, dict) else set()


def _at(m: Any, key: Any) -> int:
    return m.at(key) if hasattr(m, "at") else getattr(m, "line", 0)


def _text(m: Mapping, key: str) -> str | None:
    value = m.get(key)
    return value if isinstance(value, str) and value.strip() else None


def _load(path: Path, departments: set[str] | None) -> Subscriptions:
    problems: list[Problem] = []
    name = _display(path)

    def problem(line: int, message: str) -> None:
        problems.append(Problem(name, line, message))

    known = departments if departments is not None else _known_departments(problems)
    doc = read_yaml(path, problems)
    if not isinstance(doc, dict):
        if not problems:
            problem(0, "the file must be a mapping with `registers` and `subscriptions`")
        raise CatalogError(problems)
    for key in doc:
        if key not in ("registers", "subscriptions"):
            problem(_at(doc, key), f"unknown key {key!r} (allowed: registers, subscriptions)")

    registers: dict[str, Register] = {}
    regs = doc.get("registers")
    if not isinstance(regs, dict) or not regs:
        problem(_at(doc, "registers"), "`registers` must map each register code to its definition")
        regs = {}
    for code, rdef in regs.items():
        line = _at(regs, code)
        if not isinstance(code, str) or not _ID.fullmatch(code):
            problem(line, f"register code {code!r} must be lower_snake_case")
            continue
        if not isinstance(rdef, dict):
            problem(line, f"register {code}: must be a mapping")
            continue
        for key in rdef:
            if key not in ("zh", "en", "key", "master", "fields", "subject"):
                problem(_at(rdef, key), f"register {code}: unknown key {key!r}")
        texts = {k: _text(rdef, k) for k in ("zh", "en", "key", "master")}
        for k, v in texts.items():
            if v is None and k != "master":
                problem(line, f"register {code}: {k!r} must be non-empty text")
        if "master" in rdef and texts["master"] is None:
            problem(_at(rdef, "master"), f"register {code}: 'master' must name a department (or be left out)")
        if texts["master"] and texts["master"] not in known:
            problem(_at(rdef, "master"), f"register {code}: master {texts['master']!r} is not a department")
        fields: dict[str, RegisterField] = {}
        fdefs = rdef.get("fields")
        if not isinstance(fdefs, dict) or not fdefs:
            problem(_at(rdef, "fields"), f"register {code}: `fields` must map field ids to definitions")
            fdefs = {}
        for fid, fdef in fdefs.items():
            fline = _at(fdefs, fid)
            what = f"register {code}, field {fid}"
            if not isinstance(fid, str) or not _ID.fullmatch(fid):
                problem(fline, f"{what}: field ids are lower_snake_case")
                continue
            if not isinstance(fdef, dict):
                problem(fline, f"{what}: must be a mapping")
                continue
            for key in fdef:
                if key not in ("zh", "en", "type", "options", "max_length", "pii"):
                    problem(_at(fdef, key), f"{what}: unknown key {key!r}")
            ftype = fdef.get("type")
            if ftype not in FIELD_TYPES:
                problem(_at(fdef, "type"), f"{what}: type must be one of {', '.join(FIELD_TYPES)}")
            options = fdef.get("options") or []
            if ftype == "enum" and (not isinstance(options, list) or not options
                                    or not all(isinstance(o, str) and o for o in options)):
                problem(_at(fdef, "options"), f"{what}: an enum lists its options as non-empty text")
                options = []
            if ftype != "enum" and options:
                problem(_at(fdef, "options"), f"{what}: only an enum has options")
            max_length = fdef.get("max_length")
            if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                           or max_length < 1):
                problem(_at(fdef, "max_length"), f"{what}: max_length must be a whole number ≥ 1")
                max_length = None
            pii = fdef.get("pii", False)
            if not isinstance(pii, bool):
                problem(_at(fdef, "pii"), f"{what}: pii must be true or false")
                pii = False
            zh, en = _text(fdef, "zh"), _text(fdef, "en")
            if zh is None or en is None:
                problem(fline, f"{what}: zh and en labels are required")
            fields[fid] = RegisterField(fid, zh or fid, en or fid, ftype if ftype in FIELD_TYPES else "text",
                                        tuple(options), max_length, pii)
        subject = rdef.get("subject", SUBJECT_KEY)
        if subject != SUBJECT_KEY and (not isinstance(subject, str) or subject not in fields
                                       or fields[subject].type != "resident_id"):
            problem(_at(rdef, "subject"), f"register {code}: subject must be `{SUBJECT_KEY}` or one of its "
                                          "resident_id fields (whose personal data the pii fields are)")
            subject = SUBJECT_KEY
        registers[code] = Register(code, texts["zh"] or code, texts["en"] or code, texts["key"] or "",
                                   texts["master"], fields, subject)

    subscriptions: list[Subscription] = []
    subs = doc.get("subscriptions")
    if not isinstance(subs, dict) or not subs:
        problem(_at(doc, "subscriptions"), "`subscriptions` must map departments to their registers' fields")
        subs = {}
    for dept, per_register in subs.items():
        line = _at(subs, dept)
        if dept not in known:
            problem(line, f"subscriptions: {dept!r} is not a department (catalog/data/departments.yaml)")
            continue
        if not isinstance(per_register, dict) or not per_register:
            problem(line, f"subscriptions of {dept}: must map register codes to their fields")
            continue
        for code, sdef in per_register.items():
            sline = _at(per_register, code)
            what = f"subscription {dept}/{code}"
            reg = registers.get(code)
            if reg is None:
                problem(sline, f"{what}: unknown register {code!r}")
                continue
            if reg.master is not None and reg.master == dept:
                problem(sline, f"{what}: {dept} keeps the master register; it does not subscribe to it")
            if not isinstance(sdef, dict):
                problem(sline, f"{what}: must be a mapping with `fields`")
                continue
            for key in sdef:
                if key not in ("fields", "estimate", "source", "note"):
                    problem(_at(sdef, key), f"{what}: unknown key {key!r}")
            flist = sdef.get("fields")
            if not isinstance(flist, list) or not flist:
                problem(_at(sdef, "fields"), f"{what}: `fields` must list at least one field")
                continue
            seen: set[str] = set()
            for i, fid in enumerate(flist):
                fline = flist.at(i) if hasattr(flist, "at") else sline
                if fid not in reg.fields:
                    problem(fline, f"{what}: {fid!r} is not a field of the {code} register")
                elif fid in seen:
                    problem(fline, f"{what}: {fid!r} is listed twice")
                seen.add(fid)
            estimate = sdef.get("estimate", False)
            if not isinstance(estimate, bool):
                problem(_at(sdef, "estimate"), f"{what}: estimate must be true or false")
                estimate = True
            source, note = _text(sdef, "source"), _text(sdef, "note")
            if source is None and not (estimate and note):
                problem(sline, f"{what}: give a `source`, or mark it `estimate: true` with a `note`")
            subscriptions.append(Subscription(dept, code, frozenset(f for f in seen if f in reg.fields),
                                              estimate, source, note))
    if problems:
        raise CatalogError(problems)
    return Subscriptions(registers, tuple(subscriptions))


@lru_cache(maxsize=4)
def _cached(path: str) -> Subscriptions:
    return _load(Path(path), None)


def load_subscriptions(path: str | Path | None = None, *, departments: Iterable[str] | None = None) -> Subscriptions:
    """Load and check the subscriptions (the package's own file by default; parsed once per process)."""
    if departments is not None:
        return _load(Path(path or SUBSCRIPTIONS_PATH), set(departments))
    return _cached(str(Path(path or SUBSCRIPTIONS_PATH).resolve()))
