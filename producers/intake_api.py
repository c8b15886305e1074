"""The intake API (一表申报 online, at the window and on home visits): where applicants' facts enter.

    from producers.intake_api import create_app, serve
    app = create_app(Settings.from_env())        # FastAPI; OpenAPI at /openapi.json
    serve(Settings.from_env())                   # uvicorn on ONETHING_API_HOST:ONETHING_API_PORT

Endpoints (JSON; errors always {"errors": [{"path", "code", "message_zh", "message_en"}]}):
  GET  /api/v1/bundles                        the bundles (一件事)
  GET  /api/v1/bundles/{code}/form            the merged form, prefilled from the caller's e-licences
  POST /api/v1/documents                      upload a document (raw body) → {"ref"}
  POST /api/v1/applications                   submit → 202 after Kafka acknowledged ApplicationSubmitted
  GET  /api/v1/cases/{case_id}                the case view (applicant or a department working on it)
  POST /api/v1/cases/{case_id}/materials      补正: supply or correct materials/fields → MaterialsSupplemented
  POST /api/v1/cases/{case_id}/withdraw       → ApplicationWithdrawn
  GET  /api/v1/departments/{dept}/worklist    a department's worklist (when the read model offers one)
  GET  /status/{case_id}                      the citizen status page (portal/)
  GET  /metrics                               Prometheus

Guarantees: a form with any error produces nothing and answers 422 listing every error; an
accepted application is answered 202 only after the broker acknowledged it (acks=all); if
Kafka cannot be reached the answer is 503 and the database transaction that recorded the
case (and its Idempotency-Key) is rolled back. Error messages and logs never carry what a
person typed: resident IDs, names and phones stay out of both.

Keeping up (nothing blocks the event loop): PostgreSQL is psycopg's synchronous API over one
connection pool per process (producers/db.py, opened and closed with the app), and the wait
for Kafka's acknowledgement is a blocking `future.get()`. So every handler that touches either
is a plain `def`, which FastAPI runs in its threadpool (anyio's limiter: 40 threads); the only
`async def` ones are the middleware and error handlers, which block on nothing, and the
upload, which streams its body on the loop and writes it from `run_in_threadpool`. That is
simpler than psycopg's async pool with kafka-python's futures wrapped one by one, and just as
correct: a thread that waits for the broker holds one pooled connection and no lock the loop
needs. A request holds at most one pooled connection at a time, so a pool smaller than the
threadpool never deadlocks (threads beyond it wait up to ONETHING_API_POOL_TIMEOUT_S, then 503).

Environment: ONETHING_API_HOST (127.0.0.1), ONETHING_API_PORT (8000),
ONETHING_API_PRODUCE_TIMEOUT_S (10), ONETHING_API_POOL_MIN / _MAX / _TIMEOUT_S (2 / 16 / 5, see
producers/db.py), ONETHING_DEMO_PEOPLE (1 = seed the demo e-licences at start; default: only
while the insecure dev secrets are in use), plus the identity secrets of producers/identity.py
and the connection settings of infra/settings.py.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import anyio.to_thread
import orjson
import psycopg
import structlog
from fastapi import Body, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bind_contextvars, reset_contextvars

from catalog.form import FieldError, MergedForm, validate_form
from catalog.loader import load_catalog
from catalog.model import Catalog
from catalog.validators import check_resident_id
from catalog.validators import message as validator_message
from events import bus
from events.envelope import derived_event_id, new_event
from infra import log as infra_log
from infra.settings import REPO_ROOT, Settings
from infra.topics import APPLICATIONS

from . import e_license, identity, intake_store
from .db import Database

log = structlog.get_logger("producers.intake_api")
PORTAL_DIR = REPO_ROOT / "portal"
UNKNOWN_REGION = "000000"

# -- metrics (labels: method, route template, status class, outcome; never a person or a case) --
REQUESTS = Counter("onething_api_requests_total", "HTTP requests to the intake API", ["method", "route", "status"])
REQUEST_SECONDS = Histogram("onething_api_request_seconds", "Intake API request latency", ["method", "route"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SUBMISSIONS = Counter("onething_intake_submissions_total", "Applications by outcome",
                      ["outcome"])  # accepted | replayed | invalid | unavailable

_CHILDREN_MAX = 4096  # labelled children cached per metric; beyond, `labels()` is asked each time
_children: dict[tuple, Any] = {}


def _child(metric, *labels: str):
    """`metric.labels(*labels)`, remembered: the same child object, without prometheus_client's
    label checks and lock on every request. Created on first use only, as `labels()` would, so
    /metrics shows no series before it happened."""
    key = (metric, *labels)
    try:
        return _children[key]
    except KeyError:
        child = metric.labels(*labels)
        if len(_children) < _CHILDREN_MAX:
            _children[key] = child
        return child


def _submitted(outcome: str) -> None:
    _child(SUBMISSIONS, outcome).inc()


# -- errors ----------------------------------------------------------------------------------
MESSAGES: dict[str, tuple[str, str]] = {
    "auth.required": ("请先登录", "please log in"),
    "auth.invalid": ("登录已失效，请重新登录", "your login is not valid any more; please log in again"),
    "auth.forbidden": ("当前身份不能办理此操作", "your role cannot do this"),
    "case.not_found": ("未找到该办件", "no such case"),
    "case.withdrawn": ("该办件已撤回", "this case has been withdrawn"),
    "case.completed": ("该办件已办结", "this case is already completed"),
    "bundle.unknown": ("没有这个“一件事”", "there is no such bundle"),
    "bundle.not_available": ("该“一件事”暂未开通网上申报", "this bundle cannot be applied for online yet"),
    "kafka.unavailable": ("系统繁忙，申请未提交，请稍后重试", "the system is busy; nothing was submitted, please try again"),
    "database.unavailable": ("系统繁忙，请稍后重试", "the system is busy; please try again"),
    "idempotency.key_reused": ("同一提交编号已用于另一份申请", "this Idempotency-Key was used for a different request"),
    "idempotency.key_format": ("提交编号应为1至200个可见字符", "an Idempotency-Key has 1 to 200 visible characters"),
    "applicant.required": ("代办时须提供申请人的公民身份号码", "an assisted filing names the applicant's resident ID"),
    "identity.mismatch": ("须为申请人本人的公民身份号码（与登录身份不一致）",
                          "must be the applicant's own resident ID (it does not match the logged-in person)"),
    "form.unexpected_material": ("本次申请不需要此材料", "this application does not need this document"),
    "material.source": ("材料来源应为上传、电子证照或容缺承诺", "a material's source is uploaded, fetched or promised"),
    "material.ref_required": ("请先上传文件", "upload the file first"),
    "material.unknown_document": ("找不到此上传文件，请重新上传", "this upload was not found; upload it again"),
    "material.not_promisable": ("此为核心材料，不能容缺后补", "this is a core document; it cannot be promised for later"),
    "material.e_license_not_found": ("电子证照库中未找到此证照，请上传扫描件",
                                     "not found in the e-licence library; upload a scan instead"),
    "material.not_e_license": ("此材料没有电子证照，请上传", "this document has no e-licence; upload it"),
    "supplement.empty": ("请至少补充一项材料或信息", "supply at least one document or field"),
    "document.type": ("只接受PDF、JPEG、PNG、WEBP或HEIC文件", "only PDF, JPEG, PNG, WEBP or HEIC files are accepted"),
    "document.too_large": ("文件不能超过10MB", "a file can be at most 10 MB"),
    "document.empty": ("文件为空", "the file is empty"),
    "worklist.unavailable": ("部门工作台暂未开通", "the department worklist is not available yet"),
    "request.invalid": ("请求格式不正确", "the request is malformed"),
    "not_found": ("页面不存在", "not found"),
}


def err(path: str, code: str, label: tuple[str, str] | None = None) -> dict[str, str]:
    zh, en = MESSAGES.get(code, ("请求无法处理", "the request cannot be handled"))
    if label:
        zh, en = f"{label[0]}：{zh}", f"{label[1]}: {en}"
    return {"path": path, "code": code, "message_zh": zh, "message_en": en}


def field_error(e: FieldError) -> dict[str, str]:
    return {"path": e.path, "code": e.code, "message_zh": e.message_zh, "message_en": e.message_en}


class ApiError(Exception):
    def __init__(self, status: int, errors: list[dict[str, str]], headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.errors, self.headers = status, errors, headers or {}


def _not_found() -> ApiError:
    return ApiError(404, [err("case_id", "case.not_found")])


class _JSON(JSONResponse):
    """A JSONResponse rendered by orjson, ~20x faster than the standard encoder and the same
    bytes as Starlette's `json.dumps(ensure_ascii=False, separators=(",", ":"))` for what it is
    used on: dicts with str keys of str, int, bool, None and lists of those (error bodies,
    acceptances). Not for floats (orjson writes 1e16 where json writes 1e+16) or anything
    orjson serialises natively and json refuses (UUIDs, enums, dataclasses, datetimes):
    those answers keep `JSONResponse`. What orjson refuses goes to the standard encoder."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:  # orjson.JSONEncodeError: a non-str key, an int beyond 64 bits
            return super().render(content)


_REQUEST_ID_HEADER = b"x-request-id"


class _Observe:
    """Request ids, the request metrics and `X-Request-Id` on every HTTP response: a plain ASGI
    middleware. (It was an `@app.middleware("http")` function; Starlette runs those through
    BaseHTTPMiddleware, which puts every request into an extra task and passes the request and
    response bodies through memory streams and more task groups: ~2 ms of CPU per request.)

    - The request id is the caller's X-Request-Id if printable and at most 64 characters, else
      a fresh uuid4; everything logged for the request carries it as request_id and
      correlation_id.
    - REQUESTS and REQUEST_SECONDS are recorded when the response starts, labelled with the
      route's path template (looked up before routing rewrites the scope of a mount); the
      status is 500 when the app raised, or returned, before starting a response, which then
      propagates as before (ServerErrorMiddleware answers it, without X-Request-Id).
    """

    def __init__(self, app: ASGIApp, *, templates: Callable[[Scope], str]):
        self.app = app
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_HEADER:
                request_id = value.decode("latin-1")
                break
        if not request_id or len(request_id) > 64 or not request_id.isprintable():
            request_id = uuid.uuid4().hex
        started = time.perf_counter()
        method = scope["method"]
        template = self.templates(scope)  # before routing rewrites the scope (mounts)
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            recorded = True
            _child(REQUESTS, method, template, f"{status // 100}xx").inc()
            _child(REQUEST_SECONDS, method, template).observe(time.perf_counter() - started)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start" and not recorded:
                record(message["status"])
                MutableHeaders(scope=message)["X-Request-Id"] = request_id
            await send(message)

        tokens = bind_contextvars(request_id=request_id, correlation_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if not recorded:
                record(500)
            raise
        finally:
            reset_contextvars(**tokens)
        if not recorded:
            record(500)
            raise RuntimeError("No response returned.")


class _RouteTemplates:
    """`_route_template` remembered per (method, root path, path) — the route's path template
    is a metric label of every request, and finding it tries the routes one by one.

    Forgets everything when the app's route list changes length (routes are added while the
    app is built) and when it holds `MAX` paths (paths carry case ids, so they do not repeat
    forever); what it answers is always what `_route_template` answers."""

    MAX = 2048

    def __init__(self, app: FastAPI):
        self.app = app
        self._cache: dict[tuple[str, str, str], str] = {}
        self._routes = -1

    def __call__(self, scope: Scope) -> str:
        routes = len(self.app.router.routes)
        key = (scope["method"], scope.get("root_path", ""), scope["path"])
        if routes == self._routes:
            template = self._cache.get(key)
            if template is not None:
                return template
        else:
            self._cache = {}
            self._routes = routes
        template = _route_template(self.app, Request(scope))
        if len(self._cache) >= self.MAX:
            self._cache = {}
        self._cache[key] = template
        return template


# -- request bodies (documented in OpenAPI; values are checked by the catalog, not here) ------
MATERIALS_DOC = ('material id → {"source": "uploaded", "ref": "<ref from POST /api/v1/documents>"} | '
                 '{"source": "promised"} (容缺, non-core documents only) | {"source": "fetched"}. '
                 "E-licence materials the form needs are fetched without being named.")


class Applicant(BaseModel):
    """帮办代办: the person a clerk files for (required when the caller is a clerk)."""
    resident_id: str = Field(..., description="公民身份号码 of the applicant; never stored or echoed")


class ApplicationIn(BaseModel):
    bundle_code: str = Field(..., examples=["newborn"])
    form: dict[str, Any] = Field(default_factory=dict, description="field id → value (dates YYYY-MM-DD)")
    materials: dict[str, Any] = Field(default_factory=dict, description=MATERIALS_DOC)
    applicant: Applicant | None = None


class SupplementIn(BaseModel):
    materials: dict[str, Any] = Field(default_factory=dict, description=MATERIALS_DOC)
    form: dict[str, Any] = Field(default_factory=dict, description="corrected field values")
    applicant: Applicant | None = None


class WithdrawIn(BaseModel):
    reason: str | None = Field(None, max_length=500)
    applicant: Applicant | None = None


class Accepted(BaseModel):
    case_id: str
    receipt_no: str
    status_url: str = Field(..., description="the status page; its #token fragment lets the applicant open it")
    materials: list[dict[str, Any]] = []


# -- the Kafka producer: one per process, created on first use so the API starts without a broker --
class _Producer:
    """One KafkaProducer shared by every request of the process (kafka-python's producer is
    thread-safe), tuned for many small sends each of which someone waits for:

    - a request waits on its own record's future until the broker acknowledged it (acks=all,
      idempotent), and never calls `flush()`, which would also wait for every other request's
      records;
    - linger_ms=1 (`LINGER_MS`): records of concurrent requests sent within a millisecond leave
      in one produce request per partition instead of one each, for at most 1 ms of latency
      (0 sends each alone);
    - the timeouts follow ONETHING_API_PRODUCE_TIMEOUT_S, so an unreachable broker answers 503
      within about that time.
    `start()` connects in the background at startup, so the first request does not pay for it.
    """

    LINGER_MS = 1

    def __init__(self, bootstrap: str, timeout_s: float):
        self.bootstrap, self.timeout_s = bootstrap, timeout_s
        self._lock = threading.Lock()
        self._producer = None

    def _get(self):
        with self._lock:
            if self._producer is None:
                half = max(500, int(self.timeout_s * 500))
                self._producer = bus.make_producer(
                    self.bootstrap, client_id="onething-intake-api", bootstrap_timeout_ms=half, max_block_ms=half,
                    request_timeout_ms=half, delivery_timeout_ms=int(self.timeout_s * 1000) + 10,
                    linger_ms=self.LINGER_MS)
            return self._producer

    def start(self) -> None:
        def warm() -> None:
            try:
                self._get()
            except Exception as exc:  # the broker is not there yet: the first request tries again
                log.warning("intake.kafka_not_ready", error=type(exc).__name__)

        threading.Thread(target=warm, name="intake-producer-start", daemon=True).start()

    def publish(self, topic: str, event) -> None:
        """Returns once the broker acknowledged the event (acks=all); raises otherwise."""
        producer = self._get()
        try:
            bus.publish(producer, topic, event, timeout=self.timeout_s + 2)  # this record's future only
        except Exception:
            self._discard(producer)
            raise

    def _discard(self, producer) -> None:
        """Drop a producer that failed (the next request builds a fresh one), unless another
        request already replaced it."""
        with self._lock:
            if self._producer is not producer:
                return
            self._producer = None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:  # already broken: nothing more to release
                pass

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=5)


def _default_read_case(conn: psycopg.Connection, case_id: str) -> dict | None:
    try:
        from projectors.case_view import read_case
    except ImportError:
        return None
    return read_case(conn, case_id)


def _default_read_worklist() -> Callable | None:
    try:
        from projectors import case_view
    except ImportError:
        return None
    return getattr(case_view, "read_worklist", None)


# -- helpers over the catalog -------------------------------------------------------------------
def _label(lbl) -> dict[str, str]:
    return {"zh": lbl.zh, "en": lbl.en}


def _needed(fm, values: dict[str, Any]) -> bool:
    return fm.required or any(c.holds(values) for c in fm.required_when)


def promisable(catalog: Catalog, material_id: str) -> bool:
    """容缺: only secondary documents may be promised for later; identity and civil-status
    documents (every e-licence kind, every ID card) are core and must be there at once."""
    mat = catalog.materials[material_id]
    return not (mat.e_license or material_id.endswith("_id_card") or material_id == "household_register")


def event_form(values: dict[str, Any]) -> dict[str, str]:
    """The event's form is text: booleans true/false, option sets comma-joined, blanks left out."""
    out = {}
    for k, v in values.items():
        if v is None or v == "" or v == []:
            continue
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, (list, tuple)):
            out[k] = ",".join(str(x) for x in v)
        else:
            out[k] = str(v)
    return out


def _services_view(catalog: Catalog, service_ids) -> list[dict[str, Any]]:
    out = []
    for sid in service_ids:
        s = catalog.services[sid]
        out.append({"service_id": sid, "label": _label(s.label), "department": s.department,
                    "department_label": _label(catalog.departments[s.department].label)})
    return out


def _ordered_departments(catalog: Catalog, service_ids) -> list[str]:
    seen: list[str] = []
    for sid in service_ids:
        d = catalog.services[sid].department
        if d not in seen:
            seen.append(d)
    return seen


@dataclass
class _Caller:
    ident: identity.Identity
    applicant_token: str   # whose case it is (the caller, or the person a clerk files for)


# -- the app ---------------------------------------------------------------------------------------
def create_app(settings: Settings, *, read_case: Callable[[psycopg.Connection, str], dict | None] | None = None,
               read_worklist: Callable | None = None, produce_timeout_s: float | None = None,
               seed_demo: bool | None = None, catalog: Catalog | None = None) -> FastAPI:
    """The intake API over the given broker and database.

    `read_case` defaults to `projectors.case_view.read_case` (looked up per request, so the
    app picks the read model up as soon as it is installed); tests may pass their own.
    """
    cat = catalog or load_catalog()
    timeout = produce_timeout_s if produce_timeout_s is not None else float(
        os.environ.get("ONETHING_API_PRODUCE_TIMEOUT_S") or 10)
    producer = _Producer(settings.bootstrap_servers, timeout)
    case_reader = read_case or _default_read_case
    if seed_demo is None:
        seed_demo = os.environ.get("ONETHING_DEMO_PEOPLE", "1" if identity.using_dev_secrets() else "0") == "1"
    db_url = settings.database_url
    db = Database(db_url)  # one pool for every route of the app, the registers' and KPIs' too

    def seed() -> None:
        try:
            with db.connection() as conn:
                e_license.seed_demo_people(conn)
        except psycopg.Error as exc:
            log.warning("intake.demo_seed_failed", error=type(exc).__name__)

    def shutdown() -> None:
        producer.close()
        register_router.recorder.close()
        db.close()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        """Opens the pool (and starts the producer's connection) at startup, closes both at
        shutdown; what blocks runs in a worker thread, never on the event loop."""
        db.open()
        producer.start()
        threads = anyio.to_thread.current_default_thread_limiter().total_tokens
        if db.max_size > threads:
            log.warning("intake.pool_larger_than_threadpool", pool_max=db.max_size, threads=threads,
                        hint="connections beyond the threads serving requests are never used")
        if seed_demo:
            await run_in_threadpool(seed)
        if identity.using_dev_secrets():
            log.warning("intake.insecure_dev_secrets",
                        hint="set ONETHING_TOKEN_SECRET and ONETHING_PSEUDONYM_SECRET outside the demo")
        yield
        await run_in_threadpool(shutdown)

    from .register_api import create_router

    register_router = create_router(settings, database=db)
    app = FastAPI(
        title="onething intake API — 高效办成一件事",
        version="1.0.0",
        description=__doc__.split("\n\n")[0] + "\n\nBearer tokens: HS256 JWTs from the (demo) single sign-on.",
        lifespan=lifespan,
    )
    app.state.producer = producer
    app.state.database = db
    app.state.catalog = cat

    # -- plumbing: request ids, metrics, error bodies ---------------------------------------
    app.add_middleware(_Observe, templates=_RouteTemplates(app))

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return _JSON({"errors": exc.errors}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError):
        errors = []
        for e in exc.errors():  # never `input`: it may hold what a person typed
            loc = [str(p) for p in e.get("loc", ()) if p != "body"]
            errors.append({"path": ".".join(loc) or "body", "code": f"request.{e.get('type', 'invalid')}",
                           "message_zh": MESSAGES["request.invalid"][0], "message_en": str(e.get("msg", ""))})
        return _JSON({"errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else "request.invalid"
        return _JSON({"errors": [err("", code)]}, status_code=exc.status_code)

    @app.exception_handler(psycopg.OperationalError)
    async def db_down(_request: Request, exc: psycopg.OperationalError):
        log.error("intake.database_unavailable", error=type(exc).__name__)
        return _JSON({"errors": [err("", "database.unavailable")]}, status_code=503, headers={"Retry-After": "5"})

    # -- identity -----------------------------------------------------------------------------
    def authenticate(authorization: str | None, *, optional: bool = False) -> identity.Identity | None:
        token = identity.bearer(authorization)
        if token is None:
            if optional:
                return None
            raise ApiError(401, [err("authorization", "auth.required")], {"WWW-Authenticate": "Bearer"})
        try:
            return identity.verify_token(token)
        except identity.InvalidToken:
            raise ApiError(401, [err("authorization", "auth.invalid")],
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None

    def acting_for(ident: identity.Identity, applicant: Applicant | None) -> _Caller:
        """Who the case belongs to: the applicant themself, or the person a clerk files for."""
        if ident.role == "applicant":
            return _Caller(ident, ident.subject)
        if ident.role == "clerk":
            if applicant is None:
                raise ApiError(422, [err("applicant.resident_id", "applicant.required")])
            problem = check_resident_id(applicant.resident_id)
            if problem:
                zh, en = validator_message(problem)
                raise ApiError(422, [{"path": "applicant.resident_id", "code": problem,
                                      "message_zh": f"申请人公民身份号码：{zh}",
                                      "message_en": f"Applicant's resident ID: {en}"}])
            return _Caller(ident, identity.subject_token(applicant.resident_id))
        raise ApiError(403, [err("authorization", "auth.forbidden")])

    def may_see(ident: identity.Identity, case_id: str, applicant_token: str | None, departments) -> bool:
        if ident.case_id and ident.case_id != case_id:
            return False
        if ident.role == "applicant":
            return applicant_token is not None and ident.subject == applicant_token
        if ident.role == "department":
            return ident.department in (departments or ())
        return False

    # -- bundles and forms -------------------------------------------------------------------------
    forms: dict[str, MergedForm] = {}

    def merged_form(bundle_code: str) -> MergedForm:
        """The bundle's merged form, built once per bundle rather than per request (~0.4 ms
        each): the catalog does not change while the app runs, and a MergedForm is immutable."""
        mf = forms.get(bundle_code)
        if mf is None:
            mf = forms[bundle_code] = cat.merged_form(bundle_code=bundle_code)
        return mf

    @app.get("/api/v1/bundles", tags=["catalog"], summary="一件事: every bundle")
    def bundles() -> dict[str, Any]:
        out = []
        for b in cat.bundles.values():
            services = list(cat.select(bundle_code=b.code).services) if b.modelled and b.members else []
            out.append({"code": b.code, "label": _label(b.label), "kind": b.kind,
                        "available": bool(services), "lead": b.lead,
                        "promised_days": b.promised_total.value if b.promised_total else None,
                        "services": len(services), "departments": _ordered_departments(cat, services)})
        return {"bundles": out}

    def bundle_form(code: str) -> MergedForm:
        if code not in cat.bundles:
            raise ApiError(404, [err("bundle_code", "bundle.unknown")])
        b = cat.bundles[code]
        if not (b.modelled and b.members):
            raise ApiError(404, [err("bundle_code", "bundle.not_available")])
        return merged_form(code)

    @app.get("/api/v1/bundles/{code}/form", tags=["catalog"],
             summary="一表申报: the merged form, prefilled from the caller's own e-licences")
    def form(code: str, authorization: str | None = Header(None)) -> JSONResponse:
        mf = bundle_form(code)
        ident = authenticate(authorization, optional=True)
        wallet = e_license.Wallet()
        if ident is not None and ident.role == "applicant" and not ident.case_id:
            with db.connection() as conn:
                wallet = e_license.wallet(conn, ident.subject)
        prefilled = e_license.prefill(wallet, {f.id for f in mf.fields})
        fields = []
        for ff in mf.fields:
            f = ff.field
            value, lic = prefilled.get(ff.id, (None, None))
            fields.append({
                "id": ff.id, "type": f.type, "label": _label(f.label), "required": ff.required,
                "required_when": [{"field": c.field, "op": c.op, "value": c.value} for c in ff.required_when],
                "services": list(ff.services), "pii": f.pii,
                "options": [{"value": o.value, "label": _label(o.label)} for o in f.options],
                "hint": _label(f.hint) if f.hint else None, "max_length": f.max_length, "pattern": f.pattern,
                "min": f.min, "max": f.max, "value": value,
                "prefilled_from": {"kind": lic.kind, "licence_no": lic.licence_no,
                                   "label": dict(zip(("zh", "en"), e_license.KIND_LABELS[lic.kind]))} if lic else None,
            })
        materials = []
        for fm in mf.materials:
            m = fm.material
            preview = e_license.material_preview(fm.id, wallet, prefilled) if m.e_license else None
            materials.append({
                "id": fm.id, "label": _label(m.label), "required": fm.required,
                "required_when": [{"field": c.field, "op": c.op, "value": c.value} for c in fm.required_when],
                "services": list(fm.services), "e_license": m.e_license, "issuer": m.issuer,
                "fetched": preview is not None, "licence_no": preview["licence_no"] if preview else None,
                "holder": preview["holder"] if preview else None, "promisable": promisable(cat, fm.id),
            })
        b = cat.bundles[code]
        body = {"bundle": {"code": code, "label": _label(b.label), "kind": b.kind},
                "services": _services_view(cat, mf.selection.services),
                "waves": [list(w) for w in mf.selection.waves],
                "fields": fields, "materials": materials, "prefilled": bool(prefilled)}
        # a prefilled form is the applicant's personal data: no cache may keep it
        return JSONResponse(_jsonable(body), headers={"Cache-Control": "no-store", "Vary": "Authorization"})

    # -- documents -----------------------------------------------------------------------------------
    @app.post("/api/v1/documents", status_code=201, tags=["materials"],
              summary="Upload one document (raw body); its ref then names it in a material")
    async def upload(request: Request, authorization: str | None = Header(None),
                     content_type: str | None = Header(None)) -> dict[str, Any]:
        ident = authenticate(authorization)
        if ident.role not in ("applicant", "clerk"):
            raise ApiError(403, [err("authorization", "auth.forbidden")])
        ctype = (content_type or "").split(";")[0].strip().lower()
        if ctype not in intake_store.DOCUMENT_TYPES:
            raise ApiError(415, [err("content-type", "document.type")])
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > intake_store.MAX_DOCUMENT_BYTES:
                raise ApiError(413, [err("body", "document.too_large")])
        if not body:
            raise ApiError(422, [err("body", "document.empty")])

        def save() -> dict[str, Any]:
            with db.connection() as conn:
                return intake_store.save_document(conn, ident.subject, ctype, bytes(body))

        return await run_in_threadpool(save)

    # -- materials: uploaded, fetched, promised ----------------------------------------------------
    def resolve_materials(conn: psycopg.Connection, mf: MergedForm, requested: dict[str, Any],
                          values: dict[str, Any], caller: _Caller, *, submission: bool
                          ) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, str]]]:
        """(MaterialRef records, what validate_form should see, errors)."""
        errors: list[dict[str, str]] = []
        refs: list[dict[str, Any]] = []
        for_validation: dict[str, Any] = {}
        wanted = {fm.id: fm for fm in mf.materials}
        wallet = e_license.wallet(conn, caller.applicant_token)
        uploads = [v.get("ref") for v in requested.values() if isinstance(v, dict) and v.get("source") == "uploaded"]
        owned = intake_store.owned_documents(conn, caller.ident.subject, uploads)
        for code, entry in requested.items():
            path = f"materials.{code}"
            if code not in wanted:
                if not submission:  # validate_form reports these for a submission
                    lbl = cat.materials.get(code)
                    errors.append(err(path, "form.unexpected_material", (lbl.label.zh, lbl.label.en) if lbl else None))
                else:
                    for_validation[code] = entry
                continue
            m = wanted[code].material
            lbl = (m.label.zh, m.label.en)
            source = entry.get("source") if isinstance(entry, dict) else None
            allowed = ("uploaded", "fetched", "promised") if submission else ("uploaded", "fetched")
            if source not in allowed:
                errors.append(err(f"{path}.source", "material.source", lbl))
                for_validation[code] = "?"
                continue
            if source == "uploaded":
                ref = entry.get("ref")
                if not isinstance(ref, str) or not ref:
                    errors.append(err(f"{path}.ref", "material.ref_required", lbl))
                elif ref not in owned:
                    errors.append(err(f"{path}.ref", "material.unknown_document", lbl))
                else:
                    refs.append({"code": code, "source": "uploaded", "ref": ref})
                for_validation[code] = ref or "?"
            elif source == "promised":
                if not promisable(cat, code):
                    errors.append(err(path, "material.not_promisable", lbl))
                else:
                    refs.append({"code": code, "source": "promised", "ref": None})
                for_validation[code] = "promised"
            else:  # fetched
                if not m.e_license:
                    errors.append(err(path, "material.not_e_license", lbl))
                    continue
                licence = e_license.fetch_material(conn, code, wallet, values)
                if licence is None:
                    errors.append(err(path, "material.e_license_not_found", lbl))
                else:
                    refs.append({"code": code, "source": "fetched", "ref": licence})
        if submission:  # every e-licence the form needs is fetched without being asked for
            for fm in mf.fetched:
                if fm.id in requested or not _needed(fm, values):
                    continue
                licence = e_license.fetch_material(conn, fm.id, wallet, values)
                if licence is None:
                    errors.append(err(f"materials.{fm.id}", "material.e_license_not_found",
                                      (fm.material.label.zh, fm.material.label.en)))
                else:
                    refs.append({"code": fm.id, "source": "fetched", "ref": licence})
        return refs, for_validation, errors

    def identity_checks(values: dict[str, Any], caller: _Caller) -> list[dict[str, str]]:
        """The applicant's own resident ID in the form must be the logged-in (or named) person's."""
        errors = []
        for fid in ("applicant_resident_id", "guardian_resident_id"):
            value = values.get(fid)
            if isinstance(value, str) and check_resident_id(value) is None \
                    and identity.subject_token(value) != caller.applicant_token:
                f = cat.fields.get(fid)
                errors.append(err(f"fields.{fid}", "identity.mismatch", (f.label.zh, f.label.en) if f else None))
        return errors

    def region_of(values: dict[str, Any], conn: psycopg.Connection, applicant_token: str) -> str:
        rc = values.get("region_code")
        if isinstance(rc, str) and len(rc) == 6 and rc.isdigit():
            return rc
        household = e_license.wallet(conn, applicant_token).first("household_register")
        return household.data.get("region_code", UNKNOWN_REGION) if household else UNKNOWN_REGION

    # -- submission -----------------------------------------------------------------------------------
    @app.post("/api/v1/applications", status_code=202, response_model=Accepted, tags=["cases"],
              summary="一表申报: submit one merged application",
              responses={422: {"description": "every error of the form, nothing produced"},
                         503: {"description": "Kafka unreachable; nothing was accepted"}})
    def submit(body: ApplicationIn, authorization: str | None = Header(None),
               idempotency_key: str | None = Header(None)) -> JSONResponse:
        ident = authenticate(authorization)
        if ident.case_id:  # a status link cannot file applications
            raise ApiError(403, [err("authorization", "auth.forbidden")])
        caller = acting_for(ident, body.applicant)
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 200 and idempotency_key.isprintable()):
            raise ApiError(422, [err("idempotency-key", "idempotency.key_format")])
        if body.bundle_code not in cat.bundles:
            _submitted("invalid")
            raise ApiError(422, [err("bundle_code", "bundle.unknown")])
        b = cat.bundles[body.bundle_code]
        if not (b.modelled and b.members):
            _submitted("invalid")
            raise ApiError(422, [err("bundle_code", "bundle.not_available")])
        mf = merged_form(body.bundle_code)
        values = dict(body.form)
        body_hash = intake_store.request_hash(body.model_dump())

        with db.connection() as conn:
            if idempotency_key is not None:  # a retry of an accepted request answers at once
                earlier = intake_store.idempotency_record(conn, ident.subject, idempotency_key)
                if earlier is not None:
                    return replay(conn, ident, caller, idempotency_key, body_hash)
            refs, for_validation, material_errors = resolve_materials(conn, mf, body.materials, values, caller,
                                                                      submission=True)
            errors = [field_error(e) for e in validate_form(cat, body.bundle_code, values, for_validation)]
            errors += material_errors + identity_checks(values, caller)
            if errors:
                _submitted("invalid")
                log.info("intake.rejected", bundle_code=body.bundle_code, errors=[e["code"] for e in errors],
                         paths=[e["path"] for e in errors])
                raise ApiError(422, _dedupe(errors))
            region = region_of(values, conn, caller.applicant_token)
            case_id = intake_store.case_id_for(ident.subject, idempotency_key)
            receipt_no = f"{region}-{date.today():%Y%m%d}-{case_id[-10:].upper()}"
            services = list(mf.selection.services)
            event = new_event(
                "ApplicationSubmitted", case_id,
                {"bundle_code": body.bundle_code, "services": services, "form": event_form(values),
                 "materials": refs, "receipt_no": receipt_no, "idempotency_key": idempotency_key},
                actor=ident.actor(on_behalf_of=caller.applicant_token), region_code=region, sequence=0,
                correlation_id=case_id,
                event_id=derived_event_id(case_id, "ApplicationSubmitted") if idempotency_key else None)
            with infra_log.bound(correlation_id=case_id, case_id=case_id):
                try:
                    with conn.transaction():
                        if idempotency_key is not None:
                            earlier = intake_store.claim_key(conn, ident.subject, idempotency_key, body_hash, case_id)
                            if earlier is not None:  # a concurrent retry won: answer with its case
                                raise _Replay()
                        intake_store.insert_case(
                            conn, case_id=case_id, receipt_no=receipt_no, applicant_token=caller.applicant_token,
                            bundle_code=body.bundle_code, services=services,
                            departments=_ordered_departments(cat, services), region_code=region,
                            channel=ident.channel, staff_id=ident.staff_id)
                        producer.publish(APPLICATIONS, event)  # waits for acks=all; raising rolls back
                except _Replay:
                    return replay(conn, ident, caller, idempotency_key, body_hash)
                except psycopg.Error:
                    raise
                except Exception as exc:
                    _submitted("unavailable")
                    log.error("intake.kafka_unavailable", error=type(exc).__name__, bundle_code=body.bundle_code)
                    raise ApiError(503, [err("", "kafka.unavailable")], {"Retry-After": "5"}) from None
                _submitted("accepted")
                log.info("intake.accepted", bundle_code=body.bundle_code, channel=ident.channel,
                         role=ident.role, staff_id=ident.staff_id, materials=len(refs),
                         promised=sum(1 for r in refs if r["source"] == "promised"))
        return _JSON(accepted_body(case_id, receipt_no, caller.applicant_token, refs), status_code=202)

    def accepted_body(case_id: str, receipt_no: str, applicant_token: str,
                      refs: list[dict[str, Any]] | None) -> dict[str, Any]:
        link_token = identity.issue_token(applicant_token, "applicant", "online", case_id=case_id,
                                          ttl_s=identity.STATUS_LINK_TTL_S)
        out = {"case_id": case_id, "receipt_no": receipt_no, "status_url": f"/status/{case_id}#token={link_token}",
               "materials": []}
        for r in refs or ():
            m = cat.materials.get(r["code"])
            out["materials"].append({"code": r["code"], "source": r["source"],
                                     "label": _label(m.label) if m else None})
        return out

    def replay(conn: psycopg.Connection, ident: identity.Identity, caller: _Caller, key: str,
               body_hash: str) -> JSONResponse:
        row = conn.execute(
            "SELECT i.request_hash, c.case_id, c.receipt_no, c.applicant_token FROM intake_idempotency i "
            "JOIN intake_cases c USING (case_id) WHERE i.caller_token = %s AND i.idempotency_key = %s",
            (ident.subject, key)).fetchone()
        if row is None or row[0] != body_hash or row[3] != caller.applicant_token:
            _submitted("invalid")
            raise ApiError(422, [err("idempotency-key", "idempotency.key_reused")])
        _submitted("replayed")
        log.info("intake.replayed", case_id=row[1])
        return _JSON(accepted_body(row[1], row[2], row[3], None), status_code=202,
                     headers={"Idempotent-Replayed": "true"})

    # -- the case -------------------------------------------------------------------------------------
    @app.get("/api/v1/cases/{case_id}", tags=["cases"], summary="The case view: per-service progress, "
             "what is missing, deadlines, results, timeline")
    def get_case(case_id: str, authorization: str | None = Header(None)) -> JSONResponse:
        ident = authenticate(authorization)
        with db.connection() as conn:
            view = case_reader(conn, case_id)
            if view is None:
                row = intake_store.get_case(conn, case_id)
                if row is None or not may_see(ident, case_id, row.applicant_token, row.departments):
                    raise _not_found()
                view = provisional_view(row)
            elif not may_see(ident, case_id, view.get("applicant_token"), view.get("departments")):
                raise _not_found()
        view = dict(view)
        view["output_labels"] = output_labels(view)
        view |= oversight_of(case_id, view)
        return JSONResponse(_jsonable(view), headers={"Cache-Control": "no-store"})

    def oversight_of(case_id: str, view: dict[str, Any]) -> dict[str, Any]:
        """办不成事 and 好差评 for the status page: this case's escalations, its rating and what
        became of the bad grades. Empty while those read models are not installed."""
        try:
            from projectors.deadlines import today_in_china
            from projectors.escalation_queue import read_case_escalations
            from projectors.ratings import read_case_rating

            with db.connection() as conn:
                today = today_in_china()
                escalations = read_case_escalations(conn, case_id, today=today)
                rating = read_case_rating(conn, case_id, today=today)
                rated = rating is not None or conn.execute(
                    "SELECT 1 FROM intake_ratings WHERE case_id = %s", (case_id,)).fetchone() is not None
        except (ImportError, psycopg.errors.UndefinedTable):
            return {"escalations": [], "rating": None, "can_rate": False}
        return {"escalations": escalations, "rating": rating,
                "can_rate": view.get("status") == "completed" and not rated}

    def provisional_view(row: intake_store.IntakeCase) -> dict[str, Any]:
        """Before the case view projection has caught up: what the intake itself knows."""
        b = cat.bundles[row.bundle_code]
        withdrawn = row.status == "withdrawn"
        status_label = {"zh": "已撤回", "en": "Withdrawn"} if withdrawn else {"zh": "已受理", "en": "Accepted"}
        submitted = row.submitted_at.isoformat() if row.submitted_at else None
        return {
            "case_id": row.case_id, "receipt_no": row.receipt_no, "bundle_code": row.bundle_code,
            "bundle_label": _label(b.label), "status": "withdrawn" if withdrawn else "open",
            "status_label": status_label, "applicant_token": row.applicant_token, "channel": row.channel,
            "region_code": row.region_code, "submitted_at": submitted, "updated_at": submitted,
            "completed_at": None, "due_date": None, "working_days_left": None, "departments": row.departments,
            "services": [s | {"status": "waiting", "status_label": {"zh": "等待办理", "en": "Waiting"},
                              "attempt": 0, "due_date": None, "working_days_left": None, "reason": None,
                              "missing": [], "outputs": {}} for s in _services_view(cat, row.services)],
            "missing": [],
            "timeline": [{"occurred_at": submitted, "event_type": "ApplicationSubmitted",
                          "text_zh": "提交申请", "text_en": "Application submitted", "actor_role": None,
                          "channel": row.channel}],
            "provisional": True,
        }

    def output_labels(view: dict[str, Any]) -> dict[str, dict[str, str]]:
        labels = {}
        for s in view.get("services") or ():
            for key in (s.get("outputs") or {}):
                thing = cat.fields.get(key) or cat.materials.get(key)
                if thing is not None:
                    labels[key] = _label(thing.label)
        return labels

    def case_for_write(conn: psycopg.Connection, case_id: str, ident: identity.Identity,
                       applicant: Applicant | None, *, done_ok: bool = False
                       ) -> tuple[intake_store.IntakeCase, _Caller]:
        """The caller's own case, locked; `done_ok` for what follows a case's end (a rating, an
        escalation of a rejection)."""
        if ident.role not in ("applicant", "clerk") or (ident.case_id and ident.case_id != case_id):
            raise _not_found()
        row = intake_store.get_case(conn, case_id, for_update=True)
        if row is None:
            raise _not_found()
        try:
            caller = acting_for(ident, applicant)
        except ApiError:
            raise _not_found() from None
        if caller.applicant_token != row.applicant_token:
            raise _not_found()
        if row.status == "withdrawn":
            raise ApiError(409, [err("case_id", "case.withdrawn")])
        view = case_reader(conn, case_id)
        if not done_ok and view is not None and view.get("status") in ("completed", "withdrawn"):
            raise ApiError(409, [err("case_id", f"case.{view['status']}")])
        return row, caller

    def produce_for_case(conn: psycopg.Connection, row: intake_store.IntakeCase, ident: identity.Identity,
                         caller: _Caller, event_type: str, payload: dict[str, Any], *,
                         status: str | None = None) -> dict[str, Any]:
        sequence = intake_store.take_sequence(conn, row.case_id, status=status)
        event = new_event(event_type, row.case_id, payload, actor=ident.actor(on_behalf_of=caller.applicant_token),
                          region_code=row.region_code, sequence=sequence, correlation_id=row.case_id)
        try:
            producer.publish(APPLICATIONS, event)
        except Exception as exc:
            log.error("intake.kafka_unavailable", error=type(exc).__name__, event_type=event_type)
            raise ApiError(503, [err("", "kafka.unavailable")], {"Retry-After": "5"}) from None
        log.info("intake.produced", event_type=event_type, sequence=sequence, channel=ident.channel,
                 staff_id=ident.staff_id)
        return {"case_id": row.case_id, "event_id": event.id, "sequence": sequence}

    @app.post("/api/v1/cases/{case_id}/materials", status_code=202, tags=["cases"],
              summary="补正: supply missing or corrected materials and fields")
    def supplement(case_id: str, body: SupplementIn = Body(...), authorization: str | None = Header(None)
                   ) -> JSONResponse:
        ident = authenticate(authorization)
        with db.connection() as conn, infra_log.bound(correlation_id=case_id, case_id=case_id):
            with conn.transaction():
                row, caller = case_for_write(conn, case_id, ident, body.applicant)
                if not body.materials and not body.form:
                    raise ApiError(422, [err("materials", "supplement.empty")])
                mf = merged_form(row.bundle_code)
                values = dict(body.form)
                refs, _, errors = resolve_materials(conn, mf, body.materials, values, caller, submission=False)
                asked = {f"fields.{k}" for k in values}
                errors += [field_error(e) for e in validate_form(cat, row.bundle_code, values, {})
                           if e.path in asked]
                errors += identity_checks(values, caller)
                if errors:
                    raise ApiError(422, _dedupe(errors))
                out = produce_for_case(conn, row, ident, caller, "MaterialsSupplemented",
                                       {"materials": refs, "form": event_form(values)})
        return _JSON(out, status_code=202)

    @app.post("/api/v1/cases/{case_id}/withdraw", status_code=202, tags=["cases"],
              summary="Withdraw the application (撤回)")
    def withdraw(case_id: str, body: WithdrawIn | None = Body(None), authorization: str | None = Header(None)
                 ) -> JSONResponse:
        ident = authenticate(authorization)
        body = body or WithdrawIn()
        with db.connection() as conn, infra_log.bound(correlation_id=case_id, case_id=case_id):
            with conn.transaction():
                row, caller = case_for_write(conn, case_id, ident, body.applicant)
                out = produce_for_case(conn, row, ident, caller, "ApplicationWithdrawn",
                                       {"reason": body.reason}, status="withdrawn")
        return _JSON(out, status_code=202)

    @app.get("/api/v1/departments/{department}/worklist", tags=["departments"],
             summary="A department's worklist (its own staff only)")
    def worklist(department: str, authorization: str | None = Header(None)) -> JSONResponse:
        ident = authenticate(authorization)
        if ident.role != "department" or ident.department != department:
            raise ApiError(404, [err("department", "not_found")])
        reader = read_worklist or _default_read_worklist()
        if reader is None:
            raise ApiError(501, [err("", "worklist.unavailable")])
        with db.connection() as conn:
            items = reader(conn, department)
        return JSONResponse(_jsonable({"department": department, "items": items}),
                            headers={"Cache-Control": "no-store"})

    # -- metrics and the status page -------------------------------------------------------------------
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def page(name: str) -> FileResponse:
        return FileResponse(PORTAL_DIR / name, media_type="text/html; charset=utf-8", headers={
            "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"})

    @app.get("/status/{case_id}", include_in_schema=False)
    def status_page(case_id: str) -> FileResponse:
        return page("index.html")

    @app.get("/supervisor", include_in_schema=False)
    def supervisor_page() -> FileResponse:
        """办不成事督办台: the supervisor queue (a supervisor's token in the #token= fragment)."""
        return page("supervisor.html")

    # 办不成事 and 好差评: escalations, the supervisor queue, ratings and rectifications
    from . import oversight_api

    oversight_api.register(app, oversight_api.IntakeContext(
        db_url=db_url, database=db, catalog=cat, authenticate=authenticate, case_for_write=case_for_write,
        case_reader=case_reader, publish=producer.publish, api_error=ApiError, err=err))

    # 一处变更: the master registers' API (register and department tokens only)
    app.include_router(register_router)

    # 晴雨表: the KPIs (supervisors; a department sees its own services), API and page at /kpis
    from .kpi_api import create_router as kpi_router

    app.include_router(kpi_router(settings, database=db))

    if Path(PORTAL_DIR).is_dir():
        app.mount("/portal", StaticFiles(directory=PORTAL_DIR), name="portal")
    return app


def _route_template(app: FastAPI, request: Request) -> str:
    """The route's path template (`/api/v1/cases/{case_id}`): a metric label without case ids."""
    for candidate in app.router.routes:
        match, _ = candidate.matches(request.scope)
        if match == Match.FULL:
            return getattr(candidate, "path", None) or "unmatched"
    return "unmatched"


class _Replay(Exception):
    """A concurrent request with the same Idempotency-Key committed first."""


def _dedupe(errors: list[dict[str, str]]) -> list[dict[str, str]]:
    seen, out = set(), []
    for e in errors:
        k = (e["path"], e["code"])
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the API with uvicorn on host:port (default ONETHING_API_HOST / ONETHING_API_PORT,
    else 127.0.0.1:8000)."""
    import uvicorn

    infra_log.configure(service="intake-api", level=os.environ.get("ONETHING_LOG_LEVEL", "INFO"))
    host = host or os.environ.get("ONETHING_API_HOST") or "127.0.0.1"
    port = int(port or os.environ.get("ONETHING_API_PORT") or 8000)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False,
                proxy_headers=False)


if __name__ == "__main__":
    serve(Settings.from_env())
