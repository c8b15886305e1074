"""The local stack as one thing: bring up broker, database and topics; report; tear down.

Each step is idempotent and reuses what already runs, so `onething up` is safe to repeat
and CI's second run downloads and starts nothing new. Against production (KAFKA_BOOTSTRAP_SERVERS
and DATABASE_URL set) it only applies topics and migrations.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from events import kafka_auth

from . import acls, kafka_health, migrations, postgres_local
from .kafka_local import KafkaCluster, local_cluster, port_open, recorded_cluster
from .settings import Settings
from .topics import ApplyReport, apply_topics, declared_topics

log = structlog.get_logger(__name__)


def department_codes() -> list[str]:
    """Departments come from the catalog: a new department there gets its topics here."""
    from catalog.loader import load_catalog

    return sorted(load_catalog().departments)


def topic_specs(settings: Settings):
    return declared_topics(department_codes(), settings.partitions, settings.replication_factor,
                           settings.min_insync_replicas)


def admin_client(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(**kafka_auth.connection(settings.bootstrap_servers),
                            client_id="onething-admin", request_timeout_ms=15000)


@dataclass
class UpReport:
    kafka: str
    kafka_log: str | None
    postgres: str
    migrations_applied: list[int]
    topics: ApplyReport
    notes: list[str] = field(default_factory=list)
    acls: acls.AclReport | None = None   # None: the cluster runs without authentication


def up(settings: Settings) -> UpReport:
    notes = []
    cluster: KafkaCluster | None = None
    if settings.local_kafka:
        cluster = local_cluster(settings)
        if cluster.running():
            notes.append(_reuse_note(cluster))
        # several JVMs share the cores, and a node killed before recovers every log at start
        cluster.start(timeout=90.0 if cluster.n == 1 else 240.0)
    if settings.local_postgres:
        postgres_local.ensure_local(settings.database_url)
    else:
        postgres_local.wait_connectable(settings.database_url, timeout=30)
    applied = migrations.migrate(settings.database_url)
    admin = admin_client(settings)
    acl_report = None
    try:
        specs = topic_specs(settings)
        report = apply_topics(admin, specs)
        notes.extend(wait_for_leaders(admin, [spec.name for spec in specs]))
        if kafka_auth.mode(settings) == "scram":
            # users only where this side knows every password: the local stack (or ONETHING_ENV=dev);
            # on a cluster of the operator's, the operator creates them, `up` applies the ACLs
            acl_report = acls.apply_acls(admin, acls.catalog_grants(), create_users=kafka_auth.dev_allowed(settings))
        wait_for_group_coordinator(admin)
    finally:
        admin.close()
    return UpReport(
        kafka=settings.bootstrap_servers,
        kafka_log=_server_log(cluster) if cluster else None,
        postgres=_redact_url(settings.database_url),
        migrations_applied=applied,
        topics=report,
        notes=notes,
        acls=acl_report,
    )


def _reuse_note(cluster: KafkaCluster) -> str:
    if cluster.recorded_mode() != cluster.auth:
        return f"kafka: restarting the {'broker' if cluster.n == 1 else 'cluster'} with auth={cluster.auth}"
    if cluster.n == 1:
        return "kafka: reusing the running broker"
    stopped = [n.node_id for n in cluster.nodes if not n.pid()]
    return (f"kafka: reusing the running {cluster.n}-node cluster"
            + (f", starting node(s) {', '.join(map(str, stopped))}" if stopped else ""))


def _server_log(cluster: KafkaCluster) -> str:
    """Where to look when a node misbehaves; for several, in the shell's brace form."""
    if cluster.n == 1:
        return str(cluster.nodes[0].log_dir / "server.log")
    return f"{cluster.home}/node-{{1..{cluster.n}}}/logs/server.log"


def wait_for_leaders(admin: KafkaAdminClient, names: list[str], timeout: float = 60.0) -> list[str]:
    """A created topic is acknowledged once the controller committed it; each broker learns it from the
    metadata log a moment later, and until then answers that it does not know it. Wait until the broker
    asked knows every topic and each partition has a leader, so nothing run right after `up` trips over
    it (on several nodes on a busy machine that moment is seconds). Returns notes for what never did."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            described = admin.describe_topics(names)
        except KafkaError:
            described = []
        pending = sorted({t["name"] for t in described
                          if t["error_code"] or not t["partitions"] or any(p["leader_id"] < 0 for p in t["partitions"])}
                         | (set(names) - {t["name"] for t in described}))
        if not pending:
            return []
        if time.monotonic() > deadline:
            log.warning("kafka.topics.no_leader", topics=pending, waited_s=timeout)
            return [f"kafka: no leader yet for {len(pending)} topic(s) after {timeout:.0f}s: {', '.join(pending[:5])}"]
        time.sleep(0.5)


def wait_for_group_coordinator(admin: KafkaAdminClient, timeout: float = 60.0) -> None:
    """A new broker creates __consumer_offsets on the first group request and answers
    COORDINATOR_NOT_AVAILABLE until it is ready: wait here, so no consumer or admin call
    made right after `up` trips over it."""
    import time

    from kafka.errors import CoordinatorNotAvailableError, NodeNotReadyError

    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.describe_groups(["onething-readiness-probe"])
            return
        except (CoordinatorNotAvailableError, NodeNotReadyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def down(settings: Settings) -> list[str]:
    """Stop what this project started: the local broker. Debian's PostgreSQL is a system
    service shared with other users of the machine, so it is left running unless asked."""
    stopped = []
    if settings.local_kafka:
        cluster = recorded_cluster(settings)   # every node the home holds, whatever the environment says
        if cluster.running():
            cluster.stop()
            stopped.append(f"kafka on {cluster.bootstrap}")
    return stopped


def stop_postgres(settings: Settings) -> bool:
    if not settings.local_postgres:
        return False
    import subprocess

    for row in postgres_local._clusters():
        if row["status"] == "online":
            subprocess.run(["pg_ctlcluster", row["version"], row["name"], "stop"], check=True)
            return True
    return False


@contextmanager
def session(settings: Settings) -> Iterator[UpReport]:
    """The stack up for a while (the test suite, the benchmark): what this brought up — the
    broker, Debian's PostgreSQL cluster — it stops at the end; what it found running it leaves
    running, and PostgreSQL also while another database on it is still connected."""
    broker_was_up = settings.local_kafka and bool(local_cluster(settings).running())
    postgres_was_up = not settings.local_postgres or postgres_local.server_online()
    try:
        yield up(settings)
    finally:
        if settings.local_kafka and not broker_was_up:
            down(settings)
        if not postgres_was_up and not postgres_local.others_connected(settings.database_url):
            stop_postgres(settings)


def _redact_url(url: str) -> str:
    from urllib.parse import urlparse

    p = urlparse(url)
    host = f"{p.hostname}:{p.port or 5432}"
    return f"{p.scheme}://{p.username or ''}@{host}{p.path}"


def status(settings: Settings) -> dict[str, Any]:
    """Brokers (each one: id, address, up or down), the controller quorum, under-replicated partitions,
    the database, every topic with partitions and end offsets, every group with lag. `kafka.state` is
    "up" while the cluster answers; what is wrong with it while it does is `kafka.problems`."""
    result: dict[str, Any] = {"kafka": {"bootstrap": settings.bootstrap_servers},
                              "postgres": {"url": _redact_url(settings.database_url)}}
    result["postgres"].update(postgres_local.server_status(settings.database_url))
    if result["postgres"]["state"] == "up":
        result["postgres"]["schema_version"] = migrations.current_version(settings.database_url)
    local = recorded_cluster(settings) if settings.local_kafka else None
    expected = _local_brokers(local) if local else []
    servers = [hp.rsplit(":", 1) for hp in settings.bootstrap_servers.split(",")]
    if not any(port_open(host, int(port), timeout=1.0) for host, port in servers):
        # no node answers: the local stack's nodes are still listed, each down
        result["kafka"].update(state="down", brokers=kafka_health.brokers([], expected))
        return result
    try:
        admin = admin_client(settings)
    except KafkaError as exc:
        result["kafka"].update(state="down", error=str(exc), brokers=kafka_health.brokers([], expected))
        return result
    consumer = KafkaConsumer(**kafka_auth.connection(settings.bootstrap_servers),
                             client_id="onething-status", enable_auto_commit=False)
    try:
        try:
            cluster = _retrying(admin.describe_cluster)
            described = _retrying(admin.describe_topics)   # every topic, internal ones too: they lose replicas as well
        except KafkaError as exc:   # a port answers, the cluster does not (no quorum, not authorized)
            result["kafka"].update(state="down", error=f"{type(exc).__name__}: {exc}",
                                   brokers=kafka_health.brokers([], expected))
            return result
        brokers = kafka_health.brokers(cluster["brokers"], expected, kafka_health.replica_ids(described))
        quorum = _quorum(admin)
        under = kafka_health.under_replicated(described)
        # describe_cluster's controller_id is, on KRaft, any broker (clients never talk to a controller):
        # the active controller is the quorum's leader
        result["kafka"].update(state="up", cluster_id=cluster["cluster_id"],
                               controller=quorum.get("leader") if quorum else cluster.get("controller_id"),
                               brokers=brokers, quorum=quorum, under_replicated=under,
                               problems=kafka_health.problems(brokers, quorum, under))
        topics = []
        all_tps: list[TopicPartition] = []
        for t in described:
            if t["name"].startswith("__"):
                continue
            tps = [TopicPartition(t["name"], p["partition_index"]) for p in t["partitions"]]
            # a partition without a leader has no end offset to read: asking would wait for the timeout
            all_tps.extend(TopicPartition(t["name"], p["partition_index"]) for p in t["partitions"]
                           if p.get("leader_id", -1) >= 0)
            topics.append({"name": t["name"], "partitions": len(tps), "tps": tps})
        topics.sort(key=lambda t: t["name"])
        ends = _end_offsets(consumer, all_tps, result["kafka"])
        for t in topics:
            tps = t.pop("tps")
            t["end_offsets"] = sum(ends[tp] for tp in tps) if all(tp in ends for tp in tps) else None
        result["topics"] = topics
        result["groups"] = _group_lag(admin, [b["id"] for b in brokers if b["state"] == "up"], ends, result["kafka"])
        result["projections"] = _projection_lag(settings, ends)
    finally:
        consumer.close()
        admin.close()
    return result


def _retrying(call, *args: Any, timeout: float = 15.0, **kwargs: Any) -> Any:
    """An admin call, again while it fails with a retriable error: right after a broker died the client
    may still pick it (the metadata names it until the controller fences it, broker.session.timeout.ms
    later); the next attempt picks another."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(*args, **kwargs)
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _group_lag(admin: KafkaAdminClient, live_brokers: list[int], ends: dict[TopicPartition, int],
               kafka: dict[str, Any]) -> list[dict[str, Any]]:
    """Every consumer group with its lag. Groups are listed by the brokers that are up only: the listing
    asks each broker for the groups it coordinates, and a dead one would fail it all (its groups move to
    another coordinator with their __consumer_offsets partitions)."""
    try:
        names = [g["group_id"] for g in _retrying(admin.list_groups, broker_ids=live_brokers or None)]
        offsets_by_group = _retrying(admin.list_group_offsets, names) if names else {}
    except KafkaError as exc:
        kafka.setdefault("errors", []).append(f"consumer groups: {type(exc).__name__}: {exc}")
        return []
    groups = []
    for group_id in sorted(set(names)):
        offsets = offsets_by_group.get(group_id, {})
        lag = sum(max(0, ends.get(tp, 0) - om.offset) for tp, om in offsets.items() if om.offset >= 0)
        groups.append({"group": group_id, "partitions": len(offsets), "lag": lag})
    return groups


def _local_brokers(cluster: KafkaCluster) -> list[kafka_health.ExpectedBroker]:
    return [kafka_health.ExpectedBroker(n.node_id, n.bootstrap, n.pid(), port_open("127.0.0.1", n.port, timeout=1.0))
            for n in cluster.nodes]


def _quorum(admin: KafkaAdminClient) -> dict[str, Any] | None:
    """The KRaft controller quorum as the brokers forward it from the active controller; None for a
    cluster that has none to describe (ZooKeeper-based: DescribeQuorum is unknown to it)."""
    from kafka.errors import IncompatibleBrokerVersion, UnsupportedVersionError

    try:
        return kafka_health.quorum(_retrying(admin.describe_metadata_quorum))
    except (IncompatibleBrokerVersion, UnsupportedVersionError):
        return None
    except KafkaError as exc:   # no leader elected, not authorized, timed out: shown, not fatal
        return {"leader": None, "error": f"{type(exc).__name__}: {exc}", "voters": [], "observers": []}


def _end_offsets(consumer: KafkaConsumer, tps: list[TopicPartition],
                 kafka: dict[str, Any]) -> dict[TopicPartition, int]:
    """End offsets within 20 s: a leader that has just died is re-elected in seconds, and status must
    answer while it is (its topics then show no end offsets, and `kafka.errors` says why)."""
    if not tps:
        return {}
    try:
        return consumer.end_offsets(tps, timeout_ms=20_000)
    except KafkaError as exc:
        kafka.setdefault("errors", []).append(f"end offsets: {type(exc).__name__}: {exc}")
        return {}


def _projection_lag(settings: Settings, ends: dict[TopicPartition, int]) -> list[dict[str, Any]]:
    """PostgreSQL read models keep their offsets in their own table: their lag is measured there."""
    import psycopg

    try:
        with psycopg.connect(settings.database_url, connect_timeout=3) as conn:
            rows = conn.execute("SELECT consumer, topic, partition, next_offset FROM consumer_offsets").fetchall()
    except psycopg.Error:
        return []
    lag: dict[str, list[int]] = {}
    for consumer, topic, partition, next_offset in rows:
        entry = lag.setdefault(consumer, [0, 0])
        entry[0] += 1
        entry[1] += max(0, ends.get(TopicPartition(topic, partition), 0) - next_offset)
    return [{"projection": name, "partitions": n, "lag": behind} for name, (n, behind) in sorted(lag.items())]
