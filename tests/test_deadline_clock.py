"""The working-day clock (pure): due dates across 春节 and 国庆 with their 调休 Saturdays, agreeing
with `chinese-calendar`; the 补正 pause; the stage of a deadline; what the tick raises, with
ids that do not change when it is asked again (a restart emits no duplicate). The clock's rows
are tests/test_deadline_rows.py."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import chinese_calendar
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from catalog.loader import load_catalog
from projectors import deadline_clock as clock
from projectors.deadline_clock import Stage
from projectors.deadline_tick import alarms
from projectors.deadlines import today_in_china


CAT = load_catalog()
RUN = uuid.uuid4().hex[:8]
COVERED = st.dates(min_value=date(2024, 1, 1), max_value=date(2026, 9, 30))  # + 60 working days stays in 2026


def by_chinese_calendar(start: date, n: int) -> date:
    """The n-th working day after `start`, counted with the package itself."""
    day = start
    while n:
        day += timedelta(days=1)
        n -= chinese_calendar.is_workday(day)
    return day


def test_a_service_due_across_the_spring_festival_2026_and_its_make_up_saturday():
    # filed Friday 13 Feb 2026; 春节 off 15–23 Feb; Saturdays 14 and 28 Feb are 调休 working days:
    # 14, 24, 25, 26, 27, 28 Feb, 2 Mar
    due = clock.due_after(date(2026, 2, 13), 7)
    assert due == by_chinese_calendar(date(2026, 2, 13), 7) == date(2026, 3, 2)
    assert clock.working_days_left(date(2026, 2, 27), due) == 2  # Saturday 28 Feb counts, Sunday 1 Mar not


def test_a_service_due_across_national_day_2026_and_its_make_up_saturday():
    # filed Tuesday 29 Sep 2026 with 5 working days: 30 Sep, then 国庆 1–7 Oct, then 8, 9, 10 (Sat), 12
    assert clock.due_after(date(2026, 9, 29), 5) == by_chinese_calendar(date(2026, 9, 29), 5) == date(2026, 10, 12)


@given(start=COVERED, n=st.integers(0, 60))
def test_due_dates_agree_with_chinese_calendar(start, n):
    assert clock.due_after(start, n) == by_chinese_calendar(start, n)


def test_a_moment_counts_on_its_beijing_day():
    late_utc = datetime(2026, 2, 12, 17, 30, tzinfo=timezone.utc)  # 01:30 on 13 Feb in Beijing
    assert clock.china_date(late_utc) == date(2026, 2, 13)
    assert clock.due_after(late_utc, 7) == date(2026, 3, 2)
    with pytest.raises(ValueError, match="timezone"):
        clock.china_date(datetime(2026, 2, 13, 9))


def test_a_year_with_no_arrangement_still_gives_a_due_date_and_warns():
    before = REGISTRY.get_sample_value("onething_calendar_unknown_year_total", {"year": "2031"}) or 0
    due = clock.due_after(date(2031, 3, 3), 5)   # a Monday: weekends only is the best guess
    assert due == date(2031, 3, 10)
    assert (REGISTRY.get_sample_value("onething_calendar_unknown_year_total", {"year": "2031"}) or 0) > before


@given(due=COVERED, paused=COVERED, waited=st.integers(0, 40))
def test_a_pause_pushes_the_due_date_back_by_exactly_the_working_days_waited(due, paused, waited):
    resumed = paused + timedelta(days=waited)
    moved = clock.resumed_due(due, paused, resumed)
    assert moved >= due
    assert clock.working_days_left(due, moved) == clock.paused_working_days(paused, resumed)
    assert clock.resumed_due(due, paused, paused) == due  # asked and supplied the same day: no pause


@given(due=COVERED, a=COVERED, b=COVERED)
def test_the_stage_only_moves_forward_as_days_pass(due, a, b):
    order = [Stage.OK, Stage.APPROACHING, Stage.BREACHED]
    early, late = sorted((a, b))
    assert order.index(clock.stage(due, early)) <= order.index(clock.stage(due, late))
    assert clock.stage(due, due) is not Stage.BREACHED  # the due date itself is still in time
    assert clock.stage(due, due + timedelta(days=1)) is Stage.BREACHED


def test_escalation_and_rectification_limits():
    d = clock.escalation_deadlines(date(2026, 9, 29))   # a Tuesday before 国庆: 30 Sep, 8, 9, 10 (Sat), 12 Oct
    assert d.reply_due == date(2026, 10, 9) and d.resolve_due == date(2026, 10, 12)  # 3 and 5 working days
    assert clock.escalation_deadlines(date(2026, 9, 29), 10).resolve_due == date(2026, 10, 19) \
        == by_chinese_calendar(date(2026, 9, 29), 10)
    with pytest.raises(ValueError, match="at most|1..10"):
        clock.escalation_deadlines(date(2026, 9, 29), 11)
    assert clock.rectification_due(date(2026, 9, 30)) == by_chinese_calendar(date(2026, 9, 30), 15)


def test_today_can_be_pinned_and_a_bad_pin_is_explained():
    assert today_in_china({"ONETHING_TODAY": "2026-12-31"}) == date(2026, 12, 31)
    with pytest.raises(ValueError, match="ONETHING_TODAY must be an ISO date"):
        today_in_china({"ONETHING_TODAY": "31/12/2026"})


# -- what the tick raises ---------------------------------------------------------------------------
def row(scope="service", subject="tax.newborn_premium", due=date(2026, 10, 12), warned=None, breached=None):
    return ("case-1", scope, subject, "tax", "case-1:tax.newborn_premium:1", due, "cause-1", "corr-1", "440203",
            warned, breached, "newborn")


def test_a_deadline_two_days_out_is_quiet_one_day_out_approaches_and_the_day_after_breaches():
    assert alarms([row()], date(2026, 10, 8)) == []                      # 2 working days left (9, 10 Oct)
    (warn,) = alarms([row()], date(2026, 10, 10))                         # 1 working day left
    assert warn.event.type == "DeadlineApproaching" and warn.event.payload["working_days_left"] == 1
    breach, escalation = alarms([row()], date(2026, 10, 13))
    assert breach.event.type == "DeadlineBreached" and breach.event.payload["working_days_overdue"] == 1
    assert escalation.event.type == "CaseEscalated" and escalation.event.payload["origin"] == "deadline"
    assert escalation.event.payload["service_id"] == "tax.newborn_premium"
    assert breach.event.envelope.causation_id == "cause-1" and breach.event.envelope.correlation_id == "corr-1"


def test_what_was_raised_is_not_raised_again_and_a_rerun_raises_the_same_ids():
    assert alarms([row(warned=date(2026, 10, 12))], date(2026, 10, 10)) == []
    first = [a.event.id for a in alarms([row()], date(2026, 10, 13))]
    again = [a.event.id for a in alarms([row()], date(2026, 10, 20))]   # a crash before the mark, a week on
    assert first == again and len(set(first)) == 2
    moved = [a.event.id for a in alarms([row(due=date(2026, 10, 14))], date(2026, 10, 20))]
    assert not set(moved) & set(first)   # a due date moved by a pause is a new deadline


def test_only_a_service_escalates_by_itself():
    for scope in ("case", "escalation_reply", "escalation_resolution", "rectification"):
        raised = alarms([row(scope=scope, subject="" if scope == "case" else "x")], date(2026, 10, 20))
        assert [a.event.type for a in raised] == ["DeadlineBreached"]


def test_the_clock_declares_every_type_it_handles():
    """The runtime skips undeclared types undecoded: a handler missing from the list would never run."""
    from projectors.deadlines import HANDLED, DeadlineClockProjection

    assert HANDLED == {n[4:] for n in dir(DeadlineClockProjection) if n.startswith("_on_")}
