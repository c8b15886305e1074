"""Run simulated departments behind the adapter SDK, all in one process: each department is a
processor of the runtime with its own group (`adapter.<department>`), so one department's
outage pauses only its own partitions, and each scales out alone.

    python -m department_adapters.reference.run [DEPARTMENT ...]   # default: every department of the catalog

Connection settings come from `infra.settings.Settings` (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL);
behaviour from `BackendConfig.from_env(department)` (ONETHING_SIM_*, see config.py) unless a
config is passed.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping

import structlog

from department_adapters.sdk import Adapter, AdapterProcessor, AdapterStats, Backend
from infra import migrations
from infra.settings import Settings

from .backend import SimulatedBackend
from .config import BackendConfig
from .grants import GrantBackend
from .register_copy import ByKind, RegisterCopyBackend

log = structlog.get_logger(__name__)


def build_backend(department: str, config: BackendConfig | None = None, *, name: str | None = None) -> Backend:
    """The department's whole backend: case services by `SimulatedBackend`, register syncs by
    `RegisterCopyBackend` (the cascade's half) and grants by `GrantBackend` (免申即享: the proactive
    processor's tasks), routed on the task's kind (a department has one adapter, one group, for all)."""
    if config is None:  # the catalog's adapter configuration, ONETHING_SIM_* over it
        from catalog.loader import load_catalog

        adapter = load_catalog().department(department).adapter
        base = BackendConfig(processing_s=adapter.processing_s) if adapter is not None else None
        config = BackendConfig.from_env(department, base=base)
    case = SimulatedBackend(department, config, name=name)
    return ByKind(case, RegisterCopyBackend(department, name=name), GrantBackend(department, name=name))


def case_backend(backend: Backend) -> SimulatedBackend:
    return backend.case if hasattr(backend, "case") else backend  # type: ignore[attr-defined,return-value]


def _known(departments: Iterable[str]) -> list[str]:
    from catalog.loader import load_catalog

    departments = list(dict.fromkeys(departments))
    catalog = load_catalog()
    unknown = sorted(set(departments) - set(catalog.departments))
    if unknown:  # fail now, not in a restart loop
        raise ValueError(f"unknown departments {unknown}")
    unconfigured = sorted(d for d in departments if catalog.departments[d].adapter is None)
    if unconfigured:
        raise ValueError(f"departments without an adapter configuration (catalog/data/departments.yaml): "
                         f"{unconfigured}")
    return departments


def catalog_departments() -> list[str]:
    """Every department a bundle's service (or a register copy) needs an answer from: what
    `onething run adapters` hosts by default, all in one process."""
    from catalog.loader import load_catalog
    from catalog.subscriptions import load_subscriptions

    catalog = load_catalog()
    used = {catalog.service(s).department for b in catalog.bundles.values() for s in b.services}
    return sorted((used | set(load_subscriptions().departments())) & {
        code for code, d in catalog.departments.items() if d.adapter is not None})


def adapter_processors(departments: Iterable[str], configs: Mapping[str, BackendConfig] | None = None, *,
                       names: Mapping[str, str] | None = None, retry_for_s: float = 5.0) -> list[AdapterProcessor]:
    """One processor per department, for a `Host` (what `onething run adapters` runs)."""
    configs, names = configs or {}, names or {}
    return [AdapterProcessor(build_backend(d, configs.get(d), name=names.get(d)), retry_for_s=retry_for_s)
            for d in _known(departments)]


def build_adapter(settings: Settings, department: str, config: BackendConfig | None = None, *,
                  name: str | None = None, retry_for_s: float = 5.0) -> Adapter:
    return Adapter(build_backend(department, config, name=name), settings.bootstrap_servers,
                   settings.database_url, retry_for_s=retry_for_s)


def run_adapter(settings: Settings, department: str, stop: Callable[[], bool] = lambda: False,
                config: BackendConfig | None = None, *, name: str | None = None, retry_for_s: float = 5.0,
                migrate: bool = True) -> AdapterStats:
    """Run one simulated department on a worker of its own until `stop()`; returns the SDK's counters."""
    if migrate:
        migrations.migrate(settings.database_url)
    adapter = build_adapter(settings, department, config, name=name, retry_for_s=retry_for_s)
    backend = case_backend(adapter.backend)
    log.info("reference.start", department=department, adapter=backend.department, **backend.config.summary())
    try:
        adapter.run(stop)
    finally:
        adapter.close()
        stats = adapter.stats
        log.info("reference.stop", department=department, adapter=backend.department, handled=stats.handled,
                 replayed=stats.replayed, dead_lettered=stats.dead_lettered, backend_waits=stats.backend_waits)
    return adapter.stats


def run_all(settings: Settings, departments: Iterable[str], stop: Callable[[], bool] = lambda: False,
            configs: Mapping[str, BackendConfig] | None = None, *, names: Mapping[str, str] | None = None,
            retry_for_s: float = 5.0) -> dict[str, AdapterStats]:
    """Run several simulated departments in this process (a thread each, one shared producer)
    until `stop()` is true (blocks). Returns each department's counters."""
    from projectors.runtime import Host

    processors = adapter_processors(departments, configs, names=names, retry_for_s=retry_for_s)
    migrations.migrate(settings.database_url)
    Host(processors, settings.bootstrap_servers, settings.database_url, name="adapters").run(stop)
    return {p.department: p.stats for p in processors}


def newborn_departments() -> list[str]:
    from catalog.loader import load_catalog

    catalog = load_catalog()
    return sorted({catalog.service(s).department for s in catalog.bundle("newborn").services})


def main(argv: list[str]) -> None:
    import signal
    import threading

    from infra import log as logmod

    departments = argv or catalog_departments()
    logmod.configure("adapters." + "+".join(departments) if len(departments) < 4 else "adapters", "INFO")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    run_all(Settings.from_env(), departments, stopping.is_set)


if __name__ == "__main__":
    main(sys.argv[1:])
