"""The SDK a department team uses to join the system: consume tasks, call the backend, emit decisions.

A department implements `Backend.handle(task, conn)` — decide (or apply a register sync)
and write its own records through `conn` — and runs `Adapter(...).run()`. The SDK gives it
the guarantees for free:
- idempotent on task id: decisions are stored with the backend's own writes in one
  PostgreSQL transaction; a task delivered again re-emits the stored decisions (same event
  ids) and never reaches the backend twice;
- a backend that is down is retried with backoff; its task stays uncommitted and is
  retried from Kafka, so it is never lost, while the consumer stays alive in its group;
- a message that cannot be processed goes to the dead-letter topic with its reason, and the
  partition keeps moving;
- a decision counts as emitted only once the broker acknowledged it (acks=all), and the
  task's offset is committed only after that.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import psycopg
import structlog
from kafka import OffsetAndMetadata, TopicPartition
from prometheus_client import Counter, Gauge
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from events import bus, codec
from events.codec import DecodeError
from events.deadletter import dead_letter
from events.envelope import Actor, Event, derived_event_id, new_event
from infra import log as logmod
from infra import metrics
from infra.topics import decisions_topic, tasks_topic

log = structlog.get_logger(__name__)

OUTCOMES = ("accepted", "correction_requested", "approved", "rejected", "applied", "failed")
BACKEND_RETRIES = Counter("onething_adapter_backend_retries_total", "Backend calls retried", ["department"])
BACKEND_UP = Gauge("onething_adapter_backend_up", "1 if the last backend call succeeded", ["department"])
TASKS_HANDLED = Counter("onething_adapter_tasks_total", "Tasks handled by outcome", ["department", "outcome"])


class BackendUnavailable(Exception):
    """The department's backend cannot be reached now; the task will be retried."""


class InvalidTask(Exception):
    """The task cannot be processed as it is; it goes to the dead-letter topic with this reason."""


@dataclass(frozen=True)
class Decision:
    outcome: str
    reason: str | None = None
    missing_materials: tuple[str, ...] = ()
    outputs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"decision outcome must be one of {OUTCOMES}, got {self.outcome!r}")


class Backend(Protocol):
    department: str

    def handle(self, task: Event, conn: psycopg.Connection) -> list[Decision]:
        """Decide on a task; write the department's own records through `conn` (same transaction)."""

    def cancel(self, task: Event, conn: psycopg.Connection) -> None:
        """The applicant withdrew: stop work on the task."""


@dataclass
class AdapterStats:
    handled: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    backend_waits: int = 0


class Adapter:
    def __init__(self, backend: Backend, bootstrap: str, database_url: str, *,
                 retry_for_s: float = 20.0, max_poll_records: int = 50):
        self.backend = backend
        self.department = backend.department
        self.group = f"adapter.{self.department}"
        self.retry_for_s = retry_for_s
        self.consumer = bus.make_consumer(bootstrap, self.group, tasks_topic(self.department),
                                          max_poll_records=max_poll_records, max_poll_interval_ms=300_000)
        self.producer = bus.make_producer(bootstrap)
        self.conn = psycopg.connect(database_url)
        self.actor = Actor(f"dept:{self.department}", "department", "department")
        self.stats = AdapterStats()
        self._lag_due = 0.0

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
        self.conn.close()

    # -- the loop --------------------------------------------------------------------
    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        log.info("adapter.start", department=self.department)
        while not stop():
            self.poll_once()

    def poll_once(self, timeout_ms: int = 500) -> None:
        batches = self.consumer.poll(timeout_ms=timeout_ms)
        for tp, messages in batches.items():
            for msg in messages:
                if not self._process(tp, msg):
                    # backend down: rewind to this task so the next poll retries it; later
                    # messages of this partition wait behind it, preserving per-case order
                    self.consumer.seek(tp, msg.offset)
                    self.stats.backend_waits += 1
                    break
                self.consumer.commit({tp: OffsetAndMetadata(msg.offset + 1, "", -1)})
        now = time.monotonic()
        if batches or now >= self._lag_due:  # an idle adapter still reports its (zero) lag
            self._lag_due = now + 5
            metrics.record_lag(self.consumer, self.group)

    def _process(self, tp: TopicPartition, msg) -> bool:
        try:
            task = codec.decode(msg.value)
        except DecodeError as exc:
            dead_letter(self.producer, self.group, msg, f"DecodeError: {exc}")
            self.stats.dead_lettered += 1
            return True
        with logmod.bound(correlation_id=task.envelope.correlation_id, task_event_id=task.id):
            if task.type == "TaskCancelled":
                with self.conn.transaction():
                    self.conn.execute("INSERT INTO adapter_cancellations (department, task_id) VALUES (%s, %s) "
                                      "ON CONFLICT DO NOTHING", (self.department, task.payload["task_id"]))
                    self.backend.cancel(task, self.conn)
                return True
            if task.type == "RectificationOpened":
                return self._rectification(task)
            if task.type != "TaskDispatched":
                dead_letter(self.producer, self.group, msg, f"unexpected event type {task.type}")
                self.stats.dead_lettered += 1
                return True
            try:
                decisions = self._decide(task)
            except BackendUnavailable:
                BACKEND_UP.labels(self.department).set(0)
                log.warning("adapter.backend_unavailable", department=self.department)
                return False
            except InvalidTask as exc:
                dead_letter(self.producer, self.group, msg, f"InvalidTask: {exc}")
                self.stats.dead_lettered += 1
                return True
            BACKEND_UP.labels(self.department).set(1)
            bus.publish_all(self.producer, [(decisions_topic(self.department), d) for d in decisions])
            return True

    def _rectification(self, task: Event) -> bool:
        """差评整改: a backend that can answer by itself implements `rectify(task, conn) -> reply or
        None`; otherwise the department's staff reply through the API (their worklist of
        rectifications), and the adapter only acknowledges the task. The reply's id is derived
        from the task, so a re-read task replies once."""
        rectify = getattr(self.backend, "rectify", None)
        if rectify is None:
            return True
        try:
            reply = rectify(task, self.conn)
        except BackendUnavailable:
            BACKEND_UP.labels(self.department).set(0)
            return False
        if reply:
            p = task.payload
            event = new_event("RectificationReplied", task.key,
                              {"rectification_id": p["rectification_id"], "department": self.department,
                               "reply": reply}, actor=Actor(self.department, "department", "department"),
                              region_code=task.envelope.region_code, cause=task,
                              event_id=derived_event_id(task.id, "RectificationReplied"))
            bus.publish_all(self.producer, [(decisions_topic(self.department), event)])
        return True

    def _decide(self, task: Event) -> list[Event]:
        task_id = task.payload["task_id"]
        stored = self._stored(task_id)
        if stored:
            self.stats.replayed += 1
            return [self._event(task, i, d) for i, d in enumerate(stored)]
        if self._cancelled(task_id):
            return []
        for attempt in Retrying(retry=retry_if_exception_type(BackendUnavailable),
                                wait=wait_exponential(multiplier=0.2, max=5),
                                stop=stop_after_delay(self.retry_for_s), reraise=True):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    BACKEND_RETRIES.labels(self.department).inc()
                with self.conn.transaction():
                    decisions = self.backend.handle(task, self.conn)
                    if not decisions:
                        raise InvalidTask("the backend returned no decision")
                    for i, d in enumerate(decisions):
                        self.conn.execute(
                            "INSERT INTO adapter_decisions (department, task_id, position, event_id, outcome,"
                            " reason, missing, outputs) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                            (self.department, task_id, i, self._event_id(task, i), d.outcome, d.reason,
                             list(d.missing_materials), json.dumps(d.outputs)))
        self.stats.handled += 1
        for d in decisions:
            TASKS_HANDLED.labels(self.department, d.outcome).inc()
        return [self._event(task, i, d) for i, d in enumerate(decisions)]

    def _stored(self, task_id: str) -> list[Decision]:
        rows = self.conn.execute(
            "SELECT outcome, reason, missing, outputs FROM adapter_decisions WHERE department = %s AND task_id = %s"
            " ORDER BY position", (self.department, task_id)).fetchall()
        self.conn.commit()
        return [Decision(o, r, tuple(m or ()), dict(out or {})) for o, r, m, out in rows]

    def _cancelled(self, task_id: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM adapter_cancellations WHERE department = %s AND task_id = %s",
                                (self.department, task_id)).fetchone()
        self.conn.commit()
        return row is not None

    @staticmethod
    def _event_id(task: Event, position: int) -> str:
        return derived_event_id(task.id, "decision", str(position))

    def _event(self, task: Event, position: int, d: Decision) -> Event:
        p = task.payload
        return new_event(
            "DecisionRecorded", task.key,
            {"task_id": p["task_id"], "department": self.department, "service_id": p["service_id"],
             "kind": p.get("kind", "case_service"), "outcome": d.outcome, "reason": d.reason, "missing_materials": list(d.missing_materials),
             "outputs": dict(d.outputs)},
            actor=self.actor, region_code=task.envelope.region_code, cause=task,
            event_id=self._event_id(task, position),
        )

