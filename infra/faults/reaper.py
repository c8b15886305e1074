"""The faults' stack ends with its run, also when the run is killed with SIGKILL.

`onething faults` starts three brokers, a PostgreSQL cluster and a tmpfs of its own; its own
`down()` stops them on every way out the process itself sees (an error, Ctrl-C, SIGTERM). A
SIGKILL — a CI job's time limit, the OOM killer, a test's timeout — runs no code at all, and the
brokers (started detached, as `onething up` starts them for an operator) and the cluster would
serve on. So `up()` first starts this reaper: a small process in a session of its own that polls
the run's pid and, once it is gone without having said it cleaned up (the `.clean` file), does
the same `down()` itself. The processes of `onething run` need no reaper: they die with their
supervisor (infra/lifeline.py).

    python -m infra.faults.reaper PID HOME BASE_PORT
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ..kafka_local import _alive   # a zombie counts as gone

CLEAN = ".clean"      # written by a run that took its stack down itself
POLL_S = 1.0


def start(home: Path, base_port: int) -> subprocess.Popen:
    """The reaper of this process's stack (it outlives this process by design)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / CLEAN).unlink(missing_ok=True)
    with open(home / "reaper.log", "ab") as log:   # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "infra.faults.reaper", str(os.getpid()), str(home),
                                 str(base_port)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, cwd=Path(__file__).resolve().parents[2])


def mark_clean(home: Path) -> None:
    (home / CLEAN).write_text("the run took its stack down\n")


def main(argv: list[str]) -> int:
    pid, home, base_port = int(argv[0]), Path(argv[1]), int(argv[2])
    while _alive(pid):
        time.sleep(POLL_S)
    if (home / CLEAN).exists():
        return 0
    from .stack import FaultStack

    print(f"{time.strftime('%H:%M:%S')} the run (pid {pid}) ended without taking its stack down: doing it",
          flush=True)
    FaultStack(home, base_port=base_port).down()
    mark_clean(home)
    print(f"{time.strftime('%H:%M:%S')} stack down", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
