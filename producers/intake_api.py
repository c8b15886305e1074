"""The intake API (一表申报 online, at the window and on home visits): where applicants' facts enter.

    from producers.intake_api import create_app, serve
    app = create_app(Settings.from_env())        # FastAPI; OpenAPI at /openapi.json
    serve(Settings.from_env())                   # uvicorn on ONETHING_API_HOST:ONETHING_API_PORT

Endpoints (JSON; errors always {"errors": [{"path", "code", "message_zh", "message_en"}]}):
  GET  /api/v1/bundles                        the bundles (一件事)
  GET  /api/v1/bundles/{code}/form            the merged form, prefilled from the caller's e-licences
  GET  /api/v1/forms?services=a,b             随意组合: the merged form of any services (dependencies added, with why)
  POST /api/v1/documents                      upload a document (raw body) → {"ref"}
  POST /api/v1/applications                   submit → 202 after Kafka acknowledged ApplicationSubmitted
  GET  /api/v1/cases/{case_id}                the case view (applicant or a department working on it)
  POST /api/v1/cases/{case_id}/materials      补正: supply or correct materials/fields → MaterialsSupplemented
  POST /api/v1/cases/{case_id}/withdraw       → ApplicationWithdrawn
  GET  /api/v1/departments/{dept}/worklist    a department's worklist (when the read model offers one)
  GET  /api/v1/cases/{case_id}/reads          谁查看了我的数据: staff reads of the case (the applicant)
  GET  /api/v1/inbox                          主动服务: the caller's offers and grants (api_inbox.py: accept, decline)
  GET  /api/v1/reads?staff_id=                what one staff member read (a supervisor)
  GET  /api/v1/search?q=                      智问智搜: bundles and services from everyday words (api_search.py)
  GET  /status/{case_id}                      the citizen status page (portal/)
  GET  /, /search                             the portal's home: a search box (portal/search.html)
  GET  /metrics                               Prometheus

Guarantees: a form with any error produces nothing and answers 422 listing every error; an
accepted application is answered 202 only after the broker acknowledged it (acks=all); if
Kafka cannot be reached the answer is 503 and the database transaction that recorded the
case (and its Idempotency-Key) is rolled back. Error messages and logs never carry what a
person typed: resident IDs, names and phones stay out of both.

Where things are: this module only composes the app. Routers per resource —
producers/api_catalog.py (bundles, form), api_documents.py (uploads), api_cases.py (submit,
supplement, withdraw), api_case_view.py (the case, a department's worklist), oversight_api.py
(办不成事, 好差评), api_reads.py (谁查看了我的数据), kpi_api.py (晴雨表), register_api.py (一处变更),
api_pages.py (pages, /metrics); the access rules as dependencies in api_access.py, the read audit
of staff reads in api_audit.py; errors and the shared route class in
api_errors.py; the shared state in api_state.py; body limits, write authentication before the body
and rate limits in api_limits.py; Idempotency-Key and actions-once in api_idempotency.py.

Keeping up (nothing blocks the event loop): PostgreSQL is psycopg's synchronous API over one
connection pool per process (producers/db.py, opened and closed with the app), and the wait
for Kafka's acknowledgement is a blocking `future.get()`. So every handler that touches either
is a plain `def`, which FastAPI runs in its threadpool (anyio's limiter: 40 threads); the only
`async def` ones are the middlewares, the error handlers, the route class's text check and the
`named_applicant` dependency (they read the request body and block on nothing), and the upload,
which streams its body on the loop and writes it from `run_in_threadpool`. That is
simpler than psycopg's async pool with kafka-python's futures wrapped one by one, and just as
correct: a thread that waits for the broker holds one pooled connection and no lock the loop
needs. A request holds at most one pooled connection at a time, so a pool smaller than the
threadpool never deadlocks (threads beyond it wait up to ONETHING_API_POOL_TIMEOUT_S, then 503).

Environment: ONETHING_API_HOST (127.0.0.1), ONETHING_API_PORT (8000),
ONETHING_API_PRODUCE_TIMEOUT_S (10), ONETHING_API_POOL_MIN / _MAX / _TIMEOUT_S (2 / 16 / 5, see
producers/db.py), ONETHING_API_BODY_MAX_BYTES / _UPLOAD_MAX_BYTES / _SUBMIT_RATE / _UPLOAD_RATE
(256 KiB / 10 MiB / 10/minute / 60/minute, see producers/api_limits.py), ONETHING_DEMO_PEOPLE (1 = seed the demo e-licences at start; default: only
while the insecure dev secrets are in use), plus the identity secrets of producers/identity.py
and the connection settings of infra/settings.py.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
import psycopg
import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from catalog.loader import load_catalog
from catalog.model import Catalog
from infra import log as infra_log
from infra.settings import Settings

from . import (api_audit, api_case_view, api_cases, api_catalog, api_documents, api_erasure, api_forms, api_pages,
               api_inbox, api_reads, api_search, e_license, identity, oversight_api)
from .api_errors import MESSAGES, ApiError, FastJSON, err, field_error, jsonable
from .api_limits import BodyLimits, RateLimits
from .api_observe import Observe, RouteTemplates
from .api_producer import EventProducer
from .api_state import ApiState, default_read_case
from .db import Database

__all__ = ["create_app", "serve", "ApiError", "err", "field_error", "jsonable", "MESSAGES"]

log = structlog.get_logger("producers.intake_api")
PORTAL_DIR = api_pages.PORTAL_DIR
_jsonable = jsonable  # the name other modules knew


def create_app(settings: Settings, *, read_case: Callable[[psycopg.Connection, str], dict | None] | None = None,
               read_worklist: Callable | None = None, produce_timeout_s: float | None = None,
               seed_demo: bool | None = None, catalog: Catalog | None = None,
               rate_limits: RateLimits | None = None) -> FastAPI:
    """The intake API over the given broker and database.

    `read_case` defaults to `projectors.case_view.read_case` (looked up per request, so the
    app picks the read model up as soon as it is installed); tests may pass their own, and their
    own `rate_limits`.
    """
    timeout = produce_timeout_s if produce_timeout_s is not None else float(
        os.environ.get("ONETHING_API_PRODUCE_TIMEOUT_S") or 10)
    db = Database(settings.database_url)  # one pool for every route of the app, the registers' and KPIs' too
    state = ApiState(settings=settings, database=db, producer=EventProducer(settings.bootstrap_servers, timeout),
                     catalog=catalog or load_catalog(), limits=rate_limits or RateLimits(),
                     case_reader=read_case or default_read_case, worklist_reader=read_worklist)
    if seed_demo is None:
        seed_demo = os.environ.get("ONETHING_DEMO_PEOPLE", "1" if identity.using_dev_secrets() else "0") == "1"

    from .kpi_api import create_router as kpi_router
    from .register_api import create_router as register_router

    registers = register_router(settings, database=db, producer=state.producer)

    def seed() -> None:
        try:
            with db.connection() as conn:
                e_license.seed_demo_people(conn)
        except psycopg.Error as exc:
            log.warning("intake.demo_seed_failed", error=type(exc).__name__)

    def shutdown() -> None:
        state.producer.close()
        registers.recorder.close()
        db.close()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        """Opens the pool (and starts the producer's connection) at startup, closes both at
        shutdown; what blocks runs in a worker thread, never on the event loop."""
        db.open()
        state.producer.start()
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

    app = FastAPI(
        title="onething intake API — 高效办成一件事",
        version="1.0.0",
        description=__doc__.split("\n\n")[0] + "\n\nBearer tokens: HS256 JWTs from the (demo) single sign-on; "
                    "the routes that need one show the `bearer` security scheme.",
        lifespan=lifespan,
    )
    app.state.api = state
    from .api_form_schema import publish as publish_forms
    publish_forms(app, state.catalog)  # each bundle's merged form: the submission's JSON Schema in /openapi.json
    app.state.producer, app.state.database, app.state.catalog = state.producer, db, state.catalog

    # -- plumbing: body limits and write authentication, request ids, metrics, error bodies -----
    app.add_middleware(BodyLimits)
    app.add_middleware(Observe, templates=RouteTemplates(app))
    install_error_handlers(app)

    for router in (api_catalog.router, api_forms.router, api_documents.router, api_case_view.router, oversight_api.router,
                   api_reads.router, api_erasure.router, api_pages.router, api_search.router, api_inbox.router):
        app.include_router(router)
    # a clerk's filing reads the applicant's e-licences: the routes get the request's read audit
    app.include_router(api_cases.router, dependencies=[Depends(api_audit.bind_read_audit)])
    app.include_router(registers)  # 一处变更: the master registers (register and department tokens)
    app.include_router(kpi_router(settings, database=db, catalog=state.catalog))  # 晴雨表, API and page at /kpis
    if Path(PORTAL_DIR).is_dir():
        app.mount("/portal", StaticFiles(directory=PORTAL_DIR), name="portal")
    return app


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal in the API's one error shape (producers/api_errors.py), also FastAPI's own."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError):
        errors = []
        for e in exc.errors():  # never `input`: it may hold what a person typed
            loc = [str(p) for p in e.get("loc", ()) if p != "body"]
            errors.append({"path": ".".join(loc) or "body", "code": f"request.{e.get('type', 'invalid')}",
                           "message_zh": MESSAGES["request.invalid"][0], "message_en": str(e.get("msg", ""))})
        return FastJSON({"errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else "request.invalid"
        return FastJSON({"errors": [err("", code)]}, status_code=exc.status_code)

    @app.exception_handler(psycopg.OperationalError)
    async def db_down(_request: Request, exc: psycopg.OperationalError):
        log.error("intake.database_unavailable", error=type(exc).__name__)
        return FastJSON({"errors": [err("", "database.unavailable")]}, status_code=503, headers={"Retry-After": "5"})


def serve(settings: Settings, host: str | None = None, port: int | None = None, *,
          seed_demo: bool | None = None) -> None:
    """Run the API with uvicorn on host:port (default ONETHING_API_HOST / ONETHING_API_PORT,
    else 127.0.0.1:8000)."""
    import uvicorn

    infra_log.configure(service="intake-api", level=os.environ.get("ONETHING_LOG_LEVEL", "INFO"))
    host = host or os.environ.get("ONETHING_API_HOST") or "127.0.0.1"
    port = int(port or os.environ.get("ONETHING_API_PORT") or 8000)
    uvicorn.run(create_app(settings, seed_demo=seed_demo), host=host, port=port, log_config=None, access_log=False,
                proxy_headers=False)


if __name__ == "__main__":
    serve(Settings.from_env())
