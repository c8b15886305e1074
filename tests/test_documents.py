"""Uploaded documents against the real broker and PostgreSQL: sealed at rest, downloaded only by
whom the material is for, every staff download recorded, unreadable once the subject is erased.

A mother uploads the childbirth invoice of a newborn application: the table holds ciphertext
under her data key; she downloads the same bytes; the medical-insurance clerk (whose
reimbursement service needs the invoice) downloads it and the read is on `audit.reads`; the
police clerk on the same case, another applicant and the receipt's link get 404; a department
token carries its staff id (producers/identity.py refuses to issue one without); after her key is destroyed the document answers 410.
"""
from __future__ import annotations

import hashlib
import uuid

import psycopg
import pytest
from fastapi.testclient import TestClient

from infra import keystore
from infra.topics import AUDIT_READS
from producers import identity
from producers.intake_api import create_app
from tests.support.api_role import api_settings
from tests.support.topics import mark, read_since
from tests.test_intake_api import CHEN, WANG, auth, newborn_request

pytestmark = [pytest.mark.broker, pytest.mark.postgres]
BODY = b"%PDF-1.4\n% invoice " + uuid.uuid4().hex.encode() + b" 6222020200112233445\n"


@pytest.fixture(scope="module")
def world(settings, bootstrap, database_url):
    app = create_app(api_settings(settings, bootstrap, database_url), seed_demo=False)
    with TestClient(app) as client:
        owner = identity.applicant_token(WANG.resident_id)
        r = client.post("/api/v1/documents", content=BODY, headers=auth(owner) | {"Content-Type": "application/pdf"})
        assert r.status_code == 201, r.text
        ref = r.json()["ref"]
        request = newborn_request(client, owner, medical_invoice={"source": "uploaded", "ref": ref})
        r = client.post("/api/v1/applications", headers=auth(owner), json=request)
        assert r.status_code == 202, r.text
        yield client, ref, owner, r.json()["case_id"], r.json()["status_url"].split("#token=")[1]


def test_the_body_is_sealed_at_rest_and_its_owner_downloads_the_same_bytes(world, database_url):
    client, ref, owner, _case, _link = world
    with psycopg.connect(database_url) as conn:
        stored, key_id = conn.execute("SELECT body, key_id FROM intake_documents WHERE ref = %s", (ref,)).fetchone()
    assert key_id and bytes(stored) != BODY
    assert b"PDF" not in bytes(stored) and b"6222020200112233445" not in bytes(stored)
    r = client.get(f"/api/v1/documents/{ref}", headers=auth(owner))
    assert r.status_code == 200 and r.content == BODY
    assert r.headers["content-type"] == "application/pdf" and r.headers["cache-control"] == "no-store"
    assert r.headers["digest"] == f"sha-256={hashlib.sha256(BODY).hexdigest()}"


def test_the_department_that_needs_the_material_downloads_it_and_the_read_is_recorded(world, bootstrap):
    client, ref, _owner, case_id, _link = world
    start = mark(bootstrap, [AUDIT_READS])
    r = client.get(f"/api/v1/documents/{ref}", headers=auth(identity.department_token("medical_insurance", "MI-9")))
    assert r.status_code == 200 and r.content == BODY
    (event,) = read_since(bootstrap, start, lambda e: e.type == "PersonalDataRead" and e.payload["document_id"] == ref)
    assert event.payload["kind"] == "document" and event.payload["case_id"] == case_id
    assert event.payload["department"] == "medical_insurance" and event.payload["fields"] == ["medical_invoice"]
    assert event.payload["service_id"] == "medical_insurance.childbirth_reimbursement"
    assert event.envelope.actor.staff_id == "MI-9" and event.key == identity.subject_token(WANG.resident_id)


def test_nobody_else_learns_that_the_document_exists(world):
    client, ref, _owner, _case, link = world
    for token in (identity.department_token("police", "P-1"),       # on the case, no service needing it
                  identity.department_token("education", "E-1"),   # not on the case
                  identity.applicant_token(CHEN.resident_id), identity.supervisor_token("S-1"), link):
        r = client.get(f"/api/v1/documents/{ref}", headers=auth(token))
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "document.not_found", r.text
        assert client.get("/api/v1/documents/doc-nothing", headers=auth(token)).json() == r.json()
    assert client.get(f"/api/v1/documents/{ref}").status_code == 401


def test_once_the_subjects_key_is_destroyed_the_document_is_gone_even_where_its_row_remains(settings, bootstrap,
                                                                                           database_url):
    app = create_app(api_settings(settings, bootstrap, database_url), seed_demo=False)
    person = f"p_doc_{uuid.uuid4().hex[:12]}"
    token = identity.issue_token(person, "applicant", "online")
    with TestClient(app) as client:
        r = client.post("/api/v1/documents", content=BODY, headers=auth(token) | {"Content-Type": "image/png"})
        assert r.status_code == 201, r.text
        ref = r.json()["ref"]   # not downloaded first: the API keeps an opened key for ONETHING_KEY_CACHE_S
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert keystore.erase(conn, person, by="test", reason="test: the row outlives its key (a backup)")
        r = client.get(f"/api/v1/documents/{ref}", headers=auth(token))
        assert r.status_code == 410 and r.json()["errors"][0]["code"] == "document.erased"


def test_a_document_stored_in_clear_before_sealing_is_sealed_by_the_operator_and_still_downloads(
        settings, bootstrap, database_url):
    from click.testing import CliRunner

    from infra.cli import main as cli

    app = create_app(api_settings(settings, bootstrap, database_url), seed_demo=False)
    person = f"p_old_{uuid.uuid4().hex[:12]}"
    token = identity.issue_token(person, "applicant", "online")
    ref = f"doc-{uuid.uuid4().hex}"
    with psycopg.connect(database_url, autocommit=True) as conn:  # as a row written before migration 0019
        conn.execute("INSERT INTO intake_documents (ref, owner_token, content_type, size_bytes, sha256, body) "
                     "VALUES (%s, %s, 'application/pdf', %s, %s, %s)",
                     (ref, person, len(BODY), hashlib.sha256(BODY).hexdigest(), BODY))
    with TestClient(app) as client:
        assert client.get(f"/api/v1/documents/{ref}", headers=auth(token)).content == BODY
        result = CliRunner().invoke(cli, ["keys", "seal-documents"], catch_exceptions=False)
        assert result.exit_code == 0 and "documents sealed" in result.output, result.output
        with psycopg.connect(database_url) as conn:
            stored, key_id = conn.execute("SELECT body, key_id FROM intake_documents WHERE ref = %s",
                                          (ref,)).fetchone()
        assert key_id and BODY not in bytes(stored)
        assert client.get(f"/api/v1/documents/{ref}", headers=auth(token)).content == BODY
        again = CliRunner().invoke(cli, ["keys", "seal-documents"], catch_exceptions=False)
        assert again.exit_code == 0 and again.output.strip().endswith("0 documents sealed")
