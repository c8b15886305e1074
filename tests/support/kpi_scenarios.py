"""Scenarios for the KPIs read model's tests (tests/test_kpis.py, tests/test_kpi_api.py,
tests/test_kpi_rules.py): case logs folded by the dispatch processor's own function (`case_state`),
so task ids, due dates and completions are the ones the dispatch processor derives; the manager's
week of five newborn cases, a few hundred synthetic events, and `at`, a moment in Beijing time.
"""
from __future__ import annotations

import random
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

from catalog.loader import load_catalog
from catalog.working_days import add_working_days
from events.envelope import Actor, Event, new_event
from projectors import case_state
from projectors import kpis as K

from .newborn import submission

CAT = load_catalog()
CHINA = timezone(timedelta(hours=8))
DAY0 = date(2026, 6, 1)  # a Monday; 2026-06-08 is the 5th working day after it (端午 is 06-19)
APPLICANT = Actor("p_test_applicant", "applicant", "online")


def at(day: date, hour: int = 10, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=CHINA).astimezone(timezone.utc)


# -- scenarios folded by the dispatch processor's own function ---------------------------------------
class Clock:
    def __init__(self, start: datetime):
        self.t = start

    def __call__(self) -> datetime:
        self.t += timedelta(minutes=1)
        return self.t

    def jump(self, day: date) -> None:
        self.t = max(self.t, at(day))


def decision(task: Event, outcome: str, when: datetime, **kw) -> Event:
    p = task.payload
    outputs = {o: f"{o.upper()}-{task.key[-6:]}" for o in CAT.service(p["service_id"]).produces} \
        if outcome == "approved" else {}
    return new_event("DecisionRecorded", task.key,
                     {"task_id": p["task_id"], "department": p["department"], "service_id": p["service_id"],
                      "kind": "case_service", "outcome": outcome, "reason": kw.get("reason"),
                      "missing_materials": list(kw.get("missing", ())), "outputs": outputs},
                     actor=Actor(f"staff_{p['department']}", "department", "department"),
                     region_code=task.envelope.region_code, cause=task, occurred_at=when)


def case_log(case_id: str, *, day0: date = DAY0, region: str = "440203", slow: dict[str, date] | None = None,
             correction: tuple[str, date] | None = None, reject: str | None = None,
             withdraw_after: int | None = None, rating: str | None = None, service_grades=None) -> list[Event]:
    """One case's log in the order the system writes it. `slow`: service → the day its decision
    waits for; `correction`: (service, day of the supplement) for a 补正 of its first attempt;
    `reject`: a service refused; `withdraw_after`: decisions before the applicant withdraws."""
    clock = Clock(at(day0))
    sub = submission(case_id)
    sub = replace(sub, envelope=replace(sub.envelope, occurred_at=clock(), region_code=region))
    state, out = case_state.start(sub, CAT)
    log, queue, decided = [sub, *out], [e for e in out if e.type == "TaskDispatched"], 0

    def fold(event: Event) -> None:
        nonlocal state
        state, derived = case_state.step(state, event, CAT)
        log.extend([event, *derived])
        queue.extend(e for e in derived if e.type == "TaskDispatched")

    while queue and not state.done:
        task = queue.pop(0)
        sid = task.payload["service_id"]
        if slow and sid in slow:
            clock.jump(slow[sid])
        fold(decision(task, "accepted", clock()))
        if correction and sid == correction[0] and task.payload["task_id"].endswith(":1"):
            fold(decision(task, "correction_requested", clock(), missing=["marriage_certificate"]))
            clock.jump(correction[1])
            fold(new_event("MaterialsSupplemented", case_id,
                           {"materials": [{"code": "marriage_certificate", "source": "uploaded", "ref": "doc-m"}],
                            "form": {}}, actor=APPLICANT, region_code=region, occurred_at=clock()))
        else:
            fold(decision(task, "rejected" if sid == reject else "approved", clock()))
        decided += 1
        if decided == withdraw_after:
            fold(new_event("ApplicationWithdrawn", case_id, {"reason": None}, actor=APPLICANT, region_code=region,
                           occurred_at=clock()))
            break
    if rating and state.done:
        fold(new_event("CaseRated", case_id, {"rating_id": f"r-{case_id}", "grade": rating, "comment": None,
                                              "services": [{"service_id": s, "grade": g, "comment": None}
                                                           for s, g in (service_grades or {}).items()]},
                       actor=APPLICANT, region_code=region, occurred_at=clock()))
    return log


def breach(case_id: str, scope: str, subject: str | None, department: str | None, due: date,
           region: str = "440203") -> Event:
    return new_event("DeadlineBreached", case_id,
                     {"scope": scope, "subject_id": subject, "department": department, "task_id": None,
                      "due_date": due, "working_days_overdue": 1},
                     region_code=region, occurred_at=at(due + timedelta(days=1), 0, 5))


def escalation(case_id: str, origin: str, when: datetime, service: str | None = None,
               department: str | None = None) -> Event:
    return new_event("CaseEscalated", case_id,
                     {"escalation_id": f"esc-{case_id}-{origin}", "origin": origin, "reason": "overdue",
                      "service_id": service, "department": department, "comment": None},
                     actor=APPLICANT if origin == "applicant" else Actor("onething"), region_code="440203",
                     occurred_at=when)


def manager_week(prefix: str) -> tuple[list[Event], dict[str, str]]:
    """Five newborn applications received on Monday 2026-06-01 (promised: 5 working days, due 06-08):
    A done the same day, B on 06-03, C on 06-10 after a 3-working-day 补正 (due pushed to 06-11),
    D on 06-10 (late), E withdrawn. Three of the four judged are on time: 75 %."""
    ids = {k: f"{prefix}-{k}" for k in "ABCDE"}
    events = [
        *case_log(ids["A"], rating="very_satisfied"),
        *case_log(ids["B"], slow={"tax.newborn_premium": date(2026, 6, 3)}, rating="satisfied"),
        *case_log(ids["C"], correction=("police.birth_registration", date(2026, 6, 4)),
                  slow={"tax.newborn_premium": date(2026, 6, 10)}),
        *case_log(ids["D"], region="440205", slow={"tax.newborn_premium": date(2026, 6, 10)},
                  rating="dissatisfied", service_grades={"tax.newborn_premium": "very_dissatisfied"}),
        *case_log(ids["E"], withdraw_after=2),
        breach(ids["D"], "case", None, None, date(2026, 6, 8), "440205"),
        breach(ids["D"], "service", "tax.newborn_premium", "tax", date(2026, 6, 2), "440205"),
        escalation(ids["D"], "applicant", at(date(2026, 6, 9))),
        escalation(ids["D"], "deadline", at(date(2026, 6, 3), 0, 5), "tax.newborn_premium", "tax"),
    ]
    return events, ids


def synthetic(prefix: str, n: int, seed: int) -> list[Event]:
    """A few hundred events: n newborn cases over two weeks and three regions, with every kind of end."""
    rnd = random.Random(seed)
    events: list[Event] = []
    days = [d for d in (DAY0 + timedelta(days=i) for i in range(14)) if d.weekday() < 5]
    for i in range(n):
        cid, day0 = f"{prefix}-{i:03d}", rnd.choice(days)
        kind = rnd.choice(["happy", "slow", "correction", "rejected", "withdrawn"])
        kw: dict = {"day0": day0, "region": rnd.choice(["440203", "440205", "440303"])}
        if kind == "slow":
            kw["slow"] = {rnd.choice(["tax.newborn_premium", "police.birth_registration"]):
                          day0 + timedelta(days=rnd.randint(1, 12))}
        elif kind == "correction":
            kw["correction"] = ("police.birth_registration", day0 + timedelta(days=rnd.randint(0, 5)))
        elif kind == "rejected":
            kw["reject"] = "health.birth_certificate"
        elif kind == "withdrawn":
            kw["withdraw_after"] = rnd.randint(1, 5)
        if kind != "withdrawn" and rnd.random() < 0.7:
            kw["rating"] = rnd.choice(K.GRADES)
            kw["service_grades"] = {"police.birth_registration": rnd.choice(K.GRADES)}
        events += case_log(cid, **kw)
        if kind == "slow" and rnd.random() < 0.5:
            events.append(breach(cid, "case", None, None, add_working_days(day0, 5), kw["region"]))
            events.append(escalation(cid, rnd.choice(["applicant", "deadline"]), at(add_working_days(day0, 6))))
    return events
