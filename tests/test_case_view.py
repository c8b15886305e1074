"""The case view read model against the real broker and the real PostgreSQL.

Events come from the dispatch fold itself (`case_state`), so task and completion ids are the
ones the dispatch processor derives. Every view is built in a PostgreSQL schema of its own
under a projection name of its own, so no test resets the live view.

The scripted tests (happy path, out of order, repeats, rebuild, kill -9) run on a topology of
this module's own: `cvtest-<run>.applications`, `.cases`, `.tasks.<department>`,
`.decisions.<department>`, six partitions each like the real ones. Other engineers' tests run a
dispatch processor and department adapters on the real topics while these run; on the real
topics those would answer this module's tasks with decisions of their own and make exact
assertions flaky. One test runs on the real topics and checks that the view equals the
in-order fold of whatever the log then holds for its case.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from psycopg import sql

from catalog.loader import load_catalog
from events import bus, kafka_auth
from events.envelope import Actor, Event, new_event, now_utc
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic
from projectors import case_state
from projectors.case_view import (TABLES, CaseViewProjection, create_schema, default_topics, drop_schema, read_case,
                                  read_worklist)
from projectors.postgres_projection import ProjectionRunner, rebuild
from projectors.timeline_text import describe

from .support.offsets import caught_up, end_offsets, seed_offsets
from .support.newborn import newborn_form, resident_id, submission
from .support import orders
from .support.scale import scaled
from .support.topics import read_since

pytestmark = [pytest.mark.broker, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parent.parent
CAT = load_catalog()
RUN = uuid.uuid4().hex[:8]
TODAY = date.today()
APPLICANT = Actor("p_test_applicant", "applicant", "online")
CHILD_ID = resident_id(region="440203", born=TODAY - timedelta(days=3), seq="372")
FORM = newborn_form()
PERSONAL = [FORM[k] for k in ("child_name", "mother_name", "contact_mobile", "mother_resident_id",
                              "residence_address", "bank_account_no")] + [CHILD_ID, "结婚证照片不清晰", "不再需要"]


# -- scenarios, folded by the dispatch processor's own pure function ---------------------------
class Clock:
    def __init__(self):
        self.t = now_utc() - timedelta(hours=2)

    def __call__(self):
        self.t += timedelta(seconds=1)
        return self.t


def decision(task: Event, outcome: str, clock: Clock, *, reason=None, missing=(), outputs=None) -> Event:
    p = task.payload
    return new_event("DecisionRecorded", task.key,
                     {"task_id": p["task_id"], "department": p["department"], "service_id": p["service_id"],
                      "kind": "case_service", "outcome": outcome, "reason": reason,
                      "missing_materials": list(missing), "outputs": outputs or {}},
                     actor=Actor(f"staff_{p['department']}", "department", "department"),
                     region_code=task.envelope.region_code, cause=task, occurred_at=clock())


def outputs_of(task: Event) -> dict[str, str]:
    return {o: CHILD_ID if o == "child_resident_id" else f"{o.upper()}-{task.key[-6:]}"
            for o in CAT.service(task.payload["service_id"]).produces}


def approve_all(task: Event, clock: Clock) -> list[Event]:
    return [decision(task, "accepted", clock), decision(task, "approved", clock, outputs=outputs_of(task))]


def police_asks_for_correction(task: Event, clock: Clock) -> list[Event]:
    if task.payload["service_id"] == "police.birth_registration" and task.payload["task_id"].endswith(":1"):
        return [decision(task, "accepted", clock),
                decision(task, "correction_requested", clock, reason="结婚证照片不清晰",
                         missing=["marriage_certificate", "household_register"])]
    return approve_all(task, clock)


def birth_certificate_rejected(task: Event, clock: Clock) -> list[Event]:
    if task.payload["service_id"] == "health.birth_certificate":
        return [decision(task, "rejected", clock, reason="出生医学证明信息不符")]
    return approve_all(task, clock)


def real_topic_of(event: Event) -> str:
    if event.type in ("ApplicationSubmitted", "MaterialsSupplemented", "ApplicationWithdrawn"):
        return APPLICATIONS
    if event.type in ("TaskDispatched", "TaskCancelled"):
        return tasks_topic(event.payload["department"])
    if event.type == "DecisionRecorded":
        return decisions_topic(event.payload["department"])
    if event.type == "CaseCompleted":
        return CASES
    raise AssertionError(event.type)


NEWBORN_DEPARTMENTS = sorted({CAT.service(s).department for s in CAT.select(bundle_code="newborn").services})


class Topology:
    """Where each event goes: the real topics (prefix None) or copies of them under a prefix."""

    def __init__(self, prefix: str | None = None):
        self.prefix = prefix

    def name(self, real: str) -> str:
        return f"{self.prefix}.{real}" if self.prefix else real

    def topic_of(self, event: Event) -> str:
        return self.name(real_topic_of(event))

    @property
    def topics(self) -> tuple[str, ...]:
        if not self.prefix:
            return default_topics(CAT)
        return tuple(self.name(t) for t in (APPLICATIONS, CASES, *map(tasks_topic, NEWBORN_DEPARTMENTS),
                                            *map(decisions_topic, NEWBORN_DEPARTMENTS)))


REAL = Topology()


@pytest.fixture(scope="module")
def topology(bootstrap):
    topo = Topology(f"cvtest-{RUN}")
    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap))
    admin.create_topics([NewTopic(t, 6, 1) for t in topo.topics])
    yield topo
    try:
        admin.delete_topics(list(topo.topics))
    finally:
        admin.close()


def scenario(case_id: str, policy=approve_all, *, withdraw_after: int | None = None) -> list[Event]:
    """The log of one case in the order the system writes it: the applicant's and the
    departments' facts, and what the dispatch fold derives from each."""
    clock = Clock()
    sub = submission(case_id, promised=("discharge_summary",))
    sub = replace(sub, envelope=replace(sub.envelope, occurred_at=clock()))
    state, out = case_state.start(sub, CAT)
    log, queue, decided = [sub, *out], [e for e in out if e.type == "TaskDispatched"], 0

    def fold(event: Event) -> None:
        nonlocal state
        state, derived = case_state.step(state, event, CAT)
        log.extend([event, *derived])
        queue.extend(e for e in derived if e.type == "TaskDispatched")

    while queue and not state.done:
        task = queue.pop(0)
        for dec in policy(task, clock):
            fold(dec)
            decided += 1
            if dec.payload["outcome"] == "correction_requested":
                fold(new_event("MaterialsSupplemented", case_id,
                               {"materials": [{"code": m, "source": "uploaded", "ref": f"doc-{m}"}
                                              for m in dec.payload["missing_materials"]], "form": {}},
                               actor=APPLICANT, region_code="440203", occurred_at=clock()))
            if decided == withdraw_after:
                fold(new_event("ApplicationWithdrawn", case_id, {"reason": "不再需要"}, actor=APPLICANT,
                               region_code="440203", occurred_at=clock()))
                if queue:  # a department decides a task after it was cancelled: the fold ignores it
                    late = decision(queue[0], "approved", clock, outputs=outputs_of(queue[0]))
                    fold(late)
                break
    return log


SCENARIOS = {
    "happy": lambda cid: scenario(cid),
    "correction": lambda cid: scenario(cid, police_asks_for_correction),
    "rejected": lambda cid: scenario(cid, birth_certificate_rejected),
    "withdrawn": lambda cid: scenario(cid, withdraw_after=3),
}


def publish(bootstrap: str, topology: Topology, events: list[Event]) -> None:
    producer = bus.make_producer(bootstrap)
    try:
        bus.publish_all(producer, [(topology.topic_of(e), e) for e in events])
    finally:
        producer.close()


def timeline_entries(events: list[Event]) -> list[Event]:
    """The events the timeline shows, once each (a fact by event id, a task by task id)."""
    seen, out = set(), []
    for e in events:
        key = e.payload.get("task_id") if e.type in ("TaskDispatched", "TaskCancelled") else e.id
        if (e.type, key) not in seen:
            seen.add((e.type, key))
            out.append(e)
    return out


def snapshot(conn: psycopg.Connection, schema: str, case_ids) -> dict[str, list[tuple]]:
    """Every row of the view's tables for these cases."""
    out = {}
    for table in TABLES:
        rows = conn.execute(sql.SQL("SELECT * FROM {} WHERE case_id = ANY(%s)").format(sql.Identifier(schema, table)),
                            (list(case_ids),)).fetchall()
        out[table] = sorted(rows, key=repr)
    return out


# -- views of the test's own ---------------------------------------------------------------------


def delete_groups(bootstrap: str, groups: list[str]) -> None:
    """Leave no consumer group behind in `onething status` (best effort, one by one: a group
    that never existed, or whose dead member's session has not expired, is skipped)."""
    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap))
    try:
        existing = {g["group_id"] for g in admin.list_groups()}
        for group in groups:
            if group in existing:
                try:
                    admin.delete_groups([group])
                except Exception:  # noqa: BLE001
                    pass
    finally:
        admin.close()


class OwnView:
    """A case view under a name and in a schema of its own, seeded to start at the log's end."""

    def __init__(self, bootstrap: str, database_url: str, label: str, topology: Topology, *, seed: bool = True):
        self.bootstrap, self.database_url = bootstrap, database_url
        self.prefix = f"cv-{RUN}-{label}"
        self.name = f"case_view_test_{RUN}_{label}"
        self.schema = f"cv_test_{RUN}_{label}"
        self.conn = psycopg.connect(database_url, autocommit=True)
        create_schema(self.conn, self.schema)
        self.projection = CaseViewProjection(self.name, schema=self.schema, topics=topology.topics,
                                             keep=lambda case_id: case_id.startswith(self.prefix))
        self.start = seed_offsets(bootstrap, database_url, self.name, self.projection.topics) if seed else None
        self.runner: ProjectionRunner | None = None
        self.stats = [0, 0, 0]

    def until(self, predicate, timeout_s: float = 45.0) -> bool:
        if self.runner is None:
            self.runner = ProjectionRunner(self.projection, self.bootstrap, self.database_url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = self.runner.poll_once(timeout_ms=200)
            self.stats[0] += r.applied
            self.stats[1] += r.duplicates
            self.stats[2] += r.dead_lettered
            if predicate():
                return True
        ok = predicate()
        if not ok:  # shown with the failure
            print(f"{self.name} did not get there: applied={self.stats[0]} duplicates={self.stats[1]} "
                  f"dead-lettered={self.stats[2]} partitions assigned={len(self.runner.consumer.assignment())}")
        return ok

    def case(self, case_id: str) -> dict | None:
        return read_case(self.conn, case_id, today=TODAY, schema=self.schema)

    def timeline_count(self, case_ids) -> int:
        return self.conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE case_id = ANY(%s)").format(
            sql.Identifier(self.schema, "case_timeline")), (list(case_ids),)).fetchone()[0]

    def close(self, *group_prefixes: str) -> None:
        if self.runner is not None:
            self.runner.close()
        delete_groups(self.bootstrap, [f"{g}.{self.name}" for g in ("projection", "rebuild", *group_prefixes)])
        drop_schema(self.conn, self.schema)
        for table in ("consumer_offsets", "processed_events"):
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE consumer = %s").format(sql.Identifier(table)),
                              (self.name,))
        self.conn.close()


@pytest.fixture(scope="module")
def live(bootstrap, database_url, topology):
    view = OwnView(bootstrap, database_url, "live", topology)
    yield view
    view.close()


class Reference:
    """The view built by applying a log in order, in one transaction, without Kafka."""

    def __init__(self, database_url: str, label: str = "ref"):
        self.schema = f"cv_{label}_{RUN}"
        self.conn = psycopg.connect(database_url, autocommit=True)
        create_schema(self.conn, self.schema)
        self.projection = CaseViewProjection(f"case_view_{label}_{RUN}", schema=self.schema)

    def build(self, events: list[Event]) -> None:
        with self.conn.transaction():
            self.projection.reset(self.conn)
            for e in events:
                self.projection.apply(self.conn, e)

    def build_in_batches(self, events: list[Event], sizes: list[int]) -> None:
        """The log cut into batches of these sizes (the last one repeated), as the runtime hands
        them over: one transaction each, `apply_batch` once per batch."""
        self.projection.reset(self.conn)
        i, sizes = 0, list(sizes)
        while i < len(events):
            n = sizes.pop(0) if len(sizes) > 1 else sizes[0]
            with self.conn.transaction():
                self.projection.apply_batch(self.conn, events[i:i + n])
            i += n

    def case(self, case_id: str) -> dict | None:
        return read_case(self.conn, case_id, today=TODAY, schema=self.schema)

    def snapshot(self, case_ids) -> dict:
        return snapshot(self.conn, self.schema, case_ids)


@pytest.fixture(scope="module")
def reference(database_url):
    ref = Reference(database_url)
    yield ref
    drop_schema(ref.conn, ref.schema)
    ref.conn.close()


@pytest.fixture(scope="module")
def batched(database_url):
    ref = Reference(database_url, "batched")
    yield ref
    drop_schema(ref.conn, ref.schema)
    ref.conn.close()


def is_done(view: dict | None, events: list[Event]) -> bool:
    return bool(view) and view["status"] in ("completed", "withdrawn") \
        and len(view["timeline"]) == len(timeline_entries(events)) \
        and all(s["status"] in ("approved", "rejected", "blocked", "cancelled") for s in view["services"])


# -- the tests ---------------------------------------------------------------------------------
def test_happy_path_every_service_approved_with_outputs_and_a_readable_timeline(live, reference, bootstrap,
                                                                               topology):
    cid = f"{live.prefix}-happy"
    events = SCENARIOS["happy"](cid)
    publish(bootstrap, topology, events)
    assert live.until(lambda: is_done(live.case(cid), events))
    view = live.case(cid)

    assert view["status"] == "completed" and view["status_label"] == {"zh": "已办结", "en": "Completed"}
    assert view["bundle_code"] == "newborn" and view["bundle_label"] == {"zh": "新生儿出生", "en": "Birth of a child"}
    assert view["receipt_no"] == f"R-{cid[-8:]}" and view["applicant_token"] == "p_test_applicant"
    assert view["channel"] == "online" and view["region_code"] == "440203"
    assert len(view["services"]) == 9 and {s["status"] for s in view["services"]} == {"approved"}
    assert view["departments"] == ["disease_control", "health", "hrss", "medical_insurance", "police", "tax"]
    police = next(s for s in view["services"] if s["service_id"] == "police.birth_registration")
    assert police["outputs"] == {"child_resident_id": CHILD_ID}
    assert police["department_label"]["zh"] == "公安机关" and police["label"]["zh"] == "出生登记（户口登记）"
    assert police["due_date"] is not None and police["working_days_left"] is None  # decided
    assert view["due_date"] == max(s["due_date"] for s in view["services"])
    assert view["missing"] == [] and view["completed_at"] and view["submitted_at"] < view["completed_at"]

    # the timeline: every event once, in causal order, as sentences
    shown = timeline_entries(events)
    assert [t["event_type"] for t in view["timeline"]] == [e.type for e in shown]
    assert [(t["text_zh"], t["text_en"]) for t in view["timeline"]] == [describe(e, CAT) for e in shown]
    first, last = view["timeline"][0], view["timeline"][-1]
    assert first["text_zh"] == "申请已提交（新生儿出生一件事，9个事项；电子证照免提交2项；容缺后补1项）"
    assert first["text_en"].startswith("Application submitted (Birth of a child, 9 services")
    assert first["actor_role"] == "applicant" and first["channel"] == "online"
    assert last["text_zh"] == "全部事项已办结（9项）" and last["text_en"] == "All services completed (9 approved)"
    assert any(t["text_zh"] == "已分派至公安机关：出生登记（户口登记）" + f"，应于{police['due_date']}前办结"
               for t in view["timeline"])
    assert any(t["text_en"] == "Public security (police) approved: Household registration of a birth"
               for t in view["timeline"])
    texts = " ".join(t["text_zh"] + t["text_en"] for t in view["timeline"])
    assert not [p for p in PERSONAL if p in texts]

    reference.build(events)
    assert reference.case(cid) == view
    assert reference.snapshot([cid]) == snapshot(live.conn, live.schema, [cid])


def test_out_of_order_delivery_across_topics_ends_in_the_right_state(live, reference, bootstrap, topology):
    cid = f"{live.prefix}-correction"
    events = SCENARIOS["correction"](cid)
    decisions = [e for e in events if e.type == "DecisionRecorded"]
    derived = [e for e in events if e.type in ("TaskDispatched", "CaseCompleted")]
    facts = [e for e in events if real_topic_of(e) == APPLICATIONS]
    assert len(decisions) + len(derived) + len(facts) == len(events)
    services = f"SELECT service_id, status, attempt FROM {live.schema}.case_service_view WHERE case_id = %s"

    # 1. every decision before any task, and the attempt-2 decision before the supplement
    publish(bootstrap, topology, decisions)
    assert live.until(lambda: len(live.conn.execute(services, (cid,)).fetchall()) == 9)
    rows = {sid: (status, attempt) for sid, status, attempt in live.conn.execute(services, (cid,))}
    assert rows["police.birth_registration"] == ("approved", 2)  # attempt 2 outranks the correction
    assert live.case(cid) is None  # recorded, but not shown before the submission is seen

    # 2. the tasks and the completion, still before the submission and the supplement
    publish(bootstrap, topology, derived)
    assert live.until(lambda: live.timeline_count([cid]) == len(decisions) + len(derived))
    rows = {sid: (status, attempt) for sid, status, attempt in live.conn.execute(services, (cid,))}
    assert set(rows.values()) == {("approved", 1), ("approved", 2)}  # TaskDispatched did not move them back

    # 3. the submission and the supplement last
    publish(bootstrap, topology, facts)
    assert live.until(lambda: is_done(live.case(cid), events))
    view = live.case(cid)
    assert view["status"] == "completed" and view["missing"] == []
    police = next(s for s in view["services"] if s["service_id"] == "police.birth_registration")
    assert police["status"] == "approved" and police["attempt"] == 2 and police["outputs"] == {"child_resident_id": CHILD_ID}
    zh = [t["text_zh"] for t in view["timeline"]]
    correction = zh.index("需要补正：出生登记（户口登记）（公安机关），请补交：结婚证、居民户口簿")
    assert zh[correction + 1] == "已补交材料：结婚证、居民户口簿"
    assert zh[correction + 2].startswith("已分派至公安机关：出生登记（户口登记）（补正后第2次分派）")

    reference.build(events)  # the same log applied in the order it was written
    assert view == reference.case(cid)
    assert snapshot(live.conn, live.schema, [cid]) == reference.snapshot([cid])


def test_a_completion_seen_before_the_rejection_shows_neither_blocked_nor_completed_too_early(reference):
    """CI caught this: CaseCompleted (topic `cases`) overtook health's rejection (topic
    `decisions.health`) and the status page said 办结 with the birth certificate 'blocked'."""
    cid = f"cv-{RUN}-early-completion"
    events = SCENARIOS["rejected"](cid)
    rejection = next(e for e in events if e.payload.get("outcome") == "rejected")
    early = [e for e in events if e is not rejection]
    reference.build(early)
    view = reference.case(cid)
    services = {s["service_id"]: s["status"] for s in view["services"]}
    assert services["health.birth_certificate"] == "dispatched"  # not taken for a blocked one
    assert {s for s, status in services.items() if status == "blocked"}  # its dependants are
    assert view["status"] == "open"  # not 办结 while a service still shows 办理中

    reference.build([*early, rejection])
    view = reference.case(cid)
    assert view["status"] == "completed"
    assert {s["service_id"]: s["status"] for s in view["services"]}["health.birth_certificate"] == "rejected"


def test_correction_shows_what_is_missing_and_the_worklist(reference):
    cid = f"cv-{RUN}-partial"
    events = SCENARIOS["correction"](cid)
    asked = next(i for i, e in enumerate(events) if e.payload.get("outcome") == "correction_requested")
    reference.build(events[:asked + 1])
    view = reference.case(cid)
    assert view["status"] == "awaiting_applicant" and view["status_label"]["zh"] == "待补正"
    assert view["missing"] == [
        {"code": "marriage_certificate", "label": {"zh": "结婚证", "en": "Marriage certificate"},
         "services": ["police.birth_registration"]},
        {"code": "household_register", "label": {"zh": "居民户口簿", "en": "Household register (hukou booklet)"},
         "services": ["police.birth_registration"]}]
    police = next(s for s in view["services"] if s["service_id"] == "police.birth_registration")
    assert police["status"] == "correction_requested" and police["reason"] == "结婚证照片不清晰"
    assert police["working_days_left"] is not None and view["working_days_left"] is not None
    waiting = next(s for s in view["services"] if s["service_id"] == "tax.newborn_premium")
    assert waiting["status"] == "waiting" and waiting["due_date"] is None
    work = read_worklist(reference.conn, "police", today=TODAY, schema=reference.schema)
    assert [(w["case_id"], w["service_id"], w["status"]) for w in work] == \
        [(cid, "police.birth_registration", "correction_requested")]
    assert work[0]["due_date"] == police["due_date"]
    assert read_worklist(reference.conn, "police", "approved", schema=reference.schema) == []


def test_the_same_events_twice_make_no_duplicate_timeline_row(live, reference, bootstrap, topology):
    cid = f"{live.prefix}-withdrawn"
    events = SCENARIOS["withdrawn"](cid)
    first_task = next(e for e in events if e.type == "TaskDispatched")
    # the same task derived a second time under another id (a dispatcher re-run from another cause)
    rederived = replace(first_task, envelope=replace(first_task.envelope, event_id=str(uuid.uuid4())))
    publish(bootstrap, topology, events)
    publish(bootstrap, topology, [*events, rederived])
    assert live.until(lambda: is_done(live.case(cid), events))
    live.until(lambda: False, timeout_s=2)  # let the repeats arrive too
    view = live.case(cid)

    assert view["status"] == "withdrawn"
    statuses = {s["service_id"]: (s["status"], s["attempt"]) for s in view["services"]}
    assert statuses["disease_control.vaccination_record"] == ("approved", 1)
    assert statuses["health.childbirth_registration"] == ("cancelled", 1)  # the late approval lost
    assert statuses["police.birth_registration"] == ("cancelled", 0)  # never dispatched
    assert live.timeline_count([cid]) == len(timeline_entries(events))
    zh = [t["text_zh"] for t in view["timeline"]]
    assert "申请已撤回" in zh and zh.index("申请已撤回") < zh.index("已取消卫生健康部门的事项：生育登记（生育登记凭证签发）")

    reference.build(events)
    assert view == reference.case(cid)
    before = snapshot(live.conn, live.schema, [cid])
    assert before == reference.snapshot([cid])
    # and past the runner's processed_events guard: apply is idempotent on its own
    with live.conn.transaction():
        for e in [*events, rederived, *reversed(events)]:
            live.projection.apply(live.conn, e)
    assert snapshot(live.conn, live.schema, [cid]) == before


@hsettings(max_examples=scaled(40, 20), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(sorted(SCENARIOS)), seed=st.integers(0, 2**32 - 1))
def test_any_interleaving_of_the_topics_gives_the_same_rows(reference, which, seed):
    cid = f"cv-{RUN}-any-{which}"
    events = _cached_scenario(which, cid)
    reference.build(events)
    expected = reference.snapshot([cid])
    reference.build(interleaved(events, random.Random(seed)))
    assert reference.snapshot([cid]) == expected


def interleaved(events: list[Event], rnd: random.Random) -> list[Event]:
    return orders.interleave(events, rnd, real_topic_of)


def withdrawn_while_completing(cid: str) -> list[Event]:
    """The applicant withdraws just as the rejection completes the case: the intake API took
    the withdrawal, the dispatch fold had already completed the case, the log holds both."""
    events = SCENARIOS["rejected"](cid)
    withdrawal = new_event("ApplicationWithdrawn", cid, {"reason": "不再需要"}, actor=APPLICANT,
                           region_code="440203", occurred_at=events[-1].envelope.occurred_at + timedelta(seconds=1))
    return [*events, withdrawal]


def submitted_twice(cid: str) -> list[Event]:
    """A correction case whose submission was sent twice (a client retry under a new event id)."""
    events = SCENARIOS["correction"](cid)
    again = replace(events[0], envelope=replace(events[0].envelope, event_id=str(uuid.uuid4())))
    return [*events, again]


BATCH_CASES = {**SCENARIOS, "withdrawn-while-completing": withdrawn_while_completing,
               "submitted-twice": submitted_twice}
_batch_logs: list[Event] = []


@hsettings(max_examples=scaled(25, 12), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.sampled_from([1, 2, 7, 40, 500]), min_size=1, max_size=6))
def test_a_batch_gives_the_rows_of_its_events_applied_one_by_one(reference, batched, seed, sizes):
    """What the runtime hands over in one checkpoint (up to 500 events of many cases, topics
    interleaved, repeats past the processed-id guard) gives the status pages and worklists of
    applying the same events one at a time, wherever the batches are cut."""
    if not _batch_logs:
        _batch_logs.extend(e for which, make in BATCH_CASES.items() for e in make(f"cv-{RUN}-batch-{which}"))
    cids = sorted({e.key for e in _batch_logs})
    events = interleaved(_batch_logs, random.Random(seed))
    reference.build(events)
    batched.build_in_batches(events, sizes)
    assert {cid: batched.case(cid) for cid in cids} == {cid: reference.case(cid) for cid in cids}
    for department in NEWBORN_DEPARTMENTS:
        assert read_worklist(batched.conn, department, today=TODAY, schema=batched.schema) == \
            read_worklist(reference.conn, department, today=TODAY, schema=reference.schema)
    assert batched.snapshot(cids) == reference.snapshot(cids)


def test_a_withdrawal_after_the_completion_in_one_batch_leaves_the_blocked_services_blocked(reference, batched):
    """Cases completed and then withdrawn keep showing which services could not be done because
    a service they needed was refused (无法办理), as when the events come one by one; only what
    was still open when the withdrawal arrived shows cancelled."""
    cid = f"cv-{RUN}-withdrawn-late"
    events = withdrawn_while_completing(cid)
    batched.build_in_batches(events, [len(events)])
    view = batched.case(cid)
    assert view["status"] == "withdrawn"
    statuses = {s["service_id"]: s["status"] for s in view["services"]}
    assert statuses["health.birth_certificate"] == "rejected"
    blocked = {sid for sid, status in statuses.items() if status == "blocked"}
    assert blocked and "cancelled" not in statuses.values()
    assert all(s["reason"] == "a service it depends on was not approved" for s in view["services"]
               if s["service_id"] in blocked)
    reference.build(events)
    assert view == reference.case(cid)
    assert batched.snapshot([cid]) == reference.snapshot([cid])


_scenario_cache: dict[str, list[Event]] = {}


def _cached_scenario(which: str, cid: str) -> list[Event]:
    if which not in _scenario_cache:
        _scenario_cache[which] = SCENARIOS[which](cid)
    return _scenario_cache[which]


def test_rebuild_from_the_log_gives_the_rows_of_the_incremental_run(bootstrap, database_url, topology):
    view = OwnView(bootstrap, database_url, "rebuild", topology)
    try:
        logs = {f"{view.prefix}-{which}": SCENARIOS[which](f"{view.prefix}-{which}") for which in SCENARIOS}
        publish(bootstrap, topology, [e for events in logs.values() for e in events])
        assert view.until(lambda: all(is_done(view.case(cid), events) for cid, events in logs.items()))
        incremental = snapshot(view.conn, view.schema, logs)
        views = {cid: view.case(cid) for cid in logs}
        view.runner.close()
        view.runner = None

        calls: list[tuple[int, int]] = []
        total = rebuild(view.projection, bootstrap, database_url, progress=lambda done, tot: calls.append((done, tot)))
        assert calls and calls[-1] == (total, total) and total >= sum(len(e) for e in logs.values())
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        assert snapshot(view.conn, view.schema, logs) == incremental
        assert {cid: view.case(cid) for cid in logs} == views
    finally:
        view.close()


def test_a_rebuild_whose_consumer_fetches_nothing_gets_a_new_one_and_ends(bootstrap, database_url, topology,
                                                                           monkeypatch):
    """The watchdog of projectors/postgres_projection.py: the first consumer of the rebuild is
    made to fetch nothing (as one was seen to, 2026-12-02); after STALL_S the rebuild replaces it,
    says so, and ends with the same rows."""
    import structlog

    from projectors import postgres_projection as pp

    view = OwnView(bootstrap, database_url, "stall", topology)
    try:
        logs = {f"{view.prefix}-happy": SCENARIOS["happy"](f"{view.prefix}-happy")}
        publish(bootstrap, topology, [e for events in logs.values() for e in events])
        assert view.until(lambda: all(is_done(view.case(cid), events) for cid, events in logs.items()))
        incremental = snapshot(view.conn, view.schema, logs)
        view.runner.close()
        view.runner = None

        stuck: list = []
        real_poll = pp.ProjectionRunner.poll_once

        def poll_once(self, timeout_ms: int = 500):
            if not stuck or stuck[0] is self:
                stuck[:1] = [self]
                time.sleep(timeout_ms / 1000)   # the first runner: its partitions, and no record
                return pp.BatchResult(0, 0, 0)
            # the replacement: a fresh member's join and first fetch take longer than the 1 s the
            # stuck one was given (a clean-clone run, 2026-12-02, saw it declared stalled too)
            monkeypatch.setattr(pp, "STALL_S", 60.0)
            return real_poll(self, timeout_ms)

        monkeypatch.setattr(pp, "STALL_S", 1.0)
        monkeypatch.setattr(pp.ProjectionRunner, "poll_once", poll_once)
        with structlog.testing.capture_logs() as logs_seen:
            total = rebuild(view.projection, bootstrap, database_url)
        assert total >= len(logs[f"{view.prefix}-happy"])
        stalled = [e for e in logs_seen if e["event"] == "rebuild.stalled"]
        assert len(stalled) == 1 and stalled[0]["done"] == 0 and stalled[0]["total"] == total
        assert snapshot(view.conn, view.schema, logs) == incremental
    finally:
        view.close()


def test_on_the_real_topics_the_view_is_the_fold_of_what_the_log_holds(bootstrap, database_url, reference):
    """The real topics, with whatever else runs on them: a dispatch processor may fold this case
    too and add its own (mostly identical) events, department adapters may answer its tasks. The
    view must then equal the fold of everything the log holds for the case."""
    view = OwnView(bootstrap, database_url, "real", REAL)
    try:
        cid = f"{view.prefix}-real"
        events = SCENARIOS["happy"](cid)
        publish(bootstrap, REAL, events)

        def converged() -> bool:
            if view.timeline_count([cid]) < len(timeline_entries(events)):
                return False
            reference.build(read_since(bootstrap, view.start, lambda e: e.key == cid))
            return snapshot(view.conn, view.schema, [cid]) == reference.snapshot([cid])

        # 180 s: under pytest-xdist the other worker's processes may be busy on the same real topics
        assert view.until(converged, 180)
        shown = view.case(cid)
        assert shown["bundle_code"] == "newborn" and shown["receipt_no"] == f"R-{cid[-8:]}"
        texts = {(t["text_zh"], t["text_en"]) for t in shown["timeline"]}
        facts = [e for e in events if e.type in ("ApplicationSubmitted", "DecisionRecorded")]
        assert {describe(e, CAT) for e in facts} <= texts
    finally:
        view.close()


def _start_projection(view: OwnView, group_prefix: str, slow_ms: int, log_path: Path) -> subprocess.Popen:
    out = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.run_case_view", view.name, view.schema, view.prefix, group_prefix,
         str(slow_ms), ",".join(view.projection.topics)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "ONETHING_METRICS_PORT": "-1"})


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# a fault scenario on topics and groups of its own: it runs in the test command's lane of the other
# files (infra/onething.sh), which ends earlier than the whole-system lane
def test_kill_9_in_the_middle_ends_with_the_view_of_a_fresh_rebuild(bootstrap, database_url, topology, tmp_path):
    view = OwnView(bootstrap, database_url, "kill", topology)
    fresh = OwnView(bootstrap, database_url, "fresh", topology, seed=False)
    fresh.prefix = view.prefix  # the same cases
    proc = None
    t0 = time.monotonic()
    phase = lambda what: print(f"{time.monotonic() - t0:6.1f}s {what}")  # noqa: E731 (shown on failure)
    try:
        kinds = sorted(SCENARIOS)
        logs = {f"{view.prefix}-{i:03d}": SCENARIOS[kinds[i % len(kinds)]](f"{view.prefix}-{i:03d}")
                for i in range(100)}
        events = [e for log in logs.values() for e in log]
        publish(bootstrap, topology, events)
        ends = end_offsets(bootstrap, view.projection.topics)
        phase(f"published {len(events)} events")
        processed = "SELECT count(*) FROM processed_events WHERE consumer = %s"

        proc = _start_projection(view, "projection", 3, tmp_path / "run-1.log")
        assert wait(lambda: view.conn.execute(processed, (view.name,)).fetchone()[0] >= 500, 60), \
            (tmp_path / "run-1.log").read_text()[-3000:]
        _stop(proc, signal.SIGKILL)  # no shutdown, in the middle of a batch's transaction
        done_before = view.conn.execute(processed, (view.name,)).fetchone()[0]
        phase(f"killed after {done_before} events")
        assert done_before < len(events), "the kill should land in the middle; make the batch bigger"

        # restarted in a new consumer group so it need not wait for the dead member's session to expire:
        # where to resume comes from PostgreSQL, not from the group
        proc = _start_projection(view, "projection-restarted", 0, tmp_path / "run-2.log")
        assert wait(lambda: caught_up(database_url, view.name, ends), 60), (tmp_path / "run-2.log").read_text()[-3000:]
        _stop(proc)
        proc = None
        phase("restarted process caught up")

        # a fresh rebuild from the log, in a schema of its own
        rebuild(fresh.projection, bootstrap, database_url)
        phase("fresh rebuild done")
        assert snapshot(view.conn, view.schema, logs) == snapshot(fresh.conn, fresh.schema, logs)
        assert sum(map(len, (timeline_entries(log) for log in logs.values()))) == view.timeline_count(logs)
        assert all(is_done(view.case(cid), log) for cid, log in logs.items())
    finally:
        if proc is not None:
            _stop(proc, signal.SIGKILL)
        view.close("projection-restarted")
        fresh.close()


def wait(predicate, timeout_s: float, interval: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_default_topics_cover_every_department():
    topics = default_topics(CAT)
    assert topics[:2] == (APPLICATIONS, CASES)
    assert set(topics[2:]) == {f(d) for d in CAT.departments for f in (tasks_topic, decisions_topic)}
