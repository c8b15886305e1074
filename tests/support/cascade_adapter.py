"""One department's register-copy adapter as a process (for the burst test), in a group of the run.

Usage: python -m tests.support.cascade_adapter DEPARTMENT GROUP KEYFILE
Prints "ready" once it joined its group and fixed its starting positions; stops on SIGTERM.
"""
from __future__ import annotations

import signal
import sys
import threading

from department_adapters.reference.register_copy import RegisterCopyBackend
from infra import log as logmod
from infra.settings import Settings

from .cascade_harness import RunAdapter


def main() -> None:
    department, group, keyfile = sys.argv[1:4]
    logmod.configure(f"adapter.{department}", "WARNING")
    settings = Settings.from_env()
    keys = {line.strip() for line in open(keyfile) if line.strip()}
    adapter = RunAdapter(RegisterCopyBackend(department), settings.bootstrap_servers, settings.database_url,
                         group=group, keys=keys, retry_for_s=1.0)
    stopping = threading.Event()
    for signo in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signo, lambda *_: stopping.set())
    adapter.ready()
    print("ready", flush=True)
    try:
        adapter.run(stopping.is_set)
    finally:
        adapter.close()
        print(f"stopped handled={adapter.stats.handled} replayed={adapter.stats.replayed} "
              f"waits={adapter.stats.backend_waits}", flush=True)


if __name__ == "__main__":
    main()
