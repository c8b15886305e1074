"""`GET /api/v1/search` and the portal's home page, over the app's own routers on a bare FastAPI app:
no broker, no database (the search reads only the catalog). Public (no token), a query over 64
characters refused with 422 naming `q`, rate-limited per client address with 429 and Retry-After,
visible in /openapi.json, and `/` and `/search` serve the search page."""
from __future__ import annotations

from dataclasses import replace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from catalog import load_catalog
from catalog.search import MAX_QUERY_LENGTH
from producers import api_pages, api_search
from producers.api_limits import RateLimits
from producers.api_state import ApiState
from producers.intake_api import PORTAL_DIR, install_error_handlers

CATALOG = load_catalog()


def bare_app(search_rate: str = "1000/minute", catalog=None) -> FastAPI:
    from fastapi.staticfiles import StaticFiles
    app = FastAPI()
    app.state.api = ApiState(settings=None, database=None, producer=None,  # type: ignore[arg-type]
                             catalog=catalog or CATALOG,
                             limits=RateLimits(submit="off", upload="off", search=search_rate))
    install_error_handlers(app)
    app.include_router(api_search.router)
    app.include_router(api_pages.router)
    app.mount("/portal", StaticFiles(directory=PORTAL_DIR), name="portal")
    return app


@pytest.fixture(scope="module")
def client():
    with TestClient(bare_app()) as c:
        yield c


def test_an_everyday_question_finds_its_bundle_with_a_link_to_the_merged_form(client):
    r = client.get("/api/v1/search", params={"q": "生孩子要办什么"})
    assert r.status_code == 200, r.text
    body = r.json()
    top = body["bundles"][0]
    newborn = CATALOG.bundles["newborn"].label
    assert top["code"] == "newborn" and top["label"] == {"zh": newborn.zh, "en": newborn.en}
    assert top["available"] and top["form_url"] == "/api/v1/bundles/newborn/form"
    assert top["matched"] == "生孩子" and top["kind"] == "individual"
    assert len(body["bundles"]) <= 5


def test_a_bundle_that_cannot_be_applied_for_online_is_found_without_a_form_link():
    """A listed bundle not yet modelled is still found — a person should learn it exists — but
    offers no form to fill."""
    listed_only = replace(CATALOG.bundles["credit_report_query"], modelled=False, members=())
    cat = replace(CATALOG, bundles={**CATALOG.bundles, "credit_report_query": listed_only})
    with TestClient(bare_app(catalog=cat)) as c:
        top = c.get("/api/v1/search", params={"q": "查征信"}).json()["bundles"][0]
    assert top["code"] == "credit_report_query" and top["available"] is False and top["form_url"] is None


def test_services_are_returned_with_their_department_and_bundles(client):
    name = CATALOG.services["disabled_federation.disability_certificate"].label.zh
    body = client.get("/api/v1/search", params={"q": name, "limit": 3}).json()
    s = body["services"][0]
    assert s["service_id"] == "disabled_federation.disability_certificate"
    assert s["department"] == "disabled_federation" and "disability_services" in s["bundles"]
    assert s["department_label"]["zh"]
    assert s["form_url"] == "/api/v1/forms?services=disabled_federation.disability_certificate"


def test_nonsense_returns_empty_lists_not_a_guess(client):
    body = client.get("/api/v1/search", params={"q": "今天天气怎么样"}).json()
    assert body["bundles"] == [] and body["services"] == []


def test_a_query_over_the_limit_is_refused_with_an_error_naming_q(client):
    r = client.get("/api/v1/search", params={"q": "生" * (MAX_QUERY_LENGTH + 1)})
    assert r.status_code == 422
    e = r.json()["errors"][0]
    assert e["path"] == "q" and e["code"] == "search.query_too_long"
    assert str(MAX_QUERY_LENGTH) in e["message_zh"] and str(MAX_QUERY_LENGTH) in e["message_en"]
    ok = client.get("/api/v1/search", params={"q": "生" * MAX_QUERY_LENGTH})
    assert ok.status_code == 200


def test_an_empty_or_missing_query_is_refused_naming_q(client):
    r = client.get("/api/v1/search", params={"q": "   "})
    assert r.status_code == 422 and r.json()["errors"][0] == {**r.json()["errors"][0], "path": "q",
                                                              "code": "search.query_empty"}
    r = client.get("/api/v1/search")
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "query.q"
    r = client.get("/api/v1/search", params={"q": "退休", "limit": 99})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "query.limit"


def test_control_characters_in_the_query_are_refused_like_everywhere_else(client):
    r = client.get("/api/v1/search", params={"q": "退休\x00"})
    assert r.status_code == 422


def test_searches_are_rate_limited_per_client_address_with_retry_after():
    with TestClient(bare_app(search_rate="3/minute")) as c:
        codes = [c.get("/api/v1/search", params={"q": "退休"}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/api/v1/search", params={"q": "退休"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["errors"][0]["code"] == "rate.limited"


def test_the_route_is_public_and_in_the_openapi_document(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/api/v1/search"]["get"]
    assert "security" not in op
    q = next(p for p in op["parameters"] if p["name"] == "q")
    assert q["required"] and q["schema"]["maxLength"] == MAX_QUERY_LENGTH
    assert "智问智搜" in op["summary"]


def test_the_home_page_and_search_page_serve_the_search_box(client):
    for path in ("/", "/search"):
        r = client.get(path)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert 'id="q"' in r.text and "/portal/search.js" in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/portal/search.js").status_code == 200
    assert client.get("/portal/search.css").status_code == 200
