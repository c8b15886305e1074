"""HTTP for 办不成事 and 好差评: the applicant escalates and rates, the supervisor works the queue,
the department replies to its rectifications. Every action is an event; nothing here changes a
read model directly.

Mounted by `producers.intake_api.create_app` with `register(app, ctx)`, sharing its
authentication, error bodies and per-case sequence (the case row is locked while an event of
the case is produced, so a case's facts keep their order).

Who may do what:
- applicant (or a clerk for them): `POST /cases/{id}/escalations`, `POST /cases/{id}/rating`;
- supervisor: `GET /escalations`, `GET /escalations/{id}`, `POST /escalations/{id}/reply|extend|resolve`;
- department staff: `GET /departments/{dept}/rectifications`, `POST /rectifications/{id}/reply`.
Text a person typed (comments, replies) is carried in the event and shown to who needs it; it is
never logged.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
import structlog
from fastapi import Body, FastAPI, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from catalog.model import Catalog
from events.envelope import Event, new_event
from infra import log as infra_log
from infra import metrics
from infra.topics import APPLICATIONS, decisions_topic
from projectors import deadline_clock

from . import identity, intake_store
from .db import Database

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
}


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


@dataclass
class IntakeContext:
    """What the intake app lends the oversight endpoints, its connection pool among them."""
    db_url: str
    database: Database
    catalog: Catalog
    authenticate: Callable[[str | None], identity.Identity]
    case_for_write: Callable[..., tuple[intake_store.IntakeCase, Any]]
    case_reader: Callable[[psycopg.Connection, str], dict | None]
    publish: Callable[[str, Event], None]
    api_error: type
    err: Callable[..., dict[str, str]]


def register(app: FastAPI, ctx: IntakeContext) -> None:
    ApiError, base_err = ctx.api_error, ctx.err

    def err(path: str, code: str) -> dict[str, str]:
        if code in MESSAGES:
            zh, en = MESSAGES[code]
            return {"path": path, "code": code, "message_zh": zh, "message_en": en}
        return base_err(path, code)

    def today():
        from projectors.deadlines import today_in_china

        return today_in_china()

    def produce(conn: psycopg.Connection, topic: str, case_id: str, event_type: str, payload: dict[str, Any],
                actor, region_code: str) -> Event:
        """Under the case's row lock: the next sequence, then the event, acknowledged by Kafka
        (acks=all) before the transaction commits; a failure rolls the sequence back."""
        sequence = intake_store.take_sequence(conn, case_id)
        event = new_event(event_type, case_id, payload, actor=actor, region_code=region_code, sequence=sequence,
                          correlation_id=case_id)
        try:
            ctx.publish(topic, event)
        except Exception as exc:
            log.error("oversight.kafka_unavailable", error=type(exc).__name__, event_type=event_type)
            raise ApiError(503, [err("", "kafka.unavailable")], {"Retry-After": "5"}) from None
        log.info("oversight.produced", event_type=event_type, sequence=sequence)
        return event

    def accepted(event: Event, **extra: Any) -> JSONResponse:
        return JSONResponse({"case_id": event.key, "event_id": event.id, **extra}, status_code=202)

    # -- the applicant ----------------------------------------------------------------------------------
    @app.post("/api/v1/cases/{case_id}/escalations", status_code=202, tags=["办不成事 escalations"],
              summary="办不成事: escalate a stuck, overdue or rejected case to the supervisor queue")
    def escalate(case_id: str, body: EscalationIn = Body(...), authorization: str | None = Header(None)):
        from projectors.escalation_queue import read_case_escalations

        ident = ctx.authenticate(authorization)
        with ctx.database.connection() as conn, infra_log.bound(correlation_id=case_id, case_id=case_id):
            with conn.transaction():
                row, caller = ctx.case_for_write(conn, case_id, ident, body.applicant, done_ok=True)
                view = ctx.case_reader(conn, case_id) or {}
                services = {s["service_id"]: s for s in view.get("services") or ()}
                if body.service_id is not None and body.service_id not in row.services:
                    raise ApiError(422, [err("service_id", "service.not_in_case")])
                concerned = [services[body.service_id]] if body.service_id in services else list(services.values())
                if body.reason == "rejected" and not any(s["status"] == "rejected" for s in concerned):
                    raise ApiError(422, [err("reason", "escalation.not_rejected")])
                if body.reason == "overdue" and not _overdue(view, concerned, body.service_id):
                    raise ApiError(422, [err("reason", "escalation.not_overdue")])
                if any(e["status"] != "resolved" and e["service_id"] == body.service_id
                       for e in read_case_escalations(conn, case_id, today=today())):
                    raise ApiError(409, [err("service_id" if body.service_id else "case_id", "escalation.open")])
                department = ctx.catalog.services[body.service_id].department if body.service_id else None
                escalation_id = f"esc-{uuid.uuid4().hex[:18]}"
                event = produce(conn, APPLICATIONS, case_id, "CaseEscalated",
                                {"escalation_id": escalation_id, "origin": "applicant", "reason": body.reason,
                                 "service_id": body.service_id, "department": department, "comment": body.comment},
                                ident.actor(on_behalf_of=caller.applicant_token), row.region_code)
        d = deadline_clock.escalation_deadlines(event.envelope.occurred_at)
        return accepted(event, escalation_id=escalation_id, reply_due=d.reply_due.isoformat(),
                        resolve_due=d.resolve_due.isoformat())

    @app.post("/api/v1/cases/{case_id}/rating", status_code=202, tags=["好差评 ratings"],
              summary="好差评 (一办即评): rate a completed case and, optionally, each service")
    def rate(case_id: str, body: RatingIn = Body(...), authorization: str | None = Header(None)):
        ident = ctx.authenticate(authorization)
        with ctx.database.connection() as conn, infra_log.bound(correlation_id=case_id, case_id=case_id):
            with conn.transaction():
                row, caller = ctx.case_for_write(conn, case_id, ident, body.applicant, done_ok=True)
                view = ctx.case_reader(conn, case_id) or {}
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
                rating_id = f"rating-{uuid.uuid4().hex[:18]}"
                fresh = conn.execute("INSERT INTO intake_ratings (case_id, rating_id) VALUES (%s, %s) "
                                     "ON CONFLICT DO NOTHING", (case_id, rating_id)).rowcount
                if not fresh:
                    raise ApiError(409, [err("case_id", "rating.exists")])
                event = produce(conn, APPLICATIONS, case_id, "CaseRated",
                                {"rating_id": rating_id, "grade": body.grade, "comment": body.comment,
                                 "services": [s.model_dump(include={"service_id", "grade", "comment"})
                                              for s in body.services]},
                                ident.actor(on_behalf_of=caller.applicant_token), row.region_code)
        metrics.RATINGS.labels(row.bundle_code, body.grade).inc()
        return accepted(event, rating_id=rating_id)

    # -- the supervisor -----------------------------------------------------------------------------------
    def supervisor(authorization: str | None) -> identity.Identity:
        ident = ctx.authenticate(authorization)
        if ident.role != "supervisor":
            raise ApiError(403, [err("authorization", "auth.forbidden")])
        return ident

    @app.get("/api/v1/escalations", tags=["办不成事 escalations"], summary="The supervisor queue, most urgent first")
    def queue(status: Literal["open", "resolved", "all"] = Query("open"),
              case_id: str | None = Query(None, max_length=64), department: str | None = Query(None, max_length=64),
              receipt_no: str | None = Query(None, max_length=64, description="受理编号 of the case"),
              limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
              authorization: str | None = Header(None)):
        from projectors.escalation_queue import count_queue, read_queue

        supervisor(authorization)
        if department is not None and department not in ctx.catalog.departments:
            raise ApiError(422, [err("department", "not_found")])
        with ctx.database.connection() as conn:
            items = read_queue(conn, status=status, today=today(), case_id=case_id, department=department,
                               receipt_no=receipt_no, limit=limit, offset=offset)
            total = count_queue(conn, status=status)
        return _json({"status": status, "today": today(), "total": total, "offset": offset, "items": items})

    @app.get("/api/v1/escalations/{escalation_id}", tags=["办不成事 escalations"], summary="One escalation")
    def one(escalation_id: str, authorization: str | None = Header(None)):
        supervisor(authorization)
        with ctx.database.connection() as conn:
            return _json(_escalation(conn, escalation_id))

    def _escalation(conn: psycopg.Connection, escalation_id: str) -> dict[str, Any]:
        from projectors.escalation_queue import read_escalation

        item = read_escalation(conn, escalation_id, today=today())
        if item is None:
            raise ApiError(404, [err("escalation_id", "escalation.not_found")])
        return item

    def act(escalation_id: str, authorization: str | None, event_type: str, payload: dict[str, Any],
            check: Callable[[dict[str, Any]], None]) -> JSONResponse:
        ident = supervisor(authorization)
        with ctx.database.connection() as conn, conn.transaction():
            item = _escalation(conn, escalation_id)
            with infra_log.bound(correlation_id=item["case_id"]):
                row = intake_store.get_case(conn, item["case_id"], for_update=True)
                if row is None:
                    raise ApiError(404, [err("escalation_id", "escalation.not_found")])
                if item["resolved_at"] is not None:
                    raise ApiError(409, [err("escalation_id", "escalation.resolved")])
                check(item)
                event = produce(conn, APPLICATIONS, item["case_id"], event_type,
                                {"escalation_id": escalation_id, **payload}, ident.actor(), row.region_code)
        return accepted(event, escalation_id=escalation_id)

    @app.post("/api/v1/escalations/{escalation_id}/reply", status_code=202, tags=["办不成事 escalations"],
              summary="First reply (within 3 working days)")
    def reply(escalation_id: str, body: ReplyIn = Body(...), authorization: str | None = Header(None)):
        def check(item):
            if item["replied_at"] is not None:
                raise ApiError(409, [err("escalation_id", "escalation.replied")])
        return act(escalation_id, authorization, "EscalationReplied", {"reply": body.reply}, check)

    @app.post("/api/v1/escalations/{escalation_id}/extend", status_code=202, tags=["办不成事 escalations"],
              summary="Extend the resolution limit (5 working days, at most 10)")
    def extend(escalation_id: str, body: ExtendIn = Body(...), authorization: str | None = Header(None)):
        def check(item):
            if body.resolve_within_working_days <= item["resolve_within"]:
                raise ApiError(422, [err("resolve_within_working_days", "escalation.extension")])
        return act(escalation_id, authorization, "EscalationExtended",
                   {"resolve_within_working_days": body.resolve_within_working_days, "reason": body.reason}, check)

    @app.post("/api/v1/escalations/{escalation_id}/resolve", status_code=202, tags=["办不成事 escalations"],
              summary="Resolve the escalation with what was done")
    def resolve(escalation_id: str, body: ResolveIn = Body(...), authorization: str | None = Header(None)):
        return act(escalation_id, authorization, "EscalationResolved", {"resolution": body.resolution},
                   lambda item: None)

    # -- the department ----------------------------------------------------------------------------------
    def staff_of(authorization: str | None, department: str | None) -> identity.Identity:
        ident = ctx.authenticate(authorization)
        if ident.role != "department" or (department is not None and ident.department != department):
            raise ApiError(404, [err("department", "not_found")])
        return ident

    @app.get("/api/v1/departments/{department}/rectifications", tags=["好差评 ratings"],
             summary="差评整改: a department's rectifications (its own staff only)")
    def rectifications(department: str, status: Literal["open", "replied", "all"] = Query("open"),
                       authorization: str | None = Header(None)):
        from projectors.ratings import read_rectifications

        staff_of(authorization, department)
        with ctx.database.connection() as conn:
            items = read_rectifications(conn, department, status=status, today=today())
        return _json({"department": department, "status": status, "items": items})

    @app.post("/api/v1/rectifications/{rectification_id}/reply", status_code=202, tags=["好差评 ratings"],
              summary="Close a rectification with the department's reply (整改反馈)")
    def rectify(rectification_id: str, body: ReplyIn = Body(...), authorization: str | None = Header(None)):
        from projectors.ratings import read_rectification

        ident = staff_of(authorization, None)
        with ctx.database.connection() as conn, conn.transaction():
            item = read_rectification(conn, rectification_id, today=today())
            if item is None or item["department"] != ident.department:
                raise ApiError(404, [err("rectification_id", "rectification.not_found")])
            if item["replied_at"] is not None:
                raise ApiError(409, [err("rectification_id", "rectification.replied")])
            row = intake_store.get_case(conn, item["case_id"], for_update=True)
            event = produce(conn, decisions_topic(ident.department), item["case_id"], "RectificationReplied",
                            {"rectification_id": rectification_id, "department": ident.department,
                             "reply": body.reply}, ident.actor(), row.region_code if row else "000000")
        return accepted(event, rectification_id=rectification_id)


def _overdue(view: dict[str, Any], concerned: list[dict[str, Any]], service_id: str | None) -> bool:
    late = any((s.get("working_days_left") is not None and s["working_days_left"] < 0) for s in concerned)
    if service_id is None and view.get("working_days_left") is not None:
        late = late or view["working_days_left"] < 0
    return late


def _json(value: Any) -> JSONResponse:
    from .intake_api import _jsonable

    return JSONResponse(_jsonable(value), headers={"Cache-Control": "no-store"})
