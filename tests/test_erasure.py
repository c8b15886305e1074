"""Erasure and retention (producers/erasure.py): the rule as properties, then a supervisor's
erasure through the API against the real broker and PostgreSQL."""
from __future__ import annotations

import subprocess
import sys
from datetime import date, timedelta

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from catalog.loader import load_catalog
from events import personal
from infra.topics import APPLICATIONS, PRIVACY
from producers import identity
from producers.erasure import DEFAULT_RETENTION_YEARS, SubjectCase, kept_until, refusals
from producers.intake_api import create_app
from tests.support.api_role import api_settings
from tests.support.topics import mark, read_messages
from tests.support.family import fresh_family
from tests.test_intake_api import auth, newborn_request

CATALOG = load_catalog()
days = st.dates(min_value=date(2000, 1, 1), max_value=date(2090, 12, 31))


@given(days, st.integers(0, 40 * 366))
def test_a_closed_case_is_erasable_exactly_from_the_end_of_its_retention(closed, later):
    case = SubjectCase("case-1", "newborn", closed)
    until = kept_until(CATALOG, case)
    assert until.year == closed.year + DEFAULT_RETENTION_YEARS and until > closed
    today = closed + timedelta(days=later)
    assert (refusals(CATALOG, [case], today, override=False) == []) == (today >= until)
    assert refusals(CATALOG, [case], today, override=True) == [], "an operator may override the period"


def test_an_open_case_is_never_erasable_not_even_with_an_override():
    open_case = SubjectCase("case-open", "newborn", None)
    assert refusals(CATALOG, [open_case], date(2099, 1, 1), override=True) == ["case case-open is not closed"]


# -- through the API --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def family(database_url):
    """A mother of the module's own: a subject no other test's cases belong to (an erasure judges
    every case of its subject)."""
    with fresh_family(database_url) as people:
        yield people


@pytest.fixture(scope="module")
def client(settings, bootstrap, database_url):
    with TestClient(create_app(api_settings(settings, bootstrap, database_url), seed_demo=False)) as c:
        yield c


def test_a_supervisor_erases_a_closed_case_and_its_sealed_values_read_erased(client, bootstrap, family):
    mother, _father = family
    applicant = identity.applicant_token(mother.resident_id)
    subject = identity.subject_token(mother.resident_id)   # the pseudonym, never the resident ID
    before = mark(bootstrap, [APPLICATIONS, PRIVACY])
    r = client.post("/api/v1/applications", headers=auth(applicant), json=newborn_request(client, applicant))
    assert r.status_code == 202, r.text
    case_id = r.json()["case_id"]
    supervisor = auth(identity.supervisor_token("S-9"))
    erase = f"/api/v1/subjects/{subject}/erase"

    refused = client.post(erase, headers=supervisor, json={"reason": "申请人要求删除"})
    assert refused.status_code == 409 and f"case {case_id} is not closed" in refused.json()["errors"][0]["detail"]
    assert client.post(f"/api/v1/cases/{case_id}/withdraw", headers=auth(applicant), json={}).status_code == 202
    early = client.post(erase, headers=supervisor, json={"reason": "申请人要求删除"})
    assert early.status_code == 409 and "kept until" in early.json()["errors"][0]["detail"], "inside the retention"
    assert client.post(erase, headers=auth(identity.department_token("police", "P-1")),
                       json={"reason": "x", "override_retention": True}).status_code == 403

    done = client.post(erase, headers=supervisor, json={"reason": "申请人要求删除", "override_retention": True})
    assert done.status_code == 202, done.text
    assert case_id in done.json()["cases"] and done.json()["keys_destroyed"] >= 1

    messages = read_messages(bootstrap, before, timeout_s=20)
    submitted = next(ev for _m, ev in messages if ev is not None and ev.key == case_id
                     and ev.type == "ApplicationSubmitted")
    opened = personal.open_fields(client.app.state.api.platform_keys(), submitted.payload["form"])
    assert opened["mother_resident_id"] == personal.ERASED and opened["child_name"] == personal.ERASED
    assert opened["parents_married"] == "true", "what is not personal is kept"
    (erased,) = [(m, ev) for m, ev in messages if ev is not None and ev.type == "SubjectErased" and ev.key == subject]
    raw, ev = erased
    assert ev.payload["reason"] == "申请人要求删除" and ev.payload["retention_overridden"] is True
    assert ev.envelope.actor.role == "supervisor" and ev.envelope.actor.staff_id == "S-9"
    assert mother.resident_id.encode() not in raw.value and mother.name.encode() not in raw.value

    again = client.post(erase, headers=supervisor, json={"reason": "again", "override_retention": True})
    assert again.status_code in (202, 409)  # nothing more to destroy: the keys are gone either way


def test_dead_letters_hold_ciphertext_and_an_operators_read_of_one_is_recorded(client, bootstrap, family):
    """A dead letter keeps its original sealed to the operator (events/deadletter.py): the bytes on
    the topic show nothing; `onething deadletters show` opens it and records the read."""
    from events import bus, deadletter
    from infra.topics import AUDIT_READS, DEADLETTER

    applicant = identity.applicant_token(family[0].resident_id)
    before = mark(bootstrap, [APPLICATIONS])
    r = client.post("/api/v1/applications", headers=auth(applicant), json=newborn_request(client, applicant))
    assert r.status_code == 202, r.text
    case_id = r.json()["case_id"]
    msg, _ev = next((m, ev) for m, ev in read_messages(bootstrap, before, timeout_s=20)
                    if ev is not None and ev.key == case_id)
    garbage = b"\x00not an event " + "王芳 13800138000".encode()   # what a hostile producer might send
    letters = [deadletter.dead_letter_event("test.operator", msg.topic, msg.partition, msg.offset, msg.key,
                                            msg.value, "ValueError: a test's dead letter"),
               deadletter.dead_letter_event("test.operator", msg.topic, msg.partition, msg.offset + 10**9, None,
                                            garbage, "DecodeError: a test's garbage")]
    audit_from = mark(bootstrap, [AUDIT_READS])
    producer = bus.make_producer(bootstrap)
    try:
        sent = [bus.publish(producer, DEADLETTER, letter) for letter in letters]
    finally:
        producer.close()
    raw = [m.value for m, _e in read_messages(bootstrap, {_tp(x): x.offset for x in sent}, timeout_s=20)]
    assert raw and not any("王芳".encode() in v or b"13800138000" in v for v in raw), "sealed to the operator"
    assert deadletter.opened(letters[1].payload)[1] == garbage

    # the operator's command as an operator runs it (its own process, the admin principal)
    result = subprocess.run([sys.executable, "-m", "infra.cli", "deadletters", "show", "--by", "OPS-1", "--reason",
                             "incident 42", "--limit", "50", "--fields"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dead letters shown" in result.stdout
    reads = [e for _m, e in read_messages(bootstrap, audit_from, timeout_s=20)
             if e is not None and e.type == "PersonalDataRead" and e.payload["kind"] == "dead_letter"
             and e.payload["case_id"] == case_id]
    assert reads and reads[0].envelope.actor.staff_id == "OPS-1" and "mother_resident_id" in reads[0].payload["fields"]
    assert reads[0].payload["purpose_id"] == "incident 42", "the operator's reason is recorded"


def _tp(sent):
    from kafka import TopicPartition

    return TopicPartition(sent.topic, sent.partition)


def test_a_bundles_own_retention_wins_over_the_default():
    from dataclasses import replace
    from types import SimpleNamespace

    from catalog.model import Figure
    from producers.erasure import retention_years

    kept = replace(CATALOG.bundles["newborn"], retention=Figure(30, source="a test's archives rule"))
    catalog = SimpleNamespace(bundles={"newborn": kept})
    assert retention_years(catalog, "newborn") == 30 and retention_years(CATALOG, "newborn") == DEFAULT_RETENTION_YEARS
    case = SubjectCase("case-1", "newborn", date(2026, 1, 5))
    assert refusals(catalog, [case], date(2046, 1, 5), override=False), "kept 30 years, not 10"
