"""Starting a test's own projection at the topics' current end instead of replaying the whole log."""
from __future__ import annotations

import psycopg
from kafka import TopicPartition

from infra.fast_forward import end_offsets, store_offsets


def seed_offsets(bootstrap: str, database_url: str, name: str, topics) -> dict[TopicPartition, int]:
    """Start projection `name` at the topics' current end (instead of reading the whole log)."""
    ends = end_offsets(bootstrap, topics)
    with psycopg.connect(database_url) as conn:
        store_offsets(conn, name, ends)
    return ends


def caught_up(database_url: str, name: str, ends: dict[TopicPartition, int]) -> bool:
    """Read model `name` stored offsets at or past `ends` (partitions with nothing are skipped),
    under its current generation's namespace (a shadow rebuild swapped in — an earlier test's —
    stores them under a new one: projectors/generations.py)."""
    from projectors import generations

    with psycopg.connect(database_url) as conn:
        namespace = generations.current(conn, name)
        stored = {TopicPartition(t, p): o for t, p, o in conn.execute(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer = %s", (namespace,))}
    return all(stored.get(tp, 0) >= end for tp, end in ends.items() if end)


def settled(bootstrap: str, database_url: str, name: str, topics, check=lambda: None) -> bool:
    """The log is quiet and projection `name` has applied all of it: the topics' ends, read again
    after `name` reached them, have not moved. A test that compares a live read model with a
    rebuild waits for this before it stops the system — the last events a case gets (its
    completion, a department's late duplicate) can still be on their way when the case already
    reads completed, and a rebuild would have them while the stopped live view would not."""
    ends = end_offsets(bootstrap, topics)
    check()
    if not caught_up(database_url, name, ends):
        return False
    return end_offsets(bootstrap, topics) == ends
