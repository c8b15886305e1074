"""Reference adapters (simulated department backends) against the real broker and PostgreSQL.

Each test runs its departments on topics of its own (`tasks.<lane>` / `decisions.<lane>`,
group `adapter.<lane>`, via `SimulatedBackend(name=lane)`), so it neither sees nor decides
anybody else's tasks; the shared `deadletter` topic is read from its end and filtered by
origin. Case ids are unique per test, so the shared register tables cannot collide.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta

import psycopg
import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from catalog.loader import load_catalog
from catalog.validators import check_resident_id
from department_adapters.reference import BackendConfig, SimulatedBackend, registers
from department_adapters.reference.run import run_all
from department_adapters.sdk import Adapter
from events import bus, deadletter, kafka_auth
from events.envelope import Event, new_event
from infra.topics import DEADLETTER, decisions_topic, tasks_topic

from .support import topics
from .support.newborn import as_event_form, newborn_form, newborn_materials, resident_id

pytestmark = pytest.mark.broker
CATALOG = load_catalog()
NEWBORN = CATALOG.bundle("newborn").services
FAST = BackendConfig(processing_s=0.0)


# -- helpers --------------------------------------------------------------------------------
@pytest.fixture
def lane(bootstrap):
    """`lane("police")` → a name whose task and decision topics exist only for this test."""
    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap))
    created: list[str] = []

    def make(department: str) -> str:
        name = f"{department}_t{uuid.uuid4().hex[:8]}"
        topics = [tasks_topic(name), decisions_topic(name)]
        admin.create_topics([NewTopic(t, 1, 1) for t in topics])
        created.extend(topics)
        return name

    yield make
    if created:
        admin.delete_topics(created)
    admin.close()


@pytest.fixture
def db(database_url) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


class Tail(topics.Tail):
    def decisions(self, task_id: str) -> list[Event]:
        return [e for _, e in self.events if e.type == "DecisionRecorded" and e.payload["task_id"] == task_id]


@contextmanager
def running(backend: SimulatedBackend, bootstrap: str, database_url: str, retry_for_s: float = 1.0):
    adapter = Adapter(backend, bootstrap, database_url, retry_for_s=retry_for_s)
    stop, errors = threading.Event(), []

    def loop() -> None:
        try:
            adapter.run(stop.is_set)
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield adapter
    finally:
        stop.set()
        thread.join(30)
        adapter.close()
    assert not errors, errors


def case_id() -> str:
    return f"case-ref-{uuid.uuid4().hex[:10]}"


def upstream_outputs() -> dict[str, str]:
    """Plausible outputs of earlier services, for tasks that consume them."""
    born = date.today() - timedelta(days=3)
    return {"birth_certificate_no": "O440123456", "birth_medical_certificate": "EL-BMC-O440123456",
            "child_resident_id": resident_id("440203", born, "002"), "medical_insurance_enrolment_no": "YB4402030000000042"}


def task(service_id: str, case: str, attempt: int = 1, *, promised: tuple[str, ...] = (),
         drop: tuple[str, ...] = (), fields: dict | None = None) -> Event:
    """A TaskDispatched as dispatch would send it: only the service's own fields and materials."""
    svc = CATALOG.service(service_id)
    field_ids, material_ids = {n.id for n in svc.fields}, {n.id for n in svc.materials}
    form = {**as_event_form(newborn_form()), **(fields or {})}
    payload = {
        "task_id": f"{case}:{service_id}:{attempt}", "department": svc.department, "service_id": service_id,
        "kind": "case_service", "fields": {k: v for k, v in form.items() if k in field_ids},
        "materials": [m for m in newborn_materials(promised) if m["code"] in material_ids and m["code"] not in drop],
        "inputs": {o: upstream_outputs()[o] for o in svc.consumes}, "due_date": None,
    }
    return new_event("TaskDispatched", case, payload, region_code="440203")


def cancellation(t: Event) -> Event:
    p = t.payload
    return new_event("TaskCancelled", t.key, {"task_id": p["task_id"], "department": p["department"],
                                              "service_id": p["service_id"], "reason": "withdrawn by the applicant"},
                     region_code="440203")


def publish(bootstrap: str, topic: str, *events: Event) -> None:
    producer = bus.make_producer(bootstrap)
    try:
        for e in events:  # one by one, acknowledged: their order on the partition is this order
            bus.publish(producer, topic, e)
    finally:
        producer.close()


def work_item(db: psycopg.Connection, department: str, task_id: str) -> dict | None:
    cur = db.execute("SELECT * FROM department_work_items WHERE department = %s AND task_id = %s",
                     (department, task_id))
    row = cur.fetchone()
    return dict(zip([c.name for c in cur.description], row)) if row else None


def table_of(service_id: str) -> str:
    return registers.REGISTERS[service_id].table


# -- (a) every newborn service: accepted + approved with the catalog's outputs, in its register --
def test_every_newborn_service_is_approved_with_its_outputs_and_registered(running_stack, lane, db):
    departments = sorted({CATALOG.service(s).department for s in NEWBORN})
    assert set(NEWBORN) <= set(registers.REGISTERS), "each newborn service keeps a register of its own"
    names = {d: lane(d) for d in departments}
    case = case_id()
    tasks = {sid: task(sid, case) for sid in NEWBORN}
    tail = Tail(running_stack.bootstrap_servers, *[decisions_topic(n) for n in names.values()])
    stop = threading.Event()
    runner = threading.Thread(target=run_all, args=(running_stack, departments, stop.is_set),
                              kwargs={"configs": {d: FAST for d in departments}, "names": names}, daemon=True)
    runner.start()
    try:
        for sid, t in tasks.items():
            publish(running_stack.bootstrap_servers, tasks_topic(names[CATALOG.service(sid).department]), t)
        tail.until(lambda _: all(len(tail.decisions(t.payload["task_id"])) == 2 for t in tasks.values()), 45)
    finally:
        stop.set()
        runner.join(30)
        tail.close()

    born = date.fromisoformat(newborn_form()["birth_date"])
    for sid, t in tasks.items():
        svc = CATALOG.service(sid)
        first, final = tail.decisions(t.payload["task_id"])
        assert (first.payload["outcome"], final.payload["outcome"]) == ("accepted", "approved"), sid
        outputs = final.payload["outputs"]
        assert set(outputs) == set(svc.produces) and all(outputs.values()), sid
        assert final.payload["department"] == names[svc.department] and final.key == case
        record = registers.find(db, table_of(sid), t.payload["task_id"])
        assert record is not None and record["status"] == "valid" and record["case_id"] == case, sid
        assert record["outputs"] == outputs, sid
        assert work_item(db, svc.department, t.payload["task_id"])["outcome"] == "approved"

    rid = tail.decisions(tasks["police.birth_registration"].payload["task_id"])[1].payload["outputs"]["child_resident_id"]
    assert check_resident_id(rid) is None
    assert rid[:4] == "4402" and rid[6:14] == f"{born:%Y%m%d}"  # region 440203 (or its prefecture on spill-over)
    assert int(rid[16]) % 2 == 0  # the synthetic child is a girl
    household = registers.find(db, "police_household_register", tasks["police.birth_registration"].payload["task_id"])
    assert household["record_no"] == rid and household["birth_date"] == born and household["child_sex"] == "female"
    assert household["birth_certificate_no"] == upstream_outputs()["birth_certificate_no"]
    cert = tail.decisions(tasks["health.birth_certificate"].payload["task_id"])[1].payload["outputs"]
    assert cert["birth_certificate_no"].startswith("O440") and len(cert["birth_certificate_no"]) == 10


# -- (b) the same task delivered twice reaches the backend once ----------------------------------
def test_a_task_delivered_twice_reaches_the_backend_once(bootstrap, database_url, lane, db):
    name = lane("police")
    backend = SimulatedBackend("police", FAST, name=name)
    t = task("police.birth_registration", case_id())
    tid = t.payload["task_id"]
    tail = Tail(bootstrap, decisions_topic(name))
    with running(backend, bootstrap, database_url) as adapter:
        publish(bootstrap, tasks_topic(name), t, t)  # the identical event, twice
        tail.until(lambda _: len(tail.decisions(tid)) == 4)
    tail.close()

    first, again = tail.decisions(tid)[:2], tail.decisions(tid)[2:]
    assert [e.id for e in first] == [e.id for e in again], "a re-delivery re-emits the same decision events"
    assert [e.payload for e in first] == [e.payload for e in again]
    assert backend.stats.calls == 1 and adapter.stats.handled == 1 and adapter.stats.replayed == 1
    assert db.execute("SELECT count(*) FROM police_household_register WHERE task_id = %s", (tid,)).fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM department_work_items WHERE task_id = %s", (tid,)).fetchone()[0] == 1


# -- (c) an outage: retried, decided once it ends, nothing lost ----------------------------------
def test_an_outage_delays_tasks_and_loses_none(bootstrap, database_url, lane, db, tmp_path):
    name = lane("hrss")
    flag = tmp_path / "hrss-down"
    flag.touch()
    backend = SimulatedBackend("hrss", BackendConfig(processing_s=0.0, outage_flag=flag), name=name)
    tasks = [task("hrss.social_security_card", case_id()) for _ in range(3)]
    tail = Tail(bootstrap, decisions_topic(name))
    with running(backend, bootstrap, database_url, retry_for_s=0.5) as adapter:
        publish(bootstrap, tasks_topic(name), *tasks)
        deadline = time.monotonic() + 20
        while adapter.stats.backend_waits < 2 and time.monotonic() < deadline:  # paused, then tried again
            time.sleep(0.1)
        assert adapter.stats.backend_waits >= 2 and backend.stats.unavailable >= 2
        tail.until(lambda _: True, 1)
        assert not tail.events, "nothing is decided while the department is down"
        flag.unlink()
        tail.until(lambda evs: len(evs) == 2 * len(tasks))
    tail.close()

    approved = [e.payload["task_id"] for _, e in tail.events if e.payload["outcome"] == "approved"]
    assert approved == [t.payload["task_id"] for t in tasks], "every task decided, in partition order"
    assert backend.stats.calls == backend.stats.unavailable + len(tasks)
    for t in tasks:
        assert registers.find(db, "hrss_social_security_cards", t.payload["task_id"])["status"] == "valid"


# -- (d) correction and rejection rules ------------------------------------------------------
def test_correction_and_rejection_rules(bootstrap, database_url, lane, db):
    sid = "medical_insurance.childbirth_reimbursement"
    name = lane("medical_insurance")
    config = BackendConfig.from_mapping({
        "processing_s": 0,
        "correct_missing": False,  # only the rule below asks for a missing discharge summary
        "rejections": f"{sid}:bank_name=测试银行",
        "corrections": [{"service": sid, "material": "discharge_summary", "when": "missing",
                         "reason": "请补交出院小结 / please supply the discharge summary"}],
    })
    backend = SimulatedBackend("medical_insurance", config, name=name)
    promised_case, rejected_case, rule_case = case_id(), case_id(), case_id()
    promised = task(sid, promised_case, promised=("medical_invoice",))          # 容缺: invoice promised
    supplemented = task(sid, promised_case, attempt=2)                          # 补正: now uploaded
    rejected = task(sid, rejected_case, fields={"bank_name": "测试银行"})
    by_rule = task(sid, rule_case, drop=("discharge_summary",))
    tail = Tail(bootstrap, decisions_topic(name))
    with running(backend, bootstrap, database_url):
        publish(bootstrap, tasks_topic(name), promised, supplemented, rejected, by_rule)
        tail.until(lambda evs: len(evs) == 8)
    tail.close()

    def final(t: Event) -> dict:
        accepted, last = tail.decisions(t.payload["task_id"])
        assert accepted.payload["outcome"] == "accepted"
        return last.payload

    d = final(promised)
    assert d["outcome"] == "correction_requested" and d["missing_materials"] == ["medical_invoice"]
    assert "住院医疗费用票据" in d["reason"] and "容缺" in d["reason"]
    assert final(supplemented)["outcome"] == "approved", "a re-dispatch after a supplement is decided afresh"
    d = final(rejected)
    assert d["outcome"] == "rejected" and d["reason"].startswith("不符合办理条件：") and "bank_name" not in d["reason"]
    assert "测试银行" not in d["reason"], "a reason names the field, never the applicant's value"
    d = final(by_rule)
    assert d["outcome"] == "correction_requested" and d["missing_materials"] == ["discharge_summary"]
    assert d["reason"] == "请补交出院小结 / please supply the discharge summary"

    table = "medical_insurance_reimbursements"
    assert registers.find(db, table, promised.payload["task_id"]) is None
    assert registers.find(db, table, supplemented.payload["task_id"])["status"] == "valid"
    assert registers.find(db, table, rejected.payload["task_id"]) is None
    item = work_item(db, "medical_insurance", promised.payload["task_id"])
    assert item["outcome"] == "correction_requested" and item["missing"] == ["medical_invoice"] and item["attempt"] == 1
    assert work_item(db, "medical_insurance", rejected.payload["task_id"])["outcome"] == "rejected"


# -- (e) garbage and invalid tasks go to the dead-letter topic; the partition moves on --------
def test_garbage_is_dead_lettered_and_the_next_task_is_decided(bootstrap, database_url, lane):
    name = lane("police")
    backend = SimulatedBackend("police", FAST, name=name)
    case = case_id()
    foreign = task("health.birth_certificate", case)   # a health service on the police topic
    good = task("police.birth_registration", case)
    tail = Tail(bootstrap, DEADLETTER, decisions_topic(name))
    with running(backend, bootstrap, database_url) as adapter:
        producer = bus.make_producer(bootstrap)
        producer.send(tasks_topic(name), key=case.encode(), value=b"\x00not an avro message").get(30)
        producer.close()
        publish(bootstrap, tasks_topic(name), foreign, good)
        tail.until(lambda _: len(tail.decisions(good.payload["task_id"])) == 2)
        mine = lambda: [e for topic, e in tail.events  # noqa: E731
                        if topic == DEADLETTER and e.payload["origin_topic"] == tasks_topic(name)]
        tail.until(lambda _: len(mine()) == 2, 10)
    tail.close()

    letters = sorted(mine(), key=lambda e: e.payload["origin_offset"])
    assert [e.payload["origin_offset"] for e in letters] == [0, 1]
    assert letters[0].payload["reason"].startswith("DecodeError")
    assert b"not an avro message" not in letters[0].payload["original_value"], "sealed to the operator"
    assert deadletter.opened(letters[0].payload)[1] == b"\x00not an avro message"
    assert letters[1].payload["reason"].startswith("InvalidTask") and "belongs to health" in letters[1].payload["reason"]
    assert all(e.payload["consumer"] == f"adapter.{name}" for e in letters)
    assert [e.payload["outcome"] for e in tail.decisions(good.payload["task_id"])] == ["accepted", "approved"]
    assert not tail.decisions(foreign.payload["task_id"])
    assert adapter.stats.dead_lettered == 2


# -- (f) TaskCancelled stops the work -------------------------------------------------------
def test_a_cancelled_task_never_reaches_the_backend_again(bootstrap, database_url, lane, db):
    sid = "police.birth_registration"
    name = lane("police")
    backend = SimulatedBackend("police", FAST, name=name)
    waiting = task(sid, case_id(), promised=("mother_id_card",))   # decided: correction requested
    approved = task(sid, case_id())                                 # decided: approved, then withdrawn
    early = task(sid, case_id())                                    # cancelled before it was handled
    sentinel = task(sid, case_id())
    tail = Tail(bootstrap, decisions_topic(name))
    with running(backend, bootstrap, database_url):
        publish(bootstrap, tasks_topic(name), waiting, approved)
        tail.until(lambda _: len(tail.decisions(approved.payload["task_id"])) == 2)
        calls = backend.stats.calls
        assert calls == 2
        publish(bootstrap, tasks_topic(name), cancellation(waiting), cancellation(approved), cancellation(early),
                waiting, early, sentinel)  # re-deliveries after the cancellations, then a marker
        tail.until(lambda _: len(tail.decisions(sentinel.payload["task_id"])) == 2)
    tail.close()

    assert backend.stats.calls == calls + 1, "only the sentinel reached the backend"
    assert backend.stats.cancelled == 3
    assert not tail.decisions(early.payload["task_id"]), "a task cancelled first is never decided"
    redelivered = tail.decisions(waiting.payload["task_id"])
    assert len(redelivered) == 4 and [e.id for e in redelivered[:2]] == [e.id for e in redelivered[2:]], \
        "a re-delivery after the cancellation replays the stored decision, the backend is not asked again"
    for t in (waiting, approved, early):
        assert work_item(db, "police", t.payload["task_id"])["cancelled_at"] is not None
    assert work_item(db, "police", early.payload["task_id"])["outcome"] is None
    record = registers.find(db, "police_household_register", approved.payload["task_id"])
    assert record["status"] == "cancelled" and record["cancelled_at"] is not None


# -- the pieces, without the broker --------------------------------------------------------
