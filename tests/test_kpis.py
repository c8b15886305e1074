"""The KPIs read model (晴雨表) on real PostgreSQL: a manager's week as the figures show it, open
and waiting cases, the same rows and figures in any cross-topic order and however a checkpoint's
batches are cut, a checkpoint's cost in statements, and the projection runner through the real
broker. The pure rules are in tests/test_kpi_rules.py, the HTTP API in tests/test_kpi_api.py.

Every model is built in a PostgreSQL schema of its own under a projection name of its own
(tests/support/kpi_model.py); the real-broker test publishes to topics of its own
(`kpitest-<run>.*`) so nobody else's processors answer its tasks.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from datetime import date, datetime, timedelta

import psycopg
import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from psycopg import sql

from events import bus, kafka_auth
from events.envelope import Actor, Event, new_event
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic
from projectors import kpis as K
from projectors.postgres_projection import ProjectionRunner

from .support.orders import scramble
from .support.offsets import seed_offsets
from .support.kpi_scenarios import APPLICANT, CAT, DAY0, at, case_log, decision, manager_week, synthetic
from .support.kpi_model import RUN, Model, model

__all__ = ["model"]  # a fixture of tests/support/kpi_model.py: pytest finds it here

SUPERVISOR = Actor("sup", "supervisor", "online")


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


# -- through the real broker -----------------------------------------------------------------------
def topic_of(e: Event) -> str:
    if e.type in ("TaskDispatched", "TaskCancelled", "RectificationOpened"):
        return tasks_topic(e.payload["department"])
    if e.type in ("DecisionRecorded", "RectificationReplied"):
        return decisions_topic(e.payload["department"])
    if e.type in ("CaseCompleted", "DeadlineBreached", "DeadlineApproaching") or \
            (e.type == "CaseEscalated" and e.payload["origin"] == "deadline"):
        return CASES
    return APPLICATIONS


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
