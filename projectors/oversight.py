"""The oversight read models: the supervisor queue (办不成事) and ratings with their rectifications
(好差评). Two small projections, each a processor of its own (own group, own offsets) on the
runtime; they run in the read-models process beside the case view and the KPIs."""
from __future__ import annotations

from collections.abc import Callable

import structlog

from .escalation_queue import EscalationQueueProjection
from .ratings import RatingsProjection

log = structlog.get_logger(__name__)


def processors() -> list:
    from .postgres_projection import ProjectionProcessor

    return [ProjectionProcessor(EscalationQueueProjection()), ProjectionProcessor(RatingsProjection())]


def run(settings, stop: Callable[[], bool] = lambda: False) -> None:
    """Follow the log into both read models until `stop()`, a thread each."""
    from infra import migrations

    from .runtime import Host

    migrations.migrate(settings.database_url)
    Host(processors(), settings.bootstrap_servers, settings.database_url, name="oversight").run(stop)


def replay(settings, console=None) -> int:
    """`onething replay oversight`: rebuild both read models beside the live ones, with a progress
    bar, and swap each in once it caught up."""
    from .postgres_projection import replay_with_progress

    return (replay_with_progress(settings, EscalationQueueProjection(), console,
                                 factory=lambda n, s: EscalationQueueProjection(name=n, schema=s))
            + replay_with_progress(settings, RatingsProjection(), console,
                                   factory=lambda n, s: RatingsProjection(name=n, schema=s)))
