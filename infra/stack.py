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

from . import acls, migrations, postgres_local
from .kafka_local import KafkaCluster, local_cluster, port_open
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
            notes.append("kafka: reusing the running broker" if cluster.recorded_mode() == cluster.auth
                         else f"kafka: restarting the broker with auth={cluster.auth}")
        cluster.start()
    if settings.local_postgres:
        postgres_local.ensure_local(settings.database_url)
    else:
        postgres_local.wait_connectable(settings.database_url, timeout=30)
    applied = migrations.migrate(settings.database_url)
    admin = admin_client(settings)
    acl_report = None
    try:
        report = apply_topics(admin, topic_specs(settings))
        if kafka_auth.mode(settings) == "scram":
            # users only where this side knows every password: the local stack (or ONETHING_ENV=dev);
            # on a cluster of the operator's, the operator creates them, `up` applies the ACLs
            acl_report = acls.apply_acls(admin, acls.catalog_grants(), create_users=kafka_auth.dev_allowed(settings))
        wait_for_group_coordinator(admin)
    finally:
        admin.close()
    return UpReport(
        kafka=settings.bootstrap_servers,
        kafka_log=str(cluster.nodes[0].log_dir / "server.log") if cluster else None,
        postgres=_redact_url(settings.database_url),
        migrations_applied=applied,
        topics=report,
        notes=notes,
        acls=acl_report,
    )


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
        cluster = local_cluster(settings)
        if cluster.running():
            cluster.stop()
            stopped.append(f"kafka on {settings.bootstrap_servers}")
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
    """Broker, database, every topic with partitions and end offsets, every group with lag."""
    result: dict[str, Any] = {"kafka": {"bootstrap": settings.bootstrap_servers},
                              "postgres": {"url": _redact_url(settings.database_url)}}
    result["postgres"].update(postgres_local.server_status(settings.database_url))
    if result["postgres"]["state"] == "up":
        result["postgres"]["schema_version"] = migrations.current_version(settings.database_url)
    first = settings.bootstrap_servers.split(",")[0].rsplit(":", 1)
    if not port_open(first[0], int(first[1]), timeout=1.0):
        result["kafka"]["state"] = "down"
        return result
    try:
        admin = admin_client(settings)
    except KafkaError as exc:
        result["kafka"].update(state="down", error=str(exc))
        return result
    consumer = KafkaConsumer(**kafka_auth.connection(settings.bootstrap_servers),
                             client_id="onething-status", enable_auto_commit=False)
    try:
        cluster = admin.describe_cluster()
        result["kafka"].update(state="up", cluster_id=cluster["cluster_id"],
                               brokers=[f"{b['host']}:{b['port']}" for b in cluster["brokers"]])
        names = sorted(t for t in admin.list_topics() if not t.startswith("__"))
        topics = []
        all_tps: list[TopicPartition] = []
        for t in admin.describe_topics(names):
            tps = [TopicPartition(t["name"], p["partition_index"]) for p in t["partitions"]]
            all_tps.extend(tps)
            topics.append({"name": t["name"], "partitions": len(tps), "tps": tps})
        topics.sort(key=lambda t: t["name"])
        ends = consumer.end_offsets(all_tps) if all_tps else {}
        for t in topics:
            t["end_offsets"] = sum(ends.get(tp, 0) for tp in t.pop("tps"))
        result["topics"] = topics
        groups = []
        names = [g["group_id"] for g in admin.list_groups()]
        offsets_by_group = admin.list_group_offsets(names) if names else {}
        for group_id in sorted(names):
            offsets = offsets_by_group.get(group_id, {})
            lag = sum(max(0, ends.get(tp, 0) - om.offset) for tp, om in offsets.items() if om.offset >= 0)
            groups.append({"group": group_id, "partitions": len(offsets), "lag": lag})
        result["groups"] = groups
        result["projections"] = _projection_lag(settings, ends)
    finally:
        consumer.close()
        admin.close()
    return result


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
