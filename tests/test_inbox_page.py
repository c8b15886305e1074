"""The citizen's inbox page (portal/inbox.html) in a real headless Chromium, on a phone viewport.

The offers are made by the proactive processor itself (projectors/proactive.py on the runtime, in
a thread, a consumer name of its own) from e-licence data, with the day pinned (ONETHING_TODAY):
a man turning 60 is offered retirement, a woman turning 80 is granted 高龄津贴. The API runs
in-process under uvicorn on the real broker and PostgreSQL. The retiree fills in only what the
government does not hold and accepts in one step; the senior declines the grant; the page follows
both, in Chinese, then in English. Screenshots: /tmp/inbox_page.png, /tmp/inbox_page_en.png.
"""
from __future__ import annotations

import shutil
import threading
import uuid
from datetime import date

import psycopg
import pytest
from playwright import sync_api as playwright_api  # Debian's Chromium; `playwright install` is never run

from infra import migrations
from producers.intake_api import create_app
from projectors.proactive import ProactiveProcessor
from projectors.runtime import Worker

from .support.portal_server import PortalServer
from .test_proactive_e2e import LICENCE_PREFIX, Person, _id_card, _licence

pytestmark = [pytest.mark.broker, pytest.mark.postgres]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}
TODAY = date(2025, 3, 10)


@pytest.fixture
def people(running_stack, monkeypatch):
    monkeypatch.setenv("ONETHING_TODAY", TODAY.isoformat())
    url = running_stack.database_url
    migrations.migrate(url)
    retiree = Person(date(1965, 2, 4), "male", "钱志强")   # 60y1m on 2025-03-04 (the 2025 reform)
    senior = Person(date(1945, 3, 6), "female", "冯桂兰")
    with psycopg.connect(url, autocommit=True) as conn:
        _id_card(conn, retiree)
        _licence(conn, retiree, "household_register", {"address": "北京市朝阳区朝阳门外大街2号", "region_code": "110105",
                                                       "members": []}, relation="head")
        _id_card(conn, senior)
    yield retiree, senior
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM e_licenses WHERE licence_no LIKE %s", (LICENCE_PREFIX + "%",))


@pytest.fixture
def proactive(running_stack, people):
    """The processor on the runtime, in a thread, under a consumer name of this test's own."""
    name = f"proactive.page-{uuid.uuid4().hex[:8]}"
    p = ProactiveProcessor(name=name, tick_s=0.3, scan_every_s=0.5)
    p.start = "latest"
    worker = Worker(p, running_stack.bootstrap_servers, running_stack.database_url, poll_ms=200)
    worker.ready()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop.is_set,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)
    worker.close()
    with psycopg.connect(running_stack.database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM consumer_offsets WHERE consumer = %s", (name,))
        conn.execute("DELETE FROM processed_events WHERE consumer = %s", (name,))


def _open(browser, base: str, person: Person):
    page = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True,
                               locale="zh-CN").new_page()
    token = person.bearer["Authorization"].removeprefix("Bearer ")
    page.goto(f"{base}/inbox#token={token}")
    return page


def test_the_inbox_offers_prefilled_retirement_accepted_in_one_step_and_a_grant_declined(settings, people,
                                                                                          proactive):
    retiree, senior = people
    app = create_app(settings)
    with PortalServer(app) as base, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = _open(browser, base, retiree)
            offer = page.locator("[data-rule=retirement_offer]")
            offer.wait_for(timeout=60_000)
            assert "主动服务" in offer.locator(".item-title").inner_text()
            assert "待确认" in offer.locator(".item-state").inner_text()
            filled = offer.locator("[data-field=applicant_name] .prefilled-value").inner_text()
            assert filled == retiree.name, "the name is prefilled from the ID card"
            assert "身份证" in offer.locator("[data-field=applicant_name] dt").inner_text()
            assert "基本养老保险" in offer.locator(".item-body").inner_text() or offer.locator(".missing-item").count() >= 4
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            offer.locator("select[name=employment_status]").select_option("flexible")
            offer.locator("input[name=bank_name]").fill("中国工商银行")
            offer.locator("input[name=bank_account_no]").fill("6222020200112233445")
            offer.locator("input[name=contact_mobile]").fill("13900139000")
            page.screenshot(path="/tmp/inbox_page.png", full_page=True)
            offer.locator("[data-act=accept]").click()
            done = page.locator("[data-rule=retirement_offer][data-state=accepted]")
            done.wait_for(timeout=60_000)
            assert "已提交" in done.inner_text() and "办件：" in done.locator(".item-meta").inner_text()
            assert done.locator("a.status-link").get_attribute("href").startswith("/status/case-")

            page2 = _open(browser, base, senior)
            grant = page2.locator("[data-rule=senior_allowance_80]")
            grant.wait_for(timeout=60_000)
            text = grant.inner_text()
            assert "免申即享" in text and "高龄津贴" in text and "已为您办理" in text and "谢绝" in text
            assert "谢绝期满后交部门办理" in text, "where the grant's execution is: not sent while it may be declined"
            grant.locator("[data-act=decline]").click()
            page2.locator("[data-rule=senior_allowance_80][data-state=declined][data-task=cancelled]").wait_for(
                timeout=60_000)
            page2.locator("#lang").click()
            grant = page2.locator("[data-rule=senior_allowance_80]")
            assert "Granted" in grant.inner_text() and "declined" in grant.inner_text()
            assert "the department will not do it" in grant.inner_text()
            assert page2.evaluate("document.documentElement.lang") == "en"
            page2.screenshot(path="/tmp/inbox_page_en.png", full_page=True)
        finally:
            browser.close()
