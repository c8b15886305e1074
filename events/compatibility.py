"""Schema evolution rules, checked before a version is published and on every test run.

The contract with department backends is FULL_TRANSITIVE compatibility: a reader of any
published version reads data written with any other (departments upgrade at their own pace,
and read models are rebuilt from the whole log). The check is by resolution, the way Avro
readers really behave: records generated from the writer schema must resolve into the
reader schema with fastavro's schema resolution.
"""
from __future__ import annotations

import io

from fastavro import schemaless_reader, schemaless_writer
from fastavro.utils import generate_many

from .schema_store import SchemaError, SchemaVersion, parse_schema


def can_read(writer: dict, reader: dict, samples: int = 50) -> str | None:
    """None if `reader` resolves data written with `writer`, else the resolution error."""
    w = parse_schema(writer, _write_hint=False)
    r = parse_schema(reader, _write_hint=False)
    for record in generate_many(w, samples):
        buf = io.BytesIO()
        schemaless_writer(buf, w, record)
        buf.seek(0)
        try:
            schemaless_reader(buf, w, r)
        except Exception as exc:  # fastavro raises several types for resolution failures
            return f"{type(exc).__name__}: {exc}"
    return None


def check_full_transitive(candidate: dict, published: list[SchemaVersion]) -> list[str]:
    """Every problem between `candidate` and each published version, both directions."""
    problems = []
    for old in published:
        if (err := can_read(old.schema, candidate)) is not None:
            problems.append(f"new schema cannot read v{old.version} data: {err}")
        if (err := can_read(candidate, old.schema)) is not None:
            problems.append(f"v{old.version} readers cannot read new data: {err}")
    return problems


def require_compatible(event_type: str, candidate: dict, published: list[SchemaVersion]) -> None:
    problems = check_full_transitive(candidate, published)
    if problems:
        raise SchemaError(f"{event_type}: incompatible change\n  " + "\n  ".join(problems))
