"""Benchmark: how fast the whole system settles newborn cases on this machine, and who spends the CPU.

    .venv/bin/python -m tests.bench_system --cases 300                 # every process of `onething run`
    .venv/bin/python -m tests.bench_system --cases 300 --without deadlines,oversight,kpis

Runs on the test stack (tests/conftest.py's settings: broker 19092, database onething_test),
starts the processes at the log's end, produces N applications at once and prints cases
completed per minute, the time until the case view shows every case completed, and the CPU
seconds of each process. It prints figures; it does not pass or fail (a slow day is not a bug).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--without", default="", help="comma-separated process names to leave out")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    from . import conftest  # noqa: F401  (sets the test stack's environment)

    import psycopg

    from events import bus
    from infra import stack
    from infra.settings import Settings
    from infra.supervisor import system

    from .support.fast_forward import skip_history
    from .support.newborn import submission

    settings = Settings.from_env()
    stack.up(settings)
    skip_history(settings.bootstrap_servers, settings.database_url)
    left_out = {n for n in args.without.split(",") if n}
    sup = system(Path(tempfile.mkdtemp(prefix="bench-")), env={"ONETHING_SIM_PROCESSING_S": "0",
                                                               "ONETHING_CASCADE_START": "latest"})
    for name in left_out:
        sup.children.pop(name)
    run = uuid.uuid4().hex[:6]
    cases = [submission(f"case-bench-{run}-{i:05d}") for i in range(args.cases)]
    ids = [c.key for c in cases]
    sup.start()
    try:
        time.sleep(8)  # the consumers join their groups
        cpu0 = {n: _cpu_seconds(c.proc.pid) for n, c in sup.children.items() if c.proc}
        producer = bus.make_producer(settings.bootstrap_servers)
        started = time.monotonic()
        bus.publish_all(producer, [("applications", c) for c in cases], timeout=120)
        producer.close()
        done, marks = 0, {}
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            while done < len(ids) and time.monotonic() - started < args.timeout:
                time.sleep(2)
                sup.check()
                done = conn.execute("SELECT count(*) FROM case_view WHERE case_id = ANY(%s) AND status = "
                                    "'completed'", (ids,)).fetchone()[0]
                for share in (0.5, 0.9, 1.0):
                    if done >= share * len(ids) and share not in marks:
                        marks[share] = time.monotonic() - started
        elapsed = time.monotonic() - started
        cpu = {n: _cpu_seconds(c.proc.pid) - cpu0.get(n, 0) for n, c in sup.children.items() if c.proc}
    finally:
        sup.stop()
    print(f"processes: {len(sup.children)} (left out: {', '.join(sorted(left_out)) or 'none'})")
    print(f"cases: {done} of {len(ids)} completed in {elapsed:.0f} s → {60 * done / elapsed:.0f} cases/min")
    for share, at in sorted(marks.items()):
        print(f"  {int(share * 100)} % completed after {at:.0f} s")
    print("CPU seconds per process while settling them:")
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {name:28} {seconds:7.1f}")


if __name__ == "__main__":
    main()
