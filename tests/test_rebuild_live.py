"""`onething replay case-view` on a live system: the new generation is built beside the live view
and swapped in; the status API never answers 404 for a case it has shown, cases submitted during
the rebuild appear, and the live member carries on under the new generation after the swap.
Real broker, real PostgreSQL, the public case view (as the operator's command does it)."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace

import psycopg
import pytest
from fastapi.testclient import TestClient

from events import bus
from events.envelope import Actor
from infra.samples import submission
from producers import identity
from producers.intake_api import create_app
from projectors import case_view, generations
from projectors.postgres_projection import shadow_rebuild
from projectors.runtime import Worker

from .support.fast_forward import skip_history
from .support.topics import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow, pytest.mark.whole_log]


def test_a_rebuild_beside_the_live_view_swaps_in_without_a_404(settings, running_stack, bootstrap, database_url):
    run = uuid.uuid4().hex[:6]
    subject = f"p_rebuild_{run}"
    token = identity.issue_token(subject, "applicant", "online")

    def case(i: int):
        ev = submission(f"case-rb-{run}-{i:03d}")
        return replace(ev, envelope=replace(ev.envelope, actor=Actor(subject, "applicant", "online")))

    skip_history(bootstrap, database_url)
    live = Worker(case_view.processors()[0], bootstrap, database_url, poll_ms=200)
    stop, errors = threading.Event(), []

    def follow() -> None:
        try:
            while not stop.is_set():
                live.poll_once(200)
        except BaseException as exc:
            errors.append(exc)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    producer = bus.make_producer(bootstrap)
    app = create_app(replace(settings, bootstrap_servers=bootstrap, database_url=database_url))
    answers: list[tuple[str, int]] = []
    try:
        with TestClient(app) as client:
            def status(case_id: str) -> int:
                return client.get(f"/api/v1/cases/{case_id}", headers={"Authorization": f"Bearer {token}"}).status_code

            first = [case(i) for i in range(20)]
            bus.publish_all(producer, [("applications", c) for c in first])
            assert wait_for(lambda: all(status(c.key) == 200 for c in first), 60, 0.5), "the live view never showed them"
            shown = [c.key for c in first]
            reading = threading.Event()

            def read_all_the_time() -> None:
                while not reading.is_set():
                    for cid in list(shown):
                        answers.append((cid, status(cid), time.monotonic()))
                    time.sleep(0.02)

            reader = threading.Thread(target=read_all_the_time, daemon=True)
            reader.start()
            during = [case(i) for i in range(20, 30)]
            window: list[float] = [time.monotonic()]
            rebuilding = threading.Thread(target=lambda: (
                shadow_rebuild(case_view.shadow, "case_view", bootstrap, database_url), window.append(time.monotonic())),
                daemon=True)
            rebuilding.start()
            bus.publish_all(producer, [("applications", c) for c in during])   # while the shadow is being built
            rebuilding.join(600)
            assert not rebuilding.is_alive(), "the rebuild did not finish"
            with psycopg.connect(database_url) as conn:
                namespace = generations.current(conn, "case_view")
            assert namespace.startswith("case_view~"), "the new generation was not swapped in"
            after = [case(i) for i in range(30, 35)]   # the live member, fenced by the swap, carries on
            bus.publish_all(producer, [("applications", c) for c in after])
            assert wait_for(lambda: all(status(c.key) == 200 for c in during + after), 60, 0.5), \
                "cases submitted during or after the rebuild are missing"
            time.sleep(1)   # the reader goes on reading across the swap and after it
            reading.set()
            reader.join(10)
    finally:
        stop.set()
        follower.join(30)
        live.close()
        producer.close()
    assert not errors, errors
    begun, swapped = window
    assert any(begun <= at <= swapped for _c, _s, at in answers), "nothing was read while the rebuild ran"
    assert any(at > swapped for _c, _s, at in answers), "nothing was read after the swap"
    assert {code for _cid, code, _at in answers} == {200}, [r for r in answers if r[1] != 200][:5]
    assert live.name == namespace, "the live member follows the new generation's offsets"
