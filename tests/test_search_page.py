"""The portal's home (智问智搜) in a real headless Chromium on a phone-size viewport.

Debian's Chromium (/usr/bin/chromium) driven by the `playwright` package, as tests/test_status_page.py
does (`playwright install` is never run). The app is the API's own routers — search, pages, catalog —
on a bare FastAPI app under uvicorn: the search needs no broker and no database. A person types an
everyday question, sees the right bundle first with a link to its merged form (一表申报) and what
that form asks (services, departments, documents — e-licences fetched), follows the link, switches
to English, and gets a plain "nothing found" for nonsense; the page never scrolls
sideways on the phone. Screenshots: /tmp/search_page.png (Chinese), /tmp/search_page_en.png.
"""
from __future__ import annotations

import shutil

import pytest
from playwright import sync_api as playwright_api  # PyPI `playwright`; its browsers are never downloaded

from producers import api_catalog
from tests.support.portal_server import PortalServer
from tests.test_search_api import CATALOG, bare_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def base_url():
    if not shutil.which(CHROMIUM) and not shutil.which("chromium"):
        pytest.fail("Debian's chromium is missing: the bootstrap must `apt-get install -y chromium`")
    app = bare_app()
    app.include_router(api_catalog.router)  # the results' links: the merged form
    with PortalServer(app) as base:
        yield base


@pytest.fixture(scope="module")
def phone(base_url):
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True,
                                          locale="zh-CN")
            yield context
        finally:
            browser.close()


def test_a_person_types_an_everyday_question_on_a_phone_and_reaches_the_merged_form(base_url, phone):
    page = phone.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base_url + "/")
    assert page.inner_text("h1") == "您要办什么事？"
    page.fill("#q", "生孩子要办什么")
    page.press("#q", "Enter")
    page.wait_for_selector('#bundles li[data-code="newborn"]')
    first = page.locator("#bundles li").first
    assert first.get_attribute("data-code") == "newborn"
    assert CATALOG.bundles["newborn"].label.zh in first.inner_text() and "生孩子" in first.inner_text()
    assert "q=" in page.url  # the query is in the address: the result can be shared or reloaded
    link = first.locator("a.apply")
    assert link.inner_text() == "一表申报" and link.get_attribute("href") == "/api/v1/bundles/newborn/form"
    # what the merged form asks, at a glance: its services, departments and documents
    first.locator("button.details").click()
    summary = first.locator(".form-summary")
    summary.locator(".summary-materials li").first.wait_for()
    text = summary.inner_text()
    assert "项事项，一表申报" in text and "涉及部门" in text and "免提交" in text  # e-licences are fetched
    assert first.locator("button.details").get_attribute("aria-expanded") == "true"
    box = page.locator("#q").bounding_box()
    assert box and box["width"] >= 200 and box["height"] >= 40  # a thumb-size box
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path="/tmp/search_page.png", full_page=True)

    # typed as on a phone, without pressing search: pinyin initials find it as one types
    page.fill("#q", "")
    page.wait_for_selector("#results", state="hidden")  # an emptied box clears the results
    page.type("#q", "shz", delay=30)
    page.wait_for_url(lambda url: "q=shz" in url)
    page.wait_for_selector('#results:not([hidden]) #bundles li:first-child[data-code="newborn"]')

    # the link opens the bundle's merged form
    with page.expect_navigation():
        page.locator("#bundles li a.apply").first.click()
    form = page.evaluate("JSON.parse(document.body.innerText)")
    assert form["bundle"]["code"] == "newborn" and form["fields"]
    assert errors == []


def test_english_and_a_plain_answer_for_nonsense(base_url, phone):
    page = phone.new_page()
    page.goto(base_url + "/search?q=" + "开个小饭馆")
    page.wait_for_selector("#bundles li")
    assert page.locator("#bundles li").first.get_attribute("data-code") == "restaurant_opening"
    page.click("#lang")
    assert page.inner_text("h1") == "What do you need to do?"
    assert CATALOG.bundles["restaurant_opening"].label.en in page.locator("#bundles li").first.inner_text()
    assert page.locator("#bundles li a.apply").first.inner_text() == "Merged form"
    chip = page.locator(".chip").first
    assert chip.inner_text() == "I just had a baby"  # the examples are in the page's language too
    chip.click()
    page.wait_for_selector('#bundles li:first-child[data-code="newborn"]')
    assert page.input_value("#q") == "I just had a baby"
    page.screenshot(path="/tmp/search_page_en.png", full_page=True)

    page.fill("#q", "asdfgh qwerty")
    page.press("#q", "Enter")
    page.wait_for_selector("#notice:not([hidden])")
    assert "Nothing found" in page.inner_text("#notice")
    assert page.locator("#results").is_hidden()
    # the language is remembered for the next visit, like the status page's
    page.goto(base_url + "/")
    assert page.inner_text("h1") == "What do you need to do?"
    page.evaluate("localStorage.removeItem('onething.lang')")


def test_a_query_over_the_limit_is_explained_on_the_page(base_url, phone):
    page = phone.new_page()
    page.goto(base_url + "/?lang=zh")
    page.evaluate("document.getElementById('q').removeAttribute('maxlength')")  # as a pasted text could
    page.fill("#q", "生" * 70)
    page.press("#q", "Enter")
    page.wait_for_selector("#notice.error:not([hidden])")
    assert "64" in page.inner_text("#notice")
