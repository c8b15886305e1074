"""Documents: one upload as the raw body → a ref that names it in a material; a download of it.

Only an applicant's own login or a clerk uploads (`filer`), within the upload rate
(producers/api_limits.py) and 10 MiB (the body-limit middleware stops a larger one as it
arrives; this route checks again as it streams). The body streams on the event loop and is
written from the threadpool, sealed under its uploader's data key (events/personal.py
`seal_bytes`): erasing the subject leaves nothing readable, in the table or in a backup of it.

A download is for the document's uploader, the applicant of a case that uses it, and a
department's named staff on a case where a service of their department declares the material
it was given as — that read is recorded (谁查看了我的数据, producers/api_audit.py) before the body
is sent. Anyone else gets the same 404 as for a ref that does not exist: a ref is not a secret,
but whether it exists is not told. An erased document answers 410.
"""
from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Depends, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from events import personal
from infra import keystore

from . import identity, intake_store
from .api_access import staff_id_required
from .api_audit import UNKNOWN_REGION, Read, ReadAudit, read_audit
from .api_errors import MESSAGES, ApiError, ApiRoute, err
from .api_idempotency import Idempotent, idempotency_key
from .api_limits import rate_limited
from .api_state import ApiState, api_state

router = APIRouter(prefix="/api/v1", tags=["materials"], route_class=ApiRoute)
MESSAGES["document.not_found"] = ("未找到该文件", "no such document")
MESSAGES["document.erased"] = ("该文件已按规定删除", "this document was erased")


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
            data_key = keystore.subject_key(conn, ident.subject, state.master_keys())
            return once.answer(intake_store.save_document(conn, ident.subject, ctype, bytes(body), data_key), 201)

    return await run_in_threadpool(save)


@router.get("/documents/{ref}", summary="Download a document: its uploader, its case's applicant, or a department "
            "whose service on the case needs it (that read is recorded)",
            responses={200: {"content": {"application/pdf": {}}}, 404: {}, 410: {}})
def download(ref: str, ident: identity.Identity = Depends(staff_id_required),
             audit: ReadAudit = Depends(read_audit), state: ApiState = Depends(api_state)) -> Response:
    with state.database.connection() as conn:
        doc = intake_store.stored_document(conn, ref)
        if doc is None:
            raise ApiError(404, [err("ref", "document.not_found")])
        reads = _allowed(conn, state, ident, doc)
        if reads is None:
            raise ApiError(404, [err("ref", "document.not_found")])
    if doc.key_id is None:   # stored before bodies were sealed (migration 0019)
        body: bytes | None = doc.body
    else:
        body = personal.open_bytes(state.platform_keys(), doc.key_id, doc.ref, doc.body)
    if body is None:
        raise ApiError(410, [err("ref", "document.erased")])
    audit.record(reads)   # no staff read without its record (503 if it cannot be made)
    return Response(body, media_type=doc.content_type, headers={
        "Content-Disposition": f'attachment; filename="{doc.ref}"', "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff", "Digest": f"sha-256={doc.sha256}"})


def _allowed(conn, state: ApiState, ident: identity.Identity, doc: intake_store.StoredDocument) -> list[Read] | None:
    """The reads a download records (none for the data subject), or None: not this caller's to see."""
    if ident.read_only:
        return None
    if ident.role in ("applicant", "clerk") and doc.owner_token == ident.subject:
        return []
    uses = intake_store.document_uses(conn, doc.ref)
    cases = {c: intake_store.get_case(conn, c) for c in {c for c, _ in uses}}
    if ident.role == "applicant":
        mine = any(row is not None and row.applicant_token == ident.subject for row in cases.values())
        return [] if mine else None
    if ident.role != "department" or not ident.department:
        return None
    reads = []
    for case_id, material in uses:
        row = cases.get(case_id)
        if row is None:
            continue
        for service_id in row.services:
            service = state.catalog.services.get(service_id)
            needs = {n.id for n in service.materials} if service is not None else set()
            if service is not None and service.department == ident.department and material in needs:
                reads.append(Read(row.applicant_token, "document", "task", case_id=case_id, service_id=service_id,
                                  fields=(material,), document_id=doc.ref,
                                  region_code=row.region_code or UNKNOWN_REGION))
    return reads or None
