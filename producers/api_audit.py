"""谁查看了我的数据: every read of personal data by staff through the API is recorded, or refused.

The rule is declared here, once. A route that shows a person's data takes
`audit: ReadAudit = Depends(read_audit)` and, after its access rules passed and before it
answers, calls `audit.record([Read(...), …])` with what it is about to show. Then:

- an applicant (their own login, or the receipt's status link) is not recorded: it is not staff;
- staff are: one `PersonalDataRead` per read on `audit.reads` (keyed by the data subject's
  pseudonymous token), and the route answers only once the broker acknowledged every one of them
  (acks=all). If that fails the read is refused with 503 `audit.unavailable`: no read without a
  record. `read_audit` also refuses (403 `auth.staff_id`) any staff token that does not name the
  acting staff member — department, clerk and supervisor tokens always do (producers/identity.py);
  register and system tokens must on these routes.

What a read records: who (the envelope's actor — staff id, role, channel — and the department),
when (occurred_at), what (the case, the names of the fields or materials shown, a document), why
(`purpose` and its id: the open task, the escalation, the rectification, the change), the route
and the request's correlation id (its X-Request-Id). Never a value, a name or a resident ID.

The e-licences a clerk's filing fetches are looked up in producers/api_forms.py, called by routes
of producers/api_cases.py that take no audit parameter; `bind_read_audit`, a dependency the app
adds to that router, leaves the request's audit where `bound()` finds it (a context variable of
the request's task, which FastAPI copies into the thread that runs the handler).
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from fastapi import Depends, Request
from prometheus_client import Counter
from structlog.contextvars import get_contextvars

from events.envelope import Event, new_event
from infra.topics import AUDIT_READS

from . import identity
from .api_access import caller
from .api_errors import MESSAGES, ApiError, err, refuse

log = structlog.get_logger("producers.api_audit")

MESSAGES["audit.unavailable"] = ("系统繁忙，本次查看无法留痕，暂不能显示，请稍后重试",
                                 "the read could not be recorded, so nothing is shown; please try again")
UNKNOWN_REGION = "000000"
READS = Counter("onething_read_audit_total", "Staff reads of personal data by kind: recorded, or refused because "
                "the record could not be made", ["kind", "outcome"])


@dataclass(frozen=True)
class Read:
    """One read of one person's data, as the route that shows it describes it."""
    subject: str                   # the data subject's pseudonymous token (a case's applicant_token)
    kind: str                      # case_view | worklist | escalation | rectification | e_license | register_entry | …
    purpose: str                   # task | worklist | escalation | rectification | filing | correction | register | cascade
    case_id: str | None = None
    service_id: str | None = None
    fields: tuple[str, ...] = ()   # names of the personal fields or materials shown, never values
    document_id: str | None = None
    purpose_id: str | None = None  # the task, escalation, rectification or change the read served
    region_code: str = UNKNOWN_REGION


class Publisher(Protocol):
    def publish_many(self, topic: str, events: list[Event]) -> None: ...


class ReadAudit:
    """The audit of one request: its reader, the route and the request's correlation id."""

    def __init__(self, ident: identity.Identity, producer: Publisher | None, route: str, correlation_id: str):
        self.ident, self.producer, self.route, self.correlation_id = ident, producer, route, correlation_id

    @property
    def recording(self) -> bool:
        """Staff reads are recorded; an applicant reading their own case is not."""
        return self.ident.role != "applicant"

    def event(self, read: Read) -> Event:
        payload: dict[str, Any] = {
            "subject": read.subject, "department": self.ident.department, "kind": read.kind,
            "case_id": read.case_id, "service_id": read.service_id, "fields": sorted(set(read.fields)),
            "document_id": read.document_id, "purpose": read.purpose, "purpose_id": read.purpose_id,
            "route": self.route}
        return new_event("PersonalDataRead", read.subject, payload, actor=self.ident.actor(),
                         region_code=read.region_code or UNKNOWN_REGION, correlation_id=self.correlation_id)

    def record(self, reads: Iterable[Read]) -> None:
        """Record these reads before they are shown; raises the 503 that refuses the read when
        the broker does not acknowledge every one."""
        if not self.recording:
            return
        unique = {(r.subject, r.kind, r.case_id, r.service_id, r.purpose, r.purpose_id, r.document_id): r
                  for r in reads if r.subject}
        if not unique:
            return
        events = [self.event(r) for r in unique.values()]
        try:
            if self.producer is None:
                raise RuntimeError("no producer for the read audit")
            self.producer.publish_many(AUDIT_READS, events)
        except Exception as exc:
            log.error("audit.read_not_recorded", error=type(exc).__name__, route=self.route, reads=len(events),
                      role=self.ident.role)
            for r in unique.values():
                READS.labels(r.kind, "refused").inc()
            raise ApiError(503, [err("", "audit.unavailable")], {"Retry-After": "5"}) from None
        for r in unique.values():
            READS.labels(r.kind, "recorded").inc()
        log.info("audit.reads_recorded", route=self.route, reads=len(events), role=self.ident.role,
                 staff_id=self.ident.staff_id, department=self.ident.department)


def named_reader(ident: identity.Identity = Depends(caller)) -> identity.Identity:
    """On a route that shows personal data every staff token names its staff member."""
    if ident.role != "applicant" and not ident.staff_id:
        raise refuse(403, "authorization", "auth.staff_id")
    return ident


def _producer(request: Request) -> Publisher | None:
    """The router's own producer (the register router's), else the intake app's."""
    route = request.scope.get("route")
    own = getattr(getattr(type(route), "context", None), "producer", None) if route is not None else None
    if own is not None:
        return own
    state = getattr(request.app.state, "api", None)
    return state.producer if state is not None else None


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', request.url.path)}"


def _correlation_id() -> str:
    return str(get_contextvars().get("request_id") or uuid.uuid4().hex)


def read_audit(request: Request, ident: identity.Identity = Depends(named_reader)) -> ReadAudit:
    """The request's read audit (a FastAPI dependency): the rule every route that shows personal data declares."""
    return ReadAudit(ident, _producer(request), _route(request), _correlation_id())


# -- for routes that cannot take the dependency themselves (producers/api_cases.py) ---------------------
@dataclass(frozen=True)
class Binding:
    producer: Publisher | None
    route: str
    correlation_id: str
    case_id: str | None
    idempotency_key: str | None


_BOUND: ContextVar[Binding | None] = ContextVar("onething_read_audit", default=None)


async def bind_read_audit(request: Request) -> None:
    """A router-level dependency: the request's audit, for `bound()` (async, so the context variable
    is set in the request's own task and seen by the handler's thread)."""
    _BOUND.set(Binding(_producer(request), _route(request), _correlation_id(),
                       request.path_params.get("case_id"), request.headers.get("idempotency-key")))


def bound(ident: identity.Identity) -> tuple[ReadAudit, Binding]:
    """The audit bound to this request; a staff read without one is refused (503), never shown unrecorded."""
    binding = _BOUND.get()
    if binding is None:
        if ident.role == "applicant":
            return ReadAudit(ident, None, "", ""), Binding(None, "", "", None, None)
        log.error("audit.not_bound", role=ident.role)
        raise ApiError(503, [err("", "audit.unavailable")], {"Retry-After": "5"})
    if ident.role != "applicant" and not ident.staff_id:
        raise refuse(403, "authorization", "auth.staff_id")
    return ReadAudit(ident, binding.producer, binding.route, binding.correlation_id), binding
