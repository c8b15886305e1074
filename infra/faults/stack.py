"""The faults' own stack: three brokers, a PostgreSQL cluster of their own, every process.

Everything lives under ONETHING_HOME/faults and on ports of its own (ONETHING_FAULTS_BASE_PORT,
31000 by default: brokers from base+92, PostgreSQL base+432, the API base+800, metrics
base+400; below Linux's ephemeral range, which starts at 32768, so no outgoing connection holds
one), so a run never meets the demo's, the tests' or the benchmark's stack. PostgreSQL is
a Debian cluster of its own (`pg_createcluster … onething_faults_<port>`), dropped at the end: a fault
scenario restarts it, which must not restart the database anyone else is using.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ..kafka_local import KafkaCluster, KafkaNode

log = structlog.get_logger(__name__)

PG_CLUSTER = "onething_faults_{port}"   # one per port: a developer's run and the suite's never share one


class FaultStackError(RuntimeError):
    """The faults' stack could not be brought up; the message says what failed."""


def _run(cmd: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise FaultStackError(f"{' '.join(cmd)} failed: {proc.stdout[-800:]}{proc.stderr[-800:]}")
    return proc


@dataclass
class PrivatePostgres:
    """A Debian PostgreSQL cluster of the faults' own, on its own port, created and dropped here."""

    port: int
    version: str = field(default_factory=lambda: sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))[-1]
                         .split("/")[4] if glob.glob("/usr/lib/postgresql/*/bin/postgres") else "")

    @property
    def name(self) -> str:
        return PG_CLUSTER.format(port=self.port)

    @property
    def url(self) -> str:
        return f"postgresql://onething:onething@127.0.0.1:{self.port}/onething_faults"

    def _exists(self) -> bool:
        out = _run(["pg_lsclusters", "--no-header"]).stdout
        return any(line.split()[:2] == [self.version, self.name] for line in out.splitlines())

    def up(self) -> None:
        from .. import postgres_local

        postgres_local.install_server()
        if not self.version:
            self.version = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))[-1].split("/")[4]
        if self._exists():   # a run that was killed left it: start over from an empty one
            self.drop()
        _run(["pg_createcluster", self.version, self.name, "--port", str(self.port), "--",
              "--auth-local=peer", "--auth-host=scram-sha-256"], timeout=180)
        # one core's worth of processes, many pools: the API, five hosted processes, the checks
        _run(["pg_conftool", self.version, self.name, "set", "max_connections", "200"])
        _run(["pg_ctlcluster", self.version, self.name, "start"], timeout=120)
        postgres_local.ensure_role_and_database(self.url)
        postgres_local.ensure_roles(self.port)
        postgres_local.wait_connectable(self.url)
        log.info("faults.postgres.up", port=self.port)

    def restart(self, mode: str = "immediate") -> None:
        """`immediate`: as a crash would (no checkpoint; recovery from the WAL at start)."""
        _run(["pg_ctlcluster", "-m", mode, self.version, self.name, "restart"], timeout=180)

    def stop(self, mode: str = "immediate") -> None:
        _run(["pg_ctlcluster", "-m", mode, self.version, self.name, "stop"], timeout=180, check=False)

    def start(self) -> None:
        _run(["pg_ctlcluster", self.version, self.name, "start"], timeout=180)

    def drop(self) -> None:
        if self.version:
            _run(["pg_dropcluster", "--stop", self.version, self.name], timeout=180, check=False)


@dataclass
class TmpfsDisk:
    """A small disk for one broker's log directory, so a scenario can fill it (root only)."""

    path: Path
    size_mb: int = 192
    mounted: bool = False

    def mount(self) -> bool:
        self.path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or shutil.which("mount") is None:
            return False
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)],
                              capture_output=True, text=True)
        self.mounted = proc.returncode == 0
        if not self.mounted:
            log.warning("faults.tmpfs.refused", error=proc.stderr.strip()[:200])
        return self.mounted

    @property
    def ballast(self) -> Path:
        return self.path / "ballast.fill"

    def fill(self) -> int:
        """Take every free byte; returns how many were taken."""
        free = shutil.disk_usage(self.path).free
        with open(self.ballast, "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, free)
            except OSError:   # fallocate stops at the last byte: fill the remainder by writing
                pass
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        return self.ballast.stat().st_size

    def empty(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted or os.path.ismount(self.path):   # also one a killed run left (the reaper's)
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


class FaultStack:
    """Up: the cluster, PostgreSQL, topics, ACLs, migrations; then `system()` supervises every process."""

    def __init__(self, home: Path, base_port: int = 31000, partitions: int = 3, heap_mb: int = 384,
                 disk_node: int | None = 3):
        self.home = Path(home)
        self.base_port = base_port
        self.partitions = partitions
        self.heap_mb = heap_mb
        # the same nodes `onething up` starts from environment() (local_cluster): a handle to kill them
        self.cluster = KafkaCluster(self.home / "kafka", n=3, base_port=base_port + 92, heap_mb=heap_mb, auth="scram")
        self.postgres = PrivatePostgres(base_port + 432)
        self.api_port = base_port + 800
        self.disk: TmpfsDisk | None = None
        if disk_node:
            self.disk = TmpfsDisk(self.node(disk_node).data_dir)
        self.sup = None
        self.reaper = None

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.cluster.nodes if n.node_id == node_id)

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    @property
    def database_url(self) -> str:
        return self.postgres.url

    def environment(self) -> dict[str, str]:
        """What the runner and every child process see: the local 3-node stack as `onething up
        --nodes 3` runs it for an operator (replication 3, min.insync.replicas 2 by default there),
        PostgreSQL named by URL (so nothing here starts or stops Debian's own), development credentials."""
        return {"ONETHING_HOME": str(self.home), "ONETHING_KAFKA_PORT": str(self.base_port + 92),
                "ONETHING_KAFKA_NODES": "3", "ONETHING_KAFKA_HEAP_MB": str(self.heap_mb),
                "DATABASE_URL": self.database_url, "ONETHING_KAFKA_AUTH": "scram", "ONETHING_ENV": "dev",
                "ONETHING_PARTITIONS": str(self.partitions), "ONETHING_API_PORT": str(self.api_port),
                "ONETHING_METRICS_BASE_PORT": str(self.base_port + 400)}

    def settings(self):
        from ..settings import Settings

        return Settings.from_env()

    def up(self, progress=lambda note: None) -> None:
        from .. import stack

        from . import reaper

        if self.cluster.running():
            self.cluster.stop(hard=True)
        self.reaper = reaper.start(self.home, self.base_port)   # takes it all down if this run is SIGKILLed
        if self.disk is not None and os.path.ismount(self.disk.path):   # left by a run that was killed
            self.disk.mounted = True
            self.disk.unmount()
        shutil.rmtree(self.home / "kafka", ignore_errors=True)   # a cluster of the run's own, every time
        if self.disk is not None:
            self.disk.mount()
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "ONETHING_DB_NAME", "ONETHING_REPLICATION_FACTOR",
                     "ONETHING_MIN_INSYNC_REPLICAS"):
            os.environ.pop(name, None)   # the 3-node stack's own defaults, whatever the caller's shell says
        os.environ.update(self.environment())
        progress("PostgreSQL (a cluster of its own)")
        self.postgres.up()
        settings = self.settings()
        if settings.kafka_nodes != 3 or settings.replication_factor != 3 or settings.min_insync_replicas != 2:
            raise FaultStackError(f"the faults' stack must be 3 nodes, replication 3, min.insync.replicas 2; "
                                  f"got {settings.kafka_nodes}, {settings.replication_factor}, "
                                  f"{settings.min_insync_replicas}")
        progress("`onething up --nodes 3`: three brokers, topics, ACLs, migrations")
        stack.up(settings)

    def system(self, processing_s: float = 0.1):
        from ..supervisor import system

        self.sup = system(Path(tempfile.mkdtemp(prefix="faults-", dir=self.home)), self.departments(), env={
            "ONETHING_SIM_PROCESSING_S": str(processing_s),
            "ONETHING_LOG_LEVEL": "WARNING",
            "ONETHING_API_SUBMIT_RATE": "off",   # one demo applicant files every case
            # a department's backend is down while its flag file exists (the outage scenario)
            **{f"ONETHING_SIM_{d.upper()}_OUTAGE_FLAG": str(self.outage_flag(d)) for d in self.departments()},
        })
        return self.sup

    def outage_flag(self, department: str) -> Path:
        return self.home / f"outage-{department}"

    @staticmethod
    def departments() -> list[str]:
        from ..supervisor import newborn_departments   # the load is newborn cases and register changes

        return newborn_departments()

    def down(self) -> None:
        """Every step, whatever the one before it did: nothing of the run may be left running."""
        steps = [lambda: self.sup is not None and self.sup.stop(), lambda: self.cluster.stop(hard=True),
                 lambda: self.disk is not None and self.disk.unmount(), self.postgres.drop,
                 lambda: [self.outage_flag(d).unlink(missing_ok=True) for d in self.departments()]]
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("faults.down_step_failed")
        from . import reaper

        reaper.mark_clean(self.home)
        if self.reaper is not None:   # this run's own: nothing left for it to do
            self.reaper.terminate()
            self.reaper.wait(10)

    def wait_api(self, timeout_s: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sup.check()
            try:
                if httpx.get(f"http://127.0.0.1:{self.api_port}/api/v1/bundles", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise FaultStackError(f"the API did not answer on port {self.api_port} in {timeout_s:.0f} s; "
                              f"see {self.sup.log_dir}/api.log")
