"""Deadlines, 办不成事 and 好差评 through every real process on the real broker and PostgreSQL.

The tax department is down (its simulated backend's outage flag) while a newborn case is
filed, and the clock's day is pinned weeks ahead (ONETHING_TODAY): the tax services are left
undecided, breach their deadlines, escalate by themselves into the supervisor queue and show
as overdue on the status page; the supervisor replies, extends and resolves. Tax comes back,
the case completes, the applicant rates it 非常不满意 and the rectification tasks reach the lead
department and tax, whose staff close theirs with a reply.
"""
from __future__ import annotations

import socket
from datetime import timedelta

import httpx
import pytest

from infra.demo import DemoCase, _submit, _wait_api, demo_env
from infra.supervisor import newborn_departments, system
from infra.topics import CASES
from producers import identity
from events.envelope import now_utc
from projectors.deadline_clock import china_date, rectification_due
from projectors.deadlines import today_in_china

from .support.fast_forward import skip_history
from .support.topics import mark, read_since, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]

TAX = ("tax.newborn_premium",)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def system_up(settings, running_stack, tmp_path, monkeypatch):
    port = _free_port()
    today = today_in_china() + timedelta(days=40)  # weeks after anything filed today was due
    flag = tmp_path / "tax-down"
    flag.touch()
    env = demo_env(0.05) | {"ONETHING_API_PORT": str(port), "ONETHING_TODAY": today.isoformat(),
                            "ONETHING_DEADLINE_TICK_S": "1", "ONETHING_SIM_TAX_OUTAGE_FLAG": str(flag),
                            "ONETHING_CASCADE_START": "latest"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the test's own reads (today_in_china) agree with the processes
    skip_history(settings.bootstrap_servers, settings.database_url)
    sup = system(tmp_path / "logs", newborn_departments(), env=env)
    sup.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_api(base)
        yield base, flag, today, sup
    finally:
        sup.stop()


def _get(client: httpx.Client, path: str, token: str) -> dict:
    r = client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.json()


def _post(client: httpx.Client, path: str, token: str, body: dict) -> httpx.Response:
    return client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})


def test_undecided_services_breach_escalate_and_are_worked_then_a_bad_rating_is_rectified(system_up, bootstrap):
    base, flag, today, sup = system_up
    supervisor = identity.issue_token("sup-1", "supervisor", "online", staff_id="sup-1")
    tax = identity.department_token("tax", staff_id="tax-clerk-7")
    cases_start = mark(bootstrap, [CASES])
    with httpx.Client(base_url=base, timeout=30) as client:
        received_on = china_date(now_utc()).isoformat()

        def kpis() -> dict:
            return _get(client, f"/api/v1/kpis?group_by=bundle&bundle=newborn&date_from={received_on}",
                        supervisor)["total"]
        kpis_before = kpis()
        case = DemoCase("late", "wang_fang")
        _submit(client, case, hospital="韶关市妇幼保健院", promise_discharge=False)
        cid, me = case.case_id, case.token
        view = lambda: _get(client, f"/api/v1/cases/{cid}", me)  # noqa: E731

        # 1. the tax service stays undecided; the clock, weeks ahead, finds it overdue and escalates it
        def escalated() -> list[dict]:
            return [e for e in _get(client, f"/api/v1/escalations?case_id={cid}", supervisor)["items"]
                    if e["service_id"] in TAX]
        assert wait_for(lambda: escalated(), 90, 1), sup.check()
        (auto,) = escalated()
        assert auto["origin"] == "deadline" and auto["reason"] == "overdue" and auto["department"] == "tax"
        assert auto["status"] == "open" and auto["bundle_code"] == "newborn"
        assert auto["reply_due"] and auto["resolve_due"] > auto["reply_due"]

        # 2. the status page shows it: the service overdue, the breach on the timeline, the escalation
        assert wait_for(lambda: any(t["event_type"] == "DeadlineBreached" for t in view()["timeline"]), 30, 1)
        page = view()
        taxed = next(s for s in page["services"] if s["service_id"] in TAX)
        assert taxed["status"] in ("dispatched", "accepted") and taxed["working_days_left"] < 0
        assert any("已超过办理时限" in t["text_zh"] for t in page["timeline"])
        assert any(e["escalation_id"] == auto["escalation_id"] for e in page["escalations"])
        assert "comment" not in page["escalations"][0]
        assert taxed["deadline"] == "breached"
        # and on the tax department's worklist, most overdue first
        work = _get(client, "/api/v1/departments/tax/worklist", tax)["items"]
        mine_work = [w for w in work if w["case_id"] == cid]
        assert mine_work and all(w["deadline"] == "breached" and w["working_days_left"] < 0 for w in mine_work)

        # 3. the applicant cannot open the same escalation twice, but can report the case as stuck
        again = _post(client, f"/api/v1/cases/{cid}/escalations", me, {"reason": "overdue", "service_id": TAX[0]})
        assert again.status_code == 409 and again.json()["errors"][0]["code"] == "escalation.open"
        wrong = _post(client, f"/api/v1/cases/{cid}/escalations", me, {"reason": "rejected"})
        assert wrong.status_code == 422 and wrong.json()["errors"][0]["path"] == "reason"
        stuck = _post(client, f"/api/v1/cases/{cid}/escalations", me, {"reason": "stuck", "comment": "一直没有进展"})
        assert stuck.status_code == 202, stuck.text
        mine = stuck.json()["escalation_id"]
        assert wait_for(lambda: any(e["escalation_id"] == mine for e in _get(
            client, f"/api/v1/escalations?case_id={cid}", supervisor)["items"]), 30, 1)
        listed = _get(client, f"/api/v1/escalations/{mine}", supervisor)
        assert listed["comment"] == "一直没有进展" and listed["origin"] == "applicant"
        # only a supervisor sees the queue
        assert client.get("/api/v1/escalations", headers={"Authorization": f"Bearer {me}"}).status_code == 403

        # 4. the supervisor works the automatic one: reply, extend (5 → 8 working days), resolve
        eid = auto["escalation_id"]
        assert _post(client, f"/api/v1/escalations/{eid}/reply", supervisor, {"reply": "已督办税务部门"}).status_code == 202
        assert wait_for(lambda: _get(client, f"/api/v1/escalations/{eid}", supervisor)["status"] == "replied", 30, 1)
        twice = _post(client, f"/api/v1/escalations/{eid}/reply", supervisor, {"reply": "again"})
        assert twice.status_code == 409
        too_long = _post(client, f"/api/v1/escalations/{eid}/extend", supervisor,
                          {"resolve_within_working_days": 11, "reason": "x"})
        assert too_long.status_code == 422
        before = _get(client, f"/api/v1/escalations/{eid}", supervisor)["resolve_due"]
        assert _post(client, f"/api/v1/escalations/{eid}/extend", supervisor,
                     {"resolve_within_working_days": 8, "reason": "系统故障，等待恢复"}).status_code == 202
        assert wait_for(lambda: _get(client, f"/api/v1/escalations/{eid}", supervisor)["resolve_due"] > before, 30, 1)

        # 5. tax comes back: the case completes; the supervisor resolves
        flag.unlink()
        assert wait_for(lambda: view()["status"] == "completed", 120, 1), sup.check()
        assert _post(client, f"/api/v1/escalations/{eid}/resolve", supervisor,
                     {"resolution": "税务系统恢复，已办结"}).status_code == 202
        assert wait_for(lambda: _get(client, f"/api/v1/escalations/{eid}", supervisor)["status"] == "resolved", 30, 1)
        late = _post(client, f"/api/v1/escalations/{eid}/extend", supervisor,
                     {"resolve_within_working_days": 10, "reason": "x"})
        assert late.status_code == 409

        # 6. 好差评: 非常不满意, tax's service 不满意 → rectifications for the lead department and tax
        page = view()
        assert page["can_rate"] is True
        bad = _post(client, f"/api/v1/cases/{cid}/rating", me, {
            "grade": "very_dissatisfied", "comment": "等了太久",
            "services": [{"service_id": TAX[0], "grade": "dissatisfied"},
                         {"service_id": "police.birth_registration", "grade": "very_satisfied"}]})
        assert bad.status_code == 202, bad.text
        assert _post(client, f"/api/v1/cases/{cid}/rating", me, {"grade": "satisfied"}).status_code == 409
        unknown = _post(client, f"/api/v1/cases/{cid}/rating", me,
                        {"grade": "satisfied", "services": [{"service_id": "no.such", "grade": "satisfied"}]})
        assert unknown.status_code in (409, 422)

        def rectifications(dept_token: str, dept: str, status: str = "open") -> list[dict]:
            items = _get(client, f"/api/v1/departments/{dept}/rectifications?status={status}", dept_token)["items"]
            return [r for r in items if r["case_id"] == cid]
        assert wait_for(lambda: rectifications(tax, "tax"), 60, 1), sup.check()
        (mine_tax,) = rectifications(tax, "tax")
        assert mine_tax["service_id"] == TAX[0] and mine_tax["grade"] == "dissatisfied"
        assert mine_tax["due_date"] == rectification_due(now_utc()).isoformat()  # 15 working days from rating
        lead = identity.department_token("health", staff_id="h-1")
        assert any(r["service_id"] is None for r in rectifications(lead, "health"))  # 卫健 leads 新生儿出生
        # another department can neither see nor answer tax's rectification
        assert _post(client, f"/api/v1/rectifications/{mine_tax['rectification_id']}/reply", lead,
                     {"reply": "x"}).status_code == 404
        r = _post(client, f"/api/v1/rectifications/{mine_tax['rectification_id']}/reply", tax,
                  {"reply": "已优化参保登记流程，缩短办理时间"})
        assert r.status_code == 202, r.text
        assert wait_for(lambda: not rectifications(tax, "tax"), 30, 1)
        (closed,) = rectifications(tax, "tax", "replied")
        assert closed["reply"] == "已优化参保登记流程，缩短办理时间"

        # 7. the applicant's page shows the rating and what became of it
        assert wait_for(lambda: (view().get("rating") or {}).get("grade") == "very_dissatisfied", 30, 1)
        page = view()
        assert page["can_rate"] is False
        assert any(x["department"] == "tax" and x["status"] == "replied" for x in page["rating"]["rectifications"])
        assert any(t["text_zh"] == "已评价：非常不满意" for t in page["timeline"])

        # 8. the manager's 晴雨表 counts the case, its breaches, its escalations and its rating
        def counted() -> bool:
            now = kpis()
            # other services than tax may breach too before their (fast) departments answer:
            # the clock's day is weeks ahead; what is certain is tax's escalation and the applicant's
            return (now["received"] - kpis_before["received"] == 1
                    and now["rated"] - kpis_before["rated"] == 1
                    and now["ratings"]["very_dissatisfied"] - kpis_before["ratings"]["very_dissatisfied"] == 1
                    and now["escalations"] - kpis_before["escalations"] >= 2
                    and now["deadlines_breached"] > kpis_before["deadlines_breached"])
        assert wait_for(counted, 30, 1), {k: (kpis_before[k], kpis()[k]) for k in
                                          ("received", "rated", "escalations", "deadlines_breached")} | {
            "ratings": (kpis_before["ratings"], kpis()["ratings"])}

        # 9. the supervisor's and the manager's pages in a real browser
        _pages(base, supervisor, page["receipt_no"], received_on)

    # 10. the clock raised each deadline once: ids are derived, so however often it ticked
    #    (every second here), the `cases` topic holds no two alarms for the same deadline
    alarms = read_since(bootstrap, cases_start, lambda e: e.key == cid
                        and e.type in ("DeadlineApproaching", "DeadlineBreached"))
    keys = [(e.type, e.payload["scope"], e.payload.get("subject_id"), e.payload["due_date"]) for e in alarms]
    assert keys and len(keys) == len(set(keys)), keys


def _pages(base: str, supervisor: str, receipt_no: str, received_on: str) -> None:
    import os

    from playwright import sync_api as playwright_api

    from .test_status_page import CHROMIUM, CHROMIUM_ARGS

    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: the bootstrap must `apt-get install -y chromium`")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(locale="zh-CN").new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/supervisor#token={supervisor}")
            page.fill("#search", receipt_no)
            page.select_option("#filter", "all")
            page.wait_for_selector(f"#queue li:has-text('{receipt_no}'):has-text('已办结')", timeout=15000)
            assert "token=" not in page.url
            assert "税务系统恢复，已办结" in page.inner_text("#queue")  # the resolution, as the supervisor wrote it
            page.screenshot(path="/tmp/supervisor_page.png", full_page=True)
            page.goto(f"{base}/kpis#token={supervisor}")
            page.wait_for_selector("#timeliness tbody tr", timeout=15000)
            for name in ("date_from", "date_to"):  # the default window ends at the clock's (pinned) day
                page.fill(f"#filters input[name={name}]", received_on)
            page.click("#filters button[type=submit]")
            page.wait_for_selector("#timeliness tbody tr:has-text('新生儿出生')", timeout=15000)
            page.screenshot(path="/tmp/kpis_page.png", full_page=True)
            assert errors == []
        finally:
            browser.close()
