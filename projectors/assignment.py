"""Which partitions a worker holds, and where it reads each from: the rebalance side of the runtime.

A new partition is paused until its stored offset (PostgreSQL, the processor's own) is read and
sought; only then are its records processed. kafka-python 3 runs its IO on a thread of its own and
calls the rebalance listener there: it sets the new assignment first and calls the listener after,
so a poll on the worker's thread can return in between, and the listener can run while the worker
is seeking an earlier set. Seen on 2026-12-02 under load: a member holding 432 partitions whose
listener call never came (it read from the reset position and applied nothing in 180 s), and
rebuild members whose new partitions stayed paused for minutes (the seek of an earlier set cleared
them from the pending set after the listener had paused them). The worker therefore does not trust
the listener alone: after every poll it compares what the consumer holds with what it has sought
(`reconcile`) and drops the records of a partition it has not sought yet — they are fetched again
from the stored offset. A lost partition the listener did not revoke is forgotten; a partition
held but never reported for `UNREPORTED_GRACE_S` means a join kafka-python did not finish — taking
such partitions up on the same consumer fetched nothing (2026-12-02) — so the consumer is replaced
by a new one that joins again (`runtime.consumer_renewed`). Acting at once raced the listener's
usual, slightly late call (a poison-test member then applied nothing for 90 s), hence the wait.
"""
from __future__ import annotations

import threading
import time

import structlog
from kafka import ConsumerRebalanceListener, TopicPartition

from . import checkpoint as cp
from .checkpoint import Fenced

log = structlog.get_logger(__name__)

#: how long an assigned partition may go unreported by the listener (or a lost one unrevoked)
#: before the worker acts on its own
UNREPORTED_GRACE_S = 5.0


class Rebalance(ConsumerRebalanceListener):
    """Called by kafka-python (on its IO thread). It only pauses and notes: nothing here talks to
    the broker or PostgreSQL (a blocking consumer call from there is re-entrant), and an error
    raised here would be swallowed."""

    def __init__(self, worker: "Assignment"):
        self.worker = worker

    def on_partitions_revoked(self, revoked):
        self.worker._revoked(set(revoked))

    def on_partitions_assigned(self, assigned):
        self.worker._assigned(set(assigned))


class Assignment:
    """Mixed into the runtime's Worker: it owns `consumer`, `expected` (the stored next offset of
    every partition it has sought), `kafka_offsets`, `to_seek`, `odd_since` (when a partition was first
    seen held-but-unsought or sought-but-not-held), `p`, `name`, `group`, `retry_at`."""

    _lock = threading.Lock()   # the listener's thread and the worker's touch `to_seek` and `expected`

    def _revoked(self, tps: set[TopicPartition]) -> None:
        with self._lock:
            for tp in tps:
                self.expected.pop(tp, None)
                self.kafka_offsets.pop(tp, None)
            self.to_seek -= tps
        self.p.revoked(tps) if hasattr(self.p, "revoked") else None

    def _assigned(self, tps: set[TopicPartition]) -> None:
        if tps:
            self.consumer.pause(*tps)
            with self._lock:
                self.to_seek |= tps

    def reconcile(self) -> None:
        """Forget lost partitions the listener did not revoke, and replace the consumer when it
        holds partitions the listener never reported — once they have stayed so for
        `UNREPORTED_GRACE_S`: the listener normally comes right after the assignment, and acting
        in between would race kafka-python's own set-up of the partition. Until then their
        records are dropped (the worker has not sought them)."""
        held = self.consumer.assignment()
        with self._lock:
            odd = (held - self.expected.keys() - self.to_seek) | (self.expected.keys() - held)
        now = time.monotonic()
        since = self.odd_since
        for tp in list(since):
            if tp not in odd:
                del since[tp]
        due = {tp for tp in odd if now - since.setdefault(tp, now) >= UNREPORTED_GRACE_S}
        if not due:
            return
        for tp in due:
            del since[tp]
        lost, unseen = {tp for tp in due if tp not in held}, {tp for tp in due if tp in held}
        log.warning("runtime.assignment_unreported", group=self.group, unreported=len(unseen), unrevoked=len(lost))
        if lost:
            self._revoked(lost)
        if unseen:
            # Taking them up on this consumer did not help (2026-12-02: 432 partitions sought and
            # resumed, nothing fetched in 180 s, the member evicted for want of heartbeats): a
            # join kafka-python never finished. A new consumer joins again.
            since.clear()
            self._renew_consumer()

    def _renew_consumer(self) -> None:
        from events import bus

        with self._lock:
            held = set(self.expected) | set(self.to_seek)
            self.expected.clear()
            self.to_seek.clear()
            self.kafka_offsets.clear()
        if held and hasattr(self.p, "revoked"):
            self.p.revoked(held)
        old = self.consumer
        try:
            old.close()
        except Exception as exc:  # a half-joined member may not leave cleanly: its session ends it
            log.warning("runtime.consumer_close_failed", group=self.group, error=type(exc).__name__)
        self.consumer = bus.make_consumer(self._bootstrap, self.group, principal=self.principal,
                                          **self._consumer_options)
        self.consumer.subscribe(list(self.p.topics), listener=Rebalance(self))
        log.warning("runtime.consumer_renewed", group=self.group, partitions=len(held))

    def _seek_from_store(self) -> set[TopicPartition]:
        """Seek every pending partition to its stored offset and resume it; returns those sought."""
        with self._lock:
            tps = set(self.to_seek) & self.consumer.assignment()
        conn = self._db()
        with conn.transaction():
            if hasattr(self.p, "namespace"):  # a read model's live generation (projectors/generations.py)
                self.name = self.p.namespace(conn)
            stored = cp.stored_offsets(conn, self.name, tps)
            missing = tps - set(stored)
            if missing and getattr(self.p, "start", "earliest") == "latest":
                cp.store_first(conn, self.name, self.consumer.end_offsets(sorted(missing)))
                stored = cp.stored_offsets(conn, self.name, tps)
            gone = cp.beyond_end(stored, self.consumer.end_offsets(sorted(stored))) if stored else {}
            if gone:
                starts = self.consumer.beginning_offsets(sorted(gone))
                cp.rewind(conn, self.name, starts)
                log.error("runtime.offset_beyond_log_end", group=self.group, consumer=self.name,
                          partitions=[f"{tp.topic}/{tp.partition}:{o}>{starts[tp]}" for tp, o in sorted(gone.items())],
                          action="read again from the log's start; applied events are dropped by id")
                stored.update(starts)
        if any(o < 0 for o in stored.values()):  # a retired generation's fence, read mid-swap
            raise Fenced(f"{self.name}: generation retired while seeking")
        sought: dict[TopicPartition, int | None] = {}
        for tp in tps:
            if tp in stored:
                self.consumer.seek(tp, stored[tp])
                sought[tp] = stored[tp]
                continue
            sought[tp] = None
            committed = self.consumer.committed(tp) if getattr(self.p, "start", "") == "committed" else None
            if committed is not None:
                self.consumer.seek(tp, committed)   # a processor that kept its offsets in Kafka before
            else:
                self.consumer.seek_to_beginning(tp)
        with self._lock:
            self.expected.update(sought)
            self.to_seek -= tps            # not clear(): the listener may have added more meanwhile
            self.to_seek &= self.consumer.assignment()
        if not self.retry_at:
            self.consumer.resume(*tps)
        if hasattr(self.p, "assigned"):
            self.p.assigned(tps)
        log.info("runtime.assigned", group=self.group, partitions=len(tps))
        return tps
