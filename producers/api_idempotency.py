"""Idempotency-Key for every write endpoint, and actions that may be taken only once.

A client that did not hear the answer retries with the same `Idempotency-Key` and gets the first
answer (with `Idempotent-Replayed: true`); the same key with a different body is refused (422
`idempotency.key_reused`). The key is claimed in the transaction that records the action and the
answer is stored before it commits, so a crash or a broker failure leaves no key behind, and a
concurrent retry waits on the key's primary key until the first has committed, then replays it.
Only successful answers are remembered: a refusal is simply given again. (Submissions keep their
own table and derive the case id from the key: producers/intake_store.py.)

Why the ids of what a keyed write produces are derived from the key (`event_id`, `name`): the
event is acknowledged by Kafka before the transaction commits, so PostgreSQL failing in between
leaves the event on the log and no key in the table. The client's retry then produces the very
same event — same id, same escalation or rating id — which every consumer drops as seen, instead
of a second escalation or rating (found by `onething faults`' PostgreSQL restart).

`take_once` claims an action (reply, resolve, rectification reply) in `api_actions` under the
case's row lock: the second of two concurrent replies finds the row and gets 409, whatever the
read model has caught up with.
"""
from __future__ import annotations

from typing import Any

import uuid

import orjson
import psycopg
from fastapi import Header
from psycopg.types.json import Jsonb

from events.envelope import derived_event_id

from .api_errors import ApiError, FastJSON, err
from .intake_store import request_hash

REPLAYED = {"Idempotent-Replayed": "true"}


def idempotency_key(idempotency_key: str | None = Header(None, description="a retry with the same key and body "
                                                                           "gets the first answer")) -> str | None:
    """The request's Idempotency-Key (a dependency): 1 to 200 visible characters, or none."""
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 200 and idempotency_key.isprintable()):
        raise ApiError(422, [err("idempotency-key", "idempotency.key_format")])
    return idempotency_key


class Idempotent:
    """One write under an optional key: `replay()` the earlier answer or None, then `answer()`."""

    def __init__(self, conn: psycopg.Connection, caller_token: str, key: str | None, route: str, body: Any):
        self.conn, self.caller, self.key, self.route = conn, caller_token, key, route
        self.hash = request_hash(body) if key is not None else ""

    def event_id(self, *parts: str) -> str | None:
        """The id of the event this write produces: derived from the caller, the key and the route
        when there is a key (a retry produces the same event), else None (a random one)."""
        if self.key is None:
            return None
        return derived_event_id(f"{self.caller}|{self.key}", self.route, *parts)

    def name(self, prefix: str) -> str:
        """An id this write gives what it creates (`esc-…`, `rating-…`): from the key when there is one."""
        seed = self.event_id("name", prefix)
        return f"{prefix}-{(uuid.UUID(seed) if seed else uuid.uuid4()).hex[:18]}"

    def replay(self) -> FastJSON | None:
        """Inside the transaction: claim the key, or the earlier answer under it."""
        if self.key is None:
            return None
        claimed = self.conn.execute(
            "INSERT INTO api_requests (caller_token, idempotency_key, route, request_hash, status, body) "
            "VALUES (%s, %s, %s, %s, 0, 'null') ON CONFLICT DO NOTHING RETURNING 1",
            (self.caller, self.key, self.route, self.hash)).fetchone()
        if claimed is not None:
            return None
        route, digest, status, body = self.conn.execute(
            "SELECT route, request_hash, status, body FROM api_requests WHERE caller_token = %s "
            "AND idempotency_key = %s", (self.caller, self.key)).fetchone()
        if route != self.route or digest != self.hash or not status:
            raise ApiError(422, [err("idempotency-key", "idempotency.key_reused")])
        return FastJSON(body, status_code=status, headers=REPLAYED)

    def answer(self, body: dict[str, Any], status: int = 202) -> FastJSON:
        """The answer, remembered under the key (in the same transaction) when there is one."""
        if self.key is not None:
            self.conn.execute("UPDATE api_requests SET status = %s, body = %s WHERE caller_token = %s "
                              "AND idempotency_key = %s",
                              (status, Jsonb(orjson.loads(orjson.dumps(body))), self.caller, self.key))
        return FastJSON(body, status_code=status)


def take_once(conn: psycopg.Connection, subject_id: str, action: str, case_id: str) -> bool:
    """Claim `action` on `subject_id` (an escalation, a rectification); False if already taken."""
    return conn.execute(
        "INSERT INTO api_actions (subject_id, action, case_id) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING "
        "RETURNING 1", (subject_id, action, case_id)).fetchone() is not None


def actions_on(conn: psycopg.Connection, subject_id: str) -> list[str]:
    """The actions recorded on `subject_id` (for an escalation scope: the escalations opened)."""
    return [r[0] for r in conn.execute("SELECT action FROM api_actions WHERE subject_id = %s", (subject_id,))]


def taken(conn: psycopg.Connection, subject_id: str, action: str) -> bool:
    return conn.execute("SELECT 1 FROM api_actions WHERE subject_id = %s AND action = %s",
                        (subject_id, action)).fetchone() is not None


def raise_to(conn: psycopg.Connection, subject_id: str, action: str, case_id: str, value: int) -> bool:
    """Record `value` for a repeatable action (an extension) only if it exceeds the one recorded."""
    return conn.execute(
        "INSERT INTO api_actions AS a (subject_id, action, case_id, value) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (subject_id, action) DO UPDATE SET value = excluded.value, taken_at = now() "
        "WHERE a.value < excluded.value RETURNING 1", (subject_id, action, case_id, value)).fetchone() is not None
