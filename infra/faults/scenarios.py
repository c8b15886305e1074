"""The faults, one scenario each: what it does to the stack, how long it lasts, how it heals.

A scenario's `inject` runs at the fault's start; the run then waits `hold_s` (the supervisor
restarting what dies meanwhile), calls `heal`, and waits for recovery (run.py). The short form
(`--short`, and inside the test suite) runs the scenarios marked `short` with shorter holds: a
broker killed and PostgreSQL restarted, the two faults no other test of the suite injects into the
whole system (processes killed mid-flight are tests/test_crash_points.py and test_newborn_e2e.py).
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from events import kafka_auth
from infra.topics import APPLICATIONS, decisions_topic

from .stack import FaultStack

log = structlog.get_logger(__name__)

OUTAGE_DEPARTMENT = "disease_control"   # one newborn service (the vaccination record); the others go on


@dataclass
class Context:
    stack: FaultStack
    short: bool
    notes: list[str] = field(default_factory=list)
    state: dict = field(default_factory=dict)

    def describe(self, topics: list[str] | None = None) -> list[dict]:
        """Topic metadata from any live broker, on one admin client kept for the run (a new one
        per question costs a SCRAM handshake on each node); dropped after a failure."""
        from kafka import KafkaAdminClient

        if self.state.get("admin") is None:
            self.state["admin"] = KafkaAdminClient(**kafka_auth.connection(self.stack.bootstrap, kafka_auth.ADMIN),
                                                   request_timeout_ms=10_000, client_id="onething-faults")
        try:
            return self.state["admin"].describe_topics(topics)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        admin = self.state.pop("admin", None)
        if admin is not None:
            try:
                admin.close()
            except Exception:
                pass

    def leader_of(self, topic: str, partition: int) -> int:
        """The node id leading the partition now."""
        for t in self.describe([topic]):
            for p in t["partitions"]:
                if p["partition_index"] == partition and p["leader_id"] >= 0:
                    return p["leader_id"]
        raise RuntimeError(f"{topic}[{partition}] has no leader")

    def under_replicated(self) -> int:
        """Partitions whose in-sync replicas are fewer than their replicas (-1: no answer)."""
        try:
            return sum(1 for t in self.describe() for p in t["partitions"]
                       if len(p["isr_nodes"]) < len(p["replica_nodes"]))
        except Exception:
            return -1


@dataclass
class Scenario:
    name: str
    inject: Callable[[Context], None]
    heal: Callable[[Context], None] = lambda ctx: None
    hold_s: float = 0.0
    short_hold_s: float | None = None
    short: bool = False
    what: str = ""

    def hold(self, short: bool) -> float:
        return self.short_hold_s if short and self.short_hold_s is not None else self.hold_s


# -- brokers ---------------------------------------------------------------------------------------------
def _kill_leader(topic: str, partition: int) -> Callable[[Context], None]:
    def inject(ctx: Context) -> None:
        node = ctx.stack.node(ctx.leader_of(topic, partition))
        ctx.state["node"] = node
        ctx.notes.append(f"node {node.node_id} led {topic}[{partition}]")
        ctx.stack.cluster.stop_node(node, hard=True)
        _status_while_down(ctx)
    return inject


def _status_while_down(ctx: Context) -> None:
    """What `onething status` tells the operator with the node down (after the controller noticed)."""
    from infra import stack

    node = ctx.state["node"]
    deadline = time.monotonic() + 30
    while True:
        st = stack.status(ctx.stack.settings())["kafka"]
        down = [b["id"] for b in st.get("brokers", []) if b["state"] != "up"]
        if (down == [node.node_id] and st.get("under_replicated")) or time.monotonic() > deadline:
            break
        ctx.stack.sup.check()
        time.sleep(1)
    ctx.state["status_down"] = {"down": down, "under_replicated": len(st.get("under_replicated") or []),
                                "controller": st.get("controller")}
    ctx.notes.append(f"status: brokers down {down}, {len(st.get('under_replicated') or [])} partitions "
                     f"under-replicated, controller {st.get('controller')}")


def _restart_node(ctx: Context) -> None:
    ctx.stack.cluster.start_node(ctx.state.pop("node"), wait=True, timeout=180)


def _kill_two(ctx: Context) -> None:
    """kill -9 two of the three nodes: the leader of applications[0] and one more. With
    min.insync.replicas 2 no partition can take a write (and the controller quorum is gone with
    them): this, not one full disk (a broker whose only log directory fails stops itself, and
    the other two carry on), is the fault in which producers get errors and the API must answer
    503 with Retry-After and accept nothing by halves."""
    first = ctx.stack.node(ctx.leader_of(APPLICATIONS, 0))
    second = next(n for n in ctx.stack.cluster.nodes if n.node_id != first.node_id)
    ctx.state["nodes"] = [first, second]
    ctx.notes.append(f"nodes {first.node_id} and {second.node_id} killed; node "
                     f"{next(n.node_id for n in ctx.stack.cluster.nodes if n not in (first, second))} alone")
    for node in (first, second):
        ctx.stack.cluster.stop_node(node, hard=True)


def _restart_two(ctx: Context) -> None:
    nodes = ctx.state.pop("nodes")
    for node in nodes:   # both started before either is waited for: each needs the other for a quorum
        ctx.stack.cluster.start_node(node, wait=False)
    ctx.stack.cluster.wait_ready(timeout=180, nodes=nodes)


def _stop_broker(ctx: Context) -> None:
    """SIGSTOP the leader of decisions.police[0]: a hung broker, not a dead one."""
    node = ctx.stack.node(ctx.leader_of(decisions_topic("police"), 0))
    ctx.state["node"] = node
    ctx.notes.append(f"node {node.node_id} stopped")
    os.killpg(node.pid(), signal.SIGSTOP)


def _continue_broker(ctx: Context) -> None:
    os.killpg(ctx.state.pop("node").pid(), signal.SIGCONT)


def _fill_disk(ctx: Context) -> None:
    disk = ctx.stack.disk
    if disk is None or not disk.mounted:
        raise SkipScenario("no tmpfs for a broker's log directory here (needs root and mount)")
    taken = disk.fill()
    ctx.notes.append(f"{taken // (1 << 20)} MiB of ballast on node 3's disk")


def _free_disk(ctx: Context) -> None:
    disk = ctx.stack.disk
    node = ctx.stack.node(3)
    disk.empty()
    if node.pid() is None:
        ctx.notes.append("node 3 stopped itself (its only log directory failed); started again")
        ctx.stack.cluster.start_node(node, wait=True, timeout=180)
    else:
        ctx.notes.append("node 3 kept running")


def _rolling_restart(ctx: Context) -> None:
    for node in ctx.stack.cluster.nodes:
        ctx.stack.cluster.stop_node(node, hard=False, timeout=120)
        ctx.stack.cluster.start_node(node, wait=True, timeout=180)
        deadline = time.monotonic() + 180
        while ctx.under_replicated() != 0 and time.monotonic() < deadline:   # in sync before the next
            ctx.stack.sup.check()
            time.sleep(1)


# -- processes and PostgreSQL ------------------------------------------------------------------------------
def _kill_process(name: str) -> Callable[[Context], None]:
    def inject(ctx: Context) -> None:
        ctx.stack.sup.kill(name, signal.SIGKILL)   # the supervisor starts it again
    return inject


def _stop_postgres(ctx: Context) -> None:
    ctx.stack.postgres.stop("immediate")


def _start_postgres(ctx: Context) -> None:
    ctx.stack.postgres.start()


def _department_down(ctx: Context) -> None:
    ctx.stack.outage_flag(OUTAGE_DEPARTMENT).touch()


def _department_up(ctx: Context) -> None:
    ctx.stack.outage_flag(OUTAGE_DEPARTMENT).unlink(missing_ok=True)


class SkipScenario(Exception):
    """This machine cannot inject the fault; the scenario is reported as not run, with the reason."""


PROCESSES = ("api", "core", "read-models", "adapters", "deadlines")

SCENARIOS: list[Scenario] = [
    Scenario("leader of applications[0] killed", _kill_leader(APPLICATIONS, 0), _restart_node,
             hold_s=30, short_hold_s=5, short=True, what="kill -9 the broker leading applications[0]; start it again"),
    Scenario("leader of decisions.police[0] killed", _kill_leader(decisions_topic("police"), 0), _restart_node,
             hold_s=30, what="kill -9 the broker leading decisions.police[0]; start it again"),
    Scenario("two brokers killed (no write quorum)", _kill_two, _restart_two, hold_s=30,
             what="kill -9 two of the three nodes (min.insync.replicas 2 unmet): the API answers 503; start both again"),
    Scenario("broker hung 30 s", _stop_broker, _continue_broker, hold_s=30,
             what="SIGSTOP the leader of decisions.police[0], SIGCONT after the hold"),
    *[Scenario(f"process {p} killed", _kill_process(p),
               what=f"kill -9 `{p}` with work in flight; the supervisor starts it again") for p in PROCESSES],
    Scenario("PostgreSQL restarted", _stop_postgres, _start_postgres, hold_s=10, short_hold_s=5, short=True,
             what="stop PostgreSQL at once (-m immediate: no checkpoint), start it after the hold"),
    Scenario(f"department {OUTAGE_DEPARTMENT} down 2 min", _department_down, _department_up,
             hold_s=120, what=f"{OUTAGE_DEPARTMENT}'s backend unreachable; its tasks wait, the others go on"),
    Scenario("broker disk full", _fill_disk, _free_disk, hold_s=30,
             what="fill node 3's log directory (a tmpfs) to the last byte; free it and start the node again"),
    Scenario("rolling restart", _rolling_restart,
             what="each broker in turn: SIGTERM, start, wait until every partition is in sync"),
]


def chosen(short: bool, only: list[str] | None = None) -> list[Scenario]:
    picked = [s for s in SCENARIOS if s.short] if short else list(SCENARIOS)
    if only:
        picked = [s for s in SCENARIOS if any(o.lower() in s.name.lower() for o in only)]
    return picked
