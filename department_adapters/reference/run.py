"""Run simulated departments behind the adapter SDK: one (`run_adapter`, what
`python -m infra.process adapter DEPT` starts) or several in threads (`run_all`, for the demo).

    python -m department_adapters.reference.run [DEPARTMENT ...]   # default: the newborn bundle's

Connection settings come from `infra.settings.Settings` (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL);
behaviour from `BackendConfig.from_env(department)` (ONETHING_SIM_*, see config.py) unless a
config is passed.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Mapping

import structlog

from department_adapters.sdk import Adapter, AdapterStats, Backend
from infra import migrations
from infra.settings import Settings

from .backend import SimulatedBackend
from .config import BackendConfig
from .register_copy import ByKind, RegisterCopyBackend

log = structlog.get_logger(__name__)


def build_backend(department: str, config: BackendConfig | None = None, *, name: str | None = None) -> Backend:
    """The department's whole backend: case services by `SimulatedBackend`, and — when the
    cascade's register-copy half is installed — register syncs by `RegisterCopyBackend`, routed
    on the task's kind (a department has one adapter, one group, for both)."""
    case = SimulatedBackend(department, config if config is not None else BackendConfig.from_env(department),
                            name=name)
    return ByKind(case, RegisterCopyBackend(department, name=name))


def case_backend(backend: Backend) -> SimulatedBackend:
    return backend.case if hasattr(backend, "case") else backend  # type: ignore[attr-defined,return-value]


def build_adapter(settings: Settings, department: str, config: BackendConfig | None = None, *,
                  name: str | None = None, retry_for_s: float = 20.0) -> Adapter:
    return Adapter(build_backend(department, config, name=name), settings.bootstrap_servers,
                   settings.database_url, retry_for_s=retry_for_s)


def run_adapter(settings: Settings, department: str, stop: Callable[[], bool] = lambda: False,
                config: BackendConfig | None = None, *, name: str | None = None, retry_for_s: float = 20.0,
                migrate: bool = True) -> AdapterStats:
    """Run one simulated department until `stop()` is true; returns the SDK's counters.

    Applies the migrations first (idempotent; concurrent starters wait for each other), so an
    adapter never starts against a database without its registers."""
    if migrate:
        migrations.migrate(settings.database_url)
    adapter = build_adapter(settings, department, config, name=name, retry_for_s=retry_for_s)
    backend = case_backend(adapter.backend)
    log.info("reference.start", department=department, adapter=backend.department,
             register_syncs=backend is not adapter.backend, **backend.config.summary())
    try:
        adapter.run(stop)
    finally:
        adapter.close()
        log.info("reference.stop", department=department, adapter=backend.department,
                 handled=adapter.stats.handled, replayed=adapter.stats.replayed,
                 dead_lettered=adapter.stats.dead_lettered, backend_waits=adapter.stats.backend_waits)
    return adapter.stats


def run_all(settings: Settings, departments: Iterable[str], stop: Callable[[], bool] = lambda: False,
            configs: Mapping[str, BackendConfig] | None = None, *, names: Mapping[str, str] | None = None,
            retry_for_s: float = 20.0, restart_after_s: float = 2.0) -> dict[str, list[AdapterStats]]:
    """Run several simulated departments, one thread each, until `stop()` is true (blocks).

    An adapter that fails (broker or database gone) is logged and restarted after
    `restart_after_s`, as the supervisor would restart a process; its uncommitted task is
    simply read again. Returns, per department, the stats of each run of its adapter.
    """
    from catalog.loader import load_catalog

    departments = list(dict.fromkeys(departments))
    unknown = sorted(set(departments) - set(load_catalog().departments))
    if unknown:  # fail now, not in a restart loop
        raise ValueError(f"unknown departments {unknown}")
    migrations.migrate(settings.database_url)
    configs, names = configs or {}, names or {}
    runs: dict[str, list[AdapterStats]] = {d: [] for d in departments}
    stopping = threading.Event()

    def stopped() -> bool:
        if not stopping.is_set() and stop():
            stopping.set()
        return stopping.is_set()

    def one(dept: str) -> None:
        structlog.contextvars.bind_contextvars(service=f"adapter.{names.get(dept, dept)}")  # threads start bare
        while not stopped():
            try:
                runs[dept].append(run_adapter(settings, dept, stopped, configs.get(dept), name=names.get(dept),
                                              retry_for_s=retry_for_s, migrate=False))
            except Exception:
                log.exception("reference.crashed", department=dept)
                stopping.wait(restart_after_s)

    threads = [threading.Thread(target=one, args=(d,), name=f"adapter-{names.get(d, d)}", daemon=True)
               for d in departments]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.2)
    finally:
        stopping.set()
        for t in threads:
            t.join()
    return runs


def newborn_departments() -> list[str]:
    from catalog.loader import load_catalog

    catalog = load_catalog()
    return sorted({catalog.service(s).department for s in catalog.bundle("newborn").services})


def main(argv: list[str]) -> None:
    import signal

    from infra import log as logmod

    departments = argv or newborn_departments()
    logmod.configure("adapters." + "+".join(departments) if len(departments) < 4 else "adapters", "INFO")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    run_all(Settings.from_env(), departments, stopping.is_set)


if __name__ == "__main__":
    main(sys.argv[1:])
