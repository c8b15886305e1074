"""Generations of a read model: a shadow rebuilt from the log is swapped in, in one transaction.

A read model's rows live in `public`; its stored offsets and processed event ids live under a
namespace, which is the read model's name until a shadow rebuild swaps a new generation in
(`projection_generations` maps name → namespace). The swap, in ONE transaction:

1. set the live generation's stored offsets of every partition to -1 — the live member's next
   checkpoint then cannot compare-and-set (nor store a first offset), is fenced
   (projectors/runtime.py), re-reads the namespace and the offsets, and carries on from where
   the shadow stopped, on the shadow's tables;
2. move the live tables into a retired schema and the shadow's tables into `public`;
3. record the new namespace, and grant the components' roles the new tables.

Readers block for the moment of the swap (ALTER TABLE's lock) and then read the new tables:
never an empty or half-built view. The retired tables and processed ids are dropped afterwards.
"""
from __future__ import annotations

import time

import psycopg
import structlog
from psycopg import sql

from infra import db_components

log = structlog.get_logger(__name__)


def current(conn: psycopg.Connection, name: str) -> str:
    row = conn.execute("SELECT namespace FROM projection_generations WHERE name = %s", (name,)).fetchone()
    return row[0] if row else name


def swap(conn: psycopg.Connection, name: str, namespace: str, shadow_schema: str, tables: tuple[str, ...],
         partitions) -> None:
    retired = f"retired_{name}_{time.strftime('%Y%m%d%H%M%S')}"[:63]
    with conn.transaction():
        conn.execute("INSERT INTO projection_generations (name, namespace) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (name, name))
        old = conn.execute("SELECT namespace FROM projection_generations WHERE name = %s FOR UPDATE",
                           (name,)).fetchone()[0]
        # fence the live member: no offset of the old generation can be compared-and-set any more
        conn.execute("UPDATE consumer_offsets SET next_offset = -1 WHERE consumer = %s", (old,))
        conn.execute("INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) "
                     "SELECT %s, t, p, -1 FROM unnest(%s::text[], %s::int[]) AS x(t, p) ON CONFLICT DO NOTHING",
                     (old, [tp.topic for tp in partitions], [tp.partition for tp in partitions]))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(retired)))
        for table in tables:
            conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(sql.Identifier("public", table),
                                                                       sql.Identifier(retired)))
            conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA public").format(sql.Identifier(shadow_schema, table)))
        conn.execute("UPDATE projection_generations SET namespace = %s, swapped_at = now() WHERE name = %s",
                     (namespace, name))
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(shadow_schema)))
        # the shadow's tables were made by the owner and carry no grants: the components' roles
        # (infra/db_components.py) get theirs in the same transaction, or the live member would be
        # refused the tables it just moved onto
        db_components.apply_grants(conn)
    log.info("generations.swapped", read_model=name, namespace=namespace)
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(retired)))
    with conn.transaction():
        conn.execute("DELETE FROM processed_events WHERE consumer = %s", (old,))  # its -1 offsets stay: a fence


def discard(conn: psycopg.Connection, namespace: str, shadow_schema: str) -> None:
    """A rebuild that did not finish leaves nothing behind."""
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shadow_schema)))
        conn.execute("DELETE FROM consumer_offsets WHERE consumer = %s", (namespace,))
        conn.execute("DELETE FROM processed_events WHERE consumer = %s", (namespace,))
