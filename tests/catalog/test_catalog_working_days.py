"""工作日 arithmetic: agrees with chinese_calendar wherever it has data, honours loaded
arrangements, and keeps working (weekends only, with a warning and a metric) elsewhere."""
from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import chinese_calendar
import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from catalog import working_days as wd
from catalog.working_days import (CalendarFileError, WorkingCalendar, add_working_days, is_working_day,
                                  load_arrangement, parse_arrangement, working_days_between)
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def brute_force_add(start: date, n: int) -> date:
    day, left = start, n
    while left:
        day += timedelta(days=1)
        if chinese_calendar.is_workday(day):
            left -= 1
    return day


@settings(max_examples=300, deadline=None)
@given(st.dates(date(2004, 1, 1), date(2026, 9, 30)), st.integers(0, 40))
def test_agrees_with_chinese_calendar_on_every_covered_day(start, n):
    deadline = add_working_days(start, n)
    assert deadline == brute_force_add(start, n)
    assert working_days_between(start, deadline) == n
    assert is_working_day(deadline) == chinese_calendar.is_workday(deadline)


def test_spring_festival_2026_with_its_make_up_saturday():
    # received Thu 12 Feb; Fri 13 and the 调休 Saturday 14 Feb count; 15-23 Feb are off
    assert is_working_day(date(2026, 2, 14)) and not is_working_day(date(2026, 2, 16))
    assert add_working_days(date(2026, 2, 12), 3) == date(2026, 2, 24) == brute_force_add(date(2026, 2, 12), 3)
    assert add_working_days(datetime(2026, 2, 12, 17, 30), 3) == date(2026, 2, 24)
    assert working_days_between(date(2026, 2, 12), date(2026, 2, 24)) == 3


def test_national_day_2025_with_make_up_sunday_and_saturday():
    # received Fri 26 Sep: Sun 28 Sep (调休), 29, 30, then 9, 10 Oct and the 调休 Saturday 11 Oct
    assert add_working_days(date(2025, 9, 26), 6) == date(2025, 10, 11) == brute_force_add(date(2025, 9, 26), 6)
    assert add_working_days(date(2025, 9, 26), 7) == date(2025, 10, 13)
    assert add_working_days(date(2025, 10, 13), -7) == date(2025, 9, 26)
    assert working_days_between(date(2025, 10, 11), date(2025, 9, 26)) == -6


def _unknown_year_count(year: int) -> float:
    return REGISTRY.get_sample_value("onething_calendar_unknown_year_total", {"year": str(year)}) or 0.0


def test_a_year_nobody_loaded_falls_back_to_weekends_with_one_warning_and_a_metric():
    calendar = WorkingCalendar()  # chinese_calendar has no 2031
    before = _unknown_year_count(2031)
    with capture_logs() as logs:
        assert calendar.add_working_days(date(2031, 3, 7), 1) == date(2031, 3, 10)   # Fri → Mon
        assert calendar.is_working_day(date(2031, 10, 1))  # National Day unknown: treated as a Wednesday
        assert calendar.working_days_between(date(2031, 1, 1), date(2031, 1, 31)) == 22
    warnings = [e for e in logs if e["event"] == "calendar.unknown_year"]
    assert len(warnings) == 1
    assert warnings[0]["year"] == 2031 and warnings[0]["log_level"] == "warning"
    assert "catalog/calendar/2031.yaml" in warnings[0]["hint"]
    assert _unknown_year_count(2031) == before + 3
    assert not calendar.knows(2031)


def test_a_loaded_arrangement_is_honoured():
    fictional = load_arrangement(FIXTURES / "calendar_2030_fictional.yaml")
    assert fictional.estimate and fictional.year == 2030
    calendar = WorkingCalendar().with_arrangement(fictional)
    before = _unknown_year_count(2030)
    with capture_logs() as logs:
        assert not calendar.is_working_day(date(2030, 2, 4))      # a Monday off
        assert calendar.is_working_day(date(2030, 2, 9))          # a Saturday worked
        assert calendar.add_working_days(date(2030, 2, 1), 2) == date(2030, 2, 11)  # Fri → Sat 9 → Mon 11
        assert calendar.add_working_days(date(2030, 9, 30), 1) == date(2030, 10, 2)
    assert not [e for e in logs if e["event"] == "calendar.unknown_year"]
    assert _unknown_year_count(2030) == before
    assert calendar.knows(2030)


def test_operator_data_overrides_the_package_and_the_package_can_be_left_out():
    correction = parse_arrangement({"year": 2026, "source": "test: a correction", "holidays": ["2026-03-02"]})
    calendar = WorkingCalendar({2026: correction})
    assert not calendar.is_working_day(date(2026, 3, 2))
    assert calendar.is_working_day(date(2026, 2, 16))  # the loaded year replaces the package's data
    only_loaded = WorkingCalendar(builtin=None)
    assert not only_loaded.knows(2025)


@pytest.mark.parametrize("doc, problem", [
    ({"year": 2030, "source": "x", "holidays": ["2031-01-01"]}, "is not in 2030"),
    ({"year": 2030, "source": "x", "make_up_workdays": ["2030-02-04"]}, "is a weekday already"),
    ({"year": 2030, "source": "x", "holidays": ["2030-02-09"], "make_up_workdays": ["2030-02-09"]},
     "as a holiday and as a make-up working day"),
    ({"year": 2030, "holidays": []}, "'source' must say where"),
    ({"year": 2030, "source": "x", "holidays": [{"from": "2030-02-08", "to": "2030-02-04"}]}, "'to' is before"),
    ({"year": 2030, "source": "x", "holiday": []}, "unknown keys"),
])
def test_a_bad_arrangement_is_refused_with_a_reason(doc, problem):
    with pytest.raises(CalendarFileError, match=problem):
        parse_arrangement(doc, "2030.yaml")


def test_the_shipped_calendar_directory_holds_no_guessed_year():
    assert wd.load_arrangements(wd.CALENDAR_DIR) == {}
    assert (wd.CALENDAR_DIR / "README.md").exists()
