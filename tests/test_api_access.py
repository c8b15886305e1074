"""Every route of the app × every role, against the declared table of who may call it.

The table below is the API's access policy in one place. The test walks `app.routes` (the routes
of included routers too) and calls each one as each role; a route the table does not name fails
the test, so a new route cannot ship without a rule. "Allowed" means the request got past the
access rules: anything but 401, 403, or a 404 that hides the case or the department from the
caller (a 404 for an escalation that does not exist is an allowed supervisor's answer). Write
requests carry a body the handler refuses (422) when the caller is allowed, so nothing is
produced. Real PostgreSQL and Kafka, one case, about 400 requests.
"""
from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from producers import identity
from producers.api_observe import flat_routes
from producers.intake_api import create_app
from tests.support.api_role import api_settings
from tests.test_intake_api import CHEN, WANG, auth, newborn_request, upload

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

ROLES = ("none", "owner", "other_applicant", "clerk", "dept_on_case", "dept_off_case", "supervisor", "register",
         "receipt_link")
EVERYONE = frozenset(ROLES)
APPLICANTS_AND_CLERKS = frozenset({"owner", "other_applicant", "clerk"})
STAFF_READERS = frozenset({"dept_on_case", "dept_off_case", "supervisor", "register"})

#: (method, path template) → the roles that get past its access rules
ALLOWED: dict[tuple[str, str], frozenset[str]] = {
    # public: the OpenAPI document, the docs, the pages (they read their token from #token=), metrics
    ("GET", "/openapi.json"): EVERYONE,
    ("GET", "/docs"): EVERYONE,
    ("GET", "/docs/oauth2-redirect"): EVERYONE,
    ("GET", "/redoc"): EVERYONE,
    ("GET", "/metrics"): EVERYONE,
    ("GET", "/status/{case_id}"): EVERYONE,
    ("GET", "/supervisor"): EVERYONE,
    ("GET", "/kpis"): EVERYONE,
    # 智问智搜: the portal's home and the search it calls (no personal data; rate-limited per address)
    ("GET", "/"): EVERYONE,
    ("GET", "/search"): EVERYONE,
    ("GET", "/api/v1/search"): EVERYONE,
    # the catalog: public; an applicant's own login prefills the form
    ("GET", "/api/v1/bundles"): EVERYONE,
    ("GET", "/api/v1/bundles/{code}/form"): EVERYONE,
    ("GET", "/api/v1/forms"): EVERYONE,
    # filing: a person's own login or a clerk (the status link only reads)
    ("POST", "/api/v1/documents"): APPLICANTS_AND_CLERKS,
    # a download: its uploader (the owner here; a department on a case that needs it: tests/test_documents.py)
    ("GET", "/api/v1/documents/{ref}"): frozenset({"owner"}),
    ("POST", "/api/v1/applications"): APPLICANTS_AND_CLERKS,
    # the case: read by its applicant, its departments and its status link; acted on by its applicant
    ("GET", "/api/v1/cases/{case_id}"): frozenset({"owner", "dept_on_case", "receipt_link"}),
    # 谁查看了我的数据: the applicant's own (their login or the case's link); what a staff member read: a supervisor
    ("GET", "/api/v1/cases/{case_id}/reads"): frozenset({"owner", "receipt_link"}),
    ("GET", "/api/v1/reads"): frozenset({"supervisor"}),
    ("POST", "/api/v1/cases/{case_id}/materials"): frozenset({"owner"}),
    ("POST", "/api/v1/cases/{case_id}/withdraw"): frozenset({"owner"}),
    ("POST", "/api/v1/cases/{case_id}/escalations"): frozenset({"owner"}),
    ("POST", "/api/v1/cases/{case_id}/rating"): frozenset({"owner"}),
    # a department's own lists (the path names the department on the case: police)
    ("GET", "/api/v1/departments/{department}/worklist"): frozenset({"dept_on_case"}),
    ("GET", "/api/v1/departments/{department}/rectifications"): frozenset({"dept_on_case"}),
    ("POST", "/api/v1/rectifications/{rectification_id}/reply"): frozenset({"dept_on_case", "dept_off_case"}),
    # the supervisor
    ("GET", "/api/v1/escalations"): frozenset({"supervisor"}),
    ("GET", "/api/v1/escalations/{escalation_id}"): frozenset({"supervisor"}),
    ("POST", "/api/v1/escalations/{escalation_id}/reply"): frozenset({"supervisor"}),
    ("POST", "/api/v1/escalations/{escalation_id}/extend"): frozenset({"supervisor"}),
    ("POST", "/api/v1/escalations/{escalation_id}/resolve"): frozenset({"supervisor"}),
    ("POST", "/api/v1/subjects/{subject}/erase"): frozenset({"supervisor"}),
    # KPIs: supervisors, and departments (their own services)
    ("GET", "/api/v1/kpis"): frozenset({"dept_on_case", "dept_off_case", "supervisor"}),
    ("GET", "/api/v1/kpis/reform/{bundle}"): frozenset({"dept_on_case", "dept_off_case", "supervisor"}),
    # registers: the register itself, or the staff of the department keeping it (company: market
    # regulation, which no role here is; person: police, the department on the case)
    ("POST", "/api/v1/registers/company"): frozenset({"register"}),
    ("POST", "/api/v1/registers/company/{uscc}/changes"): frozenset({"register"}),
    ("POST", "/api/v1/registers/company/{uscc}/deregistration"): frozenset({"register"}),
    ("POST", "/api/v1/registers/company/{uscc}/conversion"): frozenset({"register"}),
    ("POST", "/api/v1/registers/person/household-moves"): frozenset({"register", "dept_on_case"}),
    ("POST", "/api/v1/registers/person/deaths"): frozenset({"register", "dept_on_case"}),
    ("GET", "/api/v1/registers/company/{uscc}"): STAFF_READERS,
    ("GET", "/api/v1/cascade/changes"): STAFF_READERS,
    ("GET", "/api/v1/cascade/changes/{change_event_id}"): STAFF_READERS,
    ("GET", "/api/v1/cascade/backlog"): STAFF_READERS,
    ("GET", "/api/v1/cascade/summary"): STAFF_READERS,
    # 主动服务: the inbox page is public (its token in #token=); the inbox and its answers are a person's
    # own login's (an item of someone else's is 404); a department's grants its own staff's; KPIs public counts
    ("GET", "/inbox"): EVERYONE,
    ("GET", "/api/v1/inbox"): frozenset({"owner", "other_applicant"}),
    ("POST", "/api/v1/inbox/{offer_id}/accept"): frozenset({"owner", "other_applicant"}),
    ("POST", "/api/v1/inbox/{offer_id}/decline"): frozenset({"owner", "other_applicant"}),
    ("GET", "/api/v1/departments/{department}/grants"): frozenset({"dept_on_case"}),
    ("GET", "/api/v1/proactive/kpis"): EVERYONE,
}

#: a body each write route refuses (422) once the caller got past its access rules
REFUSED_BODY: dict[str, object] = {
    "/api/v1/applications": {},                                  # no bundle_code
    "/api/v1/cases/{case_id}/materials": {"form": "not a map"},
    "/api/v1/cases/{case_id}/withdraw": {"reason": 5},
    "/api/v1/cases/{case_id}/escalations": {"reason": "no such reason"},
    "/api/v1/cases/{case_id}/rating": {"grade": "superb"},
    "/api/v1/rectifications/{rectification_id}/reply": {"reply": ""},
    "/api/v1/escalations/{escalation_id}/reply": {"reply": ""},
    "/api/v1/escalations/{escalation_id}/extend": {"resolve_within_working_days": 99, "reason": "x"},
    "/api/v1/escalations/{escalation_id}/resolve": {"resolution": ""},
    "/api/v1/subjects/{subject}/erase": {"reason": ""},
}
#: 404s that hide something from the caller (they count as refused)
HIDING = {("case_id", "case.not_found"), ("department", "not_found"), ("ref", "document.not_found")}
DOCUMENT: dict[str, str] = {}  # the owner's upload, downloaded as {ref}


@pytest.fixture(scope="module")
def world(settings, bootstrap, database_url):
    app = create_app(api_settings(settings, bootstrap, database_url), seed_demo=False)
    with TestClient(app) as client:
        owner = identity.applicant_token(WANG.resident_id)
        r = client.post("/api/v1/applications", headers=auth(owner), json=newborn_request(client, owner))
        assert r.status_code == 202, r.text
        case_id = r.json()["case_id"]
        link = r.json()["status_url"].split("#token=")[1]
        DOCUMENT["ref"] = upload(client, owner)
        tokens = {
            "owner": owner,
            "other_applicant": identity.applicant_token(CHEN.resident_id),
            "clerk": identity.clerk_token("W-0042"),
            "dept_on_case": identity.department_token("police", "P-7"),
            "dept_off_case": identity.department_token("education", "E-1"),
            "supervisor": identity.supervisor_token("S-1"),
            # the register's reads of personal data name the staff member too (producers/api_audit.py)
            "register": identity.issue_token("register:test", "register", "register", staff_id="R-1"),
            "receipt_link": link,
        }
        yield app, client, case_id, tokens


def concrete(path: str, case_id: str) -> str:
    return (path.replace("{case_id}", case_id).replace("{code}", "newborn").replace("{bundle}", "newborn")
            .replace("{department}", "police").replace("{escalation_id}", "esc-none")
            .replace("{rectification_id}", "rect-none").replace("{uscc}", "91440203MA4UNKNOWN0")
            .replace("{change_event_id}", str(uuid.uuid4())).replace("{subject}", "p_no_such_subject")
            .replace("{ref}", DOCUMENT.get("ref", "doc-none")))


def allowed(response) -> bool:
    if response.status_code in (401, 403):
        return False
    if response.status_code == 404 and response.headers.get("content-type", "").startswith("application/json"):
        errors = response.json().get("errors") or []
        return not any((e.get("path"), e.get("code")) in HIDING for e in errors)
    return True


def call(client: TestClient, method: str, template: str, case_id: str, token: str | None):
    headers = auth(token) if token else {}
    path = concrete(template, case_id)
    if method == "GET":
        return client.get(path, headers=headers)
    if template == "/api/v1/documents":
        return client.post(path, content=b"", headers=headers | {"Content-Type": "application/pdf"})
    return client.post(path, json=REFUSED_BODY.get(template, {}), headers=headers)


def test_every_route_and_role_against_the_table(world):
    app, client, case_id, tokens = world
    routes = [(m, r.path) for r in flat_routes(app.routes) for m in sorted(getattr(r, "methods", None) or ())
              if m != "HEAD"]
    missing = sorted(set(routes) - set(ALLOWED))
    assert not missing, f"routes without an access rule in the table: {missing}"
    stale = sorted(set(ALLOWED) - set(routes))
    assert not stale, f"the table names routes the app does not have: {stale}"
    wrong = []
    for method, template in routes:
        for role in ROLES:
            r = call(client, method, template, case_id, tokens.get(role))
            if r.status_code >= 500:
                wrong.append((method, template, role, r.status_code, r.text[:120]))
            elif allowed(r) != (role in ALLOWED[(method, template)]):
                wrong.append((method, template, role, r.status_code, r.text[:120]))
    assert not wrong, "\n".join(map(str, wrong))


def test_the_openapi_document_marks_the_routes_that_need_a_token(world):
    app, client, _case_id, _tokens = world
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"]}
    for (method, template), roles in ALLOWED.items():
        operation = spec["paths"].get(template, {}).get(method.lower())
        if operation is None:
            continue  # not in the schema: pages, docs, metrics
        security = operation.get("security") or []
        required = bool(security) and {} not in security  # `{}`: the token is optional
        assert required == ("none" not in roles), (method, template, security)
    form = spec["paths"]["/api/v1/bundles/{code}/form"]["get"]["security"]
    assert {"bearer": []} in form and {} in form  # anyone; a token prefills it


def test_the_receipt_link_reads_but_never_acts(world):
    _app, client, case_id, tokens = world
    link = tokens["receipt_link"]
    assert identity.verify_token(link).scope == identity.STATUS_READ
    assert client.get(f"/api/v1/cases/{case_id}", headers=auth(link)).status_code == 200
    for action, body in (("withdraw", {}), ("materials", {"form": {"contact_mobile": "13900001111"}}),
                         ("escalations", {"reason": "stuck"}), ("rating", {"grade": "satisfied"})):
        r = client.post(f"/api/v1/cases/{case_id}/{action}", headers=auth(link), json=body)
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "auth.read_only", (action, r.text)
    r = client.post("/api/v1/documents", content=b"%PDF-1.4", headers=auth(link) | {"Content-Type": "application/pdf"})
    assert r.status_code == 403


def test_staff_tokens_name_a_staff_member_and_live_a_working_day_at_most():
    with pytest.raises(TypeError):
        identity.department_token("police")  # the staff id is required
    with pytest.raises(ValueError):
        identity.issue_token("staff_x", "department", "department", department="police")
    with pytest.raises(ValueError):
        identity.supervisor_token("S-1", ttl_s=8 * 3600 + 1)
    # a long-lived staff token signed elsewhere (or before this rule) is refused when verified
    import time

    import jwt

    now = int(time.time())
    for role, channel, extra in (("supervisor", "online", {"staff_id": "S-1"}),
                                 ("department", "department", {"staff_id": "P-1", "department": "police"}),
                                 ("register", "register", {})):
        long_lived = jwt.encode({"iss": identity.ISSUER, "sub": "staff_x", "role": role, "channel": channel,
                                 "iat": now, "exp": now + 9 * 3600, **extra}, identity.token_secret(),
                                algorithm=identity.ALGORITHM)
        with pytest.raises(identity.InvalidToken, match="8 hours"):
            identity.verify_token(long_lived)
    nameless = jwt.encode({"iss": identity.ISSUER, "sub": "staff_police", "role": "department",
                           "channel": "department", "department": "police", "iat": now, "exp": now + 3600},
                          identity.token_secret(), algorithm=identity.ALGORITHM)
    with pytest.raises(identity.InvalidToken, match="staff member"):
        identity.verify_token(nameless)
    # an applicant's status link may live long: it only reads
    assert identity.verify_token(identity.status_link_token("p_x", "case-x")).read_only


def test_the_api_modules_stay_small_and_oversight_does_not_import_the_app():
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", "import sys, producers.oversight_api, producers.kpi_api, "
                          "producers.register_api; print('producers.intake_api' in sys.modules)"],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False", "the routers must not import the app that mounts them"
    producers = Path(__file__).resolve().parent.parent / "producers"
    big = {p.name: n for p in producers.glob("*api*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not big, big
