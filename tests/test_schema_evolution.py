"""The Avro contract with department backends: compatible evolution, proven, and breakage caught."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from events import codec
from events.compatibility import check_full_transitive
from events.envelope import new_event
from events.publish import pending_changes, publish
from events.schema_store import SCHEMAS_DIR, SchemaError, SchemaStore


def test_schemas_dir_is_published_and_fully_compatible():
    """The gate on the real schemas/: an unpublished or incompatible edit fails the build here."""
    store = SchemaStore(SCHEMAS_DIR)  # raises if a published file was edited in place
    pending = pending_changes(SCHEMAS_DIR)
    assert not pending, (f"schemas changed without a published version: {sorted(pending)}; "
                         "run `onething schemas publish` (it refuses incompatible changes)")
    for event_type, versions in store.by_type.items():
        for v in versions:
            assert not check_full_transitive(v.schema, versions), f"{event_type} v{v.version}"


@pytest.fixture
def schemas(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, target)
    return target


def _edit_source(directory: Path, event_type: str, change) -> None:
    path = directory / f"onething.{event_type}.avsc"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def _withdrawn():
    return new_event("ApplicationWithdrawn", "case-7", {"reason": "moved away"}, region_code="440200")


def test_newer_reader_reads_events_written_with_the_older_schema(schemas):
    old_store = SchemaStore(schemas)
    wire = codec.encode(_withdrawn(), old_store)  # written with v1

    _edit_source(schemas, "ApplicationWithdrawn",
                 lambda raw: raw["fields"].append({"name": "channel_note", "type": "string", "default": "none"}))
    assert publish(schemas) == [("ApplicationWithdrawn", 2)]

    new_store = SchemaStore(schemas)
    decoded = codec.decode(wire, new_store)
    assert decoded.payload == {"reason": "moved away", "channel_note": "none"}
    # and an old reader still reads what the new writer writes
    new_wire = codec.encode(decoded, new_store)
    assert new_wire[2:10] == new_store.latest("ApplicationWithdrawn").fingerprint
    v1_reader = old_store.latest("ApplicationWithdrawn")
    assert codec.decode(new_wire, new_store, reader=v1_reader).payload == {"reason": "moved away"}


def test_added_field_without_default_is_refused(schemas):
    _edit_source(schemas, "ApplicationWithdrawn",
                 lambda raw: raw["fields"].append({"name": "required_new", "type": "string"}))
    with pytest.raises(SchemaError, match="cannot read v1 data"):
        publish(schemas)
    assert "ApplicationWithdrawn" in pending_changes(schemas)  # and the gate test would fail


def test_changed_field_type_is_refused(schemas):
    def retype(raw):
        raw["fields"][1]["type"] = ["null", "long"]  # reason: string -> long
    _edit_source(schemas, "ApplicationWithdrawn", retype)
    with pytest.raises(SchemaError, match="incompatible"):
        publish(schemas)


def test_removed_enum_symbol_without_default_is_refused(schemas):
    def drop_symbol(raw):
        outcome = next(f for f in raw["fields"] if f["name"] == "outcome")
        outcome["type"]["symbols"].remove("rejected")
        del outcome["type"]["default"]
    _edit_source(schemas, "DecisionRecorded", drop_symbol)
    with pytest.raises(SchemaError):
        publish(schemas)


def test_published_file_edited_in_place_is_caught(schemas):
    path = schemas / "published" / "ApplicationWithdrawn.v1.avsc"
    raw = json.loads(path.read_text())
    raw["fields"].append({"name": "sneaky", "type": "string", "default": ""})
    path.write_text(json.dumps(raw))
    with pytest.raises(SchemaError, match="immutable"):
        SchemaStore(schemas)
