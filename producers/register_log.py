"""The master register rebuilt from its own log: what `registry.<register>` says each entry is.

`register_keys.record` (written by producers/registers.py) must equal this fold at all times;
`verify_master` says which keys differ (`onething registers verify`). Sealed values are compared as
the ciphertext they are — the stored entry and the log hold the same bytes — so no key is needed.
"""
from __future__ import annotations

import psycopg

from events import codec, kafka_auth

from .register_changes import RegisterRecord
from .registers import TOPICS


def master_from_log(bootstrap: str, register: str, keys: set[str] | None = None,
                    timeout_s: float = 120.0) -> dict[str, RegisterRecord]:
    """Fold `registry.<register>` from its beginning to its current end: the register as the log says
    it is (keys: only these). The writer's `register_keys.record` must equal it (`verify_master`)."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    from .register_changes import fold_all

    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap), enable_auto_commit=False)
    try:
        topic = TOPICS[register]
        tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        events = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=5000).items():
                for m in msgs:
                    if m.offset >= ends[tp] or (keys is not None and (m.key or b"").decode(errors="replace") not in keys):
                        continue
                    try:
                        events.append(codec.decode(m.value))
                    except codec.DecodeError:
                        continue  # not a register change: the cascade dead-letters it
        return {k: rec for (reg, k), rec in fold_all(events, topic).items() if reg == register}
    finally:
        consumer.close()


def verify_master(bootstrap: str, database_url: str, register: str, keys: set[str] | None = None) -> list[str]:
    """Keys whose confirmed entry differs from the fold of the log (an entry with a pending intent is
    compared after that intent, which the log may or may not hold yet, so it is skipped)."""
    from_log = master_from_log(bootstrap, register, keys)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT register_key, record, next_sequence - 1, pending_event IS NOT NULL FROM register_keys "
                            "WHERE register = %s AND next_sequence > 1", (register,)).fetchall()
    differ = []
    for key, record, sequence, pending in rows:
        if (keys is not None and key not in keys) or pending:
            continue
        logged = from_log.get(key)
        if logged is None or logged.sequence != sequence or dict(logged.fields) != dict(record):
            differ.append(key)
    return sorted(differ)
