"""A department's own copy of the master registers, kept up to date by `register_sync` tasks.

    backend = ByKind(case=SimulatedBackend("tax"), sync=RegisterCopyBackend("tax"))
    Adapter(backend, bootstrap, database_url).run()

`RegisterCopyBackend.handle(task, conn)` applies one register change to the department's copy
(`register_copies`, migration 0007) inside the SDK's transaction and answers
`[Decision("applied")]` — or `[Decision("failed", reason)]` when the department's system
refuses it for now. Guarantees, whatever order or how often tasks arrive:
- every field carries the sequence of the change that wrote it; a change only writes fields
  whose stored sequence is older, so an older change never overwrites a newer value (the
  cascade already sends changes in order; this is the department's own guard);
- each change is recorded once per department (`register_copy_applied`, unique on the
  register key and sequence), in the order the department applied them;
- a task carrying a field this department does not subscribe to is refused as InvalidTask
  (dead-lettered by the SDK): data minimisation is checked at both ends.
A change may start the department's own follow-up (公民身后: a death stops a pension, opens a
household cancellation, …) in `register_copy_follow_ups`.

An outage is switched on in PostgreSQL (`set_outage`, or `onething cascade outage DEPT`) so
that running adapter processes see it: `unavailable` raises BackendUnavailable (the SDK keeps
the task and retries), `failing` answers `failed` with the reason (the cascade retries).
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg.types.json import Jsonb

from catalog.subscriptions import Subscriptions, load_subscriptions
from department_adapters.sdk import BackendUnavailable, Decision, InvalidTask
from events.envelope import Event

log = structlog.get_logger(__name__)
SYNC_KIND = "register_sync"
GRANT_KIND = "benefit_grant"
OUTAGE_MODES = ("unavailable", "failing")

#: what a department starts itself when a change reaches its copy: (register, field, value) → department → action
FOLLOW_UPS: dict[tuple[str, str, str], dict[str, str]] = {
    ("person", "status", "deceased"): {           # 公民身后: the offices a family would otherwise visit
        "police": "household_cancellation",       # 户口注销
        "hrss": "pension_stopped",                # 养老金停发, 遗属待遇 offered
        "medical_insurance": "personal_account_withdrawal_offered",   # 医保个人账户支取
        "housing_fund": "death_withdrawal_offered",                   # 公积金提取(死亡)
        "civil_affairs": "subsistence_allowance_stopped",             # 低保 stops from the following month
        "funeral": "cremation_record_opened",                         # 火化证明
        "tax": "tax_affairs_settlement",
    },
    ("company", "status", "deregistered"): {"*": "record_closed"},    # 企业注销: each office closes its record
    ("company", "status", "converted"): {"*": "successor_linked"},    # 个转企: records move to the new company
}


_COPY_ROW = ("INSERT INTO register_copies (department, register, register_key) VALUES (%s, %s, %s) "
             "ON CONFLICT DO NOTHING")
_LOCK_COPY = ("SELECT fields, field_sequences FROM register_copies WHERE department = %s AND register = %s "
              "AND register_key = %s FOR UPDATE")
_UPDATE_COPY = ("UPDATE register_copies SET fields = %s, field_sequences = %s, sequence = GREATEST(sequence, %s), "
                "updated_at = now() WHERE department = %s AND register = %s AND register_key = %s")
_APPLIED = ("INSERT INTO register_copy_applied (department, register, register_key, sequence, task_id, change_event_id,"
            " applied_fields, stale_fields) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (department, register, register_key, sequence) DO NOTHING RETURNING id")
_FOLLOW_UP = ("INSERT INTO register_copy_follow_ups (department, register, register_key, action, change_event_id) "
              "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")


@dataclass(frozen=True)
class RegisterCopyConfig:
    processing_s: float = 0.0   # simulated time the department's system takes per change


class RegisterCopyBackend:
    """The register-sync half of a department's backend (department_adapters.sdk.Backend).

    `department` is the department simulated (which subscriptions apply); `name`, if given, is
    what the SDK knows the backend by (topics, group) — as in SimulatedBackend."""

    def __init__(self, department: str, config: RegisterCopyConfig | None = None, *,
                 subscriptions: Subscriptions | None = None, name: str | None = None):
        self.subs = subscriptions or load_subscriptions()
        self.simulates = department
        self.department = name or department
        self.config = config or RegisterCopyConfig()
        self.applied = 0

    def cancel(self, task: Event, conn: psycopg.Connection) -> None:
        """Register syncs are never withdrawn."""

    def handle(self, task: Event, conn: psycopg.Connection) -> list[Decision]:
        p = task.payload
        if p.get("kind") != SYNC_KIND:
            raise InvalidTask("not a register sync task")
        inputs = p.get("inputs") or {}
        register = inputs.get("register")
        if register not in self.subs.registers:
            raise InvalidTask("unknown register")
        try:
            sequence = int(inputs["change_sequence"])
            change_event_id = str(uuid.UUID(inputs["change_event_id"]))
        except (KeyError, ValueError, TypeError):
            raise InvalidTask("change_sequence or change_event_id missing or malformed") from None
        values: dict[str, str | None] = dict(p.get("fields") or {})
        for name in filter(None, (inputs.get("cleared") or "").split(",")):
            values[name] = None
        if not values:
            raise InvalidTask("a register sync without fields")
        extra = set(values) - self.subs.fields_for(self.simulates, register)
        if extra:
            raise InvalidTask(f"{len(extra)} field(s) this department does not keep a copy of")

        outage = _outage(conn, self.department)
        if outage is not None:
            mode, reason = outage
            if mode == "unavailable":
                raise BackendUnavailable(f"{self.department} register system unavailable")
            return [Decision("failed", reason=reason or f"{self.department} register system refused the update")]
        if self.config.processing_s:
            time.sleep(self.config.processing_s)

        key = task.key
        with conn.pipeline():  # the copy's row created and locked in one round trip
            conn.execute(_COPY_ROW, (self.simulates, register, key))
            fields, field_sequences = conn.execute(_LOCK_COPY, (self.simulates, register, key)).fetchone()
        applied, stale = [], []
        for name, value in sorted(values.items()):
            if sequence > int(field_sequences.get(name, 0)):
                fields[name] = value
                field_sequences[name] = sequence
                applied.append(name)
            else:
                stale.append(name)  # a newer change already wrote it: keep the newer value
        outputs = {"copy_sequence": str(max([sequence] + [int(s) for s in field_sequences.values()])),
                   "applied_fields": ",".join(applied)}
        if stale:
            outputs["stale_fields"] = ",".join(stale)
        action = self._follow_up(register, {k: values[k] for k in applied})
        with conn.pipeline():  # the writes in one round trip
            conn.execute(_UPDATE_COPY, (Jsonb(fields), Jsonb(field_sequences), sequence, self.simulates, register,
                                        key))
            first = conn.execute(_APPLIED, (self.simulates, register, key, sequence, p["task_id"], change_event_id,
                                            applied, stale))
            if action:
                conn.execute(_FOLLOW_UP, (self.simulates, register, key, action, change_event_id))
                outputs["follow_up"] = action
            repeat = first.fetchone() is None
        self.applied += 1
        log.info("register_copy.applied", department=self.simulates, register=register, key=key, sequence=sequence,
                 applied=applied, stale=stale, repeat=repeat, follow_up=action)
        return [Decision("applied", outputs=outputs)]

    def _follow_up(self, register: str, applied: Mapping[str, str | None]) -> str | None:
        for (reg, name, value), actions in FOLLOW_UPS.items():
            if reg == register and applied.get(name) == value:
                return actions.get(self.simulates) or actions.get("*")
        return None


class ByKind:
    """One backend per department topic: `register_sync` tasks to `sync`, `benefit_grant` tasks (免申即享,
    from the proactive processor) to `grant`, every other task to `case`.

    A department has ONE adapter (one consumer group on tasks.<department>) for case services,
    register syncs and grants alike, so its backend routes on the task's kind (a TaskCancelled
    carries the kind of the task it withdraws)."""

    def __init__(self, case: Any, sync: RegisterCopyBackend, grant: Any = None):
        if case.department != sync.department or (grant is not None and grant.department != case.department):
            raise ValueError("every backend must serve the same department topic")
        self.case, self.sync, self.grant = case, sync, grant
        self.department = case.department

    def _for(self, task: Event):
        kind = task.payload.get("kind")
        if kind == SYNC_KIND:
            return self.sync
        if kind == GRANT_KIND and self.grant is not None:
            return self.grant
        return self.case

    def handle(self, task: Event, conn: psycopg.Connection) -> list[Decision]:
        return self._for(task).handle(task, conn)

    def handle_batch(self, tasks: Sequence[Event], conn: psycopg.Connection) -> list[list[Decision]]:
        """The SDK's batch entry point: each run of consecutive tasks of one kind goes to its
        backend, at once where that backend has a `handle_batch`, in the tasks' order."""
        out: list[list[Decision]] = []
        start = 0
        while start < len(tasks):
            backend = self._for(tasks[start])
            end = start + 1
            while end < len(tasks) and self._for(tasks[end]) is backend:
                end += 1
            batch = getattr(backend, "handle_batch", None)
            if batch is not None:
                out.extend(batch(tasks[start:end], conn))
            else:
                out.extend(backend.handle(t, conn) for t in tasks[start:end])
            start = end
        return out

    def cancel(self, task: Event, conn: psycopg.Connection) -> None:
        self._for(task).cancel(task, conn)

    def __getattr__(self, name: str) -> Any:
        """Everything else (config, stats, …) is the case backend's, so callers that know it keep working."""
        return getattr(self.case, name)


# --- outages and reading copies (operators, tests, the demo) ----------------------------------

def _outage(conn: psycopg.Connection, department: str) -> tuple[str, str | None] | None:
    row = conn.execute("SELECT mode, reason FROM register_copy_outages WHERE department = %s AND until > now()",
                       (department,)).fetchone()
    return (row[0], row[1]) if row else None


def set_outage(conn: psycopg.Connection, department: str, seconds: float, mode: str = "unavailable",
               reason: str | None = None) -> None:
    """Take `department`'s register system down (or make it refuse updates) for `seconds`."""
    if mode not in OUTAGE_MODES:
        raise ValueError(f"mode must be one of {OUTAGE_MODES}")
    conn.execute("INSERT INTO register_copy_outages (department, mode, reason, until) "
                 "VALUES (%s, %s, %s, now() + make_interval(secs => %s)) ON CONFLICT (department) DO UPDATE "
                 "SET mode = EXCLUDED.mode, reason = EXCLUDED.reason, until = EXCLUDED.until",
                 (department, mode, reason, seconds))


def clear_outage(conn: psycopg.Connection, department: str) -> None:
    conn.execute("DELETE FROM register_copy_outages WHERE department = %s", (department,))


def read_copy(conn: psycopg.Connection, department: str, register: str, key: str) -> dict[str, Any] | None:
    """A department's copy of one register entry: {"fields", "field_sequences", "sequence"}."""
    row = conn.execute("SELECT fields, field_sequences, sequence FROM register_copies WHERE department = %s AND "
                       "register = %s AND register_key = %s", (department, register, key)).fetchone()
    return None if row is None else {"fields": row[0], "field_sequences": row[1], "sequence": row[2]}
