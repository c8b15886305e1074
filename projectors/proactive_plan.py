"""What a life-event rule calls for, pure: trigger dates, eligibility, ids, windows and the events.

The proactive processor (projectors/proactive.py) reads the facts (register events, decisions, the
e-licence data) and asks these functions what follows; nothing here touches Kafka or PostgreSQL,
so the rules' arithmetic is tested in milliseconds (tests/test_proactive_rules.py).

Why these choices:
- An item's id is a name-based UUID of (rule, subject, trigger key) — not of the event that
  carried the trigger — so a replay of the registers, a second daily scan, or the same birthday
  seen by two members all name ONE item; a declined or lapsed item keeps its id, so the same
  trigger is never offered again.
- A date trigger is acted on from `days_before` ahead of the date until `CATCH_UP_DAYS` after
  it: a scan missed while the process was down (or a holiday: the scan runs on working days
  only) still finds it, and a person who turned 80 years ago is not suddenly offered anything.
- Windows are working days (catalog/working_days.py): an offer lapses `window_days` working days
  after it opens (快申快享: 60), a grant may be declined until `window_days` working days after
  it was made; the day itself not counted, as for every limit.
- A birthday on 29 February falls on 28 February in a common year (the person is that age by
  the end of February).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from catalog import retirement_age
from catalog.proactive_rules import CATCH_UP_DAYS, ListItem, Rule, Trigger
from catalog.working_days import WorkingCalendar, add_working_days
from events.envelope import SYSTEM, Event, derived_event_id, new_event, now_utc

ID_NAMESPACE = "proactive"


def item_id(rule: str, subject: str, trigger_key: str) -> str:
    """The one id of what `rule` does for `subject` on `trigger_key`, however often it is derived."""
    return derived_event_id(ID_NAMESPACE, rule, subject, trigger_key)


def add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February in a common year
        return d.replace(year=d.year + years, day=28)


def parse_date(value: Any) -> date | None:
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def age_for(trigger: Trigger, sex: str | None, job: str | None) -> int | None:
    """The age at which `trigger` fires for a person of this sex and job type (None: not at all)."""
    if trigger.years is not None:
        return trigger.years
    by_sex = trigger.age_by.get(sex or "")
    if by_sex is None:
        return None
    if isinstance(by_sex, int):
        return by_sex
    return by_sex.get(job) if job in by_sex else by_sex.get(trigger.default_job)


def trigger_date(trigger: Trigger, data: Mapping[str, Any]) -> date | None:
    """The date a date trigger names for one licence: a birthday at an age, or the date itself."""
    base = parse_date(data.get(trigger.field or ""))
    if base is None:
        return None
    if trigger.retirement_age:   # the 2025 reform's age by birth month, sex and job type
        sex = data.get("sex")
        if sex not in retirement_age.SEXES:
            return None
        job = data.get(trigger.job_field) if trigger.job_field else None
        return retirement_age.retirement_date(base, sex, job if job in retirement_age.JOB_TYPES
                                              else trigger.default_job)
    if trigger.years is None and not trigger.age_by:
        return base
    age = age_for(trigger, data.get("sex"), data.get(trigger.job_field) if trigger.job_field else None)
    return add_years(base, age) if age is not None else None


def act_from(trigger: Trigger, on: date) -> date:
    return on - timedelta(days=trigger.days_before)


def due(trigger: Trigger, on: date, today: date, catch_up_days: int = CATCH_UP_DAYS) -> bool:
    """Whether a scan on `today` acts on a trigger date `on`."""
    return act_from(trigger, on) <= today <= on + timedelta(days=catch_up_days)


def date_trigger_key(on: date) -> str:
    return f"date:{on.isoformat()}"


@dataclass(frozen=True)
class Facts:
    """What the government holds about the recipient, as the conditions ask it."""
    applied: frozenset[str] = frozenset()        # services the person has applied for
    licences: frozenset[str] = frozenset()       # e-licence kinds the person holds
    deceased: bool = False


def eligible(rule: Rule, facts: Facts) -> bool:
    for c in rule.conditions:
        if c.not_applied and set(c.not_applied) <= facts.applied:
            return False   # everything it would do was applied for already
        if c.licence and c.licence not in facts.licences:
            return False
        if c.not_deceased and facts.deceased:
            return False
    return True


def wanted_services(rule: Rule, facts: Facts) -> tuple[str, ...]:
    """For a grant standing for a catalog service: nothing when it was applied for."""
    return tuple(s for c in rule.conditions for s in c.not_applied if s not in facts.applied)


def list_items(rule: Rule, expiries: Mapping[str, date | None], on: date) -> list[ListItem]:
    """The pre-service list for a person: every item, except those conditioned on a licence that
    does not expire before the event (an ID card valid past the discharge needs no new card)."""
    out = []
    for it in rule.outcome.items:
        if it.expires_before_trigger:
            until = expiries.get(it.expires_before_trigger)
            if until is not None and until > on:
                continue
        out.append(it)
    return out


def register_matches(trigger: Trigger, payload: Mapping[str, Any]) -> bool:
    if payload.get("register") != trigger.register or payload.get("change_kind") != trigger.change_kind:
        return False
    changes = payload.get("changes") or {}
    return not trigger.fields_any or any(f in changes for f in trigger.fields_any)


def decision_matches(trigger: Trigger, payload: Mapping[str, Any]) -> bool:
    return (payload.get("kind", "case_service") == "case_service" and payload.get("service_id") == trigger.service
            and payload.get("outcome") == trigger.outcome)


@dataclass(frozen=True)
class Plan:
    """One item to make: everything its row and its event say."""
    item_id: str
    rule: Rule
    recipient: str
    subject: str
    trigger_kind: str
    trigger_key: str
    trigger_on: date | None
    made_on: date
    available_on: date
    closes_on: date
    region_code: str
    services: tuple[str, ...] = ()
    prefilled_fields: tuple[str, ...] = ()
    items: tuple[ListItem, ...] = ()
    presets: dict[str, str] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        return self.rule.outcome.kind

    @property
    def event_type(self) -> str:
        return "BenefitGranted" if self.outcome == "grant" else "ServiceOffered"

    @property
    def state(self) -> str:
        return "granted" if self.outcome == "grant" else "offered"


def plan(rule: Rule, *, subject: str, recipient: str, trigger_kind: str, trigger_key: str, trigger_on: date | None,
         today: date, region_code: str, services: Iterable[str] = (), prefilled_fields: Iterable[str] = (),
         items: Iterable[ListItem] = (), calendar: WorkingCalendar | None = None) -> Plan:
    """The item `rule` makes today. A pre-service list opens on the event's day (prepared ahead);
    everything else opens today. Its window counts working days from the day it opens."""
    opens = trigger_on if rule.outcome.kind == "pre_service" and trigger_on and trigger_on > today else today
    closes = add_working_days(opens, rule.outcome.window_days, calendar)
    return Plan(item_id(rule.code, subject, trigger_key), rule, recipient, subject, trigger_kind, trigger_key,
                trigger_on, today, opens, closes, region_code, tuple(services), tuple(sorted(prefilled_fields)),
                tuple(items), dict(rule.outcome.presets))


def item_event(p: Plan, cause: Event | None = None) -> Event:
    """ServiceOffered or BenefitGranted, keyed by the recipient, its id derived from the item's."""
    r = p.rule
    common = {"offer_id": p.item_id, "rule": r.code, "subject_token": p.subject, "trigger_kind": p.trigger_kind,
              "trigger_key": p.trigger_key, "trigger_on": p.trigger_on}
    if p.outcome == "grant":
        b = r.outcome.benefit
        payload = {**common, "department": r.outcome.department, "service_id": r.outcome.service,
                   "benefit_code": b.code, "benefit_zh": b.zh, "benefit_en": b.en, "granted_on": p.made_on,
                   "decline_until": p.closes_on}
    else:
        payload = {**common, "outcome": p.outcome, "bundle_code": r.bundle, "services": list(p.services),
                   "prefilled_fields": list(p.prefilled_fields), "presets": dict(p.presets),
                   "items": [{"service_id": i.service, "reason_zh": i.zh, "reason_en": i.en} for i in p.items],
                   "offered_on": p.made_on, "available_on": p.available_on, "lapses_on": p.closes_on}
    return new_event(p.event_type, p.recipient, payload, actor=SYSTEM, region_code=p.region_code,
                     cause=cause, event_id=derived_event_id(p.item_id, p.event_type),
                     correlation_id=None if cause else p.item_id, occurred_at=now_utc())


def lapsed_event(offer_id: str, rule: str, recipient: str, region_code: str, lapsed_on: date) -> Event:
    return new_event("OfferLapsed", recipient, {"offer_id": offer_id, "rule": rule, "lapsed_on": lapsed_on},
                     actor=SYSTEM, region_code=region_code, correlation_id=offer_id,
                     event_id=derived_event_id(offer_id, "OfferLapsed"))


DECLINE_REASONS = ("not_needed", "done_elsewhere", "wrong_person", "other")

# -- a grant told to its department (免申即享: "the department told") -------------------------------
GRANT_KIND = "benefit_grant"   # onething.TaskKind
GRANT_TASK_PREFIX = "grant:"


@dataclass(frozen=True)
class Grant:
    """What the department needs to execute a grant: ids, codes, dates and the beneficiary's
    pseudonymous token (the person register's key, which a department's register copy is keyed by)
    — no personal value."""
    item_id: str
    rule: str
    department: str
    service_id: str | None
    benefit_code: str
    subject: str
    trigger_kind: str
    trigger_key: str
    granted_on: date
    decline_until: date
    region_code: str


def grant_task_id(item_id: str) -> str:
    return GRANT_TASK_PREFIX + item_id


def grant_service_id(department: str, service_id: str | None, benefit_code: str) -> str:
    """The catalog service the grant stands for, else `<department>.<benefit code>` (高龄津贴 has no
    catalog service): always one of the department's own ids, as the decision authority asks."""
    return service_id or f"{department}.{benefit_code}"


def grant_task(g: Grant) -> Event:
    """The grant as a task on `tasks.<department>`: a TaskDispatched of kind `benefit_grant`, keyed
    by the grant (its item id), task id `grant:<item id>`, event id derived from the item — so a
    replay, a second tick or a restarted member sends the very same event, which the SDK drops."""
    fields = {"grant_id": g.item_id, "rule": g.rule, "benefit_code": g.benefit_code, "beneficiary_token": g.subject,
              "granted_on": g.granted_on.isoformat(),
              "decline_until": g.decline_until.isoformat(), "region_code": g.region_code}
    if g.trigger_kind == "decision":   # the case whose decision granted it (a birth's registration)
        fields["case_id"] = g.trigger_key.rsplit(":", 1)[0]
    payload = {"task_id": grant_task_id(g.item_id), "department": g.department,
               "service_id": grant_service_id(g.department, g.service_id, g.benefit_code), "kind": GRANT_KIND,
               "fields": fields, "materials": [], "inputs": {}, "due_date": None}
    return new_event("TaskDispatched", g.item_id, payload, actor=SYSTEM, region_code=g.region_code,
                     correlation_id=g.item_id, event_id=derived_event_id(g.item_id, "TaskDispatched"))


def grant_cancelled(g: Grant) -> Event:
    """A grant declined within its window but folded after its task was sent: the task withdrawn."""
    payload = {"task_id": grant_task_id(g.item_id), "department": g.department,
               "service_id": grant_service_id(g.department, g.service_id, g.benefit_code),
               "reason": "declined by the recipient within the window", "kind": GRANT_KIND}
    return new_event("TaskCancelled", g.item_id, payload, actor=SYSTEM, region_code=g.region_code,
                     correlation_id=g.item_id, event_id=derived_event_id(g.item_id, "TaskCancelled"))


def is_grant_answer(payload: Mapping[str, Any]) -> bool:
    return payload.get("kind") == GRANT_KIND and str(payload.get("task_id") or "").startswith(GRANT_TASK_PREFIX)
