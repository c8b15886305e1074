"""Sentences a person can read, in Chinese and English, for each event of a case's timeline,
and the labels of the statuses the case view shows.

Pure functions of the event and the catalog. They use only catalog labels, codes and counts:
never a form value, a name, a resident ID, a phone number, a department's free-text reason
or an output (the child's resident ID is an output), so a timeline can be shown and logged
without masking. A refusal's reason appears only as the sentence of its code in the department's
list (catalog/data/reasons.yaml), which is catalog text too.
"""
from __future__ import annotations

from catalog.combination import COMBINATION
from catalog.model import Catalog, Label
from events.envelope import Event

CASE_STATUS_LABELS: dict[str, Label] = {
    "open": Label("办理中", "In progress"),
    "awaiting_applicant": Label("待补正", "Waiting for the applicant"),
    "completed": Label("已办结", "Completed"),
    "withdrawn": Label("已撤回", "Withdrawn"),
}

SERVICE_STATUS_LABELS: dict[str, Label] = {
    "waiting": Label("等待前置事项", "Waiting for another service"),
    "dispatched": Label("已分派", "Sent to the department"),
    "accepted": Label("已受理", "Accepted"),
    "correction_requested": Label("需补正", "Correction requested"),
    "approved": Label("已办结", "Approved"),
    "rejected": Label("不予办理", "Rejected"),
    "blocked": Label("无法办理（前置事项未通过）", "Blocked (a service it depends on was not approved)"),
    "cancelled": Label("已取消", "Cancelled"),
}

#: channels the submission's line names (online says nothing: it is the usual way)
_ASSISTED = {"window": ("窗口帮办", "filed at a service window"),
             "home_visit": ("上门帮办", "filed on a home visit"),
             "proactive": ("主动服务，一键确认", "offered by the government and accepted in one step")}


def _unknown(code: str | None) -> Label:
    return Label(code or "?", code or "?")


def status_label(status: str, *, case: bool = False) -> Label:
    return (CASE_STATUS_LABELS if case else SERVICE_STATUS_LABELS).get(status) or _unknown(status)


def bundle_label(catalog: Catalog, code: str | None) -> Label:
    bundle = catalog.bundles.get(code) if code else None
    return bundle.label if bundle else _unknown(code)


def service_label(catalog: Catalog, service_id: str | None) -> Label:
    svc = catalog.services.get(service_id) if service_id else None
    return svc.label if svc else _unknown(service_id)


def department_label(catalog: Catalog, code: str | None) -> Label:
    dept = catalog.departments.get(code) if code else None
    return dept.label if dept else _unknown(code)


def material_label(catalog: Catalog, code: str) -> Label:
    mat = catalog.materials.get(code)
    return mat.label if mat else _unknown(code)


def _materials(catalog: Catalog, codes) -> tuple[str, str]:
    labels = [material_label(catalog, c) for c in codes]
    return "、".join(lb.zh for lb in labels), ", ".join(lb.en for lb in labels)


def describe(event: Event, catalog: Catalog) -> tuple[str, str] | None:
    """(text_zh, text_en) for one event, or None for an event type the timeline does not show."""
    p = event.payload
    t = event.type
    if t == "ApplicationSubmitted":
        n = len(p.get("services") or ())
        sources = [m.get("source") for m in p.get("materials") or ()]
        zh_extra, en_extra = [], []
        if fetched := sources.count("fetched"):
            zh_extra.append(f"电子证照免提交{fetched}项")
            en_extra.append(f"{fetched} e-licence{'s' if fetched != 1 else ''} fetched, not uploaded")
        if promised := sources.count("promised"):
            zh_extra.append(f"容缺后补{promised}项")
            en_extra.append(f"{promised} material{'s' if promised != 1 else ''} to follow")
        channel = event.envelope.actor.channel
        if channel in _ASSISTED:
            zh_extra.append(_ASSISTED[channel][0])
            en_extra.append(_ASSISTED[channel][1])
        if p.get("bundle_code") == COMBINATION:  # 随意组合: services picked freely, no bundle
            what_zh, what_en = "自选事项组合", "your own choice of services"
        else:
            b = bundle_label(catalog, p.get("bundle_code"))
            what_zh, what_en = f"{b.zh}一件事", b.en
        zh = f"申请已提交（{what_zh}，{n}个事项" + "".join(f"；{x}" for x in zh_extra) + "）"
        en = f"Application submitted ({what_en}, {n} service{'s' if n != 1 else ''}" \
             + "".join(f"; {x}" for x in en_extra) + ")"
        return zh, en
    if t == "MaterialsSupplemented":
        codes = [m.get("code") for m in p.get("materials") or ()]
        form_changed = bool(p.get("form"))
        if codes:
            zh_m, en_m = _materials(catalog, codes)
            zh = f"已补交材料：{zh_m}" + ("，并更新了表单" if form_changed else "")
            en = f"Materials supplied: {en_m}" + (", and the form was updated" if form_changed else "")
        else:
            zh, en = "已更新表单信息", "The form was updated"
        return zh, en
    if t == "ApplicationWithdrawn":
        return "申请已撤回", "Application withdrawn"
    if t == "TaskDispatched":
        d = department_label(catalog, p.get("department"))
        s = service_label(catalog, p.get("service_id"))
        zh, en = f"已分派至{d.zh}：{s.zh}", f"Sent to {d.en}: {s.en}"
        attempt = attempt_of(p.get("task_id"))
        if attempt > 1:
            zh += f"（补正后第{attempt}次分派）"
            en += f" (attempt {attempt}, after correction)"
        if p.get("due_date"):
            zh += f"，应于{p['due_date'].isoformat()}前办结"
            en += f", due by {p['due_date'].isoformat()}"
        return zh, en
    if t == "TaskCancelled":
        d = department_label(catalog, p.get("department"))
        s = service_label(catalog, p.get("service_id"))
        return f"已取消{d.zh}的事项：{s.zh}", f"Cancelled at {d.en}: {s.en}"
    if t == "DecisionRecorded":
        d = department_label(catalog, p.get("department"))
        s = service_label(catalog, p.get("service_id"))
        outcome = p.get("outcome")
        if outcome == "accepted":
            return f"{d.zh}已受理：{s.zh}", f"{d.en} accepted: {s.en}"
        if outcome == "correction_requested":
            zh, en = f"需要补正：{s.zh}（{d.zh}）", f"Correction requested by {d.en}: {s.en}"
            if missing := p.get("missing_materials"):
                zh_m, en_m = _materials(catalog, missing)
                zh += f"，请补交：{zh_m}"
                en += f"; please supply: {en_m}"
            return zh, en
        if outcome == "approved":
            return f"{d.zh}已办结：{s.zh}", f"{d.en} approved: {s.en}"
        if outcome == "rejected":
            zh, en = f"{d.zh}不予办理：{s.zh}", f"{d.en} rejected: {s.en}"
            why = _reason(p)
            if why is not None:
                zh, en = f"{zh}（{why.zh}）", f"{en} ({why.en})"
            return zh, en
        return f"{d.zh}已处理：{s.zh}", f"{d.en} recorded “{outcome}”: {s.en}"
    if t == "CaseCompleted":
        approved, rejected = len(p.get("approved") or ()), len(p.get("rejected") or ())
        if not rejected:
            return (f"全部事项已办结（{approved}项）",
                    f"All services completed ({approved} approved)")
        if not approved:
            return (f"办理结束：{rejected}个事项均未办成", f"Case closed: none of its {rejected} services was approved")
        return (f"部分办结：办成{approved}项，未办成{rejected}项",
                f"Partly completed: {approved} approved, {rejected} not approved")
    return _oversight(event, catalog)


_SCOPE = {"case": ("本件", "The case"), "escalation_reply": ("办不成事反映的答复", "The reply to the escalation"),
          "escalation_resolution": ("办不成事反映的办理", "The resolution of the escalation"),
          "rectification": ("差评整改", "The rectification")}
_REASON = {"stuck": ("办件停滞", "stuck"), "overdue": ("超过时限", "overdue"), "rejected": ("事项未办成", "not approved"),
           "other": ("其他问题", "other")}
_GRADE = {"very_satisfied": ("非常满意", "very satisfied"), "satisfied": ("满意", "satisfied"),
          "basically_satisfied": ("基本满意", "basically satisfied"), "dissatisfied": ("不满意", "dissatisfied"),
          "very_dissatisfied": ("非常不满意", "very dissatisfied")}


def _subject(event: Event, catalog: Catalog) -> tuple[str, str]:
    p = event.payload
    if p.get("scope") == "service":
        s = service_label(catalog, p.get("subject_id"))
        d = department_label(catalog, p.get("department"))
        return f"{s.zh}（{d.zh}）", f"{s.en} ({d.en})"
    return _SCOPE.get(p.get("scope"), ("本件", "The case"))


def _oversight(event: Event, catalog: Catalog) -> tuple[str, str] | None:
    """Deadlines, 办不成事 and 好差评 on the timeline; never the words a person typed."""
    p, t = event.payload, event.type
    if t == "DeadlineApproaching":
        zh, en = _subject(event, catalog)
        due = p["due_date"].isoformat()
        return f"{zh}临近办理时限（{due}）", f"{en}: deadline approaching ({due})"
    if t == "DeadlineBreached":
        zh, en = _subject(event, catalog)
        due = p["due_date"].isoformat()
        return f"{zh}已超过办理时限（{due}）", f"{en}: past its deadline ({due})"
    if t == "CaseEscalated":
        r = _REASON.get(p.get("reason"), _REASON["other"])
        what = ""
        if p.get("service_id"):
            what = service_label(catalog, p["service_id"])
        if p.get("origin") == "deadline":
            return (f"已自动转办不成事反映窗口：{what.zh if what else ''}{r[0]}",
                    f"Escalated automatically ({r[1]}){': ' + what.en if what else ''}")
        return (f"已提交办不成事反映（{r[0]}）" + (f"：{what.zh}" if what else ""),
                f"Escalation filed ({r[1]})" + (f": {what.en}" if what else ""))
    if t == "EscalationReplied":
        return "办不成事反映已答复", "The escalation was answered"
    if t == "EscalationExtended":
        n = p.get("resolve_within_working_days")
        return f"办不成事反映办理时限延长至{n}个工作日", f"The escalation's limit was extended to {n} working days"
    if t == "EscalationResolved":
        return "办不成事反映已办结", "The escalation was resolved"
    if t == "CaseRated":
        g = _GRADE.get(p.get("grade"), ("已评价", "rated"))
        return f"已评价：{g[0]}", f"Rated: {g[1]}"
    if t == "RectificationOpened":
        d = department_label(catalog, p.get("department"))
        return f"差评已转{d.zh}整改", f"Sent to {d.en} for rectification"
    if t == "RectificationReplied":
        d = department_label(catalog, p.get("department"))
        return f"{d.zh}已反馈整改情况", f"{d.en} replied on the rectification"
    return None


def _reason(p: dict) -> Label | None:
    """The sentence of a decision's reason code, in both languages (its department's list)."""
    from catalog.reasons import load_reasons, resolve

    found = resolve(load_reasons(), p.get("department"), p.get("reason_code"))
    return found.reason.label if found else None


def attempt_of(task_id: str | None) -> int:
    """The attempt from a task id `<case_id>:<service_id>:<attempt>`; 1 when it carries none."""
    if not task_id:
        return 1
    tail = task_id.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() and int(tail) > 0 else 1
