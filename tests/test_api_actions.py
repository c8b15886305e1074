"""Actions taken once, and Idempotency-Key on every write, against the real broker and PostgreSQL.

Three simultaneous supervisor replies (or resolutions, or a department's rectification replies)
used to be three events: the "already replied" check read the read model, which had not caught
up. Now the action is claimed in the intake's own table under the case's row lock: one 202, two
409, one event. The read-model rows the actions need (an escalation in the supervisor queue, an
open rectification) are written here as the projections would.
"""
from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from fastapi.testclient import TestClient

from producers import identity
from producers.intake_api import create_app
from tests.support.api_role import api_settings
from tests.test_intake_api import WANG, auth, end_offsets, events_since, newborn_request, upload

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


@pytest.fixture(scope="module")
def client(settings, bootstrap, database_url):
    app = create_app(api_settings(settings, bootstrap, database_url), seed_demo=False)
    with TestClient(app) as c:
        yield c


def new_case(client: TestClient) -> str:
    token = identity.applicant_token(WANG.resident_id)
    r = client.post("/api/v1/applications", headers=auth(token), json=newborn_request(client, token))
    assert r.status_code == 202, r.text
    return r.json()["case_id"]


def open_escalation(database_url: str, case_id: str) -> str:
    escalation_id = f"esc-test-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO escalation_queue (escalation_id, case_id, origin, reason, opened_at, reply_due, "
                     "resolve_due) VALUES (%s, %s, 'applicant', 'stuck', now(), current_date + 3, current_date + 5)",
                     (escalation_id, case_id))
    return escalation_id


def open_rectification(database_url: str, case_id: str, department: str) -> str:
    rectification_id = f"rect-test-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO rectifications (rectification_id, case_id, department, grade, due_date, opened_at) "
                     "VALUES (%s, %s, %s, 'dissatisfied', current_date + 15, now())",
                     (rectification_id, case_id, department))
    return rectification_id


def at_once(n: int, call) -> list:
    answers: list = []
    barrier = threading.Barrier(n)

    def run():
        barrier.wait()
        answers.append(call())

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


@pytest.mark.parametrize("action,body,event_type", [
    ("reply", {"reply": "已转交税务部门核实"}, "EscalationReplied"),
    ("resolve", {"resolution": "已办结"}, "EscalationResolved"),
])
def test_three_concurrent_supervisor_actions_are_taken_once(client, bootstrap, database_url, action, body,
                                                            event_type):
    case_id = new_case(client)
    escalation_id = open_escalation(database_url, case_id)
    sup = identity.supervisor_token("S-9")
    before = end_offsets(bootstrap)
    answers = at_once(3, lambda: client.post(f"/api/v1/escalations/{escalation_id}/{action}", json=body,
                                             headers=auth(sup)))
    assert sorted(a.status_code for a in answers) == [202, 409, 409], [a.text for a in answers]
    produced = [e for e in events_since(bootstrap, before)
                if e.type == event_type and e.payload.get("escalation_id") == escalation_id]
    assert len(produced) == 1


def test_three_concurrent_escalations_of_one_case_open_one(client, bootstrap, database_url):
    case_id = new_case(client)
    token = auth(identity.applicant_token(WANG.resident_id))
    before = end_offsets(bootstrap)
    answers = at_once(3, lambda: client.post(f"/api/v1/cases/{case_id}/escalations", json={"reason": "stuck"},
                                             headers=token))
    assert sorted(a.status_code for a in answers) == [202, 409, 409], [a.text for a in answers]
    assert [e.type for e in events_since(bootstrap, before) if e.key == case_id] == ["CaseEscalated"]
    # once the supervisor resolved it, the applicant may escalate again
    (opened,) = [a.json()["escalation_id"] for a in answers if a.status_code == 202]
    with psycopg.connect(database_url, autocommit=True) as conn:  # as the queue's projection would
        conn.execute("INSERT INTO escalation_queue (escalation_id, case_id, origin, reason, opened_at, reply_due, "
                     "resolve_due) VALUES (%s, %s, 'applicant', 'stuck', now(), current_date + 3, current_date + 5)",
                     (opened, case_id))
    assert client.post(f"/api/v1/escalations/{opened}/resolve", json={"resolution": "已办"},
                       headers=auth(identity.supervisor_token("S-9"))).status_code == 202
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE escalation_queue SET resolved_at = now() WHERE escalation_id = %s", (opened,))
    again = client.post(f"/api/v1/cases/{case_id}/escalations", json={"reason": "stuck"}, headers=token)
    assert again.status_code == 202, again.text


def test_three_concurrent_rectification_replies_are_taken_once(client, bootstrap, database_url):
    case_id = new_case(client)
    rectification_id = open_rectification(database_url, case_id, "health")
    staff = identity.department_token("health", "H-3")
    answers = at_once(3, lambda: client.post(f"/api/v1/rectifications/{rectification_id}/reply",
                                             json={"reply": "已整改"}, headers=auth(staff)))
    assert sorted(a.status_code for a in answers) == [202, 409, 409], [a.text for a in answers]
    assert {a.json()["errors"][0]["code"] for a in answers if a.status_code == 409} == {"rectification.replied"}
    # another department's staff cannot see it at all
    other = identity.department_token("tax", "T-3")
    assert client.post(f"/api/v1/rectifications/{rectification_id}/reply", json={"reply": "x"},
                       headers=auth(other)).status_code == 404


def test_an_extension_must_exceed_every_earlier_one(client, database_url):
    escalation_id = open_escalation(database_url, new_case(client))
    sup = auth(identity.supervisor_token("S-9"))
    url = f"/api/v1/escalations/{escalation_id}/extend"
    answers = at_once(2, lambda: client.post(url, json={"resolve_within_working_days": 8, "reason": "需跨部门核实"},
                                             headers=sup))
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    assert client.post(url, json={"resolve_within_working_days": 10, "reason": "再延"}, headers=sup).status_code == 202
    assert client.post(url, json={"resolve_within_working_days": 4, "reason": "x"}, headers=sup).status_code == 422
    # once resolved, nothing more is done to it
    assert client.post(f"/api/v1/escalations/{escalation_id}/resolve", json={"resolution": "好"},
                       headers=sup).status_code == 202
    r = client.post(f"/api/v1/escalations/{escalation_id}/reply", json={"reply": "迟到的答复"}, headers=sup)
    assert r.status_code == 409 and r.json()["errors"][0]["code"] == "escalation.resolved"


def test_a_write_repeated_with_its_idempotency_key_gets_the_first_answer(client, bootstrap, database_url):
    token = identity.applicant_token(WANG.resident_id)
    case_id = new_case(client)
    key = f"k-{uuid.uuid4().hex}"
    body = {"form": {"contact_mobile": "13900002222"}}
    before = end_offsets(bootstrap)
    first = client.post(f"/api/v1/cases/{case_id}/materials", json=body, headers=auth(token) | {"Idempotency-Key": key})
    again = client.post(f"/api/v1/cases/{case_id}/materials", json=body, headers=auth(token) | {"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    other = client.post(f"/api/v1/cases/{case_id}/materials", json={"form": {"contact_mobile": "13900003333"}},
                        headers=auth(token) | {"Idempotency-Key": key})
    assert other.status_code == 422 and other.json()["errors"][0]["code"] == "idempotency.key_reused"
    # the same key on another route is another request, refused too
    assert client.post(f"/api/v1/cases/{case_id}/withdraw", json={},
                       headers=auth(token) | {"Idempotency-Key": key}).status_code == 422
    supplements = [e for e in events_since(bootstrap, before) if e.key == case_id]
    assert [e.type for e in supplements] == ["MaterialsSupplemented"]

    # concurrent retries of a supervisor's reply under one key: all get the one answer
    escalation_id = open_escalation(database_url, case_id)
    sup = auth(identity.supervisor_token("S-9")) | {"Idempotency-Key": f"r-{uuid.uuid4().hex}"}
    answers = at_once(3, lambda: client.post(f"/api/v1/escalations/{escalation_id}/reply", json={"reply": "收到"},
                                             headers=sup))
    assert [a.status_code for a in answers] == [202] * 3, [a.text for a in answers]
    assert len({a.json()["event_id"] for a in answers}) == 1

    # an upload repeated under its key is one document
    doc_key = {"Idempotency-Key": f"d-{uuid.uuid4().hex}"}
    pdf = b"%PDF-1.4\n% once\n"
    one = client.post("/api/v1/documents", content=pdf, headers=auth(token) | doc_key | {"Content-Type": "application/pdf"})
    two = client.post("/api/v1/documents", content=pdf, headers=auth(token) | doc_key | {"Content-Type": "application/pdf"})
    assert one.status_code == two.status_code == 201 and one.json()["ref"] == two.json()["ref"]
    assert upload(client, token) != one.json()["ref"]  # without a key, each upload is its own
    bad = client.post("/api/v1/documents", content=pdf, headers=auth(token) | {"Idempotency-Key": "k" * 201}
                      | {"Content-Type": "application/pdf"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["code"] == "idempotency.key_format"


def test_a_keyed_write_whose_commit_was_lost_after_kafka_took_it_produces_the_same_event_again(
        client, bootstrap, database_url, monkeypatch):
    """Kafka acknowledges the event before the transaction commits; PostgreSQL failing in between
    leaves the event on the log and no key in the table. The client's retry must be the same
    event (consumers drop it as seen), not a second escalation — found by `onething faults`, where
    a PostgreSQL restart left one case with two escalations for one request."""
    from producers import oversight_api

    case_id = new_case(client)
    headers = auth(identity.applicant_token(WANG.resident_id)) | {"Idempotency-Key": f"e-{uuid.uuid4().hex}"}
    real, calls = oversight_api.accepted, []

    def commit_lost(*args, **kw):   # after the event was produced, before the transaction commits
        calls.append(1)
        if len(calls) == 1:
            # … and the queue took the event before the client's retry (as in the faults run, where
            # the retry was then refused 409 escalation.open until the client gave up)
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("INSERT INTO escalation_queue (escalation_id, case_id, origin, reason, opened_at, "
                             "reply_due, resolve_due) VALUES (%s, %s, 'applicant', 'stuck', now(), "
                             "current_date + 3, current_date + 5)", (kw["escalation_id"], case_id))
            raise ConnectionError("the database went away")
        return real(*args, **kw)

    monkeypatch.setattr(oversight_api, "accepted", commit_lost)
    before = end_offsets(bootstrap)
    with pytest.raises(ConnectionError):
        client.post(f"/api/v1/cases/{case_id}/escalations", json={"reason": "stuck"}, headers=headers)
    retry = client.post(f"/api/v1/cases/{case_id}/escalations", json={"reason": "stuck"}, headers=headers)
    assert retry.status_code == 202, retry.text
    escalated = [e for e in events_since(bootstrap, before) if e.key == case_id and e.type == "CaseEscalated"]
    assert len(escalated) == 2   # on the log twice, as the failure left it …
    assert len({e.id for e in escalated}) == 1   # … as one event, which every consumer takes once
    assert {e.payload["escalation_id"] for e in escalated} == {retry.json()["escalation_id"]}
    # the queue's row let this request's retry through, not another request for the same case
    other = client.post(f"/api/v1/cases/{case_id}/escalations", json={"reason": "stuck"},
                        headers=headers | {"Idempotency-Key": f"e-{uuid.uuid4().hex}"})
    assert other.status_code == 409 and other.json()["errors"][0]["code"] == "escalation.open", other.text
    # without a key each request is its own (nothing to tell a retry from a second escalation)
    assert oversight_api.Idempotent(None, "s", None, "r", {}).event_id() is None
