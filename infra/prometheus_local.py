"""A Prometheus server on the developer's machine that scrapes every process of the system.

Debian's `prometheus` package (installed by infra/onething.sh) is started as a child process
with its configuration, its TSDB and its log under ONETHING_HOME/prometheus, listening on
127.0.0.1:ONETHING_PROMETHEUS_PORT (9090). The scrape targets are the supervisor's children,
names and ports (`targets_of(system(...))`), one job `onething` with the label `process`,
written to a file_sd file so a running server picks up a new list without a restart. The
alert rules are infra/prometheus/alerts.yml. `up()` reuses a server of ours that already
runs (and reloads its configuration); `down()` stops it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog

from .settings import REPO_ROOT

log = structlog.get_logger(__name__)

RULES_DIR = REPO_ROOT / "infra" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
DASHBOARD = REPO_ROOT / "infra" / "grafana" / "onething-dashboard.json"
JOB = "onething"
DEFAULT_PORT = 9090


class PrometheusError(RuntimeError):
    """Prometheus cannot be started here; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    process: str   # the supervisor's name for the child: api, dispatch, adapter-health, …
    address: str   # host:port of its /metrics


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def targets_of(sup) -> list[Target]:
    """Where each child of a Supervisor serves /metrics: its ONETHING_METRICS_PORT, or for the
    intake API its own HTTP port (it serves /metrics there)."""
    out = []
    for name, child in sup.children.items():
        env = {**sup.env, **child.env}
        args = list(child.args)
        component = args[args.index("infra.process") + 1] if "infra.process" in args else name
        if component == "api":
            address = f"{_local(env.get('ONETHING_API_HOST', '127.0.0.1'))}:{env.get('ONETHING_API_PORT') or '8000'}"
        else:
            address = f"127.0.0.1:{env['ONETHING_METRICS_PORT']}"
        out.append(Target(name, address))
    return out


def port_from_env() -> int:
    raw = os.environ.get("ONETHING_PROMETHEUS_PORT") or ""
    try:
        return int(raw) if raw else DEFAULT_PORT
    except ValueError:
        raise PrometheusError(f"ONETHING_PROMETHEUS_PORT must be a port number, got {raw!r}") from None


class LocalPrometheus:
    def __init__(self, home: Path, port: int | None = None, scrape_interval: str = "2s",
                 binary: str = "prometheus"):
        self.dir = Path(home) / "prometheus"
        self.port = port if port is not None else port_from_env()
        self.scrape_interval = scrape_interval
        self.binary = binary
        self.config = self.dir / "prometheus.yml"
        self.targets_file = self.dir / "targets.json"
        self.data = self.dir / "data"
        self.pid_file = self.dir / "prometheus.pid"
        self.log_path = self.dir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- configuration ------------------------------------------------------------------------
    def write_targets(self, targets: list[Target]) -> None:
        """Atomically, so a running server never reads half a file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        groups = [{"targets": [t.address], "labels": {"process": t.process}} for t in targets]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=2))
        tmp.replace(self.targets_file)

    def write_config(self, targets: list[Target]) -> None:
        self.write_targets(targets)
        # JSON is YAML: no templating of YAML by hand
        config = {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval,
                       "external_labels": {"stack": "onething-local"}},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": JOB, "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "5s"}]},
                {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]},
            ],
        }
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(self.config)

    # -- state ----------------------------------------------------------------------------------
    def _pid(self) -> int | None:
        """The pid of our server if it still runs (a recycled pid of another program is not ours)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if f"--config.file={self.config}".encode() not in cmdline:
            return None
        return pid

    def _answering_config(self) -> str | None:
        """The config file of whatever Prometheus answers on our port, or None if nothing does."""
        try:
            r = httpx.get(f"{self.url}/api/v1/status/flags", timeout=2)
            return r.json()["data"].get("config.file") if r.status_code == 200 else ""
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def running(self) -> bool:
        """A server of ours (same config file) answers on the port."""
        answering = self._answering_config()
        return answering is not None and Path(answering).resolve() == self.config.resolve()

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    # -- lifecycle ------------------------------------------------------------------------------
    def up(self, targets: list[Target], timeout_s: float = 60.0) -> bool:
        """Write the configuration and start the server, or reload the one of ours that runs.
        Returns True if it started a server now, False if it reused one."""
        self.write_config(targets)
        if self.running():
            httpx.post(f"{self.url}/-/reload", timeout=10).raise_for_status()
            self._wait_ready(timeout_s, None)
            log.info("prometheus.reused", url=self.url)
            return False
        if self._answering_config() is not None:
            raise PrometheusError(f"port {self.port} is taken by another server (a system Prometheus?); "
                                  f"set ONETHING_PROMETHEUS_PORT to a free port")
        binary = shutil.which(self.binary)
        if not binary:
            raise PrometheusError("no `prometheus` binary: run infra/onething.sh (it installs Debian's "
                                  "prometheus package) or apt-get install prometheus")
        self.data.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")
        proc = subprocess.Popen(
            [binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
             "--storage.tsdb.retention.time=7d", f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.enable-lifecycle", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.pid_file.write_text(str(proc.pid))
        try:
            self._wait_ready(timeout_s, proc)
        except Exception:
            self.down()
            raise
        log.info("prometheus.started", url=self.url, pid=proc.pid)
        return True

    def _wait_ready(self, timeout_s: float, proc: subprocess.Popen | None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
                raise PrometheusError(f"prometheus exited with {proc.returncode}; its log ({self.log_path}):\n{tail}")
            if self.ready():
                return
            time.sleep(0.3)
        raise PrometheusError(f"prometheus not ready on {self.url} after {timeout_s:.0f}s; see {self.log_path}")

    def down(self, timeout_s: float = 20.0) -> bool:
        """Stop the server of ours; returns whether one was running."""
        pid = self._pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)  # started in a session of its own: pid == pgid
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._pid() is not None:
            _reap(pid)
            time.sleep(0.2)
        if self._pid() is not None:
            os.killpg(pid, signal.SIGKILL)
            time.sleep(0.2)
        _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        log.info("prometheus.stopped", pid=pid)
        return True


def _reap(pid: int) -> None:
    """Collect our own child's exit status, so it does not linger as a zombie that os.kill(0) sees."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def for_system(settings, sup, port: int | None = None) -> LocalPrometheus | None:
    """Start (or reuse) the local Prometheus for the children of `sup` (a hook for `onething demo`).
    Never fails the caller: without a usable Prometheus it logs why and returns None."""
    prom = LocalPrometheus(settings.home, port)
    try:
        prom.up(targets_of(sup))
    except (PrometheusError, httpx.HTTPError) as exc:
        log.warning("prometheus.unavailable", error=str(exc)[:300])
        return None
    return prom
