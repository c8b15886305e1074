"""Read models in PostgreSQL on the runtime: rows, processed ids and offsets in one transaction.

A projection has a name, the topics it reads and writes rows for a batch: `apply_batch(conn,
events)` (set-based) or `apply(conn, event)` per event. `ProjectionProcessor` makes it a
processor of the runtime (projectors/runtime.py): the batch's event ids are recorded in
`processed_events` (a repeat is dropped), the rows and the next offsets commit together, a bad
event is isolated and dead-lettered. `ProjectionRunner` is one projection stepped by hand (tests).

Rebuilds. `rebuild` empties a read model in place and re-applies the log (its process stopped;
tests). `shadow_rebuild` — what `onething replay NAME` runs — builds a new generation in a
schema of its own while the live one keeps serving and following the log, then swaps it in
atomically once it has caught up (projectors/generations.py): the status page never sees an
empty or half-built view.
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
from kafka import TopicPartition
from psycopg import sql

from events.envelope import Event

from . import generations
from .checkpoint import Step, stored_offsets  # noqa: F401 (stored_offsets: part of this module's API)
from .runtime import BaseProcessor, Worker

log = structlog.get_logger(__name__)


class Projection(Protocol):
    name: str
    topics: tuple[str, ...]

    def apply(self, conn: psycopg.Connection, event: Event) -> None: ...

    def reset(self, conn: psycopg.Connection) -> None:
        """Empty the read model's tables (for a rebuild from the log)."""


class ProjectionProcessor(BaseProcessor):
    """A projection as a processor: group `<prefix>.<name>`, offsets and processed ids under the
    name of its current generation (the name itself until a shadow rebuild swapped one in)."""

    def __init__(self, projection: Projection, group_prefix: str = "projection"):
        self.projection = projection
        self.name = projection.name
        self.group = f"{group_prefix}.{projection.name}"
        self.topics = tuple(projection.topics)
        self.tick_s = getattr(projection, "tick_s", None)
        self.max_batch = getattr(projection, "max_batch", 500)
        self._wants = getattr(projection, "wants", None)
        self._batch = getattr(projection, "apply_batch", None)
        self.follows_generation = getattr(projection, "schema", "public") == "public"
        self.search_path = getattr(projection, "search_path", None)
        self.event_types = getattr(projection, "event_types", None)

    def wants(self, event: Event) -> bool:
        return self._wants(event) if self._wants else True

    def namespace(self, conn: psycopg.Connection) -> str:
        return generations.current(conn, self.projection.name) if self.follows_generation else self.projection.name

    def process(self, step: Step) -> None:
        if self._batch is not None:
            self._batch(step.conn, step.events)
        else:
            for event in step.events:
                self.projection.apply(step.conn, event)

    def tick(self, step: Step) -> None:
        tick = getattr(self.projection, "tick", None)
        if tick is not None:
            tick(step)


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0


class ProjectionRunner:
    """One projection on its own worker, stepped by `poll_once` (tests, tools) or `run`."""

    def __init__(self, projection: Projection, bootstrap: str, database_url: str, group_prefix: str = "projection"):
        self.projection = projection
        self.processor = ProjectionProcessor(projection, group_prefix)
        self.group = self.processor.group
        self.worker = Worker(self.processor, bootstrap, database_url, poll_ms=500)
        self.producer = self.worker.producer

    @property
    def consumer(self):
        return self.worker.consumer   # the worker may replace a stuck one (projectors/assignment.py)

    @property
    def conn(self) -> psycopg.Connection:
        return self.worker._db()

    def poll_once(self, timeout_ms: int = 500) -> BatchResult:
        c = self.worker.poll_once(timeout_ms)
        return BatchResult(c["applied"], c["duplicates"], c["dead_lettered"])

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        self.worker.run(stop)

    def caught_up(self) -> bool:
        """True when every assigned partition's stored position equals its end offset."""
        assigned = self.consumer.assignment()
        if not assigned or self.worker.to_seek:
            return False
        ends = self.consumer.end_offsets(list(assigned))
        return all((self.worker.expected.get(tp) or 0) >= ends[tp] for tp in assigned)

    def close(self) -> None:
        self.worker.close()


# -- rebuilding ------------------------------------------------------------------------------------
def _partitions(worker: Worker, topics) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in topics for p in (worker.consumer.partitions_for_topic(t) or ())]


#: a rebuild whose stored offsets have not moved for this long, while behind, gets a new consumer
STALL_S = 30.0


def _follow(runner: ProjectionRunner, target: dict[TopicPartition, int], namespace: str,
            progress: Callable[[int, int], None] | None, start: dict[TopicPartition, int] | None = None,
            renew: Callable[[], ProjectionRunner] | None = None) -> ProjectionRunner:
    """Poll until the stored offsets of `namespace` reach `target`; report done / total (counted
    from `start`, else from the partitions' beginnings). Returns the runner it ended with.

    A consumer that has its partitions and fetches nothing for STALL_S while the rebuild is
    behind is replaced by `renew()` (a new member of the same group, resuming from the stored
    offsets), with a warning that says where it stood. Seen on 2026-12-02: now and then a
    rebuild's fresh consumer applied nothing for minutes (kafka-python 3.0.12; not yet
    understood) — a rebuild must end, not hang an operator's command."""
    base = {tp: (start or {}).get(tp, 0) for tp in target}
    total = sum(max(0, end - base[tp]) for tp, end in target.items())
    renewed: list[ProjectionRunner] = []
    try:
        return _poll_until(runner, target, namespace, progress, base, total, renew, renewed)
    except BaseException:
        if renewed:   # the last new one (each earlier one was closed when replaced; the caller closes its own)
            renewed[-1].close()
        raise


def _poll_until(runner, target, namespace, progress, base, total, renew, renewed) -> ProjectionRunner:
    moved_at, last = time.monotonic(), -1
    while True:
        runner.poll_once(timeout_ms=200)
        stored = stored_offsets(runner.conn, namespace)
        runner.conn.commit()
        done = sum(max(0, min(stored.get(tp, 0), end) - base[tp]) for tp, end in target.items())
        if progress:
            progress(done, total)
        if done >= total:
            return runner
        now = time.monotonic()
        if done != last:
            moved_at, last = now, done
        elif renew is not None and now - moved_at > STALL_S:
            worker = runner.worker
            log.warning("rebuild.stalled", namespace=namespace, done=done, total=total,
                        assigned=len(worker.consumer.assignment()), paused=len(worker.consumer.paused()),
                        to_seek=len(worker.to_seek), stats=dict(worker.stats), seconds=round(now - moved_at))
            runner.close()
            runner, moved_at = renew(), now
            renewed.append(runner)


def rebuild(projection: Projection, bootstrap: str, database_url: str,
            progress: Callable[[int, int], None] | None = None,
            start: dict[TopicPartition, int] | None = None) -> int:
    """Empty the read model and its stored offsets in place, then re-apply the log up to its
    current end: the whole log, or from `start` (a test's or a benchmark's own stretch of it).
    Its own process must be stopped (two writers would race); the live system uses
    `shadow_rebuild`. Returns the number of messages it read.

    The reset runs under the projection's search_path, as its checkpoints do: a projection whose
    statements name its tables unqualified (`UnqualifiedTables`) placed in a schema of its own
    would otherwise empty the live tables of the same names in public."""
    path = getattr(projection, "search_path", None)
    with psycopg.connect(database_url, **({"options": f"-c search_path={path}"} if path else {})) as conn, \
            conn.transaction():
        projection.reset(conn)
        conn.execute("DELETE FROM consumer_offsets WHERE consumer = %s", (projection.name,))
        conn.execute("DELETE FROM processed_events WHERE consumer = %s", (projection.name,))
        if start:
            from .checkpoint import store_first

            store_first(conn, projection.name, start)
    def renew() -> ProjectionRunner:
        return ProjectionRunner(projection, bootstrap, database_url, group_prefix="rebuild")

    runner = renew()
    try:
        target = runner.consumer.end_offsets(_partitions(runner.worker, projection.topics))
        runner = _follow(runner, target, projection.name, progress, start, renew)
        return sum(max(0, end - (start or {}).get(tp, 0)) for tp, end in target.items())
    finally:
        runner.close()


def shadow_rebuild(projection_factory: Callable[[str, str], Projection], name: str, bootstrap: str,
                   database_url: str, progress: Callable[[int, int], None] | None = None) -> int:
    """Build the read model `name` anew from the log into a shadow schema while the live one keeps
    serving and following the log, then swap it in atomically once it reached the end the log had
    when the rebuild started (projectors/generations.py). `projection_factory(name, schema)`
    makes the shadow's projection. Returns the number of messages read."""
    stamp = time.strftime("%Y%m%d%H%M%S")
    namespace, schema = f"{name}~{stamp}", f"shadow_{name}_{stamp}"
    shadow = projection_factory(namespace, schema)
    with psycopg.connect(database_url) as conn:
        shadow.create_schema(conn, schema)  # type: ignore[attr-defined]
    def renew() -> ProjectionRunner:
        return ProjectionRunner(shadow, bootstrap, database_url, group_prefix=f"rebuild.{stamp}")

    runner = renew()
    try:
        target = runner.consumer.end_offsets(_partitions(runner.worker, shadow.topics))
        runner = _follow(runner, target, namespace, progress, renew=renew)
        total = sum(target.values())
    except BaseException:
        runner.close()
        with psycopg.connect(database_url) as conn:
            generations.discard(conn, namespace, schema)
        raise
    runner.close()
    with psycopg.connect(database_url) as conn:
        generations.swap(conn, name, namespace, schema, tuple(shadow.tables), list(target))  # type: ignore[attr-defined]
    return total


def replay_with_progress(settings, projection: Projection, console=None,
                         factory: Callable[[str, str], Projection] | None = None) -> int:
    """`onething replay NAME`: rebuild with a progress bar of messages done / total (on stderr).
    With a `factory` (every read model the live system runs has one) the rebuild runs beside the
    live read model and swaps in; without one, in place (stop the projection's process first)."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from infra import migrations

    migrations.migrate(settings.database_url)
    console = console or Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(f"rebuilding {projection.name}", total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if factory is None:
            total = rebuild(projection, settings.bootstrap_servers, settings.database_url, progress=report)
        else:
            total = shadow_rebuild(factory, projection.name, settings.bootstrap_servers, settings.database_url,
                                   progress=report)
        bar.update(task, completed=total, total=total)
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


class BatchedCaseModel:
    """What set-based read models of cases share: `keep(case_id)` narrows them to some cases (a
    test's, a rebuild's), `apply` is a batch of one, `reset` empties their tables (`q.reset`)."""
    keep: Callable[[str], bool] | None = None

    def wants(self, event: Event) -> bool:
        return self.keep is None or self.keep(event.key)

    def apply(self, conn: psycopg.Connection, event: Event) -> None:
        self.apply_batch(conn, [event])  # type: ignore[attr-defined]

    def reset(self, conn: psycopg.Connection) -> None:
        conn.execute(self.q.reset)  # type: ignore[attr-defined]


class UnqualifiedTables:
    """For a projection whose statements name its tables unqualified: an instance in another
    schema (a shadow rebuild) runs with that schema first on its connection's search_path."""
    migration: Path
    probe_table: str
    tables: tuple[str, ...]
    schema: str = "public"
    search_path: str | None = None

    def place(self, name: str, schema: str) -> None:
        self.name = name
        self.schema = check_schema(schema)
        self.search_path = None if schema == "public" else f"{schema},public"  # no space: libpq splits options on it

    def create_schema(self, conn: psycopg.Connection, schema: str) -> None:
        create_schema(conn, schema, self.migration, self.probe_table)


def drop_schema(conn: psycopg.Connection, schema: str) -> None:
    if check_schema(schema) == "public":
        raise ValueError("refusing to drop the public schema")
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
