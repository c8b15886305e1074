"""The read audit's hash chain: one chain per data subject, pure functions over plain rows.

Why a chain: the audit of who read a citizen's data (谁查看了我的数据) is evidence, and evidence
that a database owner could quietly edit is worth little. Each row of a subject carries
`prev_hash` (the previous row's `row_hash`; `GENESIS` for the first) and

    row_hash = sha256( prev_hash ‖ "\\n" ‖ canonical(row) )

where `canonical` is the row's content (the `HASHED` columns, `position` included) as JSON with
sorted keys and no spaces. Changing any hashed value of a row breaks its own hash; removing a row
from the middle leaves a gap in `position` and a `prev_hash` that names no row; reordering
breaks both. Removing the newest rows of a chain is not visible in the chain itself — the log
(`audit.reads`, kept forever) still has them, and a rebuild from it gives the very same hashes,
because every hashed value comes from the event and the chain's order is the log's order per
subject (the topic is keyed by subject).

Nothing here touches the database: `link` extends a chain, `breaks` checks rows read back.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

GENESIS = "0" * 64
#: the columns a row's hash covers, in the order the table has them
HASHED = ("subject", "position", "event_id", "occurred_at", "staff_id", "role", "channel", "department", "kind",
          "case_id", "service_id", "fields", "document_id", "purpose", "purpose_id", "route", "correlation_id")


def _value(name: str, value: Any) -> Any:
    """One column as the hash sees it, the same whether it comes from an event or from PostgreSQL."""
    if name == "occurred_at":
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError("occurred_at must be an aware datetime")
        return value.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    if name == "fields":
        return [str(f) for f in (value or ())]
    if name == "position":
        return int(value)
    return None if value is None else str(value)


def canonical(row: Mapping[str, Any]) -> bytes:
    """The row's hashed content as bytes: JSON, keys sorted, no spaces, UTF-8 (not ASCII-escaped)."""
    content = {name: _value(name, row.get(name)) for name in HASHED}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def row_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(row)).hexdigest()


@dataclass(frozen=True)
class Head:
    """The newest row of a subject's chain: what the next row links to."""
    position: int = 0
    row_hash: str = GENESIS


def link(head: Head, row: Mapping[str, Any]) -> dict[str, Any]:
    """`row` as the next row after `head`: with its position, prev_hash and row_hash."""
    linked = dict(row) | {"position": head.position + 1, "prev_hash": head.row_hash}
    linked["row_hash"] = row_hash(head.row_hash, linked)
    return linked


def extend(heads: Mapping[str, Head], rows: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Head]]:
    """Link `rows` (in the log's order) onto the chains whose heads are given (a subject not in
    `heads` starts a new chain). Returns the linked rows and the new heads."""
    heads = dict(heads)
    out = []
    for row in rows:
        linked = link(heads.get(row["subject"], Head()), row)
        heads[row["subject"]] = Head(linked["position"], linked["row_hash"])
        out.append(linked)
    return out, heads


@dataclass(frozen=True)
class Break:
    """The first row of a subject's chain that does not hold, and why."""
    subject: str
    position: int
    event_id: str | None
    reason: str  # position (a row is missing or repeated) | prev_hash (not linked to the row before) | row_hash (changed)

    def describe(self) -> str:
        what = {"position": "a row before it is missing or out of place",
                "prev_hash": "it does not link to the row before it",
                "row_hash": "its content was changed after it was recorded"}[self.reason]
        return f"subject {self.subject} row {self.position} (event {self.event_id}): {what}"


def breaks(rows: Iterable[Mapping[str, Any]]) -> Iterator[Break]:
    """The first break of every chain in `rows`, which come ordered by subject, then position
    (as `ORDER BY subject, position` reads them: one pass, one chain in memory at a time)."""
    subject, expected, broken = None, Head(), False
    for row in rows:
        if row["subject"] != subject:
            subject, expected, broken = row["subject"], Head(), False
        if broken:
            continue
        problem = None
        if int(row["position"]) != expected.position + 1:
            problem = "position"
        elif row["prev_hash"] != expected.row_hash:
            problem = "prev_hash"
        elif row["row_hash"] != row_hash(row["prev_hash"], row):
            problem = "row_hash"
        if problem:
            broken = True
            yield Break(row["subject"], int(row["position"]), row.get("event_id"), problem)
            continue
        expected = Head(int(row["position"]), row["row_hash"])
