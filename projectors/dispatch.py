"""Dispatch: the faust-streaming processor that turns applications and decisions into tasks.

One agent reads `applications` and every `decisions.<department>` (co-partitioned by case
id), folds each event into its case (`case_state.step`, pure) and sends the derived events:
tasks to `tasks.<department>`, completions to `cases`.

Why it cannot lose a task, although faust can commit offsets past in-flight messages
(faust-streaming #606, an out-of-order ack at the head of a partition):
- concurrency 1, no `take()`, no `group_by`, and `noack()`: events are acked by hand, in
  offset order, only after their derived events were acknowledged by the broker (acks=all)
  and the case's new state was committed to PostgreSQL;
- the fold state lives in PostgreSQL, not in a faust Table (whose changelog writes go
  through a buffer that can lag or lead the committed offset);
- any failure ends the process at once (`os._exit`), like a kill -9: the supervisor restarts
  it and it re-reads from the last commit. Re-processing is harmless: the case state records
  every folded event id, and derived events have ids derived from their cause, so consumers
  drop the repeats.
- a per-case advisory lock serialises workers that share a case across a rebalance.
"""
from __future__ import annotations

import json
import os
import time

import faust
import psycopg
import structlog

from catalog.loader import load_catalog
from events import codec
from events.bus import headers_for
from events.codec import DecodeError
from events.deadletter import DEADLETTER, dead_letter_event
from infra import metrics
from infra.settings import Settings
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic

from . import case_state
from .case_state import CaseError

log = structlog.get_logger(__name__)
GROUP = "dispatch"


def faust_broker(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(","))


def make_app(settings: Settings, departments: list[str] | None = None) -> faust.App:
    catalog = load_catalog()
    departments = sorted(departments or catalog.departments)
    datadir = settings.home / "faust" / GROUP
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        GROUP,
        broker=faust_broker(settings.bootstrap_servers),
        store="memory://",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=False,
        stream_wait_empty=True,
        broker_commit_interval=1.0,
        broker_commit_every=100,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        broker_rebalance_timeout=10.0,
        key_serializer="raw",
        value_serializer="raw",
        datadir=str(datadir),
    )
    source = app.topic(APPLICATIONS, *[decisions_topic(d) for d in departments],
                       key_type=bytes, value_type=bytes)
    sinks = {d: app.topic(tasks_topic(d), key_type=bytes, value_type=bytes) for d in departments}
    sinks[CASES] = app.topic(CASES, key_type=bytes, value_type=bytes)
    sinks[DEADLETTER] = app.topic(DEADLETTER, key_type=bytes, value_type=bytes)
    state: dict = {}

    async def send_all(items) -> None:
        futures = []
        for sink, event in items:
            futures.append(await sinks[sink].send(key=event.key.encode(), value=codec.encode(event),
                                                  headers=headers_for(event)))
            metrics.EVENTS_PRODUCED.labels(topic=sinks[sink].get_topic_name(), event_type=event.type).inc()
        for fut in futures:
            await fut  # the broker's acknowledgement, or an exception

    async def handle(ev) -> None:
        msg = ev.message
        started = time.perf_counter()
        try:
            event = codec.decode(msg.value)
        except DecodeError as exc:
            await send_all([(DEADLETTER, dead_letter_event(GROUP, msg.topic, msg.partition, msg.offset,
                                                           msg.key, msg.value, f"DecodeError: {exc}"))])
            return
        if case_state.is_register_sync(event):
            return  # a cascade acknowledgement on a shared decisions topic: not a case event
        conn = state["conn"]
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (event.key,))
            row = await (await conn.execute("SELECT state FROM dispatch_cases WHERE case_id = %s",
                                            (event.key,))).fetchone()
            before = case_state.from_json(row[0]) if row else None
            try:
                after, derived = case_state.step(before, event, catalog)
            except (CaseError, KeyError) as exc:
                await send_all([(DEADLETTER, dead_letter_event(GROUP, msg.topic, msg.partition, msg.offset,
                                                               msg.key, msg.value, f"{type(exc).__name__}: {exc}"))])
                return
            if after is before:
                metrics.DUPLICATES_DROPPED.labels(group=GROUP).inc()
                return
            await send_all([(_sink_for(d), d) for d in derived])
            await conn.execute(
                "INSERT INTO dispatch_cases (case_id, state) VALUES (%s, %s) ON CONFLICT (case_id) DO UPDATE "
                "SET state = EXCLUDED.state, updated_at = now()",
                (event.key, json.dumps(case_state.to_json(after), default=str)))
        metrics.EVENTS_CONSUMED.labels(group=GROUP, topic=msg.topic, event_type=event.type).inc()
        metrics.PROCESSING_SECONDS.labels(group=GROUP, event_type=event.type).observe(time.perf_counter() - started)
        log.info("dispatch.folded", correlation_id=event.envelope.correlation_id, event_type=event.type,
                 case_status=after.status, emitted=len(derived))

    @app.agent(source, concurrency=1)
    async def dispatch(stream):
        async for ev in stream.noack().events():
            try:
                if "conn" not in state:
                    state["conn"] = await psycopg.AsyncConnection.connect(settings.database_url)
                await handle(ev)
            except Exception:  # any failure: die like kill -9, never ack past it (cancellation propagates)
                log.exception("dispatch.fatal")
                os._exit(70)
            ev.ack()

    return app


def _sink_for(event) -> str:
    if event.type in ("TaskDispatched", "TaskCancelled", "RectificationOpened"):
        return event.payload["department"]
    return CASES


def run(settings: Settings) -> None:
    """Run the worker in the foreground (`onething run dispatch`)."""
    app = make_app(settings)
    metrics.watch_group_lag(settings.bootstrap_servers, GROUP)  # faust hides its consumer: lag from the broker
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    from infra import log as _log

    _log.configure("dispatch")
    run(Settings.from_env())
