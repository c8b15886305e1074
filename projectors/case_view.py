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
- the case status follows the events: withdrawn if ApplicationWithdrawn was seen, completed
  if CaseCompleted was seen, awaiting_applicant if any service is correction_requested, else
  open. Services a withdrawal leaves open become cancelled and services CaseCompleted lists
  as not approved, still open and waiting for another not-approved service become blocked
  (the dispatch fold does both without an event); the case shows completed only once every
  service shows a final state, since CaseCompleted can arrive before the decision that
  completed the case;
- every stored time is an event's occurred_at, never now(), so a rebuild from the log gives
  exactly the rows the incremental run gave, in whatever order the topics interleave.

Batches. The view must keep up with the whole system's event rate, and a statement's round
trip costs far more than its rows, so `apply_batch` writes a checkpoint's events with a fixed
handful of set-based statements in one pipeline (case_view_sql.py), plus one read when the
batch holds a submission or a withdrawal. The events are first reduced in Python to one row
per key by the same winner rules the SQL applies, and the case is settled (status, due date,
inferred cancelled / blocked) once per batch instead of after every event. That gives the rows
of applying the events one by one, because an inferred state is itself monotonic (rank 4 at
the current attempt, with a fixed reason and time); the one exception is a withdrawal arriving
after a completion, which cancels only the services still open when it arrives, so the batch
is cut there (`_Segment`) and the part before it settled first. `apply(event)` is a batch of one.

Personal data. Outputs (the child's resident ID …) are stored because the status page
shows them to their owner; `read_case` returns them and the API decides who sees them.
Nothing here logs a payload, and the timeline text holds no form value (timeline_text.py).

Tables (infra/migrations/0004_case_view.sql, with 0016's reason_code): case_view, case_service_view, case_materials,
case_timeline. A projection built with `schema="x"` uses the same tables in schema x (see
`create_schema`): a test instance or a shadow rebuild never touches the live view.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import structlog
from prometheus_client import Gauge
from psycopg import sql
from psycopg.types.json import Jsonb

from catalog.loader import load_catalog
from catalog.model import Catalog
from events.envelope import Event
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic

from .case_state import blocked_at_completion, belongs_to_no_case
from .batch_rows import rows_json
from .case_view_sql import TABLES, CaseViewSql, sql_for  # noqa: F401 (CaseViewSql: API)
from .postgres_projection import BatchedCaseModel, check_schema, drop_schema  # noqa: F401 (drop_schema: API)
from .postgres_projection import create_schema as _create_schema
from .timeline_text import attempt_of, describe

log = structlog.get_logger(__name__)

NAME = "case_view"
MIGRATION = Path(__file__).resolve().parent.parent / "infra" / "migrations" / "0004_case_view.sql"
#: later changes to the view's tables, run after MIGRATION in a schema of its own (each idempotent)
LATER_MIGRATIONS = (MIGRATION.parent / "0016_reason_codes.sql",)
CHINA = ZoneInfo("Asia/Shanghai")

# status -> rank (see the module docstring)
WAITING, DISPATCHED, ACCEPTED, CORRECTION = "waiting", "dispatched", "accepted", "correction_requested"
APPROVED, REJECTED, BLOCKED, CANCELLED = "approved", "rejected", "blocked", "cancelled"
RANK = {WAITING: 0, DISPATCHED: 1, ACCEPTED: 2, CORRECTION: 3, APPROVED: 5, REJECTED: 5}
RANK_TASK_CANCELLED = 6
OPEN_STATUSES = (DISPATCHED, ACCEPTED, CORRECTION)   # at the department, not decided

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
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(_check_schema(schema))))
        for later in LATER_MIGRATIONS:
            conn.execute(later.read_text())


_sql_for = sql_for


def _rows(rows) -> Jsonb:
    return Jsonb(list(rows), dumps=rows_json)


class _Segment:
    """A stretch of a batch, reduced to one row per key: what goes to each table, and the cases
    it touched (settled once at its end). A row meets the stored state in SQL by the same rules
    by which the stretch's events met each other here."""

    def __init__(self):
        self.cases: dict[str, dict] = {}
        self.services: dict[tuple[str, str], dict] = {}
        self.materials: dict[tuple[str, str], dict] = {}

    def case(self, case_id: str, at: datetime) -> dict:
        row = self.cases.get(case_id)
        if row is None:
            row = self.cases[case_id] = {"case_id": case_id, "updated_at": at, "services": [], "submitted_at": None,
                                         "withdrawn_at": None, "completed_at": None, "completed_rejected": []}
        elif at > row["updated_at"]:
            row["updated_at"] = at
        return row

    def service(self, case_id: str, service_id: str, department: str | None) -> dict:
        """The service's row; as it stands, a 'waiting' one at version (0, 0): what a row the
        submission creates holds, and what any event of a task (attempt >= 1) outranks."""
        row = self.services.get((case_id, service_id))
        if row is None:
            row = self.services[(case_id, service_id)] = {
                "case_id": case_id, "service_id": service_id, "department": department, "status": WAITING,
                "attempt": 0, "rank": 0, "task_id": None, "reason": None, "reason_code": None, "missing": [],
                "outputs": {},
                "updated_at": None, "dispatched_attempt": 0, "due_date": None}
        elif row["department"] is None:
            row["department"] = department
        return row

    def status(self, case_id: str, at: datetime, p: dict, *, status: str, rank: int, attempt: int,
               reason: str | None = None, missing: list[str] | None = None,
               outputs: dict[str, str] | None = None, due_date: date | None = None,
               reason_code: str | None = None) -> None:
        row = self.service(case_id, p["service_id"], p.get("department"))
        if (attempt, rank) >= (row["attempt"], row["rank"]):  # the later of equal versions wins, as in SQL
            row.update(status=status, attempt=attempt, rank=rank, task_id=p.get("task_id"), reason=reason,
                       reason_code=reason_code, missing=missing or [], outputs=outputs or {}, updated_at=at)
        if status == DISPATCHED and attempt >= row["dispatched_attempt"]:
            row.update(dispatched_attempt=attempt, due_date=due_date)

    def supply(self, case_id: str, at: datetime, materials) -> None:
        codes = [m["code"] for m in materials]
        if len(set(codes)) != len(codes) or any(m["source"] is None for m in materials):
            # one event's upsert could not write them (a row touched twice, a NULL source): the
            # event fails as it did when it was written on its own, and the runtime isolates it
            raise ValueError("a materials list repeats a code or lacks a source")
        for m in materials:
            row = self.materials.get((case_id, m["code"]))
            if row is None or at >= row["updated_at"]:
                self.materials[(case_id, m["code"])] = {"case_id": case_id, "code": m["code"],
                                                        "source": m["source"], "updated_at": at}


class _Batch:
    """A batch's events reduced to segments, tracking per case what the stored state and the
    events so far decided: which submission counts, whether it was withdrawn or completed."""

    def __init__(self, catalog: Catalog, known: dict[str, tuple]):
        self.catalog = catalog
        self.submitted_at = {case_id: row[0] for case_id, row in known.items()}
        self.withdrawn = {case_id for case_id, row in known.items() if row[1] is not None}
        self.completed = {case_id for case_id, row in known.items() if row[2] is not None}
        self.segments = [_Segment()]
        self.timeline: list[dict] = []

    def add(self, event: Event) -> None:
        case_id, at, p = event.key, event.envelope.occurred_at, event.payload
        if event.type in OVERSIGHT:
            sid = p.get("service_id") or (p.get("subject_id") if p.get("scope") == "service" else None)
            self._timeline(event, p.get("department"), sid)
            return
        if event.type == "ApplicationWithdrawn" and case_id in self.segments[-1].cases \
                and case_id in self.completed and case_id not in self.withdrawn:
            self.segments.append(_Segment())  # settle what the completion blocked before the withdrawal
        seg = self.segments[-1]
        department, service_id = getattr(self, f"_on_{event.type}")(seg, seg.case(case_id, at), event, p, at)
        self._timeline(event, department, service_id)

    # -- per event type: (department, service_id) for the timeline ------------------------
    def _on_ApplicationSubmitted(self, seg: _Segment, row: dict, event: Event, p: dict, at) -> tuple[None, None]:
        actor, case_id = event.envelope.actor, event.key
        services = list(dict.fromkeys(p["services"]))
        values = {"receipt_no": p.get("receipt_no"), "bundle_code": p["bundle_code"], "services": services,
                  "applicant_token": actor.id_token, "channel": actor.channel, "staff_id": actor.staff_id,
                  "region_code": event.envelope.region_code, "submitted_at": at}
        first = self.submitted_at.get(case_id)
        if first is not None and first != at:
            return None, None  # a second submission under the same case id is a repeat
        self.submitted_at[case_id] = at
        row.update(values)
        for sid in services:
            seg.service(case_id, sid, svc.department if (svc := self.catalog.services.get(sid)) else None)
        seg.supply(case_id, at, p.get("materials") or ())
        return None, None

    def _on_MaterialsSupplemented(self, seg: _Segment, row: dict, event: Event, p: dict, at) -> tuple[None, None]:
        # the services stay correction_requested until the TaskDispatched of their next attempt
        seg.supply(event.key, at, p.get("materials") or ())
        return None, None

    def _on_ApplicationWithdrawn(self, seg: _Segment, row: dict, event: Event, p: dict, at) -> tuple[None, None]:
        if event.key not in self.withdrawn:
            self.withdrawn.add(event.key)
            row["withdrawn_at"] = at
        return None, None

    def _on_CaseCompleted(self, seg: _Segment, row: dict, event: Event, p: dict, at) -> tuple[None, None]:
        services = [*(p.get("approved") or ()), *(p.get("rejected") or ())]
        rejected = blocked_at_completion(self.catalog, services, p.get("rejected") or ())
        if event.key not in self.completed:
            self.completed.add(event.key)
            row.update(completed_at=at, completed_rejected=rejected)
        return None, None

    def _on_TaskDispatched(self, seg: _Segment, row: dict, event: Event, p: dict, at) -> tuple[str, str]:
        seg.status(event.key, at, p, status=DISPATCHED, rank=RANK[DISPATCHED], attempt=attempt_of(p["task_id"]),
                   due_date=p.get("due_date"))
        return p["department"], p["service_id"]

    def _on_TaskCancelled(self, seg: _Segment, row: dict, event: Event, p: dict, at) -> tuple[str, str]:
        seg.status(event.key, at, p, status=CANCELLED, rank=RANK_TASK_CANCELLED, attempt=attempt_of(p["task_id"]),
                   reason=p.get("reason"))
        return p["department"], p["service_id"]

    def _on_DecisionRecorded(self, seg: _Segment, row: dict, event: Event, p: dict, at) -> tuple[str, str]:
        outcome = p["outcome"]
        if outcome in RANK:
            seg.status(event.key, at, p, status=outcome, rank=RANK[outcome], attempt=attempt_of(p["task_id"]),
                       reason=p.get("reason") if outcome in (CORRECTION, REJECTED) else None,
                       reason_code=p.get("reason_code") if outcome in (CORRECTION, REJECTED) else None,
                       missing=list(p.get("missing_materials") or ()) if outcome == CORRECTION else [],
                       outputs=dict(p.get("outputs") or {}) if outcome == APPROVED else {})
        else:  # applied / failed belong to register syncs: the timeline shows it, the status stays
            seg.service(event.key, p["service_id"], p["department"])
        return p["department"], p["service_id"]

    def _timeline(self, event: Event, department: str | None, service_id: str | None) -> None:
        text = describe(event, self.catalog)
        if text is None:
            return
        p, env = event.payload, event.envelope
        key = {"ApplicationSubmitted": "submitted", "ApplicationWithdrawn": "withdrawn", "CaseCompleted": "completed",
               "TaskDispatched": f"task:{p.get('task_id')}", "TaskCancelled": f"cancel:{p.get('task_id')}",
               }.get(event.type, f"event:{event.id}")
        self.timeline.append({
            "n": len(self.timeline), "case_id": event.key, "event_id": event.id, "entry_key": key,
            "occurred_at": env.occurred_at, "phase": PHASE[event.type], "sequence": env.sequence,
            "event_type": event.type, "text_zh": text[0], "text_en": text[1], "actor_role": env.actor.role,
            "channel": env.actor.channel, "department": department, "service_id": service_id})


class CaseViewProjection(BatchedCaseModel):
    """The case view. `CaseViewProjection()` is the live one (name "case_view", public schema,
    every case topic). A test or a shadow rebuild passes its own `name` (its offsets and
    processed ids), `schema` (its tables; create them with `create_schema`) and, if it wants
    to skip other cases cheaply, `keep(case_id) -> bool`."""
    event_types = HANDLED   # others are skipped by their header, undecoded (projectors/runtime.py)

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

    def apply_batch(self, conn: psycopg.Connection, events: list[Event]) -> None:
        """At most one read, then every write in one pipeline (one round trip), whatever the
        batch's length; any failure propagates, so the runtime can isolate the bad event."""
        events = [e for e in events if e.type in HANDLED and not belongs_to_no_case(e)  # syncs: the cascade's
                  and (self.keep is None or self.keep(e.key))]
        if not events:
            return
        q = self.q
        ask = list({e.key for e in events if e.type in ("ApplicationSubmitted", "ApplicationWithdrawn")})
        known = {r[0]: r[1:] for r in conn.execute(q.known, (ask,))} if ask else {}
        batch = _Batch(self.catalog, known)
        for event in events:
            batch.add(event)
        with conn.pipeline():
            for seg in batch.segments:
                if seg.cases:
                    conn.execute(q.cases, (_rows(seg.cases.values()),))
                if seg.services:
                    conn.execute(q.services, (_rows(seg.services.values()),))
                if seg.materials:
                    conn.execute(q.materials, (_rows(seg.materials.values()),))
                if seg.cases:
                    conn.execute(q.infer_final, {"cases": list(seg.cases)})
                    conn.execute(q.case_status, (list(seg.cases),))
            if batch.timeline:
                conn.execute(q.timeline, (_rows(batch.timeline),))


# -- reading: projectors/case_view_read.py (re-exported: the API and tests read the view from here) --
from .case_view_read import china_today, read_case, read_worklist  # noqa: E402,F401


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
