"""Watching the API from outside: request ids, request metrics and `X-Request-Id` on every answer.

Metric labels are the method, the route's path template, the status class and an outcome; never
a person or a case.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bind_contextvars, reset_contextvars

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


def submitted(outcome: str) -> None:
    _child(SUBMISSIONS, outcome).inc()


_REQUEST_ID_HEADER = b"x-request-id"


class Observe:
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


class RouteTemplates:
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



def flat_routes(routes: list) -> list:
    """Every route of an app, those of included routers too, each with its full path template.
    (FastAPI from 0.16x keeps an included router as one entry of `app.routes`;
    `iter_route_contexts` walks into it. Before, `include_router` copied the routes.)"""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return list(routes)
    return list(iter_route_contexts(routes))


def _route_template(app: FastAPI, request: Request) -> str:
    """The route's path template (`/api/v1/cases/{case_id}`): a metric label without case ids."""
    for candidate in flat_routes(app.router.routes):
        match, _ = candidate.matches(request.scope)
        if match == Match.FULL:
            return getattr(candidate, "path", None) or "unmatched"
    return "unmatched"
