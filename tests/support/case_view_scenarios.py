"""Case logs as the system writes them, for the case view's tests (tests/test_case_view.py,
tests/test_case_view_fold.py): the applicant's and the departments' facts, folded by the dispatch
processor's own pure function (`case_state`), so task and completion ids are the ones the dispatch
processor derives.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

from catalog.loader import load_catalog
from events.envelope import Actor, Event, new_event, now_utc
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic
from projectors import case_state

from .newborn import resident_id, submission

CAT = load_catalog()
TODAY = date.today()
APPLICANT = Actor("p_test_applicant", "applicant", "online")
CHILD_ID = resident_id(region="440203", born=TODAY - timedelta(days=3), seq="372")


# -- scenarios, folded by the dispatch processor's own pure function ---------------------------
class Clock:
    def __init__(self):
        self.t = now_utc() - timedelta(hours=2)

    def __call__(self):
        self.t += timedelta(seconds=1)
        return self.t


def decision(task: Event, outcome: str, clock: Clock, *, reason=None, missing=(), outputs=None) -> Event:
    p = task.payload
    return new_event("DecisionRecorded", task.key,
                     {"task_id": p["task_id"], "department": p["department"], "service_id": p["service_id"],
                      "kind": "case_service", "outcome": outcome, "reason": reason,
                      "missing_materials": list(missing), "outputs": outputs or {}},
                     actor=Actor(f"staff_{p['department']}", "department", "department"),
                     region_code=task.envelope.region_code, cause=task, occurred_at=clock())


def outputs_of(task: Event) -> dict[str, str]:
    return {o: CHILD_ID if o == "child_resident_id" else f"{o.upper()}-{task.key[-6:]}"
            for o in CAT.service(task.payload["service_id"]).produces}


def approve_all(task: Event, clock: Clock) -> list[Event]:
    return [decision(task, "accepted", clock), decision(task, "approved", clock, outputs=outputs_of(task))]


def police_asks_for_correction(task: Event, clock: Clock) -> list[Event]:
    if task.payload["service_id"] == "police.birth_registration" and task.payload["task_id"].endswith(":1"):
        return [decision(task, "accepted", clock),
                decision(task, "correction_requested", clock, reason="结婚证照片不清晰",
                         missing=["marriage_certificate", "household_register"])]
    return approve_all(task, clock)


def birth_certificate_rejected(task: Event, clock: Clock) -> list[Event]:
    if task.payload["service_id"] == "health.birth_certificate":
        return [decision(task, "rejected", clock, reason="出生医学证明信息不符")]
    return approve_all(task, clock)


def real_topic_of(event: Event) -> str:
    if event.type in ("ApplicationSubmitted", "MaterialsSupplemented", "ApplicationWithdrawn"):
        return APPLICATIONS
    if event.type in ("TaskDispatched", "TaskCancelled"):
        return tasks_topic(event.payload["department"])
    if event.type == "DecisionRecorded":
        return decisions_topic(event.payload["department"])
    if event.type == "CaseCompleted":
        return CASES
    raise AssertionError(event.type)


NEWBORN_DEPARTMENTS = sorted({CAT.service(s).department for s in CAT.select(bundle_code="newborn").services})


def scenario(case_id: str, policy=approve_all, *, withdraw_after: int | None = None) -> list[Event]:
    """The log of one case in the order the system writes it: the applicant's and the
    departments' facts, and what the dispatch fold derives from each."""
    clock = Clock()
    sub = submission(case_id, promised=("discharge_summary",))
    sub = replace(sub, envelope=replace(sub.envelope, occurred_at=clock()))
    state, out = case_state.start(sub, CAT)
    log, queue, decided = [sub, *out], [e for e in out if e.type == "TaskDispatched"], 0

    def fold(event: Event) -> None:
        nonlocal state
        state, derived = case_state.step(state, event, CAT)
        log.extend([event, *derived])
        queue.extend(e for e in derived if e.type == "TaskDispatched")

    while queue and not state.done:
        task = queue.pop(0)
        for dec in policy(task, clock):
            fold(dec)
            decided += 1
            if dec.payload["outcome"] == "correction_requested":
                fold(new_event("MaterialsSupplemented", case_id,
                               {"materials": [{"code": m, "source": "uploaded", "ref": f"doc-{m}"}
                                              for m in dec.payload["missing_materials"]], "form": {}},
                               actor=APPLICANT, region_code="440203", occurred_at=clock()))
            if decided == withdraw_after:
                fold(new_event("ApplicationWithdrawn", case_id, {"reason": "不再需要"}, actor=APPLICANT,
                               region_code="440203", occurred_at=clock()))
                if queue:  # a department decides a task after it was cancelled: the fold ignores it
                    late = decision(queue[0], "approved", clock, outputs=outputs_of(queue[0]))
                    fold(late)
                break
    return log


SCENARIOS = {
    "happy": lambda cid: scenario(cid),
    "correction": lambda cid: scenario(cid, police_asks_for_correction),
    "rejected": lambda cid: scenario(cid, birth_certificate_rejected),
    "withdrawn": lambda cid: scenario(cid, withdraw_after=3),
}


def timeline_entries(events: list[Event]) -> list[Event]:
    """The events the timeline shows, once each (a fact by event id, a task by task id)."""
    seen, out = set(), []
    for e in events:
        key = e.payload.get("task_id") if e.type in ("TaskDispatched", "TaskCancelled") else e.id
        if (e.type, key) not in seen:
            seen.add((e.type, key))
            out.append(e)
    return out
