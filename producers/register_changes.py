"""Register changes, pure: what a change may say, how it is checked, and how a register folds.

A register change is a fact from a master register (一处变更), keyed by the register key:
the USCC for the company register, a pseudonymous person token for the person register.
It is checked here BEFORE it becomes an event; every problem names the field and says why,
and no message ever repeats the value (it may be a name or a resident ID). One value's check and
the words of every problem are in producers/register_values.py.

Change kinds (`KINDS`):

| register | kind | 中文 | sets |
|---|---|---|---|
| company | registered | 设立登记 (or bringing an entity into the register) | every registration item, status=active |
| company | changed | 变更登记 | name, address, legal representative (name and ID together), business scope, registered capital, type |
| company | deregistered | 注销登记 | deregistered_on, status=deregistered |
| company | converted_to_company | 个转企, on the individual business | successor_uscc, converted_on, status=converted |
| company | registered_by_conversion | 个转企, on the new company | the new registration + the old one's business years (established_on) and credit record (credit_rating), predecessor_uscc |
| person | household_moved | 户口迁移 | household address, region, date |
| person | died | 死亡: the start of 公民身后 | date_of_death, certificate, status=deceased |

`fold` is the master register itself: the register's copy is the fold of its topic, so it can
be rebuilt from the log at any time (market regulation's copy of the company register).

Personal values. The fields `catalog/data/subscriptions.yaml` marks `pii: true` (a person's
household address and death certificate number; a company's legal representative's name and
resident ID) travel sealed (events/personal.py) under the data key of the register's `subject`:
`sealing_subject` says whose, `seal_changes` seals, `key_holders` names the departments the
cascade will send a sealed value to (they are granted the key). Kinds, dates, codes, the status
and the register key stay clear: the cascade routes, the rules trigger and the fold orders on
them. The fold copies values as they are, so the master entry and its rebuild from the log hold
the same ciphertext; a value written before sealing is read as it is.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from catalog.subscriptions import SUBJECT_KEY, Register, Subscriptions, load_subscriptions
from catalog.validators import check_resident_id, check_uscc
from events import personal
from events.envelope import Actor, Event, new_event
from producers import identity
# MESSAGES, ChangeRefused and Problem stay importable from here (`__all__`): the API, the CLI and the tests do
from producers.register_values import MESSAGES, ChangeRefused, Problem, check_value, problem

COMPANY, PERSON = "company", "person"
EVENT_TYPE = "RegisterChanged"

__all__ = ["COMPANY", "PERSON", "KINDS", "ChangeKind", "ChangeRefused", "Problem", "RegisterRecord",
           "validate_change", "check_key", "conversion_changes", "change_event", "fold", "fold_all",
           "region_of", "check_logged", "MESSAGES", "sealing_subject", "seal_changes", "key_holders"]

# entity class: the 2nd character of a USCC registered by market regulation (GB 32100 table 2)
_ENTITY_CLASS = {"1": "company", "2": "individual_business", "3": "cooperative"}


@dataclass(frozen=True)
class ChangeKind:
    register: str
    code: str
    zh: str
    en: str
    allowed: frozenset[str]
    required: frozenset[str] = frozenset()
    implied: Mapping[str, str] = field(default_factory=dict)
    new_record: bool = False          # the key must not be in the register yet
    together: tuple[frozenset[str], ...] = ()


_ITEMS = frozenset({"name", "address", "legal_representative_name", "legal_representative_resident_id",
                    "business_scope", "registered_capital", "company_type"})
_LEGAL_REP = frozenset({"legal_representative_name", "legal_representative_resident_id"})
KINDS: dict[tuple[str, str], ChangeKind] = {(k.register, k.code): k for k in (
    ChangeKind(COMPANY, "registered", "设立登记", "Registration",
               _ITEMS | {"established_on", "credit_rating"}, _ITEMS | {"established_on"},
               {"status": "active"}, new_record=True),
    ChangeKind(COMPANY, "changed", "变更登记", "Change of registration", _ITEMS, together=(_LEGAL_REP,)),
    ChangeKind(COMPANY, "deregistered", "注销登记", "Deregistration", frozenset({"deregistered_on"}),
               frozenset({"deregistered_on"}), {"status": "deregistered"}),
    ChangeKind(COMPANY, "converted_to_company", "个体工商户转型为企业（原主体）",
               "Individual business converted into a company (old entity)",
               frozenset({"successor_uscc", "converted_on"}), frozenset({"successor_uscc", "converted_on"}),
               {"status": "converted"}),
    ChangeKind(COMPANY, "registered_by_conversion", "个体工商户转型为企业（新企业）",
               "Company registered by converting an individual business",
               _ITEMS | {"predecessor_uscc", "converted_on", "established_on", "credit_rating"},
               _ITEMS | {"predecessor_uscc", "converted_on", "established_on"},
               {"status": "active"}, new_record=True),
    ChangeKind(PERSON, "household_moved", "户口迁移", "Household registration moved",
               frozenset({"household_address", "household_region_code", "household_moved_on"}),
               frozenset({"household_address", "household_region_code", "household_moved_on"})),
    ChangeKind(PERSON, "died", "死亡登记", "Death", frozenset({"date_of_death", "death_certificate_no"}),
               frozenset({"date_of_death"}), {"status": "deceased"}),
)}


@dataclass(frozen=True)
class RegisterRecord:
    """One entry of a master register: its fields after the change numbered `sequence`."""
    register: str
    key: str
    sequence: int = 0
    fields: Mapping[str, str | None] = field(default_factory=dict)
    last_event_id: str | None = None

    @property
    def exists(self) -> bool:
        return self.sequence > 0

    def to_json(self) -> dict[str, Any]:
        return {"register": self.register, "key": self.key, "sequence": self.sequence,
                "fields": dict(self.fields), "last_event_id": self.last_event_id}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RegisterRecord":
        return cls(data["register"], data["key"], int(data.get("sequence", 0)), dict(data.get("fields") or {}),
                   data.get("last_event_id"))


# --- values --------------------------------------------------------------------------------

def check_key(register: str, raw_key: Any, *, today: date | None = None) -> Problem | None:
    """The register key as typed: a USCC of a market entity, or an 18-character resident ID."""
    if raw_key is None or raw_key == "":
        code = "required"
    elif register == COMPANY:
        code = check_uscc(raw_key)
        if code is None and raw_key[0] != "9":
            code = "uscc.not_market_entity"
        if code is None and raw_key[1] not in _ENTITY_CLASS:
            code = "uscc.entity_class"
    elif register == PERSON:
        code = check_resident_id(raw_key, today=today)
    else:
        return problem("register", "change.unknown_register")
    label = ("统一社会信用代码", "USCC") if register == COMPANY else ("公民身份号码", "Resident ID")
    return problem("key", code, label) if code else None


def _entity_class_ok(uscc: str, company_type: str) -> bool:
    cls = _ENTITY_CLASS.get(uscc[1])
    if company_type in ("individual_business", "cooperative"):
        return cls == company_type
    return cls == "company"


# --- the check -----------------------------------------------------------------------------

def validate_change(register: str, change_kind: str, changes: Mapping[str, Any] | None, *, raw_key: str,
                    current: RegisterRecord | None = None, subscriptions: Subscriptions | None = None,
                    today: date | None = None) -> dict[str, str | None]:
    """The changes to write (normalised, with the kind's implied fields), or ChangeRefused.

    `current` is the register entry as it stands (None or not `exists` when unknown).
    Every problem of the change is reported at once.
    """
    subs = subscriptions or load_subscriptions()
    today = today or date.today()
    problems: list[Problem] = []
    if register not in subs.registers:
        raise ChangeRefused([problem("register", "change.unknown_register")])
    kind = KINDS.get((register, change_kind))
    if kind is None:
        raise ChangeRefused([problem("change_kind", "change.unknown_kind")])
    reg = subs.register(register)
    key_problem = check_key(register, raw_key, today=today)
    if key_problem:
        problems.append(key_problem)
    if not isinstance(changes, Mapping):
        raise ChangeRefused(problems + [problem("changes", "change.empty")])

    out: dict[str, str | None] = {}
    for fid, value in changes.items():
        path = f"changes.{fid}" if isinstance(fid, str) and len(fid) <= 64 else "changes"
        f = reg.fields.get(fid) if isinstance(fid, str) else None
        if f is None:
            problems.append(problem(path, "change.unknown_field"))
            continue
        label = (f.zh, f.en)
        if fid not in kind.allowed:
            problems.append(problem(path, "change.not_allowed", label))
            continue
        if value is None:
            problems.append(problem(path, "required" if fid in kind.required else "change.cannot_clear", label))
            continue
        normalised, code = check_value(f, value, today)
        if code:
            problems.append(problem(path, code, label))
            continue
        out[fid] = normalised
    given = {k for k in changes if isinstance(k, str)}
    for fid in sorted(kind.required - given):
        f = reg.fields[fid]
        problems.append(problem(f"changes.{fid}", "required", (f.zh, f.en)))
    for group in kind.together:
        if group & given and not group <= given:
            for fid in sorted(group - given):
                problems.append(problem(f"changes.{fid}", "change.together"))
    if not changes and not kind.required:
        problems.append(problem("changes", "change.empty"))

    exists = current is not None and current.exists
    fields = current.fields if exists else {}
    if not key_problem:
        if kind.new_record and exists:
            problems.append(problem("key", "register.already_registered"))
        if not kind.new_record and register == COMPANY and not exists:
            problems.append(problem("key", "register.unknown_key"))
        if register == COMPANY and exists and not kind.new_record and fields.get("status") != "active":
            problems.append(problem("key", "register.not_active"))
        if register == PERSON and fields.get("status") == "deceased":
            problems.append(problem("key", "person.deceased"))
        if register == COMPANY and "company_type" in out and not _entity_class_ok(raw_key, out["company_type"]):
            problems.append(problem("changes.company_type", "uscc.entity_class"))
    for fid in ("deregistered_on", "converted_on"):
        established = fields.get("established_on")
        if fid in out and established and out[fid] < established:
            problems.append(problem(f"changes.{fid}", "date.before_established"))
    if problems:
        raise ChangeRefused(problems)

    if change_kind == "changed":
        out = {k: v for k, v in out.items() if fields.get(k) != v}
        if not out:
            raise ChangeRefused([problem("changes", "change.nothing_changed")])
    out.update(kind.implied)
    return dict(sorted(out.items()))


def conversion_changes(sole_trader: RegisterRecord | None, sole_trader_uscc: str, company_uscc: str,
                       company_fields: Mapping[str, Any], converted_on: str, *,
                       subscriptions: Subscriptions | None = None,
                       today: date | None = None) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """个转企: the changes of the old individual business and of the new company.

    The new company inherits the old one's business years (`established_on`) and credit
    record (`credit_rating`) from the register, never from the caller, so every department
    receives the same inherited values the register holds.
    """
    problems: list[Problem] = []
    for path, raw, label in (("key", sole_trader_uscc, ("原个体工商户代码", "Individual business USCC")),
                             ("company_uscc", company_uscc, ("新企业代码", "New company USCC"))):
        p = check_key(COMPANY, raw)
        if p:
            problems.append(Problem(path, p.code, p.message_zh.replace("统一社会信用代码", label[0]),
                                    p.message_en.replace("USCC", label[1])))
    if problems:
        raise ChangeRefused(problems)
    if sole_trader_uscc == company_uscc:
        raise ChangeRefused([problem("company_uscc", "conversion.same_code")])
    if sole_trader_uscc[1] != "2":
        problems.append(problem("key", "conversion.not_individual_business"))
    if company_uscc[1] != "1":
        problems.append(problem("company_uscc", "conversion.not_company"))
    for fid in ("established_on", "credit_rating", "predecessor_uscc"):
        if fid in company_fields:
            problems.append(problem(f"changes.{fid}", "conversion.inherited"))
    if problems:
        raise ChangeRefused(problems)
    old = validate_change(COMPANY, "converted_to_company",
                          {"successor_uscc": company_uscc, "converted_on": converted_on},
                          raw_key=sole_trader_uscc, current=sole_trader, subscriptions=subscriptions, today=today)
    inherited = {"predecessor_uscc": sole_trader_uscc, "converted_on": converted_on,
                 "established_on": sole_trader.fields.get("established_on")}
    if sole_trader.fields.get("credit_rating"):
        inherited["credit_rating"] = sole_trader.fields["credit_rating"]
    new = validate_change(COMPANY, "registered_by_conversion", {**company_fields, **inherited},
                          raw_key=company_uscc, current=None, subscriptions=subscriptions, today=today)
    return old, new


def region_of(register: str, raw_key: str, changes: Mapping[str, Any], current: RegisterRecord | None) -> str:
    """The 行政区划代码 an event is routed by: the USCC's registration region (characters 3-8), or
    the person's household region (else the region prefix of the resident ID)."""
    if register == COMPANY:
        return raw_key[2:8]
    region = changes.get("household_region_code") or (current.fields.get("household_region_code")
                                                     if current else None)
    return region or raw_key[:6]


def change_event(register: str, key: str, change_kind: str, changes: Mapping[str, str | None], *,
                 sequence: int, actor: Actor, region_code: str, event_id: str | None = None,
                 correlation_id: str | None = None) -> Event:
    return new_event(EVENT_TYPE, key, {"register": register, "change_kind": change_kind, "changes": dict(changes)},
                     actor=actor, region_code=region_code, sequence=sequence, event_id=event_id,
                     correlation_id=correlation_id)


# --- personal values -----------------------------------------------------------------------

def _given(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def sealing_subject(reg: Register, key: str, changes: Mapping[str, str | None],
                    current: Mapping[str, str | None]) -> str | None:
    """The data subject whose key seals this change's personal values, or None when it carries
    none: the register key itself (the person register's key is the person's token), or the
    token of the natural person the register's `subject` field names — in the change, else in the
    entry as it stands (`current`, opened). Refused, naming that field, when nobody is named."""
    if not any(_given(changes.get(f)) for f in reg.personal_fields):
        return None
    if reg.subject == SUBJECT_KEY:
        return key
    rid = changes.get(reg.subject) or current.get(reg.subject)
    if not _given(rid) or personal.is_sealed(rid) or rid == personal.ERASED:
        f = reg.fields[reg.subject]
        raise ChangeRefused([problem(f"changes.{reg.subject}", "required", (f.zh, f.en))])
    return identity.subject_token(rid)


def seal_changes(reg: Register, changes: Mapping[str, str | None], key: bytes, key_id: str) -> dict[str, str | None]:
    """`changes` (as validated: what a register typed, never trusted as ciphertext, even if it looks
    like one) with every personal value sealed under (key_id, key), the field bound in; the rest
    and cleared fields as they are."""
    mine = reg.personal_fields
    return {k: personal.seal(key, key_id, k, v) if k in mine and _given(v) else v
            for k, v in changes.items()}


def key_holders(subs: Subscriptions, register: str, changes: Mapping[str, str | None]) -> tuple[str, ...]:
    """The departments the cascade sends a sealed value of `changes` to (their subscribed share of
    it holds one): each gets the subject's key, wrapped to its own public key."""
    return tuple(d for d, fields in subs.targets(register, changes).items()
                 if any(personal.is_sealed(changes.get(f)) for f in fields))


# --- the master register -------------------------------------------------------------------

_TOPICS = {COMPANY: "registry.company", PERSON: "registry.person"}


def check_logged(event: Event, topic: str, subscriptions: Subscriptions | None = None) -> str | None:
    """Why a message on a register topic is not a register change (a dead-letter reason), or None.
    Only what passes counts: the cascade dead-letters the rest, and the master fold skips it.
    Reasons name fields only by count and never quote values."""
    subs = subscriptions or load_subscriptions()
    if event.type != EVENT_TYPE:
        return f"unexpected event type {event.type[:60]} on a register topic"
    p = event.payload
    register = p.get("register")
    if register not in subs.registers:
        return "unknown register"
    if _TOPICS.get(register) != topic:
        return f"a {register} change on the wrong topic"
    changes = p.get("changes") or {}
    if not changes:
        return "a change without fields"
    unknown = [f for f in changes if f not in subs.register(register).fields]
    if unknown:
        return f"{len(unknown)} field(s) not in the {register} register"
    if event.envelope.sequence < 1:
        return "a register change has a sequence of 1 or more"
    return None


def fold(record: RegisterRecord | None, event: Event) -> RegisterRecord:
    """Apply one RegisterChanged to its entry. A repeat (same or older sequence) changes nothing."""
    seq = event.envelope.sequence
    if record is not None and seq <= record.sequence:
        return record
    fields = dict(record.fields) if record else {}
    fields.update(event.payload["changes"])
    return RegisterRecord(event.payload["register"], event.key, seq, fields, event.id)


def fold_all(events: Iterable[Event], topic: str | None = None) -> dict[tuple[str, str], RegisterRecord]:
    """A whole register (or several) from its log: (register, key) → entry. Messages that are not
    valid register changes (`check_logged`; on `topic` when given) are skipped, as the cascade skips them."""
    out: dict[tuple[str, str], RegisterRecord] = {}
    subs = load_subscriptions()
    for ev in events:
        register = ev.payload.get("register") if ev.type == EVENT_TYPE else None
        if check_logged(ev, topic or _TOPICS.get(register, ""), subs):
            continue
        k = (ev.payload["register"], ev.key)
        out[k] = fold(out.get(k), ev)
    return out
