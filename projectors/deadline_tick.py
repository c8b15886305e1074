"""The deadline clock's tick: what the running deadlines call for today, raised once per due date.

The tick reads the open, unpaused clock rows of the cases on this member's partitions (the
projection in projectors/deadlines.py keeps them) and emits `DeadlineApproaching` and
`DeadlineBreached` on `cases`, and for a breached service a `CaseEscalated` (origin deadline,
reason overdue): 办不成事 by itself. Produce, then mark: the ids are derived from the clock's
cause, scope, subject and due date, so a crash between the two raises the same ids again, which
every consumer drops.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date

import psycopg
import structlog
from psycopg import sql

from events import bus
from events.envelope import SYSTEM, Event, derived_event_id, new_event
from infra import metrics
from infra.topics import APPLICATIONS, CASES

from . import deadline_clock as clock

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Alarm:
    """One event the clock raises, with the row it marks once produced."""
    event: Event
    case_id: str
    scope: str
    subject_id: str
    column: str          # warned_due | breached_due
    due: date
    bundle: str
    department: str


def alarms(rows: Iterable[tuple], today: date) -> list[Alarm]:
    """What the running deadlines call for today: pure, given the rows the tick read."""
    out: list[Alarm] = []
    for (case_id, scope, subject, department, task_id, due, cause, correlation, region, warned, breached,
         bundle) in rows:
        st = clock.stage(due, today)
        if st is clock.Stage.OK:
            continue
        breached_now = st is clock.Stage.BREACHED
        if breached_now and breached == due or not breached_now and warned == due:
            continue
        kind = "DeadlineBreached" if breached_now else "DeadlineApproaching"
        left = clock.working_days_left(today, due)
        payload = {"scope": scope, "subject_id": subject or None, "department": department, "task_id": task_id,
                   "due_date": due}
        payload |= {"working_days_overdue": max(1, -left)} if breached_now else {"working_days_left": max(0, left)}
        parts = (scope, subject, due.isoformat())
        ev = new_event(kind, case_id, payload, actor=SYSTEM, region_code=region or "000000",
                       correlation_id=correlation or case_id,
                       event_id=derived_event_id(cause or case_id, kind, *parts))
        ev = _caused_by(ev, cause)
        out.append(Alarm(ev, case_id, scope, subject, "breached_due" if breached_now else "warned_due", due,
                         bundle or "unknown", department or "none"))
        if breached_now and scope == "service":  # 办不成事 by itself: an overdue service escalates
            eid = "esc-" + derived_event_id(cause or case_id, "CaseEscalated", *parts)[:18]
            esc = new_event("CaseEscalated", case_id,
                            {"escalation_id": eid, "origin": "deadline", "reason": "overdue", "service_id": subject,
                             "department": department, "comment": None},
                            actor=SYSTEM, region_code=region or "000000", correlation_id=correlation or case_id,
                            event_id=derived_event_id(cause or case_id, "CaseEscalated", *parts))
            out.append(Alarm(_caused_by(esc, cause), case_id, scope, subject, "", due, bundle or "unknown",
                             department or "none"))
    return out


def _caused_by(event: Event, cause: str | None) -> Event:
    from dataclasses import replace

    return replace(event, envelope=replace(event.envelope, causation_id=cause)) if cause else event


class DeadlineTicker:
    """Reads the running deadlines and produces what they call for. Produce, then mark."""

    def __init__(self, conn: psycopg.Connection, producer, schema: str = "public",
                 keep: Callable[[str], bool] | None = None, horizon_days: int = 30):
        self.conn, self.producer, self.keep = conn, producer, keep
        t = sql.Identifier(schema, "deadline_clocks")
        c = sql.Identifier(schema, "deadline_cases")
        self.clocks = t
        # calendar days ahead worth reading: any deadline with <= WARN_WITHIN working days left is
        # within a fortnight even across 春节
        self.horizon = horizon_days
        self.select = sql.SQL(
            "SELECT k.case_id, k.scope, k.subject_id, k.department, k.task_id, k.due_date, k.cause_event_id,"
            " k.correlation_id, k.region_code, k.warned_due, k.breached_due, c.bundle_code"
            " FROM {t} k LEFT JOIN {c} c USING (case_id)"
            " WHERE k.closed_at IS NULL AND k.paused_on IS NULL AND k.due_date IS NOT NULL"
            " AND k.due_date <= %(until)s::date AND (k.breached_due IS DISTINCT FROM k.due_date)"
            " ORDER BY k.due_date").format(t=t, c=c)

    def due(self, today: date, owns: Callable[[str], bool] | None = None) -> list[Alarm]:
        """What the running deadlines call for today, for the cases this member answers for."""
        from datetime import timedelta

        rows = self.conn.execute(self.select, {"until": today + timedelta(days=self.horizon)}).fetchall()
        rows = [r for r in rows if (self.keep is None or self.keep(r[0])) and (owns is None or owns(r[0]))]
        return alarms(rows, today)

    def tick(self, today: date) -> list[Alarm]:
        """Produce, then mark, each in its own step (tools and tests; the runtime uses `tick_step`)."""
        with self.conn.transaction():
            raised = self.due(today)
        if not raised:
            return []
        bus.publish_all(self.producer, [(CASES, a.event) for a in raised])  # durable before the marks
        with self.conn.transaction():
            self._mark(raised)
        _count(raised)
        return raised

    def tick_step(self, step, today: date, owns: Callable[[str], bool]) -> list[Alarm]:
        """On the runtime: the alarms are emitted into the step and the marks written in its
        transaction; the runtime acknowledges the events before it commits the marks, so a crash
        in between raises the same ids again (consumers drop them)."""
        raised = self.due(today, owns)
        for a in raised:
            step.emit(CASES, a.event)
        if raised:
            self._mark(raised)
            step.on_commit(lambda: _count(raised))
        return raised

    def _mark(self, raised: list[Alarm]) -> None:
        """Remember what was raised. A crash before this commits raises the same ids again."""
        for a in raised:
            if a.column:
                self.conn.execute(sql.SQL("UPDATE {} SET {} = %s WHERE case_id = %s AND scope = %s AND "
                                          "subject_id = %s").format(self.clocks, sql.Identifier(a.column)),
                                  (a.due, a.case_id, a.scope, a.subject_id))


def _count(raised: list[Alarm]) -> None:
    for a in raised:
        if a.event.type == "DeadlineBreached":
            metrics.DEADLINES_BREACHED.labels(a.scope, a.bundle, a.department).inc()
        elif a.event.type == "DeadlineApproaching":
            metrics.DEADLINES_APPROACHING.labels(a.scope, a.bundle, a.department).inc()
        log.info("deadlines.raised", event_type=a.event.type, scope=a.scope, department=a.department,
                 correlation_id=a.event.envelope.correlation_id, due_date=a.due.isoformat())


def partition_of(case_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as in the Java client) puts a case on."""
    from kafka.partitioner.default import murmur2

    return (murmur2(case_id.encode()) & 0x7FFFFFFF) % partitions


def owned_cases(consumer, topic: str = APPLICATIONS) -> Callable[[str], bool]:
    """Which cases this member's tick answers for: those on the partitions of `topic` it is
    assigned (the case topics are co-partitioned), so several `deadlines` processes share the
    clock instead of each raising every alarm. Asked afresh at every tick: a rebalance moves
    cases; during one, two members may raise the same ids, which consumers drop."""
    def owns(case_id: str) -> bool:
        count = len(consumer.partitions_for_topic(topic) or ())
        assigned = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
        return bool(count) and partition_of(case_id, count) in assigned
    return owns
