"""免申即享, the department told: a grant reaches `tasks.<department>` when its decline window closes,
on the real broker and PostgreSQL, the day moved with ONETHING_TODAY.

Three people turn 80 (高龄津贴, civil affairs). The proactive processor and the civil-affairs
reference adapter run in this process, each on its own worker of the runtime. One declines within
the window: no task is ever sent for them. On the window's last day nothing is sent; the next day
the others' grants are on `tasks.civil_affairs` — a TaskDispatched of kind `benefit_grant`, keyed by
the grant, with ids and codes only — once, however often the tick runs; the adapter executes them
and its answer reaches the worklist (`executed`). The third person's decline, accepted by the API
within the window but read by the processor only after the task went out (a lagging member), is
a `TaskCancelled` the adapter carries out.
"""
from __future__ import annotations

import json
import time
from datetime import date, timedelta

import psycopg
import pytest

from catalog.working_days import add_working_days
from department_adapters.reference.run import build_backend
from department_adapters.sdk import AdapterProcessor
from events import bus
from events.envelope import Actor, derived_event_id, new_event
from infra import migrations
from infra.fast_forward import end_offsets, store_offsets
from infra.topics import PROACTIVE, decisions_topic, tasks_topic
from producers.api_inbox import grant_task_state
from projectors.proactive import ProactiveProcessor
from projectors.runtime import Worker

from .support.fast_forward import skip_history
from .support.topics import mark, read_since
from .test_proactive_e2e import LICENCE_PREFIX, Person, _id_card

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]
DAY0 = date(2025, 3, 10)             # a Monday; the seniors turned 80 a week before (caught up)
DEPT = "civil_affairs"


def _item(conn, token: str):
    return conn.execute("SELECT item_id::text, state, closes_on, task_sent_on, task_outcome FROM proactive_items "
                        "WHERE rule = 'senior_allowance_80' AND recipient_token = %s", (token,)).fetchone()


def _drive(workers, until, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for w in workers:
            w.poll_once(200)
        if until():
            return
    raise AssertionError(f"timed out: {what}")


def _spin(workers, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for w in workers:
            w.poll_once(200)


def _task_state(row, day: date) -> str:
    st, closes_on, sent_on, outcome = row
    return grant_task_state(st, closes_on, day, sent_on, outcome)


def _decline(bootstrap: str, person: Person, item_id: str) -> None:
    """What POST /api/v1/inbox/{id}/decline publishes (tests/test_proactive_e2e.py goes through the API)."""
    producer = bus.make_producer(bootstrap)
    try:
        bus.publish_all(producer, [(PROACTIVE, new_event(
            "OfferDeclined", person.token, {"offer_id": item_id, "rule": "senior_allowance_80",
                                            "reason_code": "not_needed"},
            actor=Actor(person.token, "applicant", "online"), region_code=person.region, correlation_id=item_id,
            event_id=derived_event_id(item_id, "OfferDeclined")))], timeout=30)
    finally:
        producer.close()


def test_a_grant_reaches_its_department_after_the_window_and_a_declined_one_never_does(
        running_stack, monkeypatch):
    url, bootstrap = running_stack.database_url, running_stack.bootstrap_servers
    migrations.migrate(url)
    kept = Person(date(1945, 3, 3), "female", "周秀英")
    declined = Person(date(1945, 3, 4), "male", "陈志强")
    late = Person(date(1945, 3, 5), "female", "林美华")
    monkeypatch.setenv("ONETHING_TODAY", DAY0.isoformat())
    with psycopg.connect(url, autocommit=True) as conn:
        for p in (kept, declined, late):
            _id_card(conn, p)
    skip_history(bootstrap, url)
    with psycopg.connect(url, autocommit=True) as conn:   # the adapter starts at its topic's end
        store_offsets(conn, f"adapter.{DEPT}", end_offsets(bootstrap, [tasks_topic(DEPT)]))
    since = mark(bootstrap, [tasks_topic(DEPT), decisions_topic(DEPT)])
    proactive = Worker(ProactiveProcessor(tick_s=0.3, scan_every_s=1), bootstrap, url, poll_ms=200)
    adapter = Worker(AdapterProcessor(build_backend(DEPT), retry_for_s=1), bootstrap, url, poll_ms=200)
    workers = (proactive, adapter)
    conn = psycopg.connect(url, autocommit=True)
    try:
        for w in workers:
            w.ready(60)
        _drive(workers, lambda: all(_item(conn, p.token) for p in (kept, declined, late)), 120,
               "the 80th birthdays were not granted")
        ids = {p.token: _item(conn, p.token)[0] for p in (kept, declined, late)}
        closes_on = _item(conn, kept.token)[2]
        assert closes_on == add_working_days(DAY0, 10)

        _decline(bootstrap, declined, ids[declined.token])
        _drive(workers, lambda: _item(conn, declined.token)[1] == "declined", 60, "the decline was not folded")

        # the window's last day: the recipient may still decline, nothing is sent
        monkeypatch.setenv("ONETHING_TODAY", closes_on.isoformat())
        _spin(workers, 3)
        assert not [e for e in read_since(bootstrap, since) if e.type == "TaskDispatched"]
        assert _item(conn, kept.token)[3] is None

        # the day after: the kept grants are told to civil affairs, the declined one is not
        monkeypatch.setenv("ONETHING_TODAY", (closes_on + timedelta(days=1)).isoformat())
        _drive(workers, lambda: _item(conn, kept.token)[3] is not None and _item(conn, late.token)[3] is not None,
               60, "the grants' tasks were not sent")
        # a lagging member reads the third person's decline (made within the window) only now
        _decline(bootstrap, late, ids[late.token])

        def answered() -> bool:
            return _item(conn, kept.token)[4] == "applied" and _item(conn, late.token)[1] == "declined" and \
                conn.execute("SELECT cancelled_at IS NOT NULL FROM department_work_items WHERE department = %s "
                             "AND task_id = %s", (DEPT, f"grant:{ids[late.token]}")).fetchone() == (True,)

        _drive(workers, answered, 90, "the department did not execute the grant or withdraw the late-declined one")
        _spin(workers, 2)   # more ticks: nothing is sent again
    finally:
        for w in workers:
            w.close()
        conn.execute("DELETE FROM e_licenses WHERE licence_no LIKE %s", (LICENCE_PREFIX + "%",))
        conn.close()

    events = read_since(bootstrap, since)
    tasks = [e for e in events if e.type == "TaskDispatched"]
    assert sorted(e.key for e in tasks) == sorted([ids[kept.token], ids[late.token]]), "a declined grant was sent"
    task = next(e for e in tasks if e.key == ids[kept.token])
    p = task.payload
    assert p["kind"] == "benefit_grant" and p["task_id"] == f"grant:{ids[kept.token]}"
    assert p["department"] == DEPT and p["service_id"] == "civil_affairs.senior_allowance"
    assert task.id == derived_event_id(ids[kept.token], "TaskDispatched")   # the item's: a replay sends the same
    assert p["fields"]["beneficiary_token"] == kept.token and p["fields"]["benefit_code"] == "senior_allowance"
    assert p["fields"]["decline_until"] == closes_on.isoformat()
    raw = json.dumps([e.payload for e in events], ensure_ascii=False, default=str)
    assert kept.rid not in raw and kept.name not in raw          # ids, codes and dates only
    (cancel,) = [e for e in events if e.type == "TaskCancelled"]
    assert cancel.key == ids[late.token] and cancel.payload["kind"] == "benefit_grant"
    answers = [(e.key, e.payload["outcome"]) for e in events if e.type == "DecisionRecorded"]
    assert (ids[kept.token], "applied") in answers and all(e.payload["kind"] == "benefit_grant"
                                                           for e in events if e.type == "DecisionRecorded")
    with psycopg.connect(url) as conn:
        rows = {iid: (st, closes, sent, outcome) for iid, st, closes, sent, outcome in conn.execute(
            "SELECT item_id::text, state, closes_on, task_sent_on, task_outcome FROM proactive_items "
            "WHERE item_id::text = ANY(%s)", (list(ids.values()),))}
        # nothing of it reached the case processors' state: the grant is no case
        assert not conn.execute("SELECT 1 FROM dispatch_cases WHERE case_id = ANY(%s)",
                                (list(ids.values()),)).fetchone()
    after = closes_on + timedelta(days=1)
    assert _task_state(rows[ids[kept.token]], after) == "executed"
    assert _task_state(rows[ids[declined.token]], after) == "cancelled"
    assert rows[ids[declined.token]][2] is None, "no task was ever sent for the grant declined in time"
    assert _task_state(rows[ids[late.token]], after) == "cancelled"

