"""The intake API against the real broker and the real PostgreSQL (nothing mocked).

What it pins down: the form is prefilled from the applicant's own e-licences only; a bad
form answers 422 with every error and produces nothing; 202 comes only once the event is on
the topic; an Idempotency-Key retry (sequential or concurrent) gives one case and one event;
an unreachable broker answers 503 and leaves no record behind; nobody sees another person's
case; channel and acting staff of a window clerk are on the event; per-case sequences.
"""
from __future__ import annotations

import io
import json
import threading
import time
import uuid
from dataclasses import replace
from datetime import date, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition

from tests.support.topics import read_messages, read_since

from events.envelope import Event
from events import kafka_auth, personal
from infra.topics import APPLICATIONS
from producers import e_license, identity, intake_store
from producers.intake_api import create_app

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

WANG = e_license.DEMO_PEOPLE["wang_fang"]     # mother, married to LI
LI = e_license.DEMO_PEOPLE["li_qiang"]
ZHANG = e_license.DEMO_PEOPLE["zhang_wei"]    # retirement age
CHEN = e_license.DEMO_PEOPLE["chen_jing"]     # unmarried, her own household


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def client(settings, bootstrap, database_url):
    app = create_app(replace(settings, bootstrap_servers=bootstrap, database_url=database_url))
    with TestClient(app) as c:
        with psycopg.connect(database_url) as conn:
            e_license.seed_demo_people(conn)
        yield c


# -- reading the topic back ------------------------------------------------------------------
def end_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap), enable_auto_commit=False)
    try:
        tps = [TopicPartition(APPLICATIONS, p) for p in consumer.partitions_for_topic(APPLICATIONS)]
        return consumer.end_offsets(tps)
    finally:
        consumer.close()


def opened(client: TestClient, values: dict[str, str]) -> dict[str, str]:
    """Sealed values opened as the API opens them (its master key, its own connections)."""
    return personal.open_fields(client.app.state.api.platform_keys(), values)


def events_since(bootstrap: str, before: dict[TopicPartition, int]) -> list[Event]:
    """Every event written to `applications` after `before`, up to the end offsets of now."""
    return read_since(bootstrap, before, timeout_s=20)


# -- filling a form ------------------------------------------------------------------------------
def newborn_request(client: TestClient, token: str, **materials) -> dict:
    """The newborn form as the applicant would send it: the prefill plus what only she knows."""
    form = client.get("/api/v1/bundles/newborn/form", headers=auth(token)).json()
    values = {f["id"]: f["value"] for f in form["fields"] if f["value"] is not None}
    values.update({
        "child_name": "李小满", "child_sex": "female",
        "birth_date": (date.today() - timedelta(days=3)).isoformat(),
        "birth_hospital": "韶关市妇幼保健院", "contact_mobile": "13800138000",
        "bank_name": "中国工商银行", "bank_account_no": "6222020200112233445", "registration_parent": "mother",
    })
    invoice = upload(client, token)
    mats = {"medical_invoice": {"source": "uploaded", "ref": invoice}, "discharge_summary": {"source": "promised"}}
    mats.update(materials)
    return {"bundle_code": "newborn", "form": values, "materials": mats}


def upload(client: TestClient, token: str) -> str:
    r = client.post("/api/v1/documents", content=b"%PDF-1.4\n% test document\n",
                    headers=auth(token) | {"Content-Type": "application/pdf"})
    assert r.status_code == 201, r.text
    return r.json()["ref"]


def retirement_request(person: e_license.DemoPerson) -> dict:
    return {"bundle_code": "retirement", "form": {
        "applicant_name": person.name, "applicant_resident_id": person.resident_id, "retirement_type": "normal",
        "employment_status": "flexible", "bank_name": "中国建设银行", "bank_account_no": "6217000010001234567",
        "household_address": person.address, "region_code": person.region_code, "contact_mobile": "13911112222"},
        "materials": {}}


# -- tests -------------------------------------------------------------------------------------
def test_form_is_prefilled_from_the_applicants_own_e_licences(client):
    r = client.get("/api/v1/bundles/newborn/form", headers=auth(identity.applicant_token(WANG.resident_id)))
    assert r.status_code == 200
    body = r.json()
    fields = {f["id"]: f for f in body["fields"]}
    assert fields["mother_name"]["value"] == WANG.name
    assert fields["mother_resident_id"]["value"] == WANG.resident_id
    assert fields["mother_resident_id"]["prefilled_from"]["kind"] == "id_card"
    # the spouse comes from the marriage certificate, the address from the household register
    assert fields["father_resident_id"]["value"] == LI.resident_id
    assert fields["father_resident_id"]["prefilled_from"]["kind"] == "marriage_certificate"
    assert fields["parents_married"]["value"] is True
    assert fields["region_code"]["value"] == "440203"
    assert fields["household_address"]["prefilled_from"]["licence_no"] == "EL-HR-440203-0001"
    assert fields["child_name"]["value"] is None and fields["contact_mobile"]["value"] is None
    mats = {m["id"]: m for m in body["materials"]}
    assert mats["mother_id_card"]["fetched"] and mats["mother_id_card"]["licence_no"] == e_license.id_card_no(WANG)
    assert mats["marriage_certificate"]["fetched"] and mats["household_register"]["fetched"]
    assert mats["father_id_card"]["fetched"] and mats["father_id_card"]["licence_no"] is None  # not shown
    assert not mats["medical_invoice"]["fetched"] and mats["medical_invoice"]["promisable"]
    assert not mats["mother_id_card"]["promisable"]

    # another person sees only her own licences; nobody anonymous sees any
    chen = client.get("/api/v1/bundles/newborn/form", headers=auth(identity.applicant_token(CHEN.resident_id))).json()
    chen_fields = {f["id"]: f["value"] for f in chen["fields"]}
    assert chen_fields["mother_resident_id"] == CHEN.resident_id
    assert chen_fields["father_resident_id"] is None and chen_fields["parents_married"] is None
    assert WANG.resident_id not in json.dumps(chen, ensure_ascii=False)
    anonymous = client.get("/api/v1/bundles/newborn/form").json()
    assert all(f["value"] is None for f in anonymous["fields"])
    assert client.get("/api/v1/bundles/nope/form").status_code == 404
    assert any(b["code"] == "newborn" and b["available"] for b in client.get("/api/v1/bundles").json()["bundles"])


def test_invalid_form_lists_every_error_and_produces_nothing(client, bootstrap):
    token = identity.applicant_token(WANG.resident_id)
    bad_id = WANG.resident_id[:-1] + ("0" if WANG.resident_id[-1] != "0" else "1")
    before = end_offsets(bootstrap)
    r = client.post("/api/v1/applications", headers=auth(token), json={
        "bundle_code": "newborn",
        "form": {"child_name": "李小满", "mother_resident_id": bad_id, "contact_mobile": "12345",
                 "birth_date": "2020-02-31", "father_known": "yes", "surprise": "x"},
        "materials": {"mother_id_card": {"source": "promised"}, "medical_invoice": {"source": "uploaded", "ref": "doc-x"},
                      "discharge_summary": {"source": "carrier pigeon"}}})
    assert r.status_code == 422
    errors = r.json()["errors"]
    paths = {e["path"]: e["code"] for e in errors}
    assert paths["fields.mother_resident_id"] == "resident_id.checksum"
    assert paths["fields.contact_mobile"] == "mobile.format"
    assert paths["fields.birth_date"] == "date.format"
    assert paths["fields.father_known"] == "boolean.type"
    assert paths["fields.surprise"] == "form.unexpected_field"
    assert paths["fields.child_sex"] == "required" and paths["fields.bank_account_no"] == "required"
    assert paths["materials.mother_id_card"] == "material.not_promisable"
    assert paths["materials.medical_invoice.ref"] == "material.unknown_document"
    assert paths["materials.discharge_summary.source"] == "material.source"
    assert len(errors) >= 15 and all(e["message_zh"] and e["message_en"] for e in errors)
    assert bad_id not in r.text and "12345" not in r.text and "李小满" not in r.text
    assert end_offsets(bootstrap) == before, "a rejected form must produce nothing"


def test_accepted_only_after_the_event_is_on_the_topic(client, bootstrap, database_url):
    token = identity.applicant_token(WANG.resident_id)
    request = newborn_request(client, token)
    before = end_offsets(bootstrap)
    r = client.post("/api/v1/applications", headers=auth(token), json=request)
    assert r.status_code == 202, r.text
    body = r.json()
    case_id = body["case_id"]
    assert body["status_url"].startswith(f"/status/{case_id}#token=")
    # read the end offsets right after the answer: the event must already be there
    messages = [(m, e) for m, e in read_messages(bootstrap, before, timeout_s=20) if e is not None and e.key == case_id]
    assert [e.type for _m, e in messages] == ["ApplicationSubmitted"]
    raw, ev = messages[0]
    assert ev.payload["receipt_no"] == body["receipt_no"]
    assert ev.payload["bundle_code"] == "newborn" and "police.birth_registration" in ev.payload["services"]
    # the personal fields and the materials' references travel sealed (events/personal.py) ...
    for clear in (WANG.resident_id, LI.resident_id, WANG.name, "李小满", request["form"]["contact_mobile"],
                  e_license.id_card_no(WANG)):
        assert clear.encode() not in raw.value, "personal data in clear on the topic"
    assert personal.is_sealed(ev.payload["form"]["mother_resident_id"])
    assert ev.payload["form"]["parents_married"] == "true", "what is not personal stays clear"
    # ... and open, for the platform, to what the applicant sent
    assert opened(client, ev.payload["form"])["mother_resident_id"] == WANG.resident_id
    mats = {m["code"]: m | {"ref": opened(client, {f"materials.{m['code']}.ref": m["ref"]}).popitem()[1]}
            if m["ref"] else m for m in ev.payload["materials"]}
    assert mats["mother_id_card"] == {"code": "mother_id_card", "source": "fetched", "ref": e_license.id_card_no(WANG)}
    assert mats["father_id_card"]["source"] == "fetched" and mats["father_id_card"]["ref"] == e_license.id_card_no(LI)
    assert mats["marriage_certificate"]["ref"] == "EL-MC-440203-0001"
    assert mats["medical_invoice"]["source"] == "uploaded" and mats["medical_invoice"]["ref"].startswith("doc-")
    assert mats["discharge_summary"] == {"code": "discharge_summary", "source": "promised", "ref": None}
    env = ev.envelope
    assert env.sequence == 0 and env.region_code == "440203" and env.correlation_id == case_id
    assert env.actor.role == "applicant" and env.actor.channel == "online" and env.actor.staff_id is None
    assert env.actor.id_token == identity.subject_token(WANG.resident_id) != WANG.resident_id
    # the status link opens this case, and only this case
    link_token = body["status_url"].split("#token=")[1]
    view = client.get(f"/api/v1/cases/{case_id}", headers=auth(link_token))
    assert view.status_code == 200 and view.json()["case_id"] == case_id
    with psycopg.connect(database_url) as conn:
        row = intake_store.get_case(conn, case_id)
    assert row.applicant_token == env.actor.id_token and row.next_sequence == 1


def test_idempotency_key_returns_the_same_case_and_produces_once(client, bootstrap):
    token = identity.applicant_token(WANG.resident_id)
    request = newborn_request(client, token)
    key = f"retry-{uuid.uuid4().hex}"
    before = end_offsets(bootstrap)
    first = client.post("/api/v1/applications", headers=auth(token) | {"Idempotency-Key": key}, json=request)
    again = client.post("/api/v1/applications", headers=auth(token) | {"Idempotency-Key": key}, json=request)
    assert first.status_code == again.status_code == 202
    assert again.json()["case_id"] == first.json()["case_id"]
    assert again.json()["receipt_no"] == first.json()["receipt_no"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    # a different request under the same key is refused, not silently mapped to the old case
    changed = dict(request, form=dict(request["form"], child_name="李小雪"))
    assert client.post("/api/v1/applications", headers=auth(token) | {"Idempotency-Key": key},
                       json=changed).status_code == 422

    # concurrent retries: they meet on the key's primary key, one produces, all get its case
    key2 = f"race-{uuid.uuid4().hex}"
    answers: list = []

    def post():
        answers.append(client.post("/api/v1/applications", headers=auth(token) | {"Idempotency-Key": key2},
                                   json=request))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [a.status_code for a in answers] == [202] * 4, [a.text for a in answers]
    assert len({a.json()["case_id"] for a in answers}) == 1

    produced = [e for e in events_since(bootstrap, before) if e.type == "ApplicationSubmitted"
                and e.payload.get("idempotency_key") in (key, key2)]
    assert sorted(e.payload["idempotency_key"] for e in produced) == sorted([key, key2])


def test_unreachable_kafka_answers_503_and_leaves_no_record(settings, client, database_url):
    token = identity.applicant_token(WANG.resident_id)
    request = newborn_request(client, token)
    key = f"down-{uuid.uuid4().hex}"
    down = create_app(replace(settings, bootstrap_servers="127.0.0.1:1", database_url=database_url),
                      produce_timeout_s=2, seed_demo=False)
    with TestClient(down) as c:
        started = time.monotonic()
        r = c.post("/api/v1/applications", headers=auth(token) | {"Idempotency-Key": key}, json=request)
        assert r.status_code == 503, r.text
        assert r.json()["errors"][0]["code"] == "kafka.unavailable" and r.headers["Retry-After"]
        assert time.monotonic() - started < 15
    subject = identity.subject_token(WANG.resident_id)
    with psycopg.connect(database_url) as conn:
        assert intake_store.idempotency_record(conn, subject, key) is None
        assert intake_store.get_case(conn, intake_store.case_id_for(subject, key)) is None
    # and the same key works once the broker is back
    ok = client.post("/api/v1/applications", headers=auth(token) | {"Idempotency-Key": key}, json=request)
    assert ok.status_code == 202 and ok.json()["case_id"] == intake_store.case_id_for(subject, key)


def test_only_the_applicant_and_its_departments_see_a_case(client):
    wang = identity.applicant_token(WANG.resident_id)
    r = client.post("/api/v1/applications", headers=auth(wang), json=newborn_request(client, wang))
    case_id = r.json()["case_id"]
    url = f"/api/v1/cases/{case_id}"
    assert client.get(url, headers=auth(wang)).status_code == 200
    assert client.get(url).status_code == 401
    assert client.get(url, headers=auth("not-a-token")).status_code == 401
    forged = identity.issue_token(identity.subject_token(WANG.resident_id), "applicant", secret="a-guessed-secret-that-is-long-enough-for-hs256")
    assert client.get(url, headers=auth(forged)).status_code == 401
    chen = identity.applicant_token(CHEN.resident_id)
    other = client.get(url, headers=auth(chen))
    assert other.status_code == 404 and case_id in url and WANG.name not in other.text
    assert client.get(url, headers=auth(identity.department_token("police", "P-7"))).status_code == 200
    assert client.get(url, headers=auth(identity.department_token("education", "E-1"))).status_code == 404
    assert client.get("/api/v1/cases/case-doesnotexist", headers=auth(wang)).status_code == 404
    # nor can another applicant act on it
    assert client.post(f"{url}/withdraw", headers=auth(chen), json={}).status_code == 404
    assert client.post(f"{url}/materials", headers=auth(chen),
                       json={"materials": {"discharge_summary": {"source": "uploaded", "ref": upload(client, chen)}}}
                       ).status_code == 404
    # a department's worklist is its own staff's only
    police = client.get("/api/v1/departments/police/worklist", headers=auth(identity.department_token("police", "P-7")))
    assert police.status_code == 200 and isinstance(police.json()["items"], list)
    assert client.get("/api/v1/departments/police/worklist",
                      headers=auth(identity.department_token("tax", "T-1"))).status_code == 404
    assert client.get("/api/v1/departments/police/worklist", headers=auth(wang)).status_code == 404
    # a status link for one case opens no other
    link = identity.issue_token(identity.subject_token(WANG.resident_id), "applicant", case_id="case-other")
    assert client.get(url, headers=auth(link)).status_code == 404


def test_window_clerk_files_for_the_applicant_with_channel_and_staff(client, bootstrap):
    clerk = identity.clerk_token("W-0042", "window")
    request = retirement_request(ZHANG)
    missing_applicant = client.post("/api/v1/applications", headers=auth(clerk), json=request)
    assert missing_applicant.status_code == 422
    assert missing_applicant.json()["errors"][0]["path"] == "applicant.resident_id"
    # the form's applicant must be the person the clerk names
    wrong = dict(request, applicant={"resident_id": CHEN.resident_id})
    r = client.post("/api/v1/applications", headers=auth(clerk), json=wrong)
    assert r.status_code == 422 and {e["code"] for e in r.json()["errors"]} >= {"identity.mismatch"}

    before = end_offsets(bootstrap)
    r = client.post("/api/v1/applications", headers=auth(clerk), json=dict(request, applicant={"resident_id": ZHANG.resident_id}))
    assert r.status_code == 202, r.text
    case_id = r.json()["case_id"]
    (ev,) = [e for e in events_since(bootstrap, before) if e.key == case_id]
    actor = ev.envelope.actor
    assert (actor.role, actor.channel, actor.staff_id) == ("clerk", "window", "W-0042")
    assert actor.id_token == identity.subject_token(ZHANG.resident_id)
    assert {m["code"]: m["source"] for m in ev.payload["materials"]} == {
        "applicant_id_card": "fetched", "household_register": "fetched"}
    assert ev.envelope.region_code == "110105"
    # the applicant sees the case the clerk filed; the clerk's token is not the applicant's
    zhang = identity.applicant_token(ZHANG.resident_id)
    assert client.get(f"/api/v1/cases/{case_id}", headers=auth(zhang)).status_code == 200
    assert client.get(f"/api/v1/cases/{case_id}", headers=auth(clerk)).status_code == 404

    # the clerk corrects a field for the same applicant later: the clerk is on that event too
    before = end_offsets(bootstrap)
    fix = client.post(f"/api/v1/cases/{case_id}/materials", headers=auth(clerk),
                      json={"form": {"contact_mobile": "13911113333"}, "applicant": {"resident_id": ZHANG.resident_id}})
    assert fix.status_code == 202, fix.text
    (ev,) = [e for e in events_since(bootstrap, before) if e.key == case_id]
    assert (ev.type, ev.envelope.sequence) == ("MaterialsSupplemented", 1)
    assert (ev.envelope.actor.role, ev.envelope.actor.channel, ev.envelope.actor.staff_id) == ("clerk", "window", "W-0042")
    assert client.post(f"/api/v1/cases/{case_id}/materials", headers=auth(clerk),
                       json={"form": {"contact_mobile": "13911113333"}, "applicant": {"resident_id": CHEN.resident_id}}
                       ).status_code == 404

    # a home visit (上门帮办) records that channel
    home = identity.clerk_token("H-0007", "home_visit")
    before = end_offsets(bootstrap)
    r = client.post("/api/v1/applications", headers=auth(home), json=dict(retirement_request(ZHANG),
                                                                          applicant={"resident_id": ZHANG.resident_id}))
    assert r.status_code == 202
    (ev,) = [e for e in events_since(bootstrap, before) if e.key == r.json()["case_id"]]
    assert (ev.envelope.actor.channel, ev.envelope.actor.staff_id) == ("home_visit", "H-0007")


def test_supplement_and_withdraw_carry_increasing_sequences(client, bootstrap):
    token = identity.applicant_token(WANG.resident_id)
    r = client.post("/api/v1/applications", headers=auth(token), json=newborn_request(client, token))
    case_id = r.json()["case_id"]
    url = f"/api/v1/cases/{case_id}"
    before = end_offsets(bootstrap)
    bad = client.post(f"{url}/materials", headers=auth(token),
                      json={"materials": {"discharge_summary": {"source": "promised"}}, "form": {"contact_mobile": "1"}})
    assert bad.status_code == 422
    assert {e["path"] for e in bad.json()["errors"]} == {"materials.discharge_summary.source", "fields.contact_mobile"}
    ok = client.post(f"{url}/materials", headers=auth(token), json={
        "materials": {"discharge_summary": {"source": "uploaded", "ref": upload(client, token)}},
        "form": {"contact_mobile": "13900001111"}})
    assert ok.status_code == 202, ok.text
    assert ok.json()["sequence"] == 1
    w = client.post(f"{url}/withdraw", headers=auth(token), json={"reason": "changed my mind"})
    assert w.status_code == 202 and w.json()["sequence"] == 2
    assert client.post(f"{url}/withdraw", headers=auth(token), json={}).status_code == 409
    events = [e for e in events_since(bootstrap, before) if e.key == case_id]
    assert [(e.type, e.envelope.sequence) for e in events] == [("MaterialsSupplemented", 1),
                                                                ("ApplicationWithdrawn", 2)]
    assert events[0].payload["materials"][0]["code"] == "discharge_summary"
    assert opened(client, events[0].payload["form"]) == {"contact_mobile": "13900001111"}


def test_metrics_and_logs_carry_no_personal_data(client, settings, database_url):
    from infra import log as infra_log

    stream = io.StringIO()
    infra_log.configure(service="intake-api-test", level="INFO", stream=stream)
    try:
        token = identity.applicant_token(WANG.resident_id)
        client.post("/api/v1/applications", headers=auth(token),
                    json={"bundle_code": "newborn", "form": {"mother_resident_id": WANG.resident_id[:-1] + "0"}})
        assert client.post("/api/v1/applications", headers=auth(token),
                           json=newborn_request(client, token)).status_code == 202
    finally:
        import structlog
        structlog.reset_defaults()
    logged = stream.getvalue()
    assert "intake.accepted" in logged and "intake.rejected" in logged
    for secret in (WANG.resident_id, WANG.resident_id[:-1] + "0", WANG.name, "13800138000", "李小满"):
        assert secret not in logged
    text = client.get("/metrics").text
    assert 'onething_api_requests_total{method="POST",route="/api/v1/applications",status="2xx"}' in text
    assert 'route="/api/v1/cases/{case_id}"' in text
    assert "case-" not in text and WANG.resident_id not in text
    assert client.get("/openapi.json").json()["paths"]["/api/v1/applications"]["post"]


def _requests_total(client: TestClient, method: str, route: str, status: str) -> float:
    line = f'onething_api_requests_total{{method="{method}",route="{route}",status="{status}"}} '
    for row in client.get("/metrics").text.splitlines():
        if row.startswith(line):
            return float(row[len(line):])
    return 0.0


def test_every_response_carries_a_request_id_and_is_counted_by_route(client):
    """The request middleware (plain ASGI): the caller's X-Request-Id when it is printable and at
    most 64 characters, else a fresh one; counted under the route template, status class."""
    kept = client.get("/api/v1/bundles", headers={"X-Request-Id": "req-kept-1"})
    assert kept.status_code == 200 and kept.headers["x-request-id"] == "req-kept-1"
    for bad in ("r" * 65, "", "tab\there"):
        rid = client.get("/api/v1/bundles", headers={"X-Request-Id": bad}).headers["x-request-id"]
        assert rid != bad and len(rid) == 32 and int(rid, 16) >= 0
    fresh = {client.get("/api/v1/bundles").headers["x-request-id"] for _ in range(2)}
    assert len(fresh) == 2

    before = {k: _requests_total(client, *k) for k in
              [("GET", "/api/v1/cases/{case_id}", "4xx"), ("GET", "unmatched", "4xx"), ("DELETE", "unmatched", "4xx")]}
    for case_id in ("case-nope-1", "case-nope-2"):
        r = client.get(f"/api/v1/cases/{case_id}", headers=auth(identity.applicant_token(WANG.resident_id)))
        assert r.status_code == 404 and r.headers["x-request-id"]
    lost = client.get("/nope")
    assert lost.status_code == 404 and lost.json()["errors"][0]["code"] == "not_found" and lost.headers["x-request-id"]
    assert client.delete("/api/v1/applications").status_code == 405
    assert _requests_total(client, "GET", "/api/v1/cases/{case_id}", "4xx") == before[("GET", "/api/v1/cases/{case_id}", "4xx")] + 2
    assert _requests_total(client, "GET", "unmatched", "4xx") == before[("GET", "unmatched", "4xx")] + 1
    assert _requests_total(client, "DELETE", "unmatched", "4xx") == before[("DELETE", "unmatched", "4xx")] + 1


def test_an_unhandled_error_answers_500_and_is_counted(settings, bootstrap, database_url):
    def broken(_conn, _case_id):
        raise RuntimeError("read model broke")

    app = create_app(replace(settings, bootstrap_servers=bootstrap, database_url=database_url), read_case=broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        before = _requests_total(c, "GET", "/api/v1/cases/{case_id}", "5xx")
        r = c.get("/api/v1/cases/case-x", headers=auth(identity.applicant_token(WANG.resident_id)))
        assert r.status_code == 500 and r.text == "Internal Server Error"
        assert _requests_total(c, "GET", "/api/v1/cases/{case_id}", "5xx") == before + 1


def test_a_remembered_token_is_still_refused_once_it_expired():
    issued = int(time.time()) - 58  # expires within 2 s
    token = identity.issue_token(identity.subject_token(WANG.resident_id), "applicant", "online", ttl_s=60, now=issued)
    first = identity.verify_token(token)
    assert identity.verify_token(token) == first  # from memory
    with pytest.raises(identity.InvalidToken, match="token invalid"):
        identity.verify_token(token, secret="another secret, long enough for HS256 keys")
    time.sleep(max(0.0, issued + 60 - time.time()) + 0.05)
    for _ in range(2):
        with pytest.raises(identity.InvalidToken, match="token expired"):
            identity.verify_token(token)
    early = identity.issue_token(first.subject, "applicant", "online", now=time.time() + 3600)  # iat in the future
    for _ in range(2):
        with pytest.raises(identity.InvalidToken, match="token invalid"):
            identity.verify_token(early)


# -- 随意组合: services picked freely, across bundles -------------------------------------------
COMBINATION = ["medical_insurance.enrolment", "police.household_record_check"]  # 新生儿出生's, 退休's


def combination_request(client: TestClient, token: str, services: list[str], person: e_license.DemoPerson) -> dict:
    """The served form of a free combination, filled as a client would (infra/demo_forms.py)."""
    from infra.demo_forms import Applicant, fill_form, materials_plan

    form = client.get("/api/v1/forms", params={"services": ",".join(services)}, headers=auth(token)).json()
    values = fill_form(form, Applicant(person.name, person.resident_id, person.address, person.region_code,
                                       person.birth_date))
    materials = {mid: {"source": "uploaded", "ref": upload(client, token)}
                 for mid, how in materials_plan(form, values).items() if how == "upload"}
    return {"services": services, "form": values, "materials": materials}


def test_the_merged_form_of_any_services_adds_what_they_need_and_says_why(client):
    token = identity.applicant_token(WANG.resident_id)
    r = client.get("/api/v1/forms", params={"services": ",".join(COMBINATION)}, headers=auth(token))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["picked"] == COMBINATION and body["bundle"]["code"] == "combination"
    added = {a["service_id"]: a for a in body["added"]}
    assert added["police.birth_registration"]["needed_by"] == "medical_insurance.enrolment"
    assert "child_resident_id" == added["police.birth_registration"]["output"]
    assert "police.birth_registration" in added and "health.birth_certificate" in added
    assert "需要它办出的" in added["police.birth_registration"]["reason"]["zh"]
    assert {s["service_id"] for s in body["services"]} == set(COMBINATION) | set(added)
    fields = {f["id"]: f for f in body["fields"]}
    assert "child_resident_id" not in fields  # an output of an added service is never asked for
    assert fields["applicant_resident_id"]["value"] == WANG.resident_id  # prefilled from her own e-licences
    assert body["submit"]["schema"]["properties"]["services"]["items"]["enum"] == COMBINATION
    assert r.headers["cache-control"] == "no-store"

    r = client.get("/api/v1/forms", params={"services": "medical_insurance.enrolment,police.no_such,"
                                                        "medical_insurance.enrolment"})
    assert r.status_code == 422
    errors = r.json()["errors"]
    assert [(e["path"], e["code"]) for e in errors] == [("services[1]", "service.unknown"),
                                                        ("services[2]", "service.duplicate")]
    assert "police.no_such" in errors[0]["message_en"] and "police.no_such" in errors[0]["message_zh"]
    assert client.get("/api/v1/forms", params={"services": ""}).json()["errors"][0]["code"] == "services.empty"


def test_a_combination_across_two_bundles_is_applied_for_like_a_bundle(client, bootstrap):
    token = identity.applicant_token(WANG.resident_id)
    before = end_offsets(bootstrap)
    for wrong, code in (({"bundle_code": "newborn", "services": COMBINATION}, "application.bundle_or_services"),
                        ({"form": {}}, "application.bundle_or_services"),
                        ({"services": ["medical_insurance.enrolment", "tax.nothing"]}, "service.unknown")):
        r = client.post("/api/v1/applications", json={"form": {}, "materials": {}, **wrong}, headers=auth(token))
        assert r.status_code == 422 and r.json()["errors"][0]["code"] == code, r.text
    bad = combination_request(client, token, COMBINATION, WANG)
    bad["form"] = {**bad["form"], "contact_mobile": "12345"}
    r = client.post("/api/v1/applications", json=bad, headers=auth(token))
    assert r.status_code == 422 and [e["path"] for e in r.json()["errors"]] == ["fields.contact_mobile"]
    assert [e for e in events_since(bootstrap, before)] == []  # nothing refused became an event

    r = client.post("/api/v1/applications", json=combination_request(client, token, COMBINATION, WANG),
                    headers=auth(token))
    assert r.status_code == 202, r.text
    case_id = r.json()["case_id"]
    (event,) = [e for e in events_since(bootstrap, before) if e.key == case_id]
    assert event.payload["bundle_code"] == "combination"
    assert set(COMBINATION) | {"police.birth_registration", "health.birth_certificate"} <= set(event.payload["services"])
    view = client.get(f"/api/v1/cases/{case_id}", headers=auth(token)).json()
    assert view["bundle_label"]["zh"].startswith("自选事项：") and "Your services" in view["bundle_label"]["en"]
