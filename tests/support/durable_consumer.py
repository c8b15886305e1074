"""A consumer that makes its effect durable before it commits: run as a process so tests can kill -9 it.

Usage: python -m tests.support.durable_consumer BOOTSTRAP TOPIC GROUP OUTFILE EXPECTED [PAUSE_S]
Each consumed event becomes a line "key sequence event_id" in OUTFILE, fsynced, and only then
is the batch's offset committed: the pattern every consumer in this system follows.
"""
from __future__ import annotations

import os
import sys
import time

from events import bus, codec


def main() -> None:
    bootstrap, topic, group, outfile, expected = sys.argv[1:6]
    pause = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    consumer = bus.make_consumer(bootstrap, group, topic, max_poll_records=200)
    seen = 0
    with open(outfile, "a") as out:
        idle_since = time.monotonic()
        while True:
            batch = consumer.poll(timeout_ms=500)
            if not batch:
                if time.monotonic() - idle_since > 15:
                    break
                continue
            idle_since = time.monotonic()
            for _tp, messages in batch.items():
                for msg in messages:
                    ev = codec.decode(msg.value)
                    out.write(f"{ev.key} {ev.envelope.sequence} {ev.id}\n")
                    seen += 1
            out.flush()
            os.fsync(out.fileno())
            consumer.commit()
            print(f"progress {seen}", flush=True)
            if pause:
                time.sleep(pause)
    consumer.close()


if __name__ == "__main__":
    main()
