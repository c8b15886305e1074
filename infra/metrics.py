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
    _forget_revoked(group, {(tp.topic, str(tp.partition)) for tp in assigned or ()})
    if not assigned:
        return
    declare_consumer(group, {tp.topic for tp in assigned})
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


# -- the SRE view (issue 6): lag of any consumer group, seen from outside, and zero-valued series ------
import threading as _threading

_declared: set[tuple[str, str]] = set()
_declared_lock = _threading.Lock()


_lag_reported: dict[str, set[tuple[str, str]]] = {}


def _forget_revoked(group: str, now: set[tuple[str, str]]) -> None:
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


def group_lag(admin, group: str, topics=()) -> dict:
    """{TopicPartition: lag} for `group` from its committed offsets and the partitions' end offsets
    (what `kafka-consumer-groups --describe` shows). Partitions of `topics` the group never
    committed count from the beginning of the partition."""
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    committed = {tp: om.offset for tp, om in (admin.list_group_offsets({group: None}).get(group) or {}).items()
                 if om is not None and om.offset is not None and om.offset >= 0}
    uncommitted: list[TopicPartition] = []
    if topics:
        for t in admin.describe_topics(sorted(topics)):
            for p in t.get("partitions") or []:
                tp = TopicPartition(t["name"], p["partition_index"])
                if tp not in committed:
                    uncommitted.append(tp)
    wanted = list(committed) + uncommitted
    if not wanted:
        return {}
    ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in wanted})
    starts = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in uncommitted}) if uncommitted else {}
    lag = {}
    for tp in wanted:
        end = ends.get(tp)
        if end is None:
            continue
        base = committed[tp] if tp in committed else (starts[tp].offset if tp in starts else 0)
        lag[tp] = max(0, end.offset - base)
    return lag


def watch_group_lag(bootstrap: str, group: str, interval_s: float = 5.0, topics=(),
                    stop: _threading.Event | None = None) -> _threading.Thread:
    """Set onething_consumer_lag{group,topic,partition} every `interval_s` from a daemon thread.

    For consumers whose client hides its position (faust's aiokafka in dispatch): the lag is the
    group's committed offset against the end of each partition, asked of the broker with an
    admin client of its own. A broker that is away leaves the last values and is asked again."""
    import structlog

    log = structlog.get_logger(__name__)
    stop = stop or _threading.Event()

    def loop() -> None:
        from kafka import KafkaAdminClient

        admin = None
        while not stop.is_set():
            try:
                if admin is None:
                    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"onething-lag-{group}",
                                             request_timeout_ms=10_000)
                lag = group_lag(admin, group, topics)
                declare_consumer(group, {tp.topic for tp in lag})
                for tp, value in lag.items():
                    CONSUMER_LAG.labels(group=group, topic=tp.topic, partition=str(tp.partition)).set(value)
            except Exception as exc:  # keep watching; a new client next time
                log.warning("metrics.lag_watch_failed", group=group, error=type(exc).__name__)
                if admin is not None:
                    try:
                        admin.close()
                    except Exception:
                        pass
                    admin = None
            stop.wait(interval_s)
        if admin is not None:
            admin.close()

    thread = _threading.Thread(target=loop, name=f"lag-{group}", daemon=True)
    thread.start()
    return thread
