"""免申即享 / 主动服务 end to end, with the processes running (intake API, core with the proactive
processor, the department adapters) on the real broker and PostgreSQL, the clock pinned with
ONETHING_TODAY. One set of processes for the whole module; each test follows people of its own
(synthetic, valid resident IDs, fresh every run), so a re-run finds nothing of the last one.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid
from datetime import date
from pathlib import Path

import httpx
import psycopg
import pytest

from catalog.loader import load_catalog
from catalog.working_days import add_working_days
from events import bus
from events.envelope import Actor
from infra import migrations
from infra.demo import _wait_api
from infra.samples import as_event_form, newborn_form, newborn_materials, resident_id
from infra.supervisor import Supervisor
from infra.topics import APPLICATIONS, CASES, PROACTIVE
from producers import identity
from producers.registers import RegisterRecorder

from .support.fast_forward import skip_history
from .support.offsets import caught_up
from .support.topics import mark, read_since, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]
CATALOG = load_catalog()
TODAY = date(2025, 3, 10)            # a Monday: the scan runs on working days only
DISCHARGE_ON = date(2025, 4, 1)
DEPARTMENTS = "health,police,hrss,medical_insurance,housing_fund"
LICENCE_PREFIX = "EL-T-PRO-"


class Person:
    """A synthetic person in the e-licence library: resident ID (valid checksum), name, token."""

    def __init__(self, born: date, sex: str, name: str, region: str = "110105"):
        odd = random.randrange(0, 50) * 2 + (1 if sex == "male" else 0)
        self.rid = resident_id(region, born, f"{random.randrange(10):d}{odd:02d}")
        self.name, self.sex, self.born, self.region = name, sex, born, region
        self.token = identity.subject_token(self.rid)
        self.bearer = {"Authorization": f"Bearer {identity.applicant_token(self.rid)}"}


def _licence(conn, person: Person, kind: str, data: dict, relation: str = "holder", valid_until: date | None = None):
    no = f"{LICENCE_PREFIX}{kind[:4]}-{uuid.uuid4().hex[:10]}"
    conn.execute("INSERT INTO e_licenses (licence_no, kind, issuer, issued_on, valid_until, data, demo) "
                 "VALUES (%s, %s, %s, %s, %s, %s, true)",
                 (no, kind, "police" if kind != "discharge_notice" else "military_service", date(2015, 1, 1),
                  valid_until, json.dumps(data, ensure_ascii=False)))
    conn.execute("INSERT INTO e_license_holders (licence_no, holder_resident_id, holder_token, relation) "
                 "VALUES (%s, %s, %s, %s)", (no, person.rid, person.token, relation))


def _id_card(conn, p: Person, valid_until: date | None = None, address: str = "北京市朝阳区朝阳门外大街2号"):
    _licence(conn, p, "id_card", {"name": p.name, "sex": p.sex, "birth_date": p.born.isoformat(),
                                  "address": address, "resident_id": p.rid, "region_code": p.region},
             valid_until=valid_until)


@pytest.fixture(scope="module")
def world(running_stack, tmp_path_factory):
    """The people, then the processes; stopped and the people removed after the module."""
    url, bootstrap = running_stack.database_url, running_stack.bootstrap_servers
    migrations.migrate(url)
    people = {
        # the 2025 reform: a man born 1965-01..04 retires at 60 years and 1 month (2025-03-01..09 here)
        "retiree": Person(date(1965, 2, random.randrange(1, 10)), "male", "孙建国"),
        "senior": Person(date(1945, 3, 3), "female", "周秀英"),
        "soldier": Person(date(2001, 6, 1), "male", "吴海军", "440203"),
        "mother": Person(date(1994, 4, 4), "female", "郑晓雯", "440203"),
    }
    with psycopg.connect(url, autocommit=True) as conn:
        r = people["retiree"]
        _id_card(conn, r)
        _licence(conn, r, "household_register", {"address": "北京市朝阳区朝阳门外大街2号", "region_code": r.region,
                                                 "household_type": "家庭户", "head_name": r.name,
                                                 "members": [{"name": r.name, "resident_id": r.rid, "relation": "户主"}]},
                 relation="head")
        _id_card(conn, people["senior"])
        s = people["soldier"]
        _id_card(conn, s, valid_until=date(2025, 3, 20), address="广东省韶关市武江区惠民南路1号")  # expires first
        _licence(conn, s, "discharge_notice", {"discharge_on": DISCHARGE_ON.isoformat(), "name": s.name,
                                               "region_code": s.region})
    skip_history(bootstrap, url)
    port = int(os.environ.get("ONETHING_API_PORT") or 24800)
    sup = Supervisor(Path(os.environ.get("ONETHING_PROACTIVE_TEST_LOGS") or tmp_path_factory.mktemp("proactive-logs")), {
        "ONETHING_TODAY": TODAY.isoformat(), "ONETHING_PROACTIVE_TICK_S": "1", "ONETHING_PROACTIVE_SCAN_S": "2",
        "ONETHING_SIM_PROCESSING_S": "0", "ONETHING_API_PORT": str(port), "ONETHING_CASCADE_START": "latest"})
    # the API of this module, not one still going away on the same port (an earlier session's)
    assert wait_for(lambda: not _listening(port), 30, 0.5), f"port {port} is taken by another process"
    sup.add("api", "api")
    sup.add("core", "core")
    sup.add("adapters", "adapters", DEPARTMENTS)
    sup.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_api(base)
        with httpx.Client(base_url=base, timeout=30) as client:
            yield {"people": people, "api": client, "sup": sup, "url": url, "bootstrap": bootstrap}
    finally:
        sup.stop()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM e_licenses WHERE licence_no LIKE %s", (LICENCE_PREFIX + "%",))


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _inbox(world, who: str) -> list[dict]:
    r = world["api"].get("/api/v1/inbox", headers=world["people"][who].bearer)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _item(world, who: str, rule: str, timeout_s: float = 90, state: str | None = None) -> dict:
    found: dict = {}

    def seen() -> bool:
        world["sup"].check()
        for it in _inbox(world, who):
            if it["rule"] == rule and (state is None or it["state"] == state):
                found.update(it)
                return True
        return False

    assert wait_for(seen, timeout_s, 0.5), f"no {rule} ({state or 'any state'}) in the inbox of the {who}"
    return found


def _dept(world, department: str) -> dict:
    token = identity.department_token(department, "staff-001")
    r = world["api"].get(f"/api/v1/departments/{department}/grants", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return {g["grant_id"]: g for g in r.json()["grants"]}


def test_a_birth_registered_by_the_police_grants_the_newborn_services_the_family_did_not_apply_for(world):
    mother = world["people"]["mother"]
    applied = list(CATALOG.select(services=["police.birth_registration"]).services)
    assert "medical_insurance.enrolment" not in applied and "hrss.social_security_card" not in applied
    from events.envelope import new_event

    case_id = f"case-pro-{uuid.uuid4().hex[:12]}"
    submission = new_event("ApplicationSubmitted", case_id,
                           {"bundle_code": "newborn", "services": applied, "form": as_event_form(newborn_form()),
                            "materials": newborn_materials(), "receipt_no": f"R-{case_id[-8:]}",
                            "idempotency_key": None},
                           actor=Actor(mother.token, "applicant", "online"), region_code="440203")
    since = mark(world["bootstrap"], [PROACTIVE])
    producer = bus.make_producer(world["bootstrap"])
    bus.publish_all(producer, [(APPLICATIONS, submission)], timeout=30)
    producer.close()

    enrolment = _item(world, "mother", "newborn_medical_insurance", timeout_s=120)
    card = _item(world, "mother", "newborn_follow_ups")
    assert enrolment["outcome"] == card["outcome"] == "grant" and enrolment["state"] == "granted"
    assert enrolment["benefit"]["zh"] == "新生儿参保登记" and enrolment["can_decline"] is True
    assert enrolment["decline_until"] == add_working_days(TODAY, 10).isoformat()
    # the department is told: its worklist holds the grant, waiting out the decline window
    assert _dept(world, "medical_insurance")[enrolment["offer_id"]]["task"] == "decline_window"
    # nothing personal in clear on the new topic: tokens, codes and dates only
    events = read_since(world["bootstrap"], since, lambda e: e.key == mother.token)
    assert {e.type for e in events} == {"BenefitGranted"}
    raw = json.dumps([e.payload for e in events], ensure_ascii=False, default=str)
    for clear in (mother.rid, mother.name, "王芳", "13800138000", resident_id()):
        assert clear not in raw


def test_reaching_the_retirement_age_is_offered_retirement_prefilled_and_accepted_in_one_step(world):
    retiree = world["people"]["retiree"]
    offer = _item(world, "retiree", "retirement_offer")
    assert offer["outcome"] == "offer" and offer["state"] == "offered" and offer["can_accept"]
    assert offer["lapses_on"] == add_working_days(TODAY, 60).isoformat()
    prefilled = {p["field"]: p for p in offer["prefilled"]}
    assert prefilled["applicant_name"]["value"] == retiree.name and prefilled["applicant_name"]["source"] == "id_card"
    assert prefilled["applicant_resident_id"]["value"] == retiree.rid
    assert prefilled["household_address"]["source"] == "household_register"
    assert prefilled["retirement_type"]["value"]["zh"].startswith("正常退休")   # the option, not its code
    to_fill = {f["field"] for f in offer["to_fill"] if f["required"]}
    assert {"bank_account_no", "contact_mobile", "employment_status"} <= to_fill
    assert {s["service_id"] for s in offer["services"]} == set(CATALOG.bundle("retirement").services)

    api, url = world["api"], f"/api/v1/inbox/{offer['offer_id']}/accept"
    missing = api.post(url, json={"form": {}}, headers=retiree.bearer)
    assert missing.status_code == 422
    assert "fields.bank_account_no" in {e["path"] for e in missing.json()["errors"]}
    other = api.post(url, json={"form": {}}, headers=world["people"]["senior"].bearer)
    assert other.status_code == 404 and other.json()["errors"][0]["code"] == "offer.not_found"

    since = mark(world["bootstrap"], [CASES])
    filed_since = mark(world["bootstrap"], [APPLICATIONS])
    extra = {"employment_status": "flexible", "bank_name": "中国工商银行", "bank_account_no": "6222020200112233445",
             "contact_mobile": "13900139000"}
    accepted = api.post(url, json={"form": extra}, headers=retiree.bearer)
    assert accepted.status_code == 202, accepted.text
    case_id = accepted.json()["case_id"]
    again = api.post(url, json={"form": extra}, headers=retiree.bearer)
    assert again.status_code == 409 and again.json()["errors"][0]["code"] == "offer.already_accepted"
    assert again.json()["case_id"] == case_id

    def completed() -> bool:
        world["sup"].check()
        return any(e.type == "CaseCompleted" and e.key == case_id for e in read_since(world["bootstrap"], since))

    assert wait_for(completed, 180, 1), "the accepted retirement case did not complete"
    (filed,) = read_since(world["bootstrap"], filed_since, lambda e: e.key == case_id)
    assert filed.type == "ApplicationSubmitted" and filed.payload["bundle_code"] == "retirement"
    assert filed.envelope.actor.id_token == retiree.token and filed.envelope.actor.role == "applicant"
    assert filed.envelope.actor.channel == "proactive"    # 主动服务: the government offered, the applicant accepted
    # the prefilled personal values travel sealed, as every submission's (events/personal.py)
    assert filed.payload["form"]["applicant_resident_id"].startswith("pd1:")
    assert retiree.rid.encode() not in json.dumps(filed.payload, ensure_ascii=False).encode()
    done = _item(world, "retiree", "retirement_offer", state="accepted")
    assert done["case_id"] == case_id and done["receipt_no"] == accepted.json()["receipt_no"]
    assert done["can_accept"] is False and "prefilled" not in done


def test_an_80th_birthday_grants_the_allowance_and_a_decline_within_the_window_cancels_the_task(world):
    senior = world["people"]["senior"]
    grant = _item(world, "senior", "senior_allowance_80")
    assert grant["state"] == "granted" and grant["benefit"]["code"] == "senior_allowance"
    assert grant["trigger_on"] == "2025-03-03" and grant["can_decline"]
    assert _dept(world, "civil_affairs")[grant["offer_id"]]["task"] == "decline_window"
    api, url = world["api"], f"/api/v1/inbox/{grant['offer_id']}/decline"
    # the inbox is the person's own: staff and the receipt's read-only link are refused, other staff see no grants
    staff = {"Authorization": f"Bearer {identity.department_token('civil_affairs', 'staff-001')}"}
    link = {"Authorization": f"Bearer {identity.status_link_token(senior.token, 'case-x')}"}
    for headers in (staff, link):
        r = api.get("/api/v1/inbox", headers=headers)
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "inbox.own_login"
    assert api.post(url, json={}, headers=staff).status_code == 403
    assert api.get("/api/v1/departments/civil_affairs/grants", headers={
        "Authorization": f"Bearer {identity.department_token('tax', 'staff-002')}"}).status_code == 404
    assert api.post(url, json={"reason_code": "because"}, headers=senior.bearer).status_code == 422
    assert api.post(f"/api/v1/inbox/{grant['offer_id']}/accept", json={}, headers=senior.bearer).json()[
        "errors"][0]["code"] == "offer.is_grant"
    first = api.post(url, json={"reason_code": "not_needed"}, headers=senior.bearer)
    assert first.status_code == 202, first.text
    assert api.post(url, json={"reason_code": "not_needed"}, headers=senior.bearer).status_code == 202  # idempotent
    _item(world, "senior", "senior_allowance_80", state="declined")
    assert _dept(world, "civil_affairs")[grant["offer_id"]]["task"] == "cancelled"


def test_a_soldiers_pre_service_list_exists_before_the_discharge_date(world):
    soldier = world["people"]["soldier"]
    lst = _item(world, "soldier", "veteran_pre_service")
    assert lst["outcome"] == "pre_service" and TODAY < DISCHARGE_ON
    assert lst["available_on"] == DISCHARGE_ON.isoformat() and lst["can_accept"] is False
    services = [i["service_id"] for i in lst["items"]]
    assert services[0] == "police.resident_id_card_issue"   # the ID card expires before the discharge
    assert {"hrss.veteran_social_security_card", "medical_insurance.veteran_transfer"} <= set(services)
    early = world["api"].post(f"/api/v1/inbox/{lst['offer_id']}/accept", json={}, headers=soldier.bearer)
    assert early.status_code == 409 and early.json()["errors"][0]["code"] == "offer.not_open"


def test_an_answer_naming_no_offer_is_dead_lettered_and_the_processor_goes_on(world):
    from events.envelope import new_event
    from infra.topics import DEADLETTER

    senior = world["people"]["senior"]
    since = mark(world["bootstrap"], [DEADLETTER])
    bad = new_event("OfferDeclined", senior.token, {"offer_id": "not-an-id", "rule": "senior_allowance_80",
                                                    "reason_code": None},
                    actor=Actor(senior.token, "applicant", "online"), region_code="110105")
    producer = bus.make_producer(world["bootstrap"])
    bus.publish_all(producer, [(PROACTIVE, bad)], timeout=30)
    producer.close()
    letters: list = []

    def parked() -> bool:
        letters[:] = [e for e in read_since(world["bootstrap"], since) if e.type == "DeadLettered"
                      and e.payload["origin_topic"] == PROACTIVE and e.payload["consumer"] == "proactive"]
        return bool(letters)

    assert wait_for(parked, 60, 1), "the bad answer was not dead-lettered"
    assert "names no offer id" in letters[0].payload["reason"]
    assert "not-an-id" not in letters[0].payload["reason"]
    _item(world, "senior", "senior_allowance_80", state="declined")   # and the real answer stands


def _ours(world, events) -> list:
    tokens = {p.token for p in world["people"].values()}
    return [e for e in events if e.key in tokens and e.type in ("ServiceOffered", "BenefitGranted")]


def test_replaying_the_registers_from_the_start_offers_nothing_twice_and_a_declined_offer_stays_declined(world):
    retiree, sup, url = world["people"]["retiree"], world["sup"], world["url"]
    recorder = RegisterRecorder(world["bootstrap"], url, today=lambda: TODAY)
    try:  # a register event: the household moves in → medical insurance follows it
        recorder.move_household(retiree.rid, "北京市海淀区中关村大街1号", "110108", TODAY.isoformat())
    finally:
        recorder.close()
    _item(world, "retiree", "household_moved_medical_insurance")
    _item(world, "senior", "senior_allowance_80", state="declined")
    before = _ours(world, read_since(world["bootstrap"], {tp: 0 for tp in mark(world["bootstrap"], [PROACTIVE])}))
    assert len(before) == len({e.id for e in before}) >= 6

    # the proactive processor forgets where it was and what it saw: everything again, from the start
    sup.kill("core", signal.SIGKILL)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM consumer_offsets WHERE consumer = 'proactive'")
        conn.execute("DELETE FROM processed_events WHERE consumer = 'proactive'")
    from projectors.proactive import ProactiveProcessor

    ends = mark(world["bootstrap"], ProactiveProcessor().topics)
    assert wait_for(lambda: (sup.check(), caught_up(url, "proactive", ends))[1], 180, 1), "the replay did not finish"
    time.sleep(3)   # and a few daily scans on top (every 2 s here)
    after = _ours(world, read_since(world["bootstrap"], {tp: 0 for tp in mark(world["bootstrap"], [PROACTIVE])}))
    assert sorted(e.id for e in after) == sorted(e.id for e in before), "an offer or grant was made again"
    assert _item(world, "senior", "senior_allowance_80")["state"] == "declined"
    kpis = {r["rule"]: r for r in world["api"].get("/api/v1/proactive/kpis").json()["rules"]}
    assert kpis["retirement_offer"]["accepted"] >= 1 and kpis["senior_allowance_80"]["declined"] >= 1
    assert kpis["newborn_medical_insurance"]["grants"] >= 1
