"""The published Avro schemas: the contract with department backends.

`schemas/onething.*.avsc` are the sources, edited by developers, with shared named types
(Envelope, Actor, MaterialRef) in files of their own. `schemas/published/<Type>.v<N>.avsc`
are the versions that have ever been written to Kafka: self-contained, never edited, each
identified by the CRC-64-AVRO fingerprint of its Parsing Canonical Form (Avro single-object
encoding). `schemas/published/index.json` pins those fingerprints so an edit in place is
caught. `onething schemas publish` adds a version after the compatibility check passes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from fastavro import parse_schema
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
NAMESPACE = "onething"


class SchemaError(RuntimeError):
    """A schema file is missing, changed in place, or incompatible with a published version."""


@dataclass(frozen=True)
class SchemaVersion:
    event_type: str
    version: int
    schema: dict  # the self-contained JSON form
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO, as written after C3 01

    @cached_property
    def parsed(self) -> dict:
        return parse_schema(self.schema, _write_hint=False)

    @cached_property
    def wire(self) -> dict:
        """For reading and writing messages: marked as parsed, so fastavro does not parse it
        again on every call (that doubled the cost of each event)."""
        return parse_schema(self.schema)


def schema_fingerprint(schema: dict) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parse_schema(schema, _write_hint=False)),
                                     "CRC-64-AVRO"))


def load_source(event_type: str, directory: Path = SCHEMAS_DIR) -> dict:
    """The current source of one event type, with referenced named types expanded inline."""
    path = directory / f"{NAMESPACE}.{event_type}.avsc"
    if not path.exists():
        raise SchemaError(f"{path}: no such schema source")
    try:
        return load_schema(str(path), _write_hint=False)
    except Exception as exc:  # fastavro raises several parse error types
        raise SchemaError(f"{path}: {exc}") from None


def source_event_types(directory: Path = SCHEMAS_DIR) -> list[str]:
    """Event types are the source records that carry an envelope; the rest are shared parts."""
    types = []
    for path in sorted(directory.glob(f"{NAMESPACE}.*.avsc")):
        raw = json.loads(path.read_text())
        if any(f.get("name") == "envelope" for f in raw.get("fields", [])):
            types.append(raw["name"])
    return types


class SchemaStore:
    """Published versions by fingerprint (to read any message ever written) and by type (to write)."""

    def __init__(self, directory: Path = SCHEMAS_DIR):
        self.directory = Path(directory)
        self.published_dir = self.directory / "published"
        self.by_fingerprint: dict[bytes, SchemaVersion] = {}
        self.by_type: dict[str, list[SchemaVersion]] = {}
        index_path = self.published_dir / "index.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
        for event_type, versions in sorted(index.items()):
            for entry in versions:
                path = self.published_dir / f"{event_type}.v{entry['version']}.avsc"
                if not path.exists():
                    raise SchemaError(f"{path}: listed in index.json but missing")
                schema = json.loads(path.read_text())
                fp = schema_fingerprint(schema)
                if fp.hex() != entry["fingerprint"]:
                    raise SchemaError(
                        f"{path} was edited after it was published (fingerprint {fp.hex()} != "
                        f"{entry['fingerprint']}): published schemas are immutable, add a new version")
                sv = SchemaVersion(event_type, entry["version"], schema, fp)
                self.by_fingerprint[fp] = sv
                self.by_type.setdefault(event_type, []).append(sv)
        for versions in self.by_type.values():
            versions.sort(key=lambda v: v.version)

    def latest(self, event_type: str) -> SchemaVersion:
        try:
            return self.by_type[event_type][-1]
        except KeyError:
            raise SchemaError(f"event type {event_type!r} has no published schema") from None

    def writer(self, fp: bytes) -> SchemaVersion:
        try:
            return self.by_fingerprint[fp]
        except KeyError:
            raise SchemaError(f"no published schema has fingerprint {fp.hex()}") from None

    def event_types(self) -> list[str]:
        return sorted(self.by_type)


@lru_cache(maxsize=4)
def default_store(directory: Path = SCHEMAS_DIR) -> SchemaStore:
    return SchemaStore(directory)
