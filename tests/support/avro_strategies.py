"""Hypothesis strategies that draw any datum a parsed Avro schema admits."""
from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import strategies as st

_text = st.text(max_size=20)
_UTC = timezone.utc


def _millis(dt: datetime) -> datetime:
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def for_schema(schema, named: dict | None = None):
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema in named:
            return st.deferred(lambda: for_schema(named[schema], named))
        return _primitive(schema)
    if isinstance(schema, list):
        return st.one_of([for_schema(s, named) for s in schema])
    t = schema["type"]
    logical = schema.get("logicalType")
    if logical == "uuid":
        return st.uuids().map(str)
    if logical == "timestamp-millis":
        return st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
                            timezones=st.just(_UTC)).map(_millis)
    if logical == "date":
        return st.dates()
    if t == "record":
        named[schema["name"]] = schema
        return st.fixed_dictionaries({f["name"]: for_schema(f["type"], named) for f in schema["fields"]})
    if t == "enum":
        named[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if t == "array":
        return st.lists(for_schema(schema["items"], named), max_size=4)
    if t == "map":
        return st.dictionaries(_text, for_schema(schema["values"], named), max_size=4)
    if t == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    return for_schema(t, named)


def _primitive(name: str):
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "bytes": st.binary(max_size=32),
        "string": _text,
    }[name]
