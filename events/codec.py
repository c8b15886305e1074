"""Avro single-object encoding: `C3 01`, the writer schema's 8-byte fingerprint, then the body.

Chosen over a schema registry because none is installable here and none is needed: any
standard Avro library (Java's BinaryMessageDecoder, Go's hamba/avro, fastavro) decodes a
message given the files in `schemas/published/`. Schemas are parsed once per process.
"""
from __future__ import annotations

import io
import uuid

from datetime import datetime
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from .envelope import Actor, Envelope, Event
from .schema_store import SchemaError, SchemaStore, SchemaVersion, default_store

MAGIC = b"\xc3\x01"


class DecodeError(ValueError):
    """The bytes are not a message this system can read (reason in the message)."""


def to_record(event: Event, version: int) -> dict[str, Any]:
    e = event.envelope  # field by field: dataclasses.asdict's deep copy was a third of an encode
    a = e.actor
    env = {"event_id": e.event_id, "event_type": e.event_type, "key": e.key, "sequence": e.sequence,
           "occurred_at": e.occurred_at,
           "actor": {"id_token": a.id_token, "role": a.role, "channel": a.channel, "staff_id": a.staff_id},
           "correlation_id": e.correlation_id, "causation_id": e.causation_id, "region_code": e.region_code,
           "schema_version": version}
    if "envelope" in event.payload:
        raise ValueError("payload may not contain an 'envelope' field")
    return {"envelope": env, **event.payload}


def from_record(record: dict[str, Any]) -> Event:
    env = dict(record.pop("envelope"))
    env["actor"] = Actor(**env["actor"])
    if isinstance(env["event_id"], uuid.UUID):
        env["event_id"] = str(env["event_id"])
    if not isinstance(env["occurred_at"], datetime):
        raise DecodeError("envelope.occurred_at is not a timestamp")
    return Event(Envelope(**env), record)


def encode(event: Event, store: SchemaStore | None = None) -> bytes:
    store = store or default_store()
    sv = store.latest(event.type)
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(sv.fingerprint)
    try:
        schemaless_writer(buf, sv.wire, to_record(event, sv.version))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # fastavro's messages can quote the offending datum; keep only the field path-ish text
        raise ValueError(f"{event.type} does not match schema v{sv.version}: {type(exc).__name__}") from None
    return buf.getvalue()


def decode(data: bytes, store: SchemaStore | None = None, reader: SchemaVersion | None = None) -> Event:
    """Read with the writer's schema, resolved into the newest published version of its type
    (or into `reader`: what a consumer pinned to an older version sees)."""
    store = store or default_store()
    if data is None or len(data) < 10 or data[:2] != MAGIC:
        raise DecodeError("not an Avro single-object message (no C3 01 marker)")
    try:
        writer = store.writer(data[2:10])
    except SchemaError as exc:
        raise DecodeError(str(exc)) from None
    reader = reader or store.latest(writer.event_type)
    try:  # the same schema twice would make fastavro resolve one against the other on every call
        record = schemaless_reader(io.BytesIO(data[10:]), writer.wire, None if reader is writer else reader.wire)
    except Exception as exc:  # truncated or corrupt body: fastavro raises several types
        raise DecodeError(f"corrupt {writer.event_type} v{writer.version} body: {type(exc).__name__}") from None
    if record["envelope"]["event_type"] != writer.event_type:
        # a body written under another type's fingerprint can still parse; consumers pick their
        # fold by event_type, so it would reach one with another type's payload (the value may be
        # anything a producer wrote: not quoted)
        raise DecodeError(f"envelope.event_type is not {writer.event_type}, the type of its schema")
    return from_record(record)
