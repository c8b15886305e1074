"""The deadline clock's rows (projectors/deadlines_facts.py): any interleaving of its topics folds
to the rows of the order they were written in (what a rebuild reads is another interleaving than
the live clock read); on real PostgreSQL a batch, cut anywhere, gives the rows applying its events
one by one gives, for realistic logs in any order, in four statements; and migration 0023 keeps a
case in flight."""
from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog.loader import load_catalog
from events.envelope import SYSTEM, Actor, Event, new_event
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic
from projectors import case_state
from projectors import deadline_clock as clock
from projectors.case_state import belongs_to_no_case
from projectors.deadlines import HANDLED, DeadlineClockProjection, create_schema
from projectors.deadlines_facts import ClockRows

from .support.newborn import submission
from .support.orders import scramble, uneven_cuts

CAT = load_catalog()
RUN = uuid.uuid4().hex[:8]

CHINA = timezone(timedelta(hours=8))
APPLICANT = Actor("p_test_applicant", "applicant", "online")
SUPERVISOR = Actor("sup", "supervisor", "online")


def beijing(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=CHINA).astimezone(timezone.utc)


def case_log(case_id: str, rnd: random.Random, day0: date) -> list[Event]:
    """One newborn case as the system writes it, the tasks, cancellations, completion and
    rectifications derived by the dispatch fold itself (case_state): decisions accepted first,
    a 补正 and its supplement on some first attempts, a refusal, a withdrawal part-way, a bad
    rating answered, an escalation replied to, extended (sometimes twice) and resolved."""
    t = [beijing(day0)]

    def now(minutes: int = 7) -> datetime:
        t[0] += timedelta(minutes=minutes)
        return t[0]

    def at(kind: str, payload: dict, actor: Actor = APPLICANT, minutes: int = 7) -> Event:
        return new_event(kind, case_id, payload, actor=actor, region_code="440203", occurred_at=now(minutes))

    sub = submission(case_id)
    sub = replace(sub, envelope=replace(sub.envelope, occurred_at=now()))
    state, out = case_state.start(sub, CAT)
    log, queue = [sub, *out], [e for e in out if e.type == "TaskDispatched"]

    def fold(event: Event) -> None:
        nonlocal state
        state, derived = case_state.step(state, event, CAT)
        log.extend([event, *derived])
        queue.extend(e for e in derived if e.type == "TaskDispatched")

    def decide(task: Event, outcome: str) -> Event:
        p = task.payload
        return new_event("DecisionRecorded", case_id,
                         {"task_id": p["task_id"], "department": p["department"], "service_id": p["service_id"],
                          "kind": "case_service", "outcome": outcome, "reason": None,
                          "missing_materials": ["marriage_certificate"] if outcome == "correction_requested" else [],
                          "outputs": {o: f"{o.upper()}-{case_id[-6:]}" for o in CAT.service(p["service_id"]).produces}
                          if outcome == "approved" else {}},
                         actor=Actor(p["department"], "department", "department"), region_code="440203",
                         cause=task, occurred_at=now(rnd.choice([5, 60, 1500])))

    withdraw_after = rnd.choice([None, None, None, 1, 3])
    decided = 0
    while queue and not state.done:
        task = queue.pop(0)
        fold(decide(task, "accepted"))
        if task.payload["task_id"].endswith(":1") and rnd.random() < 0.4:
            fold(decide(task, "correction_requested"))
            now(rnd.choice([30, 600, 1440, 3000, 8000]))   # the applicant takes minutes, hours or days
            fold(at("MaterialsSupplemented", {"materials": [{"code": "marriage_certificate", "source": "uploaded",
                                                             "ref": "doc-m"}], "form": {}}))
            continue
        fold(decide(task, "rejected" if rnd.random() < 0.08 else "approved"))
        decided += 1
        if decided == withdraw_after:
            fold(at("ApplicationWithdrawn", {"reason": None}))
            break
    if state.status == case_state.COMPLETED and rnd.random() < 0.6:
        fold(at("CaseRated", {"rating_id": f"r-{case_id}", "grade": "dissatisfied", "comment": None,
                              "services": [{"service_id": "tax.newborn_premium", "grade": "very_dissatisfied",
                                            "comment": None}]}))
        for e in [e for e in log if e.type == "RectificationOpened"][: rnd.randint(0, 3)]:
            log.append(at("RectificationReplied", {"rectification_id": e.payload["rectification_id"],
                                                   "department": e.payload["department"], "reply": "已整改"},
                          Actor(e.payload["department"], "department", "department"), 900))
    if rnd.random() < 0.6:
        eid = f"esc-{case_id}"
        origin = rnd.choice(["applicant", "deadline"])   # the clock's own escalation travels on `cases`
        log.append(at("CaseEscalated", {"escalation_id": eid, "origin": origin,
                                        "reason": "stuck" if origin == "applicant" else "overdue",
                                        "service_id": None, "department": rnd.choice([None, "tax"]),
                                        "comment": None}, APPLICANT if origin == "applicant" else SYSTEM))
        steps = [("EscalationReplied", {"escalation_id": eid, "reply": "已督办"}),
                 ("EscalationExtended", {"escalation_id": eid, "resolve_within_working_days": rnd.randint(6, 10),
                                         "reason": "等待材料"}),
                 ("EscalationExtended", {"escalation_id": eid, "resolve_within_working_days": 10, "reason": "再等"}),
                 ("EscalationResolved", {"escalation_id": eid, "resolution": "已办结"})]
        for kind, payload in steps[: rnd.randint(1, 4)]:
            log.append(at(kind, payload, SUPERVISOR, 1500))
    return log


def clock_log(prefix: str, cases: int, seed: int) -> list[Event]:
    """Cases filed over a fortnight across 国庆 and its 调休 Saturday, interleaved by time as the
    system writes them (each case's own events in its order)."""
    rnd = random.Random(seed)
    days = [date(2026, 9, 21) + timedelta(days=i) for i in range(14)]
    events = [e for i in range(cases) for e in case_log(f"{prefix}-{i:02d}", rnd, rnd.choice(days))]
    return sorted(events, key=lambda e: e.envelope.occurred_at)   # stable: derived events keep their cause's time


def topic_of(e: Event) -> str:
    """The topic each event travels on in the running system (the dispatch fold's and the clock's
    own events on `cases`, what the API accepts on `applications`, a department's on its own)."""
    if e.type in ("TaskDispatched", "TaskCancelled", "RectificationOpened"):
        return tasks_topic(e.payload["department"])
    if e.type in ("DecisionRecorded", "RectificationReplied"):
        return decisions_topic(e.payload["department"])
    if e.type == "CaseCompleted" or e.type == "CaseEscalated" and e.payload["origin"] == "deadline":
        return CASES
    return APPLICATIONS


def as_consumed(events: list[Event], seed: int) -> list[Event]:
    """What the clock's consumer sees: each topic in its own order, the topics interleaved."""
    rnd = random.Random(seed)
    streams: dict[str, list[Event]] = {}
    for e in events:
        streams.setdefault(topic_of(e), []).append(e)
    out = []
    while streams:
        t = rnd.choice(sorted(streams))
        n = rnd.randint(1, 6)
        out += streams[t][:n]
        streams[t] = streams[t][n:]
        if not streams[t]:
            del streams[t]
    return out


def folded(events: list[Event]) -> tuple[list, list]:
    """The clock rows and case facts the events fold to from nothing, without a database."""
    projection = DeadlineClockProjection("dl_pure", catalog=CAT)
    fed = [e for e in events if e.type in HANDLED and not belongs_to_no_case(e)]
    rows = ClockRows()
    for e in fed:
        rows.ask(e.type, e.key, e.payload)
    rows.load([], [])
    projection.fold(rows, fed)
    return sorted(rows.changed(), key=repr), sorted(rows.changed_cases(), key=repr)


@settings(deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_any_interleaving_of_the_topics_folds_to_the_clocks_the_written_order_gives(case_seed, order_seed):
    """A rebuild reads the topics in another interleaving than the live clock did: the completion
    before the submission, a supplement before the request for it, a reply before its escalation.
    The rows must not depend on it (found when a rebuild after a fault run left completed cases'
    clocks open)."""
    events = clock_log(f"case-dli-{case_seed}", 3, seed=case_seed)
    written = folded(events)
    assert folded(as_consumed(events, order_seed)) == written


class Clocks:
    """A clock projection in a schema of its own, built by applying events directly."""

    def __init__(self, database_url: str, label: str):
        self.schema = f"dl_batch_{RUN}_{label}"
        self.conn = psycopg.connect(database_url, autocommit=True)
        create_schema(self.conn, self.schema)
        self.projection = DeadlineClockProjection(f"dl_batch_{RUN}_{label}", schema=self.schema, catalog=CAT)

    def one_by_one(self, events: list[Event]) -> dict:
        with self.conn.transaction():
            self.projection.reset(self.conn)
            for e in events:
                self.projection.apply(self.conn, e)
        return self.snapshot()

    def in_batches(self, events: list[Event], cuts: list[int]) -> dict:
        bounds = [0, *cuts, len(events)]
        with self.conn.transaction():
            self.projection.reset(self.conn)
            for lo, hi in zip(bounds, bounds[1:]):
                self.projection.apply_batch(self.conn, events[lo:hi])
        return self.snapshot()

    def snapshot(self) -> dict:
        return {table: sorted(self.conn.execute(f"SELECT * FROM {self.schema}.{table}").fetchall(), key=repr)
                for table in ("deadline_clocks", "deadline_cases")}

    def close(self) -> None:
        self.conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        self.conn.close()


def differences(got: dict, expected: dict) -> dict:
    """Per table, the rows only the batches wrote and the rows only one by one wrote."""
    return {t: {"batched": sorted(set(got[t]) - set(expected[t]), key=repr),
                "one_by_one": sorted(set(expected[t]) - set(got[t]), key=repr)} for t in got if got[t] != expected[t]}


@pytest.mark.postgres
def test_a_batch_gives_the_rows_that_applying_its_events_one_by_one_gives(database_url):
    events = clock_log(f"case-dlb-{RUN}", 24, seed=5)
    kinds = Counter(e.type for e in events)
    assert {"MaterialsSupplemented", "ApplicationWithdrawn", "TaskCancelled", "CaseCompleted", "CaseEscalated",
            "EscalationReplied", "EscalationExtended", "EscalationResolved", "RectificationOpened",
            "RectificationReplied"} <= set(kinds), kinds
    assert any(e.type == "DecisionRecorded" and e.payload["outcome"] == "correction_requested" for e in events)
    one, batched = Clocks(database_url, "one"), Clocks(database_url, "bat")
    try:
        in_order = one.one_by_one(events)
        causes = Counter(r[1] for r in in_order["deadline_clocks"]
                         if r[9] in {e.id for e in events if e.type in ("MaterialsSupplemented", "EscalationExtended")})
        assert causes["case"] and causes["escalation_resolution"]   # due dates moved by a 补正 and an extension
        assert len(in_order["deadline_cases"]) == 24 and any(r[8] is None for r in in_order["deadline_clocks"])
        orders = {"written": lambda seed: events, "consumed": lambda seed: as_consumed(events, seed),
                  "any": lambda seed: scramble(events, seed)}
        for seed, (order, whole) in enumerate([("written", True), ("consumed", True), ("written", False),
                                               ("consumed", False), ("consumed", False), ("any", False),
                                               ("any", False)]):
            log = orders[order](seed)
            expected = one.one_by_one(log)
            cuts = [] if whole else uneven_cuts(len(log), seed)   # one batch of everything, or uneven ones
            got = batched.in_batches(log, cuts)
            assert got == expected, (order, seed, differences(got, expected))
    finally:
        one.close()
        batched.close()


@pytest.mark.postgres
def test_a_batch_costs_four_statements_and_a_bad_extension_fails_it_whole(database_url):
    clocks = Clocks(database_url, "cnt")
    try:
        events = clock_log(f"case-dlc-{RUN}", 12, seed=8)
        sent = []
        conn = clocks.conn

        class Counting:
            def execute(self, *args, **kw):
                sent.append(args[0])
                return conn.execute(*args, **kw)

            def __getattr__(self, name):
                return getattr(conn, name)

        with conn.transaction():
            clocks.projection.apply_batch(Counting(), events)
        assert len(events) > 150 and len(sent) == 4
        # an extension beyond the limit raises (the runtime then dead-letters it alone), nothing is written
        escalated = next(e for e in events if e.type == "CaseEscalated")
        bad = new_event("EscalationExtended", escalated.key, {"escalation_id": escalated.payload["escalation_id"],
                                                             "resolve_within_working_days": 11, "reason": "x"},
                        actor=SUPERVISOR, region_code="440203")
        before = clocks.snapshot()
        with pytest.raises(ValueError, match="resolve_within"), conn.transaction():
            clocks.projection.apply_batch(conn, [events[0], bad])
        assert clocks.snapshot() == before
    finally:
        clocks.close()


@pytest.mark.postgres
def test_a_case_paused_before_migration_0023_resumes_and_closes_as_before(database_url):
    """An upgrade must not forget a case in flight: its case clock's pause, due date and cause
    become its facts, so the supplement pushes the due date back and the completion closes it."""
    from projectors.deadlines import CASE_FACTS, MIGRATION

    schema, cid = f"dl_mig_{RUN}", f"case-dlm-{RUN}"
    paused_on, due = date(2026, 9, 24), date(2026, 9, 29)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        try:
            with conn.transaction():   # the tables as the release before wrote them
                conn.execute(f"SET LOCAL search_path TO {schema}")
                conn.execute(MIGRATION.read_text())
                conn.execute("INSERT INTO deadline_cases VALUES (%s, 'newborn', %s)", (cid, date(2026, 9, 22)))
                conn.execute("INSERT INTO deadline_clocks (case_id, scope, subject_id, due_date, paused_on, "
                             "cause_event_id) VALUES (%s, 'case', '', %s, %s, 'sub-1')", (cid, due, paused_on))
            create_schema(conn, schema)   # runs 0023 in it, as `onething migrate` does in public
            assert CASE_FACTS.name.startswith("0023")
            projection = DeadlineClockProjection(f"dl_mig_{RUN}", schema=schema, catalog=CAT)
            resumed = new_event("MaterialsSupplemented", cid, {"materials": [], "form": {}}, actor=APPLICANT,
                                region_code="440203", occurred_at=beijing(date(2026, 9, 28)))
            with conn.transaction():
                projection.apply(conn, resumed)
            row = conn.execute(f"SELECT due_date, paused_on, closed_at, cause_event_id FROM {schema}.deadline_clocks"
                               ).fetchone()
            assert row == (clock.resumed_due(due, paused_on, beijing(date(2026, 9, 28))), None, None, resumed.id)
            assert row[0] > due
            done = new_event("CaseCompleted", cid, {"approved": [], "rejected": []}, region_code="440203",
                             occurred_at=beijing(date(2026, 9, 30)))
            with conn.transaction():
                projection.apply(conn, done)
            assert conn.execute(f"SELECT closed_at FROM {schema}.deadline_clocks").fetchone()[0] == \
                done.envelope.occurred_at
        finally:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
