"""How a Kafka cluster is doing, for `onething status`: each broker, the controller quorum, and the
partitions that have lost a replica.

Pure functions over what kafka-python's admin client answers (`describe_cluster`,
`describe_metadata_quorum`, `describe_topics`), kept apart from infra/stack.py so they are tested
without a broker. Why these three: a replicated cluster keeps serving with one node gone (acks=all
with min.insync.replicas 2 of 3), so "it answers" says nothing about whether the next failure loses
it; a broker missing from the registration, a voter far behind the quorum leader, or a partition whose
in-sync replicas are fewer than its replicas is what an operator must see before that next failure.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExpectedBroker:
    """A broker the cluster should have: a node of the local stack (with its pid and whether its
    port answers) or a replica id the topics' assignments name."""
    broker_id: int
    address: str | None = None
    pid: int | None = None
    listening: bool | None = None   # None: not ours to check (a cluster of the operator's)


def brokers(registered: Iterable[dict[str, Any]], expected: Iterable[ExpectedBroker] = (),
            replica_ids: Iterable[int] = ()) -> list[dict[str, Any]]:
    """One row per broker, registered or expected. Up means registered with the controller (KRaft drops
    a broker whose heartbeats stop, after broker.session.timeout.ms) and, for a node of the local stack,
    its process alive and its port open — so a broker killed a moment ago is down at once, not after the
    session timeout. A replica id no registered broker has is a broker that was there and is gone."""
    live = {b["broker_id"]: b for b in registered if not b.get("is_fenced")}
    known = {e.broker_id: e for e in expected}
    for rid in replica_ids:
        known.setdefault(rid, ExpectedBroker(rid))
    rows = []
    for bid in sorted(set(live) | set(known)):
        reg, exp = live.get(bid), known.get(bid)
        address = f"{reg['host']}:{reg['port']}" if reg else (exp.address if exp else None)
        row: dict[str, Any] = {"id": bid, "address": address, "registered": reg is not None}
        if exp is not None and exp.listening is not None:
            row.update(pid=exp.pid, listening=exp.listening)
            up = reg is not None and exp.pid is not None and exp.listening
        else:
            up = reg is not None
        row["state"] = "up" if up else "down"
        rows.append(row)
    return rows


def quorum(described: dict[str, Any], now_ms: int | None = None) -> dict[str, Any]:
    """The KRaft metadata quorum (`__cluster_metadata` partition 0): its leader, epoch and high
    watermark, and per voter its log end offset, its lag behind the leader (the leader's log end
    offset minus its own, as `kafka-metadata-quorum describe --replication` reports it) and how long
    ago it last caught up. A dead voter's lag grows with every metadata write; its catch-up age grows
    regardless."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    part = described["topics"][0]["partitions"][0]
    if part.get("error"):
        return {"leader": None, "error": part["error"], "voters": [], "observers": []}
    leader = part.get("leader_id")
    leader = leader if leader is not None and leader >= 0 else None
    voters = part.get("current_voters") or []
    leader_end = next((v["log_end_offset"] for v in voters if v["replica_id"] == leader), part.get("high_watermark"))

    def replica(v: dict[str, Any]) -> dict[str, Any]:
        caught = v.get("last_caught_up_timestamp")
        return {"id": v["replica_id"], "log_end_offset": v["log_end_offset"],
                "lag": max(0, leader_end - v["log_end_offset"]) if leader_end is not None and v["log_end_offset"] >= 0
                else None,
                "caught_up_ms_ago": max(0, now_ms - caught) if caught is not None and caught >= 0 else None}

    rows = [replica(v) for v in voters]
    return {"leader": leader, "epoch": part.get("leader_epoch"), "high_watermark": part.get("high_watermark"),
            "voters": rows, "observers": [replica(o) for o in part.get("observers") or []],
            "max_lag": max((r["lag"] for r in rows if r["lag"] is not None), default=None)}


def under_replicated(topics: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every partition, internal topics included, whose in-sync replicas are fewer than its replicas,
    sorted by topic and partition. `leader` is None for a partition with no leader (offline)."""
    rows = []
    for topic in topics:
        for p in topic.get("partitions") or []:
            replicas, isr = list(p.get("replica_nodes") or []), list(p.get("isr_nodes") or [])
            if len(isr) < len(replicas):
                leader = p.get("leader_id")
                rows.append({"topic": topic["name"], "partition": p["partition_index"],
                             "leader": leader if leader is not None and leader >= 0 else None,
                             "replicas": replicas, "isr": isr,
                             "missing": sorted(set(replicas) - set(isr))})
    return sorted(rows, key=lambda r: (r["topic"], r["partition"]))


def replica_ids(topics: Iterable[dict[str, Any]]) -> set[int]:
    return {r for t in topics for p in t.get("partitions") or [] for r in p.get("replica_nodes") or []}


def problems(broker_rows: list[dict[str, Any]], quorum_info: dict[str, Any] | None,
             under: list[dict[str, Any]]) -> list[str]:
    """What an operator should act on, one line each; empty when the cluster is whole."""
    found = [f"broker {b['id']} ({b['address'] or 'address unknown'}) is down" for b in broker_rows
             if b["state"] != "up"]
    if quorum_info is not None and quorum_info.get("error"):
        found.append(f"the controller quorum could not be described: {quorum_info['error']}")
    elif quorum_info is not None and quorum_info.get("leader") is None:
        found.append("the controller quorum has no leader")
    if under:
        offline = sum(1 for u in under if u["leader"] is None)
        found.append(f"{len(under)} partition(s) under-replicated"
                     + (f", {offline} without a leader" if offline else ""))
    return found
