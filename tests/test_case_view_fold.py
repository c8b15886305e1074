"""The case view's fold without Kafka, on the real PostgreSQL: scenario logs applied straight to a
view of the test's own (`Reference`) — early completions, corrections, any interleaving of the
topics, batches cut anywhere — give the rows, status pages and worklists of applying the log in
order. The same view through the real broker is in tests/test_case_view.py.
"""
from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from events.envelope import Event, new_event
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic
from projectors.case_view import default_topics, drop_schema, read_worklist

from .support import orders
from .support.scale import scaled
from .support.case_view_scenarios import (APPLICANT, CAT, NEWBORN_DEPARTMENTS, SCENARIOS, TODAY,
                                          real_topic_of)
from .support.case_views import RUN, Reference, reference

__all__ = ["reference"]  # a fixture of tests/support/case_views.py: pytest finds it here

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


@pytest.fixture(scope="module")
def batched(database_url):
    ref = Reference(database_url, "batched")
    yield ref
    drop_schema(ref.conn, ref.schema)
    ref.conn.close()


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


def test_default_topics_cover_every_department():
    topics = default_topics(CAT)
    assert topics[:2] == (APPLICATIONS, CASES)
    assert set(topics[2:]) == {f(d) for d in CAT.departments for f in (tasks_topic, decisions_topic)}
