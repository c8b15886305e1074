"""Starts every process of the system as child processes, restarts the ones that die, stops them all.

`onething run` and `onething demo` use it. A processor that hits a failure it cannot handle
exits on purpose (dispatch does, to never commit past an unprocessed event); restarting it
is this supervisor's job, with a growing delay so a persistent fault does not spin.
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

log = structlog.get_logger(__name__)


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
        child.proc = subprocess.Popen(child.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env={**self.env, **child.env}, start_new_session=True)
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
            os.killpg(proc.pid, sig)

    def stop_on_signals(self) -> threading.Event:
        """SIGTERM and SIGINT end the supervision (also when a shell started it in the background,
        where SIGINT is ignored by default); the caller then stops every child."""
        stopping = threading.Event()
        for signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signo, lambda *_: stopping.set())
        return stopping

    def stop(self, timeout: float = 20.0) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.proc and child.proc.poll() is None:
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            if not child.proc:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        log.info("supervisor.stopped")

    def alive(self) -> dict[str, bool]:
        return {n: bool(c.proc and c.proc.poll() is None) for n, c in self.children.items()}


def demo_departments() -> list[str]:
    """The newborn bundle's departments and every department that keeps a register copy."""
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
