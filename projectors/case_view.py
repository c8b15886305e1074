"""The case view read model: per case the bundle, every service's state and department, what is
missing, deadlines, outputs and a human-readable timeline, in PostgreSQL.

Run by `ProjectionRunner` (projectors/postgres_projection.py): rows and consumer offsets are
written in one transaction and every event id is applied once. Read by the HTTP API through
`read_case` and by department worklists through `read_worklist`.

Order. The view reads `applications`, `cases` and every `tasks.<department>` and
`decisions.<department>`; Kafka orders one partition, not several topics, so a decision may
arrive before the task it answers, or an attempt-2 decision before the supplement that led to
it. Every change is therefore monotonic:
- a service's status carries a version (attempt, rank), the attempt parsed from the task id
  (`<case_id>:<service_id>:<attempt>`); an event changes the status only if its version is
  >= the stored one. Ranks: waiting 0 < dispatched 1 < accepted 2 < correction_requested 3
  < blocked/cancelled inferred by the view 4 < approved/rejected 5 < cancelled by a
  TaskCancelled 6 (a TaskCancelled exists only for a task the case still had open when it
  was withdrawn, so it outranks a decision on the same attempt that arrived too late);
- the winning event sets every status field (reason, missing, outputs: only an approval has
  outputs), so the result does not depend on which losing events came first;
- the due date comes from the TaskDispatched of the highest attempt, whatever the status;
- an event of a case whose submission has not been seen yet is still recorded (a skeleton
  row); the submission fills in the bundle and the applicant when it arrives;
- the case status is recomputed after every event: withdrawn if ApplicationWithdrawn was
  seen, completed if CaseCompleted was seen, awaiting_applicant if any service is
  correction_requested, else open. Services a withdrawal leaves open become cancelled and
  services CaseCompleted lists as not approved, still open and waiting for another
  not-approved service become blocked (the dispatch fold does both without an event); the
  case shows completed only once every service shows a final state, since CaseCompleted can
  arrive before the decision that completed the case;
- every stored time is an event's occurred_at, never now(), so a rebuild from the log gives
  exactly the rows the incremental run gave, in whatever order the topics interleave.

Personal data. Outputs (the child's resident ID …) are stored because the status page
shows them to their owner; `read_case` returns them and the API decides who sees them.
Nothing here logs a payload, and the timeline text holds no form value (timeline_text.py).

Tables (infra/migrations/0004_case_view.sql): case_view, case_service_view, case_materials,
case_timeline. A projection built with `schema="x"` uses the same tables in schema x (see
`create_schema`): a test instance or a shadow rebuild never touches the live view.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import structlog
from prometheus_client import Gauge
from psycopg import sql
from psycopg.types.json import Jsonb

from catalog.loader import load_catalog
from catalog.model import Catalog, Label
from catalog.working_days import working_days_between
from events.envelope import Event
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic

from .case_state import blocked_at_completion, is_register_sync
from .postgres_projection import check_schema, drop_schema  # noqa: F401 (drop_schema: part of this module's API)
from .postgres_projection import create_schema as _create_schema
from .timeline_text import (attempt_of, bundle_label, department_label, describe, material_label, service_label,
                            status_label)

log = structlog.get_logger(__name__)

NAME = "case_view"
MIGRATION = Path(__file__).resolve().parent.parent / "infra" / "migrations" / "0004_case_view.sql"
TABLES = ("case_view", "case_service_view", "case_materials", "case_timeline")
CHINA = ZoneInfo("Asia/Shanghai")

# status -> rank (see the module docstring)
WAITING, DISPATCHED, ACCEPTED, CORRECTION = "waiting", "dispatched", "accepted", "correction_requested"
APPROVED, REJECTED, BLOCKED, CANCELLED = "approved", "rejected", "blocked", "cancelled"
RANK = {WAITING: 0, DISPATCHED: 1, ACCEPTED: 2, CORRECTION: 3, APPROVED: 5, REJECTED: 5}
RANK_INFERRED_FINAL = 4   # blocked / cancelled inferred by the view from the case's end
RANK_TASK_CANCELLED = 6
OPEN_STATUSES = (DISPATCHED, ACCEPTED, CORRECTION)   # at the department, not decided
WITHDRAWN_REASON = "withdrawn by the applicant"
BLOCKED_REASON = "a service it depends on was not approved"

# timeline: cause before effect when two entries share occurred_at (derived events carry their cause's time)
PHASE = {"ApplicationSubmitted": 0, "MaterialsSupplemented": 0, "ApplicationWithdrawn": 0, "DecisionRecorded": 0,
         "TaskDispatched": 1, "TaskCancelled": 1, "CaseCompleted": 2}
# deadlines, 办不成事 and 好差评: timeline entries only (their own read models hold their state)
OVERSIGHT = ("DeadlineApproaching", "DeadlineBreached", "CaseEscalated", "EscalationReplied", "EscalationExtended",
             "EscalationResolved", "CaseRated", "RectificationOpened", "RectificationReplied")
PHASE |= {t: 3 for t in OVERSIGHT}
HANDLED = frozenset(PHASE)
_check_schema = check_schema  # the read models' schema-name rule (postgres_projection.py)


def default_topics(catalog: Catalog | None = None) -> tuple[str, ...]:
    departments = sorted((catalog or load_catalog()).departments)
    return (APPLICATIONS, CASES, *(tasks_topic(d) for d in departments), *(decisions_topic(d) for d in departments))


def create_schema(conn: psycopg.Connection, schema: str) -> None:
    """Create `schema` with the case view's tables (the migration, run inside it). The public
    schema's tables come from `onething up`'s migrations, not from here."""
    _create_schema(conn, schema, MIGRATION, "case_view")


class _Sql:
    """The projection's statements, rendered once with schema-qualified table names.

    Few round trips per event (they are most of a rebuild's time): a task or a decision is
    one service upsert, one case upsert that also recomputes the case status, and one
    timeline insert."""

    def __init__(self, schema: str):
        t = {name: sql.Identifier(schema, name) for name in TABLES}
        self.tables = t

        def f(text: str) -> str:
            return sql.SQL(text).format(cv=t["case_view"], sv=t["case_service_view"], mat=t["case_materials"],
                                        tl=t["case_timeline"]).as_string(None)

        # case facts, each recorded once (the first submission, withdrawal, completion wins)
        self.submitted = f(
            "INSERT INTO {cv} AS c (case_id, updated_at, receipt_no, bundle_code, services, applicant_token, channel,"
            " staff_id, region_code, submitted_at) VALUES (%(case_id)s, %(at)s, %(receipt_no)s, %(bundle_code)s,"
            " %(services)s, %(applicant_token)s, %(channel)s, %(staff_id)s, %(region_code)s, %(at)s) "
            "ON CONFLICT (case_id) DO UPDATE SET receipt_no = EXCLUDED.receipt_no, bundle_code = EXCLUDED.bundle_code,"
            " services = EXCLUDED.services, applicant_token = EXCLUDED.applicant_token, channel = EXCLUDED.channel,"
            " staff_id = EXCLUDED.staff_id, region_code = EXCLUDED.region_code, submitted_at = EXCLUDED.submitted_at "
            "WHERE c.submitted_at IS NULL OR c.submitted_at = EXCLUDED.submitted_at")
        self.withdrawn = f(
            "INSERT INTO {cv} AS c (case_id, withdrawn_at) VALUES (%(case_id)s, %(at)s) "
            "ON CONFLICT (case_id) DO UPDATE SET withdrawn_at = EXCLUDED.withdrawn_at WHERE c.withdrawn_at IS NULL")
        self.completed = f(
            "INSERT INTO {cv} AS c (case_id, completed_at, completed_rejected) VALUES (%(case_id)s, %(at)s, %(rejected)s) "
            "ON CONFLICT (case_id) DO UPDATE SET completed_at = EXCLUDED.completed_at,"
            " completed_rejected = EXCLUDED.completed_rejected WHERE c.completed_at IS NULL")
        self.materials = f(
            "INSERT INTO {mat} AS m (case_id, code, source, updated_at)"
            " SELECT %(case_id)s, code, source, %(at)s FROM unnest(%(codes)s::text[], %(sources)s::text[]) AS x(code, source) "
            "ON CONFLICT (case_id, code) DO UPDATE SET source = EXCLUDED.source, updated_at = EXCLUDED.updated_at "
            "WHERE m.updated_at IS NULL OR m.updated_at <= EXCLUDED.updated_at")
        self.services = f(
            "INSERT INTO {sv} AS s (case_id, service_id, department)"
            " SELECT %(case_id)s, sid, dept FROM unnest(%(service_ids)s::text[], %(departments)s::text[]) AS x(sid, dept) "
            "ON CONFLICT (case_id, service_id) DO UPDATE SET department = EXCLUDED.department "
            "WHERE s.department IS NULL")
        # the monotonic status change: only when the event's (attempt, rank) >= the stored one;
        # the due date only from the TaskDispatched of the highest attempt
        win = "(s.attempt, s.rank) <= (EXCLUDED.attempt, EXCLUDED.rank)"
        due = "(EXCLUDED.dispatched_attempt > 0 AND EXCLUDED.dispatched_attempt >= s.dispatched_attempt)"
        self.service = f(
            "INSERT INTO {sv} AS s (case_id, service_id, department, status, attempt, rank, task_id, reason, missing,"
            " outputs, updated_at, dispatched_attempt, due_date) VALUES (%(case_id)s, %(service_id)s, %(department)s,"
            " %(status)s, %(attempt)s, %(rank)s, %(task_id)s, %(reason)s, %(missing)s, %(outputs)s, %(at)s,"
            " %(dispatched_attempt)s, %(due_date)s) "
            "ON CONFLICT (case_id, service_id) DO UPDATE SET department = coalesce(s.department, EXCLUDED.department), "
            + ", ".join(f"{c} = CASE WHEN {win} THEN EXCLUDED.{c} ELSE s.{c} END"
                        for c in ("status", "attempt", "rank", "task_id", "reason", "missing", "outputs", "updated_at"))
            + f", due_date = CASE WHEN {due} THEN EXCLUDED.due_date ELSE s.due_date END,"
            f" dispatched_attempt = CASE WHEN {due} THEN EXCLUDED.dispatched_attempt ELSE s.dispatched_attempt END")
        # after every event: the case's row, status and due date (status of an open case from its services)
        self.settle_case = f(
            "INSERT INTO {cv} AS c (case_id, updated_at, status, due_date) VALUES (%(case_id)s, %(at)s,"
            " CASE WHEN EXISTS (SELECT 1 FROM {sv} s WHERE s.case_id = %(case_id)s"
            "  AND s.status = 'correction_requested') THEN 'awaiting_applicant' ELSE 'open' END,"
            " (SELECT max(s.due_date) FROM {sv} s WHERE s.case_id = %(case_id)s)) "
            "ON CONFLICT (case_id) DO UPDATE SET updated_at = greatest(c.updated_at, EXCLUDED.updated_at),"
            " due_date = EXCLUDED.due_date "
            "RETURNING c.withdrawn_at, c.completed_at")
        # completed only once every service shows its final state: CaseCompleted (on `cases`) can
        # overtake the decision it follows (on `decisions.<dept>`), and a case shown 办结 with a
        # service still 办理中 would be a contradiction on the status page
        self.case_status = f(
            "UPDATE {cv} c SET status = CASE WHEN c.withdrawn_at IS NOT NULL THEN 'withdrawn'"
            " WHEN c.completed_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {sv} s WHERE s.case_id = c.case_id"
            "  AND s.rank < %(rank)s) THEN 'completed'"
            " WHEN EXISTS (SELECT 1 FROM {sv} s WHERE s.case_id = c.case_id AND s.status = 'correction_requested')"
            "  THEN 'awaiting_applicant' ELSE 'open' END WHERE c.case_id = %(case_id)s")
        self.cancel_open = f(
            "UPDATE {sv} SET status = 'cancelled', rank = %(rank)s, reason = %(reason)s, missing = '{{}}',"
            " outputs = '{{}}', updated_at = %(at)s WHERE case_id = %(case_id)s AND rank < %(rank)s")
        self.block_open = f(
            "UPDATE {sv} s SET status = 'blocked', rank = %(rank)s, reason = %(reason)s, missing = '{{}}',"
            " outputs = '{{}}', updated_at = %(at)s FROM {cv} c WHERE s.case_id = %(case_id)s AND c.case_id = s.case_id"
            " AND s.rank < %(rank)s AND s.service_id = ANY(c.completed_rejected)")
        self.timeline = f(
            "INSERT INTO {tl} (case_id, event_id, entry_key, occurred_at, phase, sequence, event_type, text_zh,"
            " text_en, actor_role, channel, department, service_id) VALUES (%(case_id)s, %(event_id)s,"
            " %(entry_key)s, %(at)s, %(phase)s, %(sequence)s, %(event_type)s, %(text_zh)s, %(text_en)s,"
            " %(actor_role)s, %(channel)s, %(department)s, %(service_id)s) ON CONFLICT DO NOTHING")
        self.reset = f("TRUNCATE {cv}, {sv}, {mat}, {tl}")
        self.count_cases = f("SELECT count(*) FROM {cv}")
        self.case_row = f(
            "SELECT case_id, receipt_no, bundle_code, services, applicant_token, channel, region_code, status,"
            " due_date, submitted_at, updated_at, completed_at, withdrawn_at FROM {cv} WHERE case_id = %s")
        self.service_rows = f(
            "SELECT service_id, department, status, attempt, due_date, reason, missing, outputs "
            "FROM {sv} WHERE case_id = %s")
        self.timeline_rows = f(
            "SELECT occurred_at, event_type, text_zh, text_en, actor_role, channel FROM {tl} "
            "WHERE case_id = %s ORDER BY occurred_at, phase, sequence, event_id")
        self.worklist = f(
            "SELECT s.case_id, s.service_id, s.task_id, s.status, s.attempt, s.due_date, c.bundle_code "
            "FROM {sv} s JOIN {cv} c USING (case_id) "
            "WHERE s.department = %(department)s AND s.status = ANY(%(statuses)s) "
            "ORDER BY s.due_date NULLS LAST, s.case_id, s.service_id LIMIT %(limit)s")


_SQL_CACHE: dict[str, _Sql] = {}


def _sql_for(schema: str) -> _Sql:
    if schema not in _SQL_CACHE:
        _SQL_CACHE[schema] = _Sql(_check_schema(schema))
    return _SQL_CACHE[schema]


class CaseViewProjection:
    """The case view. `CaseViewProjection()` is the live one (name "case_view", public schema,
    every case topic). A test or a shadow rebuild passes its own `name` (its offsets and
    processed ids), `schema` (its tables; create them with `create_schema`) and, if it wants
    to skip other cases cheaply, `keep(case_id) -> bool`."""

    def __init__(self, name: str = NAME, *, schema: str = "public", topics: tuple[str, ...] | None = None,
                 catalog: Catalog | None = None, keep: Callable[[str], bool] | None = None):
        self.name = name
        self.schema = _check_schema(schema)
        self.catalog = catalog or load_catalog()
        self.topics = tuple(topics) if topics else default_topics(self.catalog)
        self.keep = keep
        self.q = _sql_for(self.schema)

    # -- the Projection protocol ----------------------------------------------------------
    tables = TABLES
    tick_s = 5.0   # the cases-by-state gauge

    def create_schema(self, conn: psycopg.Connection, schema: str) -> None:
        create_schema(conn, schema)

    def tick(self, step) -> None:
        count_cases(step.conn, self.schema)

    def reset(self, conn: psycopg.Connection) -> None:
        conn.execute(self.q.reset)

    def wants(self, event: Event) -> bool:
        return self.keep is None or self.keep(event.key)

    def apply(self, conn: psycopg.Connection, event: Event) -> None:
        if event.type not in HANDLED or is_register_sync(event):
            return  # register syncs share the department topics; they are the cascade's read model
        case_id = event.key
        if self.keep is not None and not self.keep(case_id):
            return
        base = {"case_id": case_id, "at": event.envelope.occurred_at}
        if event.type in OVERSIGHT:
            p = event.payload
            sid = p.get("service_id") or (p.get("subject_id") if p.get("scope") == "service" else None)
            self._timeline(conn, event, base, p.get("department"), sid)
            return
        department, service_id = getattr(self, f"_on_{event.type}")(conn, event, base)
        self._settle(conn, base)
        self._timeline(conn, event, base, department, service_id)

    # -- per event type: (department, service_id) for the timeline ------------------------
    def _on_ApplicationSubmitted(self, conn, event: Event, base: dict) -> tuple[None, None]:
        p, actor = event.payload, event.envelope.actor
        services = list(dict.fromkeys(p["services"]))
        applied = conn.execute(self.q.submitted, {
            **base, "receipt_no": p.get("receipt_no"), "bundle_code": p["bundle_code"], "services": services,
            "applicant_token": actor.id_token, "channel": actor.channel, "staff_id": actor.staff_id,
            "region_code": event.envelope.region_code}).rowcount
        if not applied:
            return None, None  # a second submission under the same case id is a repeat
        departments = [svc.department if (svc := self.catalog.services.get(sid)) else None for sid in services]
        conn.execute(self.q.services, {**base, "service_ids": services, "departments": departments})
        self._materials(conn, p.get("materials") or (), base)
        return None, None

    def _on_MaterialsSupplemented(self, conn, event: Event, base: dict) -> tuple[None, None]:
        # the services stay correction_requested until the TaskDispatched of their next attempt
        self._materials(conn, event.payload.get("materials") or (), base)
        return None, None

    def _on_ApplicationWithdrawn(self, conn, event: Event, base: dict) -> tuple[None, None]:
        conn.execute(self.q.withdrawn, base)
        return None, None

    def _on_CaseCompleted(self, conn, event: Event, base: dict) -> tuple[None, None]:
        p = event.payload
        services = [*(p.get("approved") or ()), *(p.get("rejected") or ())]
        conn.execute(self.q.completed, {**base, "rejected": blocked_at_completion(self.catalog, services,
                                                                                  p.get("rejected") or ())})
        return None, None

    def _on_TaskDispatched(self, conn, event: Event, base: dict) -> tuple[str, str]:
        p = event.payload
        attempt = attempt_of(p["task_id"])
        self._service(conn, base, p, status=DISPATCHED, rank=RANK[DISPATCHED], attempt=attempt,
                      due_date=p.get("due_date"))
        return p["department"], p["service_id"]

    def _on_TaskCancelled(self, conn, event: Event, base: dict) -> tuple[str, str]:
        p = event.payload
        self._service(conn, base, p, status=CANCELLED, rank=RANK_TASK_CANCELLED,
                      attempt=attempt_of(p["task_id"]), reason=p.get("reason"))
        return p["department"], p["service_id"]

    def _on_DecisionRecorded(self, conn, event: Event, base: dict) -> tuple[str, str]:
        p = event.payload
        outcome = p["outcome"]
        if outcome in RANK:
            self._service(conn, base, p, status=outcome, rank=RANK[outcome], attempt=attempt_of(p["task_id"]),
                          reason=p.get("reason") if outcome in (CORRECTION, REJECTED) else None,
                          missing=list(p.get("missing_materials") or ()) if outcome == CORRECTION else [],
                          outputs=dict(p.get("outputs") or {}) if outcome == APPROVED else {})
        else:  # applied / failed belong to register syncs: the timeline shows it, the status stays
            conn.execute(self.q.services, {**base, "service_ids": [p["service_id"]], "departments": [p["department"]]})
        return p["department"], p["service_id"]

    # -- helpers ------------------------------------------------------------------------
    def _service(self, conn, base: dict, p: dict, *, status: str, rank: int, attempt: int,
                 reason: str | None = None, missing: list[str] | None = None,
                 outputs: dict[str, str] | None = None, due_date: date | None = None) -> None:
        conn.execute(self.q.service, {
            **base, "service_id": p["service_id"], "department": p.get("department"), "status": status,
            "rank": rank, "attempt": attempt, "task_id": p.get("task_id"), "reason": reason,
            "missing": missing or [], "outputs": Jsonb(outputs or {}),
            "dispatched_attempt": attempt if status == DISPATCHED else 0, "due_date": due_date})

    def _materials(self, conn, materials, base: dict) -> None:
        if materials:
            conn.execute(self.q.materials, {**base, "codes": [m["code"] for m in materials],
                                            "sources": [m["source"] for m in materials]})

    def _settle(self, conn, base: dict) -> None:
        withdrawn_at, completed_at = conn.execute(self.q.settle_case, base).fetchone()
        if withdrawn_at is not None:
            conn.execute(self.q.cancel_open, {**base, "at": withdrawn_at, "rank": RANK_INFERRED_FINAL,
                                              "reason": WITHDRAWN_REASON})
        elif completed_at is not None:
            conn.execute(self.q.block_open, {**base, "at": completed_at, "rank": RANK_INFERRED_FINAL,
                                             "reason": BLOCKED_REASON})
        conn.execute(self.q.case_status, {**base, "rank": RANK_INFERRED_FINAL})

    def _timeline(self, conn, event: Event, base: dict, department: str | None, service_id: str | None) -> None:
        text = describe(event, self.catalog)
        if text is None:
            return
        p, env = event.payload, event.envelope
        key = {"ApplicationSubmitted": "submitted", "ApplicationWithdrawn": "withdrawn", "CaseCompleted": "completed",
               "TaskDispatched": f"task:{p.get('task_id')}", "TaskCancelled": f"cancel:{p.get('task_id')}",
               }.get(event.type, f"event:{event.id}")
        conn.execute(self.q.timeline, {
            **base, "event_id": event.id, "entry_key": key, "phase": PHASE[event.type], "sequence": env.sequence,
            "event_type": event.type, "text_zh": text[0], "text_en": text[1], "actor_role": env.actor.role,
            "channel": env.actor.channel, "department": department, "service_id": service_id})


# -- reading ----------------------------------------------------------------------------------
def china_today() -> date:
    """Today where the applicants and departments are (working days are China's); the deadline
    clock's ONETHING_TODAY, when set, so the page and the clock agree on what is overdue."""
    from .deadlines import today_in_china

    return today_in_china()


def _label(lb: Label) -> dict[str, str]:
    return {"zh": lb.zh, "en": lb.en}


def _iso(value: date | datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return value.isoformat()


def _days_left(today: date, due: date | None) -> int | None:
    return None if due is None else working_days_between(today, due)


def _stage(today: date, due: date | None) -> str | None:
    """ok | approaching | breached, by the deadline clock's rule (a correction pauses it: None)."""
    from .deadline_clock import stage

    return None if due is None else stage(due, today).value


def read_case(conn: psycopg.Connection, case_id: str, today: date | None = None, *,
              schema: str = "public", catalog: Catalog | None = None) -> dict[str, Any] | None:
    """The case as the status page shows it, JSON-able (dates as ISO text), or None when the
    view has not seen the case's submission yet.

    `working_days_left` is computed now, against `today` (default: today in China): working
    days from today to the due date, negative when overdue, None once decided (a service) or
    once the case is completed or withdrawn. `outputs` can be personal data (a resident ID):
    the caller decides who may see them.
    """
    catalog = catalog or load_catalog()
    q = _sql_for(schema)
    today = today or china_today()
    row = conn.execute(q.case_row, (case_id,)).fetchone()
    if row is None or row[2] is None:
        return None
    (case_id, receipt_no, bundle_code, declared, applicant_token, channel, region_code, status, due_date,
     submitted_at, updated_at, completed_at, _withdrawn_at) = row
    order = {sid: i for i, sid in enumerate(declared or ())}
    rows = sorted(conn.execute(q.service_rows, (case_id,)).fetchall(),
                  key=lambda r: (order.get(r[0], len(order)), r[0]))
    case_open = status in ("open", "awaiting_applicant")
    services, missing_all = [], {}
    for sid, dept, s_status, attempt, s_due, reason, missing, outputs in rows:
        services.append({
            "service_id": sid, "label": _label(service_label(catalog, sid)),
            "department": dept, "department_label": _label(department_label(catalog, dept)),
            "status": s_status, "status_label": _label(status_label(s_status)), "attempt": attempt,
            "due_date": _iso(s_due),
            "working_days_left": _days_left(today, s_due) if case_open and s_status in (WAITING, *OPEN_STATUSES)
            else None,
            "deadline": _stage(today, s_due) if case_open and s_status in (DISPATCHED, ACCEPTED) else None,
            "reason": reason,
            "missing": [{"code": c, "label": _label(material_label(catalog, c))} for c in missing]
            if s_status == CORRECTION else [],
            "outputs": dict(outputs or {}),
        })
        if s_status == CORRECTION:
            for code in missing:
                missing_all.setdefault(code, []).append(sid)
    timeline = [{"occurred_at": _iso(at), "event_type": et, "text_zh": zh, "text_en": en, "actor_role": role,
                 "channel": ch} for at, et, zh, en, role, ch in conn.execute(q.timeline_rows, (case_id,))]
    return {
        "case_id": case_id, "receipt_no": receipt_no, "bundle_code": bundle_code,
        "bundle_label": _label(bundle_label(catalog, bundle_code)),
        "status": status, "status_label": _label(status_label(status, case=True)),
        "applicant_token": applicant_token, "channel": channel, "region_code": region_code,
        "submitted_at": _iso(submitted_at), "updated_at": _iso(updated_at), "completed_at": _iso(completed_at),
        "due_date": _iso(due_date), "working_days_left": _days_left(today, due_date) if case_open else None,
        "departments": sorted({s["department"] for s in services if s["department"]}),
        "services": services,
        "missing": [{"code": c, "label": _label(material_label(catalog, c)), "services": sids}
                    for c, sids in missing_all.items()],
        "timeline": timeline,
    }


def read_worklist(conn: psycopg.Connection, department: str, status: str | None = None, *,
                  today: date | None = None, limit: int = 500, schema: str = "public") -> list[dict[str, Any]]:
    """A department's open services (dispatched, accepted, correction_requested), soonest due
    first; `status` narrows it to one status (any status, e.g. "approved", may be asked for)."""
    q = _sql_for(schema)
    today = today or china_today()
    statuses = [status] if status else list(OPEN_STATUSES)
    rows = conn.execute(q.worklist, {"department": department, "statuses": statuses, "limit": limit}).fetchall()
    return [{"case_id": case_id, "service_id": sid, "task_id": task_id, "status": s, "attempt": attempt,
             "due_date": _iso(due), "working_days_left": _days_left(today, due) if s in OPEN_STATUSES else None,
             "deadline": _stage(today, due) if s in (DISPATCHED, ACCEPTED) else None,
             "bundle_code": bundle_code}
            for case_id, sid, task_id, s, attempt, due, bundle_code in rows]


# -- running ----------------------------------------------------------------------------------
CASES_BY_STATE = Gauge("onething_cases", "Cases in the case view by bundle and state", ["bundle", "status"])


def count_cases(conn: psycopg.Connection, schema: str = "public") -> None:
    """Cases by bundle and state, for the SRE's dashboard (in the caller's transaction)."""
    rows = conn.execute(sql.SQL("SELECT coalesce(bundle_code, 'unknown'), status, count(*) FROM {}.case_view "
                                "GROUP BY 1, 2").format(sql.Identifier(schema))).fetchall()
    for bundle, status, n in rows:
        CASES_BY_STATE.labels(bundle, status).set(n)


def processors(projection: CaseViewProjection | None = None) -> list:
    """The case view as a processor of the runtime (`onething run case-view`, the read-models process)."""
    from .postgres_projection import ProjectionProcessor

    return [ProjectionProcessor(projection or CaseViewProjection())]


def run(settings, stop: Callable[[], bool] = lambda: False, projection: CaseViewProjection | None = None) -> None:
    """Follow the log into the view until `stop()` is true, on a worker of its own. Applies the
    migrations first (idempotent; concurrent starters wait for each other)."""
    from infra import migrations

    from .runtime import Worker

    migrations.migrate(settings.database_url)
    worker = Worker(processors(projection)[0], settings.bootstrap_servers, settings.database_url)
    try:
        worker.run(stop)
    finally:
        worker.close()


def shadow(name: str, schema: str) -> CaseViewProjection:
    """A new generation of the live view, built in `schema` by a rebuild (postgres_projection.shadow_rebuild)."""
    return CaseViewProjection(name, schema=schema)


def replay(settings, projection: CaseViewProjection | None = None, console=None) -> int:
    """`onething replay case-view`: rebuild the view from the log beside the live one, with a progress
    bar of messages done / total, and swap it in once it caught up (the live view keeps serving).
    A projection of its own (a test's) is rebuilt in place instead. Returns the messages read."""
    from .postgres_projection import replay_with_progress

    live = projection is None
    projection = projection or CaseViewProjection()
    total = replay_with_progress(settings, projection, console, factory=shadow if live else None)
    with psycopg.connect(settings.database_url) as conn:
        cases = conn.execute(projection.q.count_cases).fetchone()[0]
    if console is not None:
        console.print(f"{projection.name}: {total} events replayed, {cases} cases in the view")
    log.info("case_view.replayed", projection=projection.name, events=total, cases=cases)
    return total
