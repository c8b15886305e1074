"""One checkpoint of a processor: what a batch did, and the offsets it moves, made durable together.

The commit sequence (Quix Streams' `Checkpoint.commit`, pyeventsourcing's tracking record):
inside ONE PostgreSQL transaction the stored offsets are compared-and-set first (a member that
lost its partitions is fenced before it writes anything), the batch's event ids are recorded
(a repeat is dropped), the processor writes its states and rows, every derived event is sent
and the producer flushed, every acknowledgement checked; only then the transaction commits.
A crash anywhere before the commit re-runs the batch and derives the very same events (their
ids come from their causes), which consumers drop; after it nothing is re-read. Kafka's own
committed offsets are written afterwards and only for lag: PostgreSQL is where a member resumes.

This module holds the pieces of that sequence; `projectors/runtime.py` runs it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from kafka import KafkaProducer, TopicPartition

from events import bus
from events.deadletter import DEADLETTER, dead_letter_event
from events.envelope import Event


class Fenced(Exception):
    """The stored offsets (or a keyed state's version) are not what this member expected: another
    member took over a partition since. Roll back, forget cached state, re-read the offsets."""


@dataclass(frozen=True)
class Item:
    """One consumed message: where it came from, its bytes, and its event once decoded."""
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    event: Event | None = None
    problem: str | None = None   # why it is refused (undecodable, not the sender's to say): a dead letter
    skipped: bool = False        # a type the processor does not handle (seen in the headers, never decoded)

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass
class Step:
    """What a processor sees of one checkpoint: its connection (inside the open transaction),
    the fresh items in offset order per partition, and where to put what follows from them.

    `emit` queues a derived event (sent and acknowledged before the commit); `on_commit` queues
    work that must happen only once the checkpoint is durable (a cache update, a metric).
    `assignment` and `behind` (messages left per partition, None when not yet known) let a
    timer answer only for its own partitions and judge whether it has read to the end."""
    conn: psycopg.Connection
    items: list[Item] = field(default_factory=list)
    assignment: frozenset[TopicPartition] = frozenset()
    behind: dict[TopicPartition, int | None] = field(default_factory=dict)
    partition_counts: dict[str, int] = field(default_factory=dict)   # of the processor's topics (in a tick)
    out: list[tuple[str, Event]] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    @property
    def events(self) -> list[Event]:
        return [i.event for i in self.items]

    def emit(self, topic: str, event: Event) -> None:
        self.out.append((topic, event))

    def on_commit(self, fn: Callable[[], None]) -> None:
        self.after_commit.append(fn)

    def dead_letter(self, group: str, item: Item, reason: str) -> None:
        """Park the message with its reason and origin; its offset moves on in this checkpoint."""
        self.emit(DEADLETTER, dead_letter_event(group, item.topic, item.partition, item.offset, item.key,
                                                item.value, reason))

    def partitions(self) -> set[int]:
        """The partition numbers this member owns (the case topics are co-partitioned)."""
        return {tp.partition for tp in self.assignment}

    def owns(self, key: str, topic: str) -> bool:
        """Whether the partition Kafka's default partitioner puts `key` on in `topic` is this member's."""
        from kafka.partitioner.default import murmur2

        count = self.partition_counts.get(topic)
        if not count:
            return False
        return TopicPartition(topic, (murmur2(key.encode()) & 0x7FFFFFFF) % count) in self.assignment


# -- stored offsets: where a member resumes, compared-and-set ------------------------------------
_READ = "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer = %s"
_CAS = (
    "UPDATE consumer_offsets o SET next_offset = w.next, updated_at = now() "
    "FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[]) AS w(topic, partition, expected, next) "
    "WHERE o.consumer = %s AND o.topic = w.topic AND o.partition = w.partition AND o.next_offset = w.expected")
_FIRST = (
    "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) "
    "SELECT %s, t, p, n FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS w(t, p, n) ON CONFLICT DO NOTHING")


def stored_offsets(conn: psycopg.Connection, consumer: str,
                   partitions: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
    rows = conn.execute(_READ, (consumer,)).fetchall()
    found = {TopicPartition(t, p): o for t, p, o in rows}
    if partitions is None:
        return found
    wanted = set(partitions)
    return {tp: o for tp, o in found.items() if tp in wanted}


def store_first(conn: psycopg.Connection, consumer: str, offsets: dict[TopicPartition, int]) -> None:
    """Record starting offsets for partitions that have none yet (a processor that starts at the end)."""
    if offsets:
        conn.execute(_FIRST, (consumer, [tp.topic for tp in offsets], [tp.partition for tp in offsets],
                              list(offsets.values())))


def beyond_end(stored: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """The partitions whose stored offset lies past the log's end. A consumer never reads past
    the end, so such an offset belongs to a log that is gone (the topic deleted and created again,
    the broker's data wiped, a database restored beside another cluster). Seeking there would skip
    every event until the new log grows past it: silently lost, not processed."""
    return {tp: o for tp, o in stored.items() if tp in ends and o > ends[tp]}


def rewind(conn: psycopg.Connection, consumer: str, offsets: dict[TopicPartition, int]) -> None:
    """Store `offsets` as they are, backwards too: only for partitions `beyond_end` found, read
    again from their log's start (what was applied before is dropped by event id below)."""
    for tp, offset in offsets.items():
        conn.execute("UPDATE consumer_offsets SET next_offset = %s WHERE consumer = %s AND topic = %s "
                     "AND partition = %s", (offset, consumer, tp.topic, tp.partition))


def advance(conn: psycopg.Connection, consumer: str, expected: dict[TopicPartition, int | None],
            next_offsets: dict[TopicPartition, int]) -> None:
    """Move each partition's stored offset from what this member read at assignment (or at its
    last commit) to `next_offsets`, or raise Fenced. Run first in the transaction: the row locks
    it takes make a competing member wait, then fail, instead of both writing."""
    known = [(tp, expected[tp], n) for tp, n in next_offsets.items() if expected.get(tp) is not None]
    fresh = [(tp, n) for tp, n in next_offsets.items() if expected.get(tp) is None]
    for tp, before, after in known:
        if after < before:  # the paranoid check: an offset never goes backwards
            raise ValueError(f"offset of {tp.topic}/{tp.partition} would go back from {before} to {after}")
    if known:
        moved = conn.execute(_CAS, ([tp.topic for tp, _b, _a in known], [tp.partition for tp, _b, _a in known],
                                    [b for _tp, b, _a in known], [a for _tp, _b, a in known], consumer)).rowcount
        if moved != len(known):
            raise Fenced(f"{consumer}: stored offsets moved under this member ({moved} of {len(known)} matched)")
    if fresh:
        added = conn.execute(_FIRST, (consumer, [tp.topic for tp, _n in fresh], [tp.partition for tp, _n in fresh],
                                      [n for _tp, n in fresh])).rowcount
        if added != len(fresh):
            raise Fenced(f"{consumer}: another member stored offsets first")


# -- idempotence on event id ----------------------------------------------------------------------
_RECORD_IDS = ("INSERT INTO processed_events (consumer, event_id) SELECT %s, x FROM unnest(%s::uuid[]) AS x "
               "ON CONFLICT DO NOTHING RETURNING event_id")


def fresh_items(conn: psycopg.Connection, consumer: str, items: list[Item]) -> tuple[list[Item], int]:
    """The items whose event ids this consumer has not processed before (recorded now, in the
    checkpoint's transaction), first occurrence only; and how many repeats were dropped."""
    seen: set[str] = set()
    unique: list[Item] = []
    for item in items:
        if item.event.id not in seen:
            seen.add(item.event.id)
            unique.append(item)
    if not unique:
        return [], len(items)
    new = {str(r[0]) for r in conn.execute(_RECORD_IDS, (consumer, [i.event.id for i in unique])).fetchall()}
    fresh = [i for i in unique if i.event.id in new]
    return fresh, len(items) - len(fresh)


# -- derived events: sent, flushed and acknowledged before the commit ----------------------------
def publish(producer: KafkaProducer, out: list[tuple[str, Event]], timeout_s: float = 60.0) -> None:
    """Send every event, flush once, and raise if any was not acknowledged (acks=all)."""
    if not out:
        return
    futures = [bus.send(producer, topic, event) for topic, event in out]
    producer.flush(timeout=timeout_s)
    for f in futures:
        f.get(timeout=timeout_s)
