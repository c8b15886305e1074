"""Reading back what the system wrote, for assertions: the one place tests read topics.

- `read_messages`: every (message, event or None) after given offsets up to the end now;
- `read_since`: the decodable events among them that `keep` accepts;
- `read_all`: the same from the topics' beginnings;
- `Tail`: what is written from now on, polled until a predicate holds.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from kafka import KafkaConsumer, TopicPartition

from events import codec, kafka_auth
from events.codec import DecodeError
from events.envelope import Event


def read_messages(bootstrap: str, starts: dict[TopicPartition, int], keep=lambda msg, ev: True,
                  timeout_s: float = 60.0) -> list:
    """(message, event or None) of every message after `starts` up to the partitions' end now."""
    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap), enable_auto_commit=False)
    try:
        tps = list(starts)
        consumer.assign(tps)
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        ends = consumer.end_offsets(tps)
        out = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError("could not read the topics to their end")
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=5000).items():
                for m in msgs:
                    if m.offset >= ends[tp]:
                        continue
                    try:
                        ev = codec.decode(m.value)
                    except DecodeError:
                        ev = None  # not ours to judge: another producer's bytes on a shared topic
                    if keep(m, ev):
                        out.append((m, ev))
        return out
    finally:
        consumer.close()


def read_since(bootstrap: str, starts: dict[TopicPartition, int], keep: Callable[[Event], bool] = lambda e: True,
               timeout_s: float = 60.0) -> list[Event]:
    """Every decodable event after `starts` up to the end now that `keep` accepts."""
    return [ev for _m, ev in read_messages(bootstrap, starts, lambda m, ev: ev is not None and keep(ev), timeout_s)]


def mark(bootstrap: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """Where `topics` end now: read back from here with `read_since` instead of the whole log."""
    from infra.fast_forward import end_offsets

    return end_offsets(bootstrap, list(topics))


def read_all(bootstrap: str, topics: Iterable[str], keep: Callable[[Event], bool] = lambda e: True,
             timeout_s: float = 30.0) -> list[Event]:
    """Every event currently on `topics` (from the beginning up to the end offsets at call time)."""
    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap), enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        starts = consumer.beginning_offsets(tps)
    finally:
        consumer.close()
    return read_since(bootstrap, starts, keep, timeout_s)


class Tail:
    """What is written to `topics` from now on, decoded: (topic, event) in `events`."""

    def __init__(self, bootstrap: str, *topics: str):
        self.consumer = KafkaConsumer(**kafka_auth.connection(bootstrap), enable_auto_commit=False)
        deadline = time.monotonic() + 20
        tps: list[TopicPartition] = []
        for t in topics:
            while not (parts := self.consumer.partitions_for_topic(t)) and time.monotonic() < deadline:
                time.sleep(0.1)
            tps += [TopicPartition(t, p) for p in parts or ()]
        self.consumer.assign(tps)
        for tp, end in self.consumer.end_offsets(tps).items():
            self.consumer.seek(tp, end)
        self.events: list[tuple[str, Event]] = []

    def until(self, predicate: Callable[[list[tuple[str, Event]]], bool], timeout_s: float = 30) -> list:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.events):
            assert time.monotonic() < deadline, f"timed out; got {[(t, e.type) for t, e in self.events]}"
            for tp, msgs in self.consumer.poll(timeout_ms=200).items():
                for m in msgs:
                    try:
                        self.events.append((tp.topic, codec.decode(m.value)))
                    except DecodeError:
                        continue
        return self.events

    def close(self) -> None:
        self.consumer.close()


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
