"""Reading a case: the case view (per-service progress, what is missing, deadlines, results,
timeline) for the applicant owner, a department working on it, or the receipt's status link of
this case (`visible_case`, producers/api_access.py); and a department's worklist (its own staff).
A staff member's read of either is recorded before it is answered (producers/api_audit.py)."""
from __future__ import annotations

from typing import Any

import psycopg
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from . import identity, intake_store
from .api_access import SeenCase, department_staff, staff_id_required, visible_case
from .api_audit import ReadAudit, read_audit
from .api_catalog import services_view
from .api_errors import ApiError, ApiRoute, err, jsonable
from .api_personal import shown_view
from .api_state import ApiState, api_state, label, today
from .audit_reads import case_view_read, listed_reads

router = APIRouter(prefix="/api/v1", route_class=ApiRoute)


@router.get("/cases/{case_id}", tags=["cases"],
            summary="The case view: per-service progress, what is missing, deadlines, results, timeline")
def get_case(case_id: str, seen: SeenCase = Depends(visible_case), state: ApiState = Depends(api_state),
             ident: identity.Identity = Depends(staff_id_required),
             audit: ReadAudit = Depends(read_audit)) -> JSONResponse:
    view = dict(seen.view) if seen.view is not None else provisional_view(state, seen.row)
    view = shown_view(state, view, ident)
    view["output_labels"] = output_labels(state, view)
    view |= oversight_of(state, case_id, view)
    if audit.recording:  # staff: recorded before it is shown, or refused (503)
        with state.database.connection() as conn:
            read = case_view_read(conn, audit.ident, case_id, view)
        audit.record([read])
    return JSONResponse(jsonable(view), headers={"Cache-Control": "no-store"})


def oversight_of(state: ApiState, case_id: str, view: dict[str, Any]) -> dict[str, Any]:
    """办不成事 and 好差评 for the status page: this case's escalations, its rating and what
    became of the bad grades. Empty while those read models are not installed."""
    try:
        from projectors.escalation_queue import read_case_escalations
        from projectors.ratings import read_case_rating

        with state.database.connection() as conn:
            day = today()
            escalations = read_case_escalations(conn, case_id, today=day)
            rating = read_case_rating(conn, case_id, today=day)
            rated = rating is not None or conn.execute(
                "SELECT 1 FROM intake_ratings WHERE case_id = %s", (case_id,)).fetchone() is not None
    except (ImportError, psycopg.errors.UndefinedTable):
        return {"escalations": [], "rating": None, "can_rate": False}
    return {"escalations": escalations, "rating": rating,
            "can_rate": view.get("status") == "completed" and not rated}


def provisional_view(state: ApiState, row: intake_store.IntakeCase) -> dict[str, Any]:
    """Before the case view projection has caught up: what the intake itself knows."""
    from projectors.case_view_read import case_label

    withdrawn = row.status == "withdrawn"
    status_label = {"zh": "已撤回", "en": "Withdrawn"} if withdrawn else {"zh": "已受理", "en": "Accepted"}
    submitted = row.submitted_at.isoformat() if row.submitted_at else None
    return {
        "case_id": row.case_id, "receipt_no": row.receipt_no, "bundle_code": row.bundle_code,
        "bundle_label": label(case_label(state.catalog, row.bundle_code, row.services)),
        "status": "withdrawn" if withdrawn else "open",
        "status_label": status_label, "applicant_token": row.applicant_token, "channel": row.channel,
        "region_code": row.region_code, "submitted_at": submitted, "updated_at": submitted,
        "completed_at": None, "due_date": None, "working_days_left": None, "departments": row.departments,
        "services": [s | {"status": "waiting", "status_label": {"zh": "等待办理", "en": "Waiting"},
                          "attempt": 0, "due_date": None, "working_days_left": None, "reason": None,
                          "missing": [], "outputs": {}} for s in services_view(state.catalog, row.services)],
        "missing": [],
        "timeline": [{"occurred_at": submitted, "event_type": "ApplicationSubmitted",
                      "text_zh": "提交申请", "text_en": "Application submitted", "actor_role": None,
                      "channel": row.channel}],
        "provisional": True,
    }


def output_labels(state: ApiState, view: dict[str, Any]) -> dict[str, dict[str, str]]:
    labels = {}
    for s in view.get("services") or ():
        for key in (s.get("outputs") or {}):
            thing = state.catalog.fields.get(key) or state.catalog.materials.get(key)
            if thing is not None:
                labels[key] = label(thing.label)
    return labels


@router.get("/departments/{department}/worklist", tags=["departments"],
            summary="A department's worklist (its own staff only)")
def worklist(department: str, _staff: identity.Identity = Depends(department_staff),
             audit: ReadAudit = Depends(read_audit), state: ApiState = Depends(api_state)) -> JSONResponse:
    reader = state.read_worklist()
    if reader is None:
        raise ApiError(501, [err("", "worklist.unavailable")])
    with state.database.connection() as conn:
        items = reader(conn, department)
        reads, items = listed_reads(conn, items, "worklist", "worklist", "task_id")  # a read per listed case
    audit.record(reads)
    return JSONResponse(jsonable({"department": department, "items": items}), headers={"Cache-Control": "no-store"})
