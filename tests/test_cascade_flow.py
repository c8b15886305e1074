"""The cascade end to end through the real broker and PostgreSQL: data minimisation read off every
sync task, 个转企 inheritance, 公民身后 follow-ups, dead letters that do not stop the flow, retries
and escalation of a failing department, the department copy's sequence guard, the API and CLI.

One cascade (in a thread, under a name of this run) and one adapter per subscribing department
(threads, groups of this run) serve the whole module; each test uses keys of its own.
"""
from __future__ import annotations

import random
import threading
import uuid
from dataclasses import replace
from datetime import datetime, timezone

import psycopg
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from catalog.subscriptions import load_subscriptions
from department_adapters.reference.register_copy import (ByKind, RegisterCopyBackend, clear_outage, read_copy,
                                                         set_outage)
from department_adapters.sdk import InvalidTask
from events import bus
from events.envelope import Actor
from infra.settings import Settings
from infra.topics import DEADLETTER, REGISTRY_COMPANY, REGISTRY_PERSON, decisions_topic, tasks_topic
from producers import identity
from producers.register_api import create_router
from producers.register_changes import change_event
from producers.register_cli import cascade as cascade_cli
from producers.register_cli import registers as registers_cli
from producers.register_log import master_from_log, verify_master
from producers.registers import RegisterRecorder, register_key
from projectors import cascade_plan as plan
from projectors import cascade_status
from projectors.cascade import Cascade
from projectors.cascade_processor import CASCADE_TOPIC, CascadeConfig

from .support.cascade_harness import (AdapterThreads, company_fields, end_offsets, new_resident_id, new_uscc,
                                      skip_if_foreign_adapters, wait_complete)
from .support.offsets import seed_offsets
from .support.topics import read_messages

pytestmark = [pytest.mark.broker, pytest.mark.postgres]
SUBS = load_subscriptions()


class World:
    def __init__(self, bootstrap: str, database_url: str):
        self.bootstrap, self.database_url = bootstrap, database_url
        self.run = uuid.uuid4().hex[:8]
        self.name = f"cascade.test-{self.run}"
        self.config = CascadeConfig(name=self.name, start="latest", ack_timeout_s=2.0, backoff_base_s=0.5,
                                    backoff_max_s=2.0, escalate_after=2, tick_s=0.25)
        # from the topics' ends as stored offsets, not `latest` at assignment: a change recorded
        # before the group's first assignment (a loaded machine joins in seconds) would be skipped
        seed_offsets(bootstrap, database_url, self.name,
                     [REGISTRY_COMPANY, REGISTRY_PERSON, *(decisions_topic(d) for d in SUBS.departments())])
        self.cascade = Cascade(bootstrap, database_url, self.config)
        self.adapters = AdapterThreads(bootstrap, database_url, SUBS.departments(), self.run, set()).start()
        self.recorder = RegisterRecorder(bootstrap, database_url)
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="cascade")
        self.thread.start()
        self.rng = random.Random()

    def _run(self) -> None:
        try:
            self.cascade.run(self.stopping.is_set)
        except BaseException as exc:  # pragma: no cover - surfaced by wait()
            self.failure = exc

    def keys(self, *keys: str) -> None:
        self.adapters.add_keys(keys)

    def wait(self, keys, expected: int, timeout_s: float = 30.0) -> None:
        seen, still_open = wait_complete(self.database_url, self.name, keys, expected, timeout_s)
        assert self.failure is None, repr(self.failure)
        assert (seen, still_open) == (expected, 0)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.adapters.stop()
        self.cascade.close()
        self.recorder.close()


@pytest.fixture(scope="module")
def world(bootstrap, database_url):
    skip_if_foreign_adapters(bootstrap, SUBS.departments())
    w = World(bootstrap, database_url)
    yield w
    w.close()


def sync_tasks(bootstrap, starts, keys):
    return [ev for _m, ev in read_messages(bootstrap, starts, keep=lambda m, ev: ev is not None and ev.key in keys
                                        and ev.type == "TaskDispatched")]


def copies(database_url, key):
    with psycopg.connect(database_url) as conn:
        return {d: c for d in SUBS.departments()
                if (c := read_copy(conn, d, "company" if len(key) == 18 else "person", key)) is not None}


def test_each_department_gets_only_the_changed_fields_it_keeps(world, bootstrap, database_url):
    uscc = new_uscc(world.rng)
    world.keys(uscc)
    task_topics = [tasks_topic(d) for d in SUBS.departments()]
    starts = end_offsets(bootstrap, task_topics)
    world.recorder.register_company(uscc, company_fields(world.rng))
    world.recorder.change_company(uscc, {"business_scope": "人工智能应用软件开发"})
    world.recorder.change_company(uscc, {"legal_representative_name": "赵六",
                                         "legal_representative_resident_id": new_resident_id(world.rng)})
    world.recorder.change_company(uscc, {"registered_capital": "8888"})
    world.wait([uscc], 4)

    changes = {ch["sequence"]: set(ch["changed_fields"]) for ch in
               cascade_status.changes(psycopg.connect(database_url), cascade=world.name, key=uscc)}
    tasks = sync_tasks(bootstrap, starts, {uscc})
    assert tasks, "no sync task was read back"
    received: dict[int, set[str]] = {}
    for t in tasks:  # read every sync task: nothing a department does not keep, nothing unchanged
        dept, seq = t.payload["department"], t.envelope.sequence
        sent = set(t.payload["fields"]) | set(filter(None, t.payload["inputs"].get("cleared", "").split(",")))
        assert sent <= SUBS.fields_for(dept, "company"), (dept, sent - SUBS.fields_for(dept, "company"))
        assert sent == SUBS.fields_for(dept, "company") & changes[seq]
        assert t.payload["materials"] == []
        received.setdefault(seq, set()).add(dept)
    assert received[2] == {"tax", "commerce"}               # business scope: only these two keep it
    assert received[3] == set(SUBS.targets("company", changes[3]))
    assert "customs" not in received[4] and received[4] == {"tax", "commerce"}
    master = world.recorder.master("company", uscc).fields
    for dept, copy in copies(database_url, uscc).items():
        assert copy["fields"] == {f: master[f] for f in SUBS.fields_for(dept, "company") if f in master}


def test_conversion_carries_inherited_attributes_to_every_subscribing_department(world, database_url):
    sole_trader, company = new_uscc(world.rng, "2"), new_uscc(world.rng, "1")
    world.keys(sole_trader, company)
    fields = {**company_fields(world.rng, company_type="individual_business"), "established_on": "2011-04-18",
              "credit_rating": "A"}
    world.recorder.register_company(sole_trader, fields)
    new_fields = {k: v for k, v in company_fields(world.rng).items() if k != "established_on"}
    old, new = world.recorder.convert_sole_trader(sole_trader, company, new_fields, "2025-06-02")
    assert (old.change_kind, new.change_kind) == ("converted_to_company", "registered_by_conversion")
    world.wait([sole_trader, company], 3)

    inherited = {"established_on": "2011-04-18", "credit_rating": "A", "predecessor_uscc": sole_trader,
                 "converted_on": "2025-06-02"}
    new_copies = copies(database_url, company)
    assert set(new_copies) == set(SUBS.departments("company"))
    for dept in SUBS.departments("company"):
        kept = SUBS.fields_for(dept, "company")
        expected = {f: v for f, v in inherited.items() if f in kept}
        assert {f: new_copies[dept]["fields"].get(f) for f in expected} == expected, dept
    assert new_copies["tax"]["fields"]["established_on"] == "2011-04-18"   # business years carried over
    assert new_copies["tax"]["fields"]["credit_rating"] == "A"             # credit record carried over
    old_copies = copies(database_url, sole_trader)
    for dept, copy in old_copies.items():
        assert copy["fields"]["status"] == "converted"
        if "successor_uscc" in SUBS.fields_for(dept, "company"):
            assert copy["fields"]["successor_uscc"] == company
    with psycopg.connect(database_url) as conn:
        linked = conn.execute("SELECT count(*) FROM register_copy_follow_ups WHERE register_key = %s "
                              "AND action = 'successor_linked'", (sole_trader,)).fetchone()[0]
    assert linked == len(SUBS.departments("company"))


def test_a_death_starts_the_downstream_updates_in_every_department(world, bootstrap, database_url):
    rid = new_resident_id(world.rng)
    token = register_key("person", rid)
    world.keys(token)
    starts = end_offsets(bootstrap, [tasks_topic(d) for d in SUBS.departments("person")])
    world.recorder.move_household(rid, "上海市静安区南京西路100号", "310106", "2023-09-01")
    world.recorder.record_death(rid, "2025-06-28", "SW-310106-0042")
    world.wait([token], 2)

    person_copies = copies(database_url, token)
    assert set(person_copies) == set(SUBS.departments("person"))
    for dept, copy in person_copies.items():
        assert copy["fields"]["status"] == "deceased" and copy["fields"]["date_of_death"] == "2025-06-28"
    with psycopg.connect(database_url) as conn:
        actions = dict(conn.execute("SELECT department, action FROM register_copy_follow_ups WHERE register_key = %s",
                                    (token,)).fetchall())
    assert actions == {"police": "household_cancellation", "hrss": "pension_stopped",
                       "medical_insurance": "personal_account_withdrawal_offered",
                       "housing_fund": "death_withdrawal_offered", "civil_affairs": "subsistence_allowance_stopped",
                       "funeral": "cremation_record_opened", "tax": "tax_affairs_settlement"}
    tasks = sync_tasks(bootstrap, starts, {token})
    moved = {t.payload["department"] for t in tasks if t.payload["inputs"]["change_kind"] == "household_moved"}
    assert moved == {"police", "hrss", "medical_insurance", "civil_affairs"}  # funeral, housing fund: nothing to do
    for _m, ev in read_messages(bootstrap, starts, keep=lambda m, ev: ev is not None and ev.key == token):
        assert rid not in repr(ev.payload)


def test_unprocessable_messages_are_dead_lettered_while_the_rest_flows_on(world, bootstrap, database_url):
    uscc = new_uscc(world.rng)
    world.keys(uscc)
    dl_starts = end_offsets(bootstrap, [DEADLETTER])
    producer = bus.make_producer(bootstrap)
    try:
        sent = [producer.send(REGISTRY_COMPANY, key=uscc.encode(), value=b"not avro at all").get(10)]
        bogus = change_event("company", uscc, "changed", {"name": "x", "shareholder_list": "张三 60%"}, sequence=1,
                             actor=Actor("register:rogue", "register", "register"), region_code="310115")
        sent.append(bus.publish(producer, REGISTRY_COMPANY, bogus))
        wrong_topic = change_event("person", uscc, "died", {"status": "deceased"}, sequence=1,
                                   actor=Actor("register:rogue", "register", "register"), region_code="310115")
        sent.append(bus.publish(producer, REGISTRY_COMPANY, wrong_topic))
    finally:
        producer.close()
    world.recorder.register_company(uscc, company_fields(world.rng))
    world.recorder.change_company(uscc, {"name": "照常流转有限公司"})
    world.wait([uscc], 2)

    # registry.company is the real topic, which other tests of the lane write to (their own bad
    # bytes too): this test's letters are those of its own messages' offsets
    ours = {(m.topic, m.partition, m.offset) for m in sent}

    def mine(m, ev):
        return ev is not None and ev.payload.get("consumer") == world.name and (
            ev.payload["origin_topic"], ev.payload["origin_partition"], ev.payload["origin_offset"]) in ours
    letters = [ev.payload for _m, ev in read_messages(bootstrap, dl_starts, keep=mine)]
    reasons = sorted(p["reason"] for p in letters)
    assert len(letters) == 3, reasons
    assert any(r.startswith("DecodeError: not an Avro single-object message") for r in reasons)
    assert "1 field(s) not in the company register" in reasons
    assert "a person change on the wrong topic" in reasons
    assert all(p["origin_topic"] == REGISTRY_COMPANY and p["original_value"] for p in letters)
    assert not any("张三" in r for r in reasons)
    # the master register rebuilt from the log skips what the cascade could not process, too
    assert master_from_log(bootstrap, "company", {uscc})[uscc].fields["name"] == "照常流转有限公司"
    assert verify_master(bootstrap, database_url, "company", {uscc}) == []


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_failing_department_is_retried_with_new_attempts_then_escalated_and_completes(world, bootstrap,
                                                                                        database_url):
    uscc = new_uscc(world.rng)
    world.keys(uscc)
    esc_starts = end_offsets(bootstrap, [CASCADE_TOPIC])
    retries_before = _sample("onething_cascade_retries_total", department="bank", register="company", reason="failed")
    escalations_before = _sample("onething_cascade_escalations_total", department="bank", register="company")
    with psycopg.connect(database_url, autocommit=True) as conn:
        set_outage(conn, "bank", 4.0, "failing", "core banking system in end-of-day batch")
    try:
        world.recorder.register_company(uscc, company_fields(world.rng))
        world.recorder.change_company(uscc, {"name": "重试之后有限公司"})
        world.wait([uscc], 2, timeout_s=40)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            clear_outage(conn, "bank")
    with psycopg.connect(database_url) as conn:
        first, second = cascade_status.changes(conn, cascade=world.name, key=uscc)
    bank = next(t for t in first["target_states"] if t["department"] == "bank")
    assert bank["state"] == "applied" and bank["failures"] >= 2 and bank["task_attempt"] >= 3
    assert bank["escalated"] and bank["last_reason"] == "core banking system in end-of-day batch"
    others = [t for t in first["target_states"] if t["department"] != "bank"]
    assert all(t["failures"] == 0 and t["attempts"] == 1 for t in others)
    # the later change waited for the earlier one at the bank, and only there
    bank2 = next(t for t in second["target_states"] if t["department"] == "bank")
    assert bank2["first_sent_at"] >= bank["applied_at"]
    escalated = [ev for _m, ev in read_messages(bootstrap, esc_starts, keep=lambda m, ev: ev is not None
                                             and ev.key == uscc)]
    assert len({e.id for e in escalated}) == 1
    assert escalated[0].payload["department"] == "bank" and escalated[0].payload["last_outcome"] == "failed"
    assert _sample("onething_cascade_retries_total", department="bank", register="company",
                   reason="failed") >= retries_before + 2
    # at least this one: the module's cascade serves every test of the file, and an earlier test's
    # bank target may escalate in the same window (once per target: the topic, by id, above)
    assert _sample("onething_cascade_escalations_total", department="bank",
                   register="company") >= escalations_before + 1
    assert _sample("onething_cascade_fanout_seconds_count", register="company") >= 2


def test_a_department_copy_never_applies_an_older_change_over_a_newer_one(database_url):
    key = new_uscc(random.Random())
    backend = RegisterCopyBackend("tax")
    now = datetime.now(timezone.utc)

    def task(seq: int, changes: dict, fields=None):
        ref = plan.ChangeRef(str(uuid.uuid4()), "company", key, seq, "changed", now, "c", "310115", changes)
        return plan.sync_task(ref, "tax", fields or list(changes), 1)

    with psycopg.connect(database_url) as conn:
        with conn.transaction():
            backend.handle(task(3, {"name": "第三版", "address": "新地址"}), conn)
        with conn.transaction():  # change 2 arrives late: its name is older, its scope is news
            decision, = backend.handle(task(2, {"name": "第二版", "business_scope": "旧范围"}), conn)
        copy = read_copy(conn, "tax", "company", key)
        assert copy["fields"] == {"name": "第三版", "address": "新地址", "business_scope": "旧范围"}
        assert copy["field_sequences"] == {"name": 3, "address": 3, "business_scope": 2}
        assert decision.outcome == "applied" and decision.outputs["stale_fields"] == "name"
        with pytest.raises(InvalidTask):  # a field tax does not keep is refused, not stored
            with conn.transaction():
                RegisterCopyBackend("police").handle(task(4, {"business_scope": "x"}), conn)


def _token(role: str, **kw) -> dict[str, str]:
    if role == "department":  # department staff name the acting staff member
        kw.setdefault("staff_id", f"{kw.get('department', 'dept')}-test-1")
    return {"Authorization": "Bearer " + identity.issue_token(f"{role}-test", role, "register" if role == "register"
                                                              else "department", **kw)}


def test_api_records_refuses_and_reports_status(world, bootstrap, database_url):
    app = FastAPI()
    app.include_router(create_router(Settings.from_env(), recorder=world.recorder, cascade=world.name))
    client = TestClient(app)
    uscc = new_uscc(world.rng)
    world.keys(uscc)
    register = _token("register")
    r = client.post("/api/v1/registers/company", json={"uscc": uscc, "fields": company_fields(world.rng)},
                    headers=register)
    assert r.status_code == 202, r.text
    secret = "钱七七"
    r = client.post(f"/api/v1/registers/company/{uscc}/changes",
                    json={"changes": {"legal_representative_name": secret, "registered_capital": "lots"}},
                    headers=register)
    assert r.status_code == 422
    assert {e["path"] for e in r.json()["errors"]} == {"changes.legal_representative_resident_id",
                                                       "changes.registered_capital"}
    assert secret not in r.text and "lots" not in r.text
    assert client.post(f"/api/v1/registers/company/{uscc}/changes", json={"changes": {"name": "x"}}).status_code == 401
    tax_staff = _token("department", department="tax")
    assert client.post(f"/api/v1/registers/company/{uscc}/changes", json={"changes": {"name": "x"}},
                       headers=tax_staff).status_code == 403
    market = _token("department", department="market_regulation")
    r = client.post(f"/api/v1/registers/company/{uscc}/changes", json={"changes": {"name": "接口改名有限公司"}},
                    headers={**market, "Idempotency-Key": f"api-{world.run}"})
    assert r.status_code == 202 and r.json()["recorded"][0]["sequence"] == 2
    r2 = client.post(f"/api/v1/registers/company/{uscc}/changes", json={"changes": {"name": "接口改名有限公司"}},
                     headers={**market, "Idempotency-Key": f"api-{world.run}"})
    assert r2.json()["recorded"][0]["replayed"] is True
    assert client.post(f"/api/v1/registers/company/{uscc}/changes", json={"changes": {"name": "别的名称"}},
                       headers={**market, "Idempotency-Key": f"api-{world.run}"}).status_code == 409
    r = client.post("/api/v1/registers/person/deaths", json={"resident_id": "110105194912310022",
                                                             "date_of_death": "2025-01-01"}, headers=register)
    assert r.status_code == 422 and "110105194912310022" not in r.text
    world.wait([uscc], 2)

    r = client.get("/api/v1/cascade/changes", params={"key": uscc}, headers=tax_staff)
    assert r.status_code == 200
    changes = r.json()["changes"]
    assert [c["sequence"] for c in changes] == [1, 2] and all(c["complete"] for c in changes)
    target = changes[1]["target_states"][0]
    assert {"department", "state", "attempts", "seconds_to_apply", "fields"} <= set(target)
    assert "接口改名有限公司" not in r.text  # status shows field names, never values
    one = client.get(changes[1]["change_event_id"].join(["/api/v1/cascade/changes/", ""]), headers=tax_staff)
    assert one.status_code == 200 and one.json()["sequence"] == 2
    assert client.get("/api/v1/cascade/changes/not-a-uuid", headers=tax_staff).status_code == 404
    backlog = client.get("/api/v1/cascade/backlog", headers=tax_staff).json()["departments"]
    assert {b["department"] for b in backlog} >= {"tax", "bank"}
    assert client.get(f"/api/v1/registers/company/{uscc}", headers=tax_staff).json()["fields"]["name"] == "接口改名有限公司"
    assert client.get("/api/v1/cascade/backlog").status_code == 401
    applicant = {"Authorization": "Bearer " + identity.issue_token("p_someone", "applicant", "online")}
    assert client.get("/api/v1/cascade/backlog", headers=applicant).status_code == 403


def test_cli_records_refuses_and_shows_status(world, database_url):
    runner = CliRunner()
    uscc = new_uscc(world.rng)
    world.keys(uscc)
    args = ["register", uscc] + [f"--set={k}={v}" for k, v in company_fields(world.rng).items()]
    r = runner.invoke(registers_cli, args)
    assert r.exit_code == 0, r.output
    r = runner.invoke(registers_cli, ["change", uscc, "--set", "name=", "--set", "colour=blue"])
    assert r.exit_code == 2 and "changes.name" in r.output and "changes.colour" in r.output
    r = runner.invoke(registers_cli, ["change", uscc, "--set", "name=命令行改名有限公司"])
    assert r.exit_code == 0 and "sequence 2" in r.output
    rid = new_resident_id(world.rng)
    world.keys(register_key("person", rid))
    r = runner.invoke(registers_cli, ["death", "--on", "2025-05-05", "--resident-id-stdin"], input=rid + "\n")
    assert r.exit_code == 0, r.output
    assert rid not in r.output
    world.wait([uscc], 2)
    world.wait([register_key("person", rid)], 1)
    r = runner.invoke(cascade_cli, ["status", uscc, "--name", world.name])
    assert r.exit_code == 0, r.output
    assert "complete" in r.output and "backlog per department" in r.output and "tax" in r.output
    r = runner.invoke(cascade_cli, ["status", rid, "--name", world.name, "--json"])  # a resident ID: looked up, not shown
    assert r.exit_code == 0 and rid not in r.output and '"died"' in r.output


def test_one_adapter_per_department_routes_syncs_to_the_copy_and_the_rest_to_its_case_backend(database_url):
    class CaseBackend:
        department, config = "tax", "the case backend's config"

        def __init__(self):
            self.seen = []

        def handle(self, task, conn):
            self.seen.append(task.payload["kind"])
            return []

        def cancel(self, task, conn):
            self.seen.append("cancel")

    case = CaseBackend()
    backend = ByKind(case, RegisterCopyBackend("tax"))
    assert backend.department == "tax" and backend.config == "the case backend's config"
    key = new_uscc(random.Random())
    ref = plan.ChangeRef(str(uuid.uuid4()), "company", key, 1, "changed", datetime.now(timezone.utc), "c", "310115",
                         {"name": "路由测试有限公司"})
    sync = plan.sync_task(ref, "tax", ["name"], 1)
    case_task = replace(sync, payload={**sync.payload, "kind": "case_service"})
    with psycopg.connect(database_url) as conn, conn.transaction():
        assert [d.outcome for d in backend.handle(sync, conn)] == ["applied"]
        backend.handle(case_task, conn)
        backend.cancel(case_task, conn)
        assert read_copy(conn, "tax", "company", key)["fields"] == {"name": "路由测试有限公司"}
    assert case.seen == ["case_service", "cancel"]
    with pytest.raises(ValueError):
        ByKind(case, RegisterCopyBackend("police"))
