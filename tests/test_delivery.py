"""Nothing lost, order kept per key: 10,000 events over 100 keys through the real broker."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from events import bus, codec
from events.envelope import Actor, new_event

from .support.scale import scaled

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent
N_EVENTS, N_KEYS = 10_000, 100
#: the killed consumer's run: its short form in the suite (tests/support/scale.py)
N_KILLED = scaled(N_EVENTS, 2_000)


def _events(run: str, n: int = N_EVENTS):
    actor = Actor("tester", "system", "system")
    return [
        new_event("RegisterChanged", f"{run}-k{i % N_KEYS:03d}",
                  {"register": "company", "change_kind": "test", "changes": {"i": str(i)}},
                  actor=actor, region_code="440200", sequence=i // N_KEYS)
        for i in range(n)
    ]


def _produce(bootstrap: str, topic: str, events) -> None:
    producer = bus.make_producer(bootstrap)
    try:
        metas = bus.publish_all(producer, [(topic, e) for e in events], timeout=120)
    finally:
        producer.close()
    assert len(metas) == len(events)


def _assert_per_key_order(records: list[tuple[str, int]]) -> dict[str, list[int]]:
    per_key: dict[str, list[int]] = defaultdict(list)
    for key, seq in records:
        per_key[key].append(seq)
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs), f"order broken for {key}"
    return per_key


def test_ten_thousand_events_none_lost_order_kept(bootstrap, fresh_topic):
    topic = fresh_topic(partitions=6)
    run = uuid.uuid4().hex[:6]
    events = _events(run)
    _produce(bootstrap, topic, events)

    consumer = bus.make_consumer(bootstrap, f"g-{run}", topic, consumer_timeout_ms=15_000)
    got: list[tuple[str, int]] = []
    ids = set()
    for msg in consumer:
        ev = codec.decode(msg.value)
        assert msg.key.decode() == ev.key  # keyed by the envelope key
        got.append((ev.key, ev.envelope.sequence))
        ids.add(ev.id)
        if len(got) == N_EVENTS:
            break
    consumer.commit()
    consumer.close()

    assert ids == {e.id for e in events}, "events lost"
    per_key = _assert_per_key_order(got)
    assert len(per_key) == N_KEYS and all(len(v) == N_EVENTS // N_KEYS for v in per_key.values())


# a fault scenario on topics and groups of its own: it runs in the test command's lane of the other
# files (infra/onething.sh), which ends earlier than the whole-system lane
def test_consumer_killed_midway_resumes_without_loss(bootstrap, fresh_topic, tmp_path):
    """kill -9 a consumer in the middle; a new member of its group resumes from the commit."""
    topic = fresh_topic(partitions=6)
    run = uuid.uuid4().hex[:6]
    events = _events(run, N_KILLED)
    _produce(bootstrap, topic, events)
    out = tmp_path / "effects.txt"
    group = f"g-{run}"
    cmd = [sys.executable, "-m", "tests.support.durable_consumer", bootstrap, topic, group, str(out),
           str(N_KILLED)]

    first = subprocess.Popen([*cmd, "0.2"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    progressed = 0
    deadline = time.monotonic() + 120
    while progressed < N_KILLED // 4 and time.monotonic() < deadline:
        line = first.stdout.readline()
        if line.startswith("progress"):
            progressed = int(line.split()[1])
    first.kill()  # SIGKILL: no chance to commit or close
    first.wait()
    assert 0 < progressed < N_KILLED, "the first consumer should die part-way"

    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]

    lines = [line.split() for line in out.read_text().splitlines()]
    ids = [row[2] for row in lines]
    assert set(ids) == {e.id for e in events}, "an event was lost across the crash"
    # at-least-once: only a batch in flight at the kill can repeat, never more than one poll's worth
    assert len(ids) - len(set(ids)) <= 200
    first_seen: dict[str, int] = {}
    ordered = []
    for key, seq, eid in lines:
        if eid not in first_seen:
            first_seen[eid] = 1
            ordered.append((key, int(seq)))
    _assert_per_key_order(ordered)
