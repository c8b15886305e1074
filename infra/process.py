"""Every process of the system by name: `python -m infra.process NAME [ARG]` runs one in the foreground.

This is what `onething run NAME` and the supervisor start. A process hosts one or more
processors on the runtime (projectors/runtime.py), a thread each; every processor keeps its own
consumer group and stored offsets, so any one of them scales out alone by running it by its
own name on more machines (`onething run dispatch`, `onething run adapter police`).

    api          the intake API, status page and register API (HTTP)
    core         dispatch + cascade + proactive (免申即享: life events into offers and grants)
    read-models  case view, KPIs, supervisor queue, ratings, read audit
    adapters     every simulated department (ARG: a comma-separated subset)
    deadlines    the deadline clock
    and each processor alone: dispatch, cascade, case-view, kpis, oversight, read-audit, proactive, adapter DEPT
"""
from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from collections.abc import Callable

import structlog

from . import log
from .safe_config import require_safe
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


# -- processors by name ------------------------------------------------------------------------------
def _dispatch(settings: Settings, _arg: str | None) -> list:
    from projectors.dispatch import Dispatch

    return [Dispatch()]


def _cascade(settings: Settings, _arg: str | None) -> list:
    from projectors.cascade_processor import CascadeConfig, CascadeProcessor

    return [CascadeProcessor(CascadeConfig.from_env())]


def _case_view(settings: Settings, _arg: str | None) -> list:
    from projectors import case_view

    return case_view.processors()


def _kpis(settings: Settings, _arg: str | None) -> list:
    from projectors import kpis

    return kpis.processors()


def _oversight(settings: Settings, _arg: str | None) -> list:
    from projectors import oversight

    return oversight.processors()


def _read_audit(settings: Settings, _arg: str | None) -> list:
    from projectors import read_audit

    return read_audit.processors()


def _deadlines(settings: Settings, _arg: str | None) -> list:
    from projectors import deadlines

    return deadlines.processors()


def _proactive(settings: Settings, _arg: str | None) -> list:
    from projectors import proactive

    return proactive.processors()


def _adapters(settings: Settings, arg: str | None) -> list:
    from department_adapters.reference.run import adapter_processors
    from infra.supervisor import demo_departments

    departments = [d for d in (arg or "").split(",") if d] or demo_departments()
    return adapter_processors(departments)


def database_roles(settings: Settings, processors: list) -> None:
    """Each processor connects to PostgreSQL as its own role: an adapter as its department's
    (infra/db_roles.py), a platform processor as its component's (infra/db_components.py, found
    from its Kafka principal). A role the database does not have: in development the process's
    own role, with a warning; anywhere else the process refuses to start, naming it. A database
    that cannot be reached now: the roles all the same (the runtime waits for the database; never
    a fallback to a role that sees more)."""
    wanted = {id(p): _role_of(p) for p in processors}
    urls = _role_urls(settings, sorted({r for r in wanted.values() if r}), "processes")
    for p in processors:
        name = wanted[id(p)]
        if name and name in urls:
            p.database_url = urls[name]
        elif name:
            structlog.get_logger(__name__).warning("postgres.role_missing", role=name)
    structlog.get_logger(__name__).info("postgres.roles", roles=sorted(urls))


def _role_of(processor) -> str | None:
    from infra import acls, db_components, db_roles

    dept = getattr(processor, "department", None)
    if dept:
        return db_roles.role(dept)
    principal = acls.principal_for(processor)
    component = db_components.component_of(principal if isinstance(principal, str) else None)
    return db_components.role(component) if component else None


def _role_urls(settings: Settings, names: list[str], what: str) -> dict[str, str]:
    """role → its URL, for the roles that exist; refuses outside development when one is missing
    or its password variable is unset."""
    import os

    import psycopg

    from infra import db_roles, safe_config

    try:
        with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
            present = {r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,))}
    except psycopg.OperationalError:
        present = set(names)
    missing = [r for r in names if r not in present]
    unset = [db_roles.password_variable(r) for r in sorted(present) if not os.environ.get(db_roles.password_variable(r))]
    if (missing or unset) and not safe_config.is_dev():
        raise safe_config.UnsafeConfiguration(
            f"onething {what}: refusing to start outside development:\n"
            + "".join(f"  - PostgreSQL role {r} does not exist (its administrator creates it)\n" for r in missing)
            + "".join(f"  - {v} is not set (the development password would be used)\n" for v in unset)
            + "README, \"Security model\"; or ONETHING_ENV=dev on a development machine.")
    return {r: db_roles.role_url(settings.database_url, r) for r in names if r in present}


def _adapter(settings: Settings, department: str | None) -> list:
    if not department:
        raise SystemExit("usage: adapter DEPARTMENT")
    return _adapters(settings, department)


PROCESSORS: dict[str, Callable[[Settings, str | None], list]] = {
    "dispatch": _dispatch,
    "cascade": _cascade,
    "case-view": _case_view,
    "kpis": _kpis,
    "oversight": _oversight,
    "read-audit": _read_audit,
    "deadlines": _deadlines,
    "proactive": _proactive,
    "adapter": _adapter,
    "adapters": _adapters,
}
GROUPS: dict[str, tuple[str, ...]] = {
    "core": ("dispatch", "cascade", "proactive"),
    "read-models": ("case-view", "kpis", "oversight", "read-audit"),
}


def processors_of(name: str, settings: Settings, arg: str | None = None) -> list:
    names = GROUPS.get(name, (name,))
    return [p for n in names for p in PROCESSORS[n](settings, arg)]


def run_hosted(name: str, settings: Settings, arg: str | None = None,
               stop: Callable[[], bool] | None = None) -> None:
    """Run the processors of `name` in this process until SIGTERM / SIGINT (or `stop()`)."""
    from projectors.runtime import Host

    processors = processors_of(name, settings, arg)
    require_safe(settings, name, _principals(processors))
    _migrate_in_dev(settings)
    database_roles(settings, processors)
    _schema_checked(next((p.database_url for p in processors if getattr(p, "database_url", None)),
                         settings.database_url))
    _metrics(settings)
    host = Host(processors, settings.bootstrap_servers, settings.database_url,
                name=name + (f".{arg}" if arg else ""))
    host.run(stop or _stop_flag())


def _migrate_in_dev(settings: Settings) -> None:
    """In development a process brings the schema up to date itself, as the owner (idempotent;
    concurrent starters wait for each other). Anywhere else migrating is the operator's step
    (`onething migrate`) and the process has no owner's credentials."""
    from infra import migrations, safe_config

    if safe_config.is_dev():
        migrations.migrate(settings.database_url)


def _schema_checked(url: str) -> None:
    """Outside development: refuse a schema this code was not written for, checked as the
    process's own role (its DATABASE_URL may name only the server and database)."""
    from infra import migrations, safe_config

    if not safe_config.is_dev():
        migrations.require_current(url)


def _principals(processors) -> list[str]:
    """The Kafka principals these processors log in as (infra/acls.py), for the safety check."""
    from events import kafka_auth
    from infra import acls

    out = []
    for p in processors:
        who = acls.principal_for(p)
        out.append(who.user if isinstance(who, kafka_auth.Credentials) else who or kafka_auth.default_principal())
    return out


def run_api(settings: Settings, _arg: str | None) -> None:
    """The API logs in to PostgreSQL as `onething_api`, which may not write the e-licences: the
    synthetic demo holders (development only) are seeded here first, as the owner."""
    from events import kafka_auth
    from infra import db_components
    from producers import intake_api

    require_safe(settings, "api", [kafka_auth.default_principal()])
    _migrate_in_dev(settings)
    api_role = db_components.role("api")
    urls = _role_urls(settings, [api_role], "api")
    _schema_checked(urls.get(api_role, settings.database_url))
    if api_role not in urls:
        structlog.get_logger(__name__).warning("postgres.role_missing", role=api_role)
        intake_api.serve(settings)
        return
    _seed_demo_people(settings)
    intake_api.serve(dataclasses.replace(settings, database_url=urls[api_role]), seed_demo=False)


def _seed_demo_people(settings: Settings) -> None:
    """As the owner, when the API would seed them itself (ONETHING_DEMO_PEOPLE)."""
    import os

    import psycopg

    from producers import e_license, identity

    if os.environ.get("ONETHING_DEMO_PEOPLE", "1" if identity.using_dev_secrets() else "0") != "1":
        return
    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10) as conn:
        e_license.seed_demo_people(conn)


COMPONENTS = ("api", *GROUPS, *PROCESSORS)


def main(argv: list[str]) -> None:
    from .lifeline import die_with_parent

    die_with_parent()   # a child of `onething run`/`demo` ends with it, also when it is killed with SIGKILL
    if not argv or argv[0] not in COMPONENTS:
        raise SystemExit(f"usage: python -m infra.process {{{'|'.join(COMPONENTS)}}} [ARG]")
    name, arg = argv[0], (argv[1] if len(argv) > 1 else None)
    settings = Settings.from_env()
    import os

    log.configure(f"{name}{'.' + arg if arg else ''}", os.environ.get("ONETHING_LOG_LEVEL") or "INFO")
    if name == "api":
        # the API's clients are built without a principal: they are the `api` principal (infra/acls.py)
        # unless the operator names another; hosted processors each log in as their own
        os.environ.setdefault("ONETHING_KAFKA_USER", "api")
        run_api(settings, arg)
    else:
        run_hosted(name, settings, arg)


if __name__ == "__main__":
    main(sys.argv[1:])
