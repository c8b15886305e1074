"""Connection settings, read from the environment so the same code runs locally and in production.

Every name is documented in the README ("Settings"). Local defaults describe the stack that
`onething up` starts itself; in production the operator sets the URLs and the project never
starts a server of its own.
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
    def from_env(cls) -> "Settings":
        env = os.environ
        bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS") or ""
        db = env.get("DATABASE_URL") or ""
        port = _int("ONETHING_KAFKA_PORT", 9092)
        home = Path(env.get("ONETHING_HOME") or REPO_ROOT / ".onething").resolve()
        return cls(
            bootstrap_servers=bootstrap or f"127.0.0.1:{port}",
            database_url=db or LOCAL_DATABASE_URL.format(db=env.get("ONETHING_DB_NAME") or "onething"),
            local_kafka=not bootstrap or env.get("ONETHING_LOCAL_KAFKA") == "1",
            local_postgres=not db,
            home=home,
            kafka_port=port,
            kafka_controller_port=_int("ONETHING_KAFKA_CONTROLLER_PORT", port + 1),
            kafka_heap_mb=_int("ONETHING_KAFKA_HEAP_MB", 1024),
            partitions=_int("ONETHING_PARTITIONS", 6),
            replication_factor=_int("ONETHING_REPLICATION_FACTOR", 1),
            min_insync_replicas=_int("ONETHING_MIN_INSYNC_REPLICAS", 1),
            metrics_port=_int("ONETHING_METRICS_PORT", 0),
            service_name=env.get("ONETHING_SERVICE_NAME", "onething"),
            kafka_auth=_kafka_auth(env.get("ONETHING_KAFKA_AUTH") or DEFAULT_KAFKA_AUTH),
            kafka_auth_explicit=bool(env.get("ONETHING_KAFKA_AUTH")),
        )

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"
