"""Prometheus metrics every process shares, and the /metrics endpoint helper.

Labels are topics, event types, consumer groups, departments, bundles: never a person,
a case id or anything a citizen typed (DESIGN: no PII in a metric label).
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS_PRODUCED = Counter("onething_events_produced_total", "Events produced", ["topic", "event_type"])
EVENTS_CONSUMED = Counter("onething_events_consumed_total", "Events consumed", ["group", "topic", "event_type"])
PROCESSING_SECONDS = Histogram(
    "onething_processing_seconds", "Time to process one event", ["group", "event_type"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
DEAD_LETTERS = Counter("onething_dead_letters_total", "Messages sent to the dead-letter topic", ["group", "topic", "reason"])
CONSUMER_LAG = Gauge("onething_consumer_lag", "Messages behind the end of the partition", ["group", "topic", "partition"])
DUPLICATES_DROPPED = Counter("onething_duplicates_dropped_total", "Repeated events dropped by id", ["group"])


def serve(port: int, addr: str = "127.0.0.1") -> int:
    """Expose /metrics on `port` (0 = any free port); returns the port actually bound."""
    server, _thread = start_http_server(port, addr=addr)
    return server.server_address[1]


def record_lag(consumer, group: str) -> None:
    """Lag per assigned partition from the consumer's own position, without extra round trips."""
    assigned = consumer.assignment()
    if not assigned:
        return
    ends = consumer.end_offsets(list(assigned))
    for tp in assigned:
        try:
            pos = consumer.position(tp)
        except Exception:  # partition being revoked: nothing sensible to report
            continue
        CONSUMER_LAG.labels(group=group, topic=tp.topic, partition=str(tp.partition)).set(max(0, ends[tp] - pos))


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
