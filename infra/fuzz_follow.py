"""After the fuzzer: did what the API accepted flow through every consumer, with no dead letter?

Read from the log itself, not from a read model, so a processor that skipped or parked an event
cannot hide it: the tasks dispatch wrote for each accepted case (`TaskDispatched` on the
`tasks.<department>` topics), the cases completed (`CaseCompleted` on `cases`), every dead letter
written since the run began (`deadletter`, with its consumer, origin topic and reason — never
its sealed original), and each consumer group's committed offsets against the logs' ends.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from events import codec, kafka_auth
from events.codec import DecodeError
from events.envelope import Event
from infra.fast_forward import end_offsets
from infra.topics import CASES, DEADLETTER, tasks_topic


@dataclass
class FollowReport:
    accepted: int
    dispatched: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)
    dead_letters: list[dict] = field(default_factory=list)  # consumer, origin_topic, reason
    behind: dict[str, int] = field(default_factory=dict)    # consumer group → messages not yet committed
    seconds: float = 0.0

    @property
    def missing(self) -> int:
        return self.accepted - len(self.dispatched)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and not self.dead_letters and not self.behind


def watched_topics(departments: Iterable[str]) -> list[str]:
    return sorted({CASES, DEADLETTER, *(tasks_topic(d) for d in departments)})


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
           timeout_s: float = 300.0, groups: bool = True) -> FollowReport:
    """Wait (up to `timeout_s`) until every accepted case has its tasks and every consumer group
    caught up with the logs as they ended when the wait began; then count the dead letters."""
    started = time.monotonic()
    wanted = set(case_ids)
    report = FollowReport(accepted=len(wanted))
    deadline = started + timeout_s
    position = dict(starts)
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
        if report.missing == 0 or time.monotonic() > deadline:
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


def _all_topics(bootstrap: str) -> list[str]:
    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap))
    try:
        return sorted(t for t in consumer.topics() if not t.startswith("__"))
    finally:
        consumer.close()


def reasons(report: FollowReport) -> Counter:
    return Counter((d["consumer"], d["reason"].split(":")[0]) for d in report.dead_letters)
