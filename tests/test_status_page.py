"""The citizen status page in a real headless Chromium, over a real case.

The case is filed through the intake API (real broker, real PostgreSQL). The dispatch fold
(projectors.case_state.step, the function the dispatch processor runs) turns its events into
tasks, and departments answer with decisions, all produced to the real topics; the case view
projection (projectors.case_view, run by ProjectionRunner into a schema of this test's own)
fills the read model the page shows. Nothing is inserted by hand.

Chromium is Debian's package (/usr/bin/chromium), driven by the `playwright` Python package;
`playwright install` is never run. The page is checked on a phone-size viewport, in Chinese,
then in English; the applicant uploads the missing document through the page's own form, and
the page follows the case live as it moves on, and the applicant files a 办不成事 report from
it. Screenshots: /tmp/status_page.png (Chinese)
and /tmp/status_page_en.png (English). A second case, partly refused, must say 部分办结 (never 已全部办结),
put the refused service first with its department's reason in the page's language (a code of
catalog/data/reasons.yaml), and offer 办不成事 and re-applying: /tmp/status_page_refused.png.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from dataclasses import replace

import httpx
import psycopg
import pytest
from playwright import sync_api as playwright_api  # PyPI `playwright`; its browsers are never downloaded

from catalog.loader import load_catalog
from events import bus, kafka_auth
from events.envelope import Actor, Event, derived_event_id, new_event
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic
from tests.support.offsets import seed_offsets
from producers import e_license, identity
from producers.intake_api import create_app
from projectors import case_view
from tests.support.portal_server import PortalServer
from tests.test_intake_api import end_offsets, events_since, newborn_request

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}
WANG = e_license.DEMO_PEOPLE["wang_fang"]


class _Departments:
    """Plays the dispatch processor (the real fold) and the departments (their decisions)."""

    def __init__(self, bootstrap: str, submitted: Event):
        from projectors import case_state

        self.case_state = case_state
        self.catalog = load_catalog()
        self.producer = bus.make_producer(bootstrap)
        self.state = None
        self.tasks: dict[str, Event] = {}
        self._fold(submitted)

    def _fold(self, event: Event) -> None:
        self.state, out = self.case_state.step(self.state, event, self.catalog)
        items = []
        for ev in out:
            if ev.type in ("TaskDispatched", "TaskCancelled"):
                items.append((tasks_topic(ev.payload["department"]), ev))
                if ev.type == "TaskDispatched":
                    self.tasks[ev.payload["service_id"]] = ev
            else:
                items.append((CASES, ev))
        bus.publish_all(self.producer, items)

    def decide(self, service_id: str, outcome: str, *, reason: str | None = None, missing=(), outputs=None,
               reason_code: str | None = None) -> None:
        task = self.tasks[service_id]
        dept = task.payload["department"]
        decision = new_event(
            "DecisionRecorded", task.key,
            {"task_id": task.payload["task_id"], "department": dept, "service_id": service_id,
             "kind": "case_service", "outcome": outcome, "reason": reason, "reason_code": reason_code,
             "missing_materials": list(missing), "outputs": dict(outputs or {})},
            actor=Actor(f"dept-{dept}", "department", "department", f"{dept}-officer-1"),
            region_code=task.envelope.region_code, cause=task,
            event_id=derived_event_id(task.id, "decision", outcome))
        bus.publish(self.producer, decisions_topic(dept), decision)
        self._fold(decision)

    def applicant_event(self, event: Event) -> None:
        self._fold(event)

    def close(self) -> None:
        self.producer.close()


class _View:
    """The case view projection in a schema of this test's own, following the log in a thread."""

    def __init__(self, bootstrap: str, database_url: str, case_id: str, departments: list[str],
                 applications_start: dict):
        from projectors.postgres_projection import ProjectionRunner

        self.database_url = database_url
        self.bootstrap = bootstrap
        self.name = f"status_page_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            case_view.create_schema(conn, self.name)
        topics = (APPLICATIONS, CASES, *(tasks_topic(d) for d in departments),
                  *(decisions_topic(d) for d in departments))
        self.projection = case_view.CaseViewProjection(self.name, schema=self.name, topics=topics,
                                                       keep=lambda key: key == case_id)
        # start at the log's current end (the submission: just before it), not at its beginning
        seed_offsets(bootstrap, database_url, self.name, [t for t in topics if t != APPLICATIONS])
        with psycopg.connect(database_url) as conn:
            conn.cursor().executemany(
                "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) VALUES (%s, %s, %s, %s)",
                [(self.name, tp.topic, tp.partition, off) for tp, off in applications_start.items()])
        self.runner = ProjectionRunner(self.projection, bootstrap, database_url)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.runner.run, args=(self.stop.is_set,), daemon=True)
        self.thread.start()

    def read(self, conn: psycopg.Connection, case_id: str) -> dict | None:
        return case_view.read_case(conn, case_id, schema=self.name)

    def wait(self, case_id: str, predicate, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while True:
                view = self.read(conn, case_id)
                if view is not None and predicate(view):
                    return view
                assert time.monotonic() < deadline, f"the case view never showed the expected state: {view}"
                time.sleep(0.3)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
        self.runner.close()
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(**kafka_auth.connection(self.bootstrap))
        try:
            admin.delete_groups([self.runner.group])  # leave no group behind in `onething status`
        finally:
            admin.close()
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            case_view.drop_schema(conn, self.name)
            conn.execute("DELETE FROM consumer_offsets WHERE consumer = %s", (self.name,))
            conn.execute("DELETE FROM processed_events WHERE consumer = %s", (self.name,))


def _services(view: dict) -> dict[str, dict]:
    return {s["service_id"]: s for s in view["services"]}


def test_status_page_on_a_phone(settings, bootstrap, database_url):
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: the bootstrap must `apt-get install -y chromium`")
    catalog = load_catalog()
    holder: dict = {}
    app = create_app(replace(settings, bootstrap_servers=bootstrap, database_url=database_url),
                     read_case=lambda conn, case_id: holder["view"].read(conn, case_id))
    token = identity.applicant_token(WANG.resident_id)

    with PortalServer(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        # 1. the applicant files (the API seeded the demo e-licences on start)
        before = end_offsets(bootstrap)
        r = http.post("/api/v1/applications", headers={"Authorization": f"Bearer {token}"},
                      json=newborn_request(http, token))
        assert r.status_code == 202, r.text
        receipt = r.json()
        case_id = receipt["case_id"]
        (submitted,) = [e for e in events_since(bootstrap, before) if e.key == case_id]

        # 2. dispatch and the departments move the case on; the projection follows the log
        holder["view"] = view_model = _View(bootstrap, database_url, case_id,
                                            list(dict.fromkeys(catalog.services[s].department
                                                               for s in submitted.payload["services"])),
                                            before)
        depts = _Departments(bootstrap, submitted)
        try:
            depts.decide("health.birth_certificate", "approved",
                         outputs={"birth_certificate_no": "Q440203260001", "birth_medical_certificate": "EL-BMC-0001"})
            depts.decide("health.childbirth_registration", "approved",
                         outputs={"childbirth_registration_no": "SY-2026-00123"})
            depts.decide("disease_control.vaccination_record", "accepted")
            depts.decide("medical_insurance.childbirth_reimbursement", "correction_requested",
                         reason="出院小结缺少医院盖章，请补交盖章件", missing=["discharge_summary"])
            view = view_model.wait(case_id, lambda v: v["status"] == "awaiting_applicant"
                                   and _services(v)["police.birth_registration"]["status"] == "dispatched")
            assert [m["code"] for m in view["missing"]] == ["discharge_summary"]

            # 3. the page, on a phone, from the receipt's link
            with playwright_api.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                                               has_touch=True, locale="zh-CN").new_page()
                    page_errors: list[str] = []
                    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
                    page.goto(base + receipt["status_url"])
                    page.wait_for_selector('[data-service="police.birth_registration"]')
                    assert "token=" not in page.url, "the token must leave the address bar"
                    assert page.inner_text("#receipt-no") == receipt["receipt_no"]
                    assert page.inner_text("#bundle-label") == "新生儿出生"
                    assert page.inner_text("#case-status") == "待补正"
                    for sid in submitted.payload["services"]:
                        label = page.inner_text(f'[data-service="{sid}"] .service-label')
                        assert label == catalog.services[sid].label.zh
                    assert page.inner_text('[data-service="health.birth_certificate"] .badge') == "已办结"
                    outputs = page.inner_text('[data-service="health.birth_certificate"] .service-outputs')
                    assert "Q440203260001" in outputs and "出生医学证明" in outputs
                    reimbursement = page.inner_text('[data-service="medical_insurance.childbirth_reimbursement"]')
                    assert "需补正" in reimbursement and "盖章" in reimbursement
                    missing = page.locator('[data-material="discharge_summary"]')
                    assert missing.is_visible()
                    assert "出院小结" in missing.inner_text() and "生育医疗费用报销" in missing.inner_text()
                    # the receipt's link only reads: no form acts on the case, a note says why
                    assert page.is_visible("#read-only-note") and "登录本人账号" in page.inner_text("#read-only-note")
                    assert not missing.locator("form").is_visible()
                    assert not page.is_visible("#escalate")

                    # 3b. the applicant's own login opens the same page with its forms
                    page.goto(base + f"/status/{case_id}?lang=zh#token={token}")
                    page.wait_for_selector('[data-material="discharge_summary"] form')
                    assert "token=" not in page.url
                    assert not page.is_visible("#read-only-note")
                    assert missing.locator('input[type="file"]').count() == 1
                    assert missing.locator("button").inner_text() == "上传并提交"
                    assert "个工作日" in page.inner_text("#services")  # deadlines in working days
                    assert page.locator("#timeline li").count() >= 5
                    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
                    page.screenshot(path="/tmp/status_page.png", full_page=True)
                    page.click("#timeline-more")  # the newest entries first, the rest on request
                    assert page.locator("#timeline li").count() >= len(view["timeline"])

                    # 4. English
                    page.click("#lang")
                    assert page.inner_text("#missing h2") == "Documents we still need from you"
                    for sid in submitted.payload["services"]:
                        label = page.inner_text(f'[data-service="{sid}"] .service-label')
                        assert label == catalog.services[sid].label.en
                    assert "Hospital discharge summary" in missing.inner_text()
                    assert missing.locator("button").inner_text() == "Upload and submit"
                    assert page.inner_text("#case-status") == "Waiting for the applicant"
                    assert page.inner_text("#refresh-state").startswith("Refreshes every")
                    page.evaluate("window.scrollTo(0, 0)")
                    page.screenshot(path="/tmp/status_page_en.png", full_page=True)

                    # 5. the applicant uploads the missing document through the page's form
                    before = end_offsets(bootstrap)
                    missing.locator('input[type="file"]').set_input_files(
                        files=[{"name": "discharge.pdf", "mimeType": "application/pdf",
                                "buffer": b"%PDF-1.4\n% stamped discharge summary\n"}])
                    missing.locator("button").click()
                    page.wait_for_selector('[data-material="discharge_summary"] .upload-state.ok', timeout=15000)
                    (supplement,) = [e for e in events_since(bootstrap, before) if e.key == case_id]
                    assert supplement.type == "MaterialsSupplemented" and supplement.envelope.sequence == 1
                    assert supplement.payload["materials"][0]["code"] == "discharge_summary"
                    assert supplement.payload["materials"][0]["source"] == "uploaded"

                    # 6. the case moves on and the open page follows without a reload
                    depts.applicant_event(supplement)
                    depts.decide("police.birth_registration", "approved",
                                 outputs={"child_resident_id": "440203202611200021"})
                    page.wait_for_function(
                        "() => !document.querySelector('#missing') || document.querySelector('#missing').hidden",
                        timeout=20000)
                    page.wait_for_function(
                        """() => { const b = document.querySelector('[data-service="police.birth_registration"] .badge');
                                   return b && b.textContent === 'Approved'; }""", timeout=20000)
                    assert "440203202611200021" in page.inner_text('[data-service="police.birth_registration"]')
                    page.click("#lang")
                    assert page.inner_text("#case-status") == "办理中"

                    # 7. 办不成事: the applicant reports the case as stuck from the page
                    before = end_offsets(bootstrap)
                    page.click("#escalate summary")
                    page.select_option("#escalation-form select[name=reason]", "stuck")
                    page.select_option("#escalation-form select[name=service_id]", "police.birth_registration")
                    page.fill("#escalation-form textarea[name=comment]", "等了很久没有进展")
                    page.click("#escalation-form button[type=submit]")
                    page.wait_for_selector("#escalation-form .form-state.ok", timeout=15000)
                    assert "3个工作日" in page.inner_text("#escalation-form .form-state")
                    (escalated,) = [e for e in events_since(bootstrap, before) if e.key == case_id]
                    assert escalated.type == "CaseEscalated" and escalated.payload["origin"] == "applicant"
                    assert escalated.payload["reason"] == "stuck"
                    assert escalated.payload["service_id"] == "police.birth_registration"
                    assert escalated.payload["comment"] == "等了很久没有进展"
                    assert page_errors == []
                finally:
                    browser.close()
        finally:
            depts.close()
            view_model.close()


def test_a_partly_refused_case_says_so_with_the_reason_in_the_pages_language(settings, bootstrap, database_url):
    catalog = load_catalog()
    holder: dict = {}
    app = create_app(replace(settings, bootstrap_servers=bootstrap, database_url=database_url),
                     read_case=lambda conn, case_id: holder["view"].read(conn, case_id))
    token = identity.applicant_token(WANG.resident_id)
    with PortalServer(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        before = end_offsets(bootstrap)
        r = http.post("/api/v1/applications", headers={"Authorization": f"Bearer {token}"},
                      json=newborn_request(http, token))
        assert r.status_code == 202, r.text
        case_id = r.json()["case_id"]
        (submitted,) = [e for e in events_since(bootstrap, before) if e.key == case_id]
        services = submitted.payload["services"]
        holder["view"] = view_model = _View(bootstrap, database_url, case_id,
                                            list(dict.fromkeys(catalog.services[s].department for s in services)),
                                            before)
        depts = _Departments(bootstrap, submitted)
        try:
            # the hospital is not registered: the health department refuses with a code of its list,
            # its own words in English — which the Chinese page must never show
            depts.decide("health.birth_certificate", "rejected", reason="facility not registered",
                         reason_code="hospital_not_registered")
            decided = {"health.birth_certificate"}
            while depts.state.status != "completed":
                open_tasks = [sid for sid in depts.tasks if sid not in decided]
                assert open_tasks, f"nothing left to decide, yet the case is {depts.state.status}"
                for sid in open_tasks:
                    depts.decide(sid, "approved", outputs={o: f"DEMO-{i}" for i, o in
                                                           enumerate(catalog.services[sid].produces)})
                    decided.add(sid)
            view = view_model.wait(case_id, lambda v: v["status"] == "completed")
            assert view["outcome"] == "partly_approved" and view["status_label"]["zh"] == "部分办结"
            blocked = {s["service_id"] for s in view["services"] if s["status"] == "blocked"}
            assert "police.birth_registration" in blocked

            with playwright_api.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True,
                                               locale="zh-CN").new_page()
                    page_errors: list[str] = []
                    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
                    page.goto(base + f"/status/{case_id}?lang=zh#token={token}")
                    page.wait_for_selector('[data-refused="health.birth_certificate"]')
                    assert page.inner_text("#case-status") == "部分办结"
                    assert "部分办结" in page.inner_text("#notice") and "全部办结" not in page.inner_text("#notice")
                    refused = page.inner_text('[data-refused="health.birth_certificate"]')
                    assert "出生医学证明" in refused and "助产技术服务资质" in refused  # the reason, in Chinese
                    assert "重新申请" in refused  # what the applicant can do about it
                    assert catalog.services["police.birth_registration"].label.zh in refused  # what it blocked
                    assert "facility" not in page.inner_text("body") and "midwifery" not in page.inner_text("body")
                    blocked_row = page.inner_text('[data-service="police.birth_registration"]')
                    assert "前置事项未办成" in blocked_row and "approved" not in blocked_row
                    first = page.locator("#services > li").first
                    assert first.get_attribute("data-service") == "health.birth_certificate"  # refused first
                    assert "助产" in first.inner_text() and "不予办理" in first.inner_text()
                    steps = page.inner_text("#refused-steps")
                    assert "办不成事" in steps and "重新申请" in steps
                    page.click('[data-step="escalate"] button')  # 办不成事, the form opens for this service
                    assert page.is_visible("#escalation-form")
                    assert page.eval_on_selector("#escalation-form select[name=reason]", "e => e.value") == "rejected"
                    assert page.eval_on_selector("#escalation-form select[name=service_id]",
                                                 "e => e.value") == "health.birth_certificate"
                    page.evaluate("window.scrollTo(0, 0)")
                    page.screenshot(path="/tmp/status_page_refused.png", full_page=True)

                    page.click("#lang")  # English: the same reason, in English
                    assert page.inner_text("#case-status") == "Partly completed"
                    refused = page.inner_text('[data-refused="health.birth_certificate"]')
                    assert "midwifery" in refused and "助产" not in refused
                    assert "Partly completed" in page.inner_text("#notice")
                    assert page_errors == []
                finally:
                    browser.close()
        finally:
            depts.close()
            view_model.close()
