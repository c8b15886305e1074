"""A case-view projection in a process of its own, for the kill -9 test.

    python -m tests.support.run_case_view NAME SCHEMA CASE_PREFIX GROUP_PREFIX SLOW_MS TOPICS

Runs `ProjectionRunner` for a `CaseViewProjection` named NAME writing to SCHEMA, reading the
comma-separated TOPICS, applying only cases whose id starts with CASE_PREFIX, until SIGTERM. SLOW_MS sleeps per applied
event, after each batch, so a test can kill it part-way through a batch; the sleep is inside the transaction,
which is where a crash hurts most.
"""
from __future__ import annotations

import signal
import sys
import threading
import time

from infra.settings import Settings
from projectors.case_view import CaseViewProjection
from projectors.postgres_projection import ProjectionRunner


class SlowCaseView(CaseViewProjection):
    def __init__(self, *args, slow_s: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.slow_s = slow_s

    def apply_batch(self, conn, events) -> None:
        super().apply_batch(conn, events)
        if self.slow_s:
            time.sleep(self.slow_s * len(events))


def main(argv: list[str]) -> None:
    name, schema, prefix, group_prefix, slow_ms, topics = argv
    settings = Settings.from_env()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    projection = SlowCaseView(name, schema=schema, topics=tuple(topics.split(",")),
                              keep=lambda case_id: case_id.startswith(prefix), slow_s=int(slow_ms) / 1000)
    runner = ProjectionRunner(projection, settings.bootstrap_servers, settings.database_url,
                              group_prefix=group_prefix)
    print("started", flush=True)
    try:
        runner.run(stopping.is_set)
    finally:
        runner.close()


if __name__ == "__main__":
    main(sys.argv[1:])
