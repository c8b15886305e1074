"""The cascade's processor, with the config it runs by and the metrics it is observed by.

How the cascade behaves, and why, is told in projectors/cascade.py. This is apart from it because
that module is the entry point that runs the processor on a worker of its own (`python -m
projectors.cascade`), while infra/process.py runs the very same processor beside others in one
runtime and needs none of it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import psycopg
import structlog
from psycopg.types.json import Jsonb
from prometheus_client import Counter, Gauge, Histogram

from catalog.subscriptions import Subscriptions, load_subscriptions
from events.envelope import Event
from infra import metrics
from infra.topics import CASCADE as CASCADE_TOPIC
from infra.topics import REGISTRY_COMPANY, REGISTRY_PERSON, decisions_topic, tasks_topic

from . import cascade_plan as plan
from .checkpoint import Step
from .runtime import BaseProcessor

log = structlog.get_logger(__name__)


FANOUT_SECONDS = Histogram(
    "onething_cascade_fanout_seconds", "A register change until every subscribing department applied it",
    ["register"], buckets=(0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 86400))
PENDING = Gauge("onething_cascade_pending_targets", "Targets not yet applied (held, sent or failed)",
                ["department", "register"])
RETRIES = Counter("onething_cascade_retries_total", "Sync tasks sent again: failed (new attempt) or silent (re-send)",
                  ["department", "register", "reason"])
ESCALATIONS = Counter("onething_cascade_escalations_total", "Targets escalated after the retry limit",
                      ["department", "register"])
TASKS_SENT = Counter("onething_cascade_tasks_sent_total", "Sync tasks sent, first sends and retries",
                     ["department", "register"])


def _env_float(env, name: str, default: float) -> float:
    raw = env.get(name)
    return float(raw) if raw not in (None, "") else default


@dataclass(frozen=True)
class CascadeConfig:
    name: str = "cascade"              # consumer group, stored offsets and state namespace
    ack_timeout_s: float = 60.0        # a target silent this long is re-sent
    backoff_base_s: float = 5.0        # first wait after a `failed` answer
    backoff_max_s: float = 600.0       # longest wait between tries
    escalate_after: int = 5            # unsuccessful tries (failed + silent) before escalation
    stall_after_s: float = 600.0       # silent after this long even if its department is busy
    start: str = "earliest"            # where a cascade with no stored offsets starts: earliest | latest
    tick_s: float = 1.0                # how often due retries are looked for
    max_poll_records: int = 500

    @classmethod
    def from_env(cls, env=None) -> "CascadeConfig":
        """ONETHING_CASCADE_{NAME,ACK_TIMEOUT_S,BACKOFF_BASE_S,BACKOFF_MAX_S,ESCALATE_AFTER,STALL_AFTER_S,
        START,TICK_S}."""
        env = os.environ if env is None else env
        start = env.get("ONETHING_CASCADE_START") or "earliest"
        if start not in ("earliest", "latest"):
            raise SystemExit("ONETHING_CASCADE_START must be earliest or latest")
        ack = _env_float(env, "ONETHING_CASCADE_ACK_TIMEOUT_S", 60.0)
        return cls(name=env.get("ONETHING_CASCADE_NAME") or "cascade", ack_timeout_s=ack,
                   stall_after_s=_env_float(env, "ONETHING_CASCADE_STALL_AFTER_S", 10 * ack),
                   backoff_base_s=_env_float(env, "ONETHING_CASCADE_BACKOFF_BASE_S", 5.0),
                   backoff_max_s=_env_float(env, "ONETHING_CASCADE_BACKOFF_MAX_S", 600.0),
                   escalate_after=int(_env_float(env, "ONETHING_CASCADE_ESCALATE_AFTER", 5)),
                   start=start, tick_s=_env_float(env, "ONETHING_CASCADE_TICK_S", 1.0))


@dataclass
class BatchStats:
    changes: int = 0
    decisions: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    tasks_sent: int = 0
    completed: list[tuple[str, float]] = field(default_factory=list)  # (register, fan-out seconds)
    sent: list[tuple[str, str, str | None]] = field(default_factory=list)  # (department, register, retry reason)
    escalated: list[tuple[str, str]] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)  # departments that answered a sync task

    def add(self, other: "BatchStats") -> None:
        for name in ("changes", "decisions", "duplicates", "dead_lettered", "tasks_sent"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class CascadeProcessor(BaseProcessor):
    """The cascade as a processor of the runtime: `process` handles a batch of register changes
    and sync acknowledgements under the batch's per-key locks, `tick` re-sends, retries and
    escalates what is due; the runtime sends what they emit and commits once."""
    dedupe = False   # changes and acknowledgements are idempotent on their own ids (the state tables)

    def __init__(self, config: CascadeConfig | None = None, *, subscriptions: Subscriptions | None = None):
        self.config = config or CascadeConfig()
        self.subs = subscriptions or load_subscriptions()
        self.departments = self.subs.departments()
        self.name = self.group = self.config.name
        self.topics = (REGISTRY_COMPANY, REGISTRY_PERSON, *(decisions_topic(d) for d in self.departments))
        self.start = self.config.start
        self.max_batch = self.config.max_poll_records
        self.tick_s = self.config.tick_s
        self.conn: psycopg.Connection | None = None
        self._next_gauges = 0.0
        self.listening_since: float | None = None  # since the last partition assignment
        self.totals = BatchStats()

    def assigned(self, partitions) -> None:
        self.listening_since = time.monotonic()

    def _observe(self, stats: BatchStats) -> None:
        """Metrics after the commit, so a re-run batch is not counted twice."""
        self.totals.add(stats)
        for register, seconds in stats.completed:
            FANOUT_SECONDS.labels(register).observe(max(0.0, seconds))
        for department, register, reason in stats.sent:
            TASKS_SENT.labels(department, register).inc()
            if reason:
                RETRIES.labels(department, register, reason).inc()
        for department, register in stats.escalated:
            ESCALATIONS.labels(department, register).inc()
        if stats.duplicates:
            metrics.DUPLICATES_DROPPED.labels(group=self.config.name).inc(stats.duplicates)

    def _lock(self, key: str, *, wait: bool = True) -> bool:
        name = f"cascade:{self.config.name}:{key}"
        if wait:
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))
            return True
        return self.conn.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (name,)).fetchone()[0]

    def process(self, step: Step) -> None:
        """The batch under its keys' locks, taken in sorted order (two members cannot deadlock)."""
        self.conn = step.conn
        stats = BatchStats()
        out: list[tuple[str, Event]] = []
        keys = sorted({f"cascade:{self.config.name}:{i.event.key}" for i in step.items})
        self.conn.execute("SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM "
                          "(SELECT k FROM unnest(%s::text[]) AS k ORDER BY k) AS s", (keys,))
        for item in step.items:
            problem = None
            if item.topic in (REGISTRY_COMPANY, REGISTRY_PERSON):
                problem = self._on_change(item.topic, item.event, out, stats)
            else:
                self._on_decision(item.topic, item.event, out, stats)
            if problem:
                log.warning("cascade.dead_letter", topic=item.topic, partition=item.partition, offset=item.offset,
                            reason=problem)
                step.dead_letter(self.config.name, item, problem)
                stats.dead_lettered += 1
        for department in sorted(stats.answered):
            self.conn.execute(
                "INSERT INTO cascade_departments (cascade, department, last_answer_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (cascade, department) DO UPDATE SET last_answer_at = now()",
                (self.config.name, department))
        for topic, event in out:
            step.emit(topic, event)
        step.on_commit(lambda: self._observe(stats))

    # -- a register change ------------------------------------------------------------------------
    def _on_change(self, topic: str, event: Event, out: list, stats: BatchStats) -> str | None:
        problem = plan.check_change(event, topic, self.subs)
        if problem:
            return problem
        change = plan.ChangeRef.from_event(event)
        row = self.conn.execute(
            "SELECT change_event_id::text FROM cascade_changes WHERE cascade = %s AND (change_event_id = %s OR "
            "(register = %s AND register_key = %s AND sequence = %s)) LIMIT 1",
            (self.config.name, change.event_id, change.register, change.key, change.sequence)).fetchone()
        if row is not None:
            if row[0] == change.event_id:
                stats.duplicates += 1
                return None
            return f"sequence {change.sequence} of this key already names another change"
        targets = self.subs.targets(change.register, change.changes)
        self.conn.execute(
            "INSERT INTO cascade_changes (cascade, change_event_id, register, register_key, sequence, change_kind, "
            "changed_fields, changes, occurred_at, correlation_id, region_code, targets, completed_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)",
            (self.config.name, change.event_id, change.register, change.key, change.sequence, change.change_kind,
             sorted(change.changes), Jsonb(dict(change.changes)) if targets else None,
             change.occurred_at, change.correlation_id, change.region_code, len(targets), not targets))
        for department, fields in targets.items():
            earlier = self.conn.execute(
                "SELECT 1 FROM cascade_targets WHERE cascade = %s AND register = %s AND register_key = %s AND "
                "department = %s AND sequence < %s AND state <> 'applied' LIMIT 1",
                (self.config.name, change.register, change.key, department, change.sequence)).fetchone()
            held = earlier is not None
            tid = plan.task_id(change.event_id, department, 1)
            self.conn.execute(
                "INSERT INTO cascade_targets (cascade, change_event_id, department, register, register_key, sequence, "
                "fields, state, attempt, sends, task_id, first_sent_at, last_sent_at, next_attempt_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1, %s, %s, "
                "CASE WHEN %s THEN NULL ELSE now() END, CASE WHEN %s THEN NULL ELSE now() END, "
                "CASE WHEN %s THEN NULL ELSE now() + make_interval(secs => %s) END)",
                (self.config.name, change.event_id, department, change.register, change.key, change.sequence,
                 list(fields), "held" if held else "sent", 0 if held else 1, tid, held, held, held,
                 self.config.ack_timeout_s))
            self.conn.execute("INSERT INTO cascade_tasks (cascade, task_id, change_event_id, department, attempt) "
                              "VALUES (%s, %s, %s, %s, 1) ON CONFLICT DO NOTHING",
                              (self.config.name, tid, change.event_id, department))
            if not held:
                out.append((tasks_topic(department), plan.sync_task(change, department, fields, 1)))
                stats.sent.append((department, change.register, None))
                stats.tasks_sent += 1
        stats.changes += 1
        log.info("cascade.change", register=change.register, key=change.key, sequence=change.sequence,
                 change_kind=change.change_kind, targets=list(targets), correlation_id=change.correlation_id)
        return None

    # -- a department's acknowledgement ------------------------------------------------------------
    def _on_decision(self, topic: str, event: Event, out: list, stats: BatchStats) -> None:
        if event.type != "DecisionRecorded" or event.payload.get("kind") != plan.SYNC_KIND:
            return  # case decisions share the topic: dispatch's business
        p = event.payload
        department = topic.removeprefix("decisions.")
        row = self.conn.execute(
            "SELECT k.change_event_id::text, k.attempt, t.state, t.attempt, t.register, t.register_key, t.sequence "
            "FROM cascade_tasks k JOIN cascade_targets t ON t.cascade = k.cascade AND "
            "t.change_event_id = k.change_event_id AND t.department = k.department "
            "WHERE k.cascade = %s AND k.task_id = %s AND k.department = %s FOR UPDATE OF t",
            (self.config.name, p["task_id"], department)).fetchone()
        if row is None:
            return  # a task of another cascade deployment
        change_id, task_attempt, state, attempt, register, key, sequence = row
        stats.decisions += 1
        stats.answered.add(department)
        if state == "applied" or task_attempt != attempt or state != "sent":
            stats.duplicates += 1  # a repeat, or the answer to an attempt already superseded
            return
        if p["outcome"] == "applied":
            self.conn.execute(
                "UPDATE cascade_targets SET state = 'applied', applied_at = now(), next_attempt_at = NULL "
                "WHERE cascade = %s AND change_event_id = %s AND department = %s",
                (self.config.name, change_id, department))
            done = self.conn.execute(
                "UPDATE cascade_changes SET applied = applied + 1, "
                "completed_at = CASE WHEN applied + 1 >= targets THEN now() END, "
                "changes = CASE WHEN applied + 1 >= targets THEN NULL ELSE changes END "
                "WHERE cascade = %s AND change_event_id = %s "
                "RETURNING completed_at IS NOT NULL, EXTRACT(EPOCH FROM (now() - occurred_at))::float8",
                (self.config.name, change_id)).fetchone()
            if done[0]:
                stats.completed.append((register, done[1]))
                log.info("cascade.completed", register=register, key=key, sequence=sequence,
                         fanout_s=round(done[1], 3))
            self._release_next(register, key, department, out, stats)
        elif p["outcome"] == "failed":
            failures = self.conn.execute(
                "UPDATE cascade_targets SET state = 'failed', failures = failures + 1, last_reason = %s, "
                "next_attempt_at = now() + make_interval(secs => %s) "
                "WHERE cascade = %s AND change_event_id = %s AND department = %s RETURNING failures",
                ((p.get("reason") or "failed")[:300], self._failure_wait(attempt), self.config.name, change_id,
                 department)).fetchone()[0]
            log.warning("cascade.target_failed", department=department, register=register, key=key,
                        sequence=sequence, failures=failures)
        else:
            log.warning("cascade.unexpected_outcome", department=department, outcome=p["outcome"])

    def _failure_wait(self, attempt: int) -> float:
        return plan.backoff(attempt, self.config.backoff_base_s, self.config.backoff_max_s)

    def _release_next(self, register: str, key: str, department: str, out: list, stats: BatchStats) -> None:
        """The department applied its head change of this key: send it the next one waiting."""
        row = self.conn.execute(
            "SELECT t.change_event_id::text, t.fields, t.attempt, c.sequence, c.change_kind, c.changes, c.occurred_at, "
            "c.correlation_id, c.region_code FROM cascade_targets t JOIN cascade_changes c ON "
            "c.cascade = t.cascade AND c.change_event_id = t.change_event_id "
            "WHERE t.cascade = %s AND t.register = %s AND t.register_key = %s AND t.department = %s "
            "AND t.state <> 'applied' ORDER BY t.sequence LIMIT 1 FOR UPDATE OF t",
            (self.config.name, register, key, department)).fetchone()
        if row is None:
            return
        change_id, fields, attempt, sequence, kind, changes, occurred_at, correlation_id, region = row
        state = self.conn.execute("SELECT state FROM cascade_targets WHERE cascade = %s AND change_event_id = %s "
                                  "AND department = %s", (self.config.name, change_id, department)).fetchone()[0]
        if state != "held":
            return  # already on its way (an out-of-order change): nothing to release
        self.conn.execute(
            "UPDATE cascade_targets SET state = 'sent', sends = sends + 1, first_sent_at = now(), last_sent_at = now(), "
            "next_attempt_at = now() + make_interval(secs => %s) "
            "WHERE cascade = %s AND change_event_id = %s AND department = %s",
            (self.config.ack_timeout_s, self.config.name, change_id, department))
        change = plan.ChangeRef(change_id, register, key, sequence, kind, occurred_at, correlation_id, region,
                                dict(changes or {}))
        out.append((tasks_topic(department), plan.sync_task(change, department, fields, attempt)))
        stats.sent.append((department, register, None))
        stats.tasks_sent += 1

    # -- timers: re-sends, new attempts, escalation --------------------------------------------------
    def listening(self, behind: dict) -> set[str]:
        """Departments whose silence this process can judge: it has listened for a whole
        acknowledgement timeout and read its partitions of their decision topic to the end."""
        if self.listening_since is None or time.monotonic() - self.listening_since < self.config.ack_timeout_s:
            return set()
        out = set()
        for department in self.departments:
            topic = decisions_topic(department)
            if all(left == 0 for tp, left in behind.items() if tp.topic == topic):
                out.add(department)
        return out

    def tick(self, step: Step, limit: int = 500) -> None:
        self.conn = step.conn
        stats = BatchStats()
        out: list[tuple[str, Event]] = []
        listening = self.listening(step.behind)
        due = self.conn.execute(
            "SELECT change_event_id::text, department, register_key FROM cascade_targets "
            "WHERE cascade = %s AND state IN ('sent', 'failed') AND next_attempt_at <= now() "
            "ORDER BY next_attempt_at LIMIT %s", (self.config.name, limit)).fetchall()
        for change_id, department, key in due:
            if not self._lock(key, wait=False):
                continue  # another instance is working on this key: next tick
            self._retry(change_id, department, out, stats, department in listening)
        for topic, event in out:
            step.emit(topic, event)
        step.on_commit(lambda: self._observe(stats))
        now = time.monotonic()
        if now >= self._next_gauges:
            self._next_gauges = now + 5.0
            self.update_gauges()

    def _retry(self, change_id: str, department: str, out: list, stats: BatchStats, listening: bool) -> None:
        row = self.conn.execute(
            "SELECT t.state, t.attempt, t.fields, t.failures, t.silent_resends, t.sends, t.first_sent_at, "
            "t.last_reason, t.escalated_at, t.task_id, c.register, c.register_key, c.sequence, c.change_kind, "
            "c.changes, c.occurred_at, c.correlation_id, c.region_code "
            "FROM cascade_targets t JOIN cascade_changes c ON c.cascade = t.cascade AND c.change_event_id = t.change_event_id "
            "WHERE t.cascade = %s AND t.change_event_id = %s AND t.department = %s "
            "AND t.state IN ('sent', 'failed') AND t.next_attempt_at <= now() FOR UPDATE OF t",
            (self.config.name, change_id, department)).fetchone()
        if row is None:
            return
        (state, attempt, fields, failures, silent, sends, first_sent_at, reason, escalated_at, tid,
         register, key, sequence, kind, changes, occurred_at, correlation_id, region) = row
        change = plan.ChangeRef(change_id, register, key, sequence, kind, occurred_at, correlation_id, region,
                                dict(changes or {}))
        if state == "failed":
            attempt += 1
            tid = plan.task_id(change_id, department, attempt)
            self.conn.execute("INSERT INTO cascade_tasks (cascade, task_id, change_event_id, department, attempt) "
                              "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                              (self.config.name, tid, change_id, department, attempt))
            wait = self.config.ack_timeout_s
            reason_label = "failed"
        else:
            busy = self.conn.execute(
                "SELECT last_answer_at > now() - make_interval(secs => %s) AND %s > now() - make_interval(secs => %s) "
                "FROM cascade_departments WHERE cascade = %s AND department = %s",
                (self.config.ack_timeout_s, first_sent_at, self.config.stall_after_s, self.config.name,
                 department)).fetchone()
            if not listening or (busy and busy[0]):  # cannot tell yet, or the department is answering others
                self.conn.execute("UPDATE cascade_targets SET next_attempt_at = now() + make_interval(secs => %s) "
                                  "WHERE cascade = %s AND change_event_id = %s AND department = %s",
                                  (self.config.ack_timeout_s, self.config.name, change_id, department))
                return
            silent += 1
            wait = plan.backoff(silent + 1, self.config.ack_timeout_s, max(self.config.ack_timeout_s,
                                                                              self.config.backoff_max_s))
            reason_label = "silent"
        escalate = escalated_at is None and failures + silent >= self.config.escalate_after
        self.conn.execute(
            "UPDATE cascade_targets SET state = 'sent', attempt = %s, task_id = %s, sends = sends + 1, "
            "silent_resends = %s, last_sent_at = now(), next_attempt_at = now() + make_interval(secs => %s), "
            "escalated_at = CASE WHEN %s THEN now() ELSE escalated_at END "
            "WHERE cascade = %s AND change_event_id = %s AND department = %s",
            (attempt, tid, silent, wait, escalate, self.config.name, change_id, department))
        out.append((tasks_topic(department), plan.sync_task(change, department, fields, attempt)))
        stats.sent.append((department, register, reason_label))
        stats.tasks_sent += 1
        if escalate:
            out.append((CASCADE_TOPIC, plan.escalation(change, department, tid, sends + 1, reason_label,
                                                       reason if state == "failed" else None, first_sent_at)))
            stats.escalated.append((department, register))
            log.warning("cascade.escalated", department=department, register=register, key=key, sequence=sequence,
                        last_outcome=reason_label, tries=failures + silent)

    def update_gauges(self) -> None:
        rows = self.conn.execute(
            "SELECT department, register, count(*) FROM cascade_targets WHERE cascade = %s AND state <> 'applied' "
            "GROUP BY department, register", (self.config.name,)).fetchall()
        counts = {(d, r): n for d, r, n in rows}
        for register in self.subs.registers:
            for department in self.subs.departments(register):
                PENDING.labels(department, register).set(counts.get((department, register), 0))
