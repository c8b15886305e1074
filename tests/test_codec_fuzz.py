"""Hostile bytes on every topic's decoder: `codec.decode` answers DecodeError or an event, nothing else.

Every consumer of every topic reads a message with `events.codec.decode` and treats only a
DecodeError as undecodable (projectors/runtime.py `_decoded`: it parks the message as a dead
letter and goes on); any other exception would fail its whole batch on every restart. So what a
broken or hostile producer can put on a topic is fuzzed here against every published writer
schema (each version a topic may carry) and every pinned reader: random bodies behind a real
header, truncations and byte flips of real messages, unknown and swapped fingerprints, and a
length or block count of ~2 GB (and more) at every place a length is read — which must fail at
once on the missing bytes, without allocating or looping over what the varint claims.
"""
from __future__ import annotations

import io
import time
import tracemalloc
from datetime import datetime, timezone

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import codec
from events.codec import DecodeError
from events.envelope import Event
from events.schema_store import default_store

from .support.avro_strategies import for_schema
from .support.scale import LONG

STORE = default_store()
ALL_VERSIONS = [sv for t in STORE.event_types() for sv in STORE.by_type[t]]
#: the writers fuzzed one by one: every published version at full size; in the suite's short form
#: each type's newest (a change to a shared record such as the Actor publishes a version of every
#: type, and fuzzing each took a minute of CPU); older writers still meet the pinned readers below
VERSIONS = ALL_VERSIONS if LONG else [STORE.latest(t) for t in STORE.event_types()]
IDS = [f"{sv.event_type}.v{sv.version}" for sv in VERSIONS]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: for examples that draw whole records (slower to generate) and try many inputs each
FEW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: lengths a varint can claim: 2 GiB, 2 GiB - 1, 4 GiB, 2^62, the largest long, negative ones
HUGE = (2**31, 2**31 - 1, 2**32, 2**62, 2**63 - 1, -(2**31), -(2**63))
#: what decoding a few bytes may allocate at most, whatever they claim
MEMORY_BOUND = 1 << 20


def zigzag(n: int) -> bytes:
    """Avro's long: zig-zag, then base-128 varint, least significant group first."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | 0x80 if n else low)
        if not n:
            return bytes(out)


def decoded_or_refused(data: bytes, **kw) -> Event | None:
    """The one contract: an Event or a DecodeError (returned as None); any other exception fails."""
    try:
        event = codec.decode(data, **kw)
    except DecodeError:
        return None
    assert isinstance(event, Event)
    return event


def encoded(sv, record: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(codec.MAGIC + sv.fingerprint)
    schemaless_writer(buf, sv.wire, record)
    return buf.getvalue()


def a_message(sv):
    """A real message of version `sv` (its record drawn from the schema)."""
    def fix(record: dict) -> bytes:
        record["envelope"]["event_type"] = sv.event_type
        record["envelope"]["schema_version"] = sv.version
        return encoded(sv, record)

    return for_schema(sv.schema).map(fix)


# -- bytes behind a real header, truncations, flips -------------------------------------------------
@pytest.mark.parametrize("sv", VERSIONS, ids=IDS)
@FUZZ
@given(body=st.binary(max_size=300))
def test_random_body_behind_a_real_header(sv, body):
    event = decoded_or_refused(codec.MAGIC + sv.fingerprint + body)
    if event is not None:  # random bytes may spell a valid record: then it is of the claimed type
        assert event.type == sv.event_type


@pytest.mark.parametrize("sv", VERSIONS, ids=IDS)
@FEW
@given(data=st.data())
def test_every_truncation_of_a_real_message_is_refused(sv, data):
    wire = data.draw(a_message(sv))
    assert decoded_or_refused(wire) is not None
    for cut in range(len(wire)):
        assert decoded_or_refused(wire[:cut]) is None, f"a message cut at {cut} of {len(wire)} bytes decoded"


@pytest.mark.parametrize("sv", VERSIONS, ids=IDS)
@FEW
@given(data=st.data())
def test_flipped_and_inserted_bytes_of_a_real_message(sv, data):
    original = data.draw(a_message(sv))
    for _ in range(10):
        wire = bytearray(original)
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(10, len(wire) - 1))
            if data.draw(st.booleans()):
                wire[at] = data.draw(st.integers(0, 255))
            else:
                wire[at:at] = data.draw(st.binary(min_size=1, max_size=10))
        decoded_or_refused(bytes(wire))


@given(blob=st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_anything_without_a_valid_header_is_refused(blob):
    assert decoded_or_refused(blob) is None or blob[:2] == codec.MAGIC
    assert decoded_or_refused(b"\xc3" + blob[:8]) is None  # shorter than a header or wrong marker


# -- fingerprints -----------------------------------------------------------------------------------
@FUZZ
@given(fp=st.binary(min_size=8, max_size=8), body=st.binary(max_size=64))
def test_an_unknown_fingerprint_is_refused_by_name(fp, body):
    if fp in STORE.by_fingerprint:
        return
    with pytest.raises(DecodeError, match="fingerprint"):
        codec.decode(codec.MAGIC + fp + body)


@pytest.mark.parametrize("sv", VERSIONS, ids=IDS)
@FEW
@given(data=st.data())
def test_a_body_under_another_types_fingerprint(sv, data):
    """A producer that writes one type under another's fingerprint: refused, or read as the
    claimed type (the bytes may happen to spell one); never another exception."""
    wire = data.draw(a_message(sv))
    other = data.draw(st.sampled_from([o for o in VERSIONS if o is not sv]))
    event = decoded_or_refused(codec.MAGIC + other.fingerprint + wire[10:])
    assert event is None or event.type == other.event_type


def test_a_body_whose_envelope_names_another_type_is_refused():
    """ApplicationWithdrawn's schema reads the start of an ApplicationSubmitted body (the envelope
    is shared): before the codec compared the two, it answered an "ApplicationSubmitted" event with
    a withdrawal's payload, which dispatch's fold would have failed on, on every restart."""
    from events.envelope import new_event

    submitted = codec.encode(new_event("ApplicationSubmitted", "case-x", {  # "" reads as the union's null
        "bundle_code": "", "services": [], "form": {}, "materials": [], "receipt_no": "r",
        "idempotency_key": None}, region_code="440203"))
    withdrawn = STORE.latest("ApplicationWithdrawn")
    with pytest.raises(DecodeError, match="event_type is not ApplicationWithdrawn"):
        codec.decode(codec.MAGIC + withdrawn.fingerprint + submitted[10:])


@pytest.mark.parametrize("sv", [sv for sv in ALL_VERSIONS if sv is not STORE.latest(sv.event_type)]
                         + [STORE.latest(t) for t in STORE.event_types() if len(STORE.by_type[t]) > 1],
                         ids=lambda sv: f"{sv.event_type}.v{sv.version}")
@FUZZ
@given(body=st.binary(max_size=200), data=st.data())
def test_a_reader_pinned_to_any_version(sv, body, data):
    """A consumer pinned to an older (or the newest) version resolves whatever a writer of the
    same type sent: garbage there too is a DecodeError."""
    writer = data.draw(st.sampled_from(STORE.by_type[sv.event_type]))
    decoded_or_refused(codec.MAGIC + writer.fingerprint + body, reader=sv)


# -- lengths that claim gigabytes -------------------------------------------------------------------
def _branches(t) -> list:
    return t if isinstance(t, list) else [t]


def _length_kind(t) -> bool:
    """A string, bytes, array or map (a logical type too): its encoding starts with a length."""
    while isinstance(t, dict):
        t = t["type"]
    return t in ("string", "bytes", "array", "map")


def length_sites(record_schema: dict, path: tuple[str, ...] = ()):
    """(path of field names, union branch or None) of every place a length or block count is read
    directly under a record or a record inside it: what precedes it is the fields before."""
    for f in record_schema["fields"]:
        t = f["type"]
        for b, branch in enumerate(_branches(t)):
            if _length_kind(branch):
                yield path + (f["name"],), b if isinstance(t, list) else None
            elif isinstance(branch, dict) and branch.get("type") == "record" and not isinstance(t, list):
                yield from length_sites(branch, path + (f["name"],))


def _before(record_schema: dict, name: str) -> dict:
    fields = record_schema["fields"]
    i = next(n for n, f in enumerate(fields) if f["name"] == name)
    return {"type": "record", "name": f"Before_{name}", "fields": fields[:i]}


def prefix_bytes(sv, record: dict, path: tuple[str, ...], branch: int | None) -> bytes:
    """The encoding of `record` up to the length at `path`: for each level, the fields before."""
    out, schema, value = b"", sv.schema, record
    for depth, name in enumerate(path):
        before = _before(schema, name)
        out += _encode(before, {f["name"]: value[f["name"]] for f in before["fields"]})
        if depth < len(path) - 1:
            schema = next(f["type"] for f in schema["fields"] if f["name"] == name)
            value = value[name]
    return out + (zigzag(branch) if branch is not None else b"")


def _encode(schema: dict, record: dict) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema, _write_hint=False), record)
    return buf.getvalue()


SITES = {(sv.event_type, sv.version): list(length_sites(sv.schema)) for sv in ALL_VERSIONS}


def test_every_type_has_length_sites_in_its_envelope_and_payload():
    for (event_type, _), sites in SITES.items():
        paths = {".".join(p) for p, _ in sites}
        assert {"envelope.event_id", "envelope.actor.id_token", "envelope.causation_id"} <= paths, event_type
    paths = {".".join(p) for p, _ in SITES[("ApplicationSubmitted", 1)]}
    assert {"services", "form", "materials", "idempotency_key"} <= paths
    assert ("changes",) in {p for p, _ in SITES[("RegisterChanged", 1)]}


@pytest.mark.parametrize("sv", VERSIONS, ids=IDS)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_huge_length_anywhere_fails_at_once_without_allocating_it(sv, data):
    """At every length site of the version: the fields before it real, then a varint claiming
    2 GB (or 2^63) and the message ends — decoding reads no further than the bytes there are."""
    record = data.draw(for_schema(sv.schema))
    for path, branch in SITES[(sv.event_type, sv.version)]:
        head = prefix_bytes(sv, record, path, branch)
        where = ".".join(path)
        for claim in HUGE:
            wire = codec.MAGIC + sv.fingerprint + head + zigzag(claim) + data.draw(st.binary(max_size=8))
            tracemalloc.start()
            started = time.monotonic()
            try:
                with pytest.raises(DecodeError) as refused:
                    codec.decode(wire)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert time.monotonic() - started < 2.0, f"{where}: decoding a few bytes took seconds (a loop over the claim)"
            assert peak < MEMORY_BOUND, f"{where}: {len(wire)} bytes allocated {peak} bytes for a claim of {claim}"
            assert "MemoryError" not in str(refused.value), where


def test_ten_bytes_claiming_two_gigabytes_allocate_nothing_of_it():
    """The smallest case, stated plainly: header, then a 2 GB string claimed by 5 bytes."""
    for sv in VERSIONS:
        wire = codec.MAGIC + sv.fingerprint + zigzag(2**31)
        tracemalloc.start()
        try:
            with pytest.raises(DecodeError, match="corrupt"):
                codec.decode(wire)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < MEMORY_BOUND, (sv.event_type, peak)


def test_a_block_count_of_billions_with_items_present_reads_only_what_is_there():
    """An array claiming 2^31 items followed by 100 real ones: refused at the 101st, in time."""
    sv = STORE.latest("ApplicationSubmitted")
    record = {"envelope": {"event_id": "6f1c8d2e-0000-4000-8000-000000000001", "event_type": sv.event_type,
                           "key": "case-x", "sequence": 0, "occurred_at": datetime(2024, 1, 2, tzinfo=timezone.utc),
                           "actor": {"id_token": "p_x", "role": "applicant", "channel": "online", "staff_id": None},
                           "correlation_id": "case-x", "causation_id": None, "region_code": "440203",
                           "schema_version": sv.version},
              "bundle_code": "newborn"}
    head = prefix_bytes(sv, record, ("services",), None)
    items = b"".join(zigzag(1) + b"x" for _ in range(100))
    started = time.monotonic()
    with pytest.raises(DecodeError):
        codec.decode(codec.MAGIC + sv.fingerprint + head + zigzag(2**31) + items)
    assert time.monotonic() - started < 1.0
