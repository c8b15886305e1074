"""Every process of the system by name: `python -m infra.process NAME [ARG]` runs one in the foreground.

This is what `onething run NAME` and the supervisor start. Each is an ordinary member of a
consumer group (or an HTTP server), so more copies scale out on more partitions.
"""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from . import log
from .settings import Settings


def _stop_flag() -> Callable[[], bool]:
    stopping = threading.Event()

    def handler(_signo, _frame):
        stopping.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stopping.is_set


def _metrics(settings: Settings) -> None:
    from . import metrics

    if settings.metrics_port >= 0:
        port = metrics.serve(settings.metrics_port)
        log.bind(metrics_port=port)


def run_dispatch(settings: Settings, _arg: str | None) -> None:
    from projectors import dispatch

    _metrics(settings)
    dispatch.run(settings)  # faust handles SIGTERM itself


def run_case_view(settings: Settings, _arg: str | None) -> None:
    from projectors import case_view

    _metrics(settings)
    case_view.run(settings, stop=_stop_flag())


def run_adapter(settings: Settings, department: str | None) -> None:
    from department_adapters.reference.run import run_adapter as run_one

    if not department:
        raise SystemExit("usage: adapter DEPARTMENT")
    _metrics(settings)
    run_one(settings, department, stop=_stop_flag())


def run_api(settings: Settings, _arg: str | None) -> None:
    from producers import intake_api

    intake_api.serve(settings)  # serves /metrics itself


def run_cascade(settings: Settings, _arg: str | None) -> None:
    from projectors import cascade

    _metrics(settings)
    cascade.run(settings, stop=_stop_flag())


def run_deadlines(settings: Settings, _arg: str | None) -> None:
    from projectors import deadlines

    _metrics(settings)
    deadlines.run(settings, stop=_stop_flag())


def run_oversight(settings: Settings, _arg: str | None) -> None:
    from projectors import oversight

    _metrics(settings)
    oversight.run(settings, stop=_stop_flag())


def run_kpis(settings: Settings, _arg: str | None) -> None:
    from projectors import kpis

    _metrics(settings)
    kpis.run(settings, stop=_stop_flag())


COMPONENTS: dict[str, Callable[[Settings, str | None], None]] = {
    "api": run_api,
    "dispatch": run_dispatch,
    "case-view": run_case_view,
    "adapter": run_adapter,
    "cascade": run_cascade,
    "deadlines": run_deadlines,
    "oversight": run_oversight,
    "kpis": run_kpis,
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMPONENTS:
        raise SystemExit(f"usage: python -m infra.process {{{'|'.join(COMPONENTS)}}} [ARG]")
    name, arg = argv[0], (argv[1] if len(argv) > 1 else None)
    settings = Settings.from_env()
    log.configure(f"{name}{'.' + arg if arg else ''}", "INFO")
    COMPONENTS[name](settings, arg)


if __name__ == "__main__":
    main(sys.argv[1:])
