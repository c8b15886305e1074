"""Orders a consumer may read a log in, and batch cuts: for the "same rows in any order" tests."""
from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import Callable

from events.envelope import Event


def scramble(events: list[Event], seed: int) -> list[Event]:
    """Any order at all (stronger than Kafka's per-partition order), with a few events twice."""
    rnd = random.Random(seed)
    out = list(events) + rnd.sample(events, len(events) // 20)
    rnd.shuffle(out)
    return out


def interleave(events: list[Event], rnd: random.Random, topic_of: Callable[[Event], str],
               redeliveries: float = 0.1) -> list[Event]:
    """The log as a consumer may read it: Kafka keeps the order within a topic's partition, and no
    more (a case's events sit on one partition of each topic), with some redeliveries, even late."""
    streams: dict[str, deque] = defaultdict(deque)
    for e in events:
        streams[topic_of(e)].append(e)
    out: list[Event] = []
    while streams:
        topic = rnd.choice(sorted(streams))
        out.append(streams[topic].popleft())
        if not streams[topic]:
            del streams[topic]
        if rnd.random() < redeliveries:
            out.append(rnd.choice(out))
    return out


def uneven_cuts(n: int, seed: int) -> list[int]:
    """Where to cut a log of n events into batches of 1 to 80, a one-event batch (40:41) among them."""
    rnd, cuts, at = random.Random(seed), {40, 41}, 0
    while (at := at + rnd.randint(1, 80)) < n:
        cuts.add(at)
    return sorted(c for c in cuts if 0 < c < n)
