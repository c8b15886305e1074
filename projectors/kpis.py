"""The KPIs read model (晴雨表): volumes, timeliness, working days used, materials saved, ratings,
breached deadlines and escalations per bundle, department, region and day, in PostgreSQL.

Facts, not figures, are stored: one row per case (`kpi_cases`) and per service of a case
(`kpi_services`), each recomputed ("settled") from raw fact rows after every event that touches
it; `read_kpis` aggregates them by SQL at read time for any grouping, window and filter, so a
new question needs no rebuild. Run by `ProjectionRunner` (rows and offsets in one transaction,
every event once); `onething replay kpis` drops and rebuilds it from the log.

Order. The model reads `applications`, `cases` and every `tasks.<dept>` / `decisions.<dept>`;
Kafka orders one partition, not several topics, so a decision can come before its task and a
completion before the submission. Every write is order-independent:
- raw facts are keyed by what they record (a material reference by event and code, a 补正
  request or supplement by event, a task attempt by case, service and attempt, a breach by its
  deadline and due date, an escalation by its id) and only ever filled in, never overwritten
  by a later-seen event (an attempt keeps its highest-ranked outcome, earliest on a tie);
- a case or service row is a pure function of those facts (`settle_case`, `service_fact`),
  recomputed after each change, so the last event seen does not matter, only the set;
- every stored time is an event's occurred_at and every day is its Beijing day, never now():
  a rebuild gives the rows the incremental run gave. Only "overdue while still open" depends on
  the day the figures are read (`today`), and it is computed at read time.

The rules (the pure functions below, with property tests in tests/test_kpis.py):
- on time: a case completed, or a service decided (approved or rejected), on or before its due
  date; overdue: ended after it, or still open, not waiting for the applicant, and past it as of
  `today`. Withdrawn cases and cancelled services count in neither. on-time rate = on time /
  (on time + overdue).
- due date: a case's is the bundle's promised total (承诺时限, e.g. 新生儿出生 5 working days)
  from the day of receipt, pushed back by the working days it waited for a correction (补正:
  the clock stops, as in the deadline clock); a bundle without a promised total uses its
  services' latest due date. A service's is the due date its latest task carries.
- working days used: a case's from receipt to completion, the days it waited for the applicant
  not counted; a service's the days its tasks spent at the department, summed over attempts
  (dispatch → decision or correction request). Receipt day not counted (catalog/working_days).
- materials saved: materials the applicant did not upload because they were fetched as an
  e-licence (免证办, MaterialRef.source "fetched"); the latest reference of a material counts.
- satisfaction: share of 非常满意 + 满意 + 基本满意 among a case's (or a service's) grades.

Region: the envelope's 6-digit 行政区划代码 of the case; group_by "city" rolls it up to its first
4 digits (+ "00"). Cohort: every figure is about the cases received (submitted) in the window;
group_by "day" is the day of receipt.

No personal data is stored here: no form values, no applicant token, no rating comment.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import sql

from catalog.figures import bundle_figures
from catalog.loader import load_catalog
from catalog.model import Catalog
from catalog.working_days import WorkingCalendar, add_working_days, working_days_between
from events.envelope import Event

from . import deadline_clock as clock
from .case_state import is_register_sync
from .case_view import default_topics
from .postgres_projection import check_schema as _check_schema
from .postgres_projection import create_schema as _create_schema
from .postgres_projection import drop_schema  # noqa: F401 (part of this module's API)
from .timeline_text import attempt_of

log = structlog.get_logger(__name__)

NAME = "kpis"
MIGRATION = Path(__file__).resolve().parent.parent / "infra" / "migrations" / "0010_kpis.sql"
TABLES = ("kpi_cases", "kpi_case_materials", "kpi_case_pauses", "kpi_service_attempts", "kpi_services",
          "kpi_breaches", "kpi_escalations")
GRADES = ("very_satisfied", "satisfied", "basically_satisfied", "dissatisfied", "very_dissatisfied")
SATISFIED = frozenset(GRADES[:3])
GROUP_BY = ("bundle", "department", "region", "city", "day")
HANDLED = frozenset({"ApplicationSubmitted", "MaterialsSupplemented", "ApplicationWithdrawn", "CaseRated",
                     "CaseCompleted", "TaskDispatched", "TaskCancelled", "DecisionRecorded", "DeadlineBreached",
                     "CaseEscalated", "EscalationResolved"})
# an attempt keeps its highest-ranked outcome: a correction request ends an attempt, a decision ends the service
OUTCOME_RANK = {"correction_requested": 1, "approved": 2, "rejected": 2}
FINAL = ("approved", "rejected")


# -- the pure parts ------------------------------------------------------------------------------
def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least `q` of the values at or below
    it (PostgreSQL's percentile_disc). None for no values; q in [0, 1]."""
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def average(values: Iterable[float]) -> float | None:
    vals = list(values)
    return sum(vals) / len(vals) if vals else None


def timeliness(due: date | None, ended_on: date | None, today: date, *, paused: bool = False) -> str:
    """on_time | late | overdue_open | open | no_limit. Ended on the due date is on time; an open
    one is overdue from the day after its due date, unless its clock stands still (补正)."""
    if due is None:
        return "no_limit"
    if ended_on is not None:
        return "on_time" if ended_on <= due else "late"
    if not paused and today > due:
        return "overdue_open"
    return "open"


def on_time_rate(on_time: int, overdue: int) -> float | None:
    """Share on time among those that can be judged (ended on time, or late / overdue)."""
    judged = on_time + overdue
    return on_time / judged if judged else None


def satisfaction_rate(counts: Mapping[str, int]) -> float | None:
    """Share of 非常满意 + 满意 + 基本满意 among every grade given; None without ratings."""
    unknown = set(counts) - set(GRADES)
    if unknown:
        raise ValueError(f"unknown grades {sorted(unknown)}")
    total = sum(counts.values())
    return sum(n for g, n in counts.items() if g in SATISFIED) / total if total else None


@dataclass(frozen=True)
class MaterialCounts:
    fetched: int = 0    # e-licences: saved
    uploaded: int = 0
    promised: int = 0   # 容缺: still owed


def materials_saved(refs: Iterable[tuple[str, str, datetime | int]]) -> MaterialCounts:
    """Materials by where they came from, each counted once by its latest reference
    `(code, source, at)` (a promised material later uploaded counts as uploaded); on a tie of
    times the most saving source wins, so the result never depends on the order of `refs`."""
    order = {"promised": 0, "uploaded": 1, "fetched": 2}
    latest: dict[str, tuple[Any, int]] = {}
    for code, source, at in refs:
        key = (at, order.get(source, -1))
        if code not in latest or key > latest[code]:
            latest[code] = key
    counts = Counter(src for _at, src in latest.values())
    return MaterialCounts(fetched=counts[2], uploaded=counts[1], promised=counts[0])


def pauses_of(events: Iterable[tuple[str, datetime]],
              calendar: WorkingCalendar | None = None) -> tuple[int, date | None]:
    """补正 pauses from `(kind, at)` facts, kind request | supply: (working days the clock stood
    still, the day it has stood still since if it still does). A request pauses a running clock
    (a second request while paused changes nothing); a supply restarts a paused one."""
    total, since = 0, None
    for kind, at in sorted(events, key=lambda e: (e[1], e[0] != "request")):
        day = clock.china_date(at)
        if kind == "request" and since is None:
            since = day
        elif kind == "supply" and since is not None:
            total += clock.paused_working_days(since, day, calendar)
            since = None
    return total, since


@dataclass(frozen=True)
class CaseClock:
    due_date: date | None
    paused_days: int
    paused_since: date | None
    days_used: int | None


def case_clock(received_on: date | None, ended_on: date | None, promised_total: int | None,
               pauses: Iterable[tuple[str, datetime]], services_due: date | None = None,
               calendar: WorkingCalendar | None = None) -> CaseClock:
    """A case's due date and working days used (see the module docstring)."""
    paused, since = pauses_of(pauses, calendar)
    if received_on is None:
        return CaseClock(None, paused, since, None)
    if promised_total is not None:
        due = add_working_days(add_working_days(received_on, promised_total, calendar), paused, calendar)
    else:
        due = services_due
    used = None
    if ended_on is not None:
        used = max(0, working_days_between(received_on, ended_on, calendar) - paused)
    return CaseClock(due, paused, since if ended_on is None else None, used)


@dataclass(frozen=True)
class Attempt:
    attempt: int
    dispatched_at: datetime | None = None
    due_date: date | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    cancelled_at: datetime | None = None


@dataclass(frozen=True)
class ServiceFact:
    status: str            # open | approved | rejected | cancelled
    paused: bool
    first_dispatched_at: datetime | None
    due_date: date | None
    ended_on: date | None
    days_used: int | None


def service_fact(attempts: Iterable[Attempt], calendar: WorkingCalendar | None = None) -> ServiceFact:
    """A service from its task attempts: cancelled if a task of it was cancelled (withdrawal),
    decided by its final decision, due by its latest dispatched attempt, and the working days
    it spent at the department summed over attempts (known once every attempt up to the
    decision has both its dispatch and its end)."""
    rows = sorted(attempts, key=lambda a: a.attempt)
    dispatched = [a for a in rows if a.dispatched_at is not None]
    first = min((a.dispatched_at for a in dispatched), default=None)
    due = dispatched[-1].due_date if dispatched else None
    if any(a.cancelled_at is not None for a in rows):
        return ServiceFact("cancelled", False, first, due, None, None)
    final = next((a for a in reversed(rows) if a.outcome in FINAL), None)
    if final is None:
        latest = rows[-1] if rows else None
        paused = latest is not None and latest.outcome == "correction_requested"
        return ServiceFact("open", paused, first, due, None, None)
    ended_on = clock.china_date(final.ended_at)
    used: int | None = 0
    for a in rows:
        if a.attempt > final.attempt:
            break
        if a.dispatched_at is None or a.ended_at is None:
            used = None
            break
        used += max(0, working_days_between(clock.china_date(a.dispatched_at), clock.china_date(a.ended_at),
                                            calendar))
    return ServiceFact(final.outcome, False, first, due, ended_on, used)


# -- the catalog's side --------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _figures(catalog: Catalog, bundle_code: str):
    try:
        return bundle_figures(catalog, bundle_code)
    except (KeyError, ValueError):
        return None


def bundle_limits(catalog: Catalog, bundle_code: str | None) -> tuple[float | None, float | None]:
    """(promised, statutory) working days of a bundle as a whole: the promised total (else the
    longest chain of promised limits), and the statutory limits one after another."""
    if not bundle_code or bundle_code not in catalog.bundles:
        return None, None
    total = clock.case_promised_days(catalog, bundle_code)
    fig = _figures(catalog, bundle_code)
    promised = float(total) if total is not None else (fig.time_days.after if fig else None)
    return promised, (fig.time_days.before if fig else None)


def service_limits(catalog: Catalog, bundle_code: str | None, service_id: str) -> tuple[float | None, float | None]:
    """(promised within its bundle, statutory) working days of a service."""
    days = clock.promised_days(catalog, bundle_code, service_id)
    svc = catalog.services.get(service_id)
    return (None if days is None else float(days)), (svc.statutory.value if svc and svc.statutory else None)


def reform_figures(catalog: Catalog, bundle_code: str) -> dict[str, Any]:
    """The catalog's computed reform figures of a bundle (catalog/figures.py), JSON-able:
    materials, steps, working days and trips before (each service on its own) and after (the
    bundle), the critical path, which figures rest on estimates, and the published claims.
    KeyError for an unknown bundle, ValueError for one listed but not modelled."""
    bundle = catalog.bundle(bundle_code)
    fig = bundle_figures(catalog, bundle_code)

    def change(c) -> dict[str, Any]:
        return {"before": c.before, "after": c.after, "reduction": c.reduction}

    return {
        "bundle": bundle_code, "label": {"zh": bundle.label.zh, "en": bundle.label.en},
        "services": fig.services, "departments": fig.departments,
        "promised_total_days": clock.case_promised_days(catalog, bundle_code),
        "materials": change(fig.materials), "steps": change(fig.steps), "time_days": change(fig.time_days),
        "trips": change(fig.trips), "critical_path": list(fig.critical_path), "estimated": sorted(fig.estimated),
        "claims": [{"place": c.place, "source": c.source,
                    "changes": {m: {"before": ch.before, "after": ch.after, "reduction": ch.reduction}
                                for m, ch in c.changes.items()}} for c in fig.claims],
    }


# -- schema ----------------------------------------------------------------------------------------
def create_schema(conn: psycopg.Connection, schema: str) -> None:
    """The model's tables in `schema` (a test's or a shadow rebuild's own); public comes from the migrations."""
    _create_schema(conn, schema, MIGRATION, "kpi_cases")


class _Sql:
    def __init__(self, schema: str):
        t = {name: sql.Identifier(schema, name) for name in TABLES}

        def f(text: str) -> str:
            return sql.SQL(text).format(c=t["kpi_cases"], m=t["kpi_case_materials"], p=t["kpi_case_pauses"],
                                        a=t["kpi_service_attempts"], s=t["kpi_services"], b=t["kpi_breaches"],
                                        e=t["kpi_escalations"]).as_string(None)

        self.f = f
        self.reset = f("TRUNCATE {c}, {m}, {p}, {a}, {s}, {b}, {e}")
        # the first submission under a case id counts (a repeat under the same id changes nothing)
        self.submitted = f(
            "INSERT INTO {c} AS c (case_id, bundle_code, region_code, submitted_at, received_on, promised_days,"
            " statutory_days) VALUES (%(case_id)s, %(bundle)s, %(region)s, %(at)s, %(day)s, %(promised)s,"
            " %(statutory)s) ON CONFLICT (case_id) DO UPDATE SET bundle_code = EXCLUDED.bundle_code,"
            " region_code = EXCLUDED.region_code, submitted_at = EXCLUDED.submitted_at,"
            " received_on = EXCLUDED.received_on, promised_days = EXCLUDED.promised_days,"
            " statutory_days = EXCLUDED.statutory_days"
            " WHERE c.submitted_at IS NULL OR EXCLUDED.submitted_at < c.submitted_at")
        self.material = f(
            "INSERT INTO {m} (case_id, event_id, code, source, at) SELECT %(case_id)s, %(event_id)s, code, source,"
            " %(at)s FROM unnest(%(codes)s::text[], %(sources)s::text[]) AS x(code, source) ON CONFLICT DO NOTHING")
        self.pause = f("INSERT INTO {p} (case_id, event_id, kind, at) VALUES (%(case_id)s, %(event_id)s, %(kind)s,"
                       " %(at)s) ON CONFLICT DO NOTHING")
        self.case_time = {col: f(
            "INSERT INTO {c} AS c (case_id, " + col + ") VALUES (%(case_id)s, %(at)s) ON CONFLICT (case_id) DO UPDATE"
            " SET " + col + " = least(c." + col + ", EXCLUDED." + col + ")")
            for col in ("completed_at", "withdrawn_at")}
        self.completed_rejected = f("UPDATE {c} SET rejected_services = %(n)s WHERE case_id = %(case_id)s")
        self.rated = f(
            "INSERT INTO {c} AS c (case_id, rating_id, rating_grade, rated_at) VALUES (%(case_id)s, %(rating_id)s,"
            " %(grade)s, %(at)s) ON CONFLICT (case_id) DO UPDATE SET rating_id = EXCLUDED.rating_id,"
            " rating_grade = EXCLUDED.rating_grade, rated_at = EXCLUDED.rated_at WHERE c.rated_at IS NULL"
            " OR (EXCLUDED.rated_at, EXCLUDED.rating_id) < (c.rated_at, c.rating_id)")
        self.service_rated = f(
            "INSERT INTO {s} AS s (case_id, service_id, department, rating_grade) VALUES (%(case_id)s,"
            " %(service_id)s, %(department)s, %(grade)s) ON CONFLICT (case_id, service_id) DO UPDATE SET"
            " rating_grade = EXCLUDED.rating_grade, department = coalesce(s.department, EXCLUDED.department)")
        self.case_facts = f(
            "SELECT c.bundle_code, c.received_on, c.completed_at,"
            " (SELECT coalesce(array_agg(kind), '{{}}') FROM {p} WHERE case_id = c.case_id),"
            " (SELECT coalesce(array_agg(at), '{{}}') FROM {p} WHERE case_id = c.case_id),"
            " (SELECT coalesce(array_agg(code), '{{}}') FROM {m} WHERE case_id = c.case_id),"
            " (SELECT coalesce(array_agg(source), '{{}}') FROM {m} WHERE case_id = c.case_id),"
            " (SELECT coalesce(array_agg(at), '{{}}') FROM {m} WHERE case_id = c.case_id),"
            " (SELECT max(due_date) FROM {s} WHERE case_id = c.case_id AND first_dispatched_at IS NOT NULL)"
            " FROM {c} c WHERE c.case_id = %(case_id)s")
        self.case_settle = f(
            "UPDATE {c} SET due_date = %(due)s, paused_days = %(paused)s, paused_since = %(since)s,"
            " ended_on = %(ended_on)s, days_used = %(used)s, materials_fetched = %(fetched)s,"
            " materials_uploaded = %(uploaded)s, materials_promised = %(promised)s WHERE case_id = %(case_id)s")
        self.ensure_case = f("INSERT INTO {c} (case_id) VALUES (%(case_id)s) ON CONFLICT DO NOTHING")
        self.dispatched = f(
            "INSERT INTO {a} AS a (case_id, service_id, attempt, department, region_code, dispatched_at, due_date,"
            " fetched) VALUES (%(case_id)s, %(service_id)s, %(attempt)s, %(department)s, %(region)s, %(at)s,"
            " %(due)s, %(fetched)s) ON CONFLICT (case_id, service_id, attempt) DO UPDATE SET"
            " department = coalesce(a.department, EXCLUDED.department),"
            " region_code = coalesce(a.region_code, EXCLUDED.region_code),"
            " due_date = CASE WHEN a.dispatched_at IS NULL OR EXCLUDED.dispatched_at < a.dispatched_at"
            "  THEN EXCLUDED.due_date ELSE a.due_date END,"
            " dispatched_at = least(a.dispatched_at, EXCLUDED.dispatched_at),"
            " fetched = ARRAY(SELECT DISTINCT x FROM unnest(a.fetched || EXCLUDED.fetched) AS x ORDER BY x)")
        self.decided = f(
            "INSERT INTO {a} AS a (case_id, service_id, attempt, department, region_code, ended_at, outcome,"
            " outcome_rank) VALUES (%(case_id)s, %(service_id)s, %(attempt)s, %(department)s, %(region)s, %(at)s,"
            " %(outcome)s, %(rank)s) ON CONFLICT (case_id, service_id, attempt) DO UPDATE SET"
            " department = coalesce(a.department, EXCLUDED.department),"
            " region_code = coalesce(a.region_code, EXCLUDED.region_code),"
            " outcome = CASE WHEN (EXCLUDED.outcome_rank, a.ended_at) > (a.outcome_rank, EXCLUDED.ended_at)"
            "  OR a.ended_at IS NULL THEN EXCLUDED.outcome ELSE a.outcome END,"
            " ended_at = CASE WHEN (EXCLUDED.outcome_rank, a.ended_at) > (a.outcome_rank, EXCLUDED.ended_at)"
            "  OR a.ended_at IS NULL THEN EXCLUDED.ended_at ELSE a.ended_at END,"
            " outcome_rank = greatest(a.outcome_rank, EXCLUDED.outcome_rank)")
        self.cancelled = f(
            "INSERT INTO {a} AS a (case_id, service_id, attempt, department, region_code, cancelled_at)"
            " VALUES (%(case_id)s, %(service_id)s, %(attempt)s, %(department)s, %(region)s, %(at)s)"
            " ON CONFLICT (case_id, service_id, attempt) DO UPDATE SET"
            " department = coalesce(a.department, EXCLUDED.department),"
            " cancelled_at = least(a.cancelled_at, EXCLUDED.cancelled_at)")
        self.attempts = f(
            "SELECT attempt, dispatched_at, due_date, ended_at, outcome, cancelled_at, department, region_code,"
            " fetched FROM {a} WHERE case_id = %(case_id)s AND service_id = %(service_id)s")
        self.case_of_service = f("SELECT bundle_code, region_code, received_on FROM {c} WHERE case_id = %(case_id)s")
        self.service_settle = f(
            "INSERT INTO {s} AS s (case_id, service_id, department, bundle_code, region_code, received_on,"
            " first_dispatched_at, status, paused, due_date, ended_on, days_used, promised_days, statutory_days,"
            " materials_fetched) VALUES (%(case_id)s, %(service_id)s, %(department)s, %(bundle)s, %(region)s,"
            " %(received_on)s, %(first)s, %(status)s, %(paused)s, %(due)s, %(ended_on)s, %(used)s, %(promised)s,"
            " %(statutory)s, %(fetched)s) ON CONFLICT (case_id, service_id) DO UPDATE SET"
            " department = EXCLUDED.department, bundle_code = EXCLUDED.bundle_code,"
            " region_code = EXCLUDED.region_code, received_on = EXCLUDED.received_on,"
            " first_dispatched_at = EXCLUDED.first_dispatched_at, status = EXCLUDED.status,"
            " paused = EXCLUDED.paused, due_date = EXCLUDED.due_date, ended_on = EXCLUDED.ended_on,"
            " days_used = EXCLUDED.days_used, promised_days = EXCLUDED.promised_days,"
            " statutory_days = EXCLUDED.statutory_days, materials_fetched = EXCLUDED.materials_fetched")
        self.services_of_case = f("SELECT DISTINCT service_id FROM {a} WHERE case_id = %(case_id)s")
        self.breach = f(
            "INSERT INTO {b} (case_id, scope, subject_id, due_date, department) VALUES (%(case_id)s, %(scope)s,"
            " %(subject)s, %(due)s, %(department)s) ON CONFLICT DO NOTHING")
        self.escalated = f(
            "INSERT INTO {e} AS e (escalation_id, case_id, origin, service_id, department, opened_at) VALUES"
            " (%(id)s, %(case_id)s, %(origin)s, %(service_id)s, %(department)s, %(at)s) ON CONFLICT (escalation_id)"
            " DO UPDATE SET origin = EXCLUDED.origin, service_id = EXCLUDED.service_id,"
            " department = EXCLUDED.department, opened_at = EXCLUDED.opened_at WHERE e.opened_at IS NULL")
        self.resolved = f(
            "INSERT INTO {e} AS e (escalation_id, case_id, resolved_at) VALUES (%(id)s, %(case_id)s, %(at)s)"
            " ON CONFLICT (escalation_id) DO UPDATE SET resolved_at = least(e.resolved_at, EXCLUDED.resolved_at)")
        self.count_cases = f("SELECT count(*) FROM {c} WHERE received_on IS NOT NULL")


_SQL_CACHE: dict[str, _Sql] = {}


def _sql_for(schema: str) -> _Sql:
    if schema not in _SQL_CACHE:
        _SQL_CACHE[schema] = _Sql(_check_schema(schema))
    return _SQL_CACHE[schema]


class KpiProjection:
    """The KPIs. `KpiProjection()` is the live one (name "kpis", public schema, every case topic).
    A test or a shadow rebuild passes its own `name`, `schema` (create it with `create_schema`),
    `topics` and, to skip other cases cheaply, `keep(case_id) -> bool`."""

    def __init__(self, name: str = NAME, *, schema: str = "public", topics: tuple[str, ...] | None = None,
                 catalog: Catalog | None = None, keep: Callable[[str], bool] | None = None,
                 calendar: WorkingCalendar | None = None):
        self.name = name
        self.schema = _check_schema(schema)
        self.catalog = catalog or load_catalog()
        self.topics = tuple(topics) if topics else default_topics(self.catalog)
        self.keep = keep
        self.calendar = calendar
        self.q = _sql_for(self.schema)

    # -- the Projection protocol ------------------------------------------------------------------
    tables = TABLES

    def create_schema(self, conn: psycopg.Connection, schema: str) -> None:
        create_schema(conn, schema)

    def reset(self, conn: psycopg.Connection) -> None:
        conn.execute(self.q.reset)

    def wants(self, event: Event) -> bool:
        return event.type in HANDLED and (self.keep is None or self.keep(event.key))

    def apply(self, conn: psycopg.Connection, event: Event) -> None:
        if not self.wants(event) or is_register_sync(event):
            return
        env = event.envelope
        base = {"case_id": event.key, "event_id": event.id, "at": env.occurred_at, "region": env.region_code}
        getattr(self, f"_on_{event.type}")(conn, event.payload, base)

    # -- per event type -----------------------------------------------------------------------------
    def _on_ApplicationSubmitted(self, conn, p: dict, base: dict) -> None:
        promised, statutory = bundle_limits(self.catalog, p["bundle_code"])
        conn.execute(self.q.submitted, {**base, "bundle": p["bundle_code"], "day": clock.china_date(base["at"]),
                                        "promised": promised, "statutory": statutory})
        self._materials(conn, p.get("materials") or (), base)
        for (sid,) in conn.execute(self.q.services_of_case, base).fetchall():
            self._settle_service(conn, base["case_id"], sid)  # their bundle, region and cohort day
        self._settle_case(conn, base["case_id"])

    def _on_MaterialsSupplemented(self, conn, p: dict, base: dict) -> None:
        conn.execute(self.q.ensure_case, base)
        self._materials(conn, p.get("materials") or (), base)
        conn.execute(self.q.pause, {**base, "kind": "supply"})
        self._settle_case(conn, base["case_id"])

    def _on_ApplicationWithdrawn(self, conn, p: dict, base: dict) -> None:
        conn.execute(self.q.case_time["withdrawn_at"], base)

    def _on_CaseCompleted(self, conn, p: dict, base: dict) -> None:
        conn.execute(self.q.case_time["completed_at"], base)
        conn.execute(self.q.completed_rejected, {**base, "n": len(p.get("rejected") or ())})
        self._settle_case(conn, base["case_id"])

    def _on_CaseRated(self, conn, p: dict, base: dict) -> None:
        conn.execute(self.q.rated, {**base, "rating_id": p["rating_id"], "grade": p["grade"]})
        winner = conn.execute(self.q.f("SELECT rating_id FROM {c} WHERE case_id = %(case_id)s"), base).fetchone()
        if winner is None or winner[0] != p["rating_id"]:
            return  # an earlier rating of the case counts, with its own service grades
        for r in p.get("services") or ():
            svc = self.catalog.services.get(r["service_id"])
            conn.execute(self.q.service_rated, {**base, "service_id": r["service_id"], "grade": r["grade"],
                                                "department": svc.department if svc else None})

    def _on_TaskDispatched(self, conn, p: dict, base: dict) -> None:
        fetched = sorted({m["code"] for m in p.get("materials") or () if m.get("source") == "fetched"})
        conn.execute(self.q.dispatched, {**base, "service_id": p["service_id"], "attempt": attempt_of(p["task_id"]),
                                         "department": p["department"], "due": p.get("due_date"),
                                         "fetched": fetched})
        self._settle_service(conn, base["case_id"], p["service_id"])
        self._settle_case(conn, base["case_id"])  # a bundle without a promised total: the services' due dates

    def _on_TaskCancelled(self, conn, p: dict, base: dict) -> None:
        conn.execute(self.q.cancelled, {**base, "service_id": p["service_id"], "attempt": attempt_of(p["task_id"]),
                                        "department": p["department"]})
        self._settle_service(conn, base["case_id"], p["service_id"])

    def _on_DecisionRecorded(self, conn, p: dict, base: dict) -> None:
        rank = OUTCOME_RANK.get(p["outcome"])
        if rank is None:
            return  # accepted: the attempt goes on
        conn.execute(self.q.decided, {**base, "service_id": p["service_id"], "attempt": attempt_of(p["task_id"]),
                                      "department": p["department"], "outcome": p["outcome"], "rank": rank})
        if p["outcome"] == "correction_requested":
            conn.execute(self.q.ensure_case, base)
            conn.execute(self.q.pause, {**base, "kind": "request"})
        self._settle_service(conn, base["case_id"], p["service_id"])
        if p["outcome"] == "correction_requested":
            self._settle_case(conn, base["case_id"])

    def _on_DeadlineBreached(self, conn, p: dict, base: dict) -> None:
        conn.execute(self.q.breach, {**base, "scope": p["scope"], "subject": p.get("subject_id") or "",
                                     "due": p["due_date"], "department": p.get("department")})

    def _on_CaseEscalated(self, conn, p: dict, base: dict) -> None:
        conn.execute(self.q.escalated, {**base, "id": p["escalation_id"], "origin": p.get("origin"),
                                        "service_id": p.get("service_id"), "department": p.get("department")})

    def _on_EscalationResolved(self, conn, p: dict, base: dict) -> None:
        conn.execute(self.q.resolved, {**base, "id": p["escalation_id"]})

    # -- settling ------------------------------------------------------------------------------------
    def _materials(self, conn, materials, base: dict) -> None:
        if materials:
            conn.execute(self.q.material, {**base, "codes": [m["code"] for m in materials],
                                           "sources": [m["source"] for m in materials]})

    def _settle_case(self, conn, case_id: str) -> None:
        row = conn.execute(self.q.case_facts, {"case_id": case_id}).fetchone()
        if row is None:
            return
        bundle, received_on, completed_at, p_kinds, p_ats, m_codes, m_sources, m_ats, services_due = row
        ended_on = clock.china_date(completed_at) if completed_at is not None else None
        total = clock.case_promised_days(self.catalog, bundle) if bundle else None
        cc = case_clock(received_on, ended_on, total, zip(p_kinds, p_ats), services_due, self.calendar)
        mats = materials_saved(zip(m_codes, m_sources, m_ats))
        conn.execute(self.q.case_settle, {
            "case_id": case_id, "due": cc.due_date, "paused": cc.paused_days, "since": cc.paused_since,
            "ended_on": ended_on, "used": cc.days_used, "fetched": mats.fetched, "uploaded": mats.uploaded,
            "promised": mats.promised})

    def _settle_service(self, conn, case_id: str, service_id: str) -> None:
        key = {"case_id": case_id, "service_id": service_id}
        rows = conn.execute(self.q.attempts, key).fetchall()
        if not rows:
            return
        attempts = [Attempt(n, d_at, due, e_at, outcome, c_at) for n, d_at, due, e_at, outcome, c_at, *_ in rows]
        fact = service_fact(attempts, self.calendar)
        department = next((r[6] for r in rows if r[6]), None)
        case = conn.execute(self.q.case_of_service, key).fetchone()
        bundle, case_region, received_on = case if case else (None, None, None)
        region = case_region or next((r[7] for r in rows if r[7]), None)
        if received_on is None and fact.first_dispatched_at is not None:
            received_on = clock.china_date(fact.first_dispatched_at)
        promised, statutory = service_limits(self.catalog, bundle, service_id)
        fetched = set().union(*(r[8] or () for r in rows))
        conn.execute(self.q.service_settle, {
            **key, "department": department, "bundle": bundle, "region": region, "received_on": received_on,
            "first": fact.first_dispatched_at, "status": fact.status, "paused": fact.paused, "due": fact.due_date,
            "ended_on": fact.ended_on, "used": fact.days_used, "promised": promised, "statutory": statutory,
            "fetched": len(fetched)})


# -- reading ---------------------------------------------------------------------------------------
class KpiQueryError(ValueError):
    """A parameter read_kpis cannot use; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def region_prefix(region: str | None) -> str | None:
    """A region filter: a 6-digit code, or its province (2 digits) / city (4 digits) prefix; a
    full code ending in 00 or 0000 (a city's or province's own code) matches its whole area."""
    if region is None:
        return None
    if not (region.isascii() and region.isdigit() and len(region) in (2, 4, 6)):
        raise KpiQueryError("region", "a 行政区划代码 has 6 digits (or a 2-digit province / 4-digit city prefix)")
    if len(region) == 6:
        region = region[:4] if region.endswith("00") else region
        region = region[:2] if region.endswith("00") and len(region) == 4 else region
    return region


def _group_expr(group_by: str, level: str) -> sql.Composable:
    t = sql.Identifier("f")
    col = {"bundle": "bundle_code", "department": "department", "region": "region_code", "day": "received_on",
           "city": "region_code"}[group_by]
    expr = sql.SQL("{}.{}").format(t, sql.Identifier(col))
    if group_by == "city":
        return sql.SQL("(left({}, 4) || '00')").format(expr)
    if group_by == "day":
        return sql.SQL("to_char({}, 'YYYY-MM-DD')").format(expr)
    return expr


_GRADE_COLS = ", ".join(f"count(*) FILTER (WHERE f.rating_grade = '{g}') AS rated_{g}" for g in GRADES)
_TIMELY = (
    "count(*) FILTER (WHERE f.due_date IS NOT NULL AND f.ended_on IS NOT NULL AND f.ended_on <= f.due_date)"
    " AS on_time,"
    " count(*) FILTER (WHERE f.due_date IS NOT NULL AND f.ended_on IS NOT NULL AND f.ended_on > f.due_date)"
    " AS late,"
    " count(*) FILTER (WHERE f.due_date IS NOT NULL AND f.ended_on IS NULL AND {open} AND NOT {paused}"
    "  AND %(today)s::date > f.due_date) AS overdue_open,"
    " avg(f.days_used)::float8 AS days_avg,"
    " percentile_disc(0.9) WITHIN GROUP (ORDER BY f.days_used) AS days_p90,"
    " avg(f.promised_days)::float8 AS promised_days, avg(f.statutory_days)::float8 AS statutory_days,")


def _case_query(schema: str, key: sql.Composable, where: sql.Composable) -> sql.Composed:
    timely = _TIMELY.format(open="f.completed_at IS NULL AND f.withdrawn_at IS NULL",
                            paused="(f.paused_since IS NOT NULL)")
    return sql.SQL(
        "WITH b AS (SELECT case_id, count(*) AS n FROM {b} WHERE scope IN ('case', 'service') GROUP BY case_id),"
        " e AS (SELECT case_id, count(*) AS n, count(*) FILTER (WHERE origin = 'applicant') AS by_applicant,"
        "  count(*) FILTER (WHERE resolved_at IS NOT NULL) AS resolved FROM {e} GROUP BY case_id) "
        "SELECT GROUPING({key}) AS is_total, {key} AS key, count(*) AS received,"
        " count(*) FILTER (WHERE f.completed_at IS NOT NULL) AS completed,"
        " count(*) FILTER (WHERE f.completed_at IS NOT NULL AND coalesce(f.rejected_services, 0) = 0)"
        "  AS completed_approved,"
        " count(*) FILTER (WHERE f.withdrawn_at IS NOT NULL AND f.completed_at IS NULL) AS withdrawn, "
        + timely +
        " coalesce(sum(f.materials_fetched), 0)::bigint AS materials_saved,"
        " avg(f.materials_fetched)::float8 AS materials_saved_avg,"
        " avg(f.materials_uploaded)::float8 AS materials_uploaded_avg, " + _GRADE_COLS + ","
        " coalesce(sum(b.n), 0)::bigint AS deadlines_breached, coalesce(sum(e.n), 0)::bigint AS escalations,"
        " coalesce(sum(e.by_applicant), 0)::bigint AS escalations_by_applicant,"
        " coalesce(sum(e.resolved), 0)::bigint AS escalations_resolved "
        "FROM {c} f LEFT JOIN b USING (case_id) LEFT JOIN e USING (case_id) "
        "WHERE f.received_on IS NOT NULL {where} GROUP BY GROUPING SETS (({key}), ()) ORDER BY 1 DESC, 2"
    ).format(key=key, where=where, b=sql.Identifier(schema, "kpi_breaches"),
             e=sql.Identifier(schema, "kpi_escalations"), c=sql.Identifier(schema, "kpi_cases"))


def _service_query(schema: str, key: sql.Composable, where: sql.Composable) -> sql.Composed:
    timely = _TIMELY.format(open="f.status = 'open'", paused="f.paused")
    return sql.SQL(
        "WITH b AS (SELECT case_id, subject_id, count(*) AS n FROM {b} WHERE scope = 'service'"
        "  GROUP BY case_id, subject_id),"
        " e AS (SELECT case_id, service_id, count(*) AS n, count(*) FILTER (WHERE origin = 'applicant')"
        "  AS by_applicant, count(*) FILTER (WHERE resolved_at IS NOT NULL) AS resolved FROM {e}"
        "  WHERE service_id IS NOT NULL GROUP BY case_id, service_id) "
        "SELECT GROUPING({key}) AS is_total, {key} AS key, count(*) AS received,"
        " count(*) FILTER (WHERE f.status IN ('approved', 'rejected')) AS completed,"
        " count(*) FILTER (WHERE f.status = 'approved') AS completed_approved,"
        " count(*) FILTER (WHERE f.status = 'cancelled') AS withdrawn, "
        + timely +
        " coalesce(sum(f.materials_fetched), 0)::bigint AS materials_saved,"
        " avg(f.materials_fetched)::float8 AS materials_saved_avg, NULL::float8 AS materials_uploaded_avg, "
        + _GRADE_COLS + ","
        " coalesce(sum(b.n), 0)::bigint AS deadlines_breached, coalesce(sum(e.n), 0)::bigint AS escalations,"
        " coalesce(sum(e.by_applicant), 0)::bigint AS escalations_by_applicant,"
        " coalesce(sum(e.resolved), 0)::bigint AS escalations_resolved "
        "FROM {s} f LEFT JOIN b ON b.case_id = f.case_id AND b.subject_id = f.service_id"
        " LEFT JOIN e ON e.case_id = f.case_id AND e.service_id = f.service_id "
        "WHERE f.first_dispatched_at IS NOT NULL {where} GROUP BY GROUPING SETS (({key}), ()) ORDER BY 1 DESC, 2"
    ).format(key=key, where=where, b=sql.Identifier(schema, "kpi_breaches"),
             e=sql.Identifier(schema, "kpi_escalations"), s=sql.Identifier(schema, "kpi_services"))


def _label(catalog: Catalog, group_by: str, key: str | None) -> dict[str, str] | None:
    if key is None:
        return None
    if group_by == "bundle" and key in catalog.bundles:
        lb = catalog.bundles[key].label
        return {"zh": lb.zh, "en": lb.en}
    if group_by == "department" and key in catalog.departments:
        lb = catalog.departments[key].label
        return {"zh": lb.zh, "en": lb.en}
    return None


def _figures_of(row: dict[str, Any]) -> dict[str, Any]:
    ratings = {g: row.pop(f"rated_{g}") for g in GRADES}
    overdue = row["late"] + row["overdue_open"]
    received = row["received"]
    out = {k: v for k, v in row.items() if k not in ("is_total", "key")}
    out.update(
        overdue=overdue, on_time_rate=on_time_rate(row["on_time"], overdue),
        open=received - row["completed"] - row["withdrawn"],
        completion_rate=row["completed"] / received if received else None,
        ratings=ratings, rated=sum(ratings.values()), satisfaction_rate=satisfaction_rate(ratings))
    return out


def read_kpis(conn: psycopg.Connection, *, group_by: str = "bundle", date_from: date | None = None,
              date_to: date | None = None, bundle: str | None = None, department: str | None = None,
              region: str | None = None, today: date | None = None, schema: str = "public",
              catalog: Catalog | None = None) -> dict[str, Any]:
    """The KPIs of the cases received in [date_from, date_to] (Beijing days, both included; open
    ends unbounded), one entry per group and a total, JSON-able.

    Level: grouped by department, or filtered to one department, every figure is about services
    (a department's tasks: received = dispatched to it, completed = decided by it, withdrawn =
    cancelled by a withdrawal, days used = days at the department); otherwise about cases.
    Overdue-while-open is judged as of `today` (default: the deadline clock's day). KpiQueryError
    names a parameter it cannot use."""
    catalog = catalog or load_catalog()
    if group_by not in GROUP_BY:
        raise KpiQueryError("group_by", f"one of {', '.join(GROUP_BY)}")
    if date_from is not None and date_to is not None and date_from > date_to:
        raise KpiQueryError("date_to", "must not be before date_from")
    if bundle is not None and bundle not in catalog.bundles:
        raise KpiQueryError("bundle", "no such bundle (一件事) in the catalog")
    if department is not None and department not in catalog.departments:
        raise KpiQueryError("department", "no such department in the catalog")
    prefix = region_prefix(region)
    _check_schema(schema)
    from .case_view import china_today

    today = today or china_today()
    level = "service" if group_by == "department" or department is not None else "case"
    conds, params = [], {"today": today}
    for name, value, cond in (("date_from", date_from, "f.received_on >= %(date_from)s"),
                              ("date_to", date_to, "f.received_on <= %(date_to)s"),
                              ("bundle", bundle, "f.bundle_code = %(bundle)s"),
                              ("department", department, "f.department = %(department)s"),
                              ("region", prefix, "f.region_code LIKE %(region)s || '%%'")):
        if value is not None:
            conds.append(sql.SQL(" AND " + cond))
            params[name] = value
    where = sql.Composed(conds)
    key = _group_expr(group_by, level)
    query = (_service_query if level == "service" else _case_query)(schema, key, where)
    cur = conn.execute(query, params)
    cols = [d.name for d in cur.description]
    groups, total = [], None
    for values in cur.fetchall():
        row = dict(zip(cols, values))
        is_total, k = row["is_total"], row["key"]
        figures = _figures_of(row)
        if is_total:
            total = figures
            continue
        entry = {"key": k, "label": _label(catalog, group_by, k), **figures}
        if group_by == "bundle" and k:
            promised, statutory = bundle_limits(catalog, k)
            fig = _figures(catalog, k)
            entry["catalog"] = {"promised_days": promised, "statutory_days": statutory,
                                "promised_total_days": clock.case_promised_days(catalog, k),
                                "materials_before": fig.materials.before if fig else None,
                                "materials_after": fig.materials.after if fig else None,
                                "time_reduction": fig.time_days.reduction if fig else None,
                                "materials_reduction": fig.materials.reduction if fig else None}
        groups.append(entry)
    if total is None:  # no rows at all
        total = _figures_of({c: 0 for c in cols} | {"days_avg": None, "days_p90": None, "promised_days": None,
                                                    "statutory_days": None, "materials_saved_avg": None,
                                                    "materials_uploaded_avg": None})
    return {"group_by": group_by, "level": level, "today": today.isoformat(),
            "date_from": date_from.isoformat() if date_from else None,
            "date_to": date_to.isoformat() if date_to else None,
            "filters": {"bundle": bundle, "department": department, "region": region},
            "groups": groups, "total": total}


def measured_vs_reform(conn: psycopg.Connection, catalog: Catalog, bundle_code: str, *,
                       date_from: date | None = None, date_to: date | None = None, today: date | None = None,
                       schema: str = "public") -> dict[str, Any]:
    """The catalog's reform figures of a bundle next to what its cases measured."""
    figures = reform_figures(catalog, bundle_code)
    kpis = read_kpis(conn, group_by="bundle", bundle=bundle_code, date_from=date_from, date_to=date_to,
                     today=today, schema=schema, catalog=catalog)
    t = kpis["total"]
    return {"bundle": bundle_code, "reform": figures, "measured": {
        "cases": t["received"], "completed": t["completed"], "on_time_rate": t["on_time_rate"],
        "working_days_avg": t["days_avg"], "working_days_p90": t["days_p90"],
        "materials_uploaded_avg": t["materials_uploaded_avg"], "materials_saved_avg": t["materials_saved_avg"],
        "satisfaction_rate": t["satisfaction_rate"], "date_from": kpis["date_from"], "date_to": kpis["date_to"]}}


# -- running ---------------------------------------------------------------------------------------
def processors(projection: KpiProjection | None = None) -> list:
    """The KPIs as a processor of the runtime (`onething run kpis`, the read-models process)."""
    from .postgres_projection import ProjectionProcessor

    return [ProjectionProcessor(projection or KpiProjection())]


def run(settings, stop: Callable[[], bool] = lambda: False, projection: KpiProjection | None = None) -> None:
    """Follow the log into the KPI tables until `stop()` is true, on a worker of its own."""
    from infra import migrations

    from .runtime import Worker

    migrations.migrate(settings.database_url)
    worker = Worker(processors(projection)[0], settings.bootstrap_servers, settings.database_url)
    try:
        worker.run(stop)
    finally:
        worker.close()


def shadow(name: str, schema: str) -> KpiProjection:
    return KpiProjection(name, schema=schema)


def replay(settings, projection: KpiProjection | None = None, console=None) -> int:
    """`onething replay kpis`: rebuild the KPI tables from the log beside the live ones, with a
    progress bar, and swap them in once caught up. A projection of its own is rebuilt in place."""
    from .postgres_projection import replay_with_progress

    live = projection is None
    projection = projection or KpiProjection()
    total = replay_with_progress(settings, projection, console, factory=shadow if live else None)
    with psycopg.connect(settings.database_url) as conn:
        cases = conn.execute(projection.q.count_cases).fetchone()[0]
    if console is not None:
        console.print(f"{projection.name}: {total} events replayed, {cases} cases in the KPIs")
    log.info("kpis.replayed", projection=projection.name, events=total, cases=cases)
    return total
