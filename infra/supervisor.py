"""Starts every process of the system as child processes, restarts the ones that die, stops them all.

`onething run` and `onething demo` use it. A processor that hits a failure it cannot handle
exits on purpose (dispatch does, to never commit past an unprocessed event); restarting it
is this supervisor's job, with a growing delay so a persistent fault does not spin.

Stopping: SIGTERM, SIGINT and SIGHUP (`stop_on_signals`) end the supervision; `stop` then sends
SIGTERM to every child at once, waits for them (ONETHING_STOP_TIMEOUT_S, 20 s), kills the ones still
running and names every child that did not stop cleanly, so the command exits non-zero. A child
ends with the supervisor even when the supervisor is killed with SIGKILL (infra/lifeline.py): on
Linux the signal comes when the *thread* that started the child ends, so `start` and `check` are
called from the main thread, which lives as long as the supervisor.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from .lifeline import PARENT_ENV, stop_timeout

log = structlog.get_logger(__name__)
#: how a child may end after SIGTERM and count as stopped cleanly: its own exit, or the signal's default
#: action (uvicorn re-raises the signal once it has shut down)
CLEAN_STOP = (0, -signal.SIGTERM)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopFailed(RuntimeError):
    """Some children did not stop cleanly (killed after the timeout, or an error exit); `problems` names them."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Child:
    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)


class Supervisor:
    def __init__(self, log_dir: Path, env: dict[str, str] | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {})}
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.stop_signal: str | None = None   # the signal that ended the supervision, if one did
        self._previous_handlers: dict[int, object] = {}

    def add(self, name: str, component: str, arg: str | None = None) -> None:
        """Each child serves /metrics on its own port: base (ONETHING_METRICS_BASE_PORT, 9400) + index."""
        args = [sys.executable, "-m", "infra.process", component] + ([arg] if arg else [])
        port = int(self.env.get("ONETHING_METRICS_BASE_PORT", "9400")) + len(self.children)
        # a stable member id per child (static membership): restarted, it reclaims its partitions at once
        instance = f"{self.env.get('ONETHING_INSTANCE_PREFIX') or socket.gethostname()}-{name}"
        self.children[name] = Child(name, args, self.log_dir / f"{name}.log",
                                    env={"ONETHING_METRICS_PORT": str(port), "ONETHING_INSTANCE_ID": instance})

    def _start(self, child: Child) -> None:
        out = open(child.log_path, "ab")
        # a session of its own: a terminal's Ctrl-C reaches the supervisor alone, which stops the children
        # in order; the child ties itself to this process (infra/lifeline.py) in case this one is killed
        child.proc = subprocess.Popen(child.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env={**self.env, **child.env, PARENT_ENV: str(os.getpid())},
                                      start_new_session=True)
        out.close()   # the child holds its own descriptor
        child.started_at = time.monotonic()
        log.info("supervisor.started", process=child.name, pid=child.proc.pid)

    def start(self) -> None:
        for child in self.children.values():
            self._start(child)

    def check(self) -> list[str]:
        """Restart any child that exited; returns the names restarted now."""
        restarted = []
        now = time.monotonic()
        for child in self.children.values():
            if self.stopping or child.proc is None or child.proc.poll() is None:
                continue
            if child.next_start == 0.0:
                ran_for = now - child.started_at
                child.restarts = 0 if ran_for > 60 else child.restarts + 1
                child.next_start = now + min(30.0, 0.5 * 2 ** child.restarts)
                log.warning("supervisor.exited", process=child.name, code=child.proc.returncode,
                            restart_in=round(child.next_start - now, 1))
            elif now >= child.next_start:
                child.next_start = 0.0
                self._start(child)
                restarted.append(child.name)
        return restarted

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """For fault tests: send `sig` to one child (the supervisor will restart it)."""
        proc = self.children[name].proc
        if proc and proc.poll() is None:
            _signal_group(proc, sig)

    def stop_on_signals(self, interrupt: bool = False) -> threading.Event:
        """SIGTERM, SIGINT and SIGHUP end the supervision (SIGINT also when a shell started this in the
        background, where it is ignored by default: a handler replaces that); the caller then calls
        `stop`. With `interrupt` the first signal also raises KeyboardInterrupt in the main thread, for
        a caller busy in loops of its own (the demo). Signals that come while stopping change nothing:
        the stop has its timeout. `stop` puts the previous handlers back."""
        stopping = threading.Event()

        def handler(signo: int, _frame) -> None:
            if stopping.is_set() or self.stopping:
                return
            self.stop_signal = signal.Signals(signo).name
            stopping.set()
            log.info("supervisor.stopping", signal=self.stop_signal)
            if interrupt:
                raise KeyboardInterrupt

        if threading.current_thread() is threading.main_thread():   # Python handles signals there only
            for signo in STOP_SIGNALS:
                self._previous_handlers.setdefault(signo, signal.getsignal(signo))
                signal.signal(signo, handler)
        return stopping

    def stop(self, timeout: float | None = None) -> list[str]:
        """SIGTERM to every running child at once (they stop in parallel), then wait; SIGKILL to any
        still running `timeout` seconds later (ONETHING_STOP_TIMEOUT_S, 20). Returns a line for each
        child that did not stop cleanly — killed, or an error exit — for the caller to exit non-zero on:
        a child that needs SIGKILL to stop is a fault to see, not to hide."""
        timeout = stop_timeout() if timeout is None else timeout
        self.stopping = True
        began = time.monotonic()
        running = [c for c in self.children.values() if c.proc and c.proc.poll() is None]
        for child in running:
            _signal_group(child.proc, signal.SIGTERM)
        problems = []
        for child in running:
            try:
                code = child.proc.wait(max(0.1, began + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.wait()
                problems.append(f"{child.name} (pid {child.proc.pid}) still ran {timeout:g} s after SIGTERM: killed")
                log.error("supervisor.stop_timed_out", process=child.name, pid=child.proc.pid, timeout_s=timeout)
                continue
            log.info("supervisor.child_stopped", process=child.name, code=code,
                     seconds=round(time.monotonic() - began, 1))
            if code not in CLEAN_STOP:
                problems.append(f"{child.name} (pid {child.proc.pid}) stopped with {_describe(code)}")
        for signo, previous in self._previous_handlers.items():
            signal.signal(signo, previous)
        self._previous_handlers.clear()
        log.info("supervisor.stopped", seconds=round(time.monotonic() - began, 1), problems=len(problems))
        return problems

    def alive(self) -> dict[str, bool]:
        return {n: bool(c.proc and c.proc.poll() is None) for n, c in self.children.items()}


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """The child's process group (its own session: the child and anything it started). Gone already
    is fine: it may have exited between the check and the signal."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _describe(code: int) -> str:
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


def demo_departments() -> list[str]:
    """Every department of the catalog's bundles and every department that keeps a register copy
    (issue 14: every bundle runs end to end, so every department answers)."""
    from department_adapters.reference.run import catalog_departments

    return catalog_departments()


def newborn_departments() -> list[str]:
    """The newborn bundle's departments and every department that keeps a register copy: what a
    run of newborn applications and register changes needs (the fault scenarios, the newborn e2e
    tests) — 12 adapters rather than 33, fewer consumer groups to join after each fault."""
    from catalog.loader import load_catalog
    from catalog.subscriptions import load_subscriptions

    catalog = load_catalog()
    newborn = {catalog.service(s).department for s in catalog.bundle("newborn").services}
    return sorted(newborn | set(load_subscriptions().departments()))


def system(log_dir: Path, departments: list[str] | None = None, env: dict[str, str] | None = None) -> Supervisor:
    """The whole system in five processes (infra/process.py): the intake API (with the status page
    and register API); core (dispatch, cascade); the read models (case view, KPIs, supervisor
    queue, ratings); every department adapter; the deadline clock. Each processor inside keeps its
    own consumer group, so any one scales out alone (`onething run dispatch` on another machine)."""
    sup = Supervisor(log_dir, env)
    sup.add("api", "api")
    sup.add("core", "core")
    sup.add("read-models", "read-models")
    sup.add("adapters", "adapters", ",".join(departments or demo_departments()))
    sup.add("deadlines", "deadlines")
    return sup
