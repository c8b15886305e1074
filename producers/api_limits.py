"""Limits the API holds to before it does any work: body sizes, authentication of writes before
their body is read, and per-subject rates of submissions and uploads.

`BodyLimits` is a plain ASGI middleware (no BaseHTTPMiddleware: it would buffer the body). For a
POST/PUT/PATCH under /api/ it

1. verifies the bearer token first (401 before a byte of the body is read, so an anonymous
   caller cannot make the API parse megabytes of JSON);
2. refuses a declared Content-Length over the route's limit at once (413);
3. counts the bytes as they arrive and stops at the limit (413), whatever Content-Length said —
   chunked bodies included.
Limits: an upload (`/api/v1/documents`) `ONETHING_API_UPLOAD_MAX_BYTES` (10 MiB); every other
body `ONETHING_API_BODY_MAX_BYTES` (256 KiB).

`RateLimits` uses the `limits` package's moving window in this process's memory: each API process
counts on its own, so behind a balancer of N instances a subject may do up to N times the rate.
`ONETHING_API_SUBMIT_RATE` (default `10/minute`) and `ONETHING_API_UPLOAD_RATE` (`60/minute`) are
in the `limits` notation (`N/second|minute|hour|day`, several joined by `;`); `off` disables one.
A refusal is 429 with Retry-After (seconds until the window lets the next one through).
`ONETHING_API_SEARCH_RATE` (`60/minute`) holds the public search (producers/api_search.py), counted
per client address since it needs no login.
"""
from __future__ import annotations

import math
import os
import time

from fastapi import Depends
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import identity
from .api_access import filer, identify
from .api_errors import ApiError, err
from .api_state import ApiState, api_state

BODY_MAX_ENV, UPLOAD_MAX_ENV = "ONETHING_API_BODY_MAX_BYTES", "ONETHING_API_UPLOAD_MAX_BYTES"
SUBMIT_RATE_ENV, UPLOAD_RATE_ENV = "ONETHING_API_SUBMIT_RATE", "ONETHING_API_UPLOAD_RATE"
BODY_MAX_DEFAULT = 256 * 1024
UPLOAD_MAX_DEFAULT = 10 * 1024 * 1024
SUBMIT_RATE_DEFAULT, UPLOAD_RATE_DEFAULT = "10/minute", "60/minute"
SEARCH_RATE_ENV, SEARCH_RATE_DEFAULT = "ONETHING_API_SEARCH_RATE", "60/minute"
UPLOAD_PATH = "/api/v1/documents"
_WRITES = frozenset({"POST", "PUT", "PATCH"})


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


class BodyLimits:
    """Authenticate writes, then cap their bodies, before the app reads them (see the module)."""

    def __init__(self, app: ASGIApp, *, body_max: int | None = None, upload_max: int | None = None):
        self.app = app
        self.body_max = body_max if body_max is not None else _int_env(BODY_MAX_ENV, BODY_MAX_DEFAULT)
        self.upload_max = upload_max if upload_max is not None else _int_env(UPLOAD_MAX_ENV, UPLOAD_MAX_DEFAULT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WRITES or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == UPLOAD_PATH
        limit = self.upload_max if upload else self.body_max
        declared, authorization = None, None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        try:
            identify(identity.bearer(authorization))
        except ApiError as exc:
            await exc.response()(scope, receive, send)
            return
        too_large = ApiError(413, [err("body", "document.too_large" if upload else "request.too_large")])
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_large.response()(scope, receive, send)
            return
        seen, started, answered = 0, False, False

        async def counted() -> Message:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if not started and not answered:
                        answered = True  # answer now; whatever the app makes of the cut body is dropped
                        await too_large.response()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception:
            if not answered:  # the app's reaction to the cut body (a disconnect) is not an error
                raise


class RateLimits:
    """Per-subject moving windows for submissions and uploads, in this process's memory."""

    def __init__(self, submit: str | None = None, upload: str | None = None, search: str | None = None):
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.rules: dict[str, list[RateLimitItem]] = {
            "submit": _rules(submit if submit is not None else os.environ.get(SUBMIT_RATE_ENV) or SUBMIT_RATE_DEFAULT),
            "upload": _rules(upload if upload is not None else os.environ.get(UPLOAD_RATE_ENV) or UPLOAD_RATE_DEFAULT),
            "search": _rules(search if search is not None else os.environ.get(SEARCH_RATE_ENV) or SEARCH_RATE_DEFAULT),
        }

    def hit(self, action: str, subject: str) -> None:
        """Count one `action` of `subject`, or raise the 429 (with Retry-After) it is over."""
        for rule in self.rules[action]:
            if not self.limiter.hit(rule, action, subject):
                reset = self.limiter.get_window_stats(rule, action, subject).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                raise ApiError(429, [err("", "rate.limited")], {"Retry-After": str(wait)})


def _rules(spec: str) -> list[RateLimitItem]:
    return [] if spec.strip().lower() in ("off", "0", "none") else parse_many(spec)


def rate_limited(action: str):
    """A dependency counting one `action` of the caller (after the route's access rule)."""
    def check(ident: identity.Identity = Depends(filer), state: ApiState = Depends(api_state)) -> identity.Identity:
        state.limits.hit(action, ident.subject)
        return ident

    check.__name__ = f"rate_limited_{action}"
    return check
