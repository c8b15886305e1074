"""工作日: deadline arithmetic in Chinese working days, holidays and 调休 make-up days honoured.

Every statutory and promised limit is counted in working days, so a wrong calendar means
wrong overdue flags and wrong escalations. Sources of truth, most specific first:

1. arrangements an operator loaded (YAML under catalog/calendar/, or a DB row later): the
   State Council publishes next year's arrangement each November, long before a package
   release catches up;
2. the `chinese_calendar` package (years it ships data for, currently 2004-2026);
3. otherwise weekends only. That is a guess, so it is logged once per year and counted in
   `onething_calendar_unknown_year_total{year}`, and never raises: a case system that
   stops computing deadlines on 1 January is worse than one that is off by a holiday.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from threading import Lock
from typing import Any, Callable, Iterable, Mapping

import structlog
from prometheus_client import Counter

__all__ = [
    "YearArrangement", "WorkingCalendar", "CalendarFileError", "UNKNOWN_YEAR",
    "parse_arrangement", "load_arrangement", "load_arrangements", "default_calendar",
    "add_working_days", "working_days_between", "is_working_day", "CALENDAR_DIR",
]

log = structlog.get_logger("catalog.working_days")

UNKNOWN_YEAR = Counter(
    "onething_calendar_unknown_year",
    "Working-day computations that fell back to weekends-only because no holiday arrangement "
    "is known for the year (load catalog/calendar/<year>.yaml)",
    ["year"])

CALENDAR_DIR = Path(__file__).resolve().parent / "calendar"


@dataclass(frozen=True)
class YearArrangement:
    """One year's 节假日安排: weekdays off, and weekend days worked instead (调休)."""
    year: int
    holidays: frozenset[date]
    make_up_workdays: frozenset[date]
    source: str
    estimate: bool = False

    def is_working_day(self, d: date) -> bool:
        if d in self.make_up_workdays:
            return True
        if d in self.holidays:
            return False
        return d.weekday() < 5


class CalendarFileError(ValueError):
    """A holiday arrangement that cannot be used; the message says which entry and why."""


def _dates(entry: Any, where: str) -> list[date]:
    """A date, or a {from, to} range (both inclusive), optionally with a name."""
    if isinstance(entry, datetime):
        raise CalendarFileError(f"{where}: give a date (YYYY-MM-DD), not a time")
    if isinstance(entry, date):
        return [entry]
    if isinstance(entry, str):
        try:
            return [date.fromisoformat(entry)]
        except ValueError:
            raise CalendarFileError(f"{where}: {entry!r} is not a date (YYYY-MM-DD)") from None
    if isinstance(entry, Mapping) and "from" in entry:
        start = _dates(entry["from"], where)[0]
        end = _dates(entry.get("to", entry["from"]), where)[0]
        if end < start:
            raise CalendarFileError(f"{where}: 'to' is before 'from'")
        return [start + timedelta(days=i) for i in range((end - start).days + 1)]
    raise CalendarFileError(f"{where}: expected a date or {{name, from, to}}")


def parse_arrangement(doc: Mapping[str, Any], origin: str = "<arrangement>") -> YearArrangement:
    """Build a year's arrangement from plain data (a parsed YAML file or a database row).

    Refuses the mistakes that would silently shift deadlines: dates outside the year, a
    day both off and worked, a make-up "working day" that is already a weekday.
    """
    if not isinstance(doc, Mapping):
        raise CalendarFileError(f"{origin}: expected a mapping with year, source, holidays, make_up_workdays")
    unknown = set(doc) - {"year", "source", "estimate", "note", "holidays", "make_up_workdays"}
    if unknown:
        raise CalendarFileError(f"{origin}: unknown keys {sorted(unknown)}")
    year = doc.get("year")
    if isinstance(year, bool) or not isinstance(year, int):
        raise CalendarFileError(f"{origin}: 'year' must be a year like 2027")
    source = doc.get("source")
    if not isinstance(source, str) or not source.strip():
        raise CalendarFileError(f"{origin}: 'source' must say where the arrangement comes from "
                                "(e.g. the 国务院办公厅 notice)")
    estimate = doc.get("estimate", False)
    if not isinstance(estimate, bool):
        raise CalendarFileError(f"{origin}: 'estimate' must be true or false")
    holidays: set[date] = set()
    for i, entry in enumerate(doc.get("holidays") or ()):
        holidays.update(_dates(entry, f"{origin}: holidays[{i}]"))
    workdays: set[date] = set()
    for i, entry in enumerate(doc.get("make_up_workdays") or ()):
        workdays.update(_dates(entry, f"{origin}: make_up_workdays[{i}]"))
    for d in sorted(holidays | workdays):
        if d.year != year:
            raise CalendarFileError(f"{origin}: {d.isoformat()} is not in {year}")
    both = holidays & workdays
    if both:
        raise CalendarFileError(f"{origin}: {min(both).isoformat()} is listed as a holiday and as a make-up working day")
    for d in sorted(workdays):
        if d.weekday() < 5:
            raise CalendarFileError(f"{origin}: make-up working day {d.isoformat()} is a weekday already")
    return YearArrangement(year, frozenset(holidays), frozenset(workdays), source, estimate)


def load_arrangement(path: str | os.PathLike) -> YearArrangement:
    """Read one `<year>.yaml` arrangement file (format: catalog/calendar/README.md)."""
    import yaml
    with open(path, encoding="utf-8") as fh:
        try:
            doc = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise CalendarFileError(f"{path}: not valid YAML: {exc}") from None
    return parse_arrangement(doc, str(path))


def load_arrangements(directory: str | os.PathLike) -> dict[int, YearArrangement]:
    """Every `*.yaml` arrangement in a directory, by year; two files for one year is an error."""
    out: dict[int, YearArrangement] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        arrangement = load_arrangement(path)
        if arrangement.year in out:
            raise CalendarFileError(f"{path}: a second arrangement for {arrangement.year}")
        out[arrangement.year] = arrangement
    return out


def _chinese_calendar_lookup(d: date) -> bool | None:
    """chinese_calendar's answer, or None for a year it has no data for."""
    import chinese_calendar
    try:
        return chinese_calendar.is_workday(d)
    except NotImplementedError:
        return None


@dataclass
class WorkingCalendar:
    """Which days count as 工作日; pure apart from the once-per-year warning and counter.

    `arrangements` (operator data) take precedence over `builtin` (a lookup returning None
    for years it does not know; chinese_calendar by default, or None to use only the
    arrangements, e.g. in tests).
    """
    arrangements: Mapping[int, YearArrangement] = field(default_factory=dict)
    builtin: Callable[[date], bool | None] | None = _chinese_calendar_lookup
    _known_builtin_years: dict[int, bool] = field(default_factory=dict, init=False, repr=False)
    # the builtin's answers, remembered: chinese_calendar validates and scans its tables on each call,
    # and every dispatched task asks it for several days
    _builtin_days: dict[date, bool] = field(default_factory=dict, init=False, repr=False)
    _warned: set[int] = field(default_factory=set, init=False, repr=False)
    _lock: Lock = field(default_factory=Lock, init=False, repr=False)

    def with_arrangement(self, arrangement: YearArrangement) -> "WorkingCalendar":
        """A new calendar that also honours `arrangement` (replacing any for the same year)."""
        return WorkingCalendar({**self.arrangements, arrangement.year: arrangement}, self.builtin)

    def knows(self, year: int) -> bool:
        """True when some source has that year's holidays (not merely weekends)."""
        if year in self.arrangements:
            return True
        if self.builtin is None:
            return False
        if year not in self._known_builtin_years:
            self._known_builtin_years[year] = self.builtin(date(year, 6, 1)) is not None
        return self._known_builtin_years[year]

    def _day(self, d: date, guessed: set[int]) -> bool:
        arrangement = self.arrangements.get(d.year)
        if arrangement is not None:
            return arrangement.is_working_day(d)
        if self.knows(d.year):
            answer = self._builtin_days.get(d)
            if answer is None:
                answer = self.builtin(d)
                if answer is not None:
                    self._builtin_days[d] = answer
            if answer is not None:
                return answer
        guessed.add(d.year)
        return d.weekday() < 5

    def _report(self, guessed: set[int]) -> None:
        for year in sorted(guessed):
            UNKNOWN_YEAR.labels(year=str(year)).inc()
            with self._lock:
                first = year not in self._warned
                self._warned.add(year)
            if first:
                log.warning("calendar.unknown_year", year=year, fallback="weekends_only",
                            hint=f"load the {year} holiday arrangement: catalog/calendar/{year}.yaml")

    def is_working_day(self, d: date | datetime) -> bool:
        guessed: set[int] = set()
        try:
            return self._day(_as_date(d), guessed)
        finally:
            self._report(guessed)

    def add_working_days(self, start: date | datetime, n: int) -> date:
        """The day on which the n-th working day after `start` ends: a deadline.

        The day of receipt is not counted (a 1-working-day limit on a Friday ends on Monday);
        n = 0 is `start` itself; negative n counts backwards.
        """
        day = _as_date(start)
        step = 1 if n >= 0 else -1
        left = abs(n)
        guessed: set[int] = set()
        try:
            while left:
                day += timedelta(days=step)
                if self._day(day, guessed):
                    left -= 1
            return day
        finally:
            self._report(guessed)

    def working_days_between(self, a: date | datetime, b: date | datetime) -> int:
        """Working days in (a, b]: how many working days of a limit have been used by `b`.

        The inverse of add_working_days: working_days_between(a, add_working_days(a, n)) == n.
        Negative when b is before a.
        """
        a, b = _as_date(a), _as_date(b)
        if b < a:
            return -self.working_days_between(b, a)
        guessed: set[int] = set()
        try:
            return sum(self._day(a + timedelta(days=i), guessed) for i in range(1, (b - a).days + 1))
        finally:
            self._report(guessed)


def _as_date(d: date | datetime) -> date:
    if isinstance(d, datetime):
        return d.date()
    if isinstance(d, date):
        return d
    raise TypeError(f"expected a date or datetime, got {type(d).__name__}")


_default: WorkingCalendar | None = None
_default_lock = Lock()


def default_calendar() -> WorkingCalendar:
    """chinese_calendar plus every arrangement file shipped in catalog/calendar/."""
    global _default
    with _default_lock:
        if _default is None:
            _default = WorkingCalendar(load_arrangements(CALENDAR_DIR) if CALENDAR_DIR.is_dir() else {})
        return _default


def add_working_days(start: date | datetime, n: int, calendar: WorkingCalendar | None = None) -> date:
    return (calendar or default_calendar()).add_working_days(start, n)


def working_days_between(a: date | datetime, b: date | datetime, calendar: WorkingCalendar | None = None) -> int:
    return (calendar or default_calendar()).working_days_between(a, b)


def is_working_day(d: date | datetime, calendar: WorkingCalendar | None = None) -> bool:
    return (calendar or default_calendar()).is_working_day(d)


def covered_years(calendar: WorkingCalendar, years: Iterable[int]) -> dict[int, str]:
    """For an operator's check: each year → 'loaded', 'builtin' or 'weekends only'."""
    return {y: "loaded" if y in calendar.arrangements else "builtin" if calendar.knows(y) else "weekends only"
            for y in years}
