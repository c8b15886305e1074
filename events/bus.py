"""Kafka at the edge: producer and consumer factories with the safe defaults, and publishing.

Defaults that protect the guarantees (DESIGN: "Nothing lost"): producers use acks=all with
idempotence and wait for the broker's acknowledgement before anyone is told "accepted";
consumers never auto-commit — each consumer commits only after its effect is durable.
Every client authenticates as a principal (events/kafka_auth.py; None: the process's default).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.producer.future import RecordMetadata

from . import kafka_auth
from .codec import encode
from .envelope import Event

CONTENT_TYPE = b"application/vnd.onething.avro-single-object"


def producer_config(bootstrap: str, principal: str | kafka_auth.Credentials | None = None,
                    **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = dict(
        **kafka_auth.connection(bootstrap, principal),
        acks="all",
        enable_idempotence=True,
        retries=2**31 - 1,
        max_in_flight_requests_per_connection=5,
        delivery_timeout_ms=120_000,
        request_timeout_ms=30_000,
        linger_ms=5,
        client_id="onething",
    )
    config.update(overrides)
    return config


def make_producer(bootstrap: str, principal: str | kafka_auth.Credentials | None = None,
                  **overrides: Any) -> KafkaProducer:
    return KafkaProducer(**producer_config(bootstrap, principal, **overrides))


def make_consumer(bootstrap: str, group_id: str | None, *topics: str, read_committed: bool = False,
                  principal: str | kafka_auth.Credentials | None = None, **overrides: Any) -> KafkaConsumer:
    config: dict[str, Any] = dict(
        **kafka_auth.connection(bootstrap, principal),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        max_poll_records=500,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        client_id=f"onething-{group_id or 'reader'}",
    )
    config.update(overrides)
    return KafkaConsumer(*topics, **config)


def headers_for(event: Event) -> list[tuple[str, bytes]]:
    """Headers let a department backend route or trace without decoding the body."""
    env = event.envelope
    return [
        ("content-type", CONTENT_TYPE),
        ("event_type", env.event_type.encode()),
        ("event_id", env.event_id.encode()),
        ("correlation_id", env.correlation_id.encode()),
    ]


def send(producer: KafkaProducer, topic: str, event: Event):
    """Queue one event keyed by its envelope key; returns the future of its acknowledgement."""
    from infra import metrics  # lazy: keeps events/ importable without prometheus set up

    future = producer.send(topic, key=event.key.encode(), value=encode(event), headers=headers_for(event))
    metrics.EVENTS_PRODUCED.labels(topic=topic, event_type=event.type).inc()
    return future


def publish(producer: KafkaProducer, topic: str, event: Event, timeout: float = 30.0) -> RecordMetadata:
    """Send and wait until the broker acknowledged it (acks=all): only then is it accepted."""
    return send(producer, topic, event).get(timeout=timeout)


def publish_all(producer: KafkaProducer, items: Iterable[tuple[str, Event]], timeout: float = 60.0) -> list[RecordMetadata]:
    """Send many and wait for every acknowledgement; raises if any was not acknowledged."""
    futures = [send(producer, topic, event) for topic, event in items]
    producer.flush(timeout=timeout)
    return [f.get(timeout=timeout) for f in futures]
