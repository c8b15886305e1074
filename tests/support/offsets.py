"""Starting a test's own projection at the topics' current end instead of replaying the whole log."""
from __future__ import annotations

import time

import psycopg
from kafka import KafkaConsumer, TopicPartition


def seed_offsets(bootstrap: str, database_url: str, name: str, topics) -> dict[TopicPartition, int]:
    """Start projection `name` at the topics' current end (instead of reading the whole log)."""
    ends = end_offsets(bootstrap, topics)
    with psycopg.connect(database_url) as conn:
        conn.cursor().executemany(
            "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
            [(name, tp.topic, tp.partition, off) for tp, off in ends.items()])
    return ends


def end_offsets(bootstrap: str, topics) -> dict[TopicPartition, int]:
    """Every partition of `topics` with its end offset. A topic whose metadata has not arrived
    yet must not be left out silently: its projection would start at its beginning instead."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + 15
        while True:
            consumer.topics()  # fetches the metadata of every topic
            parts = {t: consumer.partitions_for_topic(t) for t in topics}
            if all(parts.values()):
                break
            assert time.monotonic() < deadline, f"no partition metadata for {[t for t, p in parts.items() if not p]}"
            time.sleep(0.2)
        return consumer.end_offsets([TopicPartition(t, p) for t, ps in parts.items() for p in ps])
    finally:
        consumer.close()
