"""The deadline clock's rows during one batch, and what each kind of event does to them.

`ClockRows` starts from the stored rows the batch's events touch (one read) and applies the
events to them in the batch's order, one rule per method. Every rule is, line for line, the
statement the clock ran per event before batches (kept in the method's docstring), evaluated on
the row as that statement would have found it; so the rows written back at the end are the rows
applying the same events one by one gives, for any batch length and any cut between batches,
including the rules that depend on order (a completion closes only the service clocks that
exist when it arrives; an open of the same attempt replaces the due date).

Why fold in Python rather than merge in SQL: two of the rules need the stored row and the
working-day calendar (a supplement pushes the case's due date back by the working days it
waited; an extension counts from the escalation's day), which per event cost a read each; and
a completion or a withdrawal closes every clock of its case that exists when it arrives. Read once, folded here, written
once, a batch costs the same three statements whatever it holds (projectors/deadlines_sql.py).

Per row, (attempt, closed) only moves forward: an open of a later attempt reopens the row and
clears its pause, one of an earlier attempt changes nothing but the known department; a close
or pause of an earlier attempt does not touch the later one.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime
from typing import Any

from catalog.working_days import add_working_days

from . import deadline_clock as clock

CASE, SERVICE, REPLY, RESOLUTION, RECTIFICATION = ("case", "service", "escalation_reply", "escalation_resolution",
                                                    "rectification")
CLOSES_CASE = ("CaseCompleted", "ApplicationWithdrawn")


class Row:
    """One `deadline_clocks` row (without the tick's marks), as stored or as the batch left it."""
    __slots__ = ("case_id", "scope", "subject_id", "department", "task_id", "attempt", "due_date", "paused_on",
                 "closed_at", "cause_event_id", "correlation_id", "region_code", "stored")

    def __init__(self, case_id: str, scope: str, subject_id: str, department: str | None = None,
                 task_id: str | None = None, attempt: int = 0, due_date: date | None = None,
                 paused_on: date | None = None, closed_at: datetime | None = None, cause_event_id: str | None = None,
                 correlation_id: str | None = None, region_code: str | None = None, stored: tuple | None = None):
        self.case_id, self.scope, self.subject_id = case_id, scope, subject_id
        self.department, self.task_id, self.attempt, self.due_date = department, task_id, attempt, due_date
        self.paused_on, self.closed_at, self.cause_event_id = paused_on, closed_at, cause_event_id
        self.correlation_id, self.region_code = correlation_id, region_code
        self.stored = stored   # the values as read: an unchanged row is not written back

    def values(self) -> tuple:
        """In the order of deadlines_sql.CLOCK_COLUMNS."""
        return (self.case_id, self.scope, self.subject_id, self.department, self.task_id, self.attempt,
                self.due_date, self.paused_on, self.closed_at, self.cause_event_id, self.correlation_id,
                self.region_code)


class ClockRows:
    """The clocks a batch's events touch. Ask for the rows of every event first (`ask`), `load`
    what the read found, then apply the events; a rule that touched a row not asked for would
    take a stored row for a missing one, so it raises instead (a bug, never data)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Row] = {}
        self.of_case: dict[str, list[Row]] = defaultdict(list)
        self.asked: set[tuple[str, str, str]] = set()
        self.whole: set[str] = set()          # cases whose case and service clocks are all read
        self.submissions: dict[str, tuple[str, str, date]] = {}

    def ask(self, event_type: str, case_id: str, p: dict) -> None:
        """The rows the rule of an event reads: its own row, and for a decision the case's too (a
        correction pauses it); all the case and service clocks of a completion or withdrawal. A
        payload that names no row asks for nothing here (`get`) and fails in its rule, as it did
        per event."""
        if event_type in CLOSES_CASE:
            self.whole.add(case_id)
        elif event_type in ("ApplicationSubmitted", "MaterialsSupplemented"):
            self.asked.add((case_id, CASE, ""))
        elif event_type in ("TaskDispatched", "TaskCancelled", "DecisionRecorded"):
            self.asked.add((case_id, SERVICE, p.get("service_id")))
            if event_type == "DecisionRecorded":
                self.asked.add((case_id, CASE, ""))
        elif event_type.startswith("Escalation") or event_type == "CaseEscalated":
            self.asked.add((case_id, REPLY, p.get("escalation_id")))
            self.asked.add((case_id, RESOLUTION, p.get("escalation_id")))
        elif event_type.startswith("Rectification"):
            self.asked.add((case_id, RECTIFICATION, p.get("rectification_id")))

    def to_read(self) -> tuple[list[list[str]], list[str]]:
        """The read's parameters: the keys asked for (those of whole cases left out), the whole cases."""
        keys = [list(k) for k in self.asked if k[0] not in self.whole or k[1] not in (CASE, SERVICE)]
        return keys, sorted(self.whole)

    def load(self, stored) -> None:
        for values in stored:   # each row once: `to_read` asks for no key of a whole case
            self._add(Row(*values, stored=values))

    def _get(self, key: tuple[str, str, str]) -> Row | None:
        if key not in self.asked and not (key[0] in self.whole and key[1] in (CASE, SERVICE)):
            raise LookupError(f"a deadline rule touched {key}, which the batch did not read")
        return self.rows.get(key)

    def _add(self, row: Row) -> Row:
        self.rows[(row.case_id, row.scope, row.subject_id)] = row
        self.of_case[row.case_id].append(row)
        return row

    def changed(self) -> list[tuple]:
        """The rows to write: new ones and stored ones the batch changed."""
        out = []
        for row in self.rows.values():
            values = row.values()
            if values != row.stored:
                out.append(values)
        return out

    def submitted(self, case_id: str, bundle_code: str, day: date) -> None:
        """`INSERT INTO deadline_cases ... ON CONFLICT DO NOTHING`: the first one counts."""
        self.submissions.setdefault(case_id, (case_id, bundle_code, day))

    # -- the rules, one per statement of the per-event clock -------------------------------------
    def open(self, case_id: str, scope: str, subject: str, *, department: str | None, task_id: str | None,
             attempt: int, due: Any, cause: str, correlation: str | None, region: str | None) -> None:
        """Set the due date of `attempt`. Was: INSERT ... ON CONFLICT DO UPDATE SET department =
        coalesce(new, k); task_id, due_date, cause_event_id = new if new.attempt >= k.attempt;
        correlation_id, region_code = coalesce(k, new); paused_on, closed_at = NULL if
        new.attempt > k.attempt; attempt = greatest."""
        k = self._get((case_id, scope, subject))
        if k is None:
            self._add(Row(case_id, scope, subject, department, task_id, attempt, due, None, None, cause, correlation,
                          region))
            return
        if scope == RECTIFICATION and None not in (k.department, department) and k.department != department:
            k.closed_at = None  # a reply read before the opening, in another department's name, closes nothing
        if department is not None:
            k.department = department
        if attempt >= k.attempt:
            k.task_id, k.due_date, k.cause_event_id = task_id, due, cause
        if k.correlation_id is None:
            k.correlation_id = correlation
        if k.region_code is None:
            k.region_code = region
        if attempt > k.attempt:
            k.paused_on = k.closed_at = None
            k.attempt = attempt

    def close(self, case_id: str, scope: str, subject: str, *, department: str | None, attempt: int,
              at: datetime) -> None:
        """Decided, cancelled, replied, resolved. Was: INSERT (department, attempt, closed_at) ON
        CONFLICT DO UPDATE SET closed_at = coalesce(k, new) and paused_on = NULL if new.attempt >=
        k.attempt; attempt = greatest; department = coalesce(k, new). The first close's time stays."""
        k = self._get((case_id, scope, subject))
        if k is None:
            self._add(Row(case_id, scope, subject, department, None, attempt, None, None, at))
            return
        if scope == RECTIFICATION and None not in (k.department, department) and k.department != department:
            return  # only the rectification's own department closes it (projectors/authority.py too)
        if attempt >= k.attempt:
            if k.closed_at is None:
                k.closed_at = at
            k.paused_on = None
            k.attempt = attempt
        if k.department is None:
            k.department = department

    def pause(self, case_id: str, scope: str, subject: str, *, department: str | None, attempt: int,
              day: date) -> None:
        """补正 asked on `attempt`. Was: INSERT (department, attempt, paused_on) ON CONFLICT DO UPDATE
        SET paused_on = coalesce(k, new) if new.attempt >= k.attempt and the row is open; attempt =
        greatest (the department of a stored row is left as it is)."""
        k = self._get((case_id, scope, subject))
        if k is None:
            self._add(Row(case_id, scope, subject, department, None, attempt, None, day))
            return
        if attempt >= k.attempt and k.closed_at is None and k.paused_on is None:
            k.paused_on = day
        if attempt > k.attempt:
            k.attempt = attempt

    def pause_case(self, case_id: str, day: date) -> None:
        """The case's own clock stands still from the first request of a round. Was: UPDATE the case
        row SET paused_on = coalesce(paused_on, day) WHERE closed_at IS NULL (no row: nothing)."""
        k = self._get((case_id, CASE, ""))
        if k is not None and k.closed_at is None and k.paused_on is None:
            k.paused_on = day

    def resume_case(self, case_id: str, at: datetime, cause: str) -> None:
        """补正 done: the case's due date pushed back by the working days it waited. Was: SELECT the
        paused case row, then UPDATE it SET due_date = resumed_due(...), paused_on = NULL,
        cause_event_id (closed or not; no paused row: nothing)."""
        k = self._get((case_id, CASE, ""))
        if k is None or k.paused_on is None:
            return
        k.due_date = clock.resumed_due(k.due_date, k.paused_on, at)
        k.paused_on, k.cause_event_id = None, cause

    def close_case(self, case_id: str, at: datetime) -> None:
        """Completed or withdrawn: the case's and its services' clocks that exist now. Was: UPDATE
        ... SET closed_at = coalesce(closed_at, at) WHERE scope IN ('case', 'service')."""
        if case_id not in self.whole:
            raise LookupError(f"a completion of {case_id} needs all its clocks, which the batch did not read")
        for k in self.of_case.get(case_id, ()):
            if k.closed_at is None and k.scope in (CASE, SERVICE):
                k.closed_at = at

    def extend(self, case_id: str, escalation_id: str, resolve_within: Any, cause: str) -> None:
        """The resolution limit, counted again from the escalation's day (REPLY_WITHIN working days
        before its reply deadline). Was: SELECT the reply row's due date (none: nothing, and no
        error for a bad limit), then UPDATE the resolution row SET due_date, cause_event_id."""
        reply = self._get((case_id, REPLY, escalation_id))
        if reply is None or reply.due_date is None:
            return
        opened = add_working_days(reply.due_date, -clock.REPLY_WITHIN)
        due = clock.escalation_deadlines(opened, int(resolve_within)).resolve_due
        k = self._get((case_id, RESOLUTION, escalation_id))
        if k is not None:
            k.due_date, k.cause_event_id = due, cause
