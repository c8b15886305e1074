"""Feeding a processor a run of events with one poison in the middle, on the real runtime.

The poison is the classic one: a NUL (U+0000) inside a text. Python, Avro and Kafka carry it
happily; PostgreSQL refuses it in `text` (psycopg already refuses to send it: DataError) and
in `jsonb` (SQLSTATE 22P05). What this module gives a test:
- `Topics`: topics of the test's own (created now, deleted at the end);
- `produce`: events, acknowledged, with where each one landed (to name the poison's origin);
- `drive`: step a `projectors.runtime.Worker` until its stored offsets reach given ends;
- `dead_letters` / `emitted`: what landed on the dead-letter topic and on output topics since
  given offsets (read with tests/support/cascade_harness.read_messages);
- `keys_on_one_partition`: keys that share a partition of a shared topic, so a run on it is
  one partition's run, in order, as on a test's own one-partition topic.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import psycopg
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import NewTopic
from kafka.producer.future import RecordMetadata

from events import bus, kafka_auth
from events.envelope import Event
from projectors.checkpoint import stored_offsets
from projectors.deadline_tick import partition_of
from projectors.runtime import Worker

from .topics import read_messages

NUL = "\x00"
MARK = "毒药"                      # what the poison's text says around its NUL: never in a reason
POISON_TEXT = f"{MARK}{NUL}{MARK}"
# how the runtime's reason (projectors/runtime.explain) names a NUL's failure: psycopg refusing to
# send it as text, or PostgreSQL refusing it in jsonb (22P05) or in text (22021)
NUL_FAILURES = ("DataError in ", "UntranslatableCharacter (22P05)", "CharacterNotInRepertoire (22021)")


class Topics:
    """Topics of a test's own, `partitions` each; `delete()` removes every one made."""

    def __init__(self, bootstrap: str):
        self.admin = KafkaAdminClient(**kafka_auth.connection(bootstrap))
        self.created: list[str] = []

    def make(self, *names: str, partitions: int = 1) -> tuple[str, ...]:
        self.admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        self.created.extend(names)
        return names

    def delete(self) -> None:
        try:
            if self.created:
                self.admin.delete_topics(self.created)
        finally:
            self.admin.close()


def produce(bootstrap: str, items: Iterable[tuple[str, Event]]) -> list[RecordMetadata]:
    """Send every event in order and wait for every acknowledgement (one flush: the run is
    appended as one batch per partition, so one poll can return all of it)."""
    producer = bus.make_producer(bootstrap)
    try:
        return bus.publish_all(producer, list(items))
    finally:
        producer.close()


def ends_of(sent: Iterable[RecordMetadata]) -> dict[TopicPartition, int]:
    """The next offset after the last of `sent`, per partition."""
    out: dict[TopicPartition, int] = {}
    for m in sent:
        tp = TopicPartition(m.topic, m.partition)
        out[tp] = max(out.get(tp, 0), m.offset + 1)
    return out


def drive(worker: Worker, database_url: str, targets: dict[TopicPartition, int], timeout_s: float = 30.0) -> None:
    """`worker.poll_once(300)` until the offsets it stored in PostgreSQL reach `targets`."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            worker.poll_once(300)
            stored = stored_offsets(conn, worker.name, targets)
            if all(stored.get(tp, -1) >= end for tp, end in targets.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{worker.name} did not get past the poison within {timeout_s} s: stored "
                    f"{ {f'{tp.topic}/{tp.partition}': stored.get(tp) for tp in targets} }, wanted "
                    f"{ {f'{tp.topic}/{tp.partition}': o for tp, o in targets.items()} }, stats {dict(worker.stats)}")


def dead_letters(bootstrap: str, since: dict[TopicPartition, int], consumer: str) -> list[Event]:
    """DeadLettered events of `consumer` (a consumer group) written after `since` (on `deadletter`)."""
    return [ev for _m, ev in read_messages(bootstrap, since, keep=lambda m, ev: ev is not None
                                        and ev.type == "DeadLettered" and ev.payload.get("consumer") == consumer)]


def emitted(bootstrap: str, since: dict[TopicPartition, int], keep: Callable[[Event], bool]) -> list[Event]:
    """Events written to the partitions of `since` after it, that `keep` keeps."""
    return [ev for _m, ev in read_messages(bootstrap, since, keep=lambda m, ev: ev is not None and keep(ev))]


def keys_on_one_partition(make_key: Callable[[], str], partitions: int, n: int) -> list[str]:
    """`n` distinct keys from `make_key()` that Kafka's default partitioner puts on one partition."""
    first = make_key()
    target = partition_of(first, partitions)
    keys = [first]
    while len(keys) < n:
        key = make_key()
        if key not in keys and partition_of(key, partitions) == target:
            keys.append(key)
    return keys


def forget(conn: psycopg.Connection, *consumers: str) -> None:
    """Drop the stored offsets and processed ids of `consumers` (a test's own processors)."""
    for name in consumers:
        conn.execute("DELETE FROM consumer_offsets WHERE consumer = %s", (name,))
        conn.execute("DELETE FROM processed_events WHERE consumer = %s", (name,))

