"""A processor whose state is one value per key (a case), folded from its events by a pure function.

`fold(state, event) -> (state, [(topic, derived event)])` is all a subclass writes (plus how
its state becomes JSON and back). Per checkpoint the runtime's step is turned into:
one query for the states of the keys the batch touches that are not cached → the fold, in
offset order per partition → one versioned write of every changed state. States are cached per
owned partition and the cache of a partition is dropped when it is revoked.

Versioned writes fence a stale member across topics: two topics of one case (applications and
decisions.<dept>, co-partitioned) are two stored offsets, so a member that lost one of them
could still pass the offset check of the other. Each state row carries a version; a write that
does not find the version it read raises `Fenced`, and the batch is re-read on fresh state.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Generic, TypeVar

import orjson
import psycopg
from psycopg import sql

from events.envelope import Event

from .batch_rows import rows_json
from .checkpoint import Fenced, Step
from .runtime import BaseProcessor, explain

S = TypeVar("S")


class KeyedFold(BaseProcessor, Generic[S]):
    table: str                       # (key text PRIMARY KEY, state jsonb, version bigint, updated_at)
    key_column: str = "key"
    cache_size: int = 20_000
    rejects: tuple[type[BaseException], ...] = ()   # an event the fold refuses: dead-lettered, the batch goes on

    def __init__(self) -> None:
        self._cache: OrderedDict[str, tuple[int, int, S]] = OrderedDict()   # key -> (partition, version, state)
        t, k = sql.Identifier(self.table), sql.Identifier(self.key_column)
        # states travel as one JSON document a batch (psycopg's text-array escaping of large
        # strings cost ~0.7 ms a state) and are parsed by orjson, not by the driver
        self._select = sql.SQL("SELECT {k}, version, state::text FROM {t} WHERE {k} = ANY(%s)").format(t=t, k=k)
        self._update = sql.SQL(
            "UPDATE {t} AS s SET state = x.state, version = s.version + 1, updated_at = now() "
            "FROM jsonb_to_recordset(%s::jsonb) AS x(key text, version bigint, state jsonb) "
            "WHERE s.{k} = x.key AND s.version = x.version").format(t=t, k=k)
        self._insert = sql.SQL(
            "INSERT INTO {t} ({k}, state, version) SELECT x.key, x.state, 1 "
            "FROM jsonb_to_recordset(%s::jsonb) AS x(key text, state jsonb) ON CONFLICT DO NOTHING").format(t=t, k=k)

    # -- what a subclass writes -------------------------------------------------------------------
    def fold(self, state: S | None, event: Event) -> tuple[S | None, list[tuple[str, Event]]]:
        """The next state and the derived events; return `state` itself (the same object) when
        the event changes nothing (a repeat), and nothing is written."""
        raise NotImplementedError

    def to_json(self, state: S) -> dict[str, Any]:
        raise NotImplementedError

    def from_json(self, data: dict[str, Any]) -> S:
        raise NotImplementedError

    # -- the runtime's side -----------------------------------------------------------------------
    def process(self, step: Step) -> None:
        states: dict[str, tuple[int | None, S | None]] = {}
        missing: list[str] = []
        for item in step.items:
            key = item.event.key
            if key in states:
                continue
            hit = self._cache.get(key)
            if hit is not None:
                states[key] = (hit[1], hit[2])
            else:
                states[key] = (None, None)
                missing.append(key)
        if missing:
            for key, version, data in step.conn.execute(self._select, (missing,)).fetchall():
                states[key] = (version, self.from_json(orjson.loads(data)))
        changed: dict[str, int] = {}   # key -> partition
        for item in step.items:
            key = item.event.key
            version, before = states[key]
            try:
                after, derived = self.fold(before, item.event)
            except self.rejects as exc:
                step.dead_letter(self.group, item, explain(exc, self.name))
                continue
            if after is before:
                continue
            states[key] = (version, after)
            changed[key] = item.partition
            for topic, event in derived:
                step.emit(topic, event)
        if changed:
            self._write(step, {k: states[k] for k in changed}, changed)

    def _write(self, step: Step, rows: dict[str, tuple[int | None, S]], partitions: dict[str, int]) -> None:
        old = [{"key": k, "version": v, "state": self.to_json(s)} for k, (v, s) in rows.items() if v is not None]
        new = [{"key": k, "state": self.to_json(s)} for k, (v, s) in rows.items() if v is None]
        if old:
            n = step.conn.execute(self._update, (rows_json(old),)).rowcount
            if n != len(old):
                raise Fenced(f"{self.name}: {len(old) - n} states changed under this member")
        if new:
            n = step.conn.execute(self._insert, (rows_json(new),)).rowcount
            if n != len(new):
                raise Fenced(f"{self.name}: {len(new) - n} states were created by another member")

        def remember() -> None:
            for k, (v, s) in rows.items():
                self._cache[k] = (partitions[k], (v or 0) + 1, s)
                self._cache.move_to_end(k)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

        step.on_commit(remember)

    def revoked(self, partitions) -> None:
        gone = {tp.partition for tp in partitions}
        if gone:
            for key in [k for k, (p, _v, _s) in self._cache.items() if p in gone]:
                del self._cache[key]

    def forget(self) -> None:
        self._cache.clear()


def load_states(conn: psycopg.Connection, table: str, key_column: str, keys: list[str]) -> dict[str, dict]:
    """The stored JSON states of `keys` (for tests and tools that look inside a fold's table)."""
    q = sql.SQL("SELECT {k}, state FROM {t} WHERE {k} = ANY(%s)").format(t=sql.Identifier(table),
                                                                       k=sql.Identifier(key_column))
    return {k: s for k, s in conn.execute(q, (keys,)).fetchall()}
