"""The API's Kafka producer: one per process, created on first use so the API starts without a broker."""
from __future__ import annotations

import threading
import time

import structlog

from events import bus

log = structlog.get_logger("producers.api_producer")


class EventProducer:
    """One KafkaProducer shared by every request of the process (kafka-python's producer is
    thread-safe), tuned for many small sends each of which someone waits for:

    - a request waits on its own record's future until the broker acknowledged it (acks=all,
      idempotent), and never calls `flush()`, which would also wait for every other request's
      records;
    - linger_ms=1 (`LINGER_MS`): records of concurrent requests sent within a millisecond leave
      in one produce request per partition instead of one each, for at most 1 ms of latency
      (0 sends each alone);
    - the timeouts follow ONETHING_API_PRODUCE_TIMEOUT_S, so an unreachable broker answers 503
      within about that time.
    `start()` connects in the background at startup, so the first request does not pay for it.
    """

    LINGER_MS = 1

    def __init__(self, bootstrap: str, timeout_s: float):
        self.bootstrap, self.timeout_s = bootstrap, timeout_s
        self._lock = threading.Lock()
        self._producer = None

    def _get(self):
        with self._lock:
            if self._producer is None:
                half = max(500, int(self.timeout_s * 500))
                self._producer = bus.make_producer(
                    self.bootstrap, client_id="onething-intake-api", bootstrap_timeout_ms=half, max_block_ms=half,
                    request_timeout_ms=half, delivery_timeout_ms=int(self.timeout_s * 1000) + 10,
                    linger_ms=self.LINGER_MS)
            return self._producer

    def start(self) -> None:
        def warm() -> None:
            try:
                self._get()
            except Exception as exc:  # the broker is not there yet: the first request tries again
                log.warning("intake.kafka_not_ready", error=type(exc).__name__)

        threading.Thread(target=warm, name="intake-producer-start", daemon=True).start()

    def publish(self, topic: str, event) -> None:
        """Returns once the broker acknowledged the event (acks=all); raises otherwise."""
        producer = self._get()
        try:
            bus.publish(producer, topic, event, timeout=self.timeout_s + 2)  # this record's future only
        except Exception:
            self._discard(producer)
            raise

    def publish_many(self, topic: str, events: list) -> None:
        """Returns once the broker acknowledged every event (acks=all); raises otherwise. The
        records leave together (one produce request per partition within `LINGER_MS`) and the
        wait is on their own futures, within one timeout for all (a read's audit: producers/api_audit.py)."""
        if not events:
            return
        producer = self._get()
        try:
            futures = [bus.send(producer, topic, event) for event in events]
            deadline = time.monotonic() + self.timeout_s + 2
            for future in futures:
                future.get(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            self._discard(producer)
            raise

    def _discard(self, producer) -> None:
        """Drop a producer that failed (the next request builds a fresh one), unless another
        request already replaced it."""
        with self._lock:
            if self._producer is not producer:
                return
            self._producer = None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:  # already broken: nothing more to release
                pass

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=5)
