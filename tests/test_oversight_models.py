"""The oversight read models on real PostgreSQL: the supervisor queue, ratings with their
rectifications and the deadline clocks end in the same rows whatever order their topics
interleave (Kafka orders a partition, not several topics), and a repeated event changes nothing.

Each build runs in a transaction that is rolled back, so the shared test database keeps nothing.
"""
from __future__ import annotations

import random
import uuid
from datetime import date, datetime, timedelta, timezone

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from events.envelope import Actor, Event, new_event
from infra import migrations
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic
from projectors.deadlines import DeadlineClockProjection
from projectors.escalation_queue import EscalationQueueProjection, read_escalation, read_queue
from projectors.ratings import RatingsProjection, read_case_rating, read_rectifications

from .support import orders

pytestmark = [pytest.mark.postgres]

APPLICANT = Actor("p_test", "applicant", "online")
SUPERVISOR = Actor("sup", "supervisor", "online")
TAX = Actor("tax", "department", "department")
T0 = datetime(2026, 9, 28, 2, 0, tzinfo=timezone.utc)  # Monday 10:00 in Beijing


def ev(kind: str, case_id: str, payload: dict, actor=APPLICANT, minutes: int = 0) -> Event:
    return new_event(kind, case_id, payload, actor=actor, region_code="440203", occurred_at=T0 + timedelta(minutes=minutes))


def topic_of(e: Event) -> str:
    if e.type in ("TaskDispatched", "TaskCancelled", "RectificationOpened"):
        return tasks_topic(e.payload["department"])
    if e.type in ("DecisionRecorded", "RectificationReplied"):
        return decisions_topic(e.payload["department"])
    if e.type in ("CaseCompleted", "DeadlineBreached") or (e.type == "CaseEscalated" and e.payload["origin"] == "deadline"):
        return CASES
    return APPLICATIONS


def interleave(events: list[Event], seed: int) -> list[Event]:
    """Any order that keeps each topic's own order, with a few redeliveries."""
    return orders.interleave(events, random.Random(seed), topic_of, redeliveries=0.15)


def escalation_story(case_id: str) -> list[Event]:
    eid = f"esc-{case_id}"
    return [
        ev("CaseEscalated", case_id, {"escalation_id": eid, "origin": "deadline", "reason": "overdue",
                                      "service_id": "tax.newborn_premium", "department": "tax", "comment": None}),
        ev("EscalationReplied", case_id, {"escalation_id": eid, "reply": "已督办"}, SUPERVISOR, 60),
        ev("EscalationExtended", case_id, {"escalation_id": eid, "resolve_within_working_days": 8,
                                           "reason": "等待系统恢复"}, SUPERVISOR, 120),
        ev("EscalationResolved", case_id, {"escalation_id": eid, "resolution": "已办结"}, SUPERVISOR, 4000),
    ]


def rating_story(case_id: str) -> list[Event]:
    rid = f"rect-{case_id}"
    return [
        ev("CaseRated", case_id, {"rating_id": f"rating-{case_id}", "grade": "very_dissatisfied", "comment": "太慢",
                                  "services": [{"service_id": "tax.newborn_premium", "grade": "dissatisfied",
                                                "comment": None}]}),
        ev("RectificationOpened", case_id, {"rectification_id": rid, "rating_id": f"rating-{case_id}",
                                            "department": "tax", "service_id": "tax.newborn_premium",
                                            "grade": "dissatisfied", "comment": None,
                                            "due_date": date(2026, 10, 27)}, minutes=1),
        ev("RectificationReplied", case_id, {"rectification_id": rid, "department": "tax", "reply": "已整改"},
           TAX, 600),
    ]


def clock_story(case_id: str) -> list[Event]:
    """Tax asks for a correction on attempt 1, attempt 2 is approved; police is cancelled."""
    def task(sid, dept, attempt, due, minutes):
        return ev("TaskDispatched", case_id, {"task_id": f"{case_id}:{sid}:{attempt}", "department": dept,
                                              "service_id": sid, "kind": "case_service", "fields": {},
                                              "materials": [], "inputs": {}, "due_date": due}, minutes=minutes)

    def decision(sid, dept, attempt, outcome, minutes):
        return ev("DecisionRecorded", case_id, {"task_id": f"{case_id}:{sid}:{attempt}", "department": dept,
                                                "service_id": sid, "kind": "case_service", "outcome": outcome,
                                                "reason": None, "missing_materials": [], "outputs": {}},
                  Actor(dept, "department", "department"), minutes)
    sid = "tax.newborn_premium"
    return [
        task(sid, "tax", 1, date(2026, 10, 9), 1),
        task("police.birth_registration", "police", 1, date(2026, 10, 8), 1),
        decision(sid, "tax", 1, "correction_requested", 30),
        task(sid, "tax", 2, date(2026, 10, 12), 3000),
        decision(sid, "tax", 2, "approved", 3100),
        ev("TaskCancelled", case_id, {"task_id": f"{case_id}:police.birth_registration:1", "department": "police",
                                      "service_id": "police.birth_registration", "reason": "x"}, minutes=3200),
    ]


@pytest.fixture(scope="module")
def conn(database_url):
    migrations.migrate(database_url)
    with psycopg.connect(database_url) as c:
        yield c


def build(conn, projection, events: list[Event], read) -> object:
    """Apply with the runner's rule (each event id once), read, roll back."""
    tx = conn.transaction(force_rollback=True)
    with tx:
        seen = set()
        for e in events:
            if e.id in seen:
                continue
            seen.add(e.id)
            projection.apply(conn, e)
        return read()


def clocks(conn, case_id: str):
    return conn.execute("SELECT scope, subject_id, department, attempt, due_date, paused_on, closed_at IS NOT NULL "
                        "FROM deadline_clocks WHERE case_id = %s ORDER BY scope, subject_id", (case_id,)).fetchall()


def escalation_row(conn, case_id: str):
    return read_escalation(conn, f"esc-{case_id}", today=date(2026, 10, 30))


def rating_rows(conn, case_id: str):
    return (read_case_rating(conn, case_id, today=date(2026, 10, 30)),
            [r for r in read_rectifications(conn, "tax", status="all", today=date(2026, 10, 30))
             if r["case_id"] == case_id])


CASE = f"case-om-{uuid.uuid4().hex[:8]}"
STORIES = {"escalation": (escalation_story, EscalationQueueProjection, escalation_row),
           "rating": (rating_story, RatingsProjection, rating_rows),
           "clock": (clock_story, DeadlineClockProjection, clocks)}


def test_the_stories_in_order_give_what_a_supervisor_and_a_department_expect(conn):
    esc = build(conn, EscalationQueueProjection(), escalation_story(CASE), lambda: escalation_row(conn, CASE))
    assert esc["status"] == "resolved" and esc["reply"] == "已督办" and esc["resolve_within"] == 8
    # opened Monday 28 Sep: reply in 3 working days (29, 30 Sep, 8 Oct), resolve in 8 (… 9, 10 Sat, 12, 13, 14 Oct)
    assert esc["reply_due"] == date(2026, 10, 8) and esc["resolve_due"] == date(2026, 10, 14)
    rating, rects = build(conn, RatingsProjection(), rating_story(CASE), lambda: rating_rows(conn, CASE))
    assert rating["grade"] == "very_dissatisfied" and rating["grade_label"]["zh"] == "非常不满意"
    assert [(r["status"], r["reply"]) for r in rects] == [("replied", "已整改")]
    rows = build(conn, DeadlineClockProjection(), clock_story(CASE), lambda: clocks(conn, CASE))
    assert rows == [("service", "police.birth_registration", "police", 1, date(2026, 10, 8), None, True),
                    ("service", "tax.newborn_premium", "tax", 2, date(2026, 10, 12), None, True)]


@pytest.mark.parametrize("forged_first", [False, True])
def test_another_departments_reply_never_closes_a_rectification(conn, forged_first):
    """Only the rectification's own department replies; a reply in another department's name (on
    that department's own topic) is ignored, before or after the opening."""
    rated, opened, replied = rating_story(CASE)
    forged = ev("RectificationReplied", CASE, {"rectification_id": f"rect-{CASE}", "department": "police",
                                               "reply": "冒名"}, Actor("police", "department", "department"), 300)
    story = [rated, forged, opened] if forged_first else [rated, opened, forged]
    _rating, rects = build(conn, RatingsProjection(), story, lambda: rating_rows(conn, CASE))
    assert [(r["department"], r["status"], r["reply"]) for r in rects] == [("tax", "open", None)]
    _rating, rects = build(conn, RatingsProjection(), [*story, replied], lambda: rating_rows(conn, CASE))
    assert [(r["status"], r["reply"]) for r in rects] == [("replied", "已整改")]

    def rectification_clock(events):
        rows = build(conn, DeadlineClockProjection(), events, lambda: clocks(conn, CASE))
        return [(r[2], r[6]) for r in rows if r[0] == "rectification"]

    assert rectification_clock(story) == [("tax", False)], "the forged reply stopped the 15-day clock"
    assert rectification_clock([*story, replied]) == [("tax", True)]


def test_a_correction_pauses_the_service_clock_until_the_next_attempt(conn):
    story = clock_story(CASE)[:3]
    rows = build(conn, DeadlineClockProjection(), story, lambda: clocks(conn, CASE))
    tax = next(r for r in rows if r[1] == "tax.newborn_premium")
    assert tax[5] == date(2026, 9, 28) and tax[6] is False  # paused on the day asked, still open


@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(sorted(STORIES)), seed=st.integers(0, 2**32 - 1))
def test_any_interleaving_of_the_topics_gives_the_same_rows(conn, which, seed):
    story, projection, read = STORIES[which]
    events = story(CASE)
    expected = build(conn, projection(), events, lambda: read(conn, CASE))
    assert build(conn, projection(), interleave(events, seed), lambda: read(conn, CASE)) == expected


def test_the_queue_lists_open_escalations_most_urgent_first_with_overdue_flags(conn):
    a, b = f"{CASE}-a", f"{CASE}-b"
    story = escalation_story(a)[:1] + [
        ev("CaseEscalated", b, {"escalation_id": f"esc-{b}", "origin": "applicant", "reason": "stuck",
                                "service_id": None, "department": None, "comment": "没有进展"}, minutes=-5000)]

    def read():
        return [q for q in read_queue(conn, status="open", today=date(2026, 10, 13)) if q["case_id"] in (a, b)]
    items = build(conn, EscalationQueueProjection(), story, read)
    assert [q["case_id"] for q in items] == [b, a]                       # b was opened days earlier
    assert all(q["reply_overdue"] and q["overdue"] for q in items)       # nobody replied by 13 Oct
