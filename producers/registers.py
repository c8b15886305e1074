"""Register facts at the edge: a checked change becomes a RegisterChanged event, in order, once.

    recorder = RegisterRecorder(settings.bootstrap_servers, settings.database_url)
    recorder.change_company("91310115MA1K4LXQ8H", {"name": "上海新名称有限公司"})
    recorder.convert_sole_trader(old_uscc, new_uscc, {...}, converted_on="2025-07-01")   # 个转企
    recorder.record_death(resident_id, date_of_death="2025-07-02")                      # 公民身后

Every change is validated first (producers/register_changes.py: checksums, known fields,
non-empty values, what the register allows now); a refused change raises ChangeRefused and
produces nothing. Company events are keyed by USCC on `registry.company`; person events by
the person's pseudonymous token on `registry.person` (the resident ID never leaves this module:
not as a key, not in a payload, not in a log line).

## The per-key sequence, under concurrency and failure

Each register key has a row in `register_keys`. A writer:
1. takes a session advisory lock on the key (writers of one key queue; other keys run in
   parallel; a writer that dies releases it with its connection);
2. if the row holds an *intent* (a change a previous writer produced but did not confirm),
   produces it again and confirms it: same bytes, same event id, same sequence;
3. validates the new change against the entry as it stands and builds the event with
   `sequence = next_sequence`;
4. commits the event as the row's intent (so it outlives a crash), then produces it and waits
   for the broker's acknowledgement (acks=all, idempotent producer);
5. confirms: folds it into the master entry, `next_sequence + 1`, clears the intent.

Why this and not "lock the row, produce, then commit": that leaves one window — the broker
acknowledged sequence n but the process dies before the commit — in which the next writer
would reuse n for a different change, and consumers would drop one of the two as a repeat.
With the intent committed first, every outcome is safe:
- produce refused before anything left the process (no metadata, buffer full): the intent is
  withdrawn, nothing was recorded, the sequence is free → no gap (RegisterUnavailable);
- no acknowledgement in time (the record may or may not be on the log): the intent stays; the
  next writer of the key, a retry with the same change id, or `flush_pending` produces it
  again before anything newer → no gap, no reuse; a copy already on the log carries the same
  event id and sequence, so consumers drop the repeat (ChangeNotConfirmed);
- a crash anywhere: as above; a crash before the intent commit recorded nothing.
The log therefore carries sequences 1, 2, 3, … per key with no gap, in order, each number
naming one change (possibly repeated with the same event id).

## Personal values, sealed before anything is produced

A change is validated against the entry as it stands, opened; then its personal values (the
fields the subscriptions mark `pii`: register_changes.sealing_subject / seal_changes) are sealed
under the data key of their subject — the person (their token is the key of the person
register), or a company's legal representative (the token of their resident ID) — and the event,
its intent and the confirmed entry (`register_keys.record`, the fold of the log) only hold that
ciphertext. In the intent's transaction the key is granted, wrapped to their public key, to the
departments the cascade will send a sealed value to (keystore.grant_subject), so it is there before
the sync task is. Erasing the subject (`onething erase`) leaves every copy opening as 已删除.
`master` opens an entry for its readers; `master(..., opened=False)`, `master_from_log` and
`verify_master` work on the ciphertext (the table and the log hold the very same bytes).
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from prometheus_client import Counter

from events import bus, codec
from events.envelope import Actor, Event
from infra.topics import REGISTRY_COMPANY, REGISTRY_PERSON

from . import identity
from .register_changes import (COMPANY, KINDS, PERSON, RegisterRecord, change_event, check_key, conversion_changes,
                               fold, region_of, validate_change)
from .register_resources import RecorderResources, RegisterUnavailable
from .register_values import ChangeRefused, problem

log = structlog.get_logger(__name__)

TOPICS = {COMPANY: REGISTRY_COMPANY, PERSON: REGISTRY_PERSON}
#: who writes each register when the caller does not say (the register systems themselves)
REGISTER_ACTORS = {COMPANY: Actor("register:market_regulation", "register", "register"),
                   PERSON: Actor("register:population", "register", "register")}
CHANGES = Counter("onething_register_changes_total", "Register changes by outcome",
                  ["register", "change_kind", "outcome"])  # recorded|replayed|refused|unavailable|unconfirmed


class ChangeNotConfirmed(RuntimeError):
    """The change was sent but the broker did not acknowledge it in time. It stays recorded and
    will be produced (same event id and sequence) before any later change of its key; retry
    with the same change id to learn the outcome. Do not submit it as a new change."""

    def __init__(self, register: str, key: str, sequence: int, event_id: str):
        super().__init__("the change was sent but not yet acknowledged; retry with the same change id")
        self.register, self.key, self.sequence, self.event_id = register, key, sequence, event_id


@dataclass(frozen=True)
class Recorded:
    register: str
    key: str          # the register key on the wire: USCC, or the person token
    sequence: int
    event_id: str
    change_kind: str
    replayed: bool = False  # a retry with the same change id: the first answer, again

    def as_dict(self) -> dict[str, Any]:
        return {"register": self.register, "key": self.key, "sequence": self.sequence, "event_id": self.event_id,
                "change_kind": self.change_kind, "replayed": self.replayed}


def register_key(register: str, raw_key: str) -> str:
    """The key a register's events carry: the USCC itself, or the pseudonymous person token."""
    return identity.subject_token(raw_key) if register == PERSON else raw_key


def _lock_id(register: str, key: str) -> str:
    return f"register:{register}:{key}"


class RegisterRecorder(RecorderResources):
    """Records register changes. Thread-safe: one shared producer, and one PostgreSQL connection
    per thread — or, given `pool` (the API's `producers.db.Database`), a connection borrowed from
    the pool for each call and given back after it (producers/register_resources.py)."""

    # -- the verbs of the registers ---------------------------------------------------------------
    def register_company(self, uscc: str, fields: Mapping[str, Any], **kw) -> Recorded:
        """设立登记 (or bringing an existing entity into the register): every registration item."""
        return self.record(COMPANY, uscc, "registered", fields, **kw)

    def change_company(self, uscc: str, changes: Mapping[str, Any], **kw) -> Recorded:
        """变更登记: name, address, legal representative, business scope, registered capital, type."""
        return self.record(COMPANY, uscc, "changed", changes, **kw)

    def deregister_company(self, uscc: str, deregistered_on: str, **kw) -> Recorded:
        """注销登记."""
        return self.record(COMPANY, uscc, "deregistered", {"deregistered_on": deregistered_on}, **kw)

    def convert_sole_trader(self, sole_trader_uscc: str, company_uscc: str, company_fields: Mapping[str, Any],
                            converted_on: str, *, actor: Actor | None = None,
                            change_id: str | None = None) -> tuple[Recorded, Recorded]:
        """个转企: the individual business becomes `converted` (successor: the company), then the
        company is registered inheriting its business years and credit record. The old entity is
        closed first, so nothing can change it while its attributes are being inherited."""
        today = self.today()
        actor = actor or REGISTER_ACTORS[COMPANY]
        if not (change_id and self._requested(actor, f"{change_id}:old")):
            # check both halves before writing either: a refused conversion records nothing
            old_record = self.master(COMPANY, sole_trader_uscc) if not check_key(COMPANY, sole_trader_uscc) else None
            conversion_changes(old_record, sole_trader_uscc, company_uscc, company_fields, converted_on,
                               subscriptions=self.subscriptions, today=today)
        # retried with the same change id, the first half answers again with what it recorded
        old = self._write(COMPANY, sole_trader_uscc, "converted_to_company",
                          lambda rec: conversion_changes(rec, sole_trader_uscc, company_uscc, company_fields,
                                                         converted_on, subscriptions=self.subscriptions,
                                                         today=today)[0],
                          actor=actor, change_id=f"{change_id}:old" if change_id else None,
                          request=(sole_trader_uscc, company_uscc, dict(company_fields), converted_on))
        sole_trader = self.master(COMPANY, sole_trader_uscc)

        def new_changes(rec: RegisterRecord) -> dict:
            inherited = {"predecessor_uscc": sole_trader_uscc, "converted_on": converted_on,
                         "established_on": sole_trader.fields.get("established_on")}
            if sole_trader.fields.get("credit_rating"):
                inherited["credit_rating"] = sole_trader.fields["credit_rating"]
            return validate_change(COMPANY, "registered_by_conversion", {**company_fields, **inherited},
                                   raw_key=company_uscc, current=rec, subscriptions=self.subscriptions, today=today)

        new = self._write(COMPANY, company_uscc, "registered_by_conversion", new_changes, actor=actor,
                          change_id=f"{change_id}:new" if change_id else None,
                          request=(sole_trader_uscc, company_uscc, dict(company_fields), converted_on),
                          correlation_id=old.event_id)
        return old, new

    def move_household(self, resident_id: str, household_address: str, household_region_code: str,
                       moved_on: str, **kw) -> Recorded:
        """户口迁移."""
        return self.record(PERSON, resident_id, "household_moved",
                           {"household_address": household_address, "household_region_code": household_region_code,
                            "household_moved_on": moved_on}, **kw)

    def record_death(self, resident_id: str, date_of_death: str, death_certificate_no: str | None = None,
                     **kw) -> Recorded:
        """死亡登记: the start of 公民身后 — every department holding the person learns it at once."""
        changes = {"date_of_death": date_of_death}
        if death_certificate_no is not None:
            changes["death_certificate_no"] = death_certificate_no
        return self.record(PERSON, resident_id, "died", changes, **kw)

    def record(self, register: str, raw_key: str, change_kind: str, changes: Mapping[str, Any], *,
               actor: Actor | None = None, change_id: str | None = None) -> Recorded:
        """Validate and record one change (any register, any kind)."""
        if register not in TOPICS:
            raise ChangeRefused([problem("register", "change.unknown_register")])
        if (register, change_kind) not in KINDS:
            CHANGES.labels(register, "unknown", "refused").inc()
            raise ChangeRefused([problem("change_kind", "change.unknown_kind")])
        key_problem = check_key(register, raw_key, today=self.today())
        if key_problem:  # before touching the database: a bad key must not become a row
            CHANGES.labels(register, change_kind, "refused").inc()
            raise ChangeRefused([key_problem])

        def build(rec: RegisterRecord) -> dict:
            return validate_change(register, change_kind, changes, raw_key=raw_key, current=rec,
                                   subscriptions=self.subscriptions, today=self.today())

        return self._write(register, raw_key, change_kind, build, actor=actor, change_id=change_id,
                           request=dict(changes) if isinstance(changes, Mapping) else None)

    def _requested(self, actor: Actor, change_id: str) -> bool:
        with self._session() as conn:
            return conn.execute("SELECT 1 FROM register_change_requests WHERE caller = %s AND change_id = %s",
                                (actor.id_token, change_id)).fetchone() is not None

    # -- reading the master register ---------------------------------------------------------------
    def master(self, register: str, raw_key: str, *, opened: bool = True) -> RegisterRecord | None:
        """The entry as of its last confirmed change (None when the key was never written): its
        personal values opened (已删除 once their subject was erased), or with `opened=False` as
        stored — sealed, exactly as the fold of the log."""
        key = register_key(register, raw_key)
        with self._session() as conn:
            row = conn.execute("SELECT record, next_sequence - 1, last_event_id FROM register_keys "
                               "WHERE register = %s AND register_key = %s", (register, key)).fetchone()
            if row is None or row[1] == 0:
                return None
            record = RegisterRecord(register, key, row[1], dict(row[0]), str(row[2]) if row[2] else None)
            return self._opened(record) if opened else record

    def flush_pending(self, limit: int = 1000) -> int:
        """Produce and confirm every intent left unconfirmed (run at start-up, or by an operator)."""
        with self._session() as conn:
            rows = conn.execute("SELECT register, register_key FROM register_keys WHERE pending_event IS NOT NULL "
                                "ORDER BY pending_since LIMIT %s", (limit,)).fetchall()
            done = 0
            for register, key in rows:
                with self._key_lock(conn, register, key):
                    if self._settle(conn, register, key) is not None:
                        done += 1
            return done

    # -- the protocol ------------------------------------------------------------------------------
    def _key_lock(self, conn: psycopg.Connection, register: str, key: str):
        recorder = self

        class _Lock:
            def __enter__(self_inner):
                try:
                    conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (_lock_id(register, key),))
                except psycopg.errors.LockNotAvailable:
                    raise RegisterUnavailable("another change of this register entry is in progress; "
                                              "try again") from None
                except psycopg.OperationalError as exc:
                    recorder._local.conn = None
                    raise RegisterUnavailable("the register database cannot be reached") from exc
                return self_inner

            def __exit__(self_inner, *exc):
                try:
                    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (_lock_id(register, key),))
                except psycopg.Error:
                    conn.close()  # the session lock dies with the connection
                    recorder._local.conn = None
                return False

        return _Lock()

    def _row(self, conn: psycopg.Connection, register: str, key: str):
        conn.execute("INSERT INTO register_keys (register, register_key) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (register, key))
        return conn.execute("SELECT next_sequence, record, last_event_id, pending_event, pending_sequence, "
                            "pending_event_id FROM register_keys WHERE register = %s AND register_key = %s",
                            (register, key)).fetchone()

    def _settle(self, conn: psycopg.Connection, register: str, key: str) -> RegisterRecord | None:
        """Produce and confirm the key's intent, if any; returns the entry if one was settled."""
        next_seq, record, last_id, pending, pending_seq, pending_id = self._row(conn, register, key)
        if pending is None:
            return None
        event = codec.decode(bytes(pending))
        try:
            bus.publish(self.producer(), TOPICS[register], event, timeout=self.produce_timeout_s + 2)
        except Exception as exc:
            self._discard_producer()
            raise RegisterUnavailable("an earlier change of this register entry is not yet acknowledged by the "
                                      "broker; nothing new was recorded, try again") from exc
        current = RegisterRecord(register, key, next_seq - 1, dict(record), str(last_id) if last_id else None)
        self._confirm(conn, fold(current, event), event)
        log.info("register.intent_settled", register=register, key=key, sequence=pending_seq)
        return current

    def _confirm(self, conn: psycopg.Connection, after: RegisterRecord, event: Event) -> None:
        with conn.transaction():
            conn.execute(
                "UPDATE register_keys SET record = %s, next_sequence = %s, last_event_id = %s, pending_event = NULL, "
                "pending_sequence = NULL, pending_event_id = NULL, pending_since = NULL, updated_at = now() "
                "WHERE register = %s AND register_key = %s AND pending_event_id = %s",
                (json.dumps(dict(after.fields), ensure_ascii=False), event.envelope.sequence + 1, event.id,
                 after.register, after.key, event.id))

    def _request_hash(self, register: str, key: str, change_kind: str, request: Any) -> str:
        body = json.dumps([register, key, change_kind, request], sort_keys=True, ensure_ascii=False, default=str)
        return hmac.new(identity.pseudonym_secret().encode(), body.encode(), hashlib.sha256).hexdigest()

    def _write(self, register: str, raw_key: str, change_kind: str, build: Callable[[RegisterRecord], dict], *,
               actor: Actor | None, change_id: str | None, request: Any,
               correlation_id: str | None = None) -> Recorded:
        with self._session() as conn:
            return self._write_on(conn, register, raw_key, change_kind, build, actor=actor, change_id=change_id,
                                  request=request, correlation_id=correlation_id)

    def _write_on(self, conn: psycopg.Connection, register: str, raw_key: str, change_kind: str,
                  build: Callable[[RegisterRecord], dict], *, actor: Actor | None, change_id: str | None,
                  request: Any, correlation_id: str | None = None) -> Recorded:
        actor = actor or REGISTER_ACTORS[register]
        key = register_key(register, raw_key)
        request_hash = self._request_hash(register, key, change_kind, request) if change_id else None
        try:
            with self._key_lock(conn, register, key):
                if change_id:
                    row = conn.execute("SELECT request_hash, register, register_key, sequence, event_id "
                                       "FROM register_change_requests WHERE caller = %s AND change_id = %s",
                                       (actor.id_token, change_id)).fetchone()
                    if row is not None:
                        if row[0] != request_hash or (row[1], row[2]) != (register, key):
                            raise ChangeRefused([problem("change_id", "change_id.reused")])
                        self._settle(conn, register, key)
                        CHANGES.labels(register, change_kind, "replayed").inc()
                        return Recorded(register, key, row[3], str(row[4]), change_kind, replayed=True)
                self._settle(conn, register, key)
                next_seq, record, last_id, _p, _ps, _pid = self._row(conn, register, key)
                current = RegisterRecord(register, key, next_seq - 1, dict(record), str(last_id) if last_id else None)
                opened = self._opened(current)          # checked against the clear entry …
                changes = build(opened)
                sealed, grant = self._seal(conn, register, key, changes, opened)   # … produced sealed
                event = change_event(register, key, change_kind, sealed, sequence=next_seq, actor=actor,
                                     region_code=region_of(register, raw_key, changes, opened),
                                     correlation_id=correlation_id)
                encoded = codec.encode(event)
                with conn.transaction():  # the intent: durable before anything is produced
                    conn.execute("UPDATE register_keys SET pending_event = %s, pending_sequence = %s, "
                                 "pending_event_id = %s, pending_since = now() WHERE register = %s AND register_key = %s",
                                 (encoded, next_seq, event.id, register, key))
                    if grant is not None:  # the departments' keys before their sync tasks exist
                        grant()
                    if change_id:
                        conn.execute("INSERT INTO register_change_requests (caller, change_id, request_hash, register,"
                                     " register_key, sequence, event_id) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                                     (actor.id_token, change_id, request_hash, register, key, next_seq, event.id))
                try:
                    future = bus.send(self.producer(), TOPICS[register], event)
                except Exception as exc:  # refused before it left this process: withdraw the intent
                    with conn.transaction():
                        conn.execute("UPDATE register_keys SET pending_event = NULL, pending_sequence = NULL, "
                                     "pending_event_id = NULL, pending_since = NULL WHERE register = %s AND "
                                     "register_key = %s AND pending_event_id = %s", (register, key, event.id))
                        if change_id:
                            conn.execute("DELETE FROM register_change_requests WHERE caller = %s AND change_id = %s",
                                         (actor.id_token, change_id))
                    raise RegisterUnavailable("the broker cannot be reached; nothing was recorded, try again") from exc
                try:
                    future.get(timeout=self.produce_timeout_s + 2)
                except Exception as exc:
                    self._discard_producer()
                    CHANGES.labels(register, change_kind, "unconfirmed").inc()
                    log.warning("register.unconfirmed", register=register, key=key, sequence=next_seq,
                                error=type(exc).__name__)
                    raise ChangeNotConfirmed(register, key, next_seq, event.id) from None
                self._confirm(conn, fold(current, event), event)
        except ChangeRefused:
            CHANGES.labels(register, change_kind, "refused").inc()
            raise
        except RegisterUnavailable:
            CHANGES.labels(register, change_kind, "unavailable").inc()
            raise
        except psycopg.OperationalError as exc:
            self._local.conn = None
            CHANGES.labels(register, change_kind, "unavailable").inc()
            raise RegisterUnavailable("the register database cannot be reached") from exc
        CHANGES.labels(register, change_kind, "recorded").inc()
        log.info("register.recorded", register=register, key=key, sequence=event.envelope.sequence,
                 change_kind=change_kind, fields=sorted(changes), event_id=event.id)
        return Recorded(register, key, event.envelope.sequence, event.id, change_kind)
