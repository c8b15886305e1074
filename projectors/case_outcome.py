"""What happened to a case, as the applicant must be told it: 已办结 only when every service was
approved; 部分办结 when some were and some not; 不予办理 when none was — with the refused services
first, each with its department's reason (a code of catalog/data/reasons.yaml, in both languages)
and what the applicant can do next (办不成事, re-apply for what was not done).

Pure functions of the case view's service rows and the catalog; projectors/case_view_read.py calls
them for every read, so the page follows the reasons list as it is edited, without a rebuild.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from catalog.model import Catalog, Label
from catalog.reasons import UNSTATED, ReasonList, resolve

from .timeline_text import service_label

ALL_APPROVED, PARTLY_APPROVED, NONE_APPROVED = "all_approved", "partly_approved", "none_approved"
OUTCOME_LABELS: dict[str, Label] = {
    ALL_APPROVED: Label("已办结", "Completed"),
    PARTLY_APPROVED: Label("部分办结", "Partly completed"),
    NONE_APPROVED: Label("不予办理", "Not approved"),
}
NOT_DONE = ("rejected", "blocked")   # final and not approved (cancelled: the applicant's own withdrawal)
#: the order the status page lists services in: what was refused first, then what it blocked
ORDER = {"rejected": 0, "blocked": 1}


def outcome(case_status: str, statuses: Sequence[str]) -> str | None:
    """all_approved | partly_approved | none_approved for a completed case; None before (or withdrawn)."""
    if case_status != "completed" or not statuses:
        return None
    approved = sum(1 for s in statuses if s == "approved")
    if approved == len(statuses):
        return ALL_APPROVED
    return NONE_APPROVED if approved == 0 else PARTLY_APPROVED


def shown_order(services: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Refused services first, then those they blocked, then the rest — each group in its order."""
    return sorted(services, key=lambda s: ORDER.get(s["status"], 2))


@dataclass(frozen=True)
class ReasonShown:
    code: str | None
    label: Label | None       # None: show the department's own sentence (a decision without a code)
    advice: Label | None
    listed: bool


#: what a service the system itself stopped says (the view stores an English note for operators)
BLOCKED = Label("所依赖的前置事项未办成，本事项暂无法办理", "A service it depends on was not approved, so this one cannot go ahead")
CANCELLED = Label("申请已撤回，本事项已取消", "The application was withdrawn, so this service was cancelled")


def reason_shown(reasons: ReasonList, department: str | None, status: str, code: str | None,
                 text: str | None) -> ReasonShown:
    """The reason a service row shows: its code's sentence; blocked and cancelled services their
    own bilingual sentence; a refusal with neither code nor text 'gave no reason' (never an empty
    不予办理). None as label: the department's own words (a correction without a code)."""
    if status == "blocked":
        return ReasonShown(None, BLOCKED, None, True)
    if status == "cancelled":
        return ReasonShown(None, CANCELLED, None, True)
    found = resolve(reasons, department, code)
    if found is not None:
        return ReasonShown(code, found.reason.label, found.reason.advice, found.listed)
    if status == "rejected" and not text:
        return ReasonShown(None, UNSTATED.label, UNSTATED.advice, False)
    return ReasonShown(None, None, None, True)


def _lb(label: Label | None) -> dict[str, str] | None:
    return None if label is None else {"zh": label.zh, "en": label.en}


ESCALATE = Label("向督办窗口反映“办不成事”：督办人员3个工作日内答复", "Report it to the supervisors (办不成事): an answer within 3 working days")
REAPPLY = Label("条件具备后，可只为未办成的事项重新申请（自选事项，不必重填整件）",
                "Once the conditions are met, apply again for just the services not done (your own choice of services)")


def refused(catalog: Catalog, services: Sequence[Mapping[str, Any]], dependants: Mapping[str, Sequence[str]]
            ) -> dict[str, Any] | None:
    """The refused services of a case (rejected, and what each blocked) and what the applicant can
    do, or None when nothing was refused. `services` are read_case's service dicts;
    `dependants[sid]` the case's services that wait for `sid`."""
    rejected = [s for s in services if s["status"] == "rejected"]
    if not rejected:
        return None
    blocked = {s["service_id"] for s in services if s["status"] == "blocked"}
    items = []
    for s in rejected:
        stops = [d for d in _downstream(s["service_id"], dependants) if d in blocked]
        items.append({
            "service_id": s["service_id"], "label": s["label"], "department": s["department"],
            "department_label": s["department_label"], "reason_code": s.get("reason_code"),
            "reason_label": s.get("reason_label"), "reason": s.get("reason") if not s.get("reason_label") else None,
            "advice": s.get("reason_advice"),
            "blocked": [{"service_id": d, "label": _lb(service_label(catalog, d))} for d in stops],
        })
    again = [s["service_id"] for s in services if s["status"] in NOT_DONE]
    return {
        "services": items,
        "next_steps": [
            {"kind": "escalate", "label": _lb(ESCALATE), "service_id": rejected[0]["service_id"]},
            {"kind": "reapply", "label": _lb(REAPPLY), "services": again,
             "form_url": "/api/v1/forms?services=" + ",".join(again)},
        ],
    }


def _downstream(sid: str, dependants: Mapping[str, Sequence[str]]) -> list[str]:
    out: list[str] = []
    todo = list(dependants.get(sid, ()))
    while todo:
        d = todo.pop(0)
        if d not in out:
            out.append(d)
            todo.extend(dependants.get(d, ()))
    return out

