"""The KPIs' pure rules (晴雨表, projectors/kpis.py), as properties (hypothesis): percentiles (and
PostgreSQL's percentile_disc agreeing with them), on time and overdue, the on-time and
satisfaction rates, materials saved, the pauses of a 补正 and the case clock, a service's fact from
its attempts. The model they feed is in tests/test_kpis.py.
"""
from __future__ import annotations

import random
from datetime import date, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from projectors import kpis as K
from projectors.deadline_clock import china_date

from .support.scale import scaled
from .support.kpi_scenarios import DAY0, at


# -- the pure rules ---------------------------------------------------------------------------------
@given(st.lists(st.integers(0, 60), min_size=1, max_size=60), st.floats(0, 1))
def test_percentile_is_a_value_of_the_list_with_at_least_q_at_or_below_it(values, q):
    p = K.percentile(values, q)
    assert p in values
    assert sum(v <= p for v in values) >= q * len(values) - 1e-9
    assert sum(v < p for v in values) < max(q * len(values), 1)  # and it is the smallest such value
    assert K.percentile(random.sample(values, len(values)), q) == p


@given(st.lists(st.integers(0, 60), min_size=1, max_size=40))
def test_percentile_bounds_and_monotonic(values):
    assert K.percentile(values, 0) == min(values) and K.percentile(values, 1) == max(values)
    qs = [K.percentile(values, q / 10) for q in range(11)]
    assert qs == sorted(qs)
    assert K.percentile([], 0.9) is None
    with pytest.raises(ValueError):
        K.percentile(values, 1.5)


def test_p90_of_ten_days_is_the_ninth():
    assert K.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9) == 9
    assert K.percentile([0, 2, 4, 7], 0.9) == 7


_dates = st.dates(date(2026, 1, 1), date(2026, 12, 31))


@given(st.one_of(st.none(), _dates), st.one_of(st.none(), _dates), _dates, st.booleans())
def test_on_time_rule(due, ended, today, paused):
    t = K.timeliness(due, ended, today, paused=paused)
    if due is None:
        assert t == "no_limit"
    elif ended is not None:
        assert t == ("on_time" if ended <= due else "late")  # the due date itself is in time
    elif paused or today <= due:
        assert t == "open"
    else:
        assert t == "overdue_open"


@given(st.integers(0, 1000), st.integers(0, 1000))
def test_on_time_rate(on_time, overdue):
    r = K.on_time_rate(on_time, overdue)
    if on_time + overdue == 0:
        assert r is None
    else:
        assert 0 <= r <= 1 and r * (on_time + overdue) == pytest.approx(on_time)
    assert K.on_time_rate(3, 1) == 0.75


@given(st.dictionaries(st.sampled_from(K.GRADES), st.integers(0, 50)))
def test_satisfaction_rate(counts):
    r = K.satisfaction_rate(counts)
    total = sum(counts.values())
    if total == 0:
        assert r is None
        return
    good = counts.get("very_satisfied", 0) + counts.get("satisfied", 0) + counts.get("basically_satisfied", 0)
    assert r == pytest.approx(good / total) and 0 <= r <= 1
    worse = dict(counts)
    worse["dissatisfied"] = worse.get("dissatisfied", 0) + 1
    assert K.satisfaction_rate(worse) < r or r == 0


def test_satisfaction_counts_basically_satisfied_as_satisfied():
    assert K.satisfaction_rate({"very_satisfied": 1, "basically_satisfied": 1, "dissatisfied": 2}) == 0.5
    with pytest.raises(ValueError):
        K.satisfaction_rate({"meh": 1})


_refs = st.lists(st.tuples(st.sampled_from(["id_card", "household_register", "invoice", "summary"]),
                           st.sampled_from(["uploaded", "fetched", "promised"]), st.integers(0, 5)), max_size=12)


@given(_refs, st.randoms())
def test_materials_saved_counts_each_material_once_by_its_latest_reference_in_any_order(refs, rnd):
    m = K.materials_saved(refs)
    codes = {c for c, _s, _t in refs}
    assert m.fetched + m.uploaded + m.promised == len(codes)
    shuffled = list(refs)
    rnd.shuffle(shuffled)
    assert K.materials_saved(shuffled) == m
    assert K.materials_saved(refs + refs) == m


def test_a_promised_material_uploaded_later_is_not_saved_but_an_e_licence_is():
    refs = [("id_card", "fetched", 1), ("summary", "promised", 1), ("summary", "uploaded", 2)]
    assert K.materials_saved(refs) == K.MaterialCounts(fetched=1, uploaded=1, promised=0)


_moments = st.builds(lambda d, h: at(d, h), st.dates(date(2026, 6, 1), date(2026, 6, 30)), st.integers(8, 18))


@given(st.lists(st.tuples(st.sampled_from(["request", "supply"]), _moments), max_size=8), st.randoms())
def test_pauses_do_not_depend_on_the_order_they_are_seen_in(events, rnd):
    days, since = K.pauses_of(events)
    assert days >= 0
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert K.pauses_of(shuffled) == (days, since)
    # Beijing calendar days: a request on Sunday 09:00 and its supplement on Monday 08:00 (23 hours)
    # stopped the clock for Monday, the day the applicant answered
    span = (china_date(max(e[1] for e in events)) - china_date(min(e[1] for e in events))).days if events else 0
    assert days <= span


def test_case_clock_stops_for_a_correction():
    pauses = [("request", at(DAY0, 11)), ("supply", at(date(2026, 6, 4)))]
    cc = K.case_clock(DAY0, date(2026, 6, 10), 5, pauses)
    assert cc.paused_days == 3 and cc.due_date == date(2026, 6, 11) and cc.days_used == 7 - 3
    assert K.timeliness(cc.due_date, date(2026, 6, 10), date(2026, 6, 30)) == "on_time"
    still = K.case_clock(DAY0, None, 5, pauses[:1])
    assert still.paused_since == DAY0 and still.days_used is None


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 6), st.integers(0, 4),
                          st.sampled_from([None, "correction_requested", "approved", "rejected"])),
                min_size=1, max_size=3, unique_by=lambda a: a[0]), st.randoms())
def test_service_fact_is_a_function_of_its_attempts(spec, rnd):
    attempts = [K.Attempt(n, at(DAY0 + timedelta(days=d)), DAY0 + timedelta(days=d + 3),
                          at(DAY0 + timedelta(days=d + e)) if o else None, o) for n, d, e, o in spec]
    fact = K.service_fact(attempts)
    assert K.service_fact(rnd.sample(attempts, len(attempts))) == fact
    finals = [a for a in attempts if a.outcome in ("approved", "rejected")]
    assert (fact.status in ("approved", "rejected")) == bool(finals)
    if fact.days_used is not None:
        assert fact.days_used >= 0


@pytest.mark.postgres
@hsettings(max_examples=scaled(25, 12), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.integers(0, 40), min_size=1, max_size=50), q=st.sampled_from([0.5, 0.9, 0.95]))
def test_percentile_agrees_with_postgres_percentile_disc(database_url, values, q):
    with psycopg.connect(database_url) as conn:
        pg = conn.execute("SELECT percentile_disc(%s) WITHIN GROUP (ORDER BY v) FROM unnest(%s::int[]) AS v",
                          (q, values)).fetchone()[0]
    assert pg == K.percentile(values, q)
