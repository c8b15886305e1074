"""The cascade's pure part: what a register change asks of each department, as events.

Everything here is a function of its inputs, so a cascade that re-runs after a crash derives
the very same events: a sync task's id is a name-based UUID of the change event id, the
department and the attempt number; a re-sent task (silent department) keeps its id, a new
attempt after a `failed` answer gets a new one (the adapter SDK would otherwise replay the
stored `failed` decision for the old id).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from catalog.subscriptions import Subscriptions
from events.envelope import SYSTEM, Actor, Envelope, Event, derive, derived_event_id
from producers.register_changes import check_logged

SYNC_KIND = "register_sync"
CASCADE_ACTOR = Actor("cascade", "system", "system")


@dataclass(frozen=True)
class ChangeRef:
    """What the cascade keeps of a RegisterChanged to derive its tasks again later."""
    event_id: str
    register: str
    key: str
    sequence: int
    change_kind: str
    occurred_at: datetime
    correlation_id: str
    region_code: str
    changes: Mapping[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_event(cls, event: Event) -> "ChangeRef":
        env, p = event.envelope, event.payload
        return cls(event.id, p["register"], env.key, env.sequence, p["change_kind"], env.occurred_at,
                   env.correlation_id, env.region_code, dict(p["changes"]))

    def as_cause(self) -> Event:
        return Event(Envelope(self.event_id, "RegisterChanged", self.key, self.sequence, self.occurred_at, SYSTEM,
                              self.correlation_id, None, self.region_code), {})


def task_id(change_event_id: str, department: str, attempt: int) -> str:
    return "sync-" + derived_event_id(change_event_id, SYNC_KIND, department, str(attempt))


def service_id(department: str, register: str) -> str:
    return f"{department}.{register}_register_sync"


def sync_task(change: ChangeRef, department: str, fields: Iterable[str], attempt: int) -> Event:
    """The task for one department: only `fields` (its subscribed share of the change).

    A cleared field (null in the change) cannot travel in the task's string map; its name is
    listed in `inputs.cleared`. The envelope sequence is the change's per-key sequence."""
    values = {f: change.changes.get(f) for f in sorted(fields)}
    inputs = {"register": change.register, "change_event_id": change.event_id,
              "change_sequence": str(change.sequence), "change_kind": change.change_kind}
    cleared = [f for f, v in values.items() if v is None]
    if cleared:
        inputs["cleared"] = ",".join(cleared)
    payload: dict[str, Any] = {
        "task_id": task_id(change.event_id, department, attempt), "department": department,
        "service_id": service_id(department, change.register), "kind": SYNC_KIND,
        "fields": {f: v for f, v in values.items() if v is not None}, "materials": [], "inputs": inputs,
        "due_date": None,
    }
    return derive(change.as_cause(), "TaskDispatched", change.key, payload, department, str(attempt),
                  sequence=change.sequence, actor=CASCADE_ACTOR)


def escalation(change: ChangeRef, department: str, task: str, attempts: int, last_outcome: str,
               reason: str | None, pending_since: datetime) -> Event:
    """办不成事 for a cascade target: one per (change, department), however often it is re-derived."""
    payload = {"register": change.register, "change_event_id": change.event_id, "change_sequence": change.sequence,
               "department": department, "task_id": task, "attempts": attempts, "last_outcome": last_outcome,
               "reason": reason, "pending_since": pending_since}
    return derive(change.as_cause(), "CascadeEscalated", change.key, payload, department,
                  sequence=change.sequence, actor=CASCADE_ACTOR)


def backoff(n: int, base_s: float, cap_s: float) -> float:
    """Seconds before the n-th retry (n ≥ 1): base, 2·base, 4·base, … capped."""
    return min(cap_s, base_s * 2 ** max(0, n - 1))


def check_change(event: Event, topic: str, subs: Subscriptions) -> str | None:
    """Why a message on a register topic cannot be cascaded (a dead-letter reason), or None."""
    return check_logged(event, topic, subs)
