"""The cascade's reliability scenario, shaped like Kafka's own system tests: a burst of 1,000
register changes over 100 companies (400 over 40 in the suite's short form, tests/support/scale.py), written by concurrent producers, while the tax
department's register system is down for part of it and the cascade projector is killed with
SIGKILL once in the middle. Verified at the end against the log itself:

- every department's copy of every company equals the master register (the fold of
  registry.company), field by field, for the fields it keeps;
- each change was applied exactly once per subscribing department, in sequence order, and
  never needed the copy's stale-value guard (the cascade kept the order);
- every sync task read back carries only fields its department keeps, and only changed ones;
- the outage was seen (silent re-sends, escalations of tax) and recovered from.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import nullcontext
from queue import Empty, Queue

import psycopg
import pytest

from catalog.subscriptions import load_subscriptions
from department_adapters.reference.register_copy import clear_outage, set_outage
from events import personal
from infra import keystore
from infra.settings import Settings
from infra.topics import REGISTRY_COMPANY, tasks_topic
from producers.register_changes import fold_all
from producers.registers import RegisterRecorder
from projectors import cascade_status
from projectors.cascade_processor import CASCADE_TOPIC

from .support.cascade_harness import (cascade_env, company_fields, end_offsets, new_resident_id, new_uscc,
                                      open_changes, skip_if_foreign_adapters, start_process,
                                      stop_process, wait_cascade_ready, wait_complete)
from .support.scale import scaled
from .support.topics import read_messages

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]
SUBS = load_subscriptions()
DEPARTMENTS = SUBS.departments("company")
COMPANIES, CHANGES_PER_COMPANY = scaled(100, 20), 9   # + 1 registration each: 1,000 (200) changes
DOWN, OUTAGE_S = "tax", 25.0
KILL_AFTER_APPLIED = scaled(2000, 400)  # of about 6,500 (1,300) department applications


def applied_targets(database_url: str, cascade: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM cascade_targets WHERE cascade = %s AND state = 'applied'",
                            (cascade,)).fetchone()[0]


def escalated_targets(database_url: str, cascade: str, department: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM cascade_targets WHERE cascade = %s AND department = %s "
                            "AND escalated_at IS NOT NULL", (cascade, department)).fetchone()[0]


def changes_for(rng: random.Random, j: int) -> dict[str, str]:
    """A change touching 1-3 registration items, each with a value never used before for that company."""
    picks = rng.sample(["name", "address", "legal_representative", "business_scope", "registered_capital",
                        "company_type"], rng.randint(1, 3))
    out: dict[str, str] = {}
    for p in picks:
        if p == "name":
            out["name"] = f"上海第{j}次变更{rng.randint(0, 10**6)}有限公司"
        elif p == "address":
            out["address"] = f"上海市浦东新区世纪大道{j}{rng.randint(0, 999)}号"
        elif p == "legal_representative":
            out["legal_representative_name"] = f"法定代表人{j}{rng.randint(0, 999)}"
            out["legal_representative_resident_id"] = new_resident_id(rng)
        elif p == "business_scope":
            out["business_scope"] = f"经营范围第{j}版{rng.randint(0, 999)}"
        elif p == "registered_capital":
            out["registered_capital"] = str(1000 + j * 10 + rng.randint(1, 9))
    if set(out) == set() or set(picks) == {"company_type"}:
        out["business_scope"] = f"经营范围第{j}版"
    if "company_type" in picks:  # dropped by the register when it equals the current type
        out["company_type"] = rng.choice(["limited_liability", "joint_stock"])
    return out


def test_a_burst_of_changes_with_a_department_down_and_the_cascade_killed_ends_in_equal_copies(
        bootstrap, database_url, tmp_path):
    skip_if_foreign_adapters(bootstrap, DEPARTMENTS)
    settings = Settings.from_env()
    run = uuid.uuid4().hex[:8]
    name = f"cascade.burst-{run}"
    rng = random.Random(run)
    companies = [new_uscc(rng) for _ in range(COMPANIES)]
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text("\n".join(companies))
    task_topics = [tasks_topic(d) for d in DEPARTMENTS]
    starts = end_offsets(bootstrap, [REGISTRY_COMPANY, CASCADE_TOPIC, *task_topics])
    env = cascade_env(name, ONETHING_CASCADE_ACK_TIMEOUT_S="6", ONETHING_CASCADE_BACKOFF_BASE_S="1",
                      ONETHING_CASCADE_BACKOFF_MAX_S="8", ONETHING_CASCADE_ESCALATE_AFTER="1",
                      ONETHING_CASCADE_TICK_S="0.5")
    adapters = {d: start_process(["-m", "tests.support.cascade_adapter", d, f"adapter.{d}.burst-{run}", str(keyfile)],
                                 {**os.environ, "ONETHING_METRICS_PORT": "-1"}, tmp_path / f"adapter-{d}.log")
                for d in DEPARTMENTS}
    cascade = start_process(["-m", "projectors.cascade"], env, tmp_path / "cascade-1.log")
    recorder = RegisterRecorder(bootstrap, database_url)
    outage_conn = psycopg.connect(database_url, autocommit=True)
    started = time.monotonic()
    try:
        wait_cascade_ready(database_url, name, settings.partitions)
        deadline = time.monotonic() + 90
        while any("ready" not in (tmp_path / f"adapter-{d}.log").read_text().splitlines() for d in DEPARTMENTS):
            assert time.monotonic() < deadline, "adapters did not start"
            assert all(p.poll() is None for p in adapters.values())
            time.sleep(0.2)

        # the burst: 8 producer threads; each company's changes may be written by any of them
        for i, uscc in enumerate(companies):
            recorder.register_company(uscc, company_fields(rng, i))
        work: Queue = Queue()
        order = [(uscc, j) for j in range(1, CHANGES_PER_COMPANY + 1) for uscc in companies]
        for item in order:
            work.put((item, changes_for(random.Random(f"{run}{item}"), item[1])))
        refused: list = []

        def producer() -> None:
            while True:
                try:
                    (uscc, _j), changes = work.get_nowait()
                except Empty:
                    return
                try:
                    recorder.change_company(uscc, changes)
                except Exception as exc:  # pragma: no cover - reported below
                    refused.append(repr(exc))

        set_outage(outage_conn, DOWN, OUTAGE_S, "unavailable")  # tax goes down as the burst starts
        threads = [threading.Thread(target=producer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        produced_s = time.monotonic() - started
        assert not refused, refused[:3]

        # kill -9 the cascade in the middle: a third of the department applications done, and the
        # tax outage already noticed (silent targets re-sent and escalated)
        total = COMPANIES * (CHANGES_PER_COMPANY + 1)
        deadline = time.monotonic() + 180
        while (applied_targets(database_url, name) < KILL_AFTER_APPLIED
               or not escalated_targets(database_url, name, DOWN)):
            assert time.monotonic() < deadline, (tmp_path / "cascade-1.log").read_text()[-3000:]
            assert cascade.poll() is None, (tmp_path / "cascade-1.log").read_text()[-3000:]
            time.sleep(0.2)
        stop_process(cascade, signal.SIGKILL)
        applied_at_kill = applied_targets(database_url, name)
        seen, still_open = open_changes(database_url, name, companies)
        complete_at_kill = seen - still_open
        assert still_open > 0, "the kill should land in the middle"
        time.sleep(1)
        cascade = start_process(["-m", "projectors.cascade"], env, tmp_path / "cascade-2.log")

        seen, still_open = wait_complete(database_url, name, companies, total, 200,
                                         procs={"cascade": cascade, **{f"adapter {d}": p for d, p in adapters.items()}})
        elapsed = time.monotonic() - started
        assert (seen, still_open) == (total, 0), (tmp_path / "cascade-2.log").read_text()[-3000:]
    finally:
        clear_outage(outage_conn, DOWN)
        outage_conn.close()
        recorder.close()
        stop_process(cascade)
        for p in adapters.values():
            stop_process(p)

    # -- verification against the log ------------------------------------------------------------
    keys = set(companies)
    log_events = [ev for _m, ev in read_messages(bootstrap, {tp: o for tp, o in starts.items()
                                                         if tp.topic == REGISTRY_COMPANY},
                                              keep=lambda m, ev: ev is not None and ev.key in keys)]
    assert len({e.id for e in log_events}) == total
    master = fold_all(log_events)
    expected: set[tuple[str, str, int]] = set()
    changed: dict[tuple[str, int], set[str]] = {}
    for ev in {e.id: e for e in log_events}.values():
        changed[(ev.key, ev.envelope.sequence)] = set(ev.payload["changes"])
        for dept in SUBS.targets("company", ev.payload["changes"]):
            expected.add((dept, ev.key, ev.envelope.sequence))

    with psycopg.connect(database_url) as conn:
        applied = conn.execute(
            "SELECT department, register_key, sequence, stale_fields FROM register_copy_applied "
            "WHERE register = 'company' AND register_key = ANY(%s) ORDER BY id", (companies,)).fetchall()
        copies = {(d, k): f for d, k, f in conn.execute(
            "SELECT department, register_key, fields FROM register_copies WHERE register = 'company' "
            "AND register_key = ANY(%s)", (companies,)).fetchall()}
        writer_side = {k: r for k, r in conn.execute(
            "SELECT register_key, record FROM register_keys WHERE register = 'company' AND register_key = ANY(%s)",
            (companies,)).fetchall()}
        targets = conn.execute(
            "SELECT department, sum(silent_resends), sum(failures), count(*) FILTER (WHERE escalated_at IS NOT NULL),"
            " sum(sends) FROM cascade_targets WHERE cascade = %s GROUP BY department", (name,)).fetchall()
        summary = cascade_status.summary(conn, cascade=name)

    # each change applied once per subscribing department, in order, without the stale guard
    assert len(applied) == len(expected) == len({(d, k, s) for d, k, s, _ in applied})
    assert {(d, k, s) for d, k, s, _ in applied} == expected
    last: dict[tuple[str, str], int] = defaultdict(int)
    for d, k, s, stale in applied:
        assert s > last[(d, k)], f"{d} applied {k} #{s} after #{last[(d, k)]}"
        last[(d, k)] = s
        assert not stale
    # every copy equals the master register for the fields its department keeps (the entry and
    # the log hold the legal representative sealed, the same ciphertext; a copy holds it opened)
    with psycopg.connect(database_url) as kconn:
        platform = keystore.platform_keys(lambda: nullcontext(kconn))
        for uscc in companies:
            entry = master[("company", uscc)].fields
            assert writer_side[uscc] == entry
            opened = personal.open_fields(platform, entry)
            for dept in DEPARTMENTS:
                kept = SUBS.fields_for(dept, "company")
                assert copies[(dept, uscc)] == {f: v for f, v in opened.items() if f in kept}, (dept, uscc)

    # data minimisation: read every sync task of the run
    tasks = [ev for _m, ev in read_messages(bootstrap, {tp: o for tp, o in starts.items() if tp.topic in task_topics},
                                         keep=lambda m, ev: ev is not None and ev.key in keys
                                         and ev.type == "TaskDispatched")]
    for t in tasks:
        dept = t.payload["department"]
        assert set(t.payload["fields"]) <= SUBS.fields_for(dept, "company")
        assert set(t.payload["fields"]) == SUBS.fields_for(dept, "company") & changed[(t.key, t.envelope.sequence)]
    repeats = len(tasks) - len({t.id for t in tasks})

    by_dept = {d: (silent, failures, escalated, sends) for d, silent, failures, escalated, sends in targets}
    assert by_dept[DOWN][0] > 0 and by_dept[DOWN][2] > 0, by_dept[DOWN]  # silent re-sends, then escalations
    escalations = [ev for _m, ev in read_messages(bootstrap, {tp: o for tp, o in starts.items()
                                                          if tp.topic == CASCADE_TOPIC},
                                               keep=lambda m, ev: ev is not None and ev.key in keys)]
    assert {e.payload["department"] for e in escalations} >= {DOWN}
    per_dept = Counter(d for d, _k, _s, _st in applied)
    print(f"\n{total} changes ({COMPANIES} registrations + {COMPANIES * CHANGES_PER_COMPANY} changes) over "
          f"{COMPANIES} companies, produced in {produced_s:.1f}s; {DOWN} down {OUTAGE_S:g}s; cascade kill -9 after "
          f"{applied_at_kill} department applications ({complete_at_kill} changes complete); all {len(expected)} department applications done in {elapsed:.1f}s; "
          f"fan-out p50 {summary['fanout_p50_seconds']}s p95 {summary['fanout_p95_seconds']}s; "
          f"{len(tasks)} sync tasks read ({repeats} repeated by id after the kill or as re-sends); "
          f"silent re-sends/escalated per department {({d: (v[0], v[2]) for d, v in by_dept.items()})}; "
          f"escalation events {len({e.id for e in escalations})}; applied per department {dict(per_dept)}")
