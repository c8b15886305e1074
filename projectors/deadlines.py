"""The deadline processor: every running deadline of every case, and the events its clock raises.

Two halves in one process:
- a PostgreSQL projection (`DeadlineClockProjection`, run by ProjectionRunner: rows and offsets
  in one transaction, every event once) keeps `deadline_clocks`: one row per case deadline,
  service deadline, escalation reply / resolution and rectification, with its due date, whether
  it is paused (补正) and whether it is closed;
- a tick (`tick`, projectors/deadline_tick.py) reads the running rows of the cases on its
  partitions as of a day and emits `DeadlineApproaching` and `DeadlineBreached` on `cases`, and
  for a breached service a `CaseEscalated` (origin deadline, reason overdue): 办不成事 by itself.

Why the ids are derived: an emitted event's id is a name-based UUID of the clock's cause (the
event that set the due date), the scope, the subject and the due date. The tick produces first
and marks the row after; a crash between the two re-emits the same ids, which every consumer
drops. A due date that moves (a 补正 pause, an extension) is a new deadline and may warn again.

Why a day and not a timestamp: limits are in working days, the clock's question is "is today
past the due date", asked in Beijing time. `ONETHING_TODAY` (ISO date) pins the day for a demo
or a test of a case left undecided for weeks.

Order. The projection reads `applications`, `cases`, every `tasks.<dept>` and
`decisions.<dept>`, and keeps only each topic's order: a decision may arrive before its task,
a completion before the submission. The rules commute across topics (projectors/deadlines_facts.py
says how), so the live clock and a rebuild that read the topics in another interleaving hold the
same rows.

Batches. Every event of the system passes through the clock, so a checkpoint must cost it a few
statements, not a few per event: `apply_batch` reads the clocks the batch's events touch (all of
a case's for its completion or withdrawal) and their cases' facts once, folds the events onto
them in the batch's order by the per-event rules (projectors/deadlines_facts.py) and writes back
the changed case facts and rows, one statement each (projectors/deadlines_sql.py): four
statements in two round trips for any batch, and the rows of applying the events one by one;
`apply(event)` is a batch of one. The read takes no lock: a case's events travel on one
partition of co-partitioned topics, so one member writes its clocks (the offsets' compare-and-set
that opens a checkpoint fences one that lost the partition); the tick writes only its marks,
which the fold never writes.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import sql

from catalog.loader import load_catalog
from catalog.model import Catalog
from events.envelope import Event, now_utc

from . import deadline_clock as clock
from .batch_rows import rows_json
from .case_state import belongs_to_no_case
from .case_view import default_topics
from .deadlines_facts import ClockRows
from .deadline_tick import DeadlineTicker
from .deadlines_sql import statements
from .postgres_projection import BatchedCaseModel
from .postgres_projection import check_schema as _check_schema
from .postgres_projection import create_schema as _create_schema
from .timeline_text import attempt_of

log = structlog.get_logger(__name__)

NAME = "deadlines"
MIGRATIONS = Path(__file__).resolve().parent.parent / "infra" / "migrations"
MIGRATION = MIGRATIONS / "0008_deadlines.sql"
CASE_FACTS = MIGRATIONS / "0023_deadline_case_facts.sql"
FINAL_OUTCOMES = ("approved", "rejected")
TODAY_ENV = "ONETHING_TODAY"


def today_in_china(env: dict[str, str] | None = None) -> date:
    """The clock's day: ONETHING_TODAY if set (a demo, a test), else today in Beijing."""
    pinned = (env if env is not None else os.environ).get(TODAY_ENV)
    if pinned:
        try:
            return date.fromisoformat(pinned)
        except ValueError:
            raise ValueError(f"{TODAY_ENV} must be an ISO date like 2026-12-31, got {pinned!r}") from None
    return clock.china_date(now_utc())


def create_schema(conn: psycopg.Connection, schema: str) -> None:
    """The clock's tables in `schema` (a test's own instance); public comes from the migrations."""
    _create_schema(conn, schema, MIGRATION, "deadline_clocks")
    with conn.transaction():   # idempotent (ADD COLUMN IF NOT EXISTS)
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(CASE_FACTS.read_text())


HANDLED = frozenset({"ApplicationSubmitted", "TaskDispatched", "TaskCancelled", "DecisionRecorded",
                     "MaterialsSupplemented", "CaseCompleted", "ApplicationWithdrawn", "CaseEscalated",
                     "EscalationReplied", "EscalationExtended", "EscalationResolved", "RectificationOpened",
                     "RectificationReplied"})


class DeadlineClockProjection(BatchedCaseModel):
    """The running deadlines. `keep(case_id)` lets a test follow only its own cases."""
    event_types = HANDLED   # the types it has a handler for (_on_<type>)

    def __init__(self, name: str = NAME, *, schema: str = "public", topics: tuple[str, ...] | None = None,
                 catalog: Catalog | None = None, keep: Callable[[str], bool] | None = None):
        self.name = name
        self.schema = _check_schema(schema)
        self.catalog = catalog or load_catalog()
        self.topics = tuple(topics) if topics else default_topics(self.catalog)
        self.keep = keep
        self.q = statements(self.schema)

    # -- the Projection protocol --------------------------------------------------------------
    tables = ("deadline_clocks", "deadline_cases")
    tick_s: float | None = None

    def create_schema(self, conn: psycopg.Connection, schema: str) -> None:
        create_schema(conn, schema)

    def tick(self, step) -> None:
        """Raise what is due today for the cases on this member's partitions (scale-out: several
        members share the clock; during a rebalance two may raise the same ids, which consumers drop)."""
        ticker = DeadlineTicker(step.conn, None, self.schema, self.keep)
        ticker.tick_step(step, today_in_china(), lambda case_id: step.owns(case_id, self.topics[0]))

    def apply_batch(self, conn: psycopg.Connection, events: Iterable[Event]) -> None:
        """One read of the clocks the events touch, the events folded onto them in order
        (deadlines_facts.py), then at most two writes: two round trips, in one pipeline (the two
        reads are sent before either is fetched).
        Raises what any rule or statement raises (nothing is written then); the runtime isolates
        the bad event by re-running the batch one event at a time."""
        fed = [e for e in events if e.type in HANDLED and self.wants(e) and not belongs_to_no_case(e)]
        if not fed:
            return
        q, rows = self.q, ClockRows()
        for e in fed:
            rows.ask(e.type, e.key, e.payload)
        keys, whole_cases, case_ids = rows.to_read()
        # one event's statements are cheaper sent one by one than through psycopg's pipeline mode
        with conn.pipeline() if len(fed) > 1 else nullcontext():
            clocks = conn.execute(q.rows_of, (rows_json(keys), whole_cases))
            cases = conn.execute(q.cases_of, (case_ids,))
            rows.load(clocks.fetchall(), cases.fetchall())
            self.fold(rows, fed)
            changed_cases = rows.changed_cases()
            if changed_cases:
                conn.execute(q.cases, (rows_json(changed_cases),))
            changed = rows.changed()
            if changed:
                conn.execute(q.write, (rows_json(changed),))

    def fold(self, rows: ClockRows, events: Iterable[Event]) -> None:
        """The events onto the rows they asked for, in order: pure (no I/O), so a property test
        folds any interleaving of the topics without a database."""
        for e in events:
            getattr(self, f"_on_{e.type}")(rows, e, e.payload)

    # -- per event type: which clock rule it is (deadlines_facts.ClockRows) -----------------------
    def _on_ApplicationSubmitted(self, rows: ClockRows, event: Event, p: dict) -> None:
        submitted = clock.china_date(event.envelope.occurred_at)
        days = clock.case_promised_days(self.catalog, p["bundle_code"])
        env = event.envelope
        rows.submitted(event.key, p["bundle_code"], submitted,
                       clock.due_after(submitted, days) if days is not None else None, event.id,
                       env.correlation_id, env.region_code)

    def _on_TaskDispatched(self, rows: ClockRows, event: Event, p: dict) -> None:
        if p.get("due_date") is None:
            return
        self._open(rows, event, "service", p["service_id"], department=p["department"], task_id=p["task_id"],
                   attempt=attempt_of(p["task_id"]), due=p["due_date"])

    def _on_TaskCancelled(self, rows: ClockRows, event: Event, p: dict) -> None:
        rows.close(event.key, "service", p["service_id"], department=p["department"],
                   attempt=attempt_of(p["task_id"]), at=event.envelope.occurred_at)

    def _on_DecisionRecorded(self, rows: ClockRows, event: Event, p: dict) -> None:
        attempt = attempt_of(p["task_id"])
        if p["outcome"] in FINAL_OUTCOMES:
            rows.close(event.key, "service", p["service_id"], department=p["department"], attempt=attempt,
                       at=event.envelope.occurred_at)
        elif p["outcome"] == "correction_requested":
            day = clock.china_date(event.envelope.occurred_at)
            rows.pause(event.key, "service", p["service_id"], department=p["department"], attempt=attempt, day=day)
            rows.pause_case(event.key, event.envelope.occurred_at, event.id)  # the case's own clock stands still too

    def _on_MaterialsSupplemented(self, rows: ClockRows, event: Event, p: dict) -> None:
        """补正 done: the case's clock resumes, its due date pushed back by the days it waited (the
        services' new due dates come with their re-dispatch)."""
        rows.resume_case(event.key, event.envelope.occurred_at, event.id)

    def _on_CaseCompleted(self, rows: ClockRows, event: Event, p: dict) -> None:
        rows.close_case(event.key, event.envelope.occurred_at)

    def _on_ApplicationWithdrawn(self, rows: ClockRows, event: Event, p: dict) -> None:
        rows.close_case(event.key, event.envelope.occurred_at)

    def _on_CaseEscalated(self, rows: ClockRows, event: Event, p: dict) -> None:
        env = event.envelope
        rows.escalated(event.key, p["escalation_id"], env.occurred_at, department=p.get("department"), cause=event.id,
                       correlation=env.correlation_id, region=env.region_code)

    def _on_EscalationReplied(self, rows: ClockRows, event: Event, p: dict) -> None:
        rows.close(event.key, "escalation_reply", p["escalation_id"], department=None, attempt=0,
                   at=event.envelope.occurred_at)

    def _on_EscalationExtended(self, rows: ClockRows, event: Event, p: dict) -> None:
        """An extension seen before its escalation (a deadline's escalation travels on `cases`) is
        kept for it (deadlines_facts.ClockRows.escalated)."""
        rows.extend(event.key, p["escalation_id"], p["resolve_within_working_days"], event.id)

    def _on_EscalationResolved(self, rows: ClockRows, event: Event, p: dict) -> None:
        for scope in ("escalation_reply", "escalation_resolution"):
            rows.close(event.key, scope, p["escalation_id"], department=None, attempt=0,
                       at=event.envelope.occurred_at)

    def _on_RectificationOpened(self, rows: ClockRows, event: Event, p: dict) -> None:
        self._open(rows, event, "rectification", p["rectification_id"], department=p["department"],
                   due=p["due_date"])

    def _on_RectificationReplied(self, rows: ClockRows, event: Event, p: dict) -> None:
        rows.close(event.key, "rectification", p["rectification_id"], department=p["department"], attempt=0,
                   at=event.envelope.occurred_at)

    @staticmethod
    def _open(rows: ClockRows, event: Event, scope: str, subject: str, *, department: str | None = None,
              task_id: str | None = None, attempt: int = 0, due: Any) -> None:
        """A due date set by `event`: it is the cause the tick's ids hang off."""
        env = event.envelope
        rows.open(event.key, scope, subject, department=department, task_id=task_id, attempt=attempt, due=due,
                  cause=event.id, correlation=env.correlation_id, region=env.region_code)


def tick_seconds() -> float:
    return float(os.environ.get("ONETHING_DEADLINE_TICK_S") or 30)


def processors(projection: DeadlineClockProjection | None = None, tick_s: float | None = None) -> list:
    """The deadline clock on the runtime: the projection keeps the clocks, its tick (every
    ONETHING_DEADLINE_TICK_S, 30 s) raises what is due for the cases on this member's partitions."""
    from .postgres_projection import ProjectionProcessor

    projection = projection or DeadlineClockProjection()
    projection.tick_s = tick_s if tick_s is not None else tick_seconds()
    return [ProjectionProcessor(projection)]


def run(settings, stop: Callable[[], bool] = lambda: False, projection: DeadlineClockProjection | None = None,
        tick_s: float | None = None) -> None:
    """Follow the log into the clocks and tick, on a worker of its own, until `stop()`."""
    from infra import migrations

    from .runtime import Worker

    migrations.migrate(settings.database_url)
    worker = Worker(processors(projection, tick_s)[0], settings.bootstrap_servers, settings.database_url)
    log.info("deadlines.start", tick_s=worker.tick_s, today=today_in_china().isoformat())
    try:
        worker.run(stop)
    finally:
        worker.close()


def shadow(name: str, schema: str) -> DeadlineClockProjection:
    return DeadlineClockProjection(name, schema=schema)
