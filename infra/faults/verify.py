"""What must hold after a faults run, checked against the log and the databases, not the clients.

- every application answered 202 became exactly one case, and that case completed;
- every completed case has exactly one child in the police register (户口登记) and exactly one
  final decision per service on the decisions topics (distinct events, whatever was redelivered),
  and no task's outcome said twice under two event ids;
- every company change the register recorded was applied exactly once, in sequence order, by
  every department that keeps a copy of the changed fields, and never needed the stale-value guard;
- every PostgreSQL read model the system runs (case view, KPIs, escalation queue, ratings, read
  audit, deadlines) equals a fresh rebuild of it from the log, row for row, in every table, but for
  the few columns that are not a function of the log (infra/faults/rebuilds.py, which does it);
- no answer was a 5xx other than a 503 with Retry-After; nothing was dead-lettered.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import psycopg
import structlog
from kafka import KafkaConsumer, TopicPartition

from events import kafka_auth

log = structlog.get_logger(__name__)

FINAL = ("approved", "rejected")   # a service's decision; "accepted" (受理) and corrections come before it


class Completions:
    """When the case view first showed each case completed; polled by the run loop, and
    reconnecting when PostgreSQL restarts under it."""

    def __init__(self, database_url: str):
        self.database_url = database_url
        self.completed: dict[str, float] = {}
        self._conn: psycopg.Connection | None = None

    def poll(self, case_ids) -> None:
        pending = [c for c in case_ids if c not in self.completed]
        if not pending:
            return
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=3)
            rows = self._conn.execute("SELECT case_id FROM case_view WHERE case_id = ANY(%s) AND status = 'completed'",
                                      (pending,)).fetchall()
        except psycopg.Error:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return
        now = time.monotonic()
        for (case_id,) in rows:
            self.completed.setdefault(case_id, now)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def read_topics(bootstrap: str, topics: list[str], timeout_s: float = 120.0) -> list:
    """Every event on `topics` from the beginning to their end now (None for undecodable bytes)."""
    from infra.fuzz_follow import read_events

    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap, kafka_auth.ADMIN), enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        starts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    finally:
        consumer.close()
    events, reached = read_events(bootstrap, starts, timeout_s=timeout_s)
    if any(reached[tp] < ends[tp] for tp in tps):
        raise TimeoutError(f"could not read {topics[:3]}… to their end in {timeout_s:.0f} s")
    return [ev for _topic, ev in events]


@dataclass
class Findings:
    """Per case and per change what the log and the databases say (run.py slices it per scenario)."""
    completed: set[str] = field(default_factory=set)
    police_children: Counter = field(default_factory=Counter)
    #: (case, service) → {decision event id: (task id, outcome)}: 受理 (accepted) then the final one
    decisions: dict[tuple[str, str], dict[str, tuple[str, str]]] = field(default_factory=lambda: defaultdict(dict))
    services: dict[str, int] = field(default_factory=dict)     # case → services its bundle has
    register_problems: list[str] = field(default_factory=list)
    register_changes: int = 0
    register_applications: int = 0
    rebuild_differences: dict[str, int] = field(default_factory=dict)   # read model → rows differing (-1: not compared)
    read_models: dict[str, dict] = field(default_factory=dict)          # read model → rebuilds.ModelResult.as_dict()
    read_models_equal: bool = False
    aftercare: dict[str, int] = field(default_factory=dict)              # rating | escalation | read → answered
    aftercare_problems: list[str] = field(default_factory=list)
    dead_letters: int = 0

    def case_problems(self, case_id: str) -> list[str]:
        out = []
        if case_id not in self.completed:
            out.append("not completed")
        if self.police_children[case_id] != 1:
            out.append(f"{self.police_children[case_id]} children in the police register")
        decided = {s: ids for (c, s), ids in self.decisions.items() if c == case_id}
        if len(decided) != self.services.get(case_id, len(decided)):
            out.append(f"{len(decided)} of {self.services.get(case_id)} services decided")
        for s, decisions in decided.items():
            finals = {i for i, (_task, outcome) in decisions.items() if outcome in FINAL}
            if len(finals) != 1:
                out.append(f"{len(finals)} final decisions for {s}")
            said = Counter(decisions.values())   # the same outcome of the same task under two ids: said twice
            out += [f"{outcome} said {n} times for {s}" for (_task, outcome), n in said.items() if n > 1]
        return out


def gather(bootstrap: str, database_url: str, case_ids: set[str], companies: list[str]) -> Findings:
    from catalog.loader import load_catalog
    from catalog.subscriptions import load_subscriptions
    from infra.topics import DEADLETTER, REGISTRY_COMPANY, decisions_topic

    catalog = load_catalog()
    f = Findings()
    with psycopg.connect(database_url) as conn:
        f.completed = {r[0] for r in conn.execute(
            "SELECT case_id FROM case_view WHERE case_id = ANY(%s) AND status = 'completed'", (list(case_ids),))}
        f.police_children = Counter(dict(conn.execute(
            "SELECT case_id, count(*) FROM police_household_register WHERE case_id = ANY(%s) GROUP BY case_id",
            (list(case_ids),)).fetchall()))
        f.services = {c: len(s) for c, s in conn.execute(
            "SELECT case_id, services FROM case_view WHERE case_id = ANY(%s)", (list(case_ids),))}
        applied = conn.execute(
            "SELECT department, register_key, sequence, stale_fields FROM register_copy_applied "
            "WHERE register = 'company' AND register_key = ANY(%s) ORDER BY id", (companies,)).fetchall()
    for ev in read_topics(bootstrap, [decisions_topic(d) for d in sorted(catalog.departments)]):
        if ev is not None and ev.type == "DecisionRecorded" and ev.key in case_ids \
                and ev.payload.get("kind", "case_service") == "case_service":
            f.decisions[(ev.key, ev.payload["service_id"])][ev.id] = (ev.payload["task_id"], ev.payload["outcome"])
    f.dead_letters = sum(1 for _ in read_topics(bootstrap, [DEADLETTER]))

    # register changes: expected (department, key) → sequences, from the master register's own log
    subs = load_subscriptions()
    keys = set(companies)
    expected: dict[tuple[str, str], list[int]] = defaultdict(list)
    seen: set[str] = set()
    for ev in read_topics(bootstrap, [REGISTRY_COMPANY]):
        if ev is None or ev.key not in keys or ev.id in seen:
            continue
        seen.add(ev.id)
        for dept in subs.targets("company", ev.payload["changes"]):
            expected[(dept, ev.key)].append(ev.envelope.sequence)
    f.register_changes = len(seen)
    got: dict[tuple[str, str], list[int]] = defaultdict(list)
    for dept, key, seq, stale in applied:
        got[(dept, key)].append(seq)
        if stale:
            f.register_problems.append(f"{dept} needed the stale guard on {key} #{seq}")
    f.register_applications = len(applied)
    for dk in sorted(set(expected) | set(got)):
        want = sorted(expected.get(dk, []))
        if got.get(dk, []) != want:
            f.register_problems.append(f"{dk[0]} applied {dk[1][-6:]}… as {got.get(dk, [])[:12]}, the log has {want[:12]}")
    return f


def wait_caught_up(bootstrap: str, database_url: str, name: str, topics: tuple[str, ...] | None = None,
                   timeout_s: float = 120.0) -> bool:
    """Until the read model `name` stored offsets at the end of every topic it reads (the case
    view's topics unless `topics`). Its offsets are under its current generation's namespace: a
    shadow rebuild (`onething replay`) swaps in `name~<stamp>` and leaves `name`'s fenced at -1."""
    from infra.fast_forward import end_offsets
    from projectors.case_view import default_topics
    from projectors.generations import current

    ends = end_offsets(bootstrap, list(topics or default_topics()))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            namespace = current(conn, name)
            stored = {(t, p): o for t, p, o in conn.execute(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer = %s", (namespace,))}
        if all(stored.get((tp.topic, tp.partition), 0) >= end for tp, end in ends.items() if end > 0):
            return True
        time.sleep(1)
    log.warning("faults.not_caught_up", read_model=name)
    return False
