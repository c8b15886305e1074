"""Fault injection for the guarantee tests: kill this process (SIGKILL, like `kill -9`) at a named
point of a processor's commit sequence.

    ONETHING_CRASH_AT="dispatch:after_flush:3,adapter.police:after_commit:2"
    ONETHING_CRASH_DIR=/tmp/crashes   # each point fires once: a marker file is written first

`after_flush`: the derived events were acknowledged by the broker, the PostgreSQL transaction
is still open. `after_commit`: the transaction committed, Kafka's offsets not yet. N counts the
group's checkpoints in this process. Unset (production), it costs one dict lookup.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

_SPECS: dict[tuple[str, str], int] | None = None
_COUNTS: dict[tuple[str, str], int] = {}


def _specs() -> dict[tuple[str, str], int]:
    global _SPECS
    if _SPECS is None:
        _SPECS = {}
        for part in filter(None, (os.environ.get("ONETHING_CRASH_AT") or "").split(",")):
            group, point, n = part.rsplit(":", 2)
            _SPECS[(group, point)] = int(n)
    return _SPECS


def reached(group: str, point: str) -> None:
    specs = _specs()
    if not specs or (group, point) not in specs:
        return
    key = (group, point)
    _COUNTS[key] = _COUNTS.get(key, 0) + 1
    if _COUNTS[key] < specs[key]:
        return
    marker = Path(os.environ.get("ONETHING_CRASH_DIR") or "/tmp") / f"crashed-{group}-{point}"
    if marker.exists():
        return
    marker.write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)
