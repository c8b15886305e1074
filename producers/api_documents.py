"""Uploads: one document as the raw body → a ref that names it in a material.

Only an applicant's own login or a clerk uploads (`filer`), within the upload rate
(producers/api_limits.py) and 10 MiB (the body-limit middleware stops a larger one as it
arrives; this route checks again as it streams). The body streams on the event loop and is
written from the threadpool.
"""
from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from . import identity, intake_store
from .api_errors import ApiError, ApiRoute, err
from .api_idempotency import Idempotent, idempotency_key
from .api_limits import rate_limited
from .api_state import ApiState, api_state

router = APIRouter(prefix="/api/v1", tags=["materials"], route_class=ApiRoute)


@router.post("/documents", status_code=201, summary="Upload one document (raw body); its ref then names it in a material")
async def upload(request: Request, ident: identity.Identity = Depends(rate_limited("upload")),
                 content_type: str | None = Header(None), key: str | None = Depends(idempotency_key),
                 state: ApiState = Depends(api_state)) -> Any:
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

    def save() -> Any:
        with state.database.connection() as conn, conn.transaction():
            once = Idempotent(conn, ident.subject, key, "upload",
                              {"content_type": ctype, "sha256": hashlib.sha256(body).hexdigest()})
            earlier = once.replay()
            if earlier is not None:
                return earlier
            return once.answer(intake_store.save_document(conn, ident.subject, ctype, bytes(body)), 201)

    return await run_in_threadpool(save)
