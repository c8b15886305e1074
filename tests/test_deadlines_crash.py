"""The deadline clock crashes between raising its alarms and remembering them: on restart it raises
the same events again (same ids) and the case view, which drops repeats by id, shows each once.
Real broker, real PostgreSQL; the clock's tables and the view live in schemas of this test's own."""
from __future__ import annotations

import uuid
from collections import Counter
from datetime import date, datetime, timezone

import psycopg
import pytest

from events import bus, kafka_auth
from events.envelope import Actor, new_event
from infra import migrations
from infra.topics import CASES
from projectors import case_view
from projectors.deadline_tick import DeadlineTicker
from projectors.deadlines import DeadlineClockProjection, create_schema
from projectors.postgres_projection import ProjectionRunner

from .support.offsets import seed_offsets
from .support.topics import read_since, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

RUN = uuid.uuid4().hex[:8]


class Crash(Exception):
    pass


class CrashingTicker(DeadlineTicker):
    def _mark(self, raised):
        raise Crash("killed after producing, before remembering")


def task(case_id: str, sid: str, dept: str, due: date):
    return new_event("TaskDispatched", case_id,
                     {"task_id": f"{case_id}:{sid}:1", "department": dept, "service_id": sid, "kind": "case_service",
                      "fields": {}, "materials": [], "inputs": {}, "due_date": due},
                     region_code="440203", occurred_at=datetime(2026, 9, 28, 2, tzinfo=timezone.utc))


def test_a_crash_before_the_mark_raises_the_same_ids_and_the_view_shows_each_once(bootstrap, database_url):
    migrations.migrate(database_url)
    schema, prefix = f"dl_crash_{RUN}", f"case-dlc-{RUN}"
    cases = [f"{prefix}-{i}" for i in range(3)]
    keep = lambda key: key.startswith(prefix)  # noqa: E731
    view = case_view.CaseViewProjection(f"cv_dlc_{RUN}", schema=schema, topics=(CASES,), keep=keep)
    with psycopg.connect(database_url, autocommit=True) as admin:
        create_schema(admin, schema)
        case_view.create_schema(admin, schema)
    cases_start = seed_offsets(bootstrap, database_url, view.name, (CASES,))
    producer = bus.make_producer(bootstrap)
    try:
        with psycopg.connect(database_url) as conn:
            clocks = DeadlineClockProjection(f"dl_crash_{RUN}", schema=schema, keep=keep)
            with conn.transaction():
                for cid in cases:
                    clocks.apply(conn, task(cid, "tax.newborn_premium", "tax", date(2026, 10, 12)))
                    clocks.apply(conn, task(cid, "police.birth_registration", "police", date(2026, 10, 9)))
            today = date(2026, 10, 14)  # both overdue: 6 breaches and 6 automatic escalations
            with pytest.raises(Crash):
                CrashingTicker(conn, producer, schema, keep).tick(today)
            again = DeadlineTicker(conn, producer, schema, keep).tick(today)
            assert len(again) == 12
            assert DeadlineTicker(conn, producer, schema, keep).tick(today) == []  # remembered now

        logged = read_since(bootstrap, cases_start, lambda e: keep(e.key))
        copies = Counter(e.id for e in logged)
        assert len(copies) == 12 and set(copies.values()) == {2}  # every alarm twice, under one id
        assert Counter(e.type for e in logged if copies[e.id]) == {"DeadlineBreached": 12, "CaseEscalated": 12}

        runner = ProjectionRunner(view, bootstrap, database_url)
        try:
            def shown() -> int:
                runner.poll_once(timeout_ms=300)
                return runner.conn.execute(f"SELECT count(*) FROM {schema}.case_timeline").fetchone()[0]
            assert wait_for(lambda: shown() >= 12, 30, 0.1)
            assert shown() == 12  # each once: the repeats were dropped by id
        finally:
            runner.close()
    finally:
        producer.close()
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            for table in ("consumer_offsets", "processed_events"):
                admin.execute(f"DELETE FROM {table} WHERE consumer = %s", (view.name,))


def test_the_clock_honours_a_correction_pause_and_a_closing_decision(database_url):
    """Through its SQL: a paused or closed deadline raises nothing, a reopened attempt does."""
    schema, cid = f"dl_pause_{RUN}", f"case-dlp-{RUN}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        create_schema(admin, schema)
    try:
        with psycopg.connect(database_url) as conn:
            clocks = DeadlineClockProjection(f"dl_pause_{RUN}", schema=schema)
            sid = "tax.newborn_premium"

            def decision(outcome: str, attempt: int):
                return new_event("DecisionRecorded", cid, {"task_id": f"{cid}:{sid}:{attempt}", "department": "tax",
                                                           "service_id": sid, "kind": "case_service",
                                                           "outcome": outcome, "reason": None,
                                                           "missing_materials": [], "outputs": {}},
                                 actor=Actor("tax", "department", "department"), region_code="440203")

            ticker = DeadlineTicker(conn, producer=None, schema=schema)  # nothing to produce: never called
            rows = lambda: conn.execute(ticker.select, {"until": date(2027, 1, 1)}).fetchall()  # noqa: E731
            with conn.transaction():
                clocks.apply(conn, task(cid, sid, "tax", date(2026, 10, 12)))
            assert len(rows()) == 1
            with conn.transaction():
                clocks.apply(conn, decision("correction_requested", 1))
            assert rows() == []  # 补正: the clock stands still
            second = task(cid, sid, "tax", date(2026, 10, 15))
            second = second.__class__(second.envelope, {**second.payload, "task_id": f"{cid}:{sid}:2"})
            with conn.transaction():
                clocks.apply(conn, second)
            assert [r[5] for r in rows()] == [date(2026, 10, 15)]  # running again, on the new due date
            with conn.transaction():
                clocks.apply(conn, decision("approved", 2))
            assert rows() == []
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_each_deadlines_member_ticks_the_cases_on_its_own_partitions(bootstrap, fresh_topic):
    """Scale-out: the tick answers for the cases Kafka put on the partitions this member holds,
    computed exactly as the producer's partitioner does."""
    from kafka import KafkaConsumer, TopicPartition

    from projectors.deadline_tick import owned_cases, partition_of

    topic = fresh_topic(partitions=6)
    producer = bus.make_producer(bootstrap)
    placed = {}
    try:
        for i in range(60):
            case_id = f"case-own-{RUN}-{i}"
            meta = bus.publish(producer, topic, new_event("ApplicationWithdrawn", case_id, {"reason": None},
                                                          region_code="440203"))
            placed[case_id] = meta.partition
    finally:
        producer.close()
    assert all(partition_of(cid, 6) == p for cid, p in placed.items())
    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap), enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 3)])
        owns = owned_cases(consumer, topic)
        assert {cid for cid in placed if owns(cid)} == {cid for cid, p in placed.items() if p in (0, 3)}
        assert 0 < sum(map(owns, placed)) < len(placed)
    finally:
        consumer.close()
