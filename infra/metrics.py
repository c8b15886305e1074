"""Prometheus metrics every process shares, and the /metrics endpoint helper.

Labels are topics, event types, consumer groups, departments, bundles: never a person,
a case id or anything a citizen typed (DESIGN: no PII in a metric label).
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS_PRODUCED = Counter("onething_events_produced_total", "Events produced", ["topic", "event_type"])
EVENTS_CONSUMED = Counter("onething_events_consumed_total", "Events consumed", ["group", "topic", "event_type"])
PROCESSING_SECONDS = Histogram(
    "onething_processing_seconds", "Time of the checkpoint (batch) that processed the event", ["group", "event_type"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
DEAD_LETTERS = Counter("onething_dead_letters_total", "Messages sent to the dead-letter topic", ["group", "topic", "reason"])
CONSUMER_LAG = Gauge("onething_consumer_lag", "Messages behind the end of the partition", ["group", "topic", "partition"])
DUPLICATES_DROPPED = Counter("onething_duplicates_dropped_total", "Repeated events dropped by id", ["group"])


def serve(port: int, addr: str = "127.0.0.1") -> int:
    """Expose /metrics on `port` (0 = any free port); returns the port actually bound."""
    server, _thread = start_http_server(port, addr=addr)
    return server.server_address[1]


# -- deadlines, 办不成事 and 好差评 (issue 6); labels: scope, bundle, department, reason, grade ----
DEADLINES_APPROACHING = Counter("onething_deadlines_approaching_total",
                                "Deadlines with few working days left, as the deadline clock noticed them",
                                ["scope", "bundle", "department"])
DEADLINES_BREACHED = Counter("onething_deadlines_breached_total",
                             "Deadlines passed with the subject still open, as the deadline clock noticed them",
                             ["scope", "bundle", "department"])
ESCALATIONS_OPEN = Gauge("onething_escalations_open", "Escalations (办不成事) in the supervisor queue not yet resolved",
                         ["reason", "overdue"])
RECTIFICATIONS_OPEN = Gauge("onething_rectifications_open", "Rectifications (差评整改) not yet replied to",
                            ["department", "overdue"])
RATINGS = Counter("onething_ratings_total", "Ratings (好差评) received, by grade of the case", ["bundle", "grade"])


# -- the SRE view (issue 6): lag of any consumer group, seen from outside, and zero-valued series ------
import threading as _threading

_declared: set[tuple[str, str]] = set()
_declared_lock = _threading.Lock()


_lag_reported: dict[str, set[tuple[str, str]]] = {}


def forget_revoked(group: str, now: set[tuple[str, str]]) -> None:
    """A partition that moved to another member of the group is reported there, not here:
    a stale value left behind would look like lag that never shrinks."""
    for topic, partition in _lag_reported.get(group, set()) - now:
        try:
            CONSUMER_LAG.remove(group, topic, partition)
        except KeyError:
            pass
    _lag_reported[group] = now


def declare_consumer(group: str, topics) -> None:
    """Create the counters alerts and dashboards rely on at 0 for `group` on `topics`, once.

    A labelled counter only appears on its first increment, and `increase()` cannot see that
    first step from nothing; so dead letters (reason "" = the baseline) and dropped duplicates
    exist at 0 as soon as a consumer knows its partitions."""
    with _declared_lock:
        fresh = [t for t in topics if (group, t) not in _declared]
        if not fresh:
            return
        _declared.update((group, t) for t in fresh)
    DUPLICATES_DROPPED.labels(group=group)
    for topic in fresh:
        DEAD_LETTERS.labels(group=group, topic=topic, reason="")
