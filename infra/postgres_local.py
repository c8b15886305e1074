"""PostgreSQL for the local stack: the server named by DATABASE_URL, or Debian's own, installed and started here.

When DATABASE_URL is set the project never touches a server of its own: it only applies the
migrations. Otherwise it reuses a running Debian cluster, starts a stopped one, or installs
the `postgresql` package (apt-get) and creates the role and database the default URL names.
"""
from __future__ import annotations

import glob
import shutil
import subprocess
import time
from urllib.parse import urlparse

import psycopg
import structlog

log = structlog.get_logger(__name__)


class PostgresStackError(RuntimeError):
    """The database could not be reached or prepared; the message says what to do."""


def _run(cmd: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise PostgresStackError(f"{' '.join(cmd)} failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return proc


def _server_installed() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/postgres")) and shutil.which("pg_lsclusters") is not None


def install_server() -> None:
    if _server_installed():
        return
    if shutil.which("apt-get") is None:
        raise PostgresStackError("no PostgreSQL server here and no apt-get: set DATABASE_URL to an existing server")
    log.info("postgres.install", package="postgresql")
    _run(["apt-get", "update", "-q"], timeout=900)
    _run(["apt-get", "install", "-y", "-q", "postgresql"], timeout=1800)


def _clusters() -> list[dict[str, str]]:
    out = _run(["pg_lsclusters", "--no-header"]).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            rows.append({"version": parts[0], "name": parts[1], "port": parts[2], "status": parts[3]})
    return rows


def ensure_server(port: int = 5432) -> dict[str, str]:
    """Start (or create) the Debian cluster listening on `port`; reuse it when it already runs."""
    install_server()
    clusters = [c for c in _clusters() if c["port"] == str(port)]
    if not clusters:
        version = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))[-1].split("/")[4]
        _run(["pg_createcluster", version, "main", "--port", str(port)])
        clusters = [c for c in _clusters() if c["port"] == str(port)]
    cluster = clusters[0]
    if cluster["status"] != "online":
        log.info("postgres.start", version=cluster["version"], cluster=cluster["name"])
        _run(["pg_ctlcluster", cluster["version"], cluster["name"], "start"], timeout=120)
    return cluster


def _psql_as_postgres(sql: str, db: str = "postgres", port: int = 5432) -> str:
    cmd = ["psql", "-X", "-q", "-t", "-A", "-p", str(port), "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]
    if shutil.which("runuser"):
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return _run(cmd, timeout=60).stdout.strip()


def ensure_role_and_database(url: str) -> None:
    """Create the URL's role and database on the local server, idempotently."""
    parts = urlparse(url)
    user, password = parts.username or "onething", parts.password or "onething"
    db = (parts.path or "/onething").lstrip("/")
    port = parts.port or 5432
    for ident in (user, db):
        if not ident.replace("_", "").isalnum():
            raise PostgresStackError(f"role and database names must be plain identifiers, got {ident!r}")
    exists = _psql_as_postgres(f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'", port=port)
    if exists != "1":
        _psql_as_postgres(f"CREATE ROLE {user} LOGIN PASSWORD '{password.replace(chr(39), chr(39) * 2)}'", port=port)
    if _psql_as_postgres(f"SELECT 1 FROM pg_database WHERE datname = '{db}'", port=port) != "1":
        _psql_as_postgres(f"CREATE DATABASE {db} OWNER {user}", port=port)


def wait_connectable(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(url, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.5)
    host = urlparse(url).hostname
    raise PostgresStackError(f"cannot connect to PostgreSQL at {host}: {last}")


def drop_database(url: str) -> None:
    """Drop the URL's database on the local server (its sessions too), if it exists: the test
    command's lanes start from nothing each run, as their brokers do — offsets a database kept
    from an earlier run's log would point past the new log's end."""
    parts = urlparse(url)
    db = (parts.path or "/onething").lstrip("/")
    if not db.replace("_", "").isalnum():
        raise PostgresStackError(f"database names must be plain identifiers, got {db!r}")
    _psql_as_postgres(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", port=parts.port or 5432)


def ensure_local(url: str, *, fresh: bool = False) -> None:
    port = urlparse(url).port or 5432
    ensure_server(port)
    if fresh:
        drop_database(url)
    ensure_role_and_database(url)
    ensure_roles(port)
    wait_connectable(url)


def ensure_roles(port: int = 5432) -> None:
    """The LOGIN roles of the department adapters (infra/db_roles.py) and of the platform's
    components (infra/db_components.py), as the local superuser: the project's own role may not
    create roles. Grants come with the migrations."""
    from catalog.loader import load_catalog

    from . import db_components, db_roles

    names = [db_roles.role(d) for d in sorted(load_catalog().departments)] + db_components.roles()
    existing = set(_psql_as_postgres(
        "SELECT rolname FROM pg_roles WHERE left(rolname, 9) = 'onething_'", port=port).split())
    statements = [f"CREATE ROLE {n} LOGIN NOINHERIT PASSWORD '{db_roles.password(n)}'"
                  for n in names if n not in existing]
    if statements:
        _psql_as_postgres("; ".join(statements), port=port)
        log.info("postgres.roles_created", roles=len(statements))


def server_online() -> bool:
    """A local cluster runs (whatever databases it has: a session's own may not exist yet)."""
    return any(row["status"] == "online" for row in _clusters())


def others_connected(url: str) -> int:
    """Client connections to the local server from other databases than `url`'s: another test
    session or a developer's stack, whose server must not be stopped under it."""
    db = (urlparse(url).path or "/onething").lstrip("/")
    out = _psql_as_postgres(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        f"AND pid <> pg_backend_pid() AND datname IS DISTINCT FROM '{db.replace(chr(39), '')}'",
        port=urlparse(url).port or 5432)
    return int(out or 0)


def server_status(url: str) -> dict[str, str]:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            return {"state": "up", "version": version}
    except psycopg.OperationalError as exc:
        return {"state": "down", "error": str(exc).splitlines()[0] if str(exc) else "unreachable"}
