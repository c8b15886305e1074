"""Reading back what the system wrote, for assertions."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from kafka import KafkaConsumer, TopicPartition

from events import codec
from events.envelope import Event


def read_all(bootstrap: str, topics: Iterable[str], keep: Callable[[Event], bool] = lambda e: True,
             timeout_s: float = 30.0) -> list[Event]:
    """Every event currently on `topics` (from the beginning up to the end offsets at call time)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Event] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError("could not read the topics to their end")
            for _tp, msgs in consumer.poll(timeout_ms=500, max_records=5000).items():
                for m in msgs:
                    try:
                        ev = codec.decode(m.value)
                    except ValueError:
                        continue
                    if keep(ev):
                        out.append(ev)
        return out
    finally:
        consumer.close()


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
