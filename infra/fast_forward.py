"""Start the system's consumers at the log's current end, so an end-to-end test or the benchmark
is not queued behind every event earlier runs left on a shared stack (never on a live system:
what it skips is never processed).

Every processor resumes from its stored offsets in PostgreSQL (projectors/runtime.py), so this
stores the topics' end offsets there, under each processor's name (a read model's under its
live generation: projectors/generations.py)."""
from __future__ import annotations

import time

import psycopg
from kafka import KafkaConsumer, TopicPartition

from events import kafka_auth
from catalog.loader import load_catalog
from catalog.subscriptions import load_subscriptions
from infra.supervisor import demo_departments
from infra.topics import (APPLICATIONS, AUDIT_READS, CASES, REGISTRY_COMPANY, REGISTRY_PERSON, decisions_topic,
                          tasks_topic)
from projectors import generations


READ_MODELS = ("case_view", "deadlines", "escalation_queue", "ratings", "kpis")


def end_offsets(bootstrap: str, topics) -> dict[TopicPartition, int]:
    """Every partition of `topics` with its end offset. A topic whose metadata has not arrived
    yet must not be left out silently: its consumer would start at its beginning instead. Read
    committed, as the processors read: past an open transaction's first message (the high
    watermark) lies beyond the end a processor sees, and it would take the stored offset for one
    of a log that is gone (projectors/checkpoint.py `beyond_end`)."""
    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap), isolation_level="read_committed")
    try:
        deadline = time.monotonic() + 15
        while True:
            consumer.topics()  # fetches the metadata of every topic
            parts = {t: consumer.partitions_for_topic(t) for t in topics}
            if all(parts.values()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no partition metadata for {[t for t, p in parts.items() if not p]}")
            time.sleep(0.2)
        return consumer.end_offsets([TopicPartition(t, p) for t, ps in parts.items() for p in ps])
    finally:
        consumer.close()


def store_offsets(conn: psycopg.Connection, name: str, ends: dict) -> None:
    """Processor `name` resumes at `ends` ({TopicPartition: offset})."""
    conn.cursor().executemany(
        "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
        [(name, tp.topic, tp.partition, off) for tp, off in ends.items()])


def skip_history(bootstrap: str, database_url: str) -> None:
    departments = sorted(load_catalog().departments)
    decisions = [decisions_topic(d) for d in departments]
    every = [APPLICATIONS, CASES, *(tasks_topic(d) for d in departments), *decisions]
    registers = [REGISTRY_COMPANY, REGISTRY_PERSON, *(decisions_topic(d) for d in load_subscriptions().departments())]
    ends = end_offsets(bootstrap, sorted(set(every) | set(registers) | {AUDIT_READS}))

    def of(topics) -> dict:
        return {tp: o for tp, o in ends.items() if tp.topic in set(topics)}

    with psycopg.connect(database_url) as conn:
        store_offsets(conn, "dispatch", of([APPLICATIONS, *decisions]))
        store_offsets(conn, "cascade", of(registers))
        for dept in demo_departments():
            store_offsets(conn, f"adapter.{dept}", of([tasks_topic(dept)]))
        for name in READ_MODELS:
            store_offsets(conn, generations.current(conn, name), of(every))
        store_offsets(conn, generations.current(conn, "read_audit"), of([AUDIT_READS]))
        # 免申即享 (projectors/proactive.py): its fact topics; `proactive` itself is read from where it is
        store_offsets(conn, "proactive", of([APPLICATIONS, REGISTRY_COMPANY, REGISTRY_PERSON, *decisions]))
