"""Writing a case's events from the API: under the case's row lock, in the transaction that
records them, acknowledged by Kafka (acks=all) before that transaction commits.

The row lock (`intake_cases … FOR UPDATE`) orders a case's facts: each event takes the next
per-case sequence, and a check made under the lock (withdrawn? already replied?) still holds
when the event is produced. A broker failure rolls the sequence back and answers 503.
"""
from __future__ import annotations

from typing import Any

import psycopg
import structlog

from events.envelope import Actor, Event, new_event

from . import intake_store
from .api_errors import ApiError, err
from .api_state import ApiState

log = structlog.get_logger("producers.api_events")


def locked_case(conn: psycopg.Connection, state: ApiState, case_id: str, *, done_ok: bool = False
                ) -> intake_store.IntakeCase:
    """The case row, locked for the rest of the transaction; 409 once it was withdrawn, or (unless
    `done_ok`, for what follows a case's end: a rating, an escalation of a rejection) completed."""
    row = intake_store.get_case(conn, case_id, for_update=True)
    if row is None:
        raise ApiError(404, [err("case_id", "case.not_found")])
    if row.status == "withdrawn":
        raise ApiError(409, [err("case_id", "case.withdrawn")])
    if not done_ok:
        view = state.case_reader(conn, case_id)
        if view is not None and view.get("status") in ("completed", "withdrawn"):
            raise ApiError(409, [err("case_id", f"case.{view['status']}")])
    return row


def produce(conn: psycopg.Connection, state: ApiState, topic: str, case_id: str, event_type: str,
            payload: dict[str, Any], actor: Actor, region_code: str, *, status: str | None = None,
            event_id: str | None = None) -> Event:
    """Under the case's row lock: the next sequence, then the event, acknowledged by Kafka before
    the caller's transaction commits; a failure raises the 503 and so rolls the sequence back.
    `event_id`: the id a keyed write derives (api_idempotency.Idempotent.event_id), so a retry
    after a commit that never happened produces the same event again, not a second one."""
    sequence = intake_store.take_sequence(conn, case_id, status=status)
    event = new_event(event_type, case_id, payload, actor=actor, region_code=region_code, sequence=sequence,
                      correlation_id=case_id, event_id=event_id)
    try:
        state.producer.publish(topic, event)
    except Exception as exc:
        log.error("api.kafka_unavailable", error=type(exc).__name__, event_type=event_type)
        raise ApiError(503, [err("", "kafka.unavailable")], {"Retry-After": "5"}) from None
    log.info("api.produced", event_type=event_type, sequence=sequence, role=actor.role, channel=actor.channel,
             staff_id=actor.staff_id)
    return event
