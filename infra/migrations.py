"""Versioned SQL migrations: files `infra/migrations/NNNN_name.sql`, applied once each, in order.

A `schema_version` table records what ran. An advisory lock makes concurrent starters (every
process runs `migrate` on boot) wait for each other instead of racing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
import structlog

log = structlog.get_logger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_LOCK_KEY = 0x0E7E_1E_5  # any constant unique to this project
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise ValueError(f"{path}: migration files are named NNNN_lowercase_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"{directory}: two migrations share a version number")
    return found


def migrate(url: str, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply what has not run yet; returns the versions applied now (empty on a re-run)."""
    applied_now: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
            for mig in discover(directory):
                if mig.version in done:
                    continue
                with conn.transaction():
                    conn.execute(mig.path.read_text())
                    conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                                 (mig.version, mig.name))
                log.info("postgres.migrated", version=mig.version, name=mig.name)
                applied_now.append(mig.version)
            if directory == MIGRATIONS_DIR:
                grant_roles(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def grant_roles(conn: psycopg.Connection) -> None:
    """The grants and row policies of the department roles (infra/db_roles.py) and of the
    components' (infra/db_components.py): the migrations own the tables, so they grant them,
    after every run (only what is missing)."""
    from catalog.loader import load_catalog

    from . import db_components, db_roles

    with conn.transaction():
        db_roles.apply_grants(conn, load_catalog().departments)
        db_components.apply_grants(conn)


class SchemaBehind(RuntimeError):
    """The database's schema is older (or newer) than this code's migrations."""


def require_current(url: str) -> None:
    """Refuse to run on a schema this code was not written for, naming the fix."""
    latest = discover()[-1].version
    found = current_version(url)
    if found != latest:
        raise SchemaBehind(f"the database's schema is at version {found}, this code needs {latest}: "
                           "run `onething migrate` as the tables' owner first (README, \"Security model\")")


def current_version(url: str) -> int | None:
    with psycopg.connect(url) as conn:
        try:
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        return row[0]
