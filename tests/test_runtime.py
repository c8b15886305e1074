"""The runtime's guarantees with the real broker and database: a member that lost its partitions
cannot overwrite a newer member's work (fencing by compare-and-set of the stored offsets), a
database that fails is retried without loss, and offsets never go backwards.

The processor here counts how often each event was applied, without any idempotence of its
own (dedupe off): a double application shows as a count of 2.
"""
from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from events import bus
from events.envelope import new_event
from projectors import checkpoint as cp
from projectors.runtime import CHECKPOINTS, BaseProcessor, Worker

from .support.topics import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


class Tally(BaseProcessor):
    """Applies each event by adding 1 to its row: not idempotent on purpose."""
    dedupe = False

    def __init__(self, name: str, topic: str, table: str, *, stall_first_s: float = 0.0, fail_first: int = 0,
                 consumer_options: dict | None = None):
        self.name = self.group = name
        self.topics = (topic,)
        self.table = table
        self.stall_first_s, self.fail_first = stall_first_s, fail_first
        self.entered = threading.Event()
        self.consumer_options = consumer_options or {}
        self.backoff_max_s = 1.0
        self.calls = 0

    def process(self, step) -> None:
        self.calls += 1
        self.entered.set()
        if self.calls == 1 and self.stall_first_s:
            time.sleep(self.stall_first_s)   # a member that hangs mid-batch while the group moves on
        if self.calls <= self.fail_first:
            raise psycopg.OperationalError("the database went away (simulated)")
        step.conn.cursor().executemany(
            f"INSERT INTO {self.table} (event_id, n) VALUES (%s, 1) "
            f"ON CONFLICT (event_id) DO UPDATE SET n = {self.table}.n + 1", [(e.id,) for e in step.events])


@pytest.fixture
def tally_table(database_url):
    table = f"tally_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (event_id uuid PRIMARY KEY, n integer NOT NULL)")
    yield table
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {table}")


def _produce(bootstrap: str, topic: str, n: int, prefix: str) -> list[str]:
    events = [new_event("ApplicationWithdrawn", f"{prefix}-{i % 37}", {"reason": None}, region_code="440203")
              for i in range(n)]
    producer = bus.make_producer(bootstrap)
    try:
        bus.publish_all(producer, [(topic, e) for e in events])
    finally:
        producer.close()
    return [e.id for e in events]


def _counts(database_url: str, table: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        return {str(k): n for k, n in conn.execute(f"SELECT event_id, n FROM {table}").fetchall()}


def _loop(worker: Worker, stop: threading.Event, errors: list) -> None:
    try:
        while not stop.is_set():
            worker.poll_once(200)
    except BaseException as exc:  # surfaced by the test
        errors.append(exc)


@pytest.mark.slow  # a fault scenario: the suite runs it in its own lane (infra/onething.sh)
def test_a_member_that_hung_mid_batch_and_lost_its_partitions_applies_nothing_twice(
        bootstrap, database_url, fresh_topic, tally_table):
    """Member A stalls inside its first batch past max.poll.interval: the group gives its
    partitions to B, which re-reads from the stored offsets. Whichever of the two commits second
    finds the offsets moved and is fenced: every event ends applied exactly once."""
    topic = fresh_topic(partitions=2)
    name = f"rt-fence-{uuid.uuid4().hex[:6]}"
    ids = _produce(bootstrap, topic, 300, name)
    fast_group = {"max_poll_interval_ms": 3000, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
    a = Worker(Tally(name, topic, tally_table, stall_first_s=9.0, consumer_options=fast_group), bootstrap,
               database_url, poll_ms=200)
    b_proc = Tally(name, topic, tally_table, consumer_options=fast_group)
    stop, errors = threading.Event(), []
    fenced_before = sum(CHECKPOINTS.labels(name, "fenced")._value.get() for _ in [0])
    ta = threading.Thread(target=_loop, args=(a, stop, errors), daemon=True)
    ta.start()
    try:
        assert a.p.entered.wait(30), "member A never got a batch"
        b = Worker(b_proc, bootstrap, database_url, poll_ms=200)
        tb = threading.Thread(target=_loop, args=(b, stop, errors), daemon=True)
        tb.start()
        assert wait_for(lambda: len(_counts(database_url, tally_table)) == len(ids), 60, 0.5), "not every event applied"
        time.sleep(10)  # A wakes up, tries to commit its stale batch, is fenced (or fences B), goes on
        assert not errors, errors
        counts = _counts(database_url, tally_table)
        assert set(counts) == set(ids)
        assert set(counts.values()) == {1}, f"applied twice: {sum(1 for n in counts.values() if n > 1)} events"
        assert CHECKPOINTS.labels(name, "fenced")._value.get() > fenced_before, "nobody was fenced"
    finally:
        stop.set()
        ta.join(30)
        a.close()
        if "tb" in locals():
            tb.join(30)
            b.close()


def test_stored_offsets_moved_by_another_member_fence_the_next_checkpoint(
        bootstrap, database_url, fresh_topic, tally_table):
    """Compare-and-set: after another member stored offset 150 of a partition, this member's next
    checkpoint finds them moved, rolls back, re-reads them and never applies what lies below."""
    topic = fresh_topic(partitions=1)
    name = f"rt-cas-{uuid.uuid4().hex[:6]}"
    first = _produce(bootstrap, topic, 100, name)
    worker = Worker(Tally(name, topic, tally_table), bootstrap, database_url, poll_ms=200)
    try:
        assert wait_for(lambda: worker.poll_once(200) is not None and len(_counts(database_url, tally_table)) == 100,
                        30, 0)
        more = _produce(bootstrap, topic, 100, name)    # offsets 100..199
        from kafka import TopicPartition
        with psycopg.connect(database_url) as conn:     # "another member" applied 100..149
            conn.execute("UPDATE consumer_offsets SET next_offset = 150 WHERE consumer = %s", (name,))
        assert wait_for(lambda: worker.poll_once(200) is not None and len(_counts(database_url, tally_table)) == 150,
                        30, 0)
        counts = _counts(database_url, tally_table)
        assert set(counts) == set(first) | set(more[50:]), "events below the moved offset were applied here"
        assert set(counts.values()) == {1}
        with psycopg.connect(database_url) as conn:
            assert cp.stored_offsets(conn, name) == {TopicPartition(topic, 0): 200}
    finally:
        worker.close()


def test_a_database_failure_is_retried_in_the_process_and_loses_nothing(
        bootstrap, database_url, fresh_topic, tally_table):
    """A transient failure (here: the first three checkpoints cannot reach PostgreSQL) pauses the
    partitions and retries with backoff; nothing is dead-lettered, everything is applied once."""
    topic = fresh_topic(partitions=2)
    name = f"rt-retry-{uuid.uuid4().hex[:6]}"
    _produce(bootstrap, topic, 120, name)
    worker = Worker(Tally(name, topic, tally_table, fail_first=3), bootstrap, database_url, poll_ms=200)
    try:
        assert wait_for(lambda: worker.poll_once(200) is not None and len(_counts(database_url, tally_table)) == 120,
                        60, 0)
        assert worker.stats["retries"] == 3 and worker.stats["dead_lettered"] == 0
        assert set(_counts(database_url, tally_table).values()) == {1}
    finally:
        worker.close()


def test_a_stored_offset_past_the_log_end_reads_the_new_log_from_its_start(
        bootstrap, database_url, fresh_topic, tally_table):
    """The broker's data wiped, or the topic created again, while the database kept its offsets:
    the stored offset (500) lies past the new log's end (40). Seeking there would skip the first
    500 events the new log gets; the processor reads it from its start instead, and says so."""
    from kafka import TopicPartition
    import structlog

    topic = fresh_topic(partitions=1)
    name = f"rt-gone-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(database_url) as conn:
        cp.store_first(conn, name, {TopicPartition(topic, 0): 500})
    ids = _produce(bootstrap, topic, 40, name)
    with structlog.testing.capture_logs() as logs:
        worker = Worker(Tally(name, topic, tally_table), bootstrap, database_url, poll_ms=200)
        try:
            assert wait_for(lambda: worker.poll_once(200) is not None and len(_counts(database_url, tally_table)) == 40,
                            30, 0), "events of the new log were skipped"
            assert set(_counts(database_url, tally_table)) == set(ids)
            with psycopg.connect(database_url) as conn:
                assert cp.stored_offsets(conn, name) == {TopicPartition(topic, 0): 40}
        finally:
            worker.close()
    told = [e for e in logs if e["event"] == "runtime.offset_beyond_log_end"]
    assert told and told[0]["partitions"] == [f"{topic}/0:500>0"] and told[0]["log_level"] == "error"


def test_a_partition_the_rebalance_listener_never_reported_is_still_read_from_its_stored_offset(
        bootstrap, database_url, fresh_topic, tally_table):
    """kafka-python 3 sets an assignment and calls the listener afterwards, on its IO thread; a
    member was seen holding 432 partitions whose call never came, reading from the reset position.
    With the listener silenced the worker must notice, replace the consumer, and read from the
    stored offset (30 of 50 applied before: only the last 20 are new to it)."""
    from kafka import ConsumerRebalanceListener, TopicPartition
    import structlog

    class Deaf(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            pass

        def on_partitions_assigned(self, assigned):
            pass

    topic = fresh_topic(partitions=1)
    name = f"rt-deaf-{uuid.uuid4().hex[:6]}"
    ids = _produce(bootstrap, topic, 50, name)
    with psycopg.connect(database_url) as conn:
        cp.store_first(conn, name, {TopicPartition(topic, 0): 30})
    with structlog.testing.capture_logs() as logs:
        worker = Worker(Tally(name, topic, tally_table), bootstrap, database_url, poll_ms=200)
        worker.consumer.subscribe([topic], listener=Deaf())
        try:
            assert wait_for(lambda: worker.poll_once(200) is not None and len(_counts(database_url, tally_table)) >= 20,
                            30, 0), "the partition was never read"
            time.sleep(0.5)
            worker.poll_once(200)
            assert set(_counts(database_url, tally_table)) == set(ids[30:]), "read from the reset position, not the stored offset"
            with psycopg.connect(database_url) as conn:
                assert cp.stored_offsets(conn, name) == {TopicPartition(topic, 0): 50}
        finally:
            worker.close()
    assert any(e["event"] == "runtime.assignment_unreported" for e in logs)
    assert any(e["event"] == "runtime.consumer_renewed" for e in logs)


def test_an_offset_never_goes_backwards(database_url):
    from kafka import TopicPartition

    tp = TopicPartition("t", 0)
    with psycopg.connect(database_url) as conn, pytest.raises(ValueError, match="go back"):
        cp.advance(conn, "rt-never-back", {tp: 10}, {tp: 9})
