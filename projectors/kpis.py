"""The KPIs read model (晴雨表): volumes, timeliness, working days used, materials saved, ratings,
breached deadlines and escalations per bundle, department, region and day, in PostgreSQL.

Facts, not figures, are stored: one row per case (`kpi_cases`) and per service of a case
(`kpi_services`), each recomputed ("settled") from raw fact rows whenever events touch it;
`read_kpis` (projectors/kpis_read.py) aggregates them by SQL at read time for any grouping,
window and filter, so a new question needs no rebuild. Run by `ProjectionRunner` (rows and
offsets in one transaction, every event once); `onething replay kpis` drops and rebuilds it from the log.

Order. The model reads `applications`, `cases` and every `tasks.<dept>` / `decisions.<dept>`;
Kafka orders one partition, not several topics, so a decision can come before its task and a
completion before the submission. Every write is order-independent:
- raw facts are keyed by what they record (a material reference by event and code, a 补正
  request or supplement by event, a task attempt by case, service and attempt, a breach by its
  deadline and due date, an escalation by its id) and only ever filled in, never overwritten
  by a later-seen event (an attempt keeps its highest-ranked outcome, earliest on a tie);
- a case or service row is a pure function of those facts (`case_clock`, `service_fact`),
  recomputed when they change, so the last event seen does not matter, only the set;
- every stored time is an event's occurred_at and every day is its Beijing day, never now():
  a rebuild gives the rows the incremental run gave. Only "overdue while still open" depends on
  the day the figures are read (`today`), and it is computed at read time.

Batches. The same order-independence lets a checkpoint of hundreds of events cost at most 14
statements in three round trips instead of several per event, which is what keeps the model up
with the system's event rate: the batch's raw facts are folded in Python by the rules their SQL
merges with (projectors/kpis_facts.py) and written one statement per table, then each touched
service and case is settled once from its facts read set-based (projectors/kpis_sql.py).
`apply(event)` is a batch of one, so one by one and batched give the same rows by construction;
tests/test_kpis.py holds batches of shuffled events to the rows one by one gives.

The rules (the pure functions below and in projectors/kpis_read.py, with property tests in
tests/test_kpi_rules.py):
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
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from itertools import groupby
from pathlib import Path
from typing import Any

import psycopg
import structlog

from catalog.loader import load_catalog
from catalog.model import Catalog
from catalog.working_days import WorkingCalendar, add_working_days, default_calendar, working_days_between
from events.envelope import Event

from . import deadline_clock as clock
from .case_state import belongs_to_no_case
from .case_view import default_topics
from .kpis_facts import OUTCOME_RANK, BatchFacts  # noqa: F401 (OUTCOME_RANK: part of this module's API)
from .kpis_read import (GRADES, GROUP_BY, SATISFIED, KpiQueryError, bundle_limits,  # noqa: F401 (this module's API)
                        measured_vs_reform, on_time_rate, read_kpis, reform_figures, region_prefix,
                        satisfaction_rate)
from .kpis_sql import TABLES, batch_rows, statements
from .postgres_projection import check_schema as _check_schema
from .postgres_projection import create_schema as _create_schema
from .postgres_projection import drop_schema  # noqa: F401 (part of this module's API)

log = structlog.get_logger(__name__)

NAME = "kpis"
MIGRATION = Path(__file__).resolve().parent.parent / "infra" / "migrations" / "0010_kpis.sql"
HANDLED = frozenset({"ApplicationSubmitted", "MaterialsSupplemented", "ApplicationWithdrawn", "CaseRated",
                     "CaseCompleted", "TaskDispatched", "TaskCancelled", "DecisionRecorded", "DeadlineBreached",
                     "CaseEscalated", "EscalationResolved"})
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
def service_limits(catalog: Catalog, bundle_code: str | None, service_id: str) -> tuple[float | None, float | None]:
    """(promised within its bundle, statutory) working days of a service."""
    days = clock.promised_days(catalog, bundle_code, service_id)
    svc = catalog.services.get(service_id)
    return (None if days is None else float(days)), (svc.statutory.value if svc and svc.statutory else None)


# -- schema ----------------------------------------------------------------------------------------
def create_schema(conn: psycopg.Connection, schema: str) -> None:
    """The model's tables in `schema` (a test's or a shadow rebuild's own); public comes from the migrations."""
    _create_schema(conn, schema, MIGRATION, "kpi_cases")


class _RememberedCalendar:
    """A calendar that answers each working-day question once: settling asks the same ones for
    every case received on the same day, and chinese_calendar is slow to answer (it checks every
    date against its whole table). The answers are pure for a calendar that does not change, so
    remembering them changes no row; the unknown-year warning still comes on the first question."""

    def __init__(self, calendar: WorkingCalendar):
        self.add_working_days = lru_cache(maxsize=8192)(calendar.add_working_days)
        self.working_days_between = lru_cache(maxsize=8192)(calendar.working_days_between)


class KpiProjection:
    """The KPIs. `KpiProjection()` is the live one (name "kpis", public schema, every case topic).
    A test or a shadow rebuild passes its own `name`, `schema` (create it with `create_schema`),
    `topics` and, to skip other cases cheaply, `keep(case_id) -> bool`."""
    event_types = HANDLED

    def __init__(self, name: str = NAME, *, schema: str = "public", topics: tuple[str, ...] | None = None,
                 catalog: Catalog | None = None, keep: Callable[[str], bool] | None = None,
                 calendar: WorkingCalendar | None = None):
        self.name = name
        self.schema = _check_schema(schema)
        self.catalog = catalog or load_catalog()
        self.topics = tuple(topics) if topics else default_topics(self.catalog)
        self.keep = keep
        self.calendar = calendar
        remembered = _RememberedCalendar(calendar or default_calendar())
        self._calendar: WorkingCalendar = remembered  # type: ignore[assignment]
        self.q = statements(self.schema)
        self._limits: dict[tuple, tuple[float | None, float | None]] = {}  # the catalog does not change under us

    # -- the Projection protocol ------------------------------------------------------------------
    tables = TABLES

    def create_schema(self, conn: psycopg.Connection, schema: str) -> None:
        create_schema(conn, schema)

    def reset(self, conn: psycopg.Connection) -> None:
        conn.execute(self.q.reset)

    def wants(self, event: Event) -> bool:
        return event.type in HANDLED and (self.keep is None or self.keep(event.key))

    def apply(self, conn: psycopg.Connection, event: Event) -> None:
        self.apply_batch(conn, [event])

    def apply_batch(self, conn: psycopg.Connection, events: Iterable[Event]) -> None:
        """The batch's events, in their order, in three round trips: (1) the rated cases' stored
        ratings are read and the raw facts written, (2) the touched services settled and the touched
        cases' facts read, (3) the cases settled. Raises what any statement raises: the runtime
        then isolates the bad event by re-running the batch one event at a time."""
        facts, fed = BatchFacts(self.catalog, self._bundle_limits), 0
        for e in events:
            if self.wants(e) and not belongs_to_no_case(e):
                env = e.envelope
                facts.add(e.type, e.key, e.id, env.occurred_at, env.region_code, e.payload)
                fed += 1
        if not fed:
            return
        q = self.q
        look_up = facts.to_look_up()
        # one event's few statements are cheaper sent one by one than through psycopg's pipeline mode
        with conn.pipeline() if fed > 1 else nullcontext():
            known = conn.execute(q.ratings_known, (look_up,)) if look_up else None  # before the writes below
            for name, rows in facts.rows().items():
                conn.execute(getattr(q, name), batch_rows(rows))
            of_cases = facts.cases_with_services_to_settle()
            attempts = conn.execute(q.attempts_of, (of_cases,)) if of_cases else None
            grades = facts.known({r[0]: (r[1], r[2]) for r in known.fetchall()} if known else {})
            services = self._settle_services(attempts.fetchall() if attempts else (), facts)
            if grades:
                conn.execute(q.service_grades, batch_rows(grades))
            if services:
                conn.execute(q.services_settle, batch_rows(services))
            cases = sorted(facts.settle_cases)
            if not cases:
                return
            found = [conn.execute(s, (cases,)) for s in (q.cases_of, q.pauses_of, q.materials_of)]
            settled = self._settle_cases(*(cur.fetchall() for cur in found))
            if settled:
                conn.execute(q.cases_settle, batch_rows(settled))

    # -- settling ------------------------------------------------------------------------------------
    def _bundle_limits(self, bundle: str | None) -> tuple[float | None, float | None]:
        if (bundle,) not in self._limits:
            self._limits[(bundle,)] = bundle_limits(self.catalog, bundle)
        return self._limits[(bundle,)]

    def _service_limits(self, bundle: str | None, service_id: str) -> tuple[float | None, float | None]:
        if (bundle, service_id) not in self._limits:
            self._limits[(bundle, service_id)] = service_limits(self.catalog, bundle, service_id)
        return self._limits[(bundle, service_id)]

    def _settle_services(self, rows: Iterable[tuple], facts: BatchFacts) -> list[tuple]:
        """kpi_services rows of the services the batch settles, from the attempts of their cases
        ordered by case, service, attempt."""
        out = []
        for (case_id, service_id), group in groupby(rows, key=lambda r: (r[0], r[1])):
            if not facts.settles_service(case_id, service_id):
                continue
            group = list(group)
            fact = service_fact([Attempt(*r[2:8]) for r in group], self._calendar)
            department = next((r[8] for r in group if r[8]), None)
            bundle, case_region, received_on = group[0][11:14]
            region = case_region or next((r[9] for r in group if r[9]), None)
            if received_on is None and fact.first_dispatched_at is not None:
                received_on = clock.china_date(fact.first_dispatched_at)
            promised, statutory = self._service_limits(bundle, service_id)
            fetched = set().union(*(r[10] or () for r in group))
            out.append((case_id, service_id, department, bundle, region, received_on, fact.first_dispatched_at,
                        fact.status, fact.paused, fact.due_date, fact.ended_on, fact.days_used, promised, statutory,
                        len(fetched)))
        return out

    def _settle_cases(self, cases: list[tuple], pauses: list[tuple], materials: list[tuple]) -> list[tuple]:
        """kpi_cases figures of the cases to settle, from their row, 补正 pauses and material references."""
        pauses_of_case, refs = defaultdict(list), defaultdict(list)
        for case_id, *pause in pauses:
            pauses_of_case[case_id].append(pause)
        for case_id, *ref in materials:
            refs[case_id].append(ref)
        out = []
        for case_id, bundle, received_on, completed_at, services_due in cases:
            ended_on = clock.china_date(completed_at) if completed_at is not None else None
            total = clock.case_promised_days(self.catalog, bundle) if bundle else None
            cc = case_clock(received_on, ended_on, total, pauses_of_case[case_id], services_due, self._calendar)
            mats = materials_saved(refs[case_id])
            out.append((case_id, cc.due_date, cc.paused_days, cc.paused_since, ended_on, cc.days_used, mats.fetched,
                        mats.uploaded, mats.promised))
        return out


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
