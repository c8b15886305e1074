"""A case folded from its events, and the derived events each step calls for.

Pure: `step(state, event, catalog)` returns the next state and the events to emit, with ids
derived from the cause, so the dispatch processor can re-run any stretch of the log after a
crash and emit exactly the same events (consumers drop the repeats). No clock, no I/O:
"today" is the causing event's own time.
"""
from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from types import MappingProxyType
from typing import Any

from catalog.model import Catalog
from events import codec
from events.envelope import Event, derive, derived_event_id

from . import authority, deadline_clock

WAITING, DISPATCHED, ACCEPTED, CORRECTION, APPROVED, REJECTED, BLOCKED, CANCELLED = (
    "waiting", "dispatched", "accepted", "correction_requested", "approved", "rejected", "blocked", "cancelled")
FINAL = frozenset({APPROVED, REJECTED, BLOCKED, CANCELLED})
OPEN, AWAITING_APPLICANT, COMPLETED, WITHDRAWN = "open", "awaiting_applicant", "completed", "withdrawn"
# Events that come before what they follow: Kafka orders a partition, not the topics of one case,
# so a decision on `decisions.<dept>` can be read before the `applications` message (or the other
# department's decision) that led to its task — e.g. after a crash between sending tasks and
# storing the state, departments decide while dispatch restarts. Such events wait in the state
# (`early`): before the submission every event; after it, a decision for a task this state has
# not issued yet. They are folded once what they follow is, in the order they came; derived
# events' ids come from their causes, so the outcome is the order-independent one.
UNSUBMITTED = "unsubmitted"
MAX_EARLY = 100   # events held for a case never submitted (a stray or foreign one): beyond this, dead letters


@dataclass(frozen=True)
class ServiceState:
    service_id: str
    department: str
    status: str = WAITING
    attempt: int = 0            # how many times it was dispatched (corrections re-dispatch)
    task_id: str | None = None
    reason: str | None = None
    missing: tuple[str, ...] = ()
    outputs: dict[str, str] = field(default_factory=dict)
    due: date | None = None         # of the current attempt (TaskDispatched.due_date)
    paused_on: date | None = None   # the day a correction was asked for: the clock stands still


@dataclass(frozen=True)
class CaseState:
    case_id: str
    bundle_code: str
    region_code: str
    status: str
    form: dict[str, str]
    materials: dict[str, dict[str, Any]]        # code -> MaterialRef record
    services: dict[str, ServiceState]
    outputs: dict[str, str] = field(default_factory=dict)
    seen: frozenset[str] = frozenset()
    sequence: int = 0                            # of the derived events this case emitted
    rating_id: str | None = None                 # 好差评: a case is rated once
    early: tuple[Event, ...] = ()                # events that came before what they follow, in arrival order

    @property
    def done(self) -> bool:
        return self.status in (COMPLETED, WITHDRAWN)


class CaseError(ValueError):
    """An event that does not fit its case (unknown case, unknown service): a dead letter."""
    safe_message = True  # its messages name ids and services, never form values


# -- dependencies --------------------------------------------------------------------------
# Both depend only on the catalog and the case's set of services, and the fold asks them for
# every service at every step: remembered per (catalog, services) they were half of dispatch's CPU.
_DEPS: dict[int, tuple[Catalog, dict]] = {}


def _memo(catalog: Catalog) -> dict:
    held = _DEPS.get(id(catalog))
    if held is None or held[0] is not catalog:
        held = _DEPS[id(catalog)] = (catalog, {})
    return held[1]


def awaited_outputs(catalog: Catalog, sid: str, case_services: Iterable[str]) -> tuple[str, ...]:
    """What a service needs that another service of the same case produces (the catalog's
    rule: such a need is never asked of the applicant, it flows between services)."""
    ids = frozenset(case_services)
    memo, key = _memo(catalog), ("awaited", sid, ids)
    if key not in memo:
        memo[key] = tuple(o for o in catalog.service(sid).needs if catalog.producers.get(o) in ids - {sid})
    return memo[key]


def prerequisites(catalog: Catalog, service_ids: Iterable[str]) -> Mapping[str, frozenset[str]]:
    """Which of the case's services each one waits for (the producers of what it awaits)."""
    ids = frozenset(service_ids)
    memo, key = _memo(catalog), ("prerequisites", ids)
    if key not in memo:
        memo[key] = MappingProxyType(
            {sid: frozenset(catalog.producers[o] for o in awaited_outputs(catalog, sid, ids)) for sid in ids})
    return memo[key]


def _ready(state: CaseState, catalog: Catalog, sid: str) -> bool:
    return all(o in state.outputs for o in awaited_outputs(catalog, sid, state.services))


def blocked_at_completion(catalog: Catalog, services: Iterable[str], not_approved: Iterable[str]) -> list[str]:
    """Which of a completed case's not-approved services the dispatch blocked (never sent to a
    department) rather than saw rejected: those that wait for another not-approved service.
    CaseCompleted lists both together; a reader that sees it before the rejecting decision
    must not take the rejected service for a blocked one."""
    failed = set(not_approved)
    deps = prerequisites(catalog, services)
    return sorted(s for s in failed if deps.get(s, set()) & failed)


def _upstream_failed(state: CaseState, catalog: Catalog, sid: str) -> bool:
    deps = prerequisites(catalog, state.services)[sid]
    return any(state.services[d].status in (REJECTED, BLOCKED, CANCELLED) for d in deps)


# -- payload minimisation -----------------------------------------------------------------
def task_payload(state: CaseState, catalog: Catalog, sid: str, task_id: str, due: Any) -> dict[str, Any]:
    """Only what this service declares: its fields, its materials, the outputs it consumes."""
    svc = catalog.service(sid)
    field_ids = {n.id for n in svc.fields}
    material_ids = {n.id for n in svc.materials}
    return {
        "task_id": task_id,
        "department": svc.department,
        "service_id": sid,
        "kind": "case_service",
        "fields": {k: v for k, v in state.form.items() if k in field_ids},
        "materials": [m for code, m in sorted(state.materials.items()) if code in material_ids],
        "inputs": {o: state.outputs[o] for o in awaited_outputs(catalog, sid, state.services) if o in state.outputs},
        "due_date": due,
    }


def _due(state: CaseState, catalog: Catalog, sid: str, cause: Event) -> date | None:
    """A first dispatch gets the full limit from today; a re-dispatch after 补正 keeps the
    first due date, pushed back by the working days the case waited for the applicant."""
    svc = state.services[sid]
    if svc.due is not None and svc.paused_on is not None:
        return deadline_clock.resumed_due(svc.due, svc.paused_on, cause.envelope.occurred_at)
    if svc.due is not None:
        return svc.due
    days = deadline_clock.promised_days(catalog, state.bundle_code, sid)
    return None if days is None else deadline_clock.due_after(cause.envelope.occurred_at, days)


# -- the fold -----------------------------------------------------------------------------
def _emit(state: CaseState, cause: Event, event_type: str, payload: dict, *parts: str,
          of_the_case: bool = False) -> tuple[CaseState, Event]:
    """A derived event, its id from its cause and `parts`; or, `of_the_case`, from the case and
    `parts` alone: a task (service, attempt) or the completion may follow from whichever of
    several decisions is read last, and the topics of a case interleave differently on a re-run,
    so only an id of what the event is makes a re-run emit the same id."""
    seq = state.sequence + 1
    ev = derive(cause, event_type, state.case_id, payload, *parts, sequence=seq)
    if of_the_case:
        ev = replace(ev, envelope=replace(ev.envelope, event_id=derived_event_id(state.case_id, event_type, *parts)))
    return replace(state, sequence=seq), ev


def _dispatch_ready(state: CaseState, catalog: Catalog, cause: Event) -> tuple[CaseState, list[Event]]:
    out: list[Event] = []
    for sid in sorted(state.services):
        svc_state = state.services[sid]
        if svc_state.status != WAITING:
            continue
        if _upstream_failed(state, catalog, sid):
            state = _set(state, sid, status=BLOCKED, reason="a service it depends on was not approved")
            continue
        if not _ready(state, catalog, sid):
            continue
        attempt = svc_state.attempt + 1
        task_id = f"{state.case_id}:{sid}:{attempt}"
        due = _due(state, catalog, sid, cause)
        payload = task_payload(state, catalog, sid, task_id, due)
        state, ev = _emit(state, cause, "TaskDispatched", payload, sid, str(attempt), of_the_case=True)
        state = _set(state, sid, status=DISPATCHED, attempt=attempt, task_id=task_id, missing=(), due=due,
                     paused_on=None)
        out.append(ev)
    return state, out


def _set(state: CaseState, sid: str, **changes: Any) -> CaseState:
    services = dict(state.services)
    services[sid] = replace(services[sid], **changes)
    return replace(state, services=services)


def _settle(state: CaseState, catalog: Catalog, cause: Event) -> tuple[CaseState, list[Event]]:
    """Dispatch what became ready, block what can no longer be done, complete when all is decided."""
    emitted: list[Event] = []
    while True:  # blocking one service can block its dependants in turn
        before = state
        state, out = _dispatch_ready(state, catalog, cause)
        emitted += out
        if state == before:
            break
    if any(s.status == CORRECTION for s in state.services.values()):
        state = replace(state, status=AWAITING_APPLICANT)
    elif state.status == AWAITING_APPLICANT:
        state = replace(state, status=OPEN)
    if state.status in (OPEN, AWAITING_APPLICANT) and all(s.status in FINAL for s in state.services.values()):
        approved = sorted(s for s, v in state.services.items() if v.status == APPROVED)
        rejected = sorted(s for s, v in state.services.items() if v.status != APPROVED)
        state, ev = _emit(state, cause, "CaseCompleted", {"approved": approved, "rejected": rejected}, "completed",
                          of_the_case=True)
        state = replace(state, status=COMPLETED)
        emitted.append(ev)
    return state, emitted


def start(event: Event, catalog: Catalog) -> tuple[CaseState, list[Event]]:
    p = event.payload
    services = {}
    for sid in p["services"]:
        try:
            services[sid] = ServiceState(sid, catalog.service(sid).department)
        except KeyError as exc:
            raise CaseError(str(exc)) from None
    missing_producers = [o for sid in services for o in catalog.service(sid).consumes
                         if catalog.producers.get(o) not in services]
    if missing_producers:
        raise CaseError(f"no service of the case produces {sorted(set(missing_producers))}")
    state = CaseState(
        case_id=event.key, bundle_code=p["bundle_code"], region_code=event.envelope.region_code,
        status=OPEN, form=dict(p["form"]), materials={m["code"]: dict(m) for m in p["materials"]},
        services=services, seen=frozenset({event.id}),
    )
    return _settle(state, catalog, event)


#: task kinds on the department topics that belong to no case: the cascade's register syncs and the
#: proactive processor's grants (免申即享: keyed by the grant, answered to the proactive processor)
NOT_CASE_KINDS = frozenset({"register_sync", "benefit_grant"})


def belongs_to_no_case(event: Event) -> bool:
    """A task, answer or cancellation on a department topic that is not a case's: every case
    processor (dispatch, the case view, the KPIs, the deadline clock) skips them through this."""
    return event.type in ("TaskDispatched", "DecisionRecorded", "TaskCancelled") and \
        event.payload.get("kind") in NOT_CASE_KINDS


def step(state: CaseState | None, event: Event, catalog: Catalog) -> tuple[CaseState | None, list[Event]]:
    """Apply one event to its case. A repeated event changes nothing and emits nothing."""
    if belongs_to_no_case(event):
        return state, []  # register syncs and grants share the department topics; they are not cases
    if state is not None and event.id in state.seen:
        return state, []
    if event.type == "ApplicationSubmitted":
        if state is not None and state.status != UNSUBMITTED:
            return state, []  # a second submission under the same case id is a repeat
        started, emitted = start(event, catalog)
        for early in (state.early if state is not None else ()):
            started, more = step(started, early, catalog)
            emitted += more
        return started, emitted
    if state is None or state.status == UNSUBMITTED:
        held = state.early if state is not None else ()
        if len(held) >= MAX_EARLY:
            raise CaseError(f"{event.type} for a case that was never submitted ({len(held)} events waiting)")
        return CaseState(event.key, "", event.envelope.region_code, UNSUBMITTED, {}, {}, {},
                         seen=(state.seen if state is not None else frozenset()) | {event.id},
                         early=(*held, event)), []
    state = replace(state, seen=state.seen | {event.id})
    if event.type == "CaseRated":
        return _on_rating(state, event, catalog)
    if state.done:
        return state, []
    if event.type == "DecisionRecorded":
        state, emitted = _on_decision(state, event, catalog)
    elif event.type == "MaterialsSupplemented":
        state, emitted = _on_supplement(state, event, catalog)
    elif event.type == "ApplicationWithdrawn":
        return _on_withdrawal(state, event)
    else:
        return state, []  # events of other processors (TaskDispatched echoes, CaseCompleted …)
    if state.early:
        state, more = _release(state, catalog)
        emitted += more
    return state, emitted


def _on_decision(state: CaseState, event: Event, catalog: Catalog) -> tuple[CaseState, list[Event]]:
    p = event.payload
    sid = p["service_id"]
    svc = state.services.get(sid)
    if svc is None:
        raise CaseError(f"decision for service {sid} which is not part of the case")
    if p.get("department") != svc.department:
        # the runtime refuses this on a department's topic already (projectors/authority.py)
        raise CaseError(f"decision.not_authorised: a decision on {sid} from another department")
    if p["task_id"] != svc.task_id and _attempt(p["task_id"]) > svc.attempt and svc.status not in FINAL:
        return _hold(state, event), []  # its task is not issued in this state yet: see UNSUBMITTED
    if p["task_id"] != svc.task_id or svc.status in FINAL:
        return state, []  # a decision on a superseded attempt, or after the service was settled
    outcome = p["outcome"]
    if outcome == "accepted":
        state = _set(state, sid, status=ACCEPTED)
    elif outcome == "correction_requested":
        state = _set(state, sid, status=CORRECTION, reason=p.get("reason"),
                     missing=tuple(p.get("missing_materials") or ()),
                     paused_on=deadline_clock.china_date(event.envelope.occurred_at))
    elif outcome == "approved":
        outputs = dict(p.get("outputs") or {})
        state = _set(state, sid, status=APPROVED, outputs=outputs, reason=None, missing=())
        state = replace(state, outputs={**state.outputs, **outputs})
    elif outcome == "rejected":
        state = _set(state, sid, status=REJECTED, reason=p.get("reason"))
    else:
        raise CaseError(f"outcome {outcome!r} does not apply to a case service")
    return _settle(state, catalog, event)


def _attempt(task_id: str) -> int:
    tail = task_id.rsplit(":", 1)[-1]
    return int(tail) if tail.isascii() and tail.isdigit() else 0


def _hold(state: CaseState, event: Event) -> CaseState:
    if len(state.early) >= MAX_EARLY:
        raise CaseError(f"{event.type} for a task the case has not issued ({len(state.early)} events waiting)")
    return replace(state, early=(*state.early, event))


def _release(state: CaseState, catalog: Catalog) -> tuple[CaseState, list[Event]]:
    """Decisions held for tasks not yet issued, applied once their task is (in the order they came)."""
    emitted: list[Event] = []
    while True:
        ready = next((e for e in state.early if (svc := state.services.get(e.payload["service_id"])) is not None
                      and (svc.task_id == e.payload["task_id"] or svc.status in FINAL
                           or _attempt(e.payload["task_id"]) <= svc.attempt)), None)
        if ready is None or state.done:
            return state, emitted
        state = replace(state, early=tuple(e for e in state.early if e is not ready))
        if ready.payload.get("department") != state.services[ready.payload["service_id"]].department:
            continue  # not the owner's: refused on arrival on a department topic; never folded late
        state, out = _on_decision(state, ready, catalog)
        emitted += out


def _on_supplement(state: CaseState, event: Event, catalog: Catalog) -> tuple[CaseState, list[Event]]:
    p = event.payload
    materials = {**state.materials, **{m["code"]: dict(m) for m in p["materials"]}}
    state = replace(state, materials=materials, form={**state.form, **(p.get("form") or {})})
    for sid, svc in state.services.items():
        if svc.status == CORRECTION:  # 补正 resumes: dispatched again with the new materials
            state = _set(state, sid, status=WAITING)
    return _settle(state, catalog, event)


BAD_GRADES = frozenset({"dissatisfied", "very_dissatisfied"})   # 不满意, 非常不满意


def rectification_targets(state: CaseState, catalog: Catalog, rating: dict[str, Any]
                          ) -> list[tuple[str, str | None, str, str | None]]:
    """(department, service_id or None, grade, comment) for each bad grade of a rating: a
    service's bad grade goes to its department; a bad grade of the case as a whole goes to the
    bundle's lead department (牵头部门), or, where the catalog names none, to every department
    of the case. One rectification per (department, service)."""
    out: dict[tuple[str, str | None], tuple[str, str | None, str, str | None]] = {}
    for r in rating.get("services") or ():
        svc = state.services.get(r["service_id"])
        if svc is not None and r["grade"] in BAD_GRADES:
            out.setdefault((svc.department, svc.service_id), (svc.department, svc.service_id, r["grade"],
                                                               r.get("comment")))
    if rating["grade"] in BAD_GRADES:
        bundle = catalog.bundles.get(state.bundle_code)
        lead = bundle.lead if bundle else None
        departments = [lead] if lead else sorted({s.department for s in state.services.values()})
        for dept in departments:
            out.setdefault((dept, None), (dept, None, rating["grade"], rating.get("comment")))
    return [out[k] for k in sorted(out, key=lambda k: (k[0], k[1] or ""))]


def _on_rating(state: CaseState, event: Event, catalog: Catalog) -> tuple[CaseState, list[Event]]:
    """好差评: only a completed case is rated, once; a bad grade opens a rectification task."""
    if state.status != COMPLETED or state.rating_id is not None:
        return state, []
    p = event.payload
    state = replace(state, rating_id=p["rating_id"])
    emitted = []
    due = deadline_clock.rectification_due(event.envelope.occurred_at)
    for dept, sid, grade, comment in rectification_targets(state, catalog, p):
        # the id says whose it is: the runtime refuses a reply to it from any other department
        rid = authority.rectification_prefix(dept) + derived_event_id(event.id, "rectification", dept, sid or "case")[:18]
        state, ev = _emit(state, event, "RectificationOpened",
                          {"rectification_id": rid, "rating_id": p["rating_id"], "department": dept,
                           "service_id": sid, "grade": grade, "comment": comment, "due_date": due},
                          "rectification", dept, sid or "case")
        emitted.append(ev)
    return state, emitted


def _on_withdrawal(state: CaseState, event: Event) -> tuple[CaseState, list[Event]]:
    emitted = []
    for sid in sorted(state.services):
        svc = state.services[sid]
        if svc.status in (DISPATCHED, ACCEPTED, CORRECTION):
            state, ev = _emit(state, event, "TaskCancelled",
                              {"task_id": svc.task_id, "department": svc.department, "service_id": sid,
                               "reason": "withdrawn by the applicant"}, sid)
            emitted.append(ev)
        if svc.status not in FINAL:
            state = _set(state, sid, status=CANCELLED)
    return replace(state, status=WITHDRAWN), emitted


# -- persistence form -----------------------------------------------------------------------
def to_json(state: CaseState) -> dict[str, Any]:
    """A JSON-able form for the dispatch processor's store (dates as ISO text)."""
    return {
        "case_id": state.case_id, "bundle_code": state.bundle_code, "region_code": state.region_code,
        "status": state.status, "form": state.form, "materials": state.materials,
        "services": {sid: {"department": s.department, "status": s.status, "attempt": s.attempt,
                           "task_id": s.task_id, "reason": s.reason, "missing": list(s.missing),
                           "outputs": s.outputs, "due": s.due.isoformat() if s.due else None,
                           "paused_on": s.paused_on.isoformat() if s.paused_on else None}
                     for sid, s in state.services.items()},
        "outputs": state.outputs, "seen": sorted(state.seen), "sequence": state.sequence,
        "rating_id": state.rating_id,
        "early": [base64.b64encode(codec.encode(e)).decode() for e in state.early],
    }


def from_json(data: dict[str, Any]) -> CaseState:
    services = {sid: ServiceState(sid, s["department"], s["status"], s["attempt"], s["task_id"], s["reason"],
                                  tuple(s["missing"]), dict(s["outputs"]), _day(s.get("due")),
                                  _day(s.get("paused_on"))) for sid, s in data["services"].items()}
    return CaseState(data["case_id"], data["bundle_code"], data["region_code"], data["status"], dict(data["form"]),
                     {k: dict(v) for k, v in data["materials"].items()}, services, dict(data["outputs"]),
                     frozenset(data["seen"]), data["sequence"], data.get("rating_id"),
                     tuple(codec.decode(base64.b64decode(e)) for e in data.get("early") or ()))


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None  # states stored before issue 6 have neither
