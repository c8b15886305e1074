"""Reading the case view (projectors/case_view.py): the case as the status page shows it, and a
department's worklist. What happened to a finished case (已办结 / 部分办结 / 不予办理), the refused
services and the reasons in both languages come from projectors/case_outcome.py, at read time.
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

import psycopg

from catalog.combination import COMBINATION, combination_label
from catalog.loader import load_catalog
from catalog.model import Catalog, Label
from catalog.reasons import load_reasons
from catalog.working_days import working_days_between

from . import case_outcome
from .case_state import prerequisites
from .case_view_sql import sql_for
from .timeline_text import bundle_label, department_label, material_label, service_label, status_label

WAITING, DISPATCHED, ACCEPTED, CORRECTION = "waiting", "dispatched", "accepted", "correction_requested"
OPEN_STATUSES = (DISPATCHED, ACCEPTED, CORRECTION)   # at the department, not decided


def china_today() -> date:
    """Today where the applicants and departments are (working days are China's); the deadline
    clock's ONETHING_TODAY, when set, so the page and the clock agree on what is overdue."""
    from .deadlines import today_in_china

    return today_in_china()


def _label(lb: Label | None) -> dict[str, str] | None:
    return None if lb is None else {"zh": lb.zh, "en": lb.en}


def _iso(value: date | datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return value.isoformat()


def _days_left(today: date, due: date | None) -> int | None:
    return None if due is None else working_days_between(today, due)


def _stage(today: date, due: date | None) -> str | None:
    """ok | approaching | breached, by the deadline clock's rule (a correction pauses it: None)."""
    from .deadline_clock import stage

    return None if due is None else stage(due, today).value


def case_label(catalog: Catalog, bundle_code: str | None, services) -> Label:
    """A bundle's name, or for a free combination (随意组合) its first services and their count."""
    if bundle_code == COMBINATION:
        return combination_label(catalog, services or ())
    return bundle_label(catalog, bundle_code)


def read_case(conn: psycopg.Connection, case_id: str, today: date | None = None, *,
              schema: str = "public", catalog: Catalog | None = None) -> dict[str, Any] | None:
    """The case as the status page shows it, JSON-able (dates as ISO text), or None when the
    view has not seen the case's submission yet.

    `working_days_left` is computed now, against `today` (default: today in China): working
    days from today to the due date, negative when overdue, None once decided (a service) or
    once the case is completed or withdrawn. `outputs` can be personal data (a resident ID):
    the caller decides who may see them. `outcome` says what happened to a completed case
    (all_approved | partly_approved | none_approved; `status_label` is its 已办结 / 部分办结 /
    不予办理), `refused` lists the refused services first with their reasons and next steps.
    """
    catalog = catalog or load_catalog()
    reasons = load_reasons()
    q = sql_for(schema)
    today = today or china_today()
    row = conn.execute(q.case_row, (case_id,)).fetchone()
    if row is None or row[2] is None:
        return None
    (case_id, receipt_no, bundle_code, declared, applicant_token, channel, region_code, status, due_date,
     submitted_at, updated_at, completed_at, _withdrawn_at) = row
    order = {sid: i for i, sid in enumerate(declared or ())}
    rows = sorted(conn.execute(q.service_rows, (case_id,)).fetchall(),
                  key=lambda r: (order.get(r[0], len(order)), r[0]))
    case_open = status in ("open", "awaiting_applicant")
    services, missing_all = [], {}
    for sid, dept, s_status, attempt, s_due, reason, missing, outputs, reason_code in rows:
        shown = case_outcome.reason_shown(reasons, dept, s_status, reason_code, reason)
        services.append({
            "service_id": sid, "label": _label(service_label(catalog, sid)),
            "department": dept, "department_label": _label(department_label(catalog, dept)),
            "status": s_status, "status_label": _label(status_label(s_status)), "attempt": attempt,
            "due_date": _iso(s_due),
            "working_days_left": _days_left(today, s_due) if case_open and s_status in (WAITING, *OPEN_STATUSES)
            else None,
            "deadline": _stage(today, s_due) if case_open and s_status in (DISPATCHED, ACCEPTED) else None,
            "reason": reason, "reason_code": shown.code, "reason_label": _label(shown.label),
            "reason_advice": _label(shown.advice), "reason_listed": shown.listed,
            "missing": [{"code": c, "label": _label(material_label(catalog, c))} for c in missing]
            if s_status == CORRECTION else [],
            "outputs": dict(outputs or {}),
        })
        if s_status == CORRECTION:
            for code in missing:
                missing_all.setdefault(code, []).append(sid)
    timeline = [{"occurred_at": _iso(at), "event_type": et, "text_zh": zh, "text_en": en, "actor_role": role,
                 "channel": ch} for at, et, zh, en, role, ch in conn.execute(q.timeline_rows, (case_id,))]
    result = case_outcome.outcome(status, [s["status"] for s in services])
    deps = prerequisites(catalog, [s["service_id"] for s in services if s["service_id"] in catalog.services])
    dependants: dict[str, list[str]] = {}
    for sid, ups in deps.items():
        for up in ups:
            dependants.setdefault(up, []).append(sid)
    return {
        "case_id": case_id, "receipt_no": receipt_no, "bundle_code": bundle_code,
        "bundle_label": _label(case_label(catalog, bundle_code, declared)),
        "status": status,
        "status_label": _label(case_outcome.OUTCOME_LABELS[result] if result else status_label(status, case=True)),
        "outcome": result,
        "applicant_token": applicant_token, "channel": channel, "region_code": region_code,
        "submitted_at": _iso(submitted_at), "updated_at": _iso(updated_at), "completed_at": _iso(completed_at),
        "due_date": _iso(due_date), "working_days_left": _days_left(today, due_date) if case_open else None,
        "departments": sorted({s["department"] for s in services if s["department"]}),
        "services": services,
        "refused": case_outcome.refused(catalog, services, dependants),
        "missing": [{"code": c, "label": _label(material_label(catalog, c)), "services": sids}
                    for c, sids in missing_all.items()],
        "timeline": timeline,
    }


def read_worklist(conn: psycopg.Connection, department: str, status: str | None = None, *,
                  today: date | None = None, limit: int = 500, schema: str = "public") -> list[dict[str, Any]]:
    """A department's open services (dispatched, accepted, correction_requested), soonest due
    first; `status` narrows it to one status (any status, e.g. "approved", may be asked for)."""
    q = sql_for(schema)
    today = today or china_today()
    statuses = [status] if status else list(OPEN_STATUSES)
    rows = conn.execute(q.worklist, {"department": department, "statuses": statuses, "limit": limit}).fetchall()
    return [{"case_id": case_id, "service_id": sid, "task_id": task_id, "status": s, "attempt": attempt,
             "due_date": _iso(due), "working_days_left": _days_left(today, due) if s in OPEN_STATUSES else None,
             "deadline": _stage(today, due) if s in (DISPATCHED, ACCEPTED) else None,
             "bundle_code": bundle_code}
            for case_id, sid, task_id, s, attempt, due, bundle_code in rows]
