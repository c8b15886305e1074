"""The newborn bundle end to end, every process of `onething run` real: intake API → core
(dispatch, cascade) → the department adapters → read models (case view, KPIs, oversight) and the
deadline clock → status API, on the real broker and PostgreSQL.

Two scenarios: the demo's four paths (complete, 容缺→补正, rejected, withdrawn), and 1,000
applications (250 in the suite's short form) with the core, read-model and adapter processes killed with SIGKILL in the middle
— every case must still complete, no department may process a task twice, and the case view
must equal a fresh rebuild from the log.
"""
from __future__ import annotations

import signal
import socket
import time
import uuid
from contextlib import nullcontext
from dataclasses import replace

import psycopg
import pytest

from catalog.loader import load_catalog
from catalog.validators import check_resident_id
from events import bus
from events import personal
from infra import keystore
from infra.demo import run_demo
from infra.kafka_local import local_cluster
from producers import e_license
from infra.supervisor import newborn_departments, system
from events.envelope import Actor, new_event
from infra.topics import APPLICATIONS, CASES, DEADLETTER, REGISTRY_COMPANY, decisions_topic, tasks_topic
from producers.register_changes import change_event
from projectors import case_state, case_view
from projectors.case_view import CaseViewProjection, create_schema, drop_schema, read_case
from projectors.postgres_projection import rebuild

from .support.fast_forward import skip_history
from .support.poison import NUL, produce
from .support.scale import scaled
from .support.newborn import submission
from .support.offsets import settled
from .support.topics import mark, read_messages, read_since, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]
CATALOG = load_catalog()
NEWBORN = set(CATALOG.select(bundle_code="newborn").services)
E2E_CASES = scaled(1000, 100)   # tests/support/scale.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def api_port(monkeypatch) -> int:
    port = _free_port()
    monkeypatch.setenv("ONETHING_API_PORT", str(port))
    # the register changes earlier tests left are not this test's business
    monkeypatch.setenv("ONETHING_CASCADE_START", "latest")
    return port


def poison_every_topic(bootstrap: str) -> list[tuple[str, int, int]]:
    """A NUL-bearing event straight onto each kind of topic the processes read — what a broken or
    hostile producer could put there, past every API's validation. Returns their origins."""
    run = uuid.uuid4().hex[:8]
    bad = f"毒{NUL}药"
    form = submission(f"case-poison-{run}-form")
    case = f"case-poison-{run}-decision"
    dept = Actor("staff_health", "department", "department")
    events = [
        (APPLICATIONS, replace(form, payload={**form.payload, "form": {**form.payload["form"], "child_name": bad}})),
        (decisions_topic("health"), new_event(
            "DecisionRecorded", case, {"task_id": f"{case}:health.birth_certificate:1", "department": "health",
                                       "service_id": "health.birth_certificate", "kind": "case_service",
                                       "outcome": "rejected", "reason": bad, "missing_materials": [], "outputs": {}},
            actor=dept, region_code="440203")),
        (CASES, new_event("CaseEscalated", f"case-poison-{run}-esc",
                          {"escalation_id": f"esc-{run}", "origin": "applicant", "reason": "stuck", "service_id": None,
                           "department": None, "comment": bad},
                          actor=Actor("p_poison", "applicant", "online"), region_code="440203")),
        (REGISTRY_COMPANY, change_event("company", f"91440203MA{run[:7].upper()}X", "changed", {"name": bad},
                                        sequence=1, actor=Actor("register:market_regulation", "register", "register"),
                                        region_code="440203")),
    ]
    task = next(e for e in case_state.start(submission(f"case-poison-{run}-task"), CATALOG)[1]
                if e.type == "TaskDispatched" and e.payload["department"] == "health")
    events.append((tasks_topic("health"), replace(task, payload={**task.payload, "task_id": f"{bad}:1"})))
    sent = produce(bootstrap, events)
    return [(m.topic, m.partition, m.offset) for m in sent]


def test_the_four_demo_paths_through_every_process(settings, running_stack, api_port, database_url):
    poisons: list[tuple[str, int, int]] = []
    dl_since: dict = {}

    every_topic: dict = {}

    def before_start(s):
        skip_history(s.bootstrap_servers, s.database_url)
        dl_since.update(mark(s.bootstrap_servers, [DEADLETTER]))
        every_topic.update(mark(s.bootstrap_servers, case_view.default_topics(CATALOG) + (DEADLETTER,)))
        poisons.extend(poison_every_topic(s.bootstrap_servers))

    ok, cases = run_demo(settings, exit_when_done=True, timeout_s=240, processing_s=0.05, before_start=before_start)
    # every process went on past a poison on each of its topics: the demo's cases came after them
    assert ok, [(c.title, (c.view or {}).get("status")) for c in cases]
    letters = read_since(settings.bootstrap_servers, dl_since, lambda e: e.type == "DeadLettered")
    parked = {(e.payload["origin_topic"], e.payload["origin_partition"], e.payload["origin_offset"]) for e in letters}
    assert set(poisons) <= parked, f"not dead-lettered: {set(poisons) - parked}"
    assert all(NUL not in e.payload["reason"] and "毒" not in e.payload["reason"] for e in letters)
    complete, corrected, rejected, withdrawn = (c.view for c in cases)

    services = {s["service_id"]: s for s in complete["services"]}
    assert set(services) == NEWBORN and all(s["status"] == "approved" for s in services.values())
    child_id = services["police.birth_registration"]["outputs"]["child_resident_id"]
    assert check_resident_id(child_id) is None  # a valid GB 11643 number, issued by the police
    # no personal value in clear on any topic the cases went through (events/personal.py): not the
    # form's, not the materials' references, not the police's output, not in a dead letter
    people = [e_license.DEMO_PEOPLE[k] for k in ("wang_fang", "li_qiang", "zhang_wei", "liu_li", "chen_jing")]
    clear = [child_id, "13800138000", "6222020200112233445", "小满", *(p.resident_id for p in people),
             *(p.name for p in people), *(e_license.id_card_no(p) for p in people)]
    def written_here(m, ev) -> bool:  # the poisons this test wrote in clear, and their dead letters, aside
        if (m.topic, m.partition, m.offset) in poisons:
            return False
        p = ev.payload if ev is not None and ev.type == "DeadLettered" else {}
        return (p.get("origin_topic"), p.get("origin_partition"), p.get("origin_offset")) not in poisons

    raw = [(m.topic, ev.type if ev else None, m.value)
           for m, ev in read_messages(settings.bootstrap_servers, every_topic, timeout_s=60) if written_here(m, ev)]
    assert len(raw) > 50
    leaked = {(topic, kind) for c in clear for topic, kind, value in raw if c.encode() in value}
    assert not leaked, f"personal values in clear on the topics: {sorted(leaked)}"
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM police_household_register WHERE case_id = %s AND record_no = %s",
                           (complete["case_id"], child_id)).fetchone()
        assert row[0] == 1, "the child is in the police household register"
        hrss = conn.execute("SELECT count(*) FROM hrss_social_security_cards WHERE case_id = %s",
                            (complete["case_id"],)).fetchone()[0]
        assert hrss == 1

    # crypto-shredding: once the applicant's keys are destroyed, the police's output kept in the
    # case view (sealed by the police adapter) opens as 已删除 — the read model needs no change
    with psycopg.connect(database_url, autocommit=True) as conn:
        stored = read_case(conn, complete["case_id"])
        sealed = {s["service_id"]: s["outputs"] for s in stored["services"]}["police.birth_registration"]
        assert personal.is_sealed(sealed["child_resident_id"]), "the read model keeps ciphertext only"
        assert keystore.erase(conn, stored["applicant_token"], by="test", reason="e2e") != []
        platform = keystore.platform_keys(lambda: nullcontext(conn), ttl_s=0)
        assert personal.open_fields(platform, sealed)["child_resident_id"] == personal.ERASED

    fixed = {s["service_id"]: s for s in corrected["services"]}
    assert corrected["status"] == "completed" and all(s["status"] == "approved" for s in fixed.values())
    assert max(s["attempt"] for s in fixed.values()) == 2  # re-dispatched after the supplement
    assert any("补正" in t["text_zh"] for t in corrected["timeline"])

    refused = {s["service_id"]: s["status"] for s in rejected["services"]}
    assert rejected["status"] == "completed" and refused["health.birth_certificate"] == "rejected"
    assert refused["police.birth_registration"] == "blocked" and refused["hrss.social_security_card"] == "blocked"

    assert withdrawn["status"] == "withdrawn"
    assert all(s["status"] in ("cancelled", "approved", "rejected") for s in withdrawn["services"])

    # 一办即评 and 办不成事 after the end: the refused certificate is reported and rated 不满意
    assert complete["rating"]["grade"] == "very_satisfied" and complete["rating"]["rectifications"] == []
    assert rejected["rating"]["grade"] == "dissatisfied" and rejected["can_rate"] is False
    rects = rejected["rating"]["rectifications"]
    assert {(r["department"], r["service_id"]) for r in rects} == {("health", None),
                                                                  ("health", "health.birth_certificate")}
    (reported,) = rejected["escalations"]
    assert reported["reason"] == "rejected" and reported["service_id"] == "health.birth_certificate"
    assert reported["status"] == "open" and reported["origin"] == "applicant"



def _completed(database_url: str, case_ids: set[str]) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM case_view WHERE case_id = ANY(%s) AND status = 'completed'",
                            (list(case_ids),)).fetchone()[0]


def test_applications_survive_kill_9_of_every_processing_process_and_the_broker(settings, running_stack, api_port,
                                                                      database_url, bootstrap, tmp_path):
    run = uuid.uuid4().hex[:6]
    cases = [submission(f"case-e2e-{run}-{i:04d}") for i in range(E2E_CASES)]
    case_ids = {c.key for c in cases}
    skip_history(bootstrap, database_url)
    departments = sorted({CATALOG.service(s).department for s in NEWBORN})
    since = mark(bootstrap, [tasks_topic(d) for d in departments])
    start = mark(bootstrap, case_view.default_topics(CATALOG))  # where this test's events begin
    sup = system(tmp_path / "logs", newborn_departments(), env={"ONETHING_SIM_PROCESSING_S": "0"})
    sup.start()
    started = time.monotonic()
    try:
        producer = bus.make_producer(bootstrap)
        bus.publish_all(producer, [("applications", c) for c in cases], timeout=120)
        producer.close()

        assert wait_for(lambda: _completed(database_url, case_ids) >= 30, 300, 0.5), "nothing completes"
        for name in ("core", "read-models", "adapters"):  # dispatch + cascade, every read model, every department
            sup.kill(name, signal.SIGKILL)
        killed_at = _completed(database_url, case_ids)
        # and the broker: kill -9 the lane's single node while the processes come back, start it
        # again after a pause; every client reconnects, nothing is lost or applied twice (the
        # 3-node scenarios — a leader lost, the others serving on — are `onething faults`)
        broker_killed = settings.local_kafka and settings.kafka_nodes == 1
        if broker_killed:
            cluster = local_cluster(settings)
            cluster.stop_node(cluster.nodes[0], hard=True)
            time.sleep(3)
            cluster.start_node(cluster.nodes[0], wait=True, timeout=180)

        def progress() -> bool:
            sup.check()  # the supervisor restarts what was killed
            return _completed(database_url, case_ids) == len(cases)

        assert wait_for(progress, 900, 2), f"{_completed(database_url, case_ids)} of {len(cases)} completed"
        elapsed = time.monotonic() - started
        # before the system stops: the live view has applied everything the log holds (the
        # rebuild below reads it all; a case reads completed before its last events are applied)
        topics = list(case_view.default_topics(CATALOG))
        assert wait_for(lambda: settled(bootstrap, database_url, "case_view", topics, sup.check), 180, 2), \
            "the live case view did not catch up with the log"
    finally:
        sup.stop()
    print(f"\n{len(cases)} newborn cases completed in {elapsed:.0f}s; core, read models and adapters"
          f"{' and the broker' if broker_killed else ''} killed at {killed_at}")

    # data minimisation, read off the task topics themselves: no department received a field,
    # material or input its service does not declare
    tasks = read_since(bootstrap, since, lambda e: e.type == "TaskDispatched" and e.key in case_ids, timeout_s=180)
    assert len({t.payload["task_id"] for t in tasks}) == len(cases) * len(NEWBORN)
    for t in tasks:
        svc = CATALOG.service(t.payload["service_id"])
        assert t.payload["department"] == svc.department
        assert set(t.payload["fields"]) <= {n.id for n in svc.fields}, svc.id
        assert {m["code"] for m in t.payload["materials"]} <= {n.id for n in svc.materials}, svc.id
        assert set(t.payload["inputs"]) <= set(svc.needs), svc.id

    with psycopg.connect(database_url, autocommit=True) as conn:
        # no department processed a task twice: one work item per task, one register record per approval
        per_task = conn.execute(
            "SELECT count(*), count(DISTINCT (department, task_id)) FROM department_work_items WHERE case_id = ANY(%s)",
            (list(case_ids),)).fetchone()
        assert per_task[0] == per_task[1] == len(cases) * len(NEWBORN)
        children = conn.execute("SELECT count(*), count(DISTINCT case_id) FROM police_household_register "
                                "WHERE case_id = ANY(%s)", (list(case_ids),)).fetchone()
        assert children == (len(cases), len(cases))
        dup = conn.execute("SELECT count(*) FROM (SELECT case_id, entry_key FROM case_timeline WHERE case_id = ANY(%s)"
                           " GROUP BY 1, 2 HAVING count(*) > 1) d", (list(case_ids),)).fetchone()[0]
        assert dup == 0, "duplicate timeline rows"

        # the incremental view equals a fresh rebuild from the log
        schema = f"e2e_rebuild_{run}"
        create_schema(conn, schema)
    try:
        fresh = CaseViewProjection(schema, schema=schema, keep=lambda key: key in case_ids)
        rebuild(fresh, bootstrap, database_url, start=start)
        with psycopg.connect(database_url) as conn:
            for cid in sorted(case_ids)[::10]:  # every tenth case, all fields
                assert read_case(conn, cid, schema=schema) == read_case(conn, cid), cid
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            drop_schema(conn, schema)
            conn.execute("DELETE FROM consumer_offsets WHERE consumer = %s", (schema,))
            conn.execute("DELETE FROM processed_events WHERE consumer = %s", (schema,))
