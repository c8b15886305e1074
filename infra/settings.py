"""Connection settings, read from the environment so the same code runs locally and in production.

Every name is documented in the README ("Settings"). Local defaults describe the stack that
`onething up` starts itself; in production the operator sets the URLs and the project never
starts a server of its own.

The local stack has one node or several (`onething up --nodes 3`, ONETHING_KAFKA_NODES): the count
is recorded in its home when it is formatted, so every later command and client of that home reads
all its nodes into the bootstrap string without being told again, and the topics get the production
settings (replication 3, min.insync.replicas 2) by default on three nodes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_BOOTSTRAP = "127.0.0.1:9092"
LOCAL_DATABASE_URL = "postgresql://onething:onething@127.0.0.1:5432/{db}"
#: Kafka security when ONETHING_KAFKA_AUTH is unset: "none" (PLAINTEXT) or "scram" (SASL/SCRAM-SHA-512 + ACLs)
DEFAULT_KAFKA_AUTH = "scram"


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"environment variable {name} must be an integer, got {raw!r}") from None


def _kafka_nodes(raw: int, source: str) -> int:
    if raw < 1:
        raise SystemExit(f"{source} must be at least 1, got {raw}")
    return raw


def local_bootstrap(port: int, nodes: int) -> str:
    """Every node of the local stack, by KafkaCluster's port scheme (node i: port + 2*i, its controller + 1):
    a client that knows all of them still finds the cluster when the first one is down."""
    return ",".join(f"127.0.0.1:{port + 2 * i}" for i in range(nodes))


def _kafka_auth(raw: str) -> str:
    if raw not in ("none", "scram"):
        raise SystemExit(f"environment variable ONETHING_KAFKA_AUTH must be none or scram, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = LOCAL_BOOTSTRAP
    database_url: str = LOCAL_DATABASE_URL.format(db="onething")
    #: start and stop a broker of our own (true unless KAFKA_BOOTSTRAP_SERVERS names one)
    local_kafka: bool = True
    #: install/start Debian's PostgreSQL (true unless DATABASE_URL names a server)
    local_postgres: bool = True
    home: Path = field(default_factory=lambda: REPO_ROOT / ".onething")
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap_mb: int = 1024
    #: nodes of the local stack: ONETHING_KAFKA_NODES / `up --nodes`, else what its home recorded, else 1
    kafka_nodes: int = 1
    partitions: int = 6
    replication_factor: int = 1
    min_insync_replicas: int = 1
    metrics_port: int = 0
    service_name: str = "onething"
    #: "none" | "scram" (events/kafka_auth.py, infra/acls.py)
    kafka_auth: str = DEFAULT_KAFKA_AUTH
    #: ONETHING_KAFKA_AUTH was set; otherwise clients of a running local stack use the mode it recorded
    kafka_auth_explicit: bool = False

    @classmethod
    def from_env(cls, kafka_nodes: int | None = None) -> "Settings":
        """`kafka_nodes` (the CLI's `--nodes`) overrides ONETHING_KAFKA_NODES and the home's record."""
        env = os.environ
        bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS") or ""
        db = env.get("DATABASE_URL") or ""
        port = _int("ONETHING_KAFKA_PORT", 9092)
        home = Path(env.get("ONETHING_HOME") or REPO_ROOT / ".onething").resolve()
        local_kafka = not bootstrap or env.get("ONETHING_LOCAL_KAFKA") == "1"
        # a cluster of the operator's is not ours to count: its topics' settings are set explicitly
        nodes = _local_nodes(kafka_nodes, home / "kafka") if local_kafka else 1
        return cls(
            bootstrap_servers=bootstrap or local_bootstrap(port, nodes),
            database_url=db or LOCAL_DATABASE_URL.format(db=env.get("ONETHING_DB_NAME") or "onething"),
            local_kafka=local_kafka,
            local_postgres=not db,
            home=home,
            kafka_port=port,
            kafka_controller_port=_int("ONETHING_KAFKA_CONTROLLER_PORT", port + 1),
            # three JVMs share the machine: each gets less (KafkaCluster's own default for several nodes)
            kafka_heap_mb=_int("ONETHING_KAFKA_HEAP_MB", 1024 if nodes == 1 else 640),
            kafka_nodes=nodes,
            partitions=_int("ONETHING_PARTITIONS", 6),
            # the production settings on a local cluster that can hold them; an explicit value wins
            replication_factor=_int("ONETHING_REPLICATION_FACTOR", min(3, nodes)),
            min_insync_replicas=_int("ONETHING_MIN_INSYNC_REPLICAS", 2 if nodes >= 3 else 1),
            metrics_port=_int("ONETHING_METRICS_PORT", 0),
            service_name=env.get("ONETHING_SERVICE_NAME", "onething"),
            kafka_auth=_kafka_auth(env.get("ONETHING_KAFKA_AUTH") or DEFAULT_KAFKA_AUTH),
            kafka_auth_explicit=bool(env.get("ONETHING_KAFKA_AUTH")),
        )

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"


def _local_nodes(explicit: int | None, kafka_dir: Path) -> int:
    """The `--nodes` given, else ONETHING_KAFKA_NODES, else what the stack in `kafka_dir` recorded
    when it was formatted (infra/kafka_local.py), else one node."""
    if explicit is not None:
        return _kafka_nodes(explicit, "--nodes")
    if os.environ.get("ONETHING_KAFKA_NODES"):
        return _kafka_nodes(_int("ONETHING_KAFKA_NODES", 1), "environment variable ONETHING_KAFKA_NODES")
    from .kafka_local import recorded_nodes  # lazy: the record's format lives with the cluster that writes it

    return recorded_nodes(kafka_dir) or 1
