"""Read models in PostgreSQL, effectively once: rows and consumer offsets in one transaction.

A projection is a class with a name, the topics it reads, and `apply(conn, event)` that
writes rows. The runner owns the rest: on partition assignment it seeks to the offsets
stored in `consumer_offsets` (not Kafka's committed offsets), it applies each batch in one
transaction that also records each event id in `processed_events` (so a repeated derived
event is dropped) and the next offset, and only then moves on. A crash anywhere loses
nothing and applies nothing twice. Kafka offsets are committed too, but only so
`onething status` can show lag.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psycopg
import structlog
from psycopg import sql
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

from events import bus, codec
from events.codec import DecodeError
from events.deadletter import dead_letter
from events.envelope import Event
from infra import metrics

log = structlog.get_logger(__name__)


class Projection(Protocol):
    name: str
    topics: tuple[str, ...]

    def apply(self, conn: psycopg.Connection, event: Event) -> None: ...

    def reset(self, conn: psycopg.Connection) -> None:
        """Empty the read model's tables (for a rebuild from the log)."""


def stored_offsets(conn: psycopg.Connection, consumer: str) -> dict[TopicPartition, int]:
    rows = conn.execute("SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer = %s",
                        (consumer,)).fetchall()
    return {TopicPartition(t, p): o for t, p, o in rows}


class _SeekFromDatabase(ConsumerRebalanceListener):
    def __init__(self, runner: "ProjectionRunner"):
        self.runner = runner

    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        with psycopg.connect(self.runner.database_url) as conn:
            offsets = stored_offsets(conn, self.runner.projection.name)
        for tp in assigned:
            if tp in offsets:
                self.runner.consumer.seek(tp, offsets[tp])
            else:
                self.runner.consumer.seek_to_beginning(tp)


LAG_EVERY_S = 5.0


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0


class ProjectionRunner:
    def __init__(self, projection: Projection, bootstrap: str, database_url: str,
                 group_prefix: str = "projection"):
        self.projection = projection
        self.bootstrap = bootstrap
        self.database_url = database_url
        self.group = f"{group_prefix}.{projection.name}"
        self.consumer: KafkaConsumer = bus.make_consumer(bootstrap, self.group, max_poll_records=500)
        self.consumer.subscribe(list(projection.topics), listener=_SeekFromDatabase(self))
        self.producer = bus.make_producer(bootstrap)  # for dead letters only
        self.conn = psycopg.connect(database_url)
        self._lag_due = 0.0

    def _wants(self, event: Event) -> bool:
        """A projection may say cheaply which events it ignores (`wants(event)`), e.g. a rebuild of
        a few cases: those skip the per-event idempotence bookkeeping."""
        wants = getattr(self.projection, "wants", None)
        return wants(event) if wants else True

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
        self.conn.close()

    def poll_once(self, timeout_ms: int = 500) -> BatchResult:
        """One poll, applied in one transaction with the offsets of every partition it touched: a
        commit per poll rather than per partition (commits are what a live projection waits on)."""
        result = BatchResult()
        batches = self.consumer.poll(timeout_ms=timeout_ms)
        if batches:
            with self.conn.transaction():
                for tp, messages in batches.items():
                    r = self._apply_batch(tp, messages)
                    result.applied += r.applied
                    result.duplicates += r.duplicates
                    result.dead_lettered += r.dead_lettered
            self.consumer.commit_async()  # for lag reporting only; the database is the truth
        now = time.monotonic()
        if now >= self._lag_due:  # a round trip to the broker: every few seconds, not every poll
            self._lag_due = now + LAG_EVERY_S
            metrics.record_lag(self.consumer, self.group)
        return result

    def _apply_batch(self, tp: TopicPartition, messages) -> BatchResult:
        result = BatchResult()
        name = self.projection.name
        with self.conn.transaction():  # inside poll_once's transaction: a savepoint
            for msg in messages:
                started = time.perf_counter()
                try:
                    event = codec.decode(msg.value)
                except DecodeError as exc:
                    # durable in Kafka before the offset moves past it in this transaction
                    dead_letter(self.producer, self.group, msg, f"DecodeError: {exc}")
                    result.dead_lettered += 1
                    continue
                if not self._wants(event):
                    continue  # not this read model's business: no bookkeeping, the offset still moves
                fresh = self.conn.execute(
                    "INSERT INTO processed_events (consumer, event_id) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING", (name, event.id)).rowcount
                if not fresh:
                    result.duplicates += 1
                    metrics.DUPLICATES_DROPPED.labels(group=self.group).inc()
                    continue
                try:
                    with self.conn.transaction():  # savepoint: one bad event must not poison the batch
                        self.projection.apply(self.conn, event)
                except (ValueError, KeyError, TypeError, psycopg.errors.DataError) as exc:
                    self.conn.execute("DELETE FROM processed_events WHERE consumer = %s AND event_id = %s",
                                      (name, event.id))
                    dead_letter(self.producer, self.group, msg, f"{type(exc).__name__} in {name}")
                    result.dead_lettered += 1
                    continue
                result.applied += 1
                metrics.EVENTS_CONSUMED.labels(group=self.group, topic=msg.topic, event_type=event.type).inc()
                metrics.PROCESSING_SECONDS.labels(group=self.group, event_type=event.type).observe(
                    time.perf_counter() - started)
            self.conn.execute(
                "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, "
                "updated_at = now()", (name, tp.topic, tp.partition, messages[-1].offset + 1))
        return result

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        log.info("projection.start", projection=self.projection.name, topics=list(self.projection.topics))
        while not stop():
            self.poll_once()

    def caught_up(self) -> bool:
        """True when every assigned partition's stored position equals its end offset."""
        assigned = self.consumer.assignment()
        if not assigned:
            return False
        ends = self.consumer.end_offsets(list(assigned))
        return all(self.consumer.position(tp) >= ends[tp] for tp in assigned)


def rebuild(projection: Projection, bootstrap: str, database_url: str,
            progress: Callable[[int, int], None] | None = None) -> int:
    """Drop the read model and its stored offsets, then re-apply the whole log up to its current end."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        projection.reset(conn)
        conn.execute("DELETE FROM consumer_offsets WHERE consumer = %s", (projection.name,))
        conn.execute("DELETE FROM processed_events WHERE consumer = %s", (projection.name,))
    runner = ProjectionRunner(projection, bootstrap, database_url, group_prefix="rebuild")
    try:
        probe = runner.consumer
        parts = [TopicPartition(t, p) for t in projection.topics for p in (probe.partitions_for_topic(t) or ())]
        target = probe.end_offsets(parts)
        total = sum(target.values())
        done = 0
        while True:
            runner.poll_once()
            with psycopg.connect(database_url) as conn:
                stored = stored_offsets(conn, projection.name)
            done = sum(min(stored.get(tp, 0), end) for tp, end in target.items())
            if progress:
                progress(done, total)
            if done >= total:
                return total
    finally:
        runner.close()


def replay_with_progress(settings, projection: Projection, console=None) -> int:
    """Rebuild `projection` from the log with a progress bar of events done / total (on stderr).
    Stop the projection's own process first: two writers would race. Returns events read."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from infra import migrations

    migrations.migrate(settings.database_url)
    console = console or Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task(f"rebuilding {projection.name}", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        total = rebuild(projection, settings.bootstrap_servers, settings.database_url, progress=report)
        progress.update(task, completed=total, total=total)
    return total


# -- a read model in a schema of its own (a test's instance, a shadow rebuild) -----------------------
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema(schema: str) -> str:
    if not SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name must match {SCHEMA_NAME.pattern}, got {schema!r}")
    return schema


def create_schema(conn: psycopg.Connection, schema: str, migration: Path, probe_table: str) -> None:
    """Create `schema` with a read model's tables by running its migration inside it (the migration
    names its tables unqualified). The public schema's tables come from `onething up`'s migrations."""
    check_schema(schema)
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        if conn.execute("SELECT to_regclass(%s)", (f"{schema}.{probe_table}",)).fetchone()[0] is None:
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
            conn.execute(migration.read_text())


def drop_schema(conn: psycopg.Connection, schema: str) -> None:
    if check_schema(schema) == "public":
        raise ValueError("refusing to drop the public schema")
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
