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
