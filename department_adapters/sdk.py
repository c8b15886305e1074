"""The SDK a department team uses to join the system: consume tasks, call the backend, emit decisions.

A department implements `Backend.handle(task, conn)` — decide (or apply a register sync, or
execute a grant) and write its own records through `conn` — and runs
`Adapter(backend, bootstrap, database_url).run()`. A task's `kind` says which: `case_service` (a
service of a case), `register_sync` (一处变更、多处联动, from the cascade) or `benefit_grant` (免申即享, from
the proactive processor once the decline window closed: task id `grant:<id>`, answered `applied` or
`failed`; see department_adapters/reference/grants.py); the decision copies it, and a TaskCancelled
carries the kind of the task it withdraws. A backend that does not execute grants should answer
`failed` with a reason code rather than raise, so the grant's worklist says so.
A backend that can decide many tasks cheaper than one at a time may also implement
`handle_batch(tasks, conn)` (`BatchBackend`): the SDK then hands it the batch's fresh tasks at once.
The adapter is a processor of the project's one runtime (projectors/runtime.py), so it gets the
runtime's guarantees and its batching for free:
- idempotent on task id: decisions are stored with the backend's own writes in the checkpoint's
  PostgreSQL transaction; a task delivered again re-emits the stored decisions (same event ids)
  and never reaches the backend twice;
- a backend that is down (`BackendUnavailable`) pauses this department's partitions and the
  batch is retried with a growing backoff (up to `retry_for_s` between tries), in the process,
  while the consumer stays in its group; other departments hosted in the same process go on;
- a task that cannot be processed (`InvalidTask`, an undecodable message) goes to the
  dead-letter topic with its reason, and the partition keeps moving;
- decisions count as emitted only once the broker acknowledged them (acks=all), and the
  batch's offsets are stored only after that, with the decisions.

On a cluster with authentication the adapter logs in as its department's principal
`adapter.<department>`, which may read only `tasks.<department>` and write only
`decisions.<department>` (and dead letters): pass `kafka_user` / `kafka_password`, or set
`ONETHING_KAFKA_PASSWORD_ADAPTER_<DEPARTMENT>` (or `ONETHING_KAFKA_USER` / `ONETHING_KAFKA_PASSWORD`);
events/kafka_auth.py says how they are looked up.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import psycopg
import structlog
from prometheus_client import Counter, Gauge

from events import kafka_auth
from events.envelope import Actor, Event, derived_event_id, new_event
from infra.topics import decisions_topic, tasks_topic
from projectors.checkpoint import Step
from projectors.runtime import BaseProcessor, Worker

from .personal_data import DepartmentKeys

log = structlog.get_logger(__name__)

REASON_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
OUTCOMES = ("accepted", "correction_requested", "approved", "rejected", "applied", "failed")
BACKEND_RETRIES = Counter("onething_adapter_backend_retries_total", "Backend calls retried", ["department"])
BACKEND_UP = Gauge("onething_adapter_backend_up", "1 if the last backend call succeeded", ["department"])
TASKS_HANDLED = Counter("onething_adapter_tasks_total", "Tasks handled by outcome", ["department", "outcome"])
UNLISTED_REASONS = Counter("onething_adapter_unlisted_reason_codes_total",
                           "Decisions whose reason code the department's list (catalog/data/reasons.yaml) lacks; "
                           "the status page shows a generic reason for them", ["department"])


class BackendUnavailable(Exception):
    """The department's backend cannot be reached now; the task will be retried."""


class InvalidTask(Exception):
    """The task cannot be processed as it is; it goes to the dead-letter topic with this reason."""
    safe_message = True  # backends write these reasons for operators: no form values in them


@dataclass(frozen=True)
class Decision:
    """A backend's decision. `reason_code` names the reason from the department's list
    (catalog/data/reasons.yaml): the applicant reads its sentence in the page's language, while
    `reason` stays the department's own words for its records and for decisions without a code."""
    outcome: str
    reason: str | None = None
    missing_materials: tuple[str, ...] = ()
    outputs: dict[str, str] = field(default_factory=dict)
    reason_code: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"decision outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.reason_code is not None and not REASON_CODE.fullmatch(self.reason_code):
            # a code is catalog vocabulary, never free text: a malformed one is the backend's bug
            raise ValueError("a reason code is lower_snake_case, at most 64 characters")


class Backend(Protocol):
    department: str

    def handle(self, task: Event, conn: psycopg.Connection) -> list[Decision]:
        """Decide on a task; write the department's own records through `conn` (same transaction)."""

    def cancel(self, task: Event, conn: psycopg.Connection) -> None:
        """The applicant withdrew: stop work on the task."""


class BatchBackend(Backend, Protocol):
    def handle_batch(self, tasks: Sequence[Event], conn: psycopg.Connection) -> Sequence[list[Decision]]:
        """Optional: decide on several tasks at once, as `handle` on each in turn would — one list
        of decisions per task, in their order. The SDK passes only tasks it has no stored
        decision for (each task id once, none cancelled), in partition order, and never a task
        that came after a cancellation or rectification in the batch together with what came
        before it. An exception fails the whole batch (the SDK's transaction rolls back; a
        `BackendUnavailable` retries it, anything else has the runtime re-run it one task at a
        time)."""


@dataclass
class AdapterStats:
    handled: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    backend_waits: int = 0


_STORED = ("SELECT task_id, position, outcome, reason, missing, outputs, reason_code FROM adapter_decisions "
           "WHERE department = %s AND task_id = ANY(%s) ORDER BY task_id, position")
_CANCELLED = "SELECT task_id FROM adapter_cancellations WHERE department = %s AND task_id = ANY(%s)"
_STORE = ("INSERT INTO adapter_decisions (department, task_id, position, event_id, outcome, reason, missing, outputs,"
          " reason_code) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")


class AdapterProcessor(BaseProcessor):
    """A department's adapter as a processor of the runtime: group `adapter.<department>` on
    `tasks.<department>`, decisions to `decisions.<department>`. `keep(task)` narrows what it
    answers (a test lane); `start` where a group without stored offsets begins."""
    dedupe = False   # idempotent on task id instead (adapter_decisions)

    def __init__(self, backend: Backend, *, group: str | None = None, keep: Callable[[Event], bool] | None = None,
                 start: str = "committed", retry_for_s: float = 5.0, max_batch: int = 100,
                 consumer_options: dict | None = None, kafka_user: str | None = None,
                 kafka_password: str | None = None):
        import psycopg.errors

        self.backend = backend
        self.department = backend.department
        self.name = self.group = group or f"adapter.{self.department}"
        self.topics = (tasks_topic(self.department),)
        self.keep = keep
        self.start = start
        self.max_batch = max_batch
        self.backoff_max_s = retry_for_s
        self.consumer_options = consumer_options or {}
        # a backend that is down; a concurrent member that stored the same task's decisions first
        self.transient = (BackendUnavailable, psycopg.errors.UniqueViolation)
        self.actor = Actor(f"dept:{self.department}", "department", "department")
        self.stats = AdapterStats()
        self._reason_list = None
        self.personal = DepartmentKeys(self.department)
        # explicit credentials win; otherwise the runtime picks `adapter.<department>` (infra/acls.py)
        self.principal = (kafka_auth.Credentials(kafka_user, kafka_password or kafka_auth.password(kafka_user))
                          if kafka_user else None)

    def wants(self, event: Event) -> bool:
        return self.keep is None or self.keep(event)

    def process(self, step: Step) -> None:
        conn = step.conn
        keys = self.personal.bind(conn)
        ids = [i.event.payload.get("task_id") for i in step.items if i.event.type in ("TaskDispatched", "TaskCancelled")]
        stored: dict[str, list[Decision]] = {}
        cancelled: set[str] = set()
        if ids:
            with conn.pipeline():  # both reads in one round trip
                decided = conn.execute(_STORED, (self.department, ids))
                withdrawn = conn.execute(_CANCELLED, (self.department, ids))
                for task_id, _pos, o, r, m, out, code in decided.fetchall():
                    stored.setdefault(task_id, []).append(Decision(o, r, tuple(m or ()), dict(out or {}), code))
                cancelled = {r[0] for r in withdrawn.fetchall()}
        rows: list[tuple] = []
        counts = AdapterStats()
        outcomes: list[str] = []
        # consecutive TaskDispatched are decided together (the backend's `handle_batch`, if it has
        # one): `run` holds them in partition order, `fresh` those that reach the backend
        run: list[Event] = []
        fresh: dict[str, Event] = {}
        event_ids: dict[str, list[str]] = {}   # of the decisions just made (derived once)

        def settle() -> None:
            nonlocal rows
            if fresh:
                opened = [keys.open_task(t) for t in fresh.values()]
                for task, decisions in zip(fresh.values(), self._decide_all(opened, conn)):
                    tid = task.payload["task_id"]
                    decisions = [replace(d, outputs=keys.seal_outputs(task, d.outputs)) if d.outputs else d
                                 for d in decisions]
                    stored[tid] = decisions
                    counts.handled += 1
                    outcomes.extend(d.outcome for d in decisions)
                    eids = event_ids[task.id] = [_event_id(task, n) for n in range(len(decisions))]
                    rows += [(self.department, tid, n, eids[n], d.outcome, d.reason, list(d.missing_materials),
                              json.dumps(d.outputs), d.reason_code) for n, d in enumerate(decisions)]
                    self._check_codes(decisions)
                fresh.clear()
            for task in run:
                eids = event_ids.get(task.id)
                for n, d in enumerate(stored[task.payload["task_id"]]):
                    step.emit(decisions_topic(self.department), self._event(task, n, d, eids[n] if eids else None))
            run.clear()

        for item in step.items:
            task = item.event
            if task.type == "TaskDispatched":
                tid = task.payload["task_id"]
                if tid in stored or tid in fresh:
                    counts.replayed += 1       # decided before, or earlier in this batch: never asked again
                elif tid in cancelled:
                    continue
                else:
                    fresh[tid] = task
                run.append(task)
                continue
            settle()  # what came before a cancellation is decided before it
            if task.type == "TaskCancelled":
                tid = task.payload["task_id"]
                conn.execute("INSERT INTO adapter_cancellations (department, task_id) VALUES (%s, %s) "
                             "ON CONFLICT DO NOTHING", (self.department, tid))
                cancelled.add(tid)
                self.backend.cancel(task, conn)
            elif task.type == "RectificationOpened":
                self._rectification(step, task)
            else:
                step.dead_letter(self.group, item, f"unexpected event type {task.type}")
        settle()
        if rows:
            conn.cursor().executemany(_STORE, rows)

        def done() -> None:
            self.stats.handled += counts.handled
            self.stats.replayed += counts.replayed
            for o in outcomes:
                TASKS_HANDLED.labels(self.department, o).inc()
            BACKEND_UP.labels(self.department).set(1)

        step.on_commit(done)

    def _check_codes(self, decisions: list[Decision]) -> None:
        """A code the department's list lacks still goes out (the decision counts; the page shows a
        generic reason, catalog/reasons.py says why): here it is logged and counted, by department
        and code only, so the list or the backend gets fixed."""
        for d in decisions:
            if d.reason_code and not self._reasons().listed(self.department, d.reason_code):
                UNLISTED_REASONS.labels(self.department).inc()
                log.warning("adapter.unlisted_reason_code", department=self.department, reason_code=d.reason_code)

    def _reasons(self):
        if self._reason_list is None:
            from catalog.reasons import load_reasons

            self._reason_list = load_reasons()
        return self._reason_list

    def _decide_all(self, tasks: list[Event], conn: psycopg.Connection) -> list[list[Decision]]:
        """The backend's decisions on `tasks`: by its `handle_batch` when it has one, else one
        `handle` after the other."""
        batch = getattr(self.backend, "handle_batch", None)
        if batch is None:
            return [self._decide(task, conn) for task in tasks]
        try:
            results = [list(ds) for ds in batch(tasks, conn)]
        except BackendUnavailable:
            self._unavailable()
            raise
        if len(results) != len(tasks):
            raise RuntimeError(f"the backend answered {len(results)} of {len(tasks)} tasks")
        if not all(results):
            raise InvalidTask("the backend returned no decision")
        return results

    def _unavailable(self) -> None:
        BACKEND_UP.labels(self.department).set(0)
        BACKEND_RETRIES.labels(self.department).inc()
        self.stats.backend_waits += 1

    def _decide(self, task: Event, conn: psycopg.Connection) -> list[Decision]:
        try:
            decisions = self.backend.handle(task, conn)
        except BackendUnavailable:
            self._unavailable()
            raise
        if not decisions:
            raise InvalidTask("the backend returned no decision")
        return decisions

    def _rectification(self, step: Step, task: Event) -> None:
        """差评整改: a backend that can answer by itself implements `rectify(task, conn) -> reply or
        None`; otherwise the department's staff reply through the API (their worklist of
        rectifications), and the adapter only acknowledges the task. The reply's id is derived
        from the task, so a re-read task replies once."""
        rectify = getattr(self.backend, "rectify", None)
        if rectify is None:
            return
        try:
            reply = rectify(task, step.conn)
        except BackendUnavailable:
            BACKEND_UP.labels(self.department).set(0)
            self.stats.backend_waits += 1
            raise
        if reply:
            p = task.payload
            step.emit(decisions_topic(self.department), new_event(
                "RectificationReplied", task.key,
                {"rectification_id": p["rectification_id"], "department": self.department, "reply": reply},
                actor=Actor(self.department, "department", "department"), region_code=task.envelope.region_code,
                cause=task, event_id=derived_event_id(task.id, "RectificationReplied")))

    def _event(self, task: Event, position: int, d: Decision, event_id: str | None = None) -> Event:
        p = task.payload
        return new_event(
            "DecisionRecorded", task.key,
            {"task_id": p["task_id"], "department": self.department, "service_id": p["service_id"],
             "kind": p.get("kind", "case_service"), "outcome": d.outcome, "reason": d.reason,
             "reason_code": d.reason_code, "missing_materials": list(d.missing_materials),
             "outputs": dict(d.outputs)},
            actor=self.actor, region_code=task.envelope.region_code, cause=task,
            event_id=event_id or _event_id(task, position),
        )


def _event_id(task: Event, position: int) -> str:
    return derived_event_id(task.id, "decision", str(position))


class Adapter:
    """One department's adapter on a worker of its own: `run(stop)` in the foreground, or
    `poll_once` stepped by hand. `Host` (projectors/runtime.py) runs many in one process."""

    def __init__(self, backend: Backend, bootstrap: str, database_url: str, *, retry_for_s: float = 5.0,
                 max_poll_records: int = 100, group: str | None = None, keep: Callable[[Event], bool] | None = None,
                 start: str = "committed", consumer_options: dict | None = None, kafka_user: str | None = None,
                 kafka_password: str | None = None):
        self.processor = AdapterProcessor(backend, group=group, keep=keep, start=start, retry_for_s=retry_for_s,
                                          max_batch=max_poll_records, consumer_options=consumer_options,
                                          kafka_user=kafka_user, kafka_password=kafka_password)
        self.backend, self.department, self.group = backend, self.processor.department, self.processor.group
        self.worker = Worker(self.processor, bootstrap, database_url, poll_ms=500)

    @property
    def consumer(self):
        return self.worker.consumer   # the worker may replace a stuck one (projectors/assignment.py)

    @property
    def stats(self) -> AdapterStats:
        s = self.processor.stats
        return AdapterStats(s.handled, s.replayed, self.worker.stats["dead_lettered"], s.backend_waits)

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        log.info("adapter.start", department=self.department)
        self.worker.run(stop)

    def poll_once(self, timeout_ms: int = 500) -> None:
        self.worker.poll_once(timeout_ms)

    def ready(self, timeout_s: float = 60.0) -> None:
        self.worker.ready(timeout_s)

    def close(self) -> None:
        self.worker.close()
