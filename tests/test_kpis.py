"""The KPIs read model (晴雨表): the pure rules (hypothesis), the same figures in any cross-topic
order on real PostgreSQL, the projection runner through the real broker, and the HTTP API.

Scenarios come from the dispatch fold itself (`case_state`), so task ids, due dates and
completions are the ones the dispatch processor derives. Every model is built in a PostgreSQL
schema of its own under a projection name of its own; the real-broker test publishes to topics
of its own (`kpitest-<run>.*`) so nobody else's processors answer its tasks.
"""
from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from psycopg import sql

from catalog.loader import load_catalog
from catalog.working_days import add_working_days
from events import bus, kafka_auth
from events.envelope import Actor, Event, new_event
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic
from producers import identity
from producers.kpi_api import create_router
from projectors import case_state
from projectors import kpis as K
from projectors.deadline_clock import china_date
from projectors.postgres_projection import ProjectionRunner

from .support.orders import scramble
from .support.scale import scaled
from .support.newborn import submission
from .support.offsets import seed_offsets

CAT = load_catalog()
RUN = uuid.uuid4().hex[:8]
CHINA = timezone(timedelta(hours=8))
DAY0 = date(2026, 6, 1)  # a Monday; 2026-06-08 is the 5th working day after it (端午 is 06-19)
APPLICANT = Actor("p_test_applicant", "applicant", "online")
SUPERVISOR = Actor("sup", "supervisor", "online")


def at(day: date, hour: int = 10, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=CHINA).astimezone(timezone.utc)


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


# -- scenarios folded by the dispatch processor's own function ---------------------------------------
class Clock:
    def __init__(self, start: datetime):
        self.t = start

    def __call__(self) -> datetime:
        self.t += timedelta(minutes=1)
        return self.t

    def jump(self, day: date) -> None:
        self.t = max(self.t, at(day))


def decision(task: Event, outcome: str, when: datetime, **kw) -> Event:
    p = task.payload
    outputs = {o: f"{o.upper()}-{task.key[-6:]}" for o in CAT.service(p["service_id"]).produces} \
        if outcome == "approved" else {}
    return new_event("DecisionRecorded", task.key,
                     {"task_id": p["task_id"], "department": p["department"], "service_id": p["service_id"],
                      "kind": "case_service", "outcome": outcome, "reason": kw.get("reason"),
                      "missing_materials": list(kw.get("missing", ())), "outputs": outputs},
                     actor=Actor(f"staff_{p['department']}", "department", "department"),
                     region_code=task.envelope.region_code, cause=task, occurred_at=when)


def case_log(case_id: str, *, day0: date = DAY0, region: str = "440203", slow: dict[str, date] | None = None,
             correction: tuple[str, date] | None = None, reject: str | None = None,
             withdraw_after: int | None = None, rating: str | None = None, service_grades=None) -> list[Event]:
    """One case's log in the order the system writes it. `slow`: service → the day its decision
    waits for; `correction`: (service, day of the supplement) for a 补正 of its first attempt;
    `reject`: a service refused; `withdraw_after`: decisions before the applicant withdraws."""
    clock = Clock(at(day0))
    sub = submission(case_id)
    sub = replace(sub, envelope=replace(sub.envelope, occurred_at=clock(), region_code=region))
    state, out = case_state.start(sub, CAT)
    log, queue, decided = [sub, *out], [e for e in out if e.type == "TaskDispatched"], 0

    def fold(event: Event) -> None:
        nonlocal state
        state, derived = case_state.step(state, event, CAT)
        log.extend([event, *derived])
        queue.extend(e for e in derived if e.type == "TaskDispatched")

    while queue and not state.done:
        task = queue.pop(0)
        sid = task.payload["service_id"]
        if slow and sid in slow:
            clock.jump(slow[sid])
        fold(decision(task, "accepted", clock()))
        if correction and sid == correction[0] and task.payload["task_id"].endswith(":1"):
            fold(decision(task, "correction_requested", clock(), missing=["marriage_certificate"]))
            clock.jump(correction[1])
            fold(new_event("MaterialsSupplemented", case_id,
                           {"materials": [{"code": "marriage_certificate", "source": "uploaded", "ref": "doc-m"}],
                            "form": {}}, actor=APPLICANT, region_code=region, occurred_at=clock()))
        else:
            fold(decision(task, "rejected" if sid == reject else "approved", clock()))
        decided += 1
        if decided == withdraw_after:
            fold(new_event("ApplicationWithdrawn", case_id, {"reason": None}, actor=APPLICANT, region_code=region,
                           occurred_at=clock()))
            break
    if rating and state.done:
        fold(new_event("CaseRated", case_id, {"rating_id": f"r-{case_id}", "grade": rating, "comment": None,
                                              "services": [{"service_id": s, "grade": g, "comment": None}
                                                           for s, g in (service_grades or {}).items()]},
                       actor=APPLICANT, region_code=region, occurred_at=clock()))
    return log


def breach(case_id: str, scope: str, subject: str | None, department: str | None, due: date,
           region: str = "440203") -> Event:
    return new_event("DeadlineBreached", case_id,
                     {"scope": scope, "subject_id": subject, "department": department, "task_id": None,
                      "due_date": due, "working_days_overdue": 1},
                     region_code=region, occurred_at=at(due + timedelta(days=1), 0, 5))


def escalation(case_id: str, origin: str, when: datetime, service: str | None = None,
               department: str | None = None) -> Event:
    return new_event("CaseEscalated", case_id,
                     {"escalation_id": f"esc-{case_id}-{origin}", "origin": origin, "reason": "overdue",
                      "service_id": service, "department": department, "comment": None},
                     actor=APPLICANT if origin == "applicant" else Actor("onething"), region_code="440203",
                     occurred_at=when)


def manager_week(prefix: str) -> tuple[list[Event], dict[str, str]]:
    """Five newborn applications received on Monday 2026-06-01 (promised: 5 working days, due 06-08):
    A done the same day, B on 06-03, C on 06-10 after a 3-working-day 补正 (due pushed to 06-11),
    D on 06-10 (late), E withdrawn. Three of the four judged are on time: 75 %."""
    ids = {k: f"{prefix}-{k}" for k in "ABCDE"}
    events = [
        *case_log(ids["A"], rating="very_satisfied"),
        *case_log(ids["B"], slow={"tax.newborn_premium": date(2026, 6, 3)}, rating="satisfied"),
        *case_log(ids["C"], correction=("police.birth_registration", date(2026, 6, 4)),
                  slow={"tax.newborn_premium": date(2026, 6, 10)}),
        *case_log(ids["D"], region="440205", slow={"tax.newborn_premium": date(2026, 6, 10)},
                  rating="dissatisfied", service_grades={"tax.newborn_premium": "very_dissatisfied"}),
        *case_log(ids["E"], withdraw_after=2),
        breach(ids["D"], "case", None, None, date(2026, 6, 8), "440205"),
        breach(ids["D"], "service", "tax.newborn_premium", "tax", date(2026, 6, 2), "440205"),
        escalation(ids["D"], "applicant", at(date(2026, 6, 9))),
        escalation(ids["D"], "deadline", at(date(2026, 6, 3), 0, 5), "tax.newborn_premium", "tax"),
    ]
    return events, ids


def synthetic(prefix: str, n: int, seed: int) -> list[Event]:
    """A few hundred events: n newborn cases over two weeks and three regions, with every kind of end."""
    rnd = random.Random(seed)
    events: list[Event] = []
    days = [d for d in (DAY0 + timedelta(days=i) for i in range(14)) if d.weekday() < 5]
    for i in range(n):
        cid, day0 = f"{prefix}-{i:03d}", rnd.choice(days)
        kind = rnd.choice(["happy", "slow", "correction", "rejected", "withdrawn"])
        kw: dict = {"day0": day0, "region": rnd.choice(["440203", "440205", "440303"])}
        if kind == "slow":
            kw["slow"] = {rnd.choice(["tax.newborn_premium", "police.birth_registration"]):
                          day0 + timedelta(days=rnd.randint(1, 12))}
        elif kind == "correction":
            kw["correction"] = ("police.birth_registration", day0 + timedelta(days=rnd.randint(0, 5)))
        elif kind == "rejected":
            kw["reject"] = "health.birth_certificate"
        elif kind == "withdrawn":
            kw["withdraw_after"] = rnd.randint(1, 5)
        if kind != "withdrawn" and rnd.random() < 0.7:
            kw["rating"] = rnd.choice(K.GRADES)
            kw["service_grades"] = {"police.birth_registration": rnd.choice(K.GRADES)}
        events += case_log(cid, **kw)
        if kind == "slow" and rnd.random() < 0.5:
            events.append(breach(cid, "case", None, None, add_working_days(day0, 5), kw["region"]))
            events.append(escalation(cid, rnd.choice(["applicant", "deadline"]), at(add_working_days(day0, 6))))
    return events


def topic_of(e: Event) -> str:
    if e.type in ("TaskDispatched", "TaskCancelled", "RectificationOpened"):
        return tasks_topic(e.payload["department"])
    if e.type in ("DecisionRecorded", "RectificationReplied"):
        return decisions_topic(e.payload["department"])
    if e.type in ("CaseCompleted", "DeadlineBreached", "DeadlineApproaching") or \
            (e.type == "CaseEscalated" and e.payload["origin"] == "deadline"):
        return CASES
    return APPLICATIONS


# -- the model on real PostgreSQL --------------------------------------------------------------------
class Model:
    """A KPI model in a schema of its own, built by applying events directly."""

    def __init__(self, database_url: str, label: str):
        self.schema = f"kpi_test_{RUN}_{label}"
        self.conn = psycopg.connect(database_url, autocommit=True)
        K.create_schema(self.conn, self.schema)
        self.projection = K.KpiProjection(f"kpis_test_{RUN}_{label}", schema=self.schema, catalog=CAT)

    def build(self, events: list[Event]) -> None:
        with self.conn.transaction():
            self.projection.reset(self.conn)
            for e in events:
                self.projection.apply(self.conn, e)

    def build_batches(self, events: list[Event], cuts: list[int]) -> None:
        """As the runtime applies them: one apply_batch per checkpoint, cut at `cuts`."""
        bounds = [0, *cuts, len(events)]
        with self.conn.transaction():
            self.projection.reset(self.conn)
            for lo, hi in zip(bounds, bounds[1:]):
                self.projection.apply_batch(self.conn, events[lo:hi])

    def kpis(self, **kw) -> dict:
        return K.read_kpis(self.conn, schema=self.schema, catalog=CAT, today=kw.pop("today", date(2026, 7, 1)), **kw)

    def snapshot(self) -> dict:
        out = {}
        for table in K.TABLES:
            rows = self.conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(self.schema, table))).fetchall()
            out[table] = sorted(rows, key=repr)
        return out

    def close(self) -> None:
        K.drop_schema(self.conn, self.schema)
        self.conn.close()


@pytest.fixture
def model(database_url):
    m = Model(database_url, uuid.uuid4().hex[:6])
    yield m
    m.close()


@pytest.mark.postgres
def test_a_week_of_newborn_cases_as_a_manager_reads_it(model):
    events, ids = manager_week(f"kpi-{RUN}-week")
    model.build(events)
    k = model.kpis(group_by="bundle", date_from=DAY0, date_to=DAY0)
    assert k["level"] == "case" and [g["key"] for g in k["groups"]] == ["newborn"]
    g = k["groups"][0]
    assert g["label"] == {"zh": "新生儿出生", "en": "Birth of a child"}
    assert (g["received"], g["completed"], g["withdrawn"], g["open"]) == (5, 4, 1, 0)
    assert (g["on_time"], g["overdue"], g["late"]) == (3, 1, 1)
    assert g["on_time_rate"] == 0.75                                    # 3 of 4 cases on time
    assert g["days_avg"] == pytest.approx((0 + 2 + 4 + 7) / 4)           # C: 7 working days, 3 of them 补正
    assert g["days_p90"] == 7
    assert g["promised_days"] == 5 and g["statutory_days"] == 35         # 35 → 5 working days
    assert g["catalog"]["promised_total_days"] == 5 and g["catalog"]["time_reduction"] == pytest.approx(30 / 35)
    assert g["materials_saved"] == 10 and g["materials_saved_avg"] == 2  # 2 e-licences per application
    assert g["materials_uploaded_avg"] == pytest.approx((2 * 4 + 3) / 5)  # C uploaded its marriage certificate
    assert g["ratings"] == {"very_satisfied": 1, "satisfied": 1, "basically_satisfied": 0, "dissatisfied": 1,
                            "very_dissatisfied": 0}
    assert g["satisfaction_rate"] == pytest.approx(2 / 3)
    assert g["deadlines_breached"] == 2 and g["escalations"] == 2 and g["escalations_by_applicant"] == 1
    assert k["total"]["received"] == 5 and k["total"]["on_time_rate"] == 0.75

    # by region: 440205 holds the late one
    by_region = {r["key"]: r for r in model.kpis(group_by="region", date_from=DAY0, date_to=DAY0)["groups"]}
    assert by_region["440205"]["on_time_rate"] == 0 and by_region["440203"]["on_time_rate"] == 1
    assert {r["key"] for r in model.kpis(group_by="city")["groups"]} == {"440200"}
    assert model.kpis(region="4402")["total"]["received"] == 5
    assert model.kpis(region="440205")["total"]["received"] == 1
    assert model.kpis(region="440200")["total"]["received"] == 5  # a city's own code is its area

    # by department: services. Tax decided B on 06-03 (due 06-02), C and D on 06-10: 1 of 4 on time
    tax = {r["key"]: r for r in model.kpis(group_by="department")["groups"]}["tax"]
    assert tax["label"]["en"] and (tax["received"], tax["completed"], tax["on_time"], tax["overdue"]) == (4, 4, 1, 3)
    assert tax["ratings"]["very_dissatisfied"] == 1 and tax["satisfaction_rate"] == 0
    assert tax["deadlines_breached"] == 1 and tax["escalations"] == 1 and tax["promised_days"] == 1
    police = model.kpis(group_by="bundle", department="police")
    assert police["level"] == "service" and police["total"]["on_time_rate"] == 1
    assert police["total"]["days_p90"] == 0  # the 补正 days are the applicant's, not the police's

    # by day, and a window without cases
    assert [r["key"] for r in model.kpis(group_by="day")["groups"]] == ["2026-06-01"]
    empty = model.kpis(date_from=date(2026, 7, 1), date_to=date(2026, 7, 31))
    assert empty["groups"] == [] and empty["total"]["received"] == 0 and empty["total"]["on_time_rate"] is None


@pytest.mark.postgres
def test_an_open_case_is_overdue_only_past_its_due_date_and_not_while_it_waits_for_the_applicant(model):
    cid = f"kpi-{RUN}-open"
    log = case_log(cid, slow={"tax.newborn_premium": date(2026, 6, 20)})
    open_log = [e for e in log if not (e.type in ("DecisionRecorded", "CaseCompleted")
                                       and e.envelope.occurred_at >= at(date(2026, 6, 20)))]
    model.build(open_log)
    assert model.kpis(today=date(2026, 6, 8))["total"]["overdue"] == 0   # the due date itself is in time
    assert model.kpis(today=date(2026, 6, 9))["total"]["overdue"] == 1
    waiting = case_log(f"{cid}-w", correction=("police.birth_registration", date(2026, 6, 30)))
    waiting = [e for e in waiting if e.envelope.occurred_at < at(date(2026, 6, 30))]
    model.build(waiting)
    k = model.kpis(today=date(2026, 6, 20))
    assert k["total"]["overdue"] == 0 and k["total"]["open"] == 1      # the clock stands still (补正)


@pytest.mark.postgres
def test_the_same_figures_in_any_order(database_url):
    events = synthetic(f"kpi-{RUN}-syn", 24, seed=7)
    assert len(events) >= 300
    ordered, shuffled = Model(database_url, "ord"), Model(database_url, "shuf")
    try:
        ordered.build(events)
        expected_rows = ordered.snapshot()
        queries = QUERIES
        expected = [ordered.kpis(**q) for q in queries]
        assert expected[0]["total"]["received"] == 24
        for seed in (1, 2, 3):
            shuffled.build(scramble(events, seed))
            assert shuffled.snapshot() == expected_rows, f"seed {seed}"
            assert [shuffled.kpis(**q) for q in queries] == expected, f"seed {seed}"
        check_sql_against_the_pure_rules(ordered)
    finally:
        ordered.close()
        shuffled.close()


def rerated(prefix: str) -> tuple[list[Event], Event]:
    """The manager's week with what makes the order matter most: A rated a second time, earlier,
    with a grade for tax (the earliest rating wins and brings its service grades); tax sending a
    refusal of A's approved task a day later (the first final decision stands); the applicant's
    escalation of D resolved. And, to be seen last, B rated again later with a grade for police:
    it loses, so the police keep no grade from B (seen before B's first rating, it would have
    brought its grade while it was the earliest seen)."""
    events, ids = manager_week(prefix)
    rated = {e.key: e for e in events if e.type == "CaseRated"}

    def rating(case: str, rating_id: str, grade: str, when: datetime, service: str, service_grade: str) -> Event:
        return new_event("CaseRated", ids[case], {"rating_id": rating_id, "grade": grade, "comment": None,
                                                  "services": [{"service_id": service, "grade": service_grade,
                                                                "comment": None}]},
                         actor=APPLICANT, region_code="440203", occurred_at=when)

    a_at = rated[ids["A"]].envelope.occurred_at
    a_tax = next(e for e in events if e.key == ids["A"] and e.type == "TaskDispatched"
                 and e.payload["service_id"] == "tax.newborn_premium")
    b_at = rated[ids["B"]].envelope.occurred_at
    late = rating("B", f"r2-{ids['B']}", "very_dissatisfied", b_at + timedelta(days=1), "police.birth_registration",
                  "dissatisfied")
    return events + [
        rating("A", f"r0-{ids['A']}", "basically_satisfied", a_at - timedelta(seconds=30), "tax.newborn_premium",
               "satisfied"),
        decision(a_tax, "rejected", a_at + timedelta(days=1)),
        new_event("EscalationResolved", ids["D"], {"escalation_id": f"esc-{ids['D']}-applicant",
                                                   "resolution": "done"}, actor=SUPERVISOR,
                  region_code="440205", occurred_at=at(date(2026, 6, 10))),
    ], late


QUERIES = [dict(group_by=g) for g in K.GROUP_BY] + [dict(group_by="bundle", department="police"),
                                                    dict(group_by="day", region="440205")]


@pytest.mark.postgres
def test_a_batch_gives_the_rows_and_figures_that_applying_its_events_one_by_one_gives(database_url):
    week, late = rerated(f"kpi-{RUN}-batw")
    events = synthetic(f"kpi-{RUN}-bat", 16, seed=11) + week
    kinds = {e.type for e in events}
    escalated = len({e.payload["escalation_id"] for e in events if e.type == "CaseEscalated"})
    assert {"MaterialsSupplemented", "ApplicationWithdrawn", "TaskCancelled", "CaseCompleted", "CaseRated",
            "DeadlineBreached", "CaseEscalated", "EscalationResolved"} <= kinds
    police = "police.birth_registration"
    police_ran = {e.key for e in events if e.type == "TaskDispatched" and e.payload["service_id"] == police}
    synthetic_ratings = [e for e in events if e.type == "CaseRated" and e.key.startswith(f"kpi-{RUN}-bat-")]
    police_grades = sum(1 for e in synthetic_ratings
                        if e.key in police_ran and police in {r["service_id"] for r in e.payload["services"]})
    grades = Counter(e.payload["grade"] for e in synthetic_ratings)
    tax_approved = len({e.key for e in events if e.type == "DecisionRecorded" and e.payload["outcome"] == "approved"
                        and e.payload["service_id"] == "tax.newborn_premium"})
    one, batched = Model(database_url, "one"), Model(database_url, "bat")
    try:
        for seed in (1, 2, 3, 4):
            log = scramble(events, seed) + [late]  # any order, a few events twice, some twice in one batch
            one.build(log)
            rnd = random.Random(seed)
            # the whole log as one batch, or cut into batches of uneven size (one of them a single event)
            cuts = [] if seed == 1 else sorted({*rnd.sample(range(1, len(log) - 1), 5), 7, 8})
            batched.build_batches(log, cuts)
            assert batched.snapshot() == one.snapshot(), f"seed {seed}"
            figures = [batched.kpis(**q) for q in QUERIES]
            assert figures == [one.kpis(**q) for q in QUERIES], f"seed {seed}"
            total = figures[0]["total"]
            assert (total["received"], total["escalations"], total["escalations_resolved"]) == (16 + 5, escalated, 1)
            # A's earlier second rating counts, with its grade for tax; B's later one does not
            departments = {g["key"]: g for g in figures[1]["groups"]}
            assert (departments["tax"]["ratings"]["satisfied"], departments["tax"]["rated"]) == (1, 2)
            assert departments["tax"]["completed_approved"] == tax_approved  # A's tax task among them
            assert departments["police"]["rated"] == police_grades
            # and the cases' grades: A's earlier one, B's first one, D's
            assert total["ratings"] == {g: grades[g] + (g in ("basically_satisfied", "satisfied", "dissatisfied"))
                                        for g in K.GRADES}
    finally:
        one.close()
        batched.close()


class CountingConnection:
    """A connection that counts the statements sent through it."""

    def __init__(self, conn: psycopg.Connection):
        self.conn, self.statements = conn, 0

    def execute(self, *args, **kw):
        self.statements += 1
        return self.conn.execute(*args, **kw)

    def __getattr__(self, name):
        return getattr(self.conn, name)


@pytest.mark.postgres
def test_a_checkpoint_costs_the_same_few_statements_whatever_its_size(model):
    """What keeps the KPIs up with the system: the statements per checkpoint do not grow with its events."""
    events = synthetic(f"kpi-{RUN}-cost", 40, seed=5)
    log = sorted(events, key=lambda e: e.envelope.occurred_at)[:520]  # many cases open at once, as live
    counting = CountingConnection(model.conn)
    with model.conn.transaction():
        model.projection.apply_batch(counting, log[:20])
        small, counting.statements = counting.statements, 0
        model.projection.apply_batch(counting, log[20:])
    assert len(log[20:]) == 500 and counting.statements <= 14 and small <= 14
    received = len({e.key for e in log if e.type == "ApplicationSubmitted"})
    assert received > 20 and model.kpis()["total"]["received"] == received


def check_sql_against_the_pure_rules(m: Model, today: date = date(2026, 6, 12)) -> None:
    """read_kpis' SQL and the pure functions agree on the stored facts."""
    rows = m.conn.execute(sql.SQL("SELECT due_date, ended_on, paused_since IS NOT NULL, withdrawn_at IS NOT NULL,"
                                  " days_used, rating_grade, materials_fetched FROM {}"
                                  " WHERE received_on IS NOT NULL").format(
        sql.Identifier(m.schema, "kpi_cases"))).fetchall()
    judged = [K.timeliness(due, ended, today, paused=p) for due, ended, p, w, *_ in rows if not w]
    t = m.kpis(today=today)["total"]
    assert t["on_time"] == judged.count("on_time")
    assert t["overdue"] == judged.count("late") + judged.count("overdue_open")
    used = [r[4] for r in rows if r[4] is not None]
    assert t["days_p90"] == K.percentile(used, 0.9) and t["days_avg"] == pytest.approx(K.average(used))
    grades = {g: sum(r[5] == g for r in rows) for g in K.GRADES}
    assert t["satisfaction_rate"] == pytest.approx(K.satisfaction_rate(grades))
    assert t["materials_saved"] == sum(r[6] for r in rows)


@pytest.mark.postgres
@hsettings(max_examples=scaled(25, 12), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.integers(0, 40), min_size=1, max_size=50), q=st.sampled_from([0.5, 0.9, 0.95]))
def test_percentile_agrees_with_postgres_percentile_disc(database_url, values, q):
    with psycopg.connect(database_url) as conn:
        pg = conn.execute("SELECT percentile_disc(%s) WITHIN GROUP (ORDER BY v) FROM unnest(%s::int[]) AS v",
                          (q, values)).fetchone()[0]
    assert pg == K.percentile(values, q)


# -- through the real broker -----------------------------------------------------------------------
@pytest.mark.broker
@pytest.mark.postgres
def test_the_projection_runner_builds_the_figures_from_kafka(bootstrap, database_url):
    prefix = f"kpitest-{RUN}"
    departments = sorted({CAT.service(s).department for s in CAT.select(bundle_code="newborn").services})
    real = (APPLICATIONS, CASES, *map(tasks_topic, departments), *map(decisions_topic, departments))
    topics = tuple(f"{prefix}.{t}" for t in real)
    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap))
    admin.create_topics([NewTopic(t, 6, 1) for t in topics])
    m = Model(database_url, "broker")
    projection = K.KpiProjection(m.projection.name, schema=m.schema, topics=topics, catalog=CAT)
    runner = None
    try:
        seed_offsets(bootstrap, database_url, projection.name, topics)
        events, _ids = manager_week(f"{prefix}-week")
        producer = bus.make_producer(bootstrap)
        try:
            bus.publish_all(producer, [(f"{prefix}.{topic_of(e)}", e) for e in events + events[:10]])  # + repeats
        finally:
            producer.close()
        runner = ProjectionRunner(projection, bootstrap, database_url)
        deadline, k = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            runner.poll_once(timeout_ms=300)
            k = m.kpis(group_by="bundle")
            t = k["total"]
            if t["received"] == 5 and t["completed"] == 4 and t["withdrawn"] == 1 and t["escalations"] == 2 \
                    and t["rated"] == 3 and runner.caught_up():
                break
        t = k["total"]
        assert (t["received"], t["completed"], t["on_time"], t["overdue"]) == (5, 4, 3, 1)
        assert t["on_time_rate"] == 0.75 and t["days_p90"] == 7 and t["satisfaction_rate"] == pytest.approx(2 / 3)
        reference = Model(database_url, "brokerref")
        try:
            reference.build(events)
            assert m.snapshot() == reference.snapshot()  # the runner's rows equal the in-order build
        finally:
            reference.close()
    finally:
        if runner is not None:
            runner.close()
        with psycopg.connect(database_url) as conn:
            for table in ("consumer_offsets", "processed_events"):
                conn.execute(sql.SQL("DELETE FROM {} WHERE consumer = %s").format(sql.Identifier(table)),
                             (projection.name,))
        try:
            admin.delete_topics(list(topics))
            admin.delete_consumer_groups([f"projection.{projection.name}"])
        except Exception:  # noqa: BLE001 - best effort clean-up
            pass
        admin.close()
        m.close()


# -- the HTTP API ------------------------------------------------------------------------------------
@pytest.fixture
def api(model, settings, database_url):
    events, _ids = manager_week(f"kpi-{RUN}-api")
    model.build(events)
    app = FastAPI()
    assert settings.database_url == database_url
    app.include_router(create_router(settings, schema=model.schema, catalog=CAT, today=lambda: date(2026, 7, 1)))
    return TestClient(app)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


SUP = identity.issue_token("staff_sup1", "supervisor", "online", staff_id="sup1")


@pytest.mark.postgres
def test_api_supervisor_sees_every_bundle_and_department(api):
    r = api.get("/api/v1/kpis", params={"group_by": "bundle", "date_from": "2026-06-01", "date_to": "2026-06-30"},
                headers=bearer(SUP))
    assert r.status_code == 200, r.text
    body = r.json()
    newborn = body["groups"][0]
    assert newborn["key"] == "newborn" and newborn["on_time_rate"] == 0.75 and newborn["received"] == 5
    r = api.get("/api/v1/kpis", params={"group_by": "department", "date_from": "2026-06-01"}, headers=bearer(SUP))
    assert r.status_code == 200 and {"tax", "police", "health"} <= {g["key"] for g in r.json()["groups"]}
    r = api.get("/api/v1/kpis/reform/newborn", params={"date_from": "2026-06-01"}, headers=bearer(SUP))
    assert r.status_code == 200
    body = r.json()
    assert body["reform"]["time_days"] == {"before": 35.0, "after": 5.0, "reduction": pytest.approx(30 / 35)}
    assert body["reform"]["promised_total_days"] == 5
    assert body["measured"]["cases"] == 5 and body["measured"]["on_time_rate"] == 0.75
    assert body["measured"]["working_days_p90"] == 7


@pytest.mark.postgres
def test_api_a_department_sees_its_own_services_only(api):
    tax = identity.department_token("tax", "t001")
    r = api.get("/api/v1/kpis", params={"date_from": "2026-06-01"}, headers=bearer(tax))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["level"] == "service" and body["filters"]["department"] == "tax"
    assert body["total"]["received"] == 4 and body["total"]["on_time_rate"] == 0.25  # 1 of 4 tax services on time
    r = api.get("/api/v1/kpis", params={"department": "police"}, headers=bearer(tax))
    assert r.status_code == 403 and r.json()["errors"][0]["path"] == "department"


@pytest.mark.postgres
@pytest.mark.parametrize("params,path", [
    ({"group_by": "month"}, "group_by"), ({"date_from": "2026-13-01"}, "date_from"),
    ({"date_from": "2026-06-10", "date_to": "2026-06-01"}, "date_to"), ({"bundle": "nope"}, "bundle"),
    ({"department": "nope"}, "department"), ({"region": "44020"}, "region"), ({"region": "abcdef"}, "region"),
    ({"date_from": "2020-01-01", "date_to": "2026-01-01"}, "date_from"),
])
def test_api_names_the_bad_parameter(api, params, path):
    r = api.get("/api/v1/kpis", params=params, headers=bearer(SUP))
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["path"] == path and err["message_zh"] and err["message_en"]


@pytest.mark.postgres
def test_api_refuses_applicants_clerks_and_strangers(api):
    applicant = identity.issue_token("p_someone", "applicant", "online")
    clerk = identity.clerk_token("c001")
    assert api.get("/api/v1/kpis", headers=bearer(applicant)).status_code == 403
    assert api.get("/api/v1/kpis", headers=bearer(clerk)).status_code == 403
    assert api.get("/api/v1/kpis").status_code == 401
    assert api.get("/api/v1/kpis", headers=bearer("not-a-token")).status_code == 401
    assert api.get("/api/v1/kpis/reform/newborn", headers=bearer(applicant)).status_code == 403
    assert api.get("/api/v1/kpis/reform/nope", headers=bearer(SUP)).status_code == 404
    page = api.get("/kpis")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script src=\"/portal/kpis.js\"" in page.text and "style=" not in page.text
