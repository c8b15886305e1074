"""Every event type survives the wire: Avro single-object encoding, round-tripped by hypothesis."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import codec
from events.codec import DecodeError
from events.schema_store import default_store

from .support.avro_strategies import for_schema

STORE = default_store()
EVENT_TYPES = STORE.event_types()


def test_every_source_event_type_is_published():
    from events.schema_store import source_event_types

    assert set(source_event_types()) == set(EVENT_TYPES)
    assert {"ApplicationSubmitted", "TaskDispatched", "DecisionRecorded", "RegisterChanged"} <= set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip(event_type, data):
    sv = STORE.latest(event_type)
    record = data.draw(for_schema(sv.schema))
    record["envelope"]["event_type"] = event_type
    record["envelope"]["schema_version"] = sv.version
    event = codec.from_record(dict(record))
    wire = codec.encode(event)
    assert wire[:2] == b"\xc3\x01" and wire[2:10] == sv.fingerprint
    assert codec.decode(wire) == event


@given(st.binary(max_size=64))
def test_garbage_is_a_decode_error_not_a_crash(blob):
    with pytest.raises(DecodeError):
        codec.decode(blob)


def test_unknown_fingerprint_is_named_in_the_error():
    with pytest.raises(DecodeError, match="fingerprint"):
        codec.decode(b"\xc3\x01" + b"\x00" * 8 + b"\x02")


def test_encode_refuses_a_payload_that_does_not_match_without_echoing_values():
    from events.envelope import new_event

    secret = "11010519491231002X"
    ev = new_event("ApplicationWithdrawn", "case-1", {"reason": 12345, "extra": secret}, region_code="440200")
    with pytest.raises(ValueError) as info:
        codec.encode(ev)
    assert secret not in str(info.value)


def test_the_encoder_writes_every_envelope_field():
    """to_record spells the envelope out field by field (for speed): a field added to the
    dataclass must not be left out of the message silently."""
    import dataclasses

    from events.codec import to_record
    from events.envelope import Actor, Envelope, new_event

    record = to_record(new_event("ApplicationWithdrawn", "case-1", {"reason": None}, region_code="440203"), 1)
    assert set(record["envelope"]) == {f.name for f in dataclasses.fields(Envelope)}
    assert set(record["envelope"]["actor"]) == {f.name for f in dataclasses.fields(Actor)}
