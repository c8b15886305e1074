"""The dispatch processor (faust-streaming) against the real broker: tasks go out in dependency
order with minimised payloads, and a kill -9 in the middle of 1,000 applications loses none.

faust can commit offsets past in-flight messages (faust-streaming #606); these tests are the
proof that the processor's design (manual in-order acks after the broker acknowledged every
derived event, state in PostgreSQL, exit on failure) does not lose a task.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from catalog.loader import load_catalog
from events import bus
from infra.topics import tasks_topic

from .support.newborn import submission
from .support.topics import read_all, wait_for

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent
CATALOG = load_catalog()
FIRST_WAVE = {s for s in CATALOG.select(bundle_code="newborn").services
              if not CATALOG.service(s).consumes}
WAVE_DEPTS = sorted({CATALOG.service(s).department for s in FIRST_WAVE})


def start_dispatch(log_path: Path) -> subprocess.Popen:
    out = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "infra.process", "dispatch"], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "ONETHING_METRICS_PORT": "-1"})


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def first_wave_tasks(bootstrap: str, case_ids: set[str]):
    return read_all(bootstrap, [tasks_topic(d) for d in WAVE_DEPTS],
                    keep=lambda e: e.type == "TaskDispatched" and e.key in case_ids, timeout_s=120)


def test_kill_9_in_the_middle_of_1000_applications_loses_no_task(bootstrap, tmp_path):
    run = uuid.uuid4().hex[:6]
    cases = [submission(f"case-{run}-{i:04d}") for i in range(1000)]
    case_ids = {c.key for c in cases}
    proc = start_dispatch(tmp_path / "dispatch-1.log")
    try:
        producer = bus.make_producer(bootstrap)
        bus.publish_all(producer, [("applications", c) for c in cases], timeout=120)
        producer.close()

        # let it get part-way, then kill -9: no shutdown, no final commit
        assert wait_for(lambda: len({e.key for e in first_wave_tasks(bootstrap, case_ids)}) >= 100, 180, 2), \
            (tmp_path / "dispatch-1.log").read_text()[-3000:]
        stop(proc, signal.SIGKILL)
        done_before = len({e.key for e in first_wave_tasks(bootstrap, case_ids)})
        assert done_before < len(cases), "the kill should land in the middle; make the batch bigger"

        proc = start_dispatch(tmp_path / "dispatch-2.log")
        expected = len(cases) * len(FIRST_WAVE)
        assert wait_for(lambda: len({e.id for e in first_wave_tasks(bootstrap, case_ids)}) >= expected, 300, 3), \
            (tmp_path / "dispatch-2.log").read_text()[-3000:]
    finally:
        stop(proc)

    tasks = first_wave_tasks(bootstrap, case_ids)
    by_case = Counter()
    for t in {e.id: e for e in tasks}.values():
        by_case[t.key] += 1
    assert set(by_case) == case_ids, "a case lost its tasks"
    assert set(by_case.values()) == {len(FIRST_WAVE)}
    # a repeat after the crash carries the same id, so departments drop it
    repeats = len(tasks) - len({e.id for e in tasks})
    print(f"\n1000 applications, kill -9 after {done_before} cases dispatched; {repeats} repeated task events")
