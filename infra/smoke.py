"""A round trip through the real broker: produce events, read them back, compare.

The first thing `onething demo` runs, and the quickest proof that the broker, the Avro codec
and the safe producer/consumer settings work together on this machine.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from events import bus, codec
from events.envelope import Actor, new_event

from .settings import Settings
from .topics import SMOKE


@dataclass
class SmokeResult:
    produced: int
    read_back: int
    in_order: bool
    seconds: float


def run(settings: Settings, count: int = 100, keys: int = 10) -> SmokeResult:
    run_id = uuid.uuid4().hex[:8]
    actor = Actor("smoke-test", "system", "system")
    events = [
        new_event("RegisterChanged", f"smoke-{run_id}-{i % keys}",
                  {"register": "smoke", "change_kind": "ping", "changes": {"n": str(i)}},
                  actor=actor, region_code="000000", sequence=i // keys)
        for i in range(count)
    ]
    start = time.monotonic()
    producer = bus.make_producer(settings.bootstrap_servers)
    try:
        metas = bus.publish_all(producer, [(SMOKE, e) for e in events])
    finally:
        producer.close()
    consumer = bus.make_consumer(settings.bootstrap_servers, None, consumer_timeout_ms=10_000)
    from kafka import TopicPartition

    tps = sorted({TopicPartition(SMOKE, m.partition) for m in metas})
    consumer.assign(tps)
    starts = {tp: min(m.offset for m in metas if m.partition == tp.partition) for tp in tps}
    for tp, off in starts.items():
        consumer.seek(tp, off)
    wanted = {e.id for e in events}
    seen: dict[str, list[int]] = {}
    got = 0
    try:
        for msg in consumer:
            ev = codec.decode(msg.value)
            if ev.id in wanted:
                got += 1
                seen.setdefault(ev.key, []).append(ev.envelope.sequence)
            if got == count:
                break
    finally:
        consumer.close()
    in_order = all(seq == sorted(seq) for seq in seen.values())
    return SmokeResult(count, got, in_order, time.monotonic() - start)
