"""The envelope every event carries, and the rules for event ids.

Facts (from people, registers, departments) get random ids. Derived events get a name-based
UUID of their cause, so a projector that re-runs after a crash emits the very same ids and
every consumer drops the repeats (DESIGN: "Effectively once").
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

#: namespace for derived-event ids; changing it would break replay idempotence
DERIVED_NAMESPACE = uuid.UUID("6f1e0a3c-5b8e-4a51-9c1a-0e7e1e5c0a5e")

ROLES = ("applicant", "clerk", "department", "register", "system", "supervisor")
CHANNELS = ("online", "window", "home_visit", "department", "register", "system", "proactive")


@dataclass(frozen=True)
class Actor:
    """Who caused an event. `id_token` is a pseudonymous token, never a resident ID or name."""

    id_token: str
    role: str = "system"
    channel: str = "system"
    staff_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"actor.role must be one of {ROLES}, got {self.role!r}")
        if self.channel not in CHANNELS:
            raise ValueError(f"actor.channel must be one of {CHANNELS}, got {self.channel!r}")


SYSTEM = Actor("onething", "system", "system")


@dataclass(frozen=True)
class Envelope:
    event_id: str
    event_type: str
    key: str
    sequence: int
    occurred_at: datetime
    actor: Actor
    correlation_id: str
    causation_id: str | None
    region_code: str
    schema_version: int = 0  # set by the codec to the version it writes with


@dataclass(frozen=True)
class Event:
    envelope: Envelope
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.envelope.event_type

    @property
    def key(self) -> str:
        return self.envelope.key

    @property
    def id(self) -> str:
        return self.envelope.event_id


def now_utc() -> datetime:
    """Millisecond precision: what timestamp-millis can carry, so a round trip is exact."""
    t = datetime.now(timezone.utc)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def derived_event_id(cause_id: str, *parts: str) -> str:
    return str(uuid.uuid5(DERIVED_NAMESPACE, "|".join((cause_id, *parts))))


def new_event(
    event_type: str,
    key: str,
    payload: dict[str, Any],
    *,
    actor: Actor = SYSTEM,
    region_code: str,
    sequence: int = 0,
    correlation_id: str | None = None,
    cause: Event | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Event:
    """A new event. With `cause`, it inherits the correlation id and records the causation."""
    eid = event_id or str(uuid.uuid4())
    env = Envelope(
        event_id=eid,
        event_type=event_type,
        key=key,
        sequence=sequence,
        occurred_at=occurred_at or now_utc(),
        actor=actor,
        correlation_id=correlation_id or (cause.envelope.correlation_id if cause else eid),
        causation_id=cause.id if cause else None,
        region_code=region_code,
    )
    return Event(env, dict(payload))


def derive(cause: Event, event_type: str, key: str, payload: dict[str, Any], *parts: str,
           sequence: int = 0, actor: Actor = SYSTEM) -> Event:
    """A derived event whose id is a function of its cause and `parts` (e.g. a department)."""
    return new_event(
        event_type, key, payload,
        actor=actor, region_code=cause.envelope.region_code, sequence=sequence,
        cause=cause, event_id=derived_event_id(cause.id, event_type, *parts),
        occurred_at=cause.envelope.occurred_at,
    )


def with_sequence(event: Event, sequence: int) -> Event:
    return replace(event, envelope=replace(event.envelope, sequence=sequence))
