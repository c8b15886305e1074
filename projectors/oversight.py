"""The oversight read models in one process: the supervisor queue (办不成事) and ratings with their
rectifications (好差评). Two small projections with their own offsets, polled in turn; they
share a process because neither is busy enough to deserve one (scale out by running more)."""
from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from .deadlines import today_in_china
from .escalation_queue import EscalationQueueProjection
from .escalation_queue import count_open as count_escalations
from .ratings import RatingsProjection
from .ratings import count_open as count_rectifications

log = structlog.get_logger(__name__)


def run(settings, stop: Callable[[], bool] = lambda: False) -> None:
    """`onething run oversight`: follow the log into both read models until `stop()`."""
    from infra import migrations

    from .postgres_projection import ProjectionRunner

    migrations.migrate(settings.database_url)
    runners = [ProjectionRunner(p, settings.bootstrap_servers, settings.database_url)
               for p in (EscalationQueueProjection(), RatingsProjection())]
    next_count = 0.0
    try:
        while not stop():
            for runner in runners:
                runner.poll_once(timeout_ms=200)
            if time.monotonic() >= next_count:  # the open-items gauges for the dashboards
                next_count = time.monotonic() + 5
                today = today_in_china()
                count_escalations(runners[0].conn, today)
                count_rectifications(runners[1].conn, today)
    finally:
        for runner in runners:
            runner.close()


def replay(settings, console=None) -> int:
    """`onething replay oversight`: rebuild both read models from the log with a progress bar."""
    from .postgres_projection import replay_with_progress

    return sum(replay_with_progress(settings, p, console) for p in (EscalationQueueProjection(), RatingsProjection()))
