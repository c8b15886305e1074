"""The case views the case view's tests build (tests/test_case_view.py,
tests/test_case_view_fold.py), each in a PostgreSQL schema of its own under a projection name of
its own, so no test resets the live view: `Reference`, a log applied in order without Kafka (and
the module-scoped `reference` fixture), and `OwnView`, a projection runner on the real broker over
a `Topology` of topics (the real ones, or copies of them under a prefix).
"""
from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from kafka import KafkaAdminClient
from psycopg import sql

from events import bus, kafka_auth
from events.envelope import Event
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic
from projectors.case_view import TABLES, CaseViewProjection, create_schema, default_topics, drop_schema, read_case
from projectors.postgres_projection import ProjectionRunner

from .case_view_scenarios import CAT, NEWBORN_DEPARTMENTS, TODAY, real_topic_of, timeline_entries
from .offsets import seed_offsets

RUN = uuid.uuid4().hex[:8]


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


def publish(bootstrap: str, topology: Topology, events: list[Event]) -> None:
    producer = bus.make_producer(bootstrap)
    try:
        bus.publish_all(producer, [(topology.topic_of(e), e) for e in events])
    finally:
        producer.close()


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


def is_done(view: dict | None, events: list[Event]) -> bool:
    return bool(view) and view["status"] in ("completed", "withdrawn") \
        and len(view["timeline"]) == len(timeline_entries(events)) \
        and all(s["status"] in ("approved", "rejected", "blocked", "cancelled") for s in view["services"])
