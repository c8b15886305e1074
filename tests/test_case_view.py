"""The case view read model on the real broker and the real PostgreSQL: a projection runner
publishes and reads (happy path, out of order, repeats), the view rebuilt from the log (and its
stall watchdog), a kill -9 in the middle, and the real topics. The same fold without Kafka is in
tests/test_case_view_fold.py; the scenarios and the views are in tests/support/case_view_scenarios.py
and tests/support/case_views.py.

The scripted tests (happy path, out of order, repeats, rebuild, kill -9) run on a topology of
this module's own: `cvtest-<run>.applications`, `.cases`, `.tasks.<department>`,
`.decisions.<department>`, six partitions each like the real ones. Other engineers' tests run a
dispatch processor and department adapters on the real topics while these run; on the real
topics those would answer this module's tasks with decisions of their own and make exact
assertions flaky. One test runs on the real topics and checks that the view equals the
in-order fold of whatever the log then holds for its case.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from events import kafka_auth
from infra.topics import APPLICATIONS
from projectors.postgres_projection import rebuild
from projectors.timeline_text import describe

from .support.offsets import caught_up, end_offsets
from .support.newborn import newborn_form
from .support.topics import read_since
from .support.case_view_scenarios import CAT, CHILD_ID, SCENARIOS, real_topic_of, timeline_entries
from .support.case_views import REAL, RUN, OwnView, Topology, is_done, publish, reference, snapshot

__all__ = ["reference"]  # a fixture of tests/support/case_views.py: pytest finds it here

pytestmark = [pytest.mark.broker, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parent.parent
FORM = newborn_form()
PERSONAL = [FORM[k] for k in ("child_name", "mother_name", "contact_mobile", "mother_resident_id",
                              "residence_address", "bank_account_no")] + [CHILD_ID, "结婚证照片不清晰", "不再需要"]


@pytest.fixture(scope="module")
def topology(bootstrap):
    topo = Topology(f"cvtest-{RUN}")
    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap))
    admin.create_topics([NewTopic(t, 6, 1) for t in topo.topics])
    yield topo
    try:
        admin.delete_topics(list(topo.topics))
    finally:
        admin.close()


@pytest.fixture(scope="module")
def live(bootstrap, database_url, topology):
    view = OwnView(bootstrap, database_url, "live", topology)
    yield view
    view.close()


# -- the tests ---------------------------------------------------------------------------------
def test_happy_path_every_service_approved_with_outputs_and_a_readable_timeline(live, reference, bootstrap,
                                                                               topology):
    cid = f"{live.prefix}-happy"
    events = SCENARIOS["happy"](cid)
    publish(bootstrap, topology, events)
    assert live.until(lambda: is_done(live.case(cid), events))
    view = live.case(cid)

    assert view["status"] == "completed" and view["status_label"] == {"zh": "已办结", "en": "Completed"}
    assert view["bundle_code"] == "newborn" and view["bundle_label"] == {"zh": "新生儿出生", "en": "Birth of a child"}
    assert view["receipt_no"] == f"R-{cid[-8:]}" and view["applicant_token"] == "p_test_applicant"
    assert view["channel"] == "online" and view["region_code"] == "440203"
    assert len(view["services"]) == 9 and {s["status"] for s in view["services"]} == {"approved"}
    assert view["departments"] == ["disease_control", "health", "hrss", "medical_insurance", "police", "tax"]
    police = next(s for s in view["services"] if s["service_id"] == "police.birth_registration")
    assert police["outputs"] == {"child_resident_id": CHILD_ID}
    assert police["department_label"]["zh"] == "公安机关" and police["label"]["zh"] == "出生登记（户口登记）"
    assert police["due_date"] is not None and police["working_days_left"] is None  # decided
    assert view["due_date"] == max(s["due_date"] for s in view["services"])
    assert view["missing"] == [] and view["completed_at"] and view["submitted_at"] < view["completed_at"]

    # the timeline: every event once, in causal order, as sentences
    shown = timeline_entries(events)
    assert [t["event_type"] for t in view["timeline"]] == [e.type for e in shown]
    assert [(t["text_zh"], t["text_en"]) for t in view["timeline"]] == [describe(e, CAT) for e in shown]
    first, last = view["timeline"][0], view["timeline"][-1]
    assert first["text_zh"] == "申请已提交（新生儿出生一件事，9个事项；电子证照免提交2项；容缺后补1项）"
    assert first["text_en"].startswith("Application submitted (Birth of a child, 9 services")
    assert first["actor_role"] == "applicant" and first["channel"] == "online"
    assert last["text_zh"] == "全部事项已办结（9项）" and last["text_en"] == "All services completed (9 approved)"
    assert any(t["text_zh"] == "已分派至公安机关：出生登记（户口登记）" + f"，应于{police['due_date']}前办结"
               for t in view["timeline"])
    assert any(t["text_en"] == "Public security (police) approved: Household registration of a birth"
               for t in view["timeline"])
    texts = " ".join(t["text_zh"] + t["text_en"] for t in view["timeline"])
    assert not [p for p in PERSONAL if p in texts]

    reference.build(events)
    assert reference.case(cid) == view
    assert reference.snapshot([cid]) == snapshot(live.conn, live.schema, [cid])


def test_out_of_order_delivery_across_topics_ends_in_the_right_state(live, reference, bootstrap, topology):
    cid = f"{live.prefix}-correction"
    events = SCENARIOS["correction"](cid)
    decisions = [e for e in events if e.type == "DecisionRecorded"]
    derived = [e for e in events if e.type in ("TaskDispatched", "CaseCompleted")]
    facts = [e for e in events if real_topic_of(e) == APPLICATIONS]
    assert len(decisions) + len(derived) + len(facts) == len(events)
    services = f"SELECT service_id, status, attempt FROM {live.schema}.case_service_view WHERE case_id = %s"

    # 1. every decision before any task, and the attempt-2 decision before the supplement
    publish(bootstrap, topology, decisions)
    assert live.until(lambda: len(live.conn.execute(services, (cid,)).fetchall()) == 9)
    rows = {sid: (status, attempt) for sid, status, attempt in live.conn.execute(services, (cid,))}
    assert rows["police.birth_registration"] == ("approved", 2)  # attempt 2 outranks the correction
    assert live.case(cid) is None  # recorded, but not shown before the submission is seen

    # 2. the tasks and the completion, still before the submission and the supplement
    publish(bootstrap, topology, derived)
    assert live.until(lambda: live.timeline_count([cid]) == len(decisions) + len(derived))
    rows = {sid: (status, attempt) for sid, status, attempt in live.conn.execute(services, (cid,))}
    assert set(rows.values()) == {("approved", 1), ("approved", 2)}  # TaskDispatched did not move them back

    # 3. the submission and the supplement last
    publish(bootstrap, topology, facts)
    assert live.until(lambda: is_done(live.case(cid), events))
    view = live.case(cid)
    assert view["status"] == "completed" and view["missing"] == []
    police = next(s for s in view["services"] if s["service_id"] == "police.birth_registration")
    assert police["status"] == "approved" and police["attempt"] == 2 and police["outputs"] == {"child_resident_id": CHILD_ID}
    zh = [t["text_zh"] for t in view["timeline"]]
    correction = zh.index("需要补正：出生登记（户口登记）（公安机关），请补交：结婚证、居民户口簿")
    assert zh[correction + 1] == "已补交材料：结婚证、居民户口簿"
    assert zh[correction + 2].startswith("已分派至公安机关：出生登记（户口登记）（补正后第2次分派）")

    reference.build(events)  # the same log applied in the order it was written
    assert view == reference.case(cid)
    assert snapshot(live.conn, live.schema, [cid]) == reference.snapshot([cid])


def test_the_same_events_twice_make_no_duplicate_timeline_row(live, reference, bootstrap, topology):
    cid = f"{live.prefix}-withdrawn"
    events = SCENARIOS["withdrawn"](cid)
    first_task = next(e for e in events if e.type == "TaskDispatched")
    # the same task derived a second time under another id (a dispatcher re-run from another cause)
    rederived = replace(first_task, envelope=replace(first_task.envelope, event_id=str(uuid.uuid4())))
    publish(bootstrap, topology, events)
    publish(bootstrap, topology, [*events, rederived])
    assert live.until(lambda: is_done(live.case(cid), events))
    live.until(lambda: False, timeout_s=2)  # let the repeats arrive too
    view = live.case(cid)

    assert view["status"] == "withdrawn"
    statuses = {s["service_id"]: (s["status"], s["attempt"]) for s in view["services"]}
    assert statuses["disease_control.vaccination_record"] == ("approved", 1)
    assert statuses["health.childbirth_registration"] == ("cancelled", 1)  # the late approval lost
    assert statuses["police.birth_registration"] == ("cancelled", 0)  # never dispatched
    assert live.timeline_count([cid]) == len(timeline_entries(events))
    zh = [t["text_zh"] for t in view["timeline"]]
    assert "申请已撤回" in zh and zh.index("申请已撤回") < zh.index("已取消卫生健康部门的事项：生育登记（生育登记凭证签发）")

    reference.build(events)
    assert view == reference.case(cid)
    before = snapshot(live.conn, live.schema, [cid])
    assert before == reference.snapshot([cid])
    # and past the runner's processed_events guard: apply is idempotent on its own
    with live.conn.transaction():
        for e in [*events, rederived, *reversed(events)]:
            live.projection.apply(live.conn, e)
    assert snapshot(live.conn, live.schema, [cid]) == before


def test_rebuild_from_the_log_gives_the_rows_of_the_incremental_run(bootstrap, database_url, topology):
    view = OwnView(bootstrap, database_url, "rebuild", topology)
    try:
        logs = {f"{view.prefix}-{which}": SCENARIOS[which](f"{view.prefix}-{which}") for which in SCENARIOS}
        publish(bootstrap, topology, [e for events in logs.values() for e in events])
        assert view.until(lambda: all(is_done(view.case(cid), events) for cid, events in logs.items()))
        incremental = snapshot(view.conn, view.schema, logs)
        views = {cid: view.case(cid) for cid in logs}
        view.runner.close()
        view.runner = None

        calls: list[tuple[int, int]] = []
        total = rebuild(view.projection, bootstrap, database_url, progress=lambda done, tot: calls.append((done, tot)))
        assert calls and calls[-1] == (total, total) and total >= sum(len(e) for e in logs.values())
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        assert snapshot(view.conn, view.schema, logs) == incremental
        assert {cid: view.case(cid) for cid in logs} == views
    finally:
        view.close()


def test_a_rebuild_whose_consumer_fetches_nothing_gets_a_new_one_and_ends(bootstrap, database_url, topology,
                                                                           monkeypatch):
    """The watchdog of projectors/postgres_projection.py: the first consumer of the rebuild is
    made to fetch nothing (as one was seen to, 2026-12-02); after STALL_S the rebuild replaces it,
    says so, and ends with the same rows."""
    import structlog

    from projectors import postgres_projection as pp

    view = OwnView(bootstrap, database_url, "stall", topology)
    try:
        logs = {f"{view.prefix}-happy": SCENARIOS["happy"](f"{view.prefix}-happy")}
        publish(bootstrap, topology, [e for events in logs.values() for e in events])
        assert view.until(lambda: all(is_done(view.case(cid), events) for cid, events in logs.items()))
        incremental = snapshot(view.conn, view.schema, logs)
        view.runner.close()
        view.runner = None

        stuck: list = []
        real_poll = pp.ProjectionRunner.poll_once

        def poll_once(self, timeout_ms: int = 500):
            if not stuck or stuck[0] is self:
                stuck[:1] = [self]
                time.sleep(timeout_ms / 1000)   # the first runner: its partitions, and no record
                return pp.BatchResult(0, 0, 0)
            # the replacement: a fresh member's join and first fetch take longer than the 1 s the
            # stuck one was given (a clean-clone run, 2026-12-02, saw it declared stalled too)
            monkeypatch.setattr(pp, "STALL_S", 60.0)
            return real_poll(self, timeout_ms)

        monkeypatch.setattr(pp, "STALL_S", 1.0)
        monkeypatch.setattr(pp.ProjectionRunner, "poll_once", poll_once)
        with structlog.testing.capture_logs() as logs_seen:
            total = rebuild(view.projection, bootstrap, database_url)
        assert total >= len(logs[f"{view.prefix}-happy"])
        stalled = [e for e in logs_seen if e["event"] == "rebuild.stalled"]
        assert len(stalled) == 1 and stalled[0]["done"] == 0 and stalled[0]["total"] == total
        assert snapshot(view.conn, view.schema, logs) == incremental
    finally:
        view.close()


def test_on_the_real_topics_the_view_is_the_fold_of_what_the_log_holds(bootstrap, database_url, reference):
    """The real topics, with whatever else runs on them: a dispatch processor may fold this case
    too and add its own (mostly identical) events, department adapters may answer its tasks. The
    view must then equal the fold of everything the log holds for the case."""
    view = OwnView(bootstrap, database_url, "real", REAL)
    try:
        cid = f"{view.prefix}-real"
        events = SCENARIOS["happy"](cid)
        publish(bootstrap, REAL, events)

        def converged() -> bool:
            if view.timeline_count([cid]) < len(timeline_entries(events)):
                return False
            reference.build(read_since(bootstrap, view.start, lambda e: e.key == cid))
            return snapshot(view.conn, view.schema, [cid]) == reference.snapshot([cid])

        # 180 s: under pytest-xdist the other worker's processes may be busy on the same real topics
        assert view.until(converged, 180)
        shown = view.case(cid)
        assert shown["bundle_code"] == "newborn" and shown["receipt_no"] == f"R-{cid[-8:]}"
        texts = {(t["text_zh"], t["text_en"]) for t in shown["timeline"]}
        facts = [e for e in events if e.type in ("ApplicationSubmitted", "DecisionRecorded")]
        assert {describe(e, CAT) for e in facts} <= texts
    finally:
        view.close()


def _start_projection(view: OwnView, group_prefix: str, slow_ms: int, log_path: Path) -> subprocess.Popen:
    out = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.run_case_view", view.name, view.schema, view.prefix, group_prefix,
         str(slow_ms), ",".join(view.projection.topics)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "ONETHING_METRICS_PORT": "-1"})


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# a fault scenario on topics and groups of its own: it runs in the test command's lane of the other
# files (infra/onething.sh), which ends earlier than the whole-system lane
def test_kill_9_in_the_middle_ends_with_the_view_of_a_fresh_rebuild(bootstrap, database_url, topology, tmp_path):
    view = OwnView(bootstrap, database_url, "kill", topology)
    fresh = OwnView(bootstrap, database_url, "fresh", topology, seed=False)
    fresh.prefix = view.prefix  # the same cases
    proc = None
    t0 = time.monotonic()
    phase = lambda what: print(f"{time.monotonic() - t0:6.1f}s {what}")  # noqa: E731 (shown on failure)
    try:
        kinds = sorted(SCENARIOS)
        logs = {f"{view.prefix}-{i:03d}": SCENARIOS[kinds[i % len(kinds)]](f"{view.prefix}-{i:03d}")
                for i in range(100)}
        events = [e for log in logs.values() for e in log]
        publish(bootstrap, topology, events)
        ends = end_offsets(bootstrap, view.projection.topics)
        phase(f"published {len(events)} events")
        processed = "SELECT count(*) FROM processed_events WHERE consumer = %s"

        proc = _start_projection(view, "projection", 3, tmp_path / "run-1.log")
        assert wait(lambda: view.conn.execute(processed, (view.name,)).fetchone()[0] >= 500, 60), \
            (tmp_path / "run-1.log").read_text()[-3000:]
        _stop(proc, signal.SIGKILL)  # no shutdown, in the middle of a batch's transaction
        done_before = view.conn.execute(processed, (view.name,)).fetchone()[0]
        phase(f"killed after {done_before} events")
        assert done_before < len(events), "the kill should land in the middle; make the batch bigger"

        # restarted in a new consumer group so it need not wait for the dead member's session to expire:
        # where to resume comes from PostgreSQL, not from the group
        proc = _start_projection(view, "projection-restarted", 0, tmp_path / "run-2.log")
        assert wait(lambda: caught_up(database_url, view.name, ends), 60), (tmp_path / "run-2.log").read_text()[-3000:]
        _stop(proc)
        proc = None
        phase("restarted process caught up")

        # a fresh rebuild from the log, in a schema of its own
        rebuild(fresh.projection, bootstrap, database_url)
        phase("fresh rebuild done")
        assert snapshot(view.conn, view.schema, logs) == snapshot(fresh.conn, fresh.schema, logs)
        assert sum(map(len, (timeline_entries(log) for log in logs.values()))) == view.timeline_count(logs)
        assert all(is_done(view.case(cid), log) for cid, log in logs.items())
    finally:
        if proc is not None:
            _stop(proc, signal.SIGKILL)
        view.close("projection-restarted")
        fresh.close()


def wait(predicate, timeout_s: float, interval: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
