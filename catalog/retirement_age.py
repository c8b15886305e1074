"""The statutory retirement age and date after the 2025 reform (渐进式延迟法定退休年龄), pure.

Source: 全国人民代表大会常务委员会关于实施渐进式延迟法定退休年龄的决定 (adopted 2024-09-13, in force
2025-01-01) and its 国务院关于渐进式延迟法定退休年龄的办法 with the annex tables 1–3:

    men                     60 → 63   +1 month for every 4 months of birth from January 1965
    women, original age 55  55 → 58   +1 month for every 4 months of birth from January 1970
    (干部 / 管理岗位)
    women, original age 50  50 → 55   +1 month for every 2 months of birth from January 1975
    (工人 / 生产岗位)

Someone born before the start keeps the original age; the raise stops at the new age (a man born
September 1976 or later retires at 63; a woman worker born November 1984 or later at 55).

The annex gives the retirement *month* (改革后退休时间, e.g. a man born 1965-01 retires 2025-02);
the date here is the birth date moved on by the age in months, the day clamped to the month's
end (born 31 May, 60 years and 1 month → 30 June), so it always falls in the annex's month.

Not modelled: 弹性提前退休 (retiring up to three years earlier, never below the original age) and
弹性延迟退休, both at the person's request; and from 2030 the minimum contribution years rise from
15 to 20 (a person short of them may retire later). A proactive offer is made at the statutory
date, which is the day a person may retire without asking for anything.
"""
from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date

SEXES = ("male", "female")
JOB_TYPES = ("cadre", "worker")   # 干部 (original age 55) / 工人 (original age 50): women only


@dataclass(frozen=True)
class Scheme:
    """One row of the law: the original age, the first birth month raised, the step, the cap."""
    original_years: int
    starts: tuple[int, int]          # (year, month) of the first birth month that retires later
    months_per_step: int             # births per month of raise
    max_raise_months: int

    def raise_months(self, born: date) -> int:
        since = (born.year - self.starts[0]) * 12 + (born.month - self.starts[1])
        if since < 0:
            return 0
        return min(self.max_raise_months, since // self.months_per_step + 1)


MEN = Scheme(60, (1965, 1), 4, 36)
WOMEN_CADRE = Scheme(55, (1970, 1), 4, 36)
WOMEN_WORKER = Scheme(50, (1975, 1), 2, 60)


def scheme_for(sex: str, job_type: str | None = None) -> Scheme:
    """The law's row for a person. A woman of unknown job type is taken as 干部 (the later age:
    never offered before she may retire)."""
    if sex == "male":
        return MEN
    if sex == "female":
        return WOMEN_WORKER if job_type == "worker" else WOMEN_CADRE
    raise ValueError(f"sex must be one of {SEXES}")


def retirement_age_months(born: date, sex: str, job_type: str | None = None) -> int:
    """The statutory retirement age in months for a person born on `born`."""
    s = scheme_for(sex, job_type)
    return s.original_years * 12 + s.raise_months(born)


def add_months(d: date, months: int) -> date:
    """`d` moved on by `months`, the day clamped to the end of the month it lands in."""
    total = d.year * 12 + d.month - 1 + months
    year, month = divmod(total, 12)
    month += 1
    return date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def retirement_date(born: date, sex: str, job_type: str | None = None) -> date:
    """The day a person reaches the statutory retirement age (2025 reform)."""
    return add_months(born, retirement_age_months(born, sex, job_type))
