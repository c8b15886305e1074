"""Publishing a schema version: the one way a change in `schemas/` reaches the wire."""
from __future__ import annotations

import json
from pathlib import Path

from .compatibility import require_compatible
from .schema_store import SCHEMAS_DIR, SchemaError, SchemaStore, load_source, schema_fingerprint, source_event_types


def pending_changes(directory: Path = SCHEMAS_DIR) -> dict[str, dict]:
    """Event types whose source differs from their latest published version (or is unpublished)."""
    store = SchemaStore(directory)
    pending = {}
    for event_type in source_event_types(directory):
        source = load_source(event_type, directory)
        versions = store.by_type.get(event_type, [])
        if not versions or schema_fingerprint(source) != versions[-1].fingerprint:
            pending[event_type] = source
    return pending


def publish(directory: Path = SCHEMAS_DIR) -> list[tuple[str, int]]:
    """Write a new version for each changed source that is compatible with all published ones."""
    directory = Path(directory)
    store = SchemaStore(directory)
    index_path = directory / "published" / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    written = []
    for event_type, source in pending_changes(directory).items():
        versions = store.by_type.get(event_type, [])
        require_compatible(event_type, source, versions)
        version = versions[-1].version + 1 if versions else 1
        path = directory / "published" / f"{event_type}.v{version}.avsc"
        if path.exists():
            raise SchemaError(f"{path} exists but is not in index.json; resolve by hand")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(source, indent=2, ensure_ascii=False) + "\n")
        index.setdefault(event_type, []).append(
            {"version": version, "fingerprint": schema_fingerprint(source).hex()})
        written.append((event_type, version))
    if written:
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written
