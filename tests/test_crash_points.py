"""kill -9 of each processor in the middle of a batch, through every process of `onething run`:
after the flush and before the commit (the derived events are on the broker, the state and the
offsets are not in PostgreSQL), and after the commit and before Kafka's offset commit.

Each processor is killed once at its point (projectors/crash_points.py; the whole process dies
with it, as with kill -9) and restarted by the supervisor — in the suite's short form four of them,
one per process and both points (`ONETHING_TEST_SCALE=long`: all eight). Then: every case completes; every
service got its task once and two decisions once (same ids on a re-run, counted by id); no
department decided a task twice; exactly one child per case in the police register; and the case
view and the KPIs equal a fresh rebuild from the log.
"""
from __future__ import annotations

import uuid

import psycopg
import pytest

from catalog.loader import load_catalog
from events import bus
from infra.supervisor import newborn_departments, system
from infra.topics import decisions_topic, tasks_topic
from projectors import case_view, kpis
from projectors.postgres_projection import rebuild

from .support.fast_forward import end_offsets, skip_history
from .support.newborn import submission
from .support.offsets import settled as log_settled
from .support.scale import LONG
from .support.topics import read_since, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]
CATALOG = load_catalog()
NEWBORN = sorted(CATALOG.select(bundle_code="newborn").services)
DEPARTMENTS = sorted({CATALOG.service(s).department for s in NEWBORN})
ALL_CRASHES = ["dispatch:after_flush:3", "cascade:after_commit:4", "adapter.police:after_flush:2",
               "adapter.health:after_commit:3", "projection.case_view:after_flush:4", "projection.kpis:after_commit:3",
               "projection.ratings:after_flush:2", "projection.deadlines:after_commit:5"]
#: the suite's short form: both points of the commit sequence, in two processes (dispatch after
#: its flush, an adapter after its commit); every processor at both points with ONETHING_TEST_SCALE=long
CRASHES = ALL_CRASHES if LONG else [ALL_CRASHES[i] for i in (0, 3)]


def _completed(database_url: str, ids: list[str]) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM case_view WHERE case_id = ANY(%s) AND status = 'completed'",
                            (ids,)).fetchone()[0]


def test_kill_9_at_every_point_of_the_commit_sequence_loses_and_doubles_nothing(
        settings, running_stack, bootstrap, database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("ONETHING_API_PORT", "0")
    run = uuid.uuid4().hex[:6]
    cases = [submission(f"case-crash-{run}-{i:03d}") for i in range(150)]
    ids = [c.key for c in cases]
    skip_history(bootstrap, database_url)
    start = end_offsets(bootstrap, case_view.default_topics(CATALOG))  # where this test's events begin
    crash_dir = tmp_path / "crashes"
    crash_dir.mkdir()
    sup = system(tmp_path / "logs", newborn_departments(),
                 env={"ONETHING_SIM_PROCESSING_S": "0", "ONETHING_CASCADE_START": "latest",
                      "ONETHING_CRASH_AT": ",".join(CRASHES), "ONETHING_CRASH_DIR": str(crash_dir)})
    sup.children.pop("api")  # the applications go straight to the topic here
    sup.start()
    try:
        producer = bus.make_producer(bootstrap)
        for batch in (cases[:50], cases[50:100], cases[100:]):  # in waves: every processor sees several batches
            bus.publish_all(producer, [("applications", c) for c in batch])
            wait_for(lambda: sup.check() is not None and _completed(database_url, ids) >= 10, 60, 0.5)
        producer.close()

        def settled() -> bool:
            sup.check()  # restarts what was killed
            return _completed(database_url, ids) == len(ids)

        assert wait_for(settled, 300, 1), f"{_completed(database_url, ids)} of {len(ids)} completed"
        # the live read models have applied the whole log before the system stops (rebuilt below)
        topics = list(case_view.default_topics(CATALOG))
        for model in ("case_view", "kpis"):
            assert wait_for(lambda: log_settled(bootstrap, database_url, model, topics, sup.check), 180, 2), \
                f"the live {model} did not catch up with the log"
        fired = sorted(p.name.removeprefix("crashed-") for p in crash_dir.iterdir())
    finally:
        sup.stop()
    assert len(fired) == len(CRASHES), f"crash points not reached: {fired}"

    since = lambda topics: {tp: o for tp, o in start.items() if tp.topic in topics}  # noqa: E731
    tasks = read_since(bootstrap, since({tasks_topic(d) for d in DEPARTMENTS}),
                       lambda e: e.type == "TaskDispatched" and e.key in set(ids), timeout_s=120)
    by_id = {t.id: t for t in tasks}
    assert len({t.payload["task_id"] for t in by_id.values()}) == len(by_id) == len(ids) * len(NEWBORN), \
        "a service got no task, or two different tasks"
    decisions = read_since(bootstrap, since({decisions_topic(d) for d in DEPARTMENTS}),
                           lambda e: e.type == "DecisionRecorded" and e.key in set(ids), timeout_s=120)
    per_task: dict[str, set[str]] = {}
    for d in decisions:
        per_task.setdefault(d.payload["task_id"], set()).add(d.id)
    assert len(per_task) == len(by_id) and {len(v) for v in per_task.values()} == {2}, \
        "every task: accepted and approved, once each (repeats carry the same ids)"

    with psycopg.connect(database_url, autocommit=True) as conn:
        work = conn.execute("SELECT count(*), count(DISTINCT (department, task_id)) FROM department_work_items "
                            "WHERE case_id = ANY(%s)", (ids,)).fetchone()
        assert work == (len(by_id), len(by_id)), "a department decided a task twice"
        children = conn.execute("SELECT count(*), count(DISTINCT case_id) FROM police_household_register "
                                "WHERE case_id = ANY(%s)", (ids,)).fetchone()
        assert children == (len(ids), len(ids)), "exactly one child per case in the police register"
        schema = f"crash_rebuild_{run}"
        case_view.create_schema(conn, schema)
        kpis.create_schema(conn, schema)
    keep = set(ids).__contains__
    try:
        rebuild(case_view.CaseViewProjection(f"{schema}_cv", schema=schema, keep=keep), bootstrap, database_url,
                start=start)
        rebuild(kpis.KpiProjection(f"{schema}_kpis", schema=schema, keep=keep), bootstrap, database_url, start=start)
        with psycopg.connect(database_url) as conn:
            for cid in ids[::5]:
                assert case_view.read_case(conn, cid, schema=schema) == case_view.read_case(conn, cid), cid
            for table, key in (("kpi_cases", "case_id"), ("kpi_services", "case_id, service_id")):
                q = f"SELECT * FROM {{}}.{table} WHERE case_id = ANY(%s) ORDER BY {key}"
                assert conn.execute(q.format(schema), (ids,)).fetchall() == \
                    conn.execute(q.format("public"), (ids,)).fetchall(), table
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            for name in (f"{schema}_cv", f"{schema}_kpis"):
                conn.execute("DELETE FROM consumer_offsets WHERE consumer = %s", (name,))
                conn.execute("DELETE FROM processed_events WHERE consumer = %s", (name,))
