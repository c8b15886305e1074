"""One poison event in the middle of a batch, fed to every processor on the real runtime.

The issue: "A test feeds every processor a batch with one poison event in the middle and sees the
other events applied once." The poison is the one that used to stop every case of a province: a
NUL (U+0000) inside a text. Avro and Kafka carry it; PostgreSQL refuses it in `text` (psycopg
will not even send it: DataError) and in `jsonb` (SQLSTATE 22P05). For each processor the NUL
sits in a field that this processor writes to PostgreSQL, so the poison really fails inside it.

Per processor, against the real broker and PostgreSQL, on topics (or, for the cascade, keys and
department lanes) and in schemas and names of this test's own, starting at the topics' end:
5 good events, the poison, 5 good events are produced before the worker is stepped (a fetch the
consumer left in flight may return the first of them alone, so the poll batch is most of them), then
the worker (projectors.runtime.Worker) is stepped until its stored offsets pass them, and
one more good event is produced and must be applied too. What a user would notice is asserted:
- every good event's effect is there exactly once (read-model rows, register records, derived
  events on the output topic by distinct id AND in total), the poison's effect nowhere;
- the poison is dead-lettered exactly once, with its origin (topic, partition, offset), a reason
  that names the failure and quotes nothing of the event, and its original bytes;
- the batch the poison came in really failed as a whole (it was isolated, not polled alone), no
  failure was taken for a transient one, and the partition went on.
"""
from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from catalog.loader import load_catalog
from catalog.subscriptions import Subscriptions, load_subscriptions
from department_adapters.reference import BackendConfig, SimulatedBackend
from department_adapters.reference import registers
from department_adapters.sdk import AdapterProcessor
from events import codec, deadletter
from events.envelope import Actor, Event, derived_event_id, new_event
from infra import migrations
from infra.topics import DEADLETTER, REGISTRY_COMPANY, decisions_topic, tasks_topic
from producers.register_changes import change_event
from projectors import case_state, case_view, deadlines, kpis
from projectors import cascade_plan as plan
from projectors.cascade_processor import CascadeConfig, CascadeProcessor
from projectors.case_view import CaseViewProjection, read_case
from projectors.deadlines import DeadlineClockProjection
from projectors.dispatch import Dispatch
from projectors.escalation_queue import EscalationQueueProjection
from projectors.kpis import KpiProjection
from projectors.postgres_projection import ProjectionProcessor, drop_schema
from projectors.ratings import RatingsProjection
from projectors.runtime import Worker

from .support.cascade_harness import new_uscc
from .support.newborn import as_event_form, newborn_form, newborn_materials, resident_id, submission
from .support.offsets import end_offsets, seed_offsets
from .support.poison import (MARK, NUL, NUL_FAILURES, POISON_TEXT, Topics, dead_letters, drive, emitted, ends_of,
                             forget, keys_on_one_partition, produce)

# a fault scenario per processor: `slow`, so the suite runs it in the fault lane (infra/onething.sh)
pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]

CAT = load_catalog()
RUN = uuid.uuid4().hex[:8]
APPLICANT = Actor("p_test_applicant", "applicant", "online")
POLICE = Actor("staff_police", "department", "department")
REGISTER = Actor("register:market_regulation", "register", "register")
BEFORE, AFTER = 5, 5   # good events before and after the poison in the one batch; then one more


@dataclass
class Scenario:
    processor: Any
    inbox: str                      # the topic the events are produced to
    good: list[Event]               # BEFORE + AFTER in the batch, then one produced once the poison is dead-lettered
    poison: Event
    check: Callable[[psycopg.Connection, list[Event], Event], None]   # the read model / register, as a user sees it
    outputs: tuple[str, ...] = ()   # topics the processor emits on
    derived: Callable[[Event], list[str]] | None = None   # the ids a good event's derived events carry


@dataclass
class Ctx:
    """What a scenario builder gets: names of its own, topic making, and a place for its cleanups."""
    kind: str
    bootstrap: str
    admin: psycopg.Connection
    topics: Topics
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def ident(self) -> str:   # processor name and schema
        return f"poison_{RUN}_{self.kind}"

    @property
    def prefix(self) -> str:  # topics
        return f"poison-{RUN}-{self.kind}"

    def key(self, i) -> str:
        return f"case-{RUN}-{self.kind}-{i}"

    def schema(self, create: Callable[[psycopg.Connection, str], None]) -> str:
        create(self.admin, self.ident)
        self.cleanups.append(lambda: drop_schema(self.admin, self.ident))
        return self.ident

    def rows(self, sql: str, *params) -> dict:
        """First column -> the other columns, of every row the query returns."""
        return {r[0]: tuple(r[1:]) for r in self.admin.execute(sql, params).fetchall()}


def with_payload(event: Event, **changes) -> Event:
    return replace(event, payload={**event.payload, **changes})


def keys_of(good: list[Event], poison: Event) -> list[str]:
    return [e.key for e in (*good, poison)]


# -- dispatch: the case fold; the poison's form value reaches the case state (jsonb) ---------------
class DispatchOnTopics(Dispatch):
    """The dispatch fold reading a topic of the test's own and emitting every derived event to
    another. On the real task topics, other tests' adapters would answer these tasks and a running
    dispatch would fold the answers into these cases' rows of the shared dispatch_cases table."""

    def __init__(self, name: str, inbox: str, outbox: str):
        super().__init__(CAT)
        self.name = self.group = name
        self.topics = (inbox,)
        self.outbox = outbox

    def fold(self, state, event):
        after, derived = super().fold(state, event)
        return after, [(self.outbox, d) for _topic, d in derived]


def dispatch_scenario(ctx: Ctx) -> Scenario:
    inbox, outbox = ctx.topics.make(f"{ctx.prefix}.applications", f"{ctx.prefix}.out")
    good = [submission(ctx.key(i)) for i in range(BEFORE + AFTER + 1)]
    bad = submission(ctx.key("bad"))
    poison = with_payload(bad, form={**bad.payload["form"], "child_name": POISON_TEXT})
    ctx.cleanups.append(lambda: ctx.admin.execute("DELETE FROM dispatch_cases WHERE case_id = ANY(%s)",
                                                  (keys_of(good, poison),)))

    def check(conn, good, poison):
        rows = ctx.rows("SELECT case_id, version FROM dispatch_cases WHERE case_id = ANY(%s)", keys_of(good, poison))
        assert rows == {e.key: (1,) for e in good}, "each case state written once, none for the poison"

    return Scenario(DispatchOnTopics(ctx.ident, inbox, outbox), inbox, good, poison, check,
                    outputs=(outbox,), derived=lambda e: [d.id for d in case_state.step(None, e, CAT)[1]])


# -- case view: a department's rejection reason with a NUL (jsonb rows) -----------------------------
def case_view_scenario(ctx: Ctx) -> Scenario:
    (inbox,) = ctx.topics.make(f"{ctx.prefix}.events")
    schema = ctx.schema(case_view.create_schema)
    projection = CaseViewProjection(ctx.ident, schema=schema, topics=(inbox,), catalog=CAT)
    good = [submission(ctx.key(i)) for i in range(BEFORE + AFTER + 1)]
    case = ctx.key("bad")
    poison = new_event("DecisionRecorded", case,
                       {"task_id": f"{case}:police.birth_registration:1", "department": "police",
                        "service_id": "police.birth_registration", "kind": "case_service", "outcome": "rejected",
                        "reason": POISON_TEXT, "missing_materials": [], "outputs": {}},
                       actor=POLICE, region_code="440203")

    def check(conn, good, poison):
        for e in good:
            view = read_case(conn, e.key, schema=schema, catalog=CAT)
            assert view is not None and view["status"] == "open", e.key
            assert sorted(s["service_id"] for s in view["services"]) == sorted(e.payload["services"])
            assert [t["event_type"] for t in view["timeline"]] == ["ApplicationSubmitted"], "one entry, once"
        for table in ("case_view", "case_service_view", "case_timeline"):
            n = conn.execute(f"SELECT count(*) FROM {schema}.{table} WHERE case_id = %s", (poison.key,)).fetchone()[0]
            assert n == 0, f"the poison left a row in {table}"

    return Scenario(ProjectionProcessor(projection), inbox, good, poison, check)


# -- KPIs: a material code with a NUL (text arrays) -------------------------------------------------
def kpis_scenario(ctx: Ctx) -> Scenario:
    (inbox,) = ctx.topics.make(f"{ctx.prefix}.events")
    schema = ctx.schema(kpis.create_schema)
    projection = KpiProjection(ctx.ident, schema=schema, topics=(inbox,), catalog=CAT)
    good = [submission(ctx.key(i)) for i in range(BEFORE + AFTER + 1)]
    bad = submission(ctx.key("bad"))
    first, *rest = bad.payload["materials"]
    poison = with_payload(bad, materials=[{**first, "code": POISON_TEXT}, *rest])
    mats = newborn_materials()
    fetched = sum(m["source"] == "fetched" for m in mats)

    def check(conn, good, poison):
        keys = keys_of(good, poison)
        cases = ctx.rows(f"SELECT case_id, bundle_code, received_on IS NOT NULL, materials_fetched, materials_uploaded "
                         f"FROM {schema}.kpi_cases WHERE case_id = ANY(%s)", keys)
        assert cases == {e.key: ("newborn", True, fetched, len(mats) - fetched) for e in good}
        refs = ctx.rows(f"SELECT case_id, count(*) FROM {schema}.kpi_case_materials WHERE case_id = ANY(%s) "
                        "GROUP BY case_id", keys)
        assert refs == {e.key: (len(mats),) for e in good}, "each material reference once, none of the poison"

    return Scenario(ProjectionProcessor(projection), inbox, good, poison, check)


# -- deadline clock: a bundle code with a NUL (text) ------------------------------------------------
def deadlines_scenario(ctx: Ctx) -> Scenario:
    (inbox,) = ctx.topics.make(f"{ctx.prefix}.events")
    schema = ctx.schema(deadlines.create_schema)
    projection = DeadlineClockProjection(ctx.ident, schema=schema, topics=(inbox,), catalog=CAT)
    good = [submission(ctx.key(i)) for i in range(BEFORE + AFTER + 1)]
    poison = with_payload(submission(ctx.key("bad")), bundle_code=POISON_TEXT)

    def check(conn, good, poison):
        keys = keys_of(good, poison)
        cases = ctx.rows(f"SELECT case_id, bundle_code FROM {schema}.deadline_cases WHERE case_id = ANY(%s)", keys)
        assert cases == {e.key: ("newborn",) for e in good}
        clocks = ctx.rows(f"SELECT case_id, count(*), bool_and(due_date IS NOT NULL AND closed_at IS NULL) "
                          f"FROM {schema}.deadline_clocks WHERE case_id = ANY(%s) GROUP BY case_id", keys)
        assert clocks == {e.key: (1, True) for e in good}, "one running case clock each, none for the poison"

    return Scenario(ProjectionProcessor(projection), inbox, good, poison, check)


# -- 办不成事 queue: the applicant's comment with a NUL (text) -------------------------------------
def escalation_scenario(ctx: Ctx) -> Scenario:
    (inbox,) = ctx.topics.make(f"{ctx.prefix}.applications")
    projection = EscalationQueueProjection(CAT, name=ctx.ident, schema=ctx.ident)
    ctx.schema(projection.create_schema)
    projection.topics = (inbox,)

    def escalation(case: str, comment: str) -> Event:
        return new_event("CaseEscalated", case,
                         {"escalation_id": f"esc-{case}", "origin": "applicant", "reason": "stuck",
                          "service_id": None, "department": None, "comment": comment},
                         actor=APPLICANT, region_code="440203")

    good = [escalation(ctx.key(i), "提交五天了没有进展") for i in range(BEFORE + AFTER + 1)]
    poison = escalation(ctx.key("bad"), POISON_TEXT)

    def check(conn, good, poison):
        rows = ctx.rows(f"SELECT case_id, escalation_id, opened_at IS NOT NULL AND reply_due IS NOT NULL "
                        f"FROM {ctx.ident}.escalation_queue WHERE case_id = ANY(%s)", keys_of(good, poison))
        assert rows == {e.key: (f"esc-{e.key}", True) for e in good}

    return Scenario(ProjectionProcessor(projection), inbox, good, poison, check)


# -- 好差评: the applicant's rating comment with a NUL (text) -------------------------------------
def ratings_scenario(ctx: Ctx) -> Scenario:
    (inbox,) = ctx.topics.make(f"{ctx.prefix}.applications")
    projection = RatingsProjection(CAT, name=ctx.ident, schema=ctx.ident)
    ctx.schema(projection.create_schema)
    projection.topics = (inbox,)

    def rating(case: str, comment: str) -> Event:
        return new_event("CaseRated", case,
                         {"rating_id": f"rating-{case}", "grade": "satisfied", "comment": comment,
                          "services": [{"service_id": "tax.newborn_premium", "grade": "very_satisfied",
                                        "comment": None}]},
                         actor=APPLICANT, region_code="440203")

    good = [rating(ctx.key(i), "办得很快") for i in range(BEFORE + AFTER + 1)]
    poison = rating(ctx.key("bad"), POISON_TEXT)

    def check(conn, good, poison):
        rows = ctx.rows(f"SELECT case_id, rating_id, grade FROM {ctx.ident}.case_ratings WHERE case_id = ANY(%s)",
                        keys_of(good, poison))
        assert rows == {e.key: (f"rating-{e.key}", "satisfied") for e in good}

    return Scenario(ProjectionProcessor(projection), inbox, good, poison, check)


# -- a department adapter: an upstream output with a NUL, kept in the department's register ----------
SSC = CAT.service("hrss.social_security_card")


def ssc_task(case: str, child_resident_id: str) -> Event:
    """A social security card task as dispatch sends it: the service's own fields and materials."""
    field_ids, material_ids = {n.id for n in SSC.fields}, {n.id for n in SSC.materials}
    form = as_event_form(newborn_form())
    return new_event("TaskDispatched", case, {
        "task_id": f"{case}:{SSC.id}:1", "department": SSC.department, "service_id": SSC.id, "kind": "case_service",
        "fields": {k: v for k, v in form.items() if k in field_ids},
        "materials": [m for m in newborn_materials() if m["code"] in material_ids],
        "inputs": {"child_resident_id": child_resident_id}, "due_date": None}, region_code="440203")


def adapter_scenario(ctx: Ctx) -> Scenario:
    lane = f"hrss_p{RUN}"
    inbox, outbox = ctx.topics.make(tasks_topic(lane), decisions_topic(lane))
    backend = SimulatedBackend("hrss", BackendConfig(processing_s=0.0), catalog=CAT, name=lane)
    born = date.today() - timedelta(days=3)
    good = [ssc_task(ctx.key(i), resident_id("440203", born, f"{100 + 2 * i:03d}")) for i in range(BEFORE + AFTER + 1)]
    poison = ssc_task(ctx.key("bad"), POISON_TEXT)
    tids = [e.payload["task_id"] for e in (*good, poison)]

    def clean() -> None:
        for table, dept in (("hrss_social_security_cards", None), ("department_work_items", "hrss"),
                            ("adapter_decisions", lane)):
            ctx.admin.execute(f"DELETE FROM {table} WHERE task_id = ANY(%s)" + (" AND department = %s" if dept else ""),
                              (tids, dept) if dept else (tids,))
    ctx.cleanups.append(clean)

    def check(conn, good, poison):
        cards = ctx.rows("SELECT task_id, status, child_resident_id FROM hrss_social_security_cards "
                         "WHERE task_id = ANY(%s)", tids)
        assert cards == {e.payload["task_id"]: ("valid", e.payload["inputs"]["child_resident_id"]) for e in good}
        work = ctx.rows("SELECT task_id, count(*), min(outcome) FROM department_work_items WHERE department = 'hrss' "
                        "AND task_id = ANY(%s) GROUP BY task_id", tids)
        assert work == {e.payload["task_id"]: (1, "approved") for e in good}
        stored = ctx.rows("SELECT task_id, count(*) FROM adapter_decisions WHERE department = %s AND task_id = ANY(%s) "
                          "GROUP BY task_id", lane, tids)
        assert stored == {e.payload["task_id"]: (2,) for e in good}
        assert registers.find(conn, "hrss_social_security_cards", poison.payload["task_id"]) is None

    # the SDK's rule for a decision's id: the task's id and the decision's position (accepted, approved)
    return Scenario(AdapterProcessor(backend), inbox, good, poison, check, outputs=(outbox,),
                    derived=lambda e: [derived_event_id(e.id, "decision", str(n)) for n in (0, 1)])


# -- the cascade: a register change whose new name holds a NUL (jsonb) ------------------------------
def cascade_scenario(ctx: Ctx) -> Scenario:
    """The cascade checks that a company change comes on registry.company, so the run goes there
    (on keys of this test that share one partition); its departments are lanes of this test's own
    (tasks.<lane> / decisions.<lane>) with the real subscriptions of tax and hrss."""
    real = load_subscriptions()
    lanes = {d: f"{d}_p{RUN}" for d in ("hrss", "tax")}
    subs = Subscriptions(real.registers, tuple(replace(s, department=lanes[s.department])
                                               for s in real.subscriptions if s.department in lanes))
    for lane in lanes.values():
        ctx.topics.make(tasks_topic(lane), decisions_topic(lane))
    config = CascadeConfig(name=f"cascade.poison-{RUN}", start="latest", ack_timeout_s=600.0, backoff_base_s=600.0,
                           stall_after_s=6000.0, tick_s=1.0)

    def clean() -> None:
        for table in ("cascade_targets", "cascade_tasks", "cascade_changes", "cascade_departments"):
            ctx.admin.execute(f"DELETE FROM {table} WHERE cascade = %s", (config.name,))
    ctx.cleanups.append(clean)

    rng = random.Random()
    partitions = len(end_offsets(ctx.bootstrap, [REGISTRY_COMPANY]))
    keys = keys_on_one_partition(lambda: new_uscc(rng), partitions, BEFORE + AFTER + 2)

    def change(key: str, name: str) -> Event:
        return change_event("company", key, "changed", {"name": name}, sequence=1, actor=REGISTER,
                            region_code="310115")

    good = [change(k, f"上海毒测{i}号有限公司") for i, k in enumerate(keys[:-1])]
    poison = change(keys[-1], POISON_TEXT)

    def check(conn, good, poison):
        keys = keys_of(good, poison)
        changes = ctx.rows("SELECT register_key, targets, completed_at IS NULL FROM cascade_changes "
                           "WHERE cascade = %s AND register_key = ANY(%s)", config.name, keys)
        assert changes == {e.key: (len(lanes), True) for e in good}
        targets = ctx.rows("SELECT register_key, count(*), bool_and(state = 'sent') FROM cascade_targets "
                           "WHERE cascade = %s AND register_key = ANY(%s) GROUP BY register_key", config.name, keys)
        assert targets == {e.key: (len(lanes), True) for e in good}

    def derived(e: Event) -> list[str]:
        ref = plan.ChangeRef.from_event(e)
        return [plan.sync_task(ref, d, f, 1).id for d, f in subs.targets("company", e.payload["changes"]).items()]

    return Scenario(CascadeProcessor(config, subscriptions=subs), REGISTRY_COMPANY, good, poison, check,
                    outputs=tuple(tasks_topic(lane) for lane in lanes.values()), derived=derived)


SCENARIOS = {"dispatch": dispatch_scenario, "case_view": case_view_scenario, "kpis": kpis_scenario,
             "deadlines": deadlines_scenario, "escalation_queue": escalation_scenario, "ratings": ratings_scenario,
             "adapter": adapter_scenario, "cascade": cascade_scenario}


@pytest.fixture(scope="module")
def admin(database_url):
    migrations.migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_a_poison_in_the_middle_of_a_batch_is_dead_lettered_once_and_the_rest_applied_once(
        kind, bootstrap, database_url, admin):
    ctx = Ctx(kind, bootstrap, admin, Topics(bootstrap))
    worker = None
    try:
        s = SCENARIOS[kind](ctx)
        p = s.processor
        seed_offsets(bootstrap, database_url, p.name, p.topics)
        worker = Worker(p, bootstrap, database_url, poll_ms=300)
        ctx.cleanups.append(lambda: forget(admin, worker.name))
        worker.ready(30)
        dl_since = end_offsets(bootstrap, [DEADLETTER])
        out_since = end_offsets(bootstrap, s.outputs) if s.outputs else {}

        run, later = [*s.good[:BEFORE], s.poison, *s.good[BEFORE:-1]], s.good[-1]
        with capture_logs() as logs:
            sent = produce(bootstrap, [(s.inbox, e) for e in run])
            drive(worker, database_url, ends_of(sent), timeout_s=90)   # a bound: a group join under the suite's three lanes took >20 s
            # the partition goes on: an event produced after the poison was dead-lettered is applied
            drive(worker, database_url, ends_of(produce(bootstrap, [(s.inbox, later)])), timeout_s=90)
        group, at = worker.group, sent[BEFORE]

        # the poison came in one batch with good events and failed it as a whole (then isolated). Not
        # necessarily all of them: kafka-python leaves a fetch in flight after a poll, and the broker
        # answers it with the first record batch produced (fetch.min.bytes=1).
        failed = [e["events"] for e in logs if e.get("event") == "runtime.batch_failed" and e.get("group") == group]
        assert failed and max(failed) >= len(run) // 2, f"the poison was not in a batch with the others: {failed}"
        assert worker.stats["retries"] == 0, "the poison was taken for a transient failure"

        # dead-lettered exactly once, with its origin, a reason that names the failure and quotes nothing
        letters = dead_letters(bootstrap, dl_since, group)
        assert len(letters) == 1 and worker.stats["dead_lettered"] == 1, [d.payload["reason"] for d in letters]
        letter = letters[0].payload
        assert (letter["origin_topic"], letter["origin_partition"], letter["origin_offset"]) == \
            (at.topic, at.partition, at.offset)
        reason = letter["reason"]
        assert any(f in reason for f in NUL_FAILURES), f"the reason does not name the failure: {reason!r}"
        for quoted in (MARK, NUL, "\\u0000", s.poison.key):
            assert quoted not in reason, f"the reason quotes the event: {reason!r}"
        assert codec.decode(deadletter.opened(letter)[1]).id == s.poison.id, "the original bytes are kept for a replay"

        # every good event's effect exactly once, the poison's nowhere
        s.check(admin, s.good, s.poison)
        if getattr(p, "dedupe", True):
            done = {str(r[0]) for r in admin.execute("SELECT event_id FROM processed_events WHERE consumer = %s",
                                                     (worker.name,))}
            assert done == {e.id for e in s.good}, "good ids recorded once; the poison's left free for a replay"
        if s.outputs:
            keys = set(keys_of(s.good, s.poison))
            out = emitted(bootstrap, out_since, keep=lambda e: e.key in keys)
            expected = {i for e in s.good for i in s.derived(e)}
            ids = Counter(e.id for e in out)
            assert set(ids) == expected, (f"missing {len(expected - set(ids))}, "
                                          f"unexpected {len(set(ids) - expected)} derived events")
            assert len(out) == len(expected), f"repeated derived events: {[i for i, n in ids.items() if n > 1]}"
            assert not [e for e in out if e.key == s.poison.key], "the poison emitted something"
    finally:
        if worker is not None:
            worker.close()
        for fn in reversed(ctx.cleanups):
            fn()
        ctx.topics.delete()
