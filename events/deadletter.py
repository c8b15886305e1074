"""Dead letters: a message that cannot be processed is parked with its reason and origin, and
processing goes on. The original bytes are kept untouched so it can be replayed once fixed."""
from __future__ import annotations

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord

from .bus import publish
from .envelope import SYSTEM, Event, derived_event_id, new_event

DEADLETTER = "deadletter"  # the topic; declared in infra/topics.py


def dead_letter_event(consumer_name: str, topic: str, partition: int, offset: int, key: bytes | None,
                      value: bytes | None, reason: str) -> Event:
    """`reason` must not quote message content (it may hold personal data): say what is wrong
    and where, e.g. "DecodeError: not an Avro single-object message"."""
    from infra import metrics

    origin = f"{topic}/{partition}/{offset}"
    metrics.DEAD_LETTERS.labels(group=consumer_name, topic=topic, reason=reason.split(":")[0][:40]).inc()
    return new_event(
        "DeadLettered", origin,
        {"consumer": consumer_name, "origin_topic": topic, "origin_partition": partition,
         "origin_offset": offset, "reason": reason[:500], "original_key": key, "original_value": value},
        actor=SYSTEM, region_code="000000",
        # the same message dead-lettered twice by the same consumer is one dead letter
        event_id=derived_event_id(origin, consumer_name, "dead-letter"),
    )


def dead_letter(producer: KafkaProducer, consumer_name: str, msg: ConsumerRecord, reason: str,
                topic: str = DEADLETTER) -> None:
    """Park `msg` and wait for the broker's acknowledgement: only then may its offset be committed."""
    publish(producer, topic, dead_letter_event(consumer_name, msg.topic, msg.partition, msg.offset,
                                               msg.key, msg.value, reason))
