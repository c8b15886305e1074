"""The statutory retirement age of the 2025 reform (catalog/retirement_age.py): pure, Hypothesis.

Rows of the law's annex tables (国务院关于渐进式延迟法定退休年龄的办法, 附件 1–3: birth month → age →
retirement month), and the properties every row must have: monotone in the birth date, within
the original and the new age, the original age for births before the start.
"""
from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog.proactive_rules import default_rules
from catalog.retirement_age import (MEN, WOMEN_CADRE, WOMEN_WORKER, add_months, retirement_age_months,
                                    retirement_date, scheme_for)
from projectors import proactive_plan as pp

ANNEX = [  # (sex, job type, born year-month, age years, age months, retires year-month)
    ("male", None, (1964, 12), 60, 0, (2024, 12)),     # before the start: the original age
    ("male", None, (1965, 1), 60, 1, (2025, 2)),
    ("male", None, (1965, 4), 60, 1, (2025, 5)),
    ("male", None, (1965, 5), 60, 2, (2025, 7)),
    ("male", None, (1965, 9), 60, 3, (2025, 12)),
    ("male", None, (1966, 1), 60, 4, (2026, 5)),
    ("male", None, (1970, 1), 61, 4, (2031, 5)),
    ("male", None, (1976, 8), 62, 11, (2039, 7)),
    ("male", None, (1976, 9), 63, 0, (2039, 9)),      # the new age reached
    ("male", None, (1990, 6), 63, 0, (2053, 6)),
    ("female", "cadre", (1969, 12), 55, 0, (2024, 12)),
    ("female", "cadre", (1970, 1), 55, 1, (2025, 2)),
    ("female", "cadre", (1970, 5), 55, 2, (2025, 7)),
    ("female", "cadre", (1981, 8), 57, 11, (2039, 7)),
    ("female", "cadre", (1981, 9), 58, 0, (2039, 9)),
    ("female", "worker", (1974, 12), 50, 0, (2024, 12)),
    ("female", "worker", (1975, 1), 50, 1, (2025, 2)),
    ("female", "worker", (1975, 3), 50, 2, (2025, 5)),
    ("female", "worker", (1980, 1), 52, 7, (2032, 8)),
    ("female", "worker", (1984, 10), 54, 11, (2039, 9)),
    ("female", "worker", (1984, 11), 55, 0, (2039, 11)),
]


@pytest.mark.parametrize("sex,job,born,years,months,retires", ANNEX)
def test_the_annex_tables(sex, job, born, years, months, retires):
    d = date(*born, 15)
    assert retirement_age_months(d, sex, job) == years * 12 + months
    r = retirement_date(d, sex, job)
    assert (r.year, r.month) == retires and r.day == 15


def test_the_day_is_the_birthday_or_the_end_of_a_shorter_month():
    assert retirement_date(date(1965, 1, 31), "male") == date(2025, 2, 28)       # 60y1m, February
    assert retirement_date(date(1966, 1, 31), "male") == date(2026, 5, 31)
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)
    assert add_months(date(2024, 12, 5), 1) == date(2025, 1, 5)


def test_a_woman_of_unknown_job_type_is_taken_as_a_cadre_and_sex_is_required():
    assert scheme_for("female") is WOMEN_CADRE and scheme_for("female", "worker") is WOMEN_WORKER
    assert scheme_for("male", "worker") is MEN   # the job type changes nothing for men
    with pytest.raises(ValueError, match="sex"):
        scheme_for("unknown")


BIRTHS = st.dates(date(1940, 1, 1), date(2005, 12, 31))
PEOPLE = st.sampled_from([("male", None, MEN), ("female", "cadre", WOMEN_CADRE), ("female", "worker", WOMEN_WORKER)])


@settings(max_examples=400, deadline=None)
@given(person=PEOPLE, a=BIRTHS, b=BIRTHS)
def test_later_births_never_retire_earlier_nor_at_a_lower_age(person, a, b):
    sex, job, _ = person
    first, second = sorted((a, b))
    assert retirement_age_months(first, sex, job) <= retirement_age_months(second, sex, job)
    assert retirement_date(first, sex, job) <= retirement_date(second, sex, job)


@settings(max_examples=400, deadline=None)
@given(person=PEOPLE, born=BIRTHS)
def test_the_age_stays_between_the_original_and_the_new_age(person, born):
    sex, job, scheme = person
    months = retirement_age_months(born, sex, job)
    low, high = {MEN: (60, 63), WOMEN_CADRE: (55, 58), WOMEN_WORKER: (50, 55)}[scheme]
    assert low * 12 <= months <= high * 12
    starts = date(scheme.starts[0], scheme.starts[1], 1)
    if born < starts:
        assert months == scheme.original_years * 12      # nobody born before the start waits longer
    else:
        assert months > scheme.original_years * 12
    r = retirement_date(born, sex, job)
    assert (r.year * 12 + r.month) - (born.year * 12 + born.month) == months   # the annex's month


@settings(max_examples=200, deadline=None)
@given(person=PEOPLE, born=st.dates(date(1965, 1, 1), date(1990, 12, 31)))
def test_one_step_of_birth_months_adds_at_most_one_month(person, born):
    sex, job, scheme = person
    later = add_months(born, scheme.months_per_step)
    assert 0 <= retirement_age_months(later, sex, job) - retirement_age_months(born, sex, job) <= 1


def test_the_retirement_rule_fires_at_the_statutory_date():
    t = default_rules().get("retirement_offer").trigger
    assert t.retirement_age == "statutory_2025"
    assert pp.trigger_date(t, {"birth_date": "1965-02-05", "sex": "male"}) == date(2025, 3, 5)     # 60y1m
    assert pp.trigger_date(t, {"birth_date": "1964-12-05", "sex": "male"}) == date(2024, 12, 5)    # 60
    assert pp.trigger_date(t, {"birth_date": "1975-01-02", "sex": "female", "job_type": "worker"}) \
        == date(2025, 2, 2)                                                                        # 50y1m
    assert pp.trigger_date(t, {"birth_date": "1975-01-02", "sex": "female"}) == date(2031, 5, 2)    # 干部: 56y4m
    assert pp.trigger_date(t, {"birth_date": "1975-01-02", "sex": "female", "job_type": "pilot"}) \
        == date(2031, 5, 2)   # a job type the law does not know: the default (干部)
    assert pp.trigger_date(t, {"birth_date": "1970-01-02"}) is None    # no sex recorded: no age


def test_a_rule_naming_an_unknown_retirement_law_is_refused_with_file_and_line(tmp_path):
    from catalog.loader import CatalogError, load_catalog
    from catalog.proactive_rules import load_rules

    (tmp_path / "bad.yaml").write_text("""\
- code: r1
  zh: 退休
  en: Retirement
  bundle: retirement
  trigger:
    date: {licence: id_card, field: birth_date, retirement_age: statutory_1978, default_job: cadre}
  outcome:
    offer:
      lapse_after: {working_days: 60, source: "x"}
  source: "x"
- code: r2
  zh: 退休
  en: Retirement
  bundle: retirement
  trigger:
    date: {licence: id_card, field: birth_date, retirement_age: statutory_2025, default_job: pilot, source: "x"}
  outcome:
    offer:
      lapse_after: {working_days: 60, source: "x"}
  source: "x"
""", encoding="utf-8")
    with pytest.raises(CatalogError) as exc:
        load_rules(load_catalog(), tmp_path)
    text = str(exc.value)
    assert "bad.yaml:6: rule r1: trigger.date: retirement_age must be one of ['statutory_2025']" in text
    assert "rule r1: trigger.date: give a `source`" in text          # a law's age names its source
    assert "bad.yaml:16: rule r2: trigger.date: default_job must be one of ['cadre', 'worker']" in text
