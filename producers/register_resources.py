"""What a RegisterRecorder holds and opens lazily: its producer, its connections, its keys.

Separate from producers/registers.py because none of it is the recording protocol: it is how the
one shared producer is made (and thrown away after an unconfirmed change), how a thread gets its
PostgreSQL connection — its own, or one borrowed from the API's pool for the outermost call — and
how the data keys that seal and open personal values are read. The recorder builds on it
(`RegisterRecorder(RecorderResources)`), so the protocol reads as the protocol.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import date
from typing import Any

import psycopg
import psycopg_pool
import structlog
from kafka import KafkaProducer

from catalog.subscriptions import Subscriptions, load_subscriptions
from events import bus, personal
from infra import keystore

from .register_changes import RegisterRecord, key_holders, seal_changes, sealing_subject

log = structlog.get_logger(__name__)


class RegisterUnavailable(RuntimeError):
    """Nothing was recorded (the broker or the database could not be reached); try again."""


class RecorderResources:
    """The producer, the PostgreSQL connections and the data keys of a RegisterRecorder."""

    def __init__(self, bootstrap: str, database_url: str, *, producer: KafkaProducer | None = None,
                 produce_timeout_s: float = 10.0, lock_timeout_s: float = 15.0,
                 subscriptions: Subscriptions | None = None, today: Callable[[], date] = date.today,
                 pool: Any = None):
        self.bootstrap = bootstrap
        self.database_url = database_url
        self.produce_timeout_s = produce_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self.subscriptions = subscriptions or load_subscriptions()
        self.today = today
        self._own_producer = producer is None
        self._producer = producer
        self._producer_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[psycopg.Connection] = []
        self._pool = pool
        self._master_keys: keystore.MasterKeys | None = None
        self._key_lookup: personal.KeyLookup | None = None

    # -- resources ------------------------------------------------------------------------------
    def producer(self) -> KafkaProducer:
        with self._producer_lock:
            if self._producer is None:
                half = max(500, int(self.produce_timeout_s * 500))
                self._producer = bus.make_producer(self.bootstrap, client_id="onething-registers", linger_ms=0,
                                                   max_block_ms=half, request_timeout_ms=half,
                                                   delivery_timeout_ms=int(self.produce_timeout_s * 1000) + 10)
            return self._producer

    def _discard_producer(self) -> None:
        """After a change the broker did not confirm, the next attempt gets a fresh producer (a new
        producer id, fresh metadata and connections). `onething faults` found this recorder's
        producer timing out every send to one partition for ten minutes after that partition's
        leader was killed and back (the cause inside kafka-python is not pinned down; a fresh
        producer recovers at once). A producer given by the caller is the caller's to manage."""
        if not self._own_producer:
            return
        with self._producer_lock:
            stale, self._producer = self._producer, None
        if stale is not None:
            try:
                stale.close(timeout=0)
            except Exception:   # closing a wedged producer must not hide the original failure
                # kafka-python's close() flushes first and raises on records still pending, before
                # it stops the sender thread: stop the thread (it aborts what is pending), then close
                log.warning("register.producer_close_failed")
                sender = getattr(stale, "_sender", None)
                if sender is not None:
                    sender.force_close()
                    sender.join(2)
                try:
                    stale.close(timeout=0)
                except Exception:
                    pass

    def _conn(self) -> psycopg.Connection:
        held = getattr(self._local, "held", None)
        if held is not None:
            return held
        if self._pool is not None:
            raise RuntimeError("a pooled recorder works on a connection of _session() only")
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            try:
                conn = psycopg.connect(self.database_url, autocommit=True)
            except psycopg.OperationalError as exc:
                raise RegisterUnavailable("the register database cannot be reached") from exc
            conn.execute(f"SET lock_timeout = '{int(self.lock_timeout_s * 1000)}ms'")
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection]:
        """The connection a call works on: this thread's own, or — with a pool — one borrowed for
        the outermost call of the thread. A borrowed one goes back with its lock timeout reset
        and every advisory lock released, so the pool lends it on as a clean session."""
        held = getattr(self._local, "held", None)
        if held is not None or self._pool is None:
            yield self._conn()
            return
        try:
            with self._pool.connection() as conn:
                conn.execute(f"SET lock_timeout = '{int(self.lock_timeout_s * 1000)}ms'")
                self._local.held = conn
                try:
                    yield conn
                finally:
                    self._local.held = None
                    if not conn.closed:
                        try:
                            conn.execute("RESET lock_timeout; SELECT pg_advisory_unlock_all()")
                        except psycopg.Error:
                            conn.close()  # the pool discards it; its session locks die with it
        except psycopg_pool.PoolTimeout as exc:
            raise RegisterUnavailable("the register database cannot be reached") from exc

    def close(self) -> None:
        """Closes this recorder's own connections and producer (a pool belongs to its owner)."""
        for conn in self._connections:
            if not conn.closed:
                conn.close()
        self._connections.clear()
        if self._own_producer and self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None

    # -- personal values -------------------------------------------------------------------------
    def _master(self) -> keystore.MasterKeys:
        """The master key, read when a personal value is first sealed or opened (not before: a
        recorder that never meets one needs none)."""
        if self._master_keys is None:
            self._master_keys = keystore.MasterKeys.from_env()
        return self._master_keys

    def _keys(self) -> personal.KeyLookup:
        """Data keys by id, read through the connection of the call in progress (cached a while)."""
        if self._key_lookup is None:
            self._key_lookup = keystore.platform_keys(lambda: nullcontext(self._conn()), self._master())
        return self._key_lookup

    def _opened(self, record: RegisterRecord) -> RegisterRecord:
        """The entry with its sealed values opened (已删除 where the subject was erased)."""
        if not any(personal.is_sealed(v) for v in record.fields.values()):
            return record
        return RegisterRecord(record.register, record.key, record.sequence,
                              personal.open_fields(self._keys(), record.fields), record.last_event_id)

    def _seal(self, conn: psycopg.Connection, register: str, key: str, changes: dict,
              current: RegisterRecord) -> tuple[dict, Callable[[], None] | None]:
        """(changes as the event carries them, the grant to make in the intent's transaction)."""
        reg = self.subscriptions.register(register)
        subject = sealing_subject(reg, key, changes, current.fields)
        if subject is None:
            return changes, None
        key_id, data_key = keystore.subject_key(conn, subject, self._master())
        sealed = seal_changes(reg, changes, data_key, key_id)
        holders = key_holders(self.subscriptions, register, sealed)
        return sealed, lambda: keystore.grant_subject(conn, subject, key_id, data_key, holders)
