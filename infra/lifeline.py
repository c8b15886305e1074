"""A process the supervisor started ends with the supervisor, also when that is killed with SIGKILL.

A supervisor killed with SIGKILL (an operator's kill -9, the OOM killer) runs no code of its own,
so whatever it would do to stop its children never happens: the kernel has to tell them. At its
start a child asks Linux for SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), so it stops
the way it always stops, through its own SIGTERM handling (offsets committed, producers flushed).
Three gaps of that request are closed here:

- the parent may have died before the request was made: the child then stops at once;
- the stop may hang, and nobody is left to send SIGKILL after the stop timeout: a watchdog thread
  ends the process itself once the timeout has passed since its parent died;
- off Linux there is no such request: the watchdog, which polls its parent, sends the SIGTERM.

Linux sends the signal when the *thread* that started the child ends, not the process: the
supervisor must start and restart its children from a thread that lives as long as it does (every
caller does so from its main thread).

The supervisor names itself in the child's environment (ONETHING_SUPERVISOR_PID): a process
started any other way (`onething run api` in a terminal, a systemd unit) is not tied to its parent.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

import structlog

PARENT_ENV = "ONETHING_SUPERVISOR_PID"
STOP_TIMEOUT_ENV = "ONETHING_STOP_TIMEOUT_S"
DEFAULT_STOP_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1       # linux/prctl.h
ORPHANED = 1               # exit status of a child whose parent was gone before it could stop

log = structlog.get_logger(__name__)


def stop_timeout() -> float:
    """Seconds a process may take to stop after SIGTERM before it is killed: the supervisor's
    wait for its children, and an orphaned child's own limit."""
    raw = os.environ.get(STOP_TIMEOUT_ENV) or ""
    try:
        return float(raw) if raw else DEFAULT_STOP_TIMEOUT_S
    except ValueError:
        raise SystemExit(f"environment variable {STOP_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None


def die_with_parent() -> bool:
    """Tie this process to the supervisor named in its environment; False when none is named.
    Call it first in a child's main, before anything that takes time."""
    raw = os.environ.pop(PARENT_ENV, "")   # popped: a process this one starts has another parent
    if not raw:
        return False
    parent = int(raw)
    armed = _request_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:   # it died before the request took effect: nobody would tell us
        log.warning("lifeline.parent_gone_at_start", parent=parent)
        raise SystemExit(ORPHANED)
    threading.Thread(target=_watch, args=(parent, armed, stop_timeout()), name="lifeline", daemon=True).start()
    return True


def _request_parent_death_signal(signo: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signo), 0, 0, 0) != 0:
        log.warning("lifeline.prctl_failed", errno=ctypes.get_errno())
        return False
    return True


def _watch(parent: int, armed: bool, timeout: float) -> None:
    """Once the parent is gone (this process was re-parented), the stop has `timeout` seconds."""
    while os.getppid() == parent:
        time.sleep(0.5)
    log.warning("lifeline.parent_gone", parent=parent, stop_timeout_s=timeout)
    if not armed:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(timeout)
    log.error("lifeline.stop_timed_out", parent=parent, stop_timeout_s=timeout)
    os._exit(ORPHANED)
