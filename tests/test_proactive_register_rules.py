"""The register-triggered rules folded by the proactive processor against the real PostgreSQL: a death
offers the after-death bundle to the spouse on the marriage certificate; a company's change of
address offers relocation to its legal representative; a conversion grants the tax credit carried
over; the same register event twice (a replay) makes nothing more. The events are handed to
`process` as the runtime would (one checkpoint step); tests/test_proactive_e2e.py runs the same
processor with the broker and every process."""
from __future__ import annotations

import json
import uuid
from datetime import date

import psycopg
import pytest

from events.envelope import Actor
from infra import migrations
from infra.topics import REGISTRY_COMPANY, REGISTRY_PERSON
from producers.register_changes import change_event
from projectors.checkpoint import Item, Step
from projectors.proactive import ProactiveProcessor

from .test_proactive_e2e import LICENCE_PREFIX, Person, _id_card

pytestmark = [pytest.mark.postgres]
REGISTER = Actor("register:population", "register", "register")


def _fold(conn, processor: ProactiveProcessor, topic: str, event) -> list:
    step = Step(conn, items=[Item(topic, 0, 0, event.key.encode(), b"", event)])
    with conn.transaction():
        processor.process(step)
    return [e for _t, e in step.out]


@pytest.fixture
def conn(database_url, monkeypatch):
    monkeypatch.setenv("ONETHING_TODAY", "2025-03-10")
    migrations.migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c
        c.execute("DELETE FROM e_licenses WHERE licence_no LIKE %s", (LICENCE_PREFIX + "%",))


def test_a_death_offers_the_after_death_bundle_to_the_spouse_once(conn):
    deceased, widow = Person(date(1950, 1, 2), "male", "陈国华"), Person(date(1952, 5, 6), "female", "林美玲")
    _id_card(conn, deceased)
    _id_card(conn, widow)
    no = f"{LICENCE_PREFIX}mc-{uuid.uuid4().hex[:10]}"
    conn.execute("INSERT INTO e_licenses (licence_no, kind, issuer, issued_on, data, demo) VALUES "
                 "(%s, 'marriage_certificate', 'civil_affairs', '1975-01-01', '{}', true)", (no,))
    for p in (deceased, widow):
        conn.execute("INSERT INTO e_license_holders (licence_no, holder_resident_id, holder_token, relation) "
                     "VALUES (%s, %s, %s, 'spouse')", (no, p.rid, p.token))
    died = change_event("person", deceased.token, "died", {"date_of_death": "2025-03-08", "status": "deceased"},
                        sequence=1, actor=REGISTER, region_code="110105")
    processor = ProactiveProcessor()
    out = _fold(conn, processor, REGISTRY_PERSON, died)
    (offer,) = [e for e in out if e.payload["rule"] == "after_death_family"]
    assert offer.type == "ServiceOffered" and offer.key == widow.token
    assert offer.payload["subject_token"] == deceased.token and offer.payload["bundle_code"] == "after_death"
    assert {"deceased_name", "deceased_resident_id", "date_of_death", "relationship_to_deceased",
            "applicant_name", "applicant_resident_id"} <= set(offer.payload["prefilled_fields"])
    assert deceased.rid not in json.dumps(offer.payload, default=str) and deceased.name not in json.dumps(
        offer.payload, ensure_ascii=False, default=str)
    assert not [e for e in _fold(conn, processor, REGISTRY_PERSON, died) if e.payload["rule"] == "after_death_family"]


def test_a_company_moving_is_offered_relocation_and_a_conversion_grants_the_tax_credit(conn):
    rep = Person(date(1980, 8, 8), "male", "黄志明", "440203")
    _id_card(conn, rep)
    uscc = "91440203MA4PRO" + uuid.uuid4().hex[:3].upper() + "X"
    conn.execute("INSERT INTO register_keys (register, register_key, next_sequence, record) VALUES "
                 "('company', %s, 2, %s) ON CONFLICT DO NOTHING",
                 (uscc, json.dumps({"legal_representative_resident_id": rep.rid, "status": "active"})))  # the fields,
    # as the recorder keeps them (producers/registers.py); a clear value: an entry recorded before sealing
    processor = ProactiveProcessor()
    renamed = change_event("company", uscc, "changed", {"name": "韶关新名称有限公司"}, sequence=2,
                           actor=REGISTER, region_code="440203")
    assert not [e for e in _fold(conn, processor, REGISTRY_COMPANY, renamed)
                if e.payload["rule"] == "enterprise_relocation_offer"], "a new name is no move"
    moved = change_event("company", uscc, "changed", {"address": "广东省韶关市浈江区新华南路8号"}, sequence=3,
                         actor=REGISTER, region_code="440203")
    (offer,) = [e for e in _fold(conn, processor, REGISTRY_COMPANY, moved)
                if e.payload["rule"] == "enterprise_relocation_offer"]
    assert offer.key == rep.token and offer.payload["bundle_code"] == "enterprise_relocation"
    assert offer.payload["trigger_key"] == "changed:3"
    converted = change_event("company", uscc, "registered_by_conversion",
                             {"legal_representative_resident_id": rep.rid}, sequence=4, actor=REGISTER,
                             region_code="440203")
    (grant,) = [e for e in _fold(conn, processor, REGISTRY_COMPANY, converted)
                if e.payload["rule"] == "enterprise_conversion_credit"]
    assert grant.type == "BenefitGranted" and grant.payload["department"] == "tax" and grant.key == rep.token
    assert rep.rid not in json.dumps(grant.payload, default=str)
