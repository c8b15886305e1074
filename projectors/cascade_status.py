"""Cascade status, read from the cascade's own state (migration 0007): per change, every target
with its state, attempts and time to apply; per department, its backlog.

Used by the API (producers/register_api.py) and `onething cascade status [KEY]`. It shows field
NAMES only — never a value — and register keys as they travel (a USCC, or a person token).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

_CHANGE_COLUMNS = ("c.change_event_id::text, c.register, c.register_key, c.sequence, c.change_kind, c.changed_fields, "
                   "c.occurred_at, c.received_at, c.targets, c.applied, c.completed_at")


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    return round((later - earlier).total_seconds(), 3) if later and earlier else None


def _targets(conn: psycopg.Connection, cascade: str, change_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    if not change_ids:
        return {}
    rows = conn.execute(
        "SELECT t.change_event_id::text, t.department, t.state, t.fields, t.attempt, t.sends, t.failures, "
        "t.silent_resends, t.task_id, t.first_sent_at, t.last_sent_at, t.next_attempt_at, t.applied_at, "
        "t.last_reason, t.escalated_at, c.occurred_at FROM cascade_targets t JOIN cascade_changes c "
        "ON c.cascade = t.cascade AND c.change_event_id = t.change_event_id "
        "WHERE t.cascade = %s AND t.change_event_id = ANY(%s::uuid[]) ORDER BY t.department",
        (cascade, change_ids)).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for (cid, dept, state, fields, attempt, sends, failures, silent, task_id, first_sent, last_sent, next_at,
         applied_at, reason, escalated_at, occurred_at) in rows:
        out.setdefault(cid, []).append({
            "department": dept, "state": state, "fields": list(fields), "attempts": sends, "task_attempt": attempt,
            "failures": failures, "silent_resends": silent, "task_id": task_id,
            "first_sent_at": _iso(first_sent), "last_sent_at": _iso(last_sent), "next_attempt_at": _iso(next_at),
            "applied_at": _iso(applied_at), "seconds_to_apply": _seconds(applied_at, occurred_at),
            "last_reason": reason, "escalated": escalated_at is not None, "escalated_at": _iso(escalated_at),
        })
    return out


def _change(row, targets: list[dict[str, Any]]) -> dict[str, Any]:
    (cid, register, key, sequence, kind, fields, occurred_at, received_at, n_targets, applied, completed_at) = row
    return {"change_event_id": cid, "register": register, "key": key, "sequence": sequence, "change_kind": kind,
            "changed_fields": list(fields), "occurred_at": _iso(occurred_at), "received_at": _iso(received_at),
            "targets": n_targets, "applied": applied, "complete": completed_at is not None,
            "completed_at": _iso(completed_at), "fanout_seconds": _seconds(completed_at, occurred_at),
            "target_states": targets}


def changes(conn: psycopg.Connection, *, cascade: str = "cascade", key: str | None = None,
            register: str | None = None, open_only: bool = False, limit: int = 50) -> list[dict[str, Any]]:
    """The newest changes (of one register key when `key` is given, oldest first then), with their targets."""
    where, args = ["c.cascade = %s"], [cascade]
    if key is not None:
        where.append("c.register_key = %s")
        args.append(key)
    if register is not None:
        where.append("c.register = %s")
        args.append(register)
    if open_only:
        where.append("c.completed_at IS NULL")
    order = "c.sequence" if key is not None else "c.received_at DESC"
    rows = conn.execute(f"SELECT {_CHANGE_COLUMNS} FROM cascade_changes c WHERE {' AND '.join(where)} "
                        f"ORDER BY {order} LIMIT %s", (*args, max(1, min(limit, 1000)))).fetchall()
    targets = _targets(conn, cascade, [r[0] for r in rows])
    return [_change(r, targets.get(r[0], [])) for r in rows]


def change(conn: psycopg.Connection, change_event_id: str, *, cascade: str = "cascade") -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {_CHANGE_COLUMNS} FROM cascade_changes c WHERE c.cascade = %s AND "
                       "c.change_event_id = %s", (cascade, change_event_id)).fetchone()
    if row is None:
        return None
    return _change(row, _targets(conn, cascade, [row[0]]).get(row[0], []))


def backlog(conn: psycopg.Connection, *, cascade: str = "cascade") -> list[dict[str, Any]]:
    """Per department: targets waiting (held behind an earlier change), sent, failed, escalated,
    and the age of the oldest; plus what it applied in total."""
    rows = conn.execute(
        "SELECT t.department, "
        "count(*) FILTER (WHERE t.state = 'held'), count(*) FILTER (WHERE t.state = 'sent'), "
        "count(*) FILTER (WHERE t.state = 'failed'), "
        "count(*) FILTER (WHERE t.state <> 'applied' AND t.escalated_at IS NOT NULL), "
        "count(*) FILTER (WHERE t.state = 'applied'), "
        "EXTRACT(EPOCH FROM now() - min(c.occurred_at) FILTER (WHERE t.state <> 'applied'))::float8, "
        "avg(EXTRACT(EPOCH FROM t.applied_at - c.occurred_at)) FILTER (WHERE t.state = 'applied')::float8 "
        "FROM cascade_targets t JOIN cascade_changes c ON c.cascade = t.cascade AND c.change_event_id = t.change_event_id "
        "WHERE t.cascade = %s GROUP BY t.department ORDER BY t.department", (cascade,)).fetchall()
    return [{"department": d, "held": held, "sent": sent, "failed": failed, "pending": held + sent + failed,
             "escalated": escalated, "applied": applied,
             "oldest_pending_seconds": round(oldest, 1) if oldest is not None else None,
             "mean_seconds_to_apply": round(mean, 3) if mean is not None else None}
            for d, held, sent, failed, escalated, applied, oldest, mean in rows]


def summary(conn: psycopg.Connection, *, cascade: str = "cascade") -> dict[str, Any]:
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE completed_at IS NULL), "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM completed_at - occurred_at)) "
        "FILTER (WHERE completed_at IS NOT NULL AND targets > 0), "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM completed_at - occurred_at)) "
        "FILTER (WHERE completed_at IS NOT NULL AND targets > 0) "
        "FROM cascade_changes WHERE cascade = %s", (cascade,)).fetchone()
    total, open_, p50, p95 = row
    return {"changes": total, "open": open_, "complete": total - open_,
            "fanout_p50_seconds": round(p50, 3) if p50 is not None else None,
            "fanout_p95_seconds": round(p95, 3) if p95 is not None else None}
