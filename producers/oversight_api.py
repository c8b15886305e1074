"""HTTP for 办不成事 and 好差评: the applicant escalates and rates, the supervisor works the queue,
the department replies to its rectifications. Every action is an event; nothing here changes a
read model directly.

A router (`router`), mounted by `producers.intake_api.create_app`; it shares the app's state, its
access rules (producers/api_access.py) and its per-case sequence (the case row is locked while an
event of the case is produced, so a case's facts keep their order).

Actions taken once: a reply, a resolution and a rectification reply are claimed in `api_actions`
under the case's row lock, in the transaction that produces their event, so of concurrent
duplicates one is accepted and the others get 409; an extension must exceed every earlier one; an
applicant's escalation is recorded there too, so a second one of the same case and service is
refused (409 `escalation.open`) until the first is resolved, however far the read model lags.
Every write takes an Idempotency-Key (a retry gets the first answer).

Who may do what:
- applicant (or a clerk for them): `POST /cases/{id}/escalations`, `POST /cases/{id}/rating`;
- supervisor: `GET /escalations`, `GET /escalations/{id}`, `POST /escalations/{id}/reply|extend|resolve`;
- department staff: `GET /departments/{dept}/rectifications`, `POST /rectifications/{id}/reply`.
Text a person typed (comments, replies) is carried in the event and shown to who needs it; it is
never logged. Staff reads of the queue, an escalation and the rectifications show the applicant's
words and are recorded, a read per item, before they are answered (producers/api_audit.py).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import psycopg
import structlog
from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from events.envelope import Event
from infra import log as infra_log
from infra import metrics
from infra.topics import APPLICATIONS, decisions_topic
from projectors import deadline_clock

from . import identity, intake_store
from .api_access import Acting, case_owner, department_member, department_staff, supervisor
from .api_audit import ReadAudit, read_audit
from .api_errors import MESSAGES as API_MESSAGES
from .api_errors import ApiError, ApiRoute, err, no_store
from .api_events import locked_case, produce
from .api_idempotency import Idempotent, actions_on, idempotency_key, raise_to, take_once, taken
from .api_state import ApiState, api_state, today
from .audit_reads import listed_reads

log = structlog.get_logger("producers.oversight_api")

Grade = Literal["very_satisfied", "satisfied", "basically_satisfied", "dissatisfied", "very_dissatisfied"]
Reason = Literal["stuck", "overdue", "rejected", "other"]

MESSAGES: dict[str, tuple[str, str]] = {
    "case.not_completed": ("办结后才能评价", "a case can be rated once it is completed"),
    "rating.exists": ("该办件已评价", "this case has already been rated"),
    "rating.duplicate_service": ("同一事项只能评价一次", "each service can be rated once"),
    "service.not_in_case": ("该事项不属于本办件", "this service is not part of the case"),
    "escalation.not_rejected": ("该事项未被退回，不能以“未办成”反映", "nothing was rejected; choose another reason"),
    "escalation.not_overdue": ("尚未超过办理时限", "nothing is past its deadline yet"),
    "escalation.open": ("已有一件办理中的反映，请等待答复", "an escalation of this is already open; wait for its answer"),
    "escalation.not_found": ("未找到该反映", "no such escalation"),
    "escalation.resolved": ("该反映已办结", "this escalation is already resolved"),
    "escalation.replied": ("该反映已答复", "this escalation has already been answered"),
    "escalation.extension": ("延期后的办理时限须长于当前时限，且不超过10个工作日",
                             "the new limit must be longer than the current one and at most 10 working days"),
    "rectification.not_found": ("未找到该整改事项", "no such rectification"),
    "rectification.replied": ("该整改事项已反馈", "this rectification has already been replied to"),
    "escalation.extended": ("已延期至该时限或更长", "the limit was already extended this far or further"),
}
API_MESSAGES.update(MESSAGES)  # one error vocabulary: err() knows these codes too


class ApplicantIn(BaseModel):
    resident_id: str = Field(..., description="公民身份号码 of the applicant (assisted channel only)")


class EscalationIn(BaseModel):
    reason: Reason = Field(..., description="stuck 办件停滞 | overdue 超期 | rejected 未办成 | other")
    service_id: str | None = Field(None, max_length=100, description="the service concerned, if one")
    comment: str | None = Field(None, max_length=1000, description="what went wrong, in the applicant's words")
    applicant: ApplicantIn | None = None


class ServiceRatingIn(BaseModel):
    service_id: str = Field(..., max_length=100)
    grade: Grade
    comment: str | None = Field(None, max_length=1000)


class RatingIn(BaseModel):
    grade: Grade = Field(..., description="非常满意 very_satisfied … 非常不满意 very_dissatisfied")
    comment: str | None = Field(None, max_length=1000)
    services: list[ServiceRatingIn] = Field(default_factory=list, max_length=50)
    applicant: ApplicantIn | None = None


class ReplyIn(BaseModel):
    reply: str = Field(..., min_length=1, max_length=2000)


class ExtendIn(BaseModel):
    resolve_within_working_days: int = Field(..., ge=1, le=deadline_clock.RESOLVE_AT_MOST)
    reason: str = Field(..., min_length=1, max_length=500)


class ResolveIn(BaseModel):
    resolution: str = Field(..., min_length=1, max_length=2000)



router = APIRouter(prefix="/api/v1", route_class=ApiRoute)
ESCALATIONS, RATINGS = ["办不成事 escalations"], ["好差评 ratings"]


def accepted(once: Idempotent, event: Event, **extra: Any) -> JSONResponse:
    return once.answer({"case_id": event.key, "event_id": event.id, **extra})


# -- the applicant ----------------------------------------------------------------------------------
@router.post("/cases/{case_id}/escalations", status_code=202, tags=ESCALATIONS,
             summary="办不成事: escalate a stuck, overdue or rejected case to the supervisor queue")
def escalate(case_id: str, body: EscalationIn = Body(...), who: Acting = Depends(case_owner),
             key: str | None = Depends(idempotency_key), state: ApiState = Depends(api_state)):
    from projectors.escalation_queue import read_case_escalations

    with state.database.connection() as conn, infra_log.bound(correlation_id=case_id, case_id=case_id):
        with conn.transaction():
            once = Idempotent(conn, who.ident.subject, key, f"escalate:{case_id}", body.model_dump())
            if (earlier := once.replay()) is not None:
                return earlier
            row = locked_case(conn, state, case_id, done_ok=True)
            view = state.case_reader(conn, case_id) or {}
            services = {s["service_id"]: s for s in view.get("services") or ()}
            if body.service_id is not None and body.service_id not in row.services:
                raise ApiError(422, [err("service_id", "service.not_in_case")])
            concerned = [services[body.service_id]] if body.service_id in services else list(services.values())
            if body.reason == "rejected" and not any(s["status"] == "rejected" for s in concerned):
                raise ApiError(422, [err("reason", "escalation.not_rejected")])
            if body.reason == "overdue" and not _overdue(view, concerned, body.service_id):
                raise ApiError(422, [err("reason", "escalation.not_overdue")])
            # one open escalation per case and service: the read model's, and (under the row lock)
            # those this API opened and did not resolve yet, which the read model may not show yet.
            # The read model may already show this very request's escalation: its event reached the
            # log and the queue, and its commit here was lost (the retry is the same event again).
            scope, escalation_id = f"{case_id}/{body.service_id or ''}", once.name("esc")
            if any(e["status"] != "resolved" and e["service_id"] == body.service_id
                   and e["escalation_id"] != escalation_id
                   for e in read_case_escalations(conn, case_id, today=today())) \
                    or any(not taken(conn, eid, "resolve") for eid in actions_on(conn, scope)):
                raise ApiError(409, [err("service_id" if body.service_id else "case_id", "escalation.open")])
            department = state.catalog.services[body.service_id].department if body.service_id else None
            take_once(conn, scope, escalation_id, case_id)
            event = produce(conn, state, APPLICATIONS, case_id, "CaseEscalated",
                            {"escalation_id": escalation_id, "origin": "applicant", "reason": body.reason,
                             "service_id": body.service_id, "department": department, "comment": body.comment},
                            who.ident.actor(on_behalf_of=who.applicant_token), row.region_code,
                            event_id=once.event_id())
            d = deadline_clock.escalation_deadlines(event.envelope.occurred_at)
            return accepted(once, event, escalation_id=escalation_id, reply_due=d.reply_due.isoformat(),
                            resolve_due=d.resolve_due.isoformat())


@router.post("/cases/{case_id}/rating", status_code=202, tags=RATINGS,
             summary="好差评 (一办即评): rate a completed case and, optionally, each service")
def rate(case_id: str, body: RatingIn = Body(...), who: Acting = Depends(case_owner),
         key: str | None = Depends(idempotency_key), state: ApiState = Depends(api_state)):
    with state.database.connection() as conn, infra_log.bound(correlation_id=case_id, case_id=case_id):
        with conn.transaction():
            once = Idempotent(conn, who.ident.subject, key, f"rate:{case_id}", body.model_dump())
            if (earlier := once.replay()) is not None:
                return earlier
            row = locked_case(conn, state, case_id, done_ok=True)
            view = state.case_reader(conn, case_id) or {}
            if view.get("status") != "completed":
                raise ApiError(409, [err("case_id", "case.not_completed")])
            errors, seen = [], set()
            for i, s in enumerate(body.services):
                if s.service_id not in row.services:
                    errors.append(err(f"services.{i}.service_id", "service.not_in_case"))
                elif s.service_id in seen:
                    errors.append(err(f"services.{i}.service_id", "rating.duplicate_service"))
                seen.add(s.service_id)
            if errors:
                raise ApiError(422, errors)
            rating_id = once.name("rating")
            fresh = conn.execute("INSERT INTO intake_ratings (case_id, rating_id) VALUES (%s, %s) "
                                 "ON CONFLICT DO NOTHING", (case_id, rating_id)).rowcount
            if not fresh:
                raise ApiError(409, [err("case_id", "rating.exists")])
            event = produce(conn, state, APPLICATIONS, case_id, "CaseRated",
                            {"rating_id": rating_id, "grade": body.grade, "comment": body.comment,
                             "services": [s.model_dump(include={"service_id", "grade", "comment"})
                                          for s in body.services]},
                            who.ident.actor(on_behalf_of=who.applicant_token), row.region_code,
                            event_id=once.event_id())
            answer = accepted(once, event, rating_id=rating_id)
    metrics.RATINGS.labels(row.bundle_code, body.grade).inc()
    return answer


# -- the supervisor -----------------------------------------------------------------------------------
@router.get("/escalations", tags=ESCALATIONS, summary="The supervisor queue, most urgent first")
def queue(status: Literal["open", "resolved", "all"] = Query("open"),
          case_id: str | None = Query(None, max_length=64), department: str | None = Query(None, max_length=64),
          receipt_no: str | None = Query(None, max_length=64, description="受理编号 of the case"),
          limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
          _sup: identity.Identity = Depends(supervisor), audit: ReadAudit = Depends(read_audit),
          state: ApiState = Depends(api_state)):
    from projectors.escalation_queue import count_queue, read_queue

    if department is not None and department not in state.catalog.departments:
        raise ApiError(422, [err("department", "not_found")])
    with state.database.connection() as conn:
        items = read_queue(conn, status=status, today=today(), case_id=case_id, department=department,
                           receipt_no=receipt_no, limit=limit, offset=offset)
        total = count_queue(conn, status=status)
        reads, items = listed_reads(conn, items, "escalation", "escalation", "escalation_id")
    audit.record(reads)
    return no_store({"status": status, "today": today(), "total": total, "offset": offset, "items": items})


@router.get("/escalations/{escalation_id}", tags=ESCALATIONS, summary="One escalation")
def one(escalation_id: str, _sup: identity.Identity = Depends(supervisor), audit: ReadAudit = Depends(read_audit),
        state: ApiState = Depends(api_state)):
    with state.database.connection() as conn:
        item = _escalation(conn, escalation_id)
        reads, shown = listed_reads(conn, [item], "escalation", "escalation", "escalation_id")
    if not shown:
        raise ApiError(404, [err("escalation_id", "escalation.not_found")])
    audit.record(reads)
    return no_store(item)


def _escalation(conn: psycopg.Connection, escalation_id: str) -> dict[str, Any]:
    from projectors.escalation_queue import read_escalation

    item = read_escalation(conn, escalation_id, today=today())
    if item is None:
        raise ApiError(404, [err("escalation_id", "escalation.not_found")])
    return item


def act(state: ApiState, ident: identity.Identity, key: str | None, escalation_id: str, event_type: str,
        payload: dict[str, Any], check: Callable[[psycopg.Connection, dict[str, Any]], None]) -> JSONResponse:
    """A supervisor's action on an escalation: under the case's row lock, refused once the
    escalation is resolved (by the read model or by an action this API took), then `check`
    claims what may be done once, then the event."""
    with state.database.connection() as conn, conn.transaction():
        once = Idempotent(conn, ident.subject, key, f"{event_type}:{escalation_id}", payload)
        if (earlier := once.replay()) is not None:
            return earlier
        item = _escalation(conn, escalation_id)
        with infra_log.bound(correlation_id=item["case_id"]):
            row = intake_store.get_case(conn, item["case_id"], for_update=True)
            if row is None:
                raise ApiError(404, [err("escalation_id", "escalation.not_found")])
            if item["resolved_at"] is not None or taken(conn, escalation_id, "resolve"):
                raise ApiError(409, [err("escalation_id", "escalation.resolved")])
            check(conn, item)
            event = produce(conn, state, APPLICATIONS, item["case_id"], event_type,
                            {"escalation_id": escalation_id, **payload}, ident.actor(), row.region_code,
                            event_id=once.event_id())
            return accepted(once, event, escalation_id=escalation_id)


@router.post("/escalations/{escalation_id}/reply", status_code=202, tags=ESCALATIONS,
             summary="First reply (within 3 working days)")
def reply(escalation_id: str, body: ReplyIn = Body(...), ident: identity.Identity = Depends(supervisor),
          key: str | None = Depends(idempotency_key), state: ApiState = Depends(api_state)):
    def check(conn: psycopg.Connection, item: dict[str, Any]) -> None:
        if item["replied_at"] is not None or not take_once(conn, escalation_id, "reply", item["case_id"]):
            raise ApiError(409, [err("escalation_id", "escalation.replied")])
    return act(state, ident, key, escalation_id, "EscalationReplied", {"reply": body.reply}, check)


@router.post("/escalations/{escalation_id}/extend", status_code=202, tags=ESCALATIONS,
             summary="Extend the resolution limit (5 working days, at most 10)")
def extend(escalation_id: str, body: ExtendIn = Body(...), ident: identity.Identity = Depends(supervisor),
           key: str | None = Depends(idempotency_key), state: ApiState = Depends(api_state)):
    days = body.resolve_within_working_days

    def check(conn: psycopg.Connection, item: dict[str, Any]) -> None:
        if days <= item["resolve_within"]:
            raise ApiError(422, [err("resolve_within_working_days", "escalation.extension")])
        if not raise_to(conn, escalation_id, "extend", item["case_id"], days):
            raise ApiError(409, [err("resolve_within_working_days", "escalation.extended")])
    return act(state, ident, key, escalation_id, "EscalationExtended",
               {"resolve_within_working_days": days, "reason": body.reason}, check)


@router.post("/escalations/{escalation_id}/resolve", status_code=202, tags=ESCALATIONS,
             summary="Resolve the escalation with what was done")
def resolve(escalation_id: str, body: ResolveIn = Body(...), ident: identity.Identity = Depends(supervisor),
            key: str | None = Depends(idempotency_key), state: ApiState = Depends(api_state)):
    def check(conn: psycopg.Connection, item: dict[str, Any]) -> None:
        if not take_once(conn, escalation_id, "resolve", item["case_id"]):
            raise ApiError(409, [err("escalation_id", "escalation.resolved")])
    return act(state, ident, key, escalation_id, "EscalationResolved", {"resolution": body.resolution}, check)


# -- the department ----------------------------------------------------------------------------------
@router.get("/departments/{department}/rectifications", tags=RATINGS,
            summary="差评整改: a department's rectifications (its own staff only)")
def rectifications(department: str, status: Literal["open", "replied", "all"] = Query("open"),
                   _staff: identity.Identity = Depends(department_staff), audit: ReadAudit = Depends(read_audit),
                   state: ApiState = Depends(api_state)):
    from projectors.ratings import read_rectifications

    with state.database.connection() as conn:
        items = read_rectifications(conn, department, status=status, today=today())
        reads, items = listed_reads(conn, items, "rectification", "rectification", "rectification_id")
    audit.record(reads)
    return no_store({"department": department, "status": status, "items": items})


@router.post("/rectifications/{rectification_id}/reply", status_code=202, tags=RATINGS,
             summary="Close a rectification with the department's reply (整改反馈)")
def rectify(rectification_id: str, body: ReplyIn = Body(...), ident: identity.Identity = Depends(department_member),
            key: str | None = Depends(idempotency_key), state: ApiState = Depends(api_state)):
    from projectors.ratings import read_rectification

    with state.database.connection() as conn, conn.transaction():
        once = Idempotent(conn, ident.subject, key, f"rectify:{rectification_id}", body.model_dump())
        if (earlier := once.replay()) is not None:
            return earlier
        item = read_rectification(conn, rectification_id, today=today())
        if item is None or item["department"] != ident.department:
            raise ApiError(404, [err("rectification_id", "rectification.not_found")])
        row = intake_store.get_case(conn, item["case_id"], for_update=True)
        if item["replied_at"] is not None or not take_once(conn, rectification_id, "reply", item["case_id"]):
            raise ApiError(409, [err("rectification_id", "rectification.replied")])
        event = produce(conn, state, decisions_topic(ident.department), item["case_id"], "RectificationReplied",
                        {"rectification_id": rectification_id, "department": ident.department,
                         "reply": body.reply}, ident.actor(), row.region_code if row else "000000",
                        event_id=once.event_id())
        return accepted(once, event, rectification_id=rectification_id)


def _overdue(view: dict[str, Any], concerned: list[dict[str, Any]], service_id: str | None) -> bool:
    late = any((s.get("working_days_left") is not None and s["working_days_left"] < 0) for s in concerned)
    if service_id is None and view.get("working_days_left") is not None:
        late = late or view["working_days_left"] < 0
    return late
