"""The API's PostgreSQL connections: one shared pool per process (psycopg_pool), not a new
connection — and a freshly forked PostgreSQL backend — per request.

    database = Database(settings.database_url)        # closed: costs nothing yet
    database.open()                                   # at the app's startup (lifespan); else on first use
    with database.connection() as conn:               # autocommit; back to the pool afterwards
        ...
    database.close()                                  # at shutdown

Connections are autocommit, as `intake_store.connect` gave them: a write that goes with an
event says `with conn.transaction()` and keeps it open until Kafka acknowledged the event.
A connection comes back to the pool as it was lent (the pool rolls back a transaction left
open and discards a broken connection), so nothing may change a session setting on a pooled
connection without restoring it. One that sat idle for more than `CHECK_IDLE_S` is pinged
before it is lent (a database restart then costs no request a 503); one in steady use is not,
which saves a round trip per request under load.

Sizes (environment; one pool per API process):
  ONETHING_API_POOL_MIN (2)        connections kept open while idle
  ONETHING_API_POOL_MAX (16)       at most this many at once; requests beyond it wait for one.
                                   Every request holds at most one connection at a time, and
                                   holds it while Kafka acknowledges its event, so more than the
                                   threads serving requests (anyio's 40 for FastAPI's `def`
                                   handlers) is never used. Count instances × MAX against
                                   PostgreSQL's max_connections (100 by default).
  ONETHING_API_POOL_TIMEOUT_S (5)  how long a request waits for a connection before 503
                                   (`PoolTimeout` is a `psycopg.OperationalError`).
The connections carry application_name `onething-api` (unless the URL names one), so
`pg_stat_activity` tells them apart.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

APPLICATION_NAME = "onething-api"
DEFAULT_MIN, DEFAULT_MAX, DEFAULT_TIMEOUT_S = 2, 16, 5.0
CHECK_IDLE_S = 2.0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def _returned(conn: psycopg.Connection) -> None:
    conn._onething_returned_at = time.monotonic()


def _check_if_idle(conn: psycopg.Connection) -> None:
    """The pool's `check`: raises for a connection that is no good (the pool then replaces it)."""
    returned = getattr(conn, "_onething_returned_at", None)
    if returned is None or time.monotonic() - returned > CHECK_IDLE_S:
        ConnectionPool.check_connection(conn)


class Database:
    """A lazily opened `psycopg_pool.ConnectionPool`; thread-safe, reopenable after `close()`."""

    @classmethod
    def standalone(cls, url: str) -> "Database":
        """For a router mounted without the API's pool (tests): no idle connections kept, so
        one that is dropped without `close()` does not hold backends for long."""
        return cls(url, min_size=0, max_idle_s=30.0)

    def __init__(self, url: str, *, min_size: int | None = None, max_size: int | None = None,
                 timeout_s: float | None = None, max_idle_s: float = 600.0, name: str = APPLICATION_NAME):
        self.url = url
        self.max_idle_s = max_idle_s
        self.max_size = max_size if max_size is not None else _env_int("ONETHING_API_POOL_MAX", DEFAULT_MAX)
        self.min_size = min(self.max_size, min_size if min_size is not None
                            else _env_int("ONETHING_API_POOL_MIN", DEFAULT_MIN))
        if self.max_size < 1 or self.min_size < 0:
            raise ValueError("ONETHING_API_POOL_MAX must be at least 1 and ONETHING_API_POOL_MIN at least 0")
        self.timeout_s = timeout_s if timeout_s is not None else float(
            os.environ.get("ONETHING_API_POOL_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
        self.name = name
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None

    def _new_pool(self) -> ConnectionPool:
        kwargs: dict = {"autocommit": True, "connect_timeout": 5}
        if "application_name" not in conninfo_to_dict(self.url):
            kwargs["application_name"] = self.name
        return ConnectionPool(self.url, kwargs=kwargs, min_size=self.min_size, max_size=self.max_size,
                              timeout=self.timeout_s, max_idle=self.max_idle_s, open=False, name=self.name,
                              check=_check_if_idle, reset=_returned)

    def open(self) -> ConnectionPool:
        """Start the pool without waiting for PostgreSQL: the API starts while the database is
        down, and requests answer 503 until it is back."""
        with self._lock:
            if self._pool is None:
                pool = self._new_pool()
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=5)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        pool = self._pool or self.open()
        with pool.connection() as conn:
            yield conn

    def stats(self) -> dict[str, int]:
        pool = self._pool
        return pool.get_stats() if pool is not None else {}
