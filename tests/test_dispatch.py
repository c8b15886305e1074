"""The dispatch processor against the real broker: tasks go out in dependency order with
minimised payloads, and a kill -9 in the middle of 1,000 applications loses none.

Dispatch runs on the batched runtime (projectors/runtime.py): a batch's derived events are
acknowledged by the broker before its case states and offsets commit in one transaction. These
tests prove that a kill between the two re-emits (same ids) rather than loses.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from catalog.loader import load_catalog
from events import bus
from infra.topics import tasks_topic

from .support.fast_forward import skip_history
from .support.scale import scaled
from .support.newborn import submission
from .support.topics import mark, read_since, wait_for

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent
CATALOG = load_catalog()
FIRST_WAVE = {s for s in CATALOG.select(bundle_code="newborn").services
              if not CATALOG.service(s).consumes}
WAVE_DEPTS = sorted({CATALOG.service(s).department for s in FIRST_WAVE})


def start_dispatch(log_path: Path, **env: str) -> subprocess.Popen:
    out = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "infra.process", "dispatch"], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "ONETHING_METRICS_PORT": "-1", **env})


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


WAVE_TOPICS = [tasks_topic(d) for d in WAVE_DEPTS]


def first_wave_tasks(bootstrap: str, case_ids: set[str], since: dict):
    return read_since(bootstrap, since, lambda e: e.type == "TaskDispatched" and e.key in case_ids, timeout_s=120)


@pytest.mark.slow  # a fault scenario: the suite runs it in its own lane (infra/onething.sh)
def test_kill_9_in_the_middle_of_a_stream_of_applications_loses_no_task(bootstrap, database_url, tmp_path):
    """kill -9 right after the second batch's tasks were acknowledged by the broker and before its
    state and offsets were committed (projectors/crash_points.py): the restart re-reads that
    batch, emits its tasks again under the same ids, and loses none."""
    run = uuid.uuid4().hex[:6]
    cases = [submission(f"case-{run}-{i:04d}") for i in range(scaled(1000, 600))]   # two batches of 500 at least
    case_ids = {c.key for c in cases}
    skip_history(bootstrap, database_url)
    since = mark(bootstrap, WAVE_TOPICS)
    producer = bus.make_producer(bootstrap)
    bus.publish_all(producer, [("applications", c) for c in cases], timeout=120)
    producer.close()
    proc = start_dispatch(tmp_path / "dispatch-1.log", ONETHING_CRASH_AT="dispatch:after_flush:2",
                          ONETHING_CRASH_DIR=str(tmp_path))
    try:
        assert proc.wait(180) == -signal.SIGKILL, (tmp_path / "dispatch-1.log").read_text()[-3000:]
        done_before = len({e.key for e in first_wave_tasks(bootstrap, case_ids, since)})
        with psycopg.connect(database_url) as conn:
            committed = conn.execute("SELECT count(*) FROM dispatch_cases WHERE case_id = ANY(%s)",
                                     (list(case_ids),)).fetchone()[0]
        assert 0 < committed < done_before <= len(cases), "killed between a batch's flush and its commit"

        proc = start_dispatch(tmp_path / "dispatch-2.log")

        def stored() -> int:
            with psycopg.connect(database_url) as conn:
                return conn.execute("SELECT count(*) FROM dispatch_cases WHERE case_id = ANY(%s)",
                                    (list(case_ids),)).fetchone()[0]

        # the restart re-reads the batch whose state was never committed, and stores it
        assert wait_for(lambda: stored() == len(cases), 300, 1), (tmp_path / "dispatch-2.log").read_text()[-3000:]
        expected = len(cases) * len(FIRST_WAVE)
        assert wait_for(lambda: len({e.id for e in first_wave_tasks(bootstrap, case_ids, since)}) >= expected, 300, 3), \
            (tmp_path / "dispatch-2.log").read_text()[-3000:]
    finally:
        stop(proc)

    tasks = first_wave_tasks(bootstrap, case_ids, since)
    by_case = Counter()
    for t in {e.id: e for e in tasks}.values():
        by_case[t.key] += 1
    assert set(by_case) == case_ids, "a case lost its tasks"
    assert set(by_case.values()) == {len(FIRST_WAVE)}
    # a repeat after the crash carries the same id, so departments drop it
    repeats = len(tasks) - len({e.id for e in tasks})
    assert repeats > 0, "the batch killed before its commit was emitted again"
    print(f"\n{len(cases)} applications, kill -9 after {done_before} cases dispatched ({committed} committed); "
          f"{repeats} repeated task events")
