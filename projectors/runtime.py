"""The one stream-processing runtime every processor runs on: poll a batch, fold it, commit once.

A processor declares its name (offsets and state), its consumer group, its topics and
`process(step)`: a function of the batch's fresh events that writes through `step.conn` and
emits through `step.emit` (projectors/checkpoint.py). The runtime owns everything else, in the
shape of a checkpoint (Quix Streams' checkpoint, Kafka Streams' commit interval):

    poll up to `max_batch` messages → decode → [one PostgreSQL transaction: compare-and-set the
    stored offsets (fencing) → drop repeated event ids → process → send every derived event, one
    flush, check every acknowledgement] → commit → Kafka offsets (for lag only)

A batch is whatever one poll returns: small when the system is quiet (low latency), up to
`max_batch` under load (few commits); a member never waits to fill a batch.

Failures, told apart:
- transient (PostgreSQL or Kafka away, or a processor's own `transient` errors such as a
  department backend that is down): the transaction rolls back, the partitions rewind to the
  batch and pause, and the batch is tried again after a growing backoff, in the process, while
  the consumer stays in its group. Nothing exits, nothing is skipped.
- fenced (the stored offsets moved: another member owns the partition now): roll back, drop
  cached state, re-read the offsets from PostgreSQL.
- anything else is the batch's fault: it is re-run one event per checkpoint, an event that
  fails alone is dead-lettered with its origin and reason, and the partition goes on.

`Worker` runs one processor (own consumer, own connection); `Host` runs several in one OS
process, a thread each: each keeps its own group, so each scales alone. Each processor's clients
authenticate as its own Kafka principal (infra/acls.py `principal_for`); processors of one
principal in a host share a producer.
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

import psycopg
import structlog
from kafka import KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram

from events import bus, codec, kafka_auth
from events.codec import DecodeError
from infra import acls, metrics

from . import authority
from . import checkpoint as cp
from . import crash_points
from .assignment import Assignment, Rebalance
from .checkpoint import Fenced, Item, Step

log = structlog.get_logger(__name__)

CHECKPOINTS = PromCounter("onething_checkpoints_total", "Checkpoints by outcome (committed, retried, fenced, isolated)",
                          ["group", "outcome"])
CHECKPOINT_SECONDS = Histogram("onething_checkpoint_seconds", "Time of one checkpoint, poll to commit", ["group"],
                               buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
CHECKPOINT_EVENTS = Histogram("onething_checkpoint_events", "Messages in one checkpoint", ["group"],
                              buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000))

TRANSIENT: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError, KafkaError)
LAG_EVERY_S = 5.0
# How long the broker may hold a fetch when there is nothing to return. It answers as soon as a
# message arrives, so a long wait costs no latency; a short one rebuilds the fetch request for
# every partition several times a second while the system is idle.
FETCH_MAX_WAIT_MS = int(os.environ.get("ONETHING_FETCH_MAX_WAIT_MS") or 10_000)
# How long one poll waits for messages before the loop looks at its timers (ticks, lag, stop).
POLL_MS = int(os.environ.get("ONETHING_POLL_MS") or 5000)
KAFKA_COMMIT_EVERY_S = 1.0
# A transient failure's retries double up to 10 s: once PostgreSQL or a broker is back, work
# resumes within 10 s (with 30 s, an outage of a minute could hold every case 30 s longer); a try
# every 10 s from each of ~19 processes costs the recovering server nothing.
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 10.0


@runtime_checkable
class Processor(Protocol):
    name: str              # its stored offsets and processed ids (consumer_offsets.consumer)
    group: str             # its Kafka consumer group
    topics: Sequence[str]

    def process(self, step: Step) -> None: ...


class BaseProcessor:
    """Defaults for the optional parts of a processor; subclass and override what you need."""
    name: str
    group: str
    topics: Sequence[str]
    dedupe: bool = True            # drop events whose id this processor already processed
    start: str = "earliest"        # a partition without stored offsets: earliest | latest | committed (Kafka's)
    max_batch: int = 500
    tick_s: float | None = None    # run `tick` this often (timers, gauges)
    backoff_max_s: float = BACKOFF_MAX_S   # longest wait between tries after a transient failure
    transient: tuple[type[BaseException], ...] = ()
    consumer_options: dict = {}
    event_types: frozenset[str] | None = None   # the types it handles: others are skipped by their header, undecoded

    def wants(self, event) -> bool:
        return True

    def process(self, step: Step) -> None:
        raise NotImplementedError

    def tick(self, step: Step) -> None:
        pass

    def assigned(self, partitions: set[TopicPartition]) -> None:
        pass

    def revoked(self, partitions: set[TopicPartition]) -> None:
        pass

    def explain(self, exc: BaseException) -> str:
        """The dead letter's reason for an event that fails alone. Messages of exceptions may
        quote personal data, so only types (and SQLSTATEs) by default."""
        return explain(exc, self.name)


def explain(exc: BaseException, where: str) -> str:
    if isinstance(exc, psycopg.Error) and getattr(exc, "sqlstate", None):
        return f"{type(exc).__name__} ({exc.sqlstate}) in {where}"
    if getattr(exc, "safe_message", False):  # written not to quote content (InvalidTask, CaseError …)
        return f"{type(exc).__name__}: {exc}"[:500]
    return f"{type(exc).__name__} in {where}"


def _attr(p, name: str, default):
    return getattr(p, name, default)


class Worker(Assignment):
    """Runs one processor: its consumer, its PostgreSQL connection, its checkpoints."""

    def __init__(self, processor: Processor, bootstrap: str, database_url: str, *,
                 producer: KafkaProducer | None = None, poll_ms: int | None = None):
        self.p = processor
        self.name, self.group = processor.name, processor.group
        # a processor may log in as a role of its own (a department adapter: infra/db_roles.py)
        self.database_url = getattr(processor, "database_url", None) or database_url
        self.poll_ms = poll_ms or POLL_MS
        self.max_batch = _attr(processor, "max_batch", 500)
        self.transient = TRANSIENT + tuple(_attr(processor, "transient", ()))
        self.backoff_max = float(_attr(processor, "backoff_max_s", BACKOFF_MAX_S))
        self.principal = acls.principal_for(processor)
        self._own_producer = producer is None
        self.producer = producer or bus.make_producer(bootstrap, self.principal, client_id=f"onething-{self.group}")
        options = {"max_poll_records": self.max_batch, "max_poll_interval_ms": 300_000,
                   "fetch_max_wait_ms": FETCH_MAX_WAIT_MS, **dict(_attr(processor, "consumer_options", {}) or {})}
        if os.environ.get("ONETHING_INSTANCE_ID"):
            # static membership (KIP-345): a restarted member with the same id takes its partitions
            # back at once instead of the group waiting out the dead member's session
            options.setdefault("group_instance_id", os.environ["ONETHING_INSTANCE_ID"])
        self._bootstrap, self._consumer_options = bootstrap, options
        self.consumer = bus.make_consumer(bootstrap, self.group, principal=self.principal, **options)
        self._wait_for_topics(list(processor.topics))
        self.consumer.subscribe(list(processor.topics), listener=Rebalance(self))
        self.conn: psycopg.Connection | None = None
        self.expected: dict[TopicPartition, int | None] = {}   # stored next offset, as this member knows it
        self.to_seek: set[TopicPartition] = set()
        self.odd_since: dict[TopicPartition, float] = {}
        self.retry_at = 0.0
        self.backoff = 0.0
        self.tick_s = _attr(processor, "tick_s", None)
        types = _attr(processor, "event_types", None)
        self.event_types = frozenset(types) if types is not None else None
        self.next_tick = 0.0
        self.next_lag = 0.0
        self.next_kafka_commit = 0.0
        self.kafka_offsets: dict[TopicPartition, int] = {}
        self.stats = Counter()
        self.owner = self._owner() if any(authority.department_of_topic(t) for t in processor.topics) else None
        metrics.declare_consumer(self.group, processor.topics)

    # -- setup -------------------------------------------------------------------------------
    def _wait_for_topics(self, topics: list[str], timeout_s: float = 30.0) -> None:
        """A group leader without the topics' metadata assigns nothing: know them before subscribing."""
        deadline = time.monotonic() + timeout_s
        while True:
            known = self.consumer.topics()
            missing = [t for t in topics if t not in known]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {missing} do not exist; run `onething topics apply`")
            time.sleep(0.5)

    def _db(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            if self.conn is not None:
                try:
                    self.conn.close()
                except Exception:
                    pass
            self.conn = None
            path = _attr(self.p, "search_path", None)
            self.conn = psycopg.connect(self.database_url, application_name=self.group[:60],
                                        **({"options": f"-c search_path={path}"} if path else {}))
        return self.conn

    def close(self) -> None:
        self._commit_kafka(force=True)
        try:
            self.consumer.close()
        finally:
            if self._own_producer:
                self.producer.close()
            if self.conn is not None:
                self.conn.close()

    def ready(self, timeout_s: float = 60.0) -> None:
        """Poll until this member holds partitions and has sought them to their stored offsets
        (so nothing produced from now on is missed by a processor that starts at the end)."""
        deadline = time.monotonic() + timeout_s
        while not self.consumer.assignment() or self.to_seek:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.group}: no partitions assigned within {timeout_s} s")
            self.poll_once(200)
        for tp in self.consumer.assignment():
            self.consumer.position(tp)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        log.info("runtime.start", processor=self.name, group=self.group, topics=len(self.p.topics))
        while not stop():
            try:
                self.poll_once()
            except Exception as exc:  # outside a checkpoint (a seek, a poll): wait and go on
                self._wait_after(exc, "loop")
        log.info("runtime.stop", processor=self.name, **dict(self.stats))

    def poll_once(self, timeout_ms: int | None = None) -> Counter:
        """One round: seek new partitions, poll, checkpoint what came, tick and report lag when due.
        Returns the counters of this round (applied, duplicates, dead_lettered …)."""
        before = Counter(self.stats)
        now = time.monotonic()
        if self.retry_at and now >= self.retry_at:
            self.retry_at = 0.0
            self.consumer.resume(*(self.consumer.assignment() - self.to_seek))
        if self.to_seek:
            self._seek_from_store()
        timeout = self.poll_ms if timeout_ms is None else timeout_ms
        if self.tick_s and not self.retry_at:
            timeout = max(0, min(timeout, int((self.next_tick - now) * 1000)))
        records = self.consumer.poll(timeout_ms=timeout, max_records=self.max_batch)
        self.reconcile()
        sought = self._seek_from_store() if self.to_seek else set()
        if records:  # a partition not sought before this poll was read from the reset position
            records = {tp: ms for tp, ms in records.items() if tp in self.expected and tp not in sought}
        if records:
            self._checkpoint(records)
        now = time.monotonic()
        if self.tick_s and now >= self.next_tick and not self.retry_at:
            self.next_tick = now + self.tick_s
            self._tick()
        if now >= self.next_lag:
            self.next_lag = now + LAG_EVERY_S
            self._report_lag()
        self._commit_kafka()
        return self.stats - before

    # -- a checkpoint ------------------------------------------------------------------------
    def _items(self, records: dict) -> list[Item]:
        items: list[Item] = []
        types = self.event_types
        for tp, messages in records.items():
            floor = self.expected.get(tp)
            for m in messages:
                if floor is not None and m.offset < floor:
                    continue  # already applied (a fetch that raced a seek)
                if types is not None and m.headers:
                    declared = next((v for k, v in m.headers if k == "event_type"), None)
                    if declared is not None and declared.decode(errors="replace") not in types:
                        items.append(Item(m.topic, m.partition, m.offset, m.key, m.value, skipped=True))
                        continue
                items.append(self._decoded(m))
        return items

    def _owner(self) -> authority.Owner:
        """Who owns each case service, for the authority check of decision topics: the
        processor's own catalog if it has one (a test's or an operator's), else the package's."""
        catalog = getattr(self.p, "catalog", None)
        if catalog is None:
            from catalog.loader import load_catalog

            catalog = load_catalog()
        return authority.catalog_owner(catalog)

    def _decoded(self, m) -> Item:
        """A fetched message as an item: its event, or why it is refused (undecodable; said on
        a department's topic by someone who may not say it — see projectors/authority.py)."""
        try:
            event = codec.decode(m.value)
        except DecodeError as exc:
            return Item(m.topic, m.partition, m.offset, m.key, m.value, None, f"DecodeError: {exc}")
        problem = authority.refusal(m.topic, event, self.owner) if self.owner is not None else None
        if problem:
            log.warning("runtime.not_authorised", group=self.group, topic=m.topic, event_type=event.type,
                        actor_role=event.envelope.actor.role)
        return Item(m.topic, m.partition, m.offset, m.key, m.value, event, problem)

    def _checkpoint(self, records: dict) -> None:
        items = self._items(records)
        if not items:
            return
        try:
            self._commit(items)
        except Fenced as exc:
            self._fenced(exc)
        except self.transient as exc:
            self._rewind(items)
            self._wait_after(exc, "checkpoint")
        except Exception as exc:
            log.warning("runtime.batch_failed", group=self.group, error=type(exc).__name__, events=len(items))
            CHECKPOINTS.labels(self.group, "isolated").inc()
            self._isolate(items)

    def _commit(self, items: list[Item], poison: dict[int, str] | None = None) -> None:
        """The commit sequence for `items` (see projectors/checkpoint.py). `poison` maps an item's
        index to the reason it is dead-lettered instead of processed."""
        started = time.perf_counter()
        poison = poison or {}
        next_offsets: dict[TopicPartition, int] = {}
        for it in items:
            next_offsets[it.tp] = it.offset + 1
        conn = self._db()
        step = Step(conn, assignment=frozenset(self.consumer.assignment()))
        duplicates = 0
        with conn.transaction():
            cp.advance(conn, self.name, self.expected, next_offsets)
            usable: list[Item] = []
            for i, it in enumerate(items):
                reason = it.problem or poison.get(i)
                if it.skipped:
                    continue
                if reason:
                    step.dead_letter(self.group, it, reason)
                elif self.p.wants(it.event) if hasattr(self.p, "wants") else True:
                    usable.append(it)
            if _attr(self.p, "dedupe", True) and usable:
                usable, duplicates = cp.fresh_items(conn, self.name, usable)
            step.items = usable
            if usable:
                self.p.process(step)
            cp.publish(self.producer, step.out)
            crash_points.reached(self.group, "after_flush")
        # durable from here on
        crash_points.reached(self.group, "after_commit")
        self.expected.update(next_offsets)
        self.kafka_offsets.update(next_offsets)
        self.backoff = 0.0
        for fn in step.after_commit:
            fn()
        self._observe(items, step, duplicates, time.perf_counter() - started)

    def _observe(self, items: list[Item], step: Step, duplicates: int, seconds: float) -> None:
        CHECKPOINTS.labels(self.group, "committed").inc()
        CHECKPOINT_SECONDS.labels(self.group).observe(seconds)
        CHECKPOINT_EVENTS.labels(self.group).observe(len(items))
        counts = Counter((it.topic, it.event.type) for it in step.items)
        for (topic, etype), n in counts.items():
            metrics.EVENTS_CONSUMED.labels(group=self.group, topic=topic, event_type=etype).inc(n)
        for etype in {et for _t, et in counts}:
            metrics.PROCESSING_SECONDS.labels(group=self.group, event_type=etype).observe(seconds)
        if duplicates:
            metrics.DUPLICATES_DROPPED.labels(group=self.group).inc(duplicates)
        dead = [e for t, e in step.out if e.type == "DeadLettered"]
        for e in dead:
            log.warning("runtime.dead_lettered", group=self.group, origin=e.key, reason=e.payload["reason"])
        self.stats.update(applied=len(step.items), duplicates=duplicates, dead_lettered=len(dead),
                          produced=len(step.out), checkpoints=1)

    def _isolate(self, items: list[Item]) -> None:
        """Re-run a failed batch one event per checkpoint: what fails alone is dead-lettered."""
        for n, it in enumerate(items):
            try:
                try:
                    self._commit([it])
                except (Fenced, *self.transient):
                    raise
                except Exception as exc:
                    reason = self.p.explain(exc) if hasattr(self.p, "explain") else explain(exc, self.name)
                    self._commit([it], poison={0: reason})
            except Fenced as exc:
                self._fenced(exc)
                return
            except self.transient as exc:
                self._rewind(items[n:])
                self._wait_after(exc, "isolation")
                return

    def _rewind(self, items: Iterable[Item]) -> None:
        first: dict[TopicPartition, int] = {}
        for it in items:
            first.setdefault(it.tp, it.offset)
        for tp, offset in first.items():
            if tp in self.consumer.assignment():
                self.consumer.seek(tp, offset)

    def _fenced(self, exc: Fenced) -> None:
        log.warning("runtime.fenced", group=self.group, reason=str(exc))
        CHECKPOINTS.labels(self.group, "fenced").inc()
        assignment = set(self.consumer.assignment())
        self._revoked(assignment)
        self._assigned(assignment)

    def _wait_after(self, exc: BaseException, where: str) -> None:
        """A transient failure: pause every partition and try again after a growing backoff."""
        self.backoff = min(self.backoff_max, max(min(BACKOFF_MIN_S, self.backoff_max), self.backoff * 2))
        self.retry_at = time.monotonic() + self.backoff
        CHECKPOINTS.labels(self.group, "retried").inc()
        self.stats.update(retries=1)
        log.warning("runtime.retry", group=self.group, where=where, error=type(exc).__name__,
                    retry_in_s=round(self.backoff, 1))
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        try:
            self.consumer.pause(*self.consumer.assignment())
        except Exception:
            pass

    # -- timers, lag, Kafka offsets ------------------------------------------------------------
    def behind(self) -> dict[TopicPartition, int | None]:
        """Messages left per assigned partition, from the last fetch (no round trip to the broker)."""
        out: dict[TopicPartition, int | None] = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            pos = self.expected.get(tp)
            out[tp] = None if high is None or pos is None or tp in self.to_seek else max(0, high - pos)
        return out

    def _tick(self) -> None:
        if not hasattr(self.p, "tick"):
            return
        try:
            conn = self._db()
            counts = {t: len(self.consumer.partitions_for_topic(t) or ()) for t in self.p.topics}
            step = Step(conn, assignment=frozenset(self.consumer.assignment() - self.to_seek), behind=self.behind(),
                        partition_counts=counts)
            with conn.transaction():
                self.p.tick(step)
                cp.publish(self.producer, step.out)
            for fn in step.after_commit:
                fn()
        except Exception as exc:  # a tick is tried again at the next one
            log.warning("runtime.tick_failed", group=self.group, error=type(exc).__name__)
            if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and self.conn is not None:
                self.conn.close()

    def _report_lag(self) -> None:
        behind = self.behind()
        metrics.forget_revoked(self.group, {(tp.topic, str(tp.partition)) for tp in behind})
        for tp, lag in behind.items():
            if lag is None and tp not in self.to_seek and self.expected.get(tp) is None:
                continue
            if lag is not None:
                metrics.CONSUMER_LAG.labels(group=self.group, topic=tp.topic, partition=str(tp.partition)).set(lag)

    def _commit_kafka(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.kafka_offsets or (not force and now < self.next_kafka_commit):
            return
        self.next_kafka_commit = now + KAFKA_COMMIT_EVERY_S
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in self.kafka_offsets.items()
                   if tp in self.consumer.assignment()}
        self.kafka_offsets.clear()
        if offsets:
            try:
                self.consumer.commit(offsets) if force else self.consumer.commit_async(offsets)
            except Exception:  # for lag only; the next one will do
                pass


class Host:
    """Several processors in one OS process, a thread each, a producer per Kafka principal (a
    principal may write only its processor's topics). A worker whose loop fails outside a
    checkpoint waits and goes on; it never takes the others down."""

    def __init__(self, processors: Sequence[Processor], bootstrap: str, database_url: str, *, name: str = "host"):
        self.name = name
        self.processors = list(processors)
        self.bootstrap, self.database_url = bootstrap, database_url
        self.producers: dict[str, KafkaProducer] = {}
        self._producers_lock = threading.Lock()
        self.workers: list[Worker] = []

    def producer_for(self, p: Processor) -> KafkaProducer:
        principal = acls.principal_for(p)
        key = kafka_auth.principal_name(principal)
        with self._producers_lock:
            if key not in self.producers:
                self.producers[key] = bus.make_producer(self.bootstrap, principal,
                                                        client_id=f"onething-{self.name}-{key}")
            return self.producers[key]

    def run(self, stop: Callable[[], bool]) -> None:
        stopping = threading.Event()

        def stopped() -> bool:
            if not stopping.is_set() and stop():
                stopping.set()
            return stopping.is_set()

        def one(p: Processor) -> None:
            structlog.contextvars.bind_contextvars(processor=p.name)
            worker = None
            while not stopped():
                try:
                    worker = Worker(p, self.bootstrap, self.database_url, producer=self.producer_for(p))
                    self.workers.append(worker)
                    worker.run(stopped)
                except Exception as exc:
                    log.warning("runtime.worker_failed", processor=p.name, error=type(exc).__name__)
                    stopping.wait(2.0)
                finally:
                    if worker is not None:
                        try:
                            worker.close()
                        except Exception:
                            pass
                        worker = None

        threads = [threading.Thread(target=one, args=(p,), name=f"worker-{p.name}", daemon=True)
                   for p in self.processors]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.5)
                stopped()
        finally:
            stopping.set()
            for t in threads:
                t.join(timeout=30)
            for producer in self.producers.values():
                producer.close(timeout=10)
