"""The working-day clock: due dates, the 补正 pause, and the stage of a deadline on a given day.

Pure functions over dates and the catalog; the deadline processor (deadlines.py), dispatch
(case_state.py) and the read models all ask the same questions, so they get the same answers.

Why these rules:
- A limit is counted in working days (法定/承诺时限), the day of receipt not counted
  (catalog/working_days.add_working_days), holidays and 调休 make-up Saturdays honoured.
- The clock stops while the applicant is asked for a correction (补正): the days between
  the request and the supplement are the applicant's, not the department's. A re-dispatched
  service keeps its first due date pushed back by the working days the case waited, instead
  of getting a fresh full limit (which would reward asking for corrections).
- Calendar days are China's (Asia/Shanghai): an event at 01:00 Beijing time is on that
  Beijing day, not on the previous UTC day.
- Escalations (办不成事) get a reply within 3 working days and a resolution within 5,
  extendable to 10 in all; a bad rating's rectification (差评整改) is due in 15 working days.
  These figures are the practice the issue cites; `../shared/domain/` gives no figure for them,
  so they are named constants here, to be changed in one place when a province's rule differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from zoneinfo import ZoneInfo

from catalog.model import Catalog
from catalog.working_days import WorkingCalendar, add_working_days, working_days_between

CHINA = ZoneInfo("Asia/Shanghai")

REPLY_WITHIN = 3          # working days to a supervisor's first reply to an escalation
RESOLVE_WITHIN = 5        # working days to resolve it
RESOLVE_AT_MOST = 10      # the longest a supervisor may extend the resolution to
RECTIFY_WITHIN = 15       # working days for a department to rectify after a bad rating
WARN_WITHIN = 1           # working days left at which a deadline is "approaching"


class Stage(str, Enum):
    OK = "ok"
    APPROACHING = "approaching"
    BREACHED = "breached"


def china_date(moment: datetime | date) -> date:
    """The Beijing calendar day of a moment (a date passes through)."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError("a naive datetime has no calendar day in China; give it a timezone")
        return moment.astimezone(CHINA).date()
    return moment


def promised_days(catalog: Catalog, bundle_code: str | None, service_id: str) -> int | None:
    """The service's limit within its bundle: the bundle's promise, else the statutory limit."""
    bundle = catalog.bundles.get(bundle_code) if bundle_code else None
    member = bundle.member(service_id) if bundle else None
    if member and member.promised:
        return int(round(member.promised.value))
    svc = catalog.services.get(service_id)
    if svc is not None and svc.statutory:
        return int(round(svc.statutory.value))
    return None


def case_promised_days(catalog: Catalog, bundle_code: str) -> int | None:
    """The bundle's promised total (e.g. 新生儿出生: 5 working days), if the catalog states one."""
    bundle = catalog.bundles.get(bundle_code)
    if bundle is None or bundle.promised_total is None:
        return None
    return int(round(bundle.promised_total.value))


def due_after(start: datetime | date, days: int, calendar: WorkingCalendar | None = None) -> date:
    return add_working_days(china_date(start), days, calendar)


def paused_working_days(paused_on: datetime | date, resumed_on: datetime | date,
                        calendar: WorkingCalendar | None = None) -> int:
    """Working days the clock stood still: in (paused_on, resumed_on], never negative."""
    return max(0, working_days_between(china_date(paused_on), china_date(resumed_on), calendar))


def resumed_due(due: date, paused_on: datetime | date, resumed_on: datetime | date,
                calendar: WorkingCalendar | None = None) -> date:
    """The due date after a 补正 pause: pushed back by the working days the case waited."""
    return add_working_days(due, paused_working_days(paused_on, resumed_on, calendar), calendar)


def working_days_left(today: date, due: date, calendar: WorkingCalendar | None = None) -> int:
    """Working days from today to the due date; 0 on the due date, negative once past it."""
    return working_days_between(today, due, calendar)


def stage(due: date, today: date, *, warn_within: int = WARN_WITHIN,
          calendar: WorkingCalendar | None = None) -> Stage:
    """Breached the day after the due date (the due date itself is still in time), approaching
    when at most `warn_within` working days are left."""
    if today > due:
        return Stage.BREACHED
    if working_days_left(today, due, calendar) <= warn_within:
        return Stage.APPROACHING
    return Stage.OK


@dataclass(frozen=True)
class EscalationDeadlines:
    reply_due: date
    resolve_due: date


def checked_resolve_within(resolve_within: int) -> int:
    if not 1 <= resolve_within <= RESOLVE_AT_MOST:
        raise ValueError(f"resolve_within must be 1..{RESOLVE_AT_MOST} working days, not {resolve_within}")
    return resolve_within


def escalation_deadlines(opened: datetime | date, resolve_within: int = RESOLVE_WITHIN,
                         calendar: WorkingCalendar | None = None) -> EscalationDeadlines:
    checked_resolve_within(resolve_within)
    day = china_date(opened)
    return EscalationDeadlines(add_working_days(day, REPLY_WITHIN, calendar),
                               add_working_days(day, resolve_within, calendar))


def rectification_due(rated: datetime | date, calendar: WorkingCalendar | None = None) -> date:
    return add_working_days(china_date(rated), RECTIFY_WITHIN, calendar)
