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
    assert publish(schemas) == [("ApplicationWithdrawn", len(old_store.by_type["ApplicationWithdrawn"]) + 1)]

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


def _v1(store: SchemaStore, event_type: str):
    return next(v for v in store.by_type[event_type] if v.version == 1)


def test_the_proactive_channel_is_read_as_system_by_an_old_reader_and_old_events_by_a_new_one():
    """主动服务: an accepted offer's ApplicationSubmitted says channel `proactive` (Actor.Channel evolved:
    a symbol added to an enum with a default). A department or read model still on v1 reads it as
    the default, `system`; a new reader reads v1 events as they were written."""
    from events.envelope import Actor

    store = SchemaStore(SCHEMAS_DIR)
    v1, latest = _v1(store, "ApplicationSubmitted"), store.latest("ApplicationSubmitted")
    assert latest.version > 1 and "proactive" not in json.dumps(v1.schema)
    payload = {"bundle_code": "retirement", "services": ["hrss.pension_retirement"], "form": {},
               "materials": [], "receipt_no": "R-1", "idempotency_key": "offer:x"}
    new = new_event("ApplicationSubmitted", "case-p1", payload, actor=Actor("p_abc", "applicant", "proactive"),
                    region_code="110105", sequence=0)
    wire = codec.encode(new, store)
    assert wire[2:10] == latest.fingerprint
    assert codec.decode(wire, store).envelope.actor.channel == "proactive"
    old_view = codec.decode(wire, store, reader=v1)
    assert old_view.envelope.actor.channel == "system" and old_view.envelope.actor.id_token == "p_abc"
    assert old_view.payload["bundle_code"] == "retirement"
    # an event written with v1 (before the symbol existed) reads the same with the newest schema
    old_event = new_event("ApplicationSubmitted", "case-p0", payload, actor=Actor("p_abc", "applicant", "window"),
                          region_code="110105", sequence=0)
    v1_store = _store_of(store, "ApplicationSubmitted", 1)
    old_wire = codec.encode(old_event, v1_store)
    assert old_wire[2:10] == v1.fingerprint
    assert codec.decode(old_wire, store).envelope.actor.channel == "window"


def test_a_grant_task_is_read_as_a_case_service_by_an_old_reader():
    """免申即享: a grant's TaskDispatched has kind `benefit_grant` (TaskKind evolved the same way); a
    backend still on TaskDispatched v1 reads the default `case_service` — and the task id
    `grant:<id>` is not a case's (README: a backend reads grants from v2 on)."""
    store = SchemaStore(SCHEMAS_DIR)
    task = new_event("TaskDispatched", "0b7c1d2e-0000-5000-8000-000000000001",
                     {"task_id": "grant:0b7c1d2e-0000-5000-8000-000000000001", "department": "civil_affairs",
                      "service_id": "civil_affairs.senior_allowance", "kind": "benefit_grant", "fields": {},
                      "materials": [], "inputs": {}, "due_date": None}, region_code="110105")
    wire = codec.encode(task, store)
    assert codec.decode(wire, store).payload["kind"] == "benefit_grant"
    assert codec.decode(wire, store, reader=_v1(store, "TaskDispatched")).payload["kind"] == "case_service"
    answer = new_event("DecisionRecorded", task.key, {"task_id": task.payload["task_id"], "department": "civil_affairs",
                                                      "service_id": "civil_affairs.senior_allowance",
                                                      "kind": "benefit_grant", "outcome": "applied"},
                       region_code="110105")
    assert codec.decode(codec.encode(answer, store), store).payload["kind"] == "benefit_grant"


def _store_of(store: SchemaStore, event_type: str, version: int) -> SchemaStore:
    """A store whose newest `event_type` is `version`: what a writer on that version encodes with."""
    import copy

    older = copy.copy(store)
    older.by_type = {**store.by_type, event_type: [v for v in store.by_type[event_type] if v.version <= version]}
    return older
