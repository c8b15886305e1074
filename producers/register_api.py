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
staff role (register, department, supervisor, system). The rules are dependencies
(`register_writer(register)`, `status_reader`) over the API's bearer identity
(producers/api_access.py); the router's recorder, cascade name and producer travel with its routes
(`route_context`). A company's entry with its legal representative and the person register's
changes are personal data: a staff read of them names its staff member and is recorded first
(producers/api_audit.py). Control characters in any string are refused before the register rules run,
by the route class every API shares (producers/api_errors.py). The OpenAPI document gives each
body (and `{uscc}`) its precise JSON Schema (producers/register_schema.py: types, required fields,
patterns, formats, enums, from the register's own rules); the models themselves take any value, so
that the register rules, not pydantic, refuse it with their own problem naming the field.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from infra.settings import Settings
from projectors import cascade_status

from . import identity
from .api_access import caller
from .api_audit import ReadAudit, read_audit
from .api_producer import EventProducer
from .audit_reads import cascade_reads, register_entry_read
from .api_errors import ApiError, route_context, with_context
from .db import Database
from .register_changes import COMPANY, PERSON, ChangeRefused, Problem
from .register_resources import RegisterUnavailable
from .register_schema import published, uscc_parameter
from .registers import ChangeNotConfirmed, RegisterRecorder

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


def _error(status: int, path: str, code: str, headers: dict[str, str] | None = None, **extra: Any) -> ApiError:
    zh, en = MESSAGES[code]
    return ApiError(status, [{"path": path, "code": code, "message_zh": zh, "message_en": en}], headers, **extra)


def _problems(status: int, problems: tuple[Problem, ...]) -> JSONResponse:
    return JSONResponse({"errors": [p.as_dict() for p in problems]}, status_code=status)


@dataclass(frozen=True)
class RegisterContext:
    database: Database
    recorder: RegisterRecorder
    cascade: str
    producer: EventProducer | None = None  # for the read audit (the host app's, or the router's own)


def register_context(ctx: RegisterContext = Depends(route_context)) -> RegisterContext:
    return ctx


def register_writer(register: str) -> Callable[..., identity.Identity]:
    """The rule for writing `register`: a register token, or staff of the department that keeps it."""
    def writer(ident: identity.Identity = Depends(caller)) -> identity.Identity:
        if ident.role == "register" or (ident.role == "department" and ident.department == WRITERS[register]):
            return ident
        raise _error(403, "authorization", "auth.forbidden")

    writer.__name__ = f"{register}_register_writer"
    return writer


def status_reader(ident: identity.Identity = Depends(caller)) -> identity.Identity:
    """Any staff role reads the registers' entries and the cascade's status."""
    if ident.role not in READERS:
        raise _error(403, "authorization", "auth.forbidden")
    return ident


def change_id(idempotency_key: str | None = Header(None)) -> str | None:
    """The Idempotency-Key names the change: a retry with it gets the recorded change back."""
    if idempotency_key is not None and not (1 <= len(idempotency_key) <= 200 and idempotency_key.isprintable()):
        raise _error(422, "Idempotency-Key", "idempotency.key_format")
    return idempotency_key


def recorded(do: Callable[[], Any]) -> JSONResponse:
    try:
        result = do()
    except ChangeRefused as exc:
        status = 409 if any(p.code == "change_id.reused" for p in exc.problems) else 422
        return _problems(status, exc.problems)
    except ChangeNotConfirmed as exc:
        raise _error(503, "", "kafka.unconfirmed", {"Retry-After": "5"},
                     pending={"register": exc.register, "key": exc.key, "sequence": exc.sequence,
                              "event_id": exc.event_id}) from None
    except (RegisterUnavailable, psycopg.OperationalError):
        raise _error(503, "", "kafka.unavailable", {"Retry-After": "5"}) from None
    items = list(result) if isinstance(result, tuple) else [result]
    body = {"recorded": [r.as_dict() for r in items],
            "status_urls": [f"/api/v1/cascade/changes/{r.event_id}" for r in items]}
    return JSONResponse(body, status_code=202)


# -- bodies: every value is optional here and checked by the register rules, which name the field;
# the OpenAPI document shows each body's precise schema (producers/register_schema.py)
class _Body(BaseModel):
    model_config = ConfigDict(json_schema_extra=published)


class CompanyRegistrationIn(_Body):
    uscc: Any = Field(None, description="统一社会信用代码")
    fields: Any = Field(None, description="every registration item: name, address, legal_representative_name, "
                                          "legal_representative_resident_id, business_scope, registered_capital "
                                          "(万元), company_type, established_on (YYYY-MM-DD), credit_rating?")


class CompanyChangeIn(_Body):
    changes: Any = Field(None, description="field → new value; any of name, address, legal_representative_name + "
                                           "legal_representative_resident_id, business_scope, registered_capital, "
                                           "company_type")


class DeregistrationIn(_Body):
    deregistered_on: Any = Field(None, description="YYYY-MM-DD")


class ConversionIn(_Body):
    company_uscc: Any = Field(None, description="the new company's USCC (entity class 1)")
    fields: Any = Field(None, description="the company's registration items; business years and credit record "
                                          "are inherited from the individual business")
    converted_on: Any = Field(None, description="YYYY-MM-DD")


class HouseholdMoveIn(_Body):
    resident_id: Any = Field(None, description="公民身份号码; never stored, logged or echoed")
    household_address: Any = None
    household_region_code: Any = None
    moved_on: Any = Field(None, description="YYYY-MM-DD")


class DeathIn(_Body):
    resident_id: Any = Field(None, description="公民身份号码; never stored, logged or echoed")
    date_of_death: Any = Field(None, description="YYYY-MM-DD")
    death_certificate_no: Any = None


#: the `{uscc}` of a route: a code registered by market regulation (个转企 starts from an individual business)
MARKET_ENTITY = Path(description="统一社会信用代码", json_schema_extra=uscc_parameter("123"))
INDIVIDUAL_BUSINESS = Path(description="统一社会信用代码 of the individual business",
                           json_schema_extra=uscc_parameter("2"))


# -- the company register ----------------------------------------------------------------------
def register_company(body: CompanyRegistrationIn, ident: identity.Identity = Depends(register_writer(COMPANY)),
                     cid: str | None = Depends(change_id), ctx: RegisterContext = Depends(register_context)):
    return recorded(lambda: ctx.recorder.register_company(body.uscc, body.fields, actor=ident.actor(), change_id=cid))


def change_company(body: CompanyChangeIn, uscc: str = MARKET_ENTITY,
                   ident: identity.Identity = Depends(register_writer(COMPANY)),
                   cid: str | None = Depends(change_id), ctx: RegisterContext = Depends(register_context)):
    return recorded(lambda: ctx.recorder.change_company(uscc, body.changes, actor=ident.actor(), change_id=cid))


def deregister_company(body: DeregistrationIn, uscc: str = MARKET_ENTITY,
                       ident: identity.Identity = Depends(register_writer(COMPANY)),
                       cid: str | None = Depends(change_id), ctx: RegisterContext = Depends(register_context)):
    return recorded(lambda: ctx.recorder.deregister_company(uscc, body.deregistered_on, actor=ident.actor(),
                                                            change_id=cid))


def convert(body: ConversionIn, uscc: str = INDIVIDUAL_BUSINESS,
            ident: identity.Identity = Depends(register_writer(COMPANY)),
            cid: str | None = Depends(change_id), ctx: RegisterContext = Depends(register_context)):
    fields = body.fields if isinstance(body.fields, dict) else {}
    return recorded(lambda: ctx.recorder.convert_sole_trader(uscc, body.company_uscc, fields, body.converted_on,
                                                             actor=ident.actor(), change_id=cid))


def show_company(uscc: str = MARKET_ENTITY, ident: identity.Identity = Depends(status_reader),
                 audit: ReadAudit = Depends(read_audit), ctx: RegisterContext = Depends(register_context)):
    try:
        entry = ctx.recorder.master(COMPANY, uscc)
    except (RegisterUnavailable, psycopg.OperationalError):
        raise _error(503, "", "kafka.unavailable", {"Retry-After": "5"}) from None
    if entry is None:
        raise _error(404, "uscc", "register.not_found")
    body = entry.to_json()
    if ident.role == "department" and ident.department != WRITERS[COMPANY]:
        kept = ctx.recorder.subscriptions.fields_for(ident.department, COMPANY)  # data minimisation
        body["fields"] = {k: v for k, v in body["fields"].items() if k in kept}
    entry_read = register_entry_read(entry.fields, body["fields"], uscc)
    audit.record([entry_read] if entry_read else [])
    return body


# -- the person register -----------------------------------------------------------------------
def move_household(body: HouseholdMoveIn, ident: identity.Identity = Depends(register_writer(PERSON)),
                   cid: str | None = Depends(change_id), ctx: RegisterContext = Depends(register_context)):
    return recorded(lambda: ctx.recorder.move_household(
        body.resident_id, body.household_address, body.household_region_code, body.moved_on,
        actor=ident.actor(), change_id=cid))


def death(body: DeathIn, ident: identity.Identity = Depends(register_writer(PERSON)),
          cid: str | None = Depends(change_id), ctx: RegisterContext = Depends(register_context)):
    return recorded(lambda: ctx.recorder.record_death(body.resident_id, body.date_of_death, body.death_certificate_no,
                                                      actor=ident.actor(), change_id=cid))


# -- cascade status ----------------------------------------------------------------------------
def read(ctx: RegisterContext, query: Callable[[psycopg.Connection], Any]) -> Any:
    try:
        with ctx.database.connection() as conn:
            return query(conn)
    except psycopg.OperationalError:
        raise _error(503, "", "kafka.unavailable", {"Retry-After": "5"}) from None


def cascade_changes(key: str | None = Query(None, max_length=64, description="USCC or person token"),
                    register: str | None = Query(None, pattern="^(company|person)$"),
                    open: bool = False, limit: int = Query(50, ge=1, le=1000),
                    _reader: identity.Identity = Depends(status_reader), audit: ReadAudit = Depends(read_audit),
                    ctx: RegisterContext = Depends(register_context)):
    found = read(ctx, lambda conn: cascade_status.changes(
        conn, cascade=ctx.cascade, key=key, register=register, open_only=open, limit=limit))
    audit.record(cascade_reads(found))
    return {"changes": found}


def cascade_change(change_event_id: str, _reader: identity.Identity = Depends(status_reader),
                   audit: ReadAudit = Depends(read_audit), ctx: RegisterContext = Depends(register_context)):
    def one(conn):
        try:
            found = cascade_status.change(conn, change_event_id, cascade=ctx.cascade)
        except psycopg.errors.InvalidTextRepresentation:
            found = None
        if found is None:
            raise _error(404, "change_event_id", "cascade.not_found")
        return found
    found = read(ctx, one)
    audit.record(cascade_reads([found]))
    return found


def cascade_backlog(_reader: identity.Identity = Depends(status_reader),
                    ctx: RegisterContext = Depends(register_context)):
    return read(ctx, lambda conn: {"departments": cascade_status.backlog(conn, cascade=ctx.cascade)})


def cascade_summary(_reader: identity.Identity = Depends(status_reader),
                    ctx: RegisterContext = Depends(register_context)):
    return read(ctx, lambda conn: cascade_status.summary(conn, cascade=ctx.cascade))


ROUTES: list[tuple[str, str, Callable, str]] = [
    ("POST", "/registers/company", register_company, "设立登记: bring a company into the register"),
    ("POST", "/registers/company/{uscc}/changes", change_company, "变更登记"),
    ("POST", "/registers/company/{uscc}/deregistration", deregister_company, "注销登记"),
    ("POST", "/registers/company/{uscc}/conversion", convert, "个转企: the individual business {uscc} becomes a company"),
    ("GET", "/registers/company/{uscc}", show_company,
     "The master entry of a company (a department sees the fields it keeps a copy of)"),
    ("POST", "/registers/person/household-moves", move_household, "户口迁移"),
    ("POST", "/registers/person/deaths", death, "死亡登记: the start of 公民身后"),
    ("GET", "/cascade/changes", cascade_changes, "Changes with every target's state, attempts and time to apply"),
    ("GET", "/cascade/changes/{change_event_id}", cascade_change, "One change and its targets"),
    ("GET", "/cascade/backlog", cascade_backlog, "Per department: what it has not applied yet"),
    ("GET", "/cascade/summary", cascade_summary, "Changes open and complete, fan-out latency"),
]


def create_router(settings: Settings, *, recorder: RegisterRecorder | None = None,
                  cascade: str = "cascade", database: Database | None = None,
                  producer: EventProducer | None = None) -> APIRouter:
    """The router over `settings`' broker and database; `cascade` names the cascade deployment to report on.

    `database` is the host app's connection pool, shared by the status reads and the recorder it
    makes (without one the router keeps a small pool of its own, opened on first use); `producer` is
    the host app's, for the read audit (without one the router makes its own, connected on first
    use). Handlers are plain `def`: FastAPI runs them in its threadpool, so psycopg and the wait for
    the broker's acknowledgement never block the event loop."""
    db = database or Database.standalone(settings.database_url)
    rec = recorder or RegisterRecorder(settings.bootstrap_servers, settings.database_url, pool=db)
    audit_producer = producer or EventProducer(settings.bootstrap_servers, 10.0)
    router = APIRouter(prefix="/api/v1", tags=["registers and cascade (一处变更、多处联动)"],
                       route_class=with_context(RegisterContext(db, rec, cascade, audit_producer), "RegisterRoute"))
    for method, path, endpoint, summary in ROUTES:
        router.add_api_route(path, endpoint, methods=[method], summary=summary,
                             status_code=202 if method == "POST" else 200)
    router.recorder = rec  # for the host app's shutdown: router.recorder.close()
    return router
