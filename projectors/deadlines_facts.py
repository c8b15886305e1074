"""The deadline clock's rows during one batch, and what each kind of event does to them.

`ClockRows` starts from the stored rows the batch's events touch and their cases' facts (one
read each) and applies the events to them in the batch's order, one rule per method, each
evaluated on the row as the event would have found it alone; so the rows written back at the end
are the rows applying the same events one by one gives, for any batch length and any cut between
batches, and, since a rebuild reads the topics in another interleaving than the live process
did, the rows any interleaving of their topics gives (tests/test_deadline_rows.py holds both).

Why fold in Python rather than merge in SQL: two of the rules need the stored row and the
working-day calendar (a supplement pushes the case's due date back by the working days it
waited; an extension counts from the escalation's day), which per event cost a read each; and
a completion or a withdrawal closes every clock of its case. Read once, folded here, written
once, a batch costs the same four statements whatever it holds (projectors/deadlines_sql.py).

Why the rows do not depend on the interleaving. A case's events travel on several topics
(submission and 补正 on `applications`, tasks and decisions on the departments' topics, the
completion on `cases`), and only each topic's own order is kept. So every rule is written as a
fact that commutes with the facts of the other topics:
- per row, the latest attempt seen owns it: any event of a later attempt (open, pause, close)
  starts the row afresh for that attempt; within an attempt the earliest close and the earliest
  pause count, and a closed row is never paused;
- a completion or a withdrawal is remembered on the case (`CaseFacts.closed_at`, the earliest):
  every case and service clock of the case, whenever it is opened, is closed by then at the latest;
- the case clock's 补正 pauses and resumptions are kept on the case (`CaseFacts.pauses`) and the
  clock is worked out from them in time order (`case_clock`), whichever topic delivered first.
- an extension read before its escalation (a deadline's escalation travels on `cases`, the
  supervisor's extension on `applications`) is kept on the resolution row for it (`extended_to`);
  a rectification's reply read before its opening closes it only if it came in its own
  department's name.
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
                 "closed_at", "cause_event_id", "correlation_id", "region_code", "extended_to", "stored")

    def __init__(self, case_id: str, scope: str, subject_id: str, department: str | None = None,
                 task_id: str | None = None, attempt: int = 0, due_date: date | None = None,
                 paused_on: date | None = None, closed_at: datetime | None = None, cause_event_id: str | None = None,
                 correlation_id: str | None = None, region_code: str | None = None, extended_to: int | None = None,
                 stored: tuple | None = None):
        self.case_id, self.scope, self.subject_id = case_id, scope, subject_id
        self.department, self.task_id, self.attempt, self.due_date = department, task_id, attempt, due_date
        self.paused_on, self.closed_at, self.cause_event_id = paused_on, closed_at, cause_event_id
        self.correlation_id, self.region_code, self.extended_to = correlation_id, region_code, extended_to
        self.stored = stored   # the values as read: an unchanged row is not written back

    def values(self) -> tuple:
        """In the order of deadlines_sql.CLOCK_COLUMNS."""
        return (self.case_id, self.scope, self.subject_id, self.department, self.task_id, self.attempt,
                self.due_date, self.paused_on, self.closed_at, self.cause_event_id, self.correlation_id,
                self.region_code, self.extended_to)


class CaseFacts:
    """One `deadline_cases` row: what the clock knows of the case itself, whatever topic told it first."""
    __slots__ = ("case_id", "bundle_code", "submitted_on", "promised_due", "submission_id", "closed_at", "pauses",
                 "stored")

    def __init__(self, case_id: str, bundle_code: str | None = None, submitted_on: date | None = None,
                 promised_due: date | None = None, submission_id: str | None = None,
                 closed_at: datetime | None = None, pauses: list | None = None, stored: tuple | None = None):
        self.case_id, self.bundle_code, self.submitted_on = case_id, bundle_code, submitted_on
        self.promised_due, self.submission_id, self.closed_at = promised_due, submission_id, closed_at
        self.pauses: list[list[str]] = [list(p) for p in pauses or ()]   # [[ISO time, pause|resume, event id]]
        self.stored = stored

    def values(self) -> tuple:
        """In the order of deadlines_sql.CASE_COLUMNS (the pauses as stored JSON, to compare with the read)."""
        return (self.case_id, self.bundle_code, self.submitted_on, self.promised_due, self.submission_id,
                self.closed_at, self.pauses)

    def note(self, kind: str, at: datetime, event_id: str) -> None:
        fact = [at.isoformat(), kind, event_id]
        if fact not in self.pauses:
            self.pauses.append(fact)
            self.pauses.sort(key=lambda f: (datetime.fromisoformat(f[0]), f[1] != "pause", f[2]))


def case_clock(promised_due: date, cause: str, pauses: list[list[str]], closed_at: datetime | None
               ) -> tuple[date, date | None, str]:
    """The case clock's (due date, paused on, cause) from its facts in time order: the first
    request of a round stops it, the supplement resumes it with the due date pushed back by the
    working days waited; nothing after the case closed counts, and a closed clock is not paused."""
    due, paused, moved_by = promised_due, None, cause
    for when, kind, event_id in pauses:
        at = datetime.fromisoformat(when)
        if closed_at is not None and at >= closed_at:
            break
        if kind == "pause" and paused is None:
            paused = clock.china_date(at)
        elif kind == "resume" and paused is not None:
            due, paused, moved_by = clock.resumed_due(due, paused, at), None, event_id
    return due, None if closed_at is not None else paused, moved_by


class ClockRows:
    """The clocks a batch's events touch. Ask for the rows of every event first (`ask`), `load`
    what the read found, then apply the events; a rule that touched a row not asked for would
    take a stored row for a missing one, so it raises instead (a bug, never data)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Row] = {}
        self.of_case: dict[str, list[Row]] = defaultdict(list)
        self.asked: set[tuple[str, str, str]] = set()
        self.whole: set[str] = set()          # cases whose case and service clocks are all read
        self.cases: dict[str, CaseFacts] = {}
        self.case_ids: set[str] = set()       # cases whose facts are read: every case of the batch

    def ask(self, event_type: str, case_id: str, p: dict) -> None:
        """The rows the rule of an event reads: its own row, and for a decision the case's too (a
        correction pauses it); all the case and service clocks of a completion or withdrawal; and
        the case's facts for every event (a clock opened after its case closed starts closed). A
        payload that names no row asks for nothing here (`get`) and fails in its rule, as it did
        per event."""
        self.case_ids.add(case_id)
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

    def to_read(self) -> tuple[list[list[str]], list[str], list[str]]:
        """The read's parameters: the keys asked for (those of whole cases left out), the whole
        cases, the cases whose facts to read."""
        keys = [list(k) for k in self.asked if k[0] not in self.whole or k[1] not in (CASE, SERVICE)]
        return keys, sorted(self.whole), sorted(self.case_ids)

    def load(self, stored, cases=()) -> None:
        for values in stored:   # each row once: `to_read` asks for no key of a whole case
            self._add(Row(*values, stored=values))
        for values in cases:
            self.cases[values[0]] = CaseFacts(*values, stored=values)

    def _get(self, key: tuple[str, str, str]) -> Row | None:
        if key not in self.asked and not (key[0] in self.whole and key[1] in (CASE, SERVICE)):
            raise LookupError(f"a deadline rule touched {key}, which the batch did not read")
        return self.rows.get(key)

    def _add(self, row: Row) -> Row:
        self.rows[(row.case_id, row.scope, row.subject_id)] = row
        self.of_case[row.case_id].append(row)
        return row

    def _case(self, case_id: str) -> CaseFacts:
        if case_id not in self.case_ids:
            raise LookupError(f"a deadline rule touched the facts of {case_id}, which the batch did not read")
        if case_id not in self.cases:
            self.cases[case_id] = CaseFacts(case_id)
        return self.cases[case_id]

    def _settle(self, row: Row) -> None:
        """A case or service clock of a closed case is closed by the case's close at the latest,
        and a closed clock is not paused: the same whether the close came before or after."""
        if row.scope not in (CASE, SERVICE):
            return
        closed = self._case(row.case_id).closed_at
        if closed is not None and (row.closed_at is None or closed < row.closed_at):
            row.closed_at = closed
        if row.closed_at is not None:
            row.paused_on = None

    def changed(self) -> list[tuple]:
        """The clock rows to write: new ones and stored ones the batch changed."""
        return [values for row in self.rows.values() if (values := row.values()) != row.stored]

    def changed_cases(self) -> list[tuple]:
        """The case facts to write: new ones and stored ones the batch changed."""
        return [values for case in self.cases.values() if (values := case.values()) != case.stored]

    # -- the rules, one per kind of fact -----------------------------------------------------------
    def submitted(self, case_id: str, bundle_code: str, day: date, due: date | None, cause: str,
                  correlation: str | None, region: str | None) -> None:
        """The first submission names the bundle and, if it promises a total, opens the case clock."""
        case = self._case(case_id)
        if case.bundle_code is None:
            case.bundle_code, case.submitted_on = bundle_code, day
            case.promised_due, case.submission_id = due, cause
        if case.promised_due is not None:
            self.open(case_id, CASE, "", department=None, task_id=None, attempt=0, due=case.promised_due,
                      cause=case.submission_id or cause, correlation=correlation, region=region)

    def open(self, case_id: str, scope: str, subject: str, *, department: str | None, task_id: str | None,
             attempt: int, due: Any, cause: str, correlation: str | None, region: str | None) -> None:
        """Set the due date of `attempt`: department = the latest known; task_id, due_date,
        cause_event_id = this attempt's if it is the row's latest; correlation_id, region_code =
        the first known; a later attempt reopens the row."""
        k = self._get((case_id, scope, subject))
        if k is None:
            k = self._add(Row(case_id, scope, subject, department, task_id, attempt, due, None, None, cause,
                              correlation, region))
        else:
            if scope == RECTIFICATION and None not in (k.department, department) and k.department != department:
                k.closed_at = None  # a reply read before the opening, in another department's name, closes nothing
            if department is not None:
                k.department = department
            if attempt > k.attempt:
                k.paused_on = k.closed_at = None
                k.attempt = attempt
            if attempt == k.attempt:
                k.task_id, k.due_date, k.cause_event_id = task_id, due, cause
            if k.correlation_id is None:
                k.correlation_id = correlation
            if k.region_code is None:
                k.region_code = region
        if scope == CASE:
            self._case_clock(case_id)
        self._settle(k)

    def close(self, case_id: str, scope: str, subject: str, *, department: str | None, attempt: int,
              at: datetime) -> None:
        """Decided, cancelled, replied, resolved: the earliest close of the row's latest attempt
        stays, and the row is no longer paused; a close of a later attempt starts the row afresh."""
        k = self._get((case_id, scope, subject))
        if k is None:
            k = self._add(Row(case_id, scope, subject, department, None, attempt, None, None, at))
        elif scope == RECTIFICATION and None not in (k.department, department) and k.department != department:
            return  # only the rectification's own department closes it (projectors/authority.py too)
        elif attempt >= k.attempt:
            if attempt > k.attempt or k.closed_at is None or at < k.closed_at:
                k.closed_at = at
            k.paused_on = None
            k.attempt = attempt
            if k.department is None:
                k.department = department
        elif k.department is None:
            k.department = department
        self._settle(k)

    def pause(self, case_id: str, scope: str, subject: str, *, department: str | None, attempt: int,
              day: date) -> None:
        """补正 asked on `attempt`: the earliest day of the row's latest attempt, if it is not closed;
        a pause of a later attempt starts the row afresh (the department of a stored row stays)."""
        k = self._get((case_id, scope, subject))
        if k is None:
            k = self._add(Row(case_id, scope, subject, department, None, attempt, None, day))
        elif attempt > k.attempt:
            k.attempt, k.closed_at, k.paused_on = attempt, None, day
        elif attempt == k.attempt and k.closed_at is None and (k.paused_on is None or day < k.paused_on):
            k.paused_on = day
        self._settle(k)

    def pause_case(self, case_id: str, at: datetime, cause: str) -> None:
        """The case's own clock stands still from the first request of a round."""
        self._case(case_id).note("pause", at, cause)
        self._case_clock(case_id)

    def resume_case(self, case_id: str, at: datetime, cause: str) -> None:
        """补正 done: the case's due date pushed back by the working days it waited."""
        self._case(case_id).note("resume", at, cause)
        self._case_clock(case_id)

    def _case_clock(self, case_id: str) -> None:
        """The case clock worked out again from its facts (`case_clock`), if it is open yet."""
        case, k = self._case(case_id), self._get((case_id, CASE, ""))
        if k is None or case.promised_due is None:
            return
        k.due_date, k.paused_on, k.cause_event_id = case_clock(case.promised_due, case.submission_id or "",
                                                               case.pauses, case.closed_at)
        self._settle(k)

    def close_case(self, case_id: str, at: datetime) -> None:
        """Completed or withdrawn: remembered on the case (the earliest), and every case and
        service clock of it closed by then, those opened later too (`_settle`)."""
        if case_id not in self.whole:
            raise LookupError(f"a completion of {case_id} needs all its clocks, which the batch did not read")
        case = self._case(case_id)
        if case.closed_at is None or at < case.closed_at:
            case.closed_at = at
        for k in list(self.of_case.get(case_id, ())):
            if k.scope == CASE:
                self._case_clock(case_id)
            self._settle(k)

    def escalated(self, case_id: str, escalation_id: str, at: datetime, *, department: str | None, cause: str,
                  correlation: str | None, region: str | None) -> None:
        """Opened: the reply's and the resolution's limits. A deadline's escalation travels on
        `cases`, its supervisor's extension on `applications`: an extension read first has left
        its limit on the resolution row, and it still counts."""
        d = clock.escalation_deadlines(at)
        k = self._get((case_id, RESOLUTION, escalation_id))
        extended_by = k.cause_event_id if k is not None and k.extended_to is not None else None
        for scope, due in ((REPLY, d.reply_due), (RESOLUTION, d.resolve_due)):
            self.open(case_id, scope, escalation_id, department=department, task_id=None, attempt=0, due=due,
                      cause=cause, correlation=correlation, region=region)
        if extended_by is not None:
            k = self.rows[(case_id, RESOLUTION, escalation_id)]
            k.due_date, k.cause_event_id = _extended_due(d.reply_due, k.extended_to), extended_by

    def extend(self, case_id: str, escalation_id: str, resolve_within: Any, cause: str) -> None:
        """The resolution limit, counted again from the escalation's day (REPLY_WITHIN working days
        before its reply deadline). A bad limit raises whether or not the escalation was read; an
        extension read before its escalation is kept on the resolution row for it (`escalated`)."""
        n = clock.checked_resolve_within(int(resolve_within))
        k = self._get((case_id, RESOLUTION, escalation_id))
        if k is None:
            k = self._add(Row(case_id, RESOLUTION, escalation_id, cause_event_id=cause))
        k.extended_to, k.cause_event_id = n, cause
        reply = self._get((case_id, REPLY, escalation_id))
        if reply is not None and reply.due_date is not None:
            k.due_date = _extended_due(reply.due_date, n)


def _extended_due(reply_due: date, resolve_within: int) -> date:
    opened = add_working_days(reply_due, -clock.REPLY_WITHIN)
    return clock.escalation_deadlines(opened, resolve_within).resolve_due
