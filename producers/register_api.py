"""HTTP for the master registers (一处变更) and the cascade's status (多处联动): a FastAPI APIRouter.

    from producers.register_api import create_router
    app.include_router(create_router(settings))          # e.g. in producers/intake_api.create_app

Endpoints (JSON; errors {"errors": [{"path", "code", "message_zh", "message_en"}]}, never the value):
  POST /api/v1/registers/company                       设立登记 / import: {"uscc", "fields": {...}}
  POST /api/v1/registers/company/{uscc}/changes         变更登记: {"changes": {"name": …, …}}
  POST /api/v1/registers/company/{uscc}/deregistration  注销登记: {"deregistered_on"}
  POST /api/v1/registers/company/{uscc}/conversion      个转企 of the individual business {uscc}:
                                                        {"company_uscc", "fields": {...}, "converted_on"}
  GET  /api/v1/registers/company/{uscc}                 the master entry (market regulation's register)
  POST /api/v1/registers/person/household-moves         户口迁移: {"resident_id", "household_address",
                                                        "household_region_code", "moved_on"}
  POST /api/v1/registers/person/deaths                  死亡登记: {"resident_id", "date_of_death",
                                                        "death_certificate_no"?}
  GET  /api/v1/cascade/changes?key=&register=&open=&limit=   per change: every target, state, attempts, time to apply
  GET  /api/v1/cascade/changes/{change_event_id}
  GET  /api/v1/cascade/backlog                          per department: held, sent, failed, escalated, oldest
  GET  /api/v1/cascade/summary

A change is answered 202 only after the broker acknowledged its event (acks=all); a refused
change 422 (every problem, by field); an `Idempotency-Key` reused for another change 409; the
broker or database unreachable 503 with Retry-After (`kafka.unconfirmed`: sent, not yet
acknowledged — retry with the same Idempotency-Key). A resident ID travels only in a body,
never in a URL. Writes need a register token (role `register`) or staff of the register's
department (market_regulation for companies, police for persons); status reads need any
staff role (register, department, supervisor, system).
"""
from __future__ import annotations

from typing import Any

import psycopg
from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from infra.settings import Settings
from projectors import cascade_status

from . import identity
from .db import Database
from .register_changes import COMPANY, PERSON, ChangeRefused, Problem
from .registers import ChangeNotConfirmed, RegisterRecorder, RegisterUnavailable

WRITERS = {COMPANY: "market_regulation", PERSON: "police"}
READERS = ("register", "department", "supervisor", "system")
MESSAGES = {
    "auth.required": ("请先登录", "please log in"),
    "auth.invalid": ("登录已失效，请重新登录", "your login is not valid any more; please log in again"),
    "auth.forbidden": ("当前身份不能办理此操作", "your role cannot do this"),
    "register.not_found": ("登记簿中没有该主体", "not in the register"),
    "cascade.not_found": ("没有这项变更", "no such change"),
    "kafka.unavailable": ("系统繁忙，变更未登记，请稍后重试", "the system is busy; nothing was recorded, please try again"),
    "kafka.unconfirmed": ("变更已发出但尚未确认，请用同一提交编号重试以获知结果",
                          "the change was sent but not yet acknowledged; retry with the same Idempotency-Key"),
    "idempotency.key_format": ("提交编号应为1至200个可见字符", "an Idempotency-Key has 1 to 200 visible characters"),
}


def _error(status: int, path: str, code: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    zh, en = MESSAGES[code]
    body: dict[str, Any] = {"errors": [{"path": path, "code": code, "message_zh": zh, "message_en": en}]}
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)


def _problems(status: int, problems: tuple[Problem, ...]) -> JSONResponse:
    return JSONResponse({"errors": [p.as_dict() for p in problems]}, status_code=status)


# -- bodies: every value is optional here and checked by the register rules, which name the field
class CompanyRegistrationIn(BaseModel):
    uscc: Any = Field(None, description="统一社会信用代码")
    fields: Any = Field(None, description="every registration item: name, address, legal_representative_name, "
                                          "legal_representative_resident_id, business_scope, registered_capital "
                                          "(万元), company_type, established_on (YYYY-MM-DD), credit_rating?")


class CompanyChangeIn(BaseModel):
    changes: Any = Field(None, description="field → new value; any of name, address, legal_representative_name + "
                                           "legal_representative_resident_id, business_scope, registered_capital, "
                                           "company_type")


class DeregistrationIn(BaseModel):
    deregistered_on: Any = Field(None, description="YYYY-MM-DD")


class ConversionIn(BaseModel):
    company_uscc: Any = Field(None, description="the new company's USCC (entity class 1)")
    fields: Any = Field(None, description="the company's registration items; business years and credit record "
                                          "are inherited from the individual business")
    converted_on: Any = Field(None, description="YYYY-MM-DD")


class HouseholdMoveIn(BaseModel):
    resident_id: Any = Field(None, description="公民身份号码; never stored, logged or echoed")
    household_address: Any = None
    household_region_code: Any = None
    moved_on: Any = Field(None, description="YYYY-MM-DD")


class DeathIn(BaseModel):
    resident_id: Any = Field(None, description="公民身份号码; never stored, logged or echoed")
    date_of_death: Any = Field(None, description="YYYY-MM-DD")
    death_certificate_no: Any = None


def create_router(settings: Settings, *, recorder: RegisterRecorder | None = None,
                  cascade: str = "cascade", database: Database | None = None) -> APIRouter:
    """The router over `settings`' broker and database; `cascade` names the cascade deployment to report on.

    `database` is the host app's connection pool, shared by the status reads and the recorder it
    makes (without one the router keeps a small pool of its own, opened on first use). Handlers are
    plain `def`: FastAPI runs them in its threadpool, so psycopg and the wait for the broker's
    acknowledgement never block the event loop."""
    db = database or Database.standalone(settings.database_url)
    rec = recorder or RegisterRecorder(settings.bootstrap_servers, settings.database_url, pool=db)
    router = APIRouter(prefix="/api/v1", tags=["registers and cascade (一处变更、多处联动)"])

    def caller(authorization: str | None, *, write: str | None = None) -> identity.Identity | JSONResponse:
        token = identity.bearer(authorization)
        if token is None:
            return _error(401, "authorization", "auth.required", {"WWW-Authenticate": "Bearer"})
        try:
            ident = identity.verify_token(token)
        except identity.InvalidToken:
            return _error(401, "authorization", "auth.invalid", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if write is not None:
            allowed = ident.role == "register" or (ident.role == "department" and ident.department == WRITERS[write])
        else:
            allowed = ident.role in READERS
        return ident if allowed else _error(403, "authorization", "auth.forbidden")

    def change_id(key: str | None) -> str | None | JSONResponse:
        if key is None:
            return None
        if not (1 <= len(key) <= 200) or not key.isprintable():
            return _error(422, "Idempotency-Key", "idempotency.key_format")
        return key

    def recorded(do) -> JSONResponse:
        try:
            result = do()
        except ChangeRefused as exc:
            status = 409 if any(p.code == "change_id.reused" for p in exc.problems) else 422
            return _problems(status, exc.problems)
        except ChangeNotConfirmed as exc:
            return _error(503, "", "kafka.unconfirmed", {"Retry-After": "5"},
                          pending={"register": exc.register, "key": exc.key, "sequence": exc.sequence,
                                   "event_id": exc.event_id})
        except (RegisterUnavailable, psycopg.OperationalError):
            return _error(503, "", "kafka.unavailable", {"Retry-After": "5"})
        items = list(result) if isinstance(result, tuple) else [result]
        body = {"recorded": [r.as_dict() for r in items],
                "status_urls": [f"/api/v1/cascade/changes/{r.event_id}" for r in items]}
        return JSONResponse(body, status_code=202)

    def write(register: str, authorization: str | None, idempotency_key: str | None, do) -> JSONResponse:
        ident = caller(authorization, write=register)
        if isinstance(ident, JSONResponse):
            return ident
        cid = change_id(idempotency_key)
        if isinstance(cid, JSONResponse):
            return cid
        return recorded(lambda: do(ident.actor(), cid))

    # -- the company register ----------------------------------------------------------------------
    @router.post("/registers/company", status_code=202, summary="设立登记: bring a company into the register")
    def register_company(body: CompanyRegistrationIn, authorization: str | None = Header(None),
                         idempotency_key: str | None = Header(None)):
        return write(COMPANY, authorization, idempotency_key, lambda actor, cid: rec.register_company(
            body.uscc, body.fields, actor=actor, change_id=cid))

    @router.post("/registers/company/{uscc}/changes", status_code=202, summary="变更登记")
    def change_company(uscc: str, body: CompanyChangeIn, authorization: str | None = Header(None),
                       idempotency_key: str | None = Header(None)):
        return write(COMPANY, authorization, idempotency_key, lambda actor, cid: rec.change_company(
            uscc, body.changes, actor=actor, change_id=cid))

    @router.post("/registers/company/{uscc}/deregistration", status_code=202, summary="注销登记")
    def deregister_company(uscc: str, body: DeregistrationIn, authorization: str | None = Header(None),
                           idempotency_key: str | None = Header(None)):
        return write(COMPANY, authorization, idempotency_key, lambda actor, cid: rec.deregister_company(
            uscc, body.deregistered_on, actor=actor, change_id=cid))

    @router.post("/registers/company/{uscc}/conversion", status_code=202,
                 summary="个转企: the individual business {uscc} becomes a company")
    def convert(uscc: str, body: ConversionIn, authorization: str | None = Header(None),
                idempotency_key: str | None = Header(None)):
        fields = body.fields if isinstance(body.fields, dict) else {}
        return write(COMPANY, authorization, idempotency_key, lambda actor, cid: rec.convert_sole_trader(
            uscc, body.company_uscc, fields, body.converted_on, actor=actor, change_id=cid))

    @router.get("/registers/company/{uscc}", summary="The master entry of a company (a department sees the "
                                                   "fields it keeps a copy of)")
    def show_company(uscc: str, authorization: str | None = Header(None)):
        ident = caller(authorization)
        if isinstance(ident, JSONResponse):
            return ident
        try:
            entry = rec.master(COMPANY, uscc)
        except (RegisterUnavailable, psycopg.OperationalError):
            return _error(503, "", "kafka.unavailable", {"Retry-After": "5"})
        if entry is None:
            return _error(404, "uscc", "register.not_found")
        body = entry.to_json()
        if ident.role == "department" and ident.department != WRITERS[COMPANY]:
            kept = rec.subscriptions.fields_for(ident.department, COMPANY)  # data minimisation
            body["fields"] = {k: v for k, v in body["fields"].items() if k in kept}
        return body

    # -- the person register -----------------------------------------------------------------------
    @router.post("/registers/person/household-moves", status_code=202, summary="户口迁移")
    def move_household(body: HouseholdMoveIn, authorization: str | None = Header(None),
                       idempotency_key: str | None = Header(None)):
        return write(PERSON, authorization, idempotency_key, lambda actor, cid: rec.move_household(
            body.resident_id, body.household_address, body.household_region_code, body.moved_on,
            actor=actor, change_id=cid))

    @router.post("/registers/person/deaths", status_code=202, summary="死亡登记: the start of 公民身后")
    def death(body: DeathIn, authorization: str | None = Header(None), idempotency_key: str | None = Header(None)):
        return write(PERSON, authorization, idempotency_key, lambda actor, cid: rec.record_death(
            body.resident_id, body.date_of_death, body.death_certificate_no, actor=actor, change_id=cid))

    # -- cascade status ----------------------------------------------------------------------------
    def read(authorization: str | None, query):
        ident = caller(authorization)
        if isinstance(ident, JSONResponse):
            return ident
        try:
            with db.connection() as conn:
                return query(conn)
        except psycopg.OperationalError:
            return _error(503, "", "kafka.unavailable", {"Retry-After": "5"})

    @router.get("/cascade/changes", summary="Changes with every target's state, attempts and time to apply")
    def cascade_changes(key: str | None = Query(None, max_length=64, description="USCC or person token"),
                        register: str | None = Query(None, pattern="^(company|person)$"),
                        open: bool = False, limit: int = Query(50, ge=1, le=1000),
                        authorization: str | None = Header(None)):
        return read(authorization, lambda conn: {"changes": cascade_status.changes(
            conn, cascade=cascade, key=key, register=register, open_only=open, limit=limit)})

    @router.get("/cascade/changes/{change_event_id}", summary="One change and its targets")
    def cascade_change(change_event_id: str, authorization: str | None = Header(None)):
        def one(conn):
            try:
                found = cascade_status.change(conn, change_event_id, cascade=cascade)
            except psycopg.errors.InvalidTextRepresentation:
                found = None
            return found if found is not None else _error(404, "change_event_id", "cascade.not_found")
        return read(authorization, one)

    @router.get("/cascade/backlog", summary="Per department: what it has not applied yet")
    def cascade_backlog(authorization: str | None = Header(None)):
        return read(authorization, lambda conn: {"departments": cascade_status.backlog(conn, cascade=cascade)})

    @router.get("/cascade/summary", summary="Changes open and complete, fan-out latency")
    def cascade_summary(authorization: str | None = Header(None)):
        return read(authorization, lambda conn: cascade_status.summary(conn, cascade=cascade))

    router.recorder = rec  # for the host app's shutdown: router.recorder.close()
    return router

