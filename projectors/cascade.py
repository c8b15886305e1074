"""The cascade (一处变更、多处联动): every register change, to every department that keeps a copy, in order.

Reads `registry.company`, `registry.person` and the `decisions.<department>` topics of the
subscribing departments (catalog/data/subscriptions.yaml). For each change it plans one
target per subscribing department (only the changed fields that department keeps; none, no
target) and sends a `register_sync` TaskDispatched to `tasks.<department>`. Personal values
(a household address, a legal representative) arrive sealed under their subject's key and are
passed on as they are — the cascade holds no key and opens nothing; the recorder granted the key
to each department it sends one to (producers/registers.py). Adapters answer on
`decisions.<department>` with `applied` or `failed` (reason). The change is complete when every
target applied it.

Order per register key. A department gets change n+1 of a key only after it applied the
latest earlier change of that key it subscribes to: later targets wait as `held` and are
released by the `applied` of their predecessor. A department copy also guards every field by
the sequence that wrote it (department_adapters/reference/register_copy.py), so even a task
delivered late can never put an older value over a newer one.

Retries. A target with no answer within `ack_timeout_s` while its department gives no answer
at all (the department is quiet, not merely busy with a backlog: `cascade_departments`), or
one waiting longer than `stall_after_s` in any case, is silent — judged only once this process
has listened for a whole `ack_timeout_s` and read its decision partitions to their end, so the
cascade's own downtime (a restart, a rebalance) never looks like a department's silence: it is re-sent (same task id:
the adapter drops a repeat), with the wait doubling up to `backoff_max_s`. A `failed` target is retried
after `backoff_base_s`, doubling, with a new attempt (a new task id). After `escalate_after`
unsuccessful tries the target is escalated once: a CascadeEscalated event on the `cascade`
topic for the supervisor queue (办不成事) and `onething_cascade_escalations_total`; retries go on,
because the cascade is only complete when every department has the change.

How it runs: as a processor of the runtime (projectors/runtime.py), with its state in
PostgreSQL tables rather than a keyed fold, because it needs timers (re-sends, backoff,
escalation) over state that must survive kill -9 and joins register topics with decision
topics. Each batch runs in ONE transaction that takes the batch's per-key locks (sorted, so
two members cannot deadlock), updates the targets and, with the runtime, stores the next
offsets after the broker acknowledged the derived events (acks=all); a kill -9 before the
commit re-reads the batch and derives the same events with the same ids (consumers drop the
repeats). The tick (re-sends, retries, escalations, gauges) is a checkpoint of its own.
The state tables are also the cascade-status read model (projectors/cascade_status.py).
The processor, its config and its metrics are in projectors/cascade_processor.py; this module runs it.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import structlog

from catalog.subscriptions import Subscriptions
from infra import metrics
from infra.settings import Settings

from .cascade_processor import CascadeConfig, CascadeProcessor
from .runtime import Worker

log = structlog.get_logger(__name__)


class Cascade:
    """The cascade on a worker of its own (`run` in the foreground, `poll_once` stepped by hand)."""

    def __init__(self, bootstrap: str, database_url: str, config: CascadeConfig | None = None, *,
                 subscriptions: Subscriptions | None = None):
        self.processor = CascadeProcessor(config, subscriptions=subscriptions)
        self.config = self.processor.config
        self.worker = Worker(self.processor, bootstrap, database_url, poll_ms=int(self.config.tick_s * 1000))

    @property
    def consumer(self):
        return self.worker.consumer   # the worker may replace a stuck one (projectors/assignment.py)

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        log.info("cascade.start", cascade=self.config.name, departments=list(self.processor.departments))
        self.worker.run(stop)

    def poll_once(self, timeout_ms: int | None = None):
        return self.worker.poll_once(timeout_ms)

    def close(self) -> None:
        self.worker.close()


def run(settings: Settings, stop: Callable[[], bool] = lambda: False, config: CascadeConfig | None = None) -> None:
    """Run in the foreground (`python -m projectors.cascade`)."""
    from infra import migrations

    migrations.migrate(settings.database_url)  # idempotent; concurrent starters wait for each other
    cascade = Cascade(settings.bootstrap_servers, settings.database_url, config or CascadeConfig.from_env())
    try:
        cascade.run(stop)
    finally:
        cascade.close()


def _stop_flag() -> Callable[[], bool]:
    stopping = threading.Event()
    for signo in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signo, lambda *_: stopping.set())
    return stopping.is_set


def main() -> None:
    from infra import log as logmod

    settings = Settings.from_env()
    config = CascadeConfig.from_env()
    logmod.configure(f"cascade.{config.name}" if config.name != "cascade" else "cascade",
                     os.environ.get("ONETHING_LOG_LEVEL", "INFO"))
    if settings.metrics_port >= 0:
        metrics.serve(settings.metrics_port)
    run(settings, _stop_flag(), config)


if __name__ == "__main__":
    main()
