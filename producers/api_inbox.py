"""The citizen's inbox (主动服务 / 免申即享): what the government offers or granted unasked, and the answers.

    GET  /api/v1/inbox                          the caller's own offers, grants and pre-service lists
    POST /api/v1/inbox/{offer_id}/accept        accept an offer in one step → ApplicationSubmitted + OfferAccepted
    POST /api/v1/inbox/{offer_id}/decline       decline an offer, or a grant within its window → OfferDeclined
    GET  /api/v1/departments/{dept}/grants      granted benefits a department executes (its own staff)
    GET  /api/v1/proactive/kpis                 offers, acceptances, grants, declines, lapses per rule

Who may call (producers/api_access.py style, one dependency per rule): `inbox_owner` — the
applicant's own login; a clerk, a department or the receipt's read-only status link get 403;
`own_item` — the item is the caller's (404 for anyone else, so nobody learns it exists).

The answers are facts from people, produced here and folded by the proactive processor
(projectors/proactive.py). The first answer wins: it is claimed in `api_actions` in the same
transaction that waits for the broker's acknowledgement, so an accept and a decline racing each
other cannot both succeed, and a second accept answers 409 `offer.already_accepted` with its
case. Accepting submits the offered bundle through the ordinary intake path (validation, e-licence
materials fetched, personal values sealed: producers/api_cases.py) under the Idempotency-Key
`offer:<id>`, so a retry after a lost answer gets the same case; its `ApplicationSubmitted` names the
applicant as actor with the channel `proactive` (Identity.accepting_offer). The prefilled values are read
here, from the caller's own e-licences (no event carries them).
"""
from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import orjson
import psycopg
import structlog
from fastapi import APIRouter, Body, Depends, Path
from pydantic import BaseModel, Field

from events.envelope import derived_event_id, new_event
from infra.topics import PROACTIVE
from projectors.proactive_plan import DECLINE_REASONS

from . import e_license, identity, intake_store
from .api_access import caller, department_staff
from .api_cases import ApplicationIn, submit
from .api_errors import ApiError, ApiRoute, FastJSON
from .api_idempotency import Idempotent, idempotency_key
from .api_state import ApiState, api_state, label, today

log = structlog.get_logger("producers.api_inbox")
router = APIRouter(tags=["inbox"], route_class=ApiRoute)

MESSAGES: dict[str, tuple[str, str]] = {
    "inbox.own_login": ("请以本人身份登录查看消息", "log in as yourself to see your inbox"),
    "offer.not_found": ("没有这条服务消息", "there is no such offer"),
    "offer.already_accepted": ("该服务已接受，已生成办件", "this offer was already accepted; its case is open"),
    "offer.declined": ("该服务已谢绝", "this offer was declined"),
    "offer.lapsed": ("该服务已过期（超过办理期限）", "this offer has lapsed (its deadline passed)"),
    "offer.not_open": ("清单将于事项发生当日开放办理", "the list opens on the day of the event"),
    "offer.is_grant": ("免申即享事项无需申请，如不需要可谢绝", "a granted benefit needs no acceptance; you may decline it"),
    "offer.window_closed": ("谢绝期限已过，待遇已执行", "the window to decline has closed; the benefit is being executed"),
    "decline.reason": ("谢绝原因不在可选范围内", "the reason is not one of the listed ones"),
}


def _err(path: str, code: str) -> dict[str, str]:
    zh, en = MESSAGES[code]
    return {"path": path, "code": code, "message_zh": zh, "message_en": en}


class AcceptIn(BaseModel):
    form: dict[str, Any] = Field(default_factory=dict, description="what the government does not hold "
                                 "(bank account, mobile) and corrections of prefilled values; field id → value")


class DeclineIn(BaseModel):
    reason_code: str | None = Field(None, description=f"one of {', '.join(DECLINE_REASONS)}")


# -- access rules ----------------------------------------------------------------------------------
def inbox_owner(ident: identity.Identity = Depends(caller)) -> identity.Identity:
    """The applicant's own login only: the inbox is theirs, not a clerk's or a status link's."""
    if ident.role != "applicant" or ident.read_only:
        raise ApiError(403, [_err("authorization", "inbox.own_login")])
    return ident


_COLUMNS = ("item_id::text, rule, outcome, recipient_token, subject_token, trigger_kind, trigger_on, bundle_code, "
            "services, prefilled_fields, presets, items, department, service_id, benefit, state, made_on, "
            "available_on, closes_on, case_id, receipt_no, region_code, task_sent_on, task_outcome")
_KEYS = [c.split("::")[0].strip() for c in _COLUMNS.split(",")]


def _row(r) -> dict[str, Any]:
    return dict(zip(_KEYS, r))


def own_item(offer_id: str = Path(..., max_length=64), ident: identity.Identity = Depends(inbox_owner),
             state: ApiState = Depends(api_state)) -> dict[str, Any]:
    try:
        uuid.UUID(offer_id)
    except ValueError:
        raise ApiError(404, [_err("offer_id", "offer.not_found")]) from None
    with state.database.connection() as conn:
        r = conn.execute(f"SELECT {_COLUMNS} FROM proactive_items WHERE item_id = %s::uuid", (offer_id,)).fetchone()
    if r is None or r[3] != ident.subject:
        raise ApiError(404, [_err("offer_id", "offer.not_found")])
    return _row(r)


# -- what the inbox shows ----------------------------------------------------------------------------
def prefilled_values(conn: psycopg.Connection, state: ApiState, item: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """field id → (value, where it came from) for an offered form: the recipient's own e-licences,
    the subject's ID card (after a death: the deceased's), the person register, the rule's presets."""
    rule = state_rules().get(item["rule"])
    form = {f.id for f in state.catalog.merged_form(bundle_code=item["bundle_code"]).fields}
    out = {fid: (v, lic.kind) for fid, (v, lic) in e_license.prefill(e_license.wallet(conn, item["recipient_token"]),
                                                                     form).items()}
    if rule is not None and rule.outcome.subject_fields:
        card = e_license.wallet(conn, item["subject_token"]).id_card
        if card is not None:
            for fid, src in rule.outcome.subject_fields.items():
                if card.data.get(src) not in (None, ""):
                    out[fid] = (card.data[src], "id_card")
    if rule is not None and rule.outcome.trigger_fields:
        row = conn.execute("SELECT record FROM register_keys WHERE register = 'person' AND register_key = %s",
                           (item["subject_token"],)).fetchone()
        fields = (row[0] if row else None) or {}
        for fid, src in rule.outcome.trigger_fields.items():
            if fields.get(src):
                out[fid] = (fields[src], "person_register")
    for fid, v in (item["presets"] or {}).items():
        out.setdefault(fid, (v, "rule"))
    return {k: v for k, v in out.items() if k in form}


def state_rules():
    from catalog.proactive_rules import default_rules

    return default_rules()


def _view(conn: psycopg.Connection, state: ApiState, item: dict[str, Any], day: date) -> dict[str, Any]:
    cat = state.catalog
    rule = state_rules().get(item["rule"])
    services = item["services"] or ()
    if item["outcome"] == "pre_service" and item["bundle_code"] in cat.bundles:
        services = cat.bundle(item["bundle_code"]).services   # what accepting files (the list says why)
    out: dict[str, Any] = {
        "offer_id": item["item_id"], "rule": item["rule"], "outcome": item["outcome"], "state": item["state"],
        "title": {"zh": rule.zh, "en": rule.en} if rule else {"zh": item["rule"], "en": item["rule"]},
        "made_on": item["made_on"].isoformat(), "available_on": item["available_on"].isoformat(),
        "closes_on": item["closes_on"].isoformat(), "trigger_on": item["trigger_on"].isoformat() if item["trigger_on"] else None,
        "case_id": item["case_id"], "receipt_no": item["receipt_no"],
        "services": [{"service_id": s, "label": label(cat.service(s).label) if s in cat.services else None,
                      "department": cat.service(s).department if s in cat.services else None}
                     for s in services],
    }
    if item["outcome"] == "grant":
        dept = cat.departments.get(item["department"])
        out |= {"benefit": item["benefit"], "department": item["department"],
                "department_label": label(dept.label) if dept else None, "decline_until": item["closes_on"].isoformat(),
                "can_decline": item["state"] == "granted" and day <= item["closes_on"],
                "task": grant_task_state(item["state"], item["closes_on"], day, item["task_sent_on"],
                                         item["task_outcome"])}
        return out
    bundle = cat.bundles.get(item["bundle_code"])
    open_now = item["state"] == "offered" and item["available_on"] <= day <= item["closes_on"]
    out |= {"bundle_code": item["bundle_code"], "bundle_label": label(bundle.label) if bundle else None,
            "items": item["items"] or [], "can_accept": open_now, "can_decline": item["state"] == "offered",
            "lapses_on": item["closes_on"].isoformat()}
    if item["state"] == "offered":
        mf = cat.merged_form(bundle_code=item["bundle_code"])
        values = prefilled_values(conn, state, item)
        out["prefilled"] = [{"field": f.id, "label": label(f.field.label), "value": _shown(f.field, values[f.id][0]),
                             "source": values[f.id][1]} for f in mf.fields if f.id in values]
        out["to_fill"] = [{"field": f.id, "label": label(f.field.label), "required": bool(f.required),
                           "type": f.field.type, "options": [{"value": o.value, "label": label(o.label)}
                                                             for o in f.field.options]}
                          for f in mf.fields if f.id not in values]
    return out


def grant_task_state(state: str, closes_on: date, day: date, sent_on: date | None, outcome: str | None) -> str:
    """Where a grant's execution is, as its department's worklist and the recipient's inbox say it:
    decline_window (the recipient may still decline; nothing sent), cancelled (declined: no task, or
    the task withdrawn), to_execute (the window closed; the proactive processor's next tick sends
    the task), sent (on tasks.<department>, not answered yet), executed, failed (the department's
    answer)."""
    if state == "declined":
        return "cancelled"
    if outcome in ("applied", "approved"):
        return "executed"
    if outcome in ("failed", "rejected"):
        return "failed"
    if sent_on is not None:
        return "sent"
    return "decline_window" if day <= closes_on else "to_execute"


def _shown(fld, value: Any) -> Any:
    """An option's label for an enum value (正常退休, not `normal`); anything else as it is."""
    opt = fld.option(value) if fld.options and isinstance(value, str) else None
    return label(opt.label) if opt else value


@router.get("/api/v1/inbox", summary="主动服务: the caller's own offers, grants and pre-service lists")
def inbox(ident: identity.Identity = Depends(inbox_owner), state: ApiState = Depends(api_state)) -> FastJSON:
    day = today()
    with state.database.connection() as conn:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM proactive_items WHERE recipient_token = %s "
                            "ORDER BY made_on DESC, rule", (ident.subject,)).fetchall()
        items = [_view(conn, state, _row(r), day) for r in rows]
    return FastJSON({"today": day.isoformat(), "items": items})


# -- answers --------------------------------------------------------------------------------------
def _claim(conn: psycopg.Connection, offer_id: str, answer: str) -> str | None:
    """Claim the item's one answer; the earlier answer if it was given already."""
    won = conn.execute("INSERT INTO api_actions (subject_id, action, case_id) VALUES (%s, 'answer', %s) "
                       "ON CONFLICT DO NOTHING RETURNING 1", (f"offer:{offer_id}", answer)).fetchone()
    if won:
        return None
    return conn.execute("SELECT case_id FROM api_actions WHERE subject_id = %s AND action = 'answer'",
                        (f"offer:{offer_id}",)).fetchone()[0]


def _refuse_answered(earlier: str) -> ApiError:
    if earlier.startswith("accept:"):
        return ApiError(409, [_err("offer_id", "offer.already_accepted")], case_id=earlier.removeprefix("accept:"))
    return ApiError(409, [_err("offer_id", "offer.declined")])


@router.post("/api/v1/inbox/{offer_id}/accept", status_code=202, summary="Accept an offer in one step (快申快享)",
             responses={409: {"description": "already accepted (with its case_id), declined, lapsed, not open yet"},
                        422: {"description": "what the form still needs, field by field; nothing produced"}})
def accept(offer_id: str, body: AcceptIn | None = Body(None), item: dict = Depends(own_item),
           ident: identity.Identity = Depends(inbox_owner), key: str | None = Depends(idempotency_key),
           state: ApiState = Depends(api_state)) -> FastJSON:
    body, day = body or AcceptIn(), today()
    if item["outcome"] == "grant":
        raise ApiError(409, [_err("offer_id", "offer.is_grant")])
    if item["state"] == "accepted":
        raise ApiError(409, [_err("offer_id", "offer.already_accepted")], case_id=item["case_id"])
    if item["state"] == "declined":
        raise ApiError(409, [_err("offer_id", "offer.declined")])
    if item["state"] == "lapsed" or day > item["closes_on"]:
        raise ApiError(409, [_err("offer_id", "offer.lapsed")])
    if day < item["available_on"]:
        raise ApiError(409, [_err("offer_id", "offer.not_open")])
    with state.database.connection() as conn, conn.transaction():
        once = Idempotent(conn, ident.subject, key, f"accept:{offer_id}", body.model_dump())
        earlier = once.replay()
        if earlier is not None:
            return earlier
        submission_key = f"offer:{offer_id}"
        case_id = intake_store.case_id_for(ident.subject, submission_key)
        earlier_answer = _claim(conn, offer_id, f"accept:{case_id}")   # held until this commits
        if earlier_answer is not None:   # accepted (its case named) or declined before
            raise _refuse_answered(earlier_answer)
        values = {fid: v for fid, (v, _src) in prefilled_values(conn, state, item).items()}
        form = values | dict(body.form)
        # the ordinary intake path: 422 with every missing field (and nothing claimed), or the case,
        # filed by the applicant through the `proactive` channel (the case view and timeline say so)
        answer = submit(ApplicationIn(bundle_code=item["bundle_code"], form=form, materials={}),
                        ident.accepting_offer(), submission_key, state)
        receipt = orjson.loads(answer.body)
        event = new_event("OfferAccepted", ident.subject, {"offer_id": offer_id, "rule": item["rule"],
                                                           "case_id": receipt["case_id"],
                                                           "receipt_no": receipt["receipt_no"]},
                          actor=ident.actor(), region_code=item["region_code"], correlation_id=offer_id,
                          event_id=derived_event_id(offer_id, "OfferAccepted"))
        state.producer.publish(PROACTIVE, event)
        log.info("inbox.accepted", rule=item["rule"], offer_id=offer_id, case_id=receipt["case_id"])
        return once.answer({"offer_id": offer_id, **receipt})


@router.post("/api/v1/inbox/{offer_id}/decline", status_code=202, summary="Decline an offer, or a granted benefit "
             "within its window (the department's task is cancelled)",
             responses={409: {"description": "already accepted, already declined, lapsed, window closed"}})
def decline(offer_id: str, body: DeclineIn | None = Body(None), item: dict = Depends(own_item),
            ident: identity.Identity = Depends(inbox_owner), key: str | None = Depends(idempotency_key),
            state: ApiState = Depends(api_state)) -> FastJSON:
    body, day = body or DeclineIn(), today()
    if body.reason_code is not None and body.reason_code not in DECLINE_REASONS:
        raise ApiError(422, [_err("reason_code", "decline.reason")])
    if item["state"] == "accepted":
        raise ApiError(409, [_err("offer_id", "offer.already_accepted")], case_id=item["case_id"])
    if item["state"] == "lapsed" or (item["outcome"] != "grant" and day > item["closes_on"]):
        raise ApiError(409, [_err("offer_id", "offer.lapsed")])
    if item["outcome"] == "grant" and day > item["closes_on"]:
        raise ApiError(409, [_err("offer_id", "offer.window_closed")])
    event_id = derived_event_id(offer_id, "OfferDeclined")
    with state.database.connection() as conn, conn.transaction():
        once = Idempotent(conn, ident.subject, key, f"decline:{offer_id}", body.model_dump())
        earlier = once.replay()
        if earlier is not None:
            return earlier
        earlier_answer = _claim(conn, offer_id, "decline")
        if earlier_answer is not None and earlier_answer != "decline":
            raise _refuse_answered(earlier_answer)
        event = new_event("OfferDeclined", ident.subject, {"offer_id": offer_id, "rule": item["rule"],
                                                           "reason_code": body.reason_code},
                          actor=ident.actor(), region_code=item["region_code"], correlation_id=offer_id,
                          event_id=event_id)
        state.producer.publish(PROACTIVE, event)   # a repeat (same id) is dropped by the processor
        log.info("inbox.declined", rule=item["rule"], offer_id=offer_id, outcome=item["outcome"])
        return once.answer({"offer_id": offer_id, "event_id": event_id, "state": "declined"})


@router.get("/inbox", include_in_schema=False)
def inbox_page():
    """我的消息: the inbox page (portal/inbox.html; the applicant's token in the #token= fragment)."""
    from .api_pages import page

    return page("inbox.html")


# -- departments and KPIs ---------------------------------------------------------------------------
@router.get("/api/v1/departments/{department}/grants", tags=["departments"],
            summary="免申即享: granted benefits this department executes (its own staff only)")
def department_grants(department: str, _staff: identity.Identity = Depends(department_staff),
                      state: ApiState = Depends(api_state)) -> FastJSON:
    """Each grant's `task` (grant_task_state): decline_window, to_execute, sent, executed, failed or
    cancelled (the recipient declined within the window: no task was sent, or it was withdrawn).
    The department's backend hears of a grant on its topic (a TaskDispatched of kind benefit_grant,
    task id `grant:<grant_id>`); this list is its staff's view of the same."""
    day = today()
    with state.database.connection() as conn:
        rows = conn.execute(
            "SELECT item_id::text, rule, service_id, benefit, state, made_on, closes_on, region_code, task_sent_on, "
            "task_outcome FROM proactive_items WHERE outcome = 'grant' AND department = %s "
            "ORDER BY made_on DESC, item_id LIMIT 500", (department,)).fetchall()
    out = []
    for iid, rule, service_id, benefit, st, made_on, closes_on, region, sent_on, outcome in rows:
        task = grant_task_state(st, closes_on, day, sent_on, outcome)
        out.append({"grant_id": iid, "rule": rule, "service_id": service_id, "benefit": benefit, "task": task,
                    "task_id": f"grant:{iid}", "task_sent_on": sent_on.isoformat() if sent_on else None,
                    "granted_on": made_on.isoformat(), "decline_until": closes_on.isoformat(), "region_code": region})
    return FastJSON({"department": department, "today": day.isoformat(), "grants": out})


@router.get("/api/v1/proactive/kpis", summary="主动服务 KPIs: per rule, offers, acceptances, grants, declines, lapses")
def proactive_kpis(state: ApiState = Depends(api_state)) -> FastJSON:
    """Counts only (no person): the same figures for everyone, like the 晴雨表."""
    with state.database.connection() as conn:
        rows = conn.execute(
            "SELECT rule, count(*) FILTER (WHERE outcome <> 'grant'), count(*) FILTER (WHERE state = 'accepted'), "
            "count(*) FILTER (WHERE outcome = 'grant'), count(*) FILTER (WHERE state = 'declined'), "
            "count(*) FILTER (WHERE state = 'lapsed') FROM proactive_items GROUP BY rule ORDER BY rule").fetchall()
    rules = []
    for rule, offers, accepted, grants, declined, lapsed in rows:
        rules.append({"rule": rule, "offers": offers, "accepted": accepted, "grants": grants, "declined": declined,
                      "lapsed": lapsed, "acceptance_rate": round(accepted / offers, 3) if offers else None})
    return FastJSON({"rules": rules})
