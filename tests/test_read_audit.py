"""谁查看了我的数据 against the real broker and PostgreSQL: the API (as `onething_api`) records every
staff read on `audit.reads`, the read-audit projection (as `onething_read_audit`, on the runtime)
appends it to its hash chain, and the applicant's own route lists it within seconds.

A police clerk reads a newborn case → the applicant sees 公安机关 · 部门工作人员, when and why, and
never the staff id; the worklist records a read per listed case; a clerk's filing records the
e-licences it fetched; a company entry records its legal representative; a read by a staff token
without a staff id is refused; a read that cannot be recorded is refused (503); the chain verifies,
the component role can neither change nor delete a row, and a row the owner changes is found by
`onething audit verify`.
"""
from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import replace

import jwt
import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from catalog.loader import load_catalog
from infra import db_components, migrations
from infra.cli import main as cli
from infra.fast_forward import skip_history
from infra.topics import AUDIT_READS
from producers import identity
from producers.intake_api import create_app
from projectors.postgres_projection import ProjectionRunner
from projectors.read_audit import ReadAuditProjection
from tests.support.api_role import api_settings
from tests.support.cascade_harness import company_fields, new_uscc
from tests.support.topics import mark, read_since, wait_for
from tests.test_intake_api import WANG, ZHANG, auth, newborn_request, retirement_request

pytestmark = [pytest.mark.broker, pytest.mark.postgres]
RUN = uuid.uuid4().hex[:8]
POLICE = f"P-{RUN}"  # this run's police clerk


@pytest.fixture(scope="module")
def projection(bootstrap, database_url):
    """The read-audit projection on the runtime, in a thread, as its component's role."""
    migrations.migrate(database_url)  # the tables and the component roles' grants
    # from the log's end: offsets stored against an earlier broker's log (a database kept across
    # runs) would point past this log's end, and every earlier run's reads would queue ahead
    skip_history(bootstrap, database_url)
    with psycopg.connect(database_url) as conn:
        has_role = db_components.role("read_audit") in db_components.existing(conn)
    url = db_components.component_url(database_url, "read_audit") if has_role else database_url
    # a consumer group of its own: an earlier test's `onething run` left a static member in
    # projection.read_audit, which keeps its partitions until its session expires; the stored
    # offsets (by name, in PostgreSQL) are the live projection's, so it goes on from where that stopped
    runner = ProjectionRunner(ReadAuditProjection(), bootstrap, url, group_prefix=f"test-{RUN}.projection")
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop.is_set,), daemon=True)
    thread.start()
    yield runner
    stop.set()
    thread.join(30)
    runner.close()


@pytest.fixture(scope="module")
def world(settings, bootstrap, database_url, projection):
    holder: dict = {}
    app = create_app(api_settings(settings, bootstrap, database_url), seed_demo=False,
                     read_worklist=lambda conn, department: holder.get("worklist", []))
    with TestClient(app) as client:
        owner = identity.applicant_token(WANG.resident_id)
        r = client.post("/api/v1/applications", headers=auth(owner), json=newborn_request(client, owner))
        assert r.status_code == 202, r.text
        link = r.json()["status_url"].split("#token=")[1]
        yield client, r.json()["case_id"], owner, link, holder


def _reads(client: TestClient, case_id: str, token: str) -> list[dict]:
    r = client.get(f"/api/v1/cases/{case_id}/reads", headers=auth(token))
    assert r.status_code == 200, r.text
    return r.json()["reads"]


def test_a_department_clerks_read_is_on_the_applicants_page_within_seconds(world, bootstrap):
    client, case_id, owner, link, _ = world
    assert client.get(f"/api/v1/cases/{case_id}", headers=auth(owner)).status_code == 200  # not staff: not recorded
    start = mark(bootstrap, [AUDIT_READS])
    read_at = time.monotonic()
    r = client.get(f"/api/v1/cases/{case_id}", headers=auth(identity.department_token("police", POLICE)))
    assert r.status_code == 200, r.text
    assert wait_for(lambda: any(x["kind"] == "case_view" for x in _reads(client, case_id, owner)), 45, 0.2)
    assert time.monotonic() - read_at < 15

    (line,) = [x for x in _reads(client, case_id, owner) if x["kind"] == "case_view"]
    police = load_catalog().departments["police"].label
    assert line["department"] == "police" and line["department_label"] == {"zh": police.zh, "en": police.en}
    assert line["role"] == "department" and line["role_label"]["zh"] == "部门工作人员"
    assert line["purpose"] == "task" and line["purpose_label"]["zh"].startswith("办理")
    assert line["service_id"] and line["service_id"].startswith("police.") and line["first_at"] and line["times"] >= 1
    page = client.get(f"/api/v1/cases/{case_id}/reads", headers=auth(owner)).text
    assert POLICE not in page and "staff_" not in page, "the citizen sees the role, never the staff member"
    assert all(x["role"] != "applicant" for x in _reads(client, case_id, owner))
    # the receipt's link shows the case's reads too; nobody else sees them
    assert any(x["kind"] == "case_view" for x in _reads(client, case_id, link))
    for other in (identity.department_token("police", POLICE), identity.applicant_token(ZHANG.resident_id)):
        assert client.get(f"/api/v1/cases/{case_id}/reads", headers=auth(other)).status_code == 404

    # the fact on the log: who, when, what, why — and no personal data
    (event,) = read_since(bootstrap, start, lambda e: e.type == "PersonalDataRead" and e.payload["case_id"] == case_id)
    assert event.key == event.payload["subject"] == identity.subject_token(WANG.resident_id)
    actor = event.envelope.actor
    assert (actor.role, actor.channel, actor.staff_id) == ("department", "department", POLICE)
    assert event.payload["department"] == "police" and event.payload["route"] == "GET /api/v1/cases/{case_id}"
    assert event.envelope.correlation_id == r.headers["X-Request-Id"]
    raw = repr(event)
    assert WANG.resident_id not in raw and WANG.name not in raw


def test_a_worklist_records_a_read_per_listed_case_and_shows_none_it_cannot_record(world):
    client, case_id, owner, _link, holder = world
    holder["worklist"] = [{"case_id": case_id, "service_id": "police.birth_registration", "task_id": f"task-{RUN}"},
                          {"case_id": f"case-ghost-{RUN}", "service_id": "police.birth_registration", "task_id": "t"}]
    r = client.get("/api/v1/departments/police/worklist", headers=auth(identity.department_token("police", POLICE)))
    assert r.status_code == 200 and [i["case_id"] for i in r.json()["items"]] == [case_id]  # no subject, no showing
    assert wait_for(lambda: any(x["kind"] == "worklist" for x in _reads(client, case_id, owner)), 45, 0.2)
    (line,) = [x for x in _reads(client, case_id, owner) if x["kind"] == "worklist"]
    assert line["purpose"] == "worklist" and line["service_id"] == "police.birth_registration"


def test_a_clerks_filing_records_the_e_licences_it_fetched(world):
    client, *_ = world
    clerk = identity.clerk_token(f"W-{RUN}", "window")
    body = dict(retirement_request(ZHANG), applicant={"resident_id": ZHANG.resident_id})
    r = client.post("/api/v1/applications", headers=auth(clerk) | {"Idempotency-Key": f"audit-{RUN}"}, json=body)
    assert r.status_code == 202, r.text
    case_id, zhang = r.json()["case_id"], identity.applicant_token(ZHANG.resident_id)
    def filed() -> list[dict]:  # (her own login also sees lookups of filings that named no case)
        return [x for x in _reads(client, case_id, zhang) if x["kind"] == "e_license" and x["case_id"] == case_id]
    assert wait_for(filed, 45, 0.2)
    (line,) = filed()
    assert line["role"] == "clerk" and line["department_label"]["zh"] == "政务服务窗口"
    assert line["purpose"] == "filing" and set(line["fields"]) == {"applicant_id_card", "household_register"}
    assert all(lbl["zh"] for lbl in line["field_labels"])


def test_a_company_entry_records_a_read_of_its_legal_representative(world):
    client, case_id, owner, link, _ = world
    rng = random.Random(RUN)
    uscc = new_uscc(rng)
    fields = company_fields(rng) | {"legal_representative_name": WANG.name,
                                    "legal_representative_resident_id": WANG.resident_id}
    register = identity.issue_token("register:test", "register", "register", staff_id=f"R-{RUN}")
    assert client.post("/api/v1/registers/company", json={"uscc": uscc, "fields": fields},
                       headers=auth(register)).status_code == 202
    market = identity.department_token("market_regulation", f"M-{RUN}")
    shown = client.get(f"/api/v1/registers/company/{uscc}", headers=auth(market))
    assert shown.status_code == 200 and shown.json()["fields"]["legal_representative_name"] == WANG.name
    # outside any case: her own login sees it on every case of hers, the case-bound link does not
    def entry() -> list[dict]:
        return [x for x in _reads(client, case_id, owner) if x["kind"] == "register_entry" and x["purpose_id"] == uscc]
    assert wait_for(entry, 45, 0.2)
    (line,) = entry()
    assert line["case_id"] is None and line["department"] == "market_regulation"
    assert set(line["fields"]) == {"legal_representative_name", "legal_representative_resident_id"}
    assert not any(x["kind"] == "register_entry" for x in _reads(client, case_id, link))


def test_a_read_by_staff_without_a_staff_id_is_refused(world):
    client, case_id, *_ = world
    now = int(time.time())
    claims = {"iss": identity.ISSUER, "sub": "staff_police", "role": "department", "channel": "department",
              "department": "police", "iat": now, "exp": now + 3600}
    nameless = jwt.encode(claims, identity.token_secret(), algorithm=identity.ALGORITHM)
    for path in (f"/api/v1/cases/{case_id}", "/api/v1/departments/police/worklist"):
        assert client.get(path, headers=auth(nameless)).status_code == 401  # refused when verified
    # register tokens need not name a staff member to write, but do to read personal data
    register = identity.issue_token("register:test", "register", "register")
    for path in ("/api/v1/registers/company/91440203MA4UNKNOWN0", "/api/v1/cascade/changes",
                 f"/api/v1/cascade/changes/{uuid.uuid4()}"):
        r = client.get(path, headers=auth(register))
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "auth.staff_id", (path, r.text)
    assert client.get("/api/v1/cascade/backlog", headers=auth(register)).status_code == 200  # no personal data


def test_no_read_without_a_record(world, settings, bootstrap, database_url):
    _client, case_id, owner, *_ = world
    down = create_app(replace(api_settings(settings, bootstrap, database_url), bootstrap_servers="127.0.0.1:1"),
                      seed_demo=False, produce_timeout_s=1)
    with TestClient(down) as client:
        r = client.get(f"/api/v1/cases/{case_id}", headers=auth(identity.department_token("police", POLICE)))
        assert r.status_code == 503 and r.json()["errors"][0]["code"] == "audit.unavailable"
        assert case_id not in r.text and "services" not in r.text
        assert client.get(f"/api/v1/cases/{case_id}", headers=auth(owner)).status_code == 200  # nothing to record


def test_the_supervisor_queries_reads_by_staff_member(world):
    client, case_id, _owner, _link, holder = world
    staff = f"P-{RUN}-2"  # a staff member of this test alone
    police, supervisor = identity.department_token("police", staff), identity.supervisor_token("S-1")
    holder["worklist"] = [{"case_id": case_id, "service_id": "police.birth_registration", "task_id": f"task-{RUN}"}]
    assert client.get(f"/api/v1/cases/{case_id}", headers=auth(police)).status_code == 200
    assert client.get("/api/v1/departments/police/worklist", headers=auth(police)).status_code == 200

    def query() -> dict:
        return client.get("/api/v1/reads", params={"staff_id": staff}, headers=auth(supervisor)).json()
    assert wait_for(lambda: query()["total"] == 2, 45, 0.2)
    body = query()
    assert sorted(i["kind"] for i in body["items"]) == ["case_view", "worklist"]
    assert all(i["staff_id"] == staff and i["case_id"] == case_id and i["department"] == "police"
               for i in body["items"])
    assert client.get("/api/v1/reads", params={"staff_id": staff}, headers=auth(police)).status_code == 403


def test_the_chain_verifies_and_a_changed_row_is_found(world, database_url):
    client, case_id, owner, *_ = world
    subject = identity.subject_token(WANG.resident_id)
    assert client.get(f"/api/v1/cases/{case_id}", headers=auth(identity.department_token("police", POLICE))).status_code == 200
    assert wait_for(lambda: any(x["kind"] == "case_view" for x in _reads(client, case_id, owner)), 45, 0.2)
    ok = CliRunner().invoke(cli, ["audit", "verify", "--subject", subject])
    assert ok.exit_code == 0 and "every chain holds" in ok.output, ok.output
    # the component may add rows, never change or remove one; the owner is stopped by the trigger
    with psycopg.connect(db_components.component_url(database_url, "read_audit"), autocommit=True) as role:
        for statement in ("UPDATE audit_reads SET purpose = 'x' WHERE subject = %s",
                          "DELETE FROM audit_reads WHERE subject = %s"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                role.execute(statement, (subject,))
    with psycopg.connect(database_url, autocommit=True) as owner_db:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            owner_db.execute("UPDATE audit_reads SET purpose = 'x' WHERE subject = %s", (subject,))
        position, purpose = owner_db.execute(
            "SELECT position, purpose FROM audit_reads WHERE subject = %s AND case_id = %s AND kind = 'case_view' "
            "ORDER BY position LIMIT 1", (subject, case_id)).fetchone()

        def set_purpose(value: str) -> None:  # a deliberate tamper: the trigger off, the row changed
            with owner_db.transaction():
                owner_db.execute("ALTER TABLE audit_reads DISABLE TRIGGER audit_reads_append_only")
                owner_db.execute("UPDATE audit_reads SET purpose = %s WHERE subject = %s AND position = %s",
                                 (value, subject, position))
                owner_db.execute("ALTER TABLE audit_reads ENABLE TRIGGER audit_reads_append_only")

        set_purpose("escalation")
        try:
            broken = CliRunner().invoke(cli, ["audit", "verify", "--subject", subject])
            assert broken.exit_code == 1, broken.output
            assert f"row {position} " in broken.output and "changed" in broken.output
            whole = CliRunner().invoke(cli, ["audit", "verify"])
            assert whole.exit_code == 1 and subject in whole.output
        finally:
            set_purpose(purpose)
    again = CliRunner().invoke(cli, ["audit", "verify", "--subject", subject])
    assert again.exit_code == 0, again.output


def test_the_status_page_shows_who_saw_my_data(settings, bootstrap, database_url, projection):
    """The citizen's page in a real headless Chromium (as tests/test_status_page.py): the section lists
    the police read — department, staff role, when, why — in Chinese and in English, no staff id."""
    import httpx
    from playwright import sync_api as playwright_api

    from tests.support.portal_server import PortalServer
    from tests.test_status_page import CHROMIUM, CHROMIUM_ARGS, PHONE

    app = create_app(api_settings(settings, bootstrap, database_url), seed_demo=False)
    owner = identity.applicant_token(WANG.resident_id)
    with PortalServer(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        r = http.post("/api/v1/applications", headers=auth(owner), json=newborn_request(http, owner))
        assert r.status_code == 202, r.text
        case_id, status_url = r.json()["case_id"], r.json()["status_url"]
        assert http.get(f"/api/v1/cases/{case_id}",
                        headers=auth(identity.department_token("police", POLICE))).status_code == 200
        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport=PHONE, is_mobile=True, locale="zh-CN").new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(base + status_url)
                page.wait_for_selector('#reads [data-read-kind="case_view"]', timeout=20000)  # it polls the audit
                assert page.inner_text("#reads-card h2") == "谁查看了我的数据"
                line = page.inner_text('#reads [data-read-kind="case_view"]')
                assert load_catalog().departments["police"].label.zh in line and "部门工作人员" in line
                assert "办理" in line and POLICE not in page.content()
                page.screenshot(path="/tmp/read_audit_page.png", full_page=True)
                page.click("#lang")
                assert page.inner_text("#reads-card h2") == "Who saw my data"
                assert "Department staff" in page.inner_text('#reads [data-read-kind="case_view"]')
                assert not errors, errors
            finally:
                browser.close()
