"""After the fuzzer: did what the API accepted flow through every consumer, with no dead letter?

Read from the log itself, not from a read model, so a processor that skipped or parked an event
cannot hide it: the tasks dispatch wrote for each accepted case (`TaskDispatched` on the
`tasks.<department>` topics), the cases completed (`CaseCompleted` on `cases`), every dead letter
written since the run began (`deadletter`, with its consumer, origin topic and reason — never
its sealed original), and each consumer group's committed offsets against the logs' ends.

Each accepted register write (一处变更) is followed the same way, by the event id its answer named:
its `RegisterChanged` on `registry.company` / `registry.person` (logged), the cascade's
`register_sync` task to every department that keeps one of its fields (sent; which departments,
from catalog/data/subscriptions.yaml and the fields the logged change carries) and each of those
departments' `applied` decision on `decisions.<department>` (applied). `until` says how far to
wait: `logged` when no cascade runs, `applied` for the whole system.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from catalog.subscriptions import load_subscriptions
from events import codec, kafka_auth
from events.codec import DecodeError
from events.envelope import Event
from infra.fast_forward import end_offsets
from infra.topics import CASES, DEADLETTER, REGISTRY_COMPANY, REGISTRY_PERSON, decisions_topic, tasks_topic

SYNC_KIND = "register_sync"   # projectors/cascade_plan.py
UNTIL = ("logged", "sent", "applied")


@dataclass
class FollowReport:
    accepted: int
    dispatched: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)
    dead_letters: list[dict] = field(default_factory=list)  # consumer, origin_topic, reason
    behind: dict[str, int] = field(default_factory=dict)    # consumer group → messages not yet committed
    seconds: float = 0.0
    # register changes, by event id
    register_changes: dict[str, str] = field(default_factory=dict)   # accepted: event id → register
    logged: set[str] = field(default_factory=set)                    # on registry.*
    targets: dict[str, set[str]] = field(default_factory=dict)       # departments keeping one of its fields
    sent: dict[str, set[str]] = field(default_factory=dict)          # departments sent its sync task
    applied: dict[str, set[str]] = field(default_factory=dict)       # departments that applied it
    until: str = "applied"

    @property
    def missing(self) -> int:
        return self.accepted - len(self.dispatched)

    def register_reached(self, stage: str) -> set[str]:
        """The accepted register changes that got as far as `stage` (logged, sent, applied)."""
        if stage == "logged":
            return self.logged & set(self.register_changes)
        seen = self.sent if stage == "sent" else self.applied
        return {e for e in self.register_reached("logged") if self.targets.get(e, set()) <= seen.get(e, set())}

    @property
    def register_missing(self) -> int:
        """Accepted register changes that did not reach `until`."""
        return len(self.register_changes) - len(self.register_reached(self.until))

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.register_missing == 0 and not self.dead_letters and not self.behind


def watched_topics(departments: Iterable[str]) -> list[str]:
    registers = load_subscriptions().departments()
    return sorted({CASES, DEADLETTER, REGISTRY_COMPANY, REGISTRY_PERSON, *(tasks_topic(d) for d in departments),
                   *(decisions_topic(d) for d in registers)})


def mark(bootstrap: str, departments: Iterable[str]) -> dict[TopicPartition, int]:
    """Where the watched topics end before the run: only what comes after is the run's."""
    return end_offsets(bootstrap, watched_topics(departments))


def read_events(bootstrap: str, starts: dict[TopicPartition, int], timeout_s: float = 60.0
                ) -> tuple[list[tuple[str, Event | None]], dict[TopicPartition, int]]:
    """(topic, event or None if undecodable) of every message after `starts` up to the end now,
    and where it stopped reading (the next call starts there)."""
    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap), enable_auto_commit=False)
    try:
        tps = list(starts)
        consumer.assign(tps)
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        ends = consumer.end_offsets(tps)
        out: list[tuple[str, Event | None]] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=5000).items():
                for m in msgs:
                    if m.offset < ends[tp]:
                        try:
                            out.append((tp.topic, codec.decode(m.value)))
                        except DecodeError:
                            out.append((tp.topic, None))
        return out, {tp: min(consumer.position(tp), ends[tp]) for tp in tps}
    finally:
        consumer.close()


def group_lag(bootstrap: str, ends: dict[TopicPartition, int]) -> dict[str, int]:
    """Per consumer group, how many messages before `ends` it has not committed yet (its own partitions)."""
    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap))
    try:
        names = [g["group_id"] for g in admin.list_groups()]
        offsets = admin.list_group_offsets(names) if names else {}
    finally:
        admin.close()
    lag = {}
    for group, committed in offsets.items():
        behind = sum(max(0, ends[tp] - om.offset) for tp, om in committed.items() if tp in ends and om.offset >= 0)
        if behind:
            lag[group] = behind
    return lag


def follow(bootstrap: str, starts: dict[TopicPartition, int], case_ids: Iterable[str], *,
           timeout_s: float = 300.0, groups: bool = True, register_changes: dict[str, str] | None = None,
           until: str = "applied") -> FollowReport:
    """Wait (up to `timeout_s`) until every accepted case has its tasks, every accepted register
    change got as far as `until`, and every consumer group caught up with the logs as they ended
    when the wait began; then count the dead letters."""
    if until not in UNTIL:
        raise ValueError(f"until is one of {UNTIL}")
    started = time.monotonic()
    wanted = set(case_ids)
    report = FollowReport(accepted=len(wanted), register_changes=dict(register_changes or {}), until=until)
    deadline = started + timeout_s
    position = dict(starts)
    tasks: dict[str, str] = {}    # sync task id → change event id
    decided: dict[str, str] = {}  # sync task id → the department that applied it
    subs = load_subscriptions()
    while True:
        events, position = read_events(bootstrap, position)
        for topic, ev in events:
            if ev is None:
                continue
            if ev.type == "TaskDispatched" and ev.key in wanted:
                report.dispatched.add(ev.key)
            elif ev.type == "CaseCompleted" and ev.key in wanted:
                report.completed.add(ev.key)
            elif topic == DEADLETTER and ev.type == "DeadLettered":
                p = ev.payload
                report.dead_letters.append({"consumer": p.get("consumer"), "origin_topic": p.get("origin_topic"),
                                            "reason": (p.get("reason") or "")[:120]})
            elif report.register_changes:
                _follow_register(report, tasks, decided, subs, topic, ev)
        _applied(report, tasks, decided)
        if (report.missing == 0 and report.register_missing == 0) or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    if groups:
        every = end_offsets(bootstrap, _all_topics(bootstrap))
        while True:
            report.behind = group_lag(bootstrap, every)
            if not report.behind or time.monotonic() > deadline:
                break
            time.sleep(2.0)
    report.seconds = time.monotonic() - started
    return report


def _follow_register(report: FollowReport, tasks: dict[str, str], decided: dict[str, str], subs, topic: str,
                     ev: Event) -> None:
    """One event of the register flow: a change logged, a sync task sent, a department's decision."""
    p = ev.payload
    if topic in (REGISTRY_COMPANY, REGISTRY_PERSON) and ev.type == "RegisterChanged":
        if ev.id in report.register_changes:
            report.logged.add(ev.id)
            report.targets[ev.id] = set(subs.targets(p.get("register"), p.get("changes") or {}))
    elif ev.type == "TaskDispatched" and p.get("kind") == SYNC_KIND:
        change = (p.get("inputs") or {}).get("change_event_id")
        if change in report.register_changes:
            tasks[p.get("task_id")] = change
            report.sent.setdefault(change, set()).add(p.get("department"))
    elif ev.type == "DecisionRecorded" and p.get("kind") == SYNC_KIND and p.get("outcome") == "applied":
        decided[p.get("task_id")] = topic.removeprefix("decisions.")  # read before or after its task


def _applied(report: FollowReport, tasks: dict[str, str], decided: dict[str, str]) -> None:
    for task, department in decided.items():
        if task in tasks:
            report.applied.setdefault(tasks[task], set()).add(department)


def _all_topics(bootstrap: str) -> list[str]:
    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap))
    try:
        return sorted(t for t in consumer.topics() if not t.startswith("__"))
    finally:
        consumer.close()


def reasons(report: FollowReport) -> Counter:
    return Counter((d["consumer"], d["reason"].split(":")[0]) for d in report.dead_letters)
