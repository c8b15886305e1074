"""A genuine Apache Kafka broker (KRaft) assembled from Maven Central jars, run with the machine's java.

No Docker, no download mirror: `infra/kafka/pom.xml` pins the release and Maven copies the
runtime jars into a per-user cache, so a second run (even from a fresh clone) downloads
nothing. The same code starts one combined broker+controller for the local stack or a
three-node quorum on one host (`KafkaCluster(n=3, ...)`; `onething up --nodes 3`). How many nodes a
home holds is fixed when it is formatted and recorded in `<home>/nodes.json`, so later commands and
clients find every node without being told (infra/settings.py reads it).

With `auth="scram"` (ONETHING_KAFKA_AUTH) the client and inter-broker listener speaks
SASL/SCRAM-SHA-512, the controller listener SASL/PLAIN (SCRAM credentials live in the metadata
log the controller serves, so it cannot use them itself), KRaft's StandardAuthorizer denies
whatever no ACL allows, and `admin` and `broker` are super users created at format time. The
mode a stack was started in is recorded in `<home>/auth.json`, so its clients use it too
(infra/kafka_security.py holds those settings). `tls=True` (ONETHING_KAFKA_TLS=1; off by default)
serves SASL_SSL there, signed by a CA made for the stack, `<home>/tls/ca.pem`, its clients' trust.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from events import kafka_auth

from . import kafka_security

log = structlog.get_logger(__name__)

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
LOG4J = Path(__file__).resolve().parent / "kafka" / "log4j.properties"
NODES_FILE = "nodes.json"   # <kafka home>/nodes.json: {"nodes": n}, written before the first format


class KafkaStackError(RuntimeError):
    """The local broker could not be assembled, started or stopped; the message says what to do."""


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    if not match:
        raise KafkaStackError(f"{POM}: no <kafka.version> property")
    return match.group(1)


def jar_cache() -> Path:
    base = Path(os.environ.get("ONETHING_CACHE") or Path.home() / ".cache" / "onething")
    return base / f"kafka-{kafka_version()}" / "libs"


def ensure_jars() -> Path:
    """Copy the broker's runtime jars into the cache once; later calls only check a marker."""
    libs = jar_cache()
    marker = libs / ".complete"
    if marker.exists():
        return libs
    libs.mkdir(parents=True, exist_ok=True)
    log.info("kafka.jars.fetch", version=kafka_version(), into=str(libs))
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           "-DincludeScope=runtime", f"-DoutputDirectory={libs}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise KafkaStackError("Maven (mvn) is not installed: apt-get install -y maven") from None
    if proc.returncode != 0:
        raise KafkaStackError(f"mvn could not fetch the Kafka jars:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise KafkaStackError(f"mvn finished but {libs} holds no kafka_2.13 jar")
    marker.write_text(kafka_version())
    return libs


def recorded_nodes(home: Path) -> int | None:
    """How many nodes the stack under `home` was formatted with; None before it was (or before
    this record existed: such a home holds one node)."""
    try:
        nodes = json.loads((Path(home) / NODES_FILE).read_text()).get("nodes")
    except (OSError, ValueError, AttributeError):
        return None
    return nodes if isinstance(nodes, int) and nodes >= 1 else None


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft process (broker and controller in one JVM)."""

    node_id: int
    port: int
    controller_port: int
    home: Path
    heap_mb: int = 1024

    @property
    def dir(self) -> Path:
        return self.home / f"node-{self.node_id}"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def pid_file(self) -> Path:
        return self.dir / "kafka.pid"

    @property
    def config_file(self) -> Path:
        return self.dir / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None


class KafkaCluster:
    """n KRaft nodes on one host with consecutive port pairs starting at `base_port`."""

    def __init__(self, home: Path, n: int = 1, base_port: int = 9092, heap_mb: int | None = None,
                 auth: str | None = None, tls: bool | None = None):
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        self.home = Path(home)
        self.n = n
        if auth is None:
            from .settings import Settings

            auth = Settings.from_env().kafka_auth
        if auth not in kafka_auth.MODES:
            raise ValueError(f"auth must be one of {kafka_auth.MODES}")
        self.auth = auth
        self.tls = os.environ.get(kafka_auth.TLS_ENV) == "1" if tls is None else tls
        self.record = kafka_security.AuthRecord(self.home)
        heap = heap_mb or (1024 if n == 1 else 640)
        self.nodes = [
            KafkaNode(i + 1, base_port + 2 * i, base_port + 2 * i + 1, self.home, heap)
            for i in range(n)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def tls_ca(self) -> Path | None:  # the CA file its clients trust, when it serves TLS
        return kafka_auth.local_ca(self.home) if self.tls else None

    # -- configuration -------------------------------------------------------------------
    def _voters(self) -> str:
        return ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)

    def properties(self, node: KafkaNode, auth: str | None = None) -> str:
        rf = min(3, self.n)
        min_isr = 2 if self.n >= 3 else 1
        lines = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": self._voters(),
            **kafka_security.listener_properties(
                node.port, node.controller_port, auth or self.auth,
                kafka_security.ensure_certificates(self.home / kafka_auth.TLS_DIR) if self.tls else None),
            "log.dirs": str(node.data_dir),
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.partitions": 1,
            "default.replication.factor": rf,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": 12,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 12,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "false",
            "unclean.leader.election.enable": "false",
            "log.retention.hours": -1,
            "log.segment.bytes": 64 * 1024 * 1024,
            # faster failure detection for the fault tests; harmless on one node
            "broker.session.timeout.ms": 6000,
            "broker.heartbeat.interval.ms": 1000,
            "replica.lag.time.max.ms": 10000,
            "controller.quorum.election.timeout.ms": 1000,
            "controller.quorum.fetch.timeout.ms": 2000,
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def _cluster_id(self) -> str:
        path = self.home / "cluster.id"
        if path.exists():
            return path.read_text().strip()
        self.home.mkdir(parents=True, exist_ok=True)
        # Kafka's cluster ids are base64url-encoded UUIDs (22 chars), what StorageTool random-uuid prints
        import base64
        cid = "-"
        while cid.startswith("-"):  # as Kafka's Uuid.randomUuid: a leading '-' reads as an option to kafka-storage
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        path.write_text(cid)
        return cid

    def _java(self, node: KafkaNode, main: str, *args: str, heap_mb: int = 256) -> list[str]:
        libs = ensure_jars()
        return [
            "java", f"-Xms{heap_mb}m", f"-Xmx{heap_mb}m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", f"-Dkafka.logs.dir={node.log_dir}",
            f"-Dlog4j.configuration=file:{LOG4J}",
            "-cp", f"{libs}/*", main, *args,
        ]

    def _write_config(self, node: KafkaNode, auth: str) -> None:
        """server.properties holds the broker's password in scram mode: readable by its owner only."""
        node.dir.mkdir(parents=True, exist_ok=True)
        node.log_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(node.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.properties(node, auth))
        os.chmod(node.config_file, 0o600)

    def format(self, auth: str | None = None) -> None:
        """Format each node's storage once; a formatted node is left alone. In scram mode the
        super users `admin` and `broker` are written into the bootstrap metadata (`--add-scram`),
        in the same JVM run that formats: no extra start-up."""
        auth = auth or self.auth
        cid = self._cluster_id()
        if not self._formatted():   # recorded first: a format that fails half-way is resumed with the same n
            self._record_nodes()
        formatted_now = False
        for node in self.nodes:
            self._write_config(node, auth)
            if (node.data_dir / "meta.properties").exists():
                continue
            cmd = self._java(node, "kafka.tools.StorageTool", "format", "-t", cid,
                             "-c", str(node.config_file), "--ignore-formatted", *kafka_security.format_args(auth))
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
            if proc.returncode != 0:
                raise KafkaStackError(f"formatting node {node.node_id} failed:\n"
                                      f"{kafka_security.redact(proc.stdout + proc.stderr)}")
            formatted_now = True
        if formatted_now:
            self.record.update(scram_users=auth == "scram")

    # -- the recorded mode ---------------------------------------------------------------
    def recorded_mode(self) -> str:
        """The security mode the stack was last started in ("none" before this record existed)."""
        return self.record.mode()

    def _formatted(self) -> bool:
        return any((n.data_dir / "meta.properties").exists() for n in self.nodes)

    def _record_nodes(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.home / (NODES_FILE + ".tmp")
        tmp.write_text(json.dumps({"nodes": self.n}))
        tmp.replace(self.home / NODES_FILE)

    def check_topology(self) -> None:
        """A home formatted for another number of nodes cannot be reused: its quorum's voters and its
        topics' replicas name the nodes it had. Refuse, saying how to get the count asked for."""
        if not any(self.home.glob("node-*/data/meta.properties")):
            return
        had = recorded_nodes(self.home) or 1
        if had != self.n:
            raise KafkaStackError(
                f"{self.home} holds a {had}-node cluster, not {self.n}: run `onething down`, then remove "
                f"{self.home} (its data is lost) or set ONETHING_HOME to another directory, to start "
                f"{self.n} node(s); or leave out --nodes / ONETHING_KAFKA_NODES to use it as it is")

    def _add_super_users(self, timeout: float) -> None:
        """A stack formatted before authentication existed has no SCRAM users, and nobody can log
        in to create them. Start it once as it was (PLAINTEXT, no authorizer), upsert `admin` and
        `broker` through the admin API, stop it: its data is kept. Only ever the local stack."""
        log.warning("kafka.auth.adding_super_users", home=str(self.home),
                    reason="formatted without SCRAM users; adding them over PLAINTEXT, then restarting with SCRAM")
        if not self.running():  # a running one without SCRAM users runs in PLAINTEXT: use it as it is
            self.format(auth="none")
            for node in self.nodes:
                self.start_node(node, wait=False)
        self.wait_ready(timeout, auth="none")
        failed = kafka_security.upsert_super_users(self.bootstrap, self.tls_ca)
        if failed:
            raise KafkaStackError(f"could not create the SCRAM users {failed}")
        self.stop()
        self.record.update(scram_users=True)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> str:
        """Start every node not already running, then wait until the cluster answers. A running
        stack in the other security mode is restarted in this one (with a log line). A home formatted
        for another node count is refused."""
        self.check_topology()
        if self.auth == "scram" and self._formatted() and not self.record.has_super_users():
            self._add_super_users(timeout)   # stops the stack
        was, was_tls = self.recorded_mode(), self.record.tls()
        if self.running() and (was, was_tls) != (self.auth, self.tls):
            log.warning("kafka.auth.restart", home=str(self.home), started_as=was, now=self.auth,
                        tls_was=was_tls, tls=self.tls)
            self.stop()
        self.format()
        for node in self.nodes:
            self.start_node(node, wait=False)
        self.wait_ready(timeout)
        self.record.update(mode=self.auth, tls=self.tls)
        return self.bootstrap

    def start_node(self, node: KafkaNode, wait: bool = True, timeout: float = 90.0) -> None:
        if node.pid():
            return
        if port_open("127.0.0.1", node.port):
            raise KafkaStackError(
                f"port {node.port} is taken by a process this project did not start; "
                f"stop it or set ONETHING_KAFKA_PORT")
        out = open(node.log_dir / "stdout.log", "ab")
        proc = subprocess.Popen(
            self._java(node, "kafka.Kafka", str(node.config_file), heap_mb=node.heap_mb),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=node.dir,
        )
        node.pid_file.write_text(str(proc.pid))
        log.info("kafka.node.started", node=node.node_id, port=node.port, pid=proc.pid, tls=self.tls)
        if wait:
            self.wait_ready(timeout, nodes=[node])

    def wait_ready(self, timeout: float = 90.0, nodes: list[KafkaNode] | None = None,
                   auth: str | None = None) -> None:
        """Ready means every node's broker registered with the quorum and serves metadata."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        nodes = nodes or self.nodes
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for node in nodes:
                if node.pid_file.exists() and not node.pid():
                    raise KafkaStackError(
                        f"kafka node {node.node_id} exited during start; see {node.log_dir / 'server.log'}")
            if all(port_open("127.0.0.1", n.port) for n in nodes):
                try:
                    admin = KafkaAdminClient(**kafka_auth.connection(self.bootstrap, kafka_auth.ADMIN,
                                                                     auth_mode=auth or self.auth, tls_ca=self.tls_ca),
                                             request_timeout_ms=5000, client_id="onething-health")
                    try:
                        brokers = admin.describe_cluster().get("brokers", [])
                    finally:
                        admin.close()
                    if {n.node_id for n in nodes} <= {b["broker_id"] for b in brokers}:
                        return
                except KafkaError as exc:  # not yet elected / registered
                    last = exc
                except OSError as exc:
                    last = exc
            time.sleep(0.5)
        raise KafkaStackError(f"kafka did not become ready in {timeout:.0f}s ({last}); "
                              f"see {self.nodes[0].log_dir / 'server.log'}")

    def stop_node(self, node: KafkaNode, hard: bool = False, timeout: float = 60.0) -> None:
        self._stop([node], hard, timeout)

    def stop(self, hard: bool = False, timeout: float = 60.0) -> None:
        """Signal every node at once: a node stopped after the quorum is gone would wait for it."""
        self._stop(self.nodes, hard, timeout)

    def _stop(self, nodes: list[KafkaNode], hard: bool, timeout: float) -> None:
        pids = {}
        for node in nodes:
            pid = node.pid()
            if pid is None:
                node.pid_file.unlink(missing_ok=True)
                continue
            os.killpg(pid, signal.SIGKILL if hard else signal.SIGTERM)
            pids[node] = pid
        deadline = time.monotonic() + timeout
        for node, pid in pids.items():
            while _alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.2)
            if _alive(pid):
                log.warning("kafka.node.kill", node=node.node_id, reason="did not stop in time")
                os.killpg(pid, signal.SIGKILL)
                while _alive(pid):
                    _reap(pid)
                    time.sleep(0.1)
            node.pid_file.unlink(missing_ok=True)
            log.info("kafka.node.stopped", node=node.node_id, hard=hard)

    def running(self) -> list[KafkaNode]:
        return [n for n in self.nodes if n.pid()]


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def local_cluster(settings, n: int | None = None) -> KafkaCluster:
    """The stack `onething up` runs: `settings.kafka_nodes` nodes (or `n`) from ONETHING_KAFKA_PORT on."""
    return KafkaCluster(settings.kafka_dir, n=n or settings.kafka_nodes, base_port=settings.kafka_port,
                        heap_mb=settings.kafka_heap_mb, auth=settings.kafka_auth)


def recorded_cluster(settings) -> KafkaCluster:
    """Every node the home holds, whatever this environment asks for: what `down` must stop."""
    return local_cluster(settings, n=max(settings.kafka_nodes, recorded_nodes(settings.kafka_dir) or 1))
