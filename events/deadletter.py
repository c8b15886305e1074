"""Dead letters: a message that cannot be processed is parked with its reason and origin, and
processing goes on. The original key and bytes are kept, sealed to the operator's public key
(`ONETHING_OPERATOR_PUBLIC_KEY`; infra/keystore.py), so it can be replayed once fixed: a dead
letter is kept 365 days and what a broken or hostile producer put in a message may be personal
data in clear, so the topic holds ciphertext only. `opened(payload)` gives the originals back to
an authorised operator (`onething deadletters show`, which records the read)."""
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
    key, value = seal_original(origin, "key", key), seal_original(origin, "value", value)
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


SEALED = b"pdx1:"


def seal_original(origin: str, part: str, data: bytes | None) -> bytes | None:
    from infra import keystore

    if data is None:
        return None
    return SEALED + keystore.seal_to(keystore.operator_public_key(), f"onething/deadletter/{origin}/{part}", data)


def opened(payload: dict) -> tuple[bytes | None, bytes | None]:
    """(original key, original value) of a dead letter's payload, with the operator's private key."""
    from infra import keystore

    origin = f"{payload['origin_topic']}/{payload['origin_partition']}/{payload['origin_offset']}"
    private = keystore.operator_private_key()

    def one(part: str, data: bytes | None) -> bytes | None:
        if data is None or not data.startswith(SEALED):
            return data  # parked before dead letters were sealed
        return keystore.open_as(private, f"onething/deadletter/{origin}/{part}", data[len(SEALED):])

    return one("key", payload.get("original_key")), one("value", payload.get("original_value"))
