"""Start the system's consumers at the log's current end, so an end-to-end test is not queued
behind every event earlier tests left on the shared test stack."""
from __future__ import annotations

import time

import psycopg
from kafka import KafkaConsumer, OffsetAndMetadata
from kafka.errors import CommitFailedError

from catalog.loader import load_catalog
from infra.supervisor import demo_departments
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic

from .offsets import end_offsets


def _commit_at_end(bootstrap: str, group: str, topics: list[str], timeout_s: float = 45.0) -> None:
    """A group whose members died a moment ago refuses outside commits until their sessions
    expire (UnknownMemberId): retry until then."""
    ends = end_offsets(bootstrap, topics)
    deadline = time.monotonic() + timeout_s
    while True:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        try:
            consumer.assign(list(ends))
            consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in ends.items()})
            return
        except CommitFailedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
        finally:
            consumer.close()


def _store_at_end(bootstrap: str, database_url: str, name: str, topics: list[str]) -> None:
    ends = end_offsets(bootstrap, topics)
    with psycopg.connect(database_url) as conn:
        conn.cursor().executemany(
            "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
            [(name, tp.topic, tp.partition, off) for tp, off in ends.items()])


def skip_history(bootstrap: str, database_url: str) -> None:
    departments = sorted(load_catalog().departments)
    decisions = [decisions_topic(d) for d in departments]
    _commit_at_end(bootstrap, "dispatch", [APPLICATIONS, *decisions])
    for dept in demo_departments():
        _commit_at_end(bootstrap, f"adapter.{dept}", [tasks_topic(dept)])
    every = [APPLICATIONS, CASES, *(tasks_topic(d) for d in departments), *decisions]
    for projection in ("case_view", "deadlines", "escalation_queue", "ratings", "kpis"):  # stored in PostgreSQL
        _store_at_end(bootstrap, database_url, projection, every)
