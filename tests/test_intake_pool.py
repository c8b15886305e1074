"""The intake path keeps up: a burst of concurrent requests is served by the app's bounded pool
of PostgreSQL connections (producers/db.py), not by a new connection — a new PostgreSQL
backend — per request, and every 202 still comes after the broker acknowledged (acks=all).

The app's connections are told apart in pg_stat_activity by an application_name of the test's
own, given in the database URL (which the API honours, old code and new alike).
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace

import psycopg
import pytest
from fastapi.testclient import TestClient

from producers import identity
from producers.intake_api import create_app
from tests.test_intake_api import WANG, auth, end_offsets, events_since, newborn_request

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

POOL_MAX = 4
BURST = 50


class Backends:
    """Samples, every few milliseconds, the PostgreSQL backends of one application_name."""

    def __init__(self, database_url: str, application_name: str):
        self.database_url, self.name = database_url, application_name
        self.pids: set[int] = set()
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self._stop.is_set():
                pids = {r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                                    (self.name,))}
                self.pids |= pids
                self.most = max(self.most, len(pids))
                time.sleep(0.003)

    def __enter__(self) -> "Backends":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def pooled_app(settings, bootstrap, database_url, monkeypatch):
    name = f"onething-test-pool-{uuid.uuid4().hex[:8]}"
    url = database_url + ("&" if "?" in database_url else "?") + f"application_name={name}"
    monkeypatch.setenv("ONETHING_API_POOL_MIN", "1")
    monkeypatch.setenv("ONETHING_API_POOL_MAX", str(POOL_MAX))
    monkeypatch.setenv("ONETHING_API_POOL_TIMEOUT_S", "60")  # a busy machine queues; it must not 503
    app = create_app(replace(settings, bootstrap_servers=bootstrap, database_url=url), seed_demo=True)
    with TestClient(app) as client:
        yield client, name
    with psycopg.connect(database_url, autocommit=True) as conn:  # closed with the app
        assert wait_until(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                               (name,)).fetchone()[0] == 0, 10)


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def burst(n: int, call) -> list:
    """n calls at once, from n threads released together."""
    start, answers, lock = threading.Barrier(n), [], threading.Lock()

    def run():
        start.wait()
        r = call()
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return answers


def test_a_burst_of_submissions_is_served_by_a_bounded_pool_of_connections(pooled_app, bootstrap, database_url):
    client, name = pooled_app
    token = identity.applicant_token(WANG.resident_id)
    request = newborn_request(client, token)
    before = end_offsets(bootstrap)
    with Backends(database_url, name) as backends:
        answers = burst(BURST, lambda: client.post("/api/v1/applications", headers=auth(token), json=request))
    assert [a.status_code for a in answers] == [202] * BURST, {a.status_code for a in answers}
    # a bounded pool, and its connections reused: not one backend per request
    assert 1 <= backends.most <= POOL_MAX, backends.most
    assert 1 <= len(backends.pids) <= POOL_MAX, f"{len(backends.pids)} backends served {BURST} submissions"
    # and each 202 came after the broker acknowledged: every case is on the topic already
    on_topic = {e.key for e in events_since(bootstrap, before) if e.type == "ApplicationSubmitted"}
    assert {a.json()["case_id"] for a in answers} <= on_topic


def test_the_registers_and_kpis_routes_share_the_apps_pool(pooled_app, database_url):
    client, name = pooled_app
    supervisor = identity.issue_token("sup-pool", "supervisor", "online", staff_id="sup-pool")
    paths = ["/api/v1/cascade/summary", "/api/v1/cascade/backlog", "/api/v1/kpis?group_by=bundle"] * 8
    calls = iter(paths)
    lock = threading.Lock()

    def call():
        with lock:
            path = next(calls)
        return client.get(path, headers=auth(supervisor))

    with Backends(database_url, name) as backends:
        answers = burst(len(paths), call)
    assert [a.status_code for a in answers] == [200] * len(paths), [a.text[:200] for a in answers if a.status_code != 200]
    assert 1 <= len(backends.pids) <= POOL_MAX, backends.pids


def test_register_changes_borrow_pooled_connections_and_give_them_back_clean(pooled_app, database_url):
    """The registers' recorder works on the app's pool: its session advisory lock and lock timeout
    must not outlive the change, or the next request lent that connection would inherit them."""
    import random

    from tests.support.cascade_harness import company_fields, new_uscc

    client, name = pooled_app
    rng = random.Random()
    register = auth(identity.issue_token("register:market_regulation", "register", "register"))
    companies = [new_uscc(rng) for _ in range(8)]
    fields = iter([company_fields(rng, i) for i in range(len(companies))])
    uscc_of, lock = iter(companies), threading.Lock()

    def call():
        with lock:
            uscc, body = next(uscc_of), next(fields)
        return client.post("/api/v1/registers/company", json={"uscc": uscc, "fields": body}, headers=register)

    with Backends(database_url, name) as backends:
        answers = burst(len(companies), call)
    assert [a.status_code for a in answers] == [202] * len(companies), [a.text[:200] for a in answers]
    assert 1 <= len(backends.pids) <= POOL_MAX, backends.pids
    with psycopg.connect(database_url, autocommit=True) as conn:
        held = conn.execute("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                            "WHERE l.locktype = 'advisory' AND a.application_name = %s", (name,)).fetchone()[0]
    assert held == 0
    with client.app.state.database.connection() as conn:
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "0"
