"""What the API refuses before it does any work: oversized bodies (413, counted as they arrive),
anonymous writes (401 before the body is read), too many submissions or uploads by one subject
(429 with Retry-After), and control characters anywhere in a path, query or JSON body (422 naming
the field) — in every API of the app: intake, oversight, KPIs, registers."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from producers import identity
from producers.api_limits import RateLimits
from producers.intake_api import create_app
from tests.support.api_role import api_settings
from tests.test_intake_api import WANG, auth, newborn_request

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

UPLOAD_MAX = 64 * 1024  # this test's app: a smaller upload limit, so the test sends little


@pytest.fixture(scope="module")
def client(settings, bootstrap, database_url):
    mp = pytest.MonkeyPatch()
    mp.setenv("ONETHING_API_UPLOAD_MAX_BYTES", str(UPLOAD_MAX))
    app = create_app(api_settings(settings, bootstrap, database_url), seed_demo=False,
                     rate_limits=RateLimits(submit="3/minute", upload="100/minute"))
    with TestClient(app) as c:
        yield c
    mp.undo()


def chunks(total: int, size: int = 16 * 1024):
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b" " * n


def test_bodies_over_their_limit_are_refused_413_whether_declared_or_streamed(client):
    token = auth(identity.applicant_token(WANG.resident_id))
    big = json.dumps({"bundle_code": "newborn", "form": {"child_name": "x" * (300 * 1024)}})
    r = client.post("/api/v1/applications", content=big, headers=token | {"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["errors"][0]["code"] == "request.too_large"
    assert r.headers["x-request-id"]
    # no Content-Length: counted as the chunks arrive
    r = client.post("/api/v1/applications", content=chunks(300 * 1024),
                    headers=token | {"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    # an upload has its own, larger limit
    r = client.post("/api/v1/documents", content=b"%PDF" + b"0" * UPLOAD_MAX,
                    headers=token | {"Content-Type": "application/pdf"})
    assert r.status_code == 413 and r.json()["errors"][0]["code"] == "document.too_large"
    r = client.post("/api/v1/documents", content=chunks(UPLOAD_MAX + 1), headers=token | {"Content-Type": "application/pdf"})
    assert r.status_code == 413
    ok = client.post("/api/v1/documents", content=b"%PDF" + b"0" * 1000, headers=token | {"Content-Type": "application/pdf"})
    assert ok.status_code == 201


def test_an_anonymous_write_is_refused_before_its_body_is_read(client):
    read = []

    def body():
        read.append(1)
        yield b"{}"

    r = client.post("/api/v1/applications", content=body(), headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "auth.required"
    r = client.post("/api/v1/escalations/esc-x/reply", content=body(),
                    headers={"Authorization": "Bearer forged", "Content-Type": "application/json"})
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "auth.invalid"
    # over the limit too: still 401, not 413 — who is asking comes first
    r = client.post("/api/v1/applications", content=b" " * (400 * 1024), headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    assert read == [] or len(read) <= 2  # the test client may pull the first chunk; the app never parsed it


def test_submissions_per_subject_are_rate_limited_with_retry_after(client):
    token = identity.applicant_token(WANG.resident_id)
    request = newborn_request(client, token)
    codes = [client.post("/api/v1/applications", headers=auth(token), json=request).status_code for _ in range(4)]
    assert codes[:3] == [202, 202, 202] and codes[3] == 429, codes
    r = client.post("/api/v1/applications", headers=auth(token), json=request)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.json()["errors"][0]["code"] == "rate.limited"
    # per subject: another person is not held back by her
    other = identity.applicant_token(e_license_person("chen_jing").resident_id)
    assert client.post("/api/v1/applications", headers=auth(other), json={}).status_code == 422


def e_license_person(key: str):
    from producers import e_license

    return e_license.DEMO_PEOPLE[key]


@pytest.mark.parametrize("method,path,body,field", [
    ("POST", "/api/v1/applications", {"bundle_code": "newborn", "form": {"child_name": "李\x00小满"}}, "form.child_name"),
    ("POST", "/api/v1/applications", {"bundle_code": "newborn", "form": {"child_name": "\x1b[31m红"}}, "form.child_name"),
    ("POST", "/api/v1/applications", {"bundle_code": "newborn\x7f"}, "bundle_code"),
    ("POST", "/api/v1/applications", {"bundle_code": "newborn", "form": {"birth_hospital": "医院\u202e"}},
     "form.birth_hospital"),
    ("POST", "/api/v1/registers/company", {"uscc": "x", "fields": {"name": "公司\x1b"}}, "fields.name"),
    ("GET", "/api/v1/escalations?receipt_no=a%00b", None, "receipt_no"),
    ("GET", "/api/v1/kpis?bundle=%1b", None, "bundle"),
    ("GET", "/api/v1/cases/case-%00x", None, "case_id"),
])
def test_control_characters_are_refused_naming_the_field(client, method, path, body, field):
    token = {"/api/v1/registers": identity.issue_token("register:test", "register", "register"),
             "/api/v1/escalations": identity.supervisor_token("S-1"),
             "/api/v1/kpis": identity.supervisor_token("S-1")}
    who = next((t for prefix, t in token.items() if path.startswith(prefix)), identity.applicant_token(WANG.resident_id))
    if method == "GET":
        r = client.get(path, headers=auth(who))
    else:
        r = client.post(path, content=json.dumps(body), headers=auth(who) | {"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert [e["path"] for e in errors] == [field] and errors[0]["code"].startswith("text.")
    assert errors[0]["message_zh"] and errors[0]["message_en"]
    assert "李" not in r.text and "公司" not in r.text  # the value is never echoed


def test_a_lone_surrogate_is_refused_and_comments_may_span_lines(client):
    token = auth(identity.applicant_token(WANG.resident_id))
    raw = '{"bundle_code": "newborn", "form": {"child_name": "\\ud800"}}'
    r = client.post("/api/v1/applications", content=raw, headers=token | {"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["code"] == "text.lone_surrogate"
    # a comment is multi-line text: tab and newline pass the text rule (the escalation itself is
    # then refused for its own reason), ESC does not
    url = "/api/v1/cases/case-nope/escalations"
    r = client.post(url, json={"reason": "rejected", "comment": "第一行\n\t第二行"}, headers=token)
    assert r.status_code == 404  # past the text rule, the case is not hers
    r = client.post(url, json={"reason": "rejected", "comment": "第一行\x1b第二行"}, headers=token)
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "comment"
