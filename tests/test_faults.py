"""The short form of `onething faults`, as the README's test command runs it.

On a stack of its own (three brokers, a PostgreSQL cluster of its own, every process of
`onething run`, ports from 30000), under a steady load of applications and register changes:
the leader of applications[0] killed and started again, PostgreSQL stopped at once and started
again. What a user would
notice is asserted from the run's own verification (infra/faults/verify.py): every application
answered 202 completed, once, with one child in the police register and one decision per
service; every register change applied once and in order at every copy; every read model (case
view, KPIs, escalation queue, ratings, read audit, deadlines) equal to a rebuild from the log,
none of them empty (completed cases are rated, escalated and read by a clerk during the faults);
no 5xx but 503 with Retry-After; nothing dead-lettered; each scenario recovered.
And the command stops everything it started. The whole list is `onething faults`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from infra.kafka_local import port_open
from tests.support.scale import LONG

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.broker, pytest.mark.postgres]
BASE = 30000


def faults_env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "ONETHING_KAFKA_PORT", "ONETHING_DB_NAME",
                        "ONETHING_METRICS_BASE_PORT", "ONETHING_API_PORT")}
    env.update(ONETHING_HOME=str(home), ONETHING_FAULTS_BASE_PORT=str(BASE), ONETHING_ENV="dev")
    return env


@pytest.mark.timeout(1500)   # the run's own bound (below) comes first, and stops it cleanly
def test_the_short_fault_scenarios_lose_nothing_and_leave_nothing_running(tmp_path):
    out = tmp_path / "faults.json"
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "faults", "--short", "--json", str(out)],
                            env=faults_env(tmp_path / "home"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=1200)
    except subprocess.TimeoutExpired:   # SIGTERM: the run takes its stack down, then the test fails
        proc.terminate()
        output, _ = proc.communicate(timeout=240)
        pytest.fail(f"onething faults --short ran over 1200 s; its output:\n{output[-6000:]}")
    tail = output[-6000:]
    assert out.exists(), tail
    result = json.loads(out.read_text())
    rows = {r["scenario"]: r for r in result["rows"]}
    assert {"leader of applications[0] killed", "PostgreSQL restarted"} <= set(rows), tail
    for name, r in rows.items():
        assert r["accepted"] > 0, f"{name}: no application accepted in its window"
        assert (r["lost"], r["duplicated"], r["server_errors"], r["refused"]) == (0, 0, 0, 0), (name, r)
        assert r["completed"] == r["accepted"], (name, r)
        assert r["ok"], (name, r["notes"])
        if name != "steady load (no fault)":
            assert r["recover_s"] is not None, f"{name} did not recover: {r['notes']}"
    # what `onething status` showed the operator meanwhile: the killed node down, partitions under-replicated
    seen = rows["leader of applications[0] killed"]["facts"]
    assert len(seen["down"]) == 1 and seen["under_replicated"] > 0 and seen["controller"] is not None, seen
    assert result["register_changes"] > 0 and not result["register_problems"], result["register_problems"][:5]
    # every read model the system runs was rebuilt from the log and compared, none skipped, none different
    models = result["read_models"]
    assert set(models) >= {"case_view", "kpis", "escalation_queue", "ratings", "read_audit", "deadlines"}, \
        sorted(models)
    for model, r in models.items():
        assert r["error"] is None and r["tables"], (model, r["error"])
        assert r["same_offsets"], f"{model}: compared at other offsets than the live one's"
        assert r["differing_rows"] == 0, (model, {t: d for t, d in r["tables"].items() if d["rows"]})
    # and none of them vacuously: completed cases were rated, escalated and read by a clerk meanwhile
    assert min(result["aftercare"].values()) > 0 and not result["aftercare_problems"], \
        (result["aftercare"], result["aftercare_problems"][:5])
    for model, table in (("escalation_queue", "escalation_queue"), ("ratings", "case_ratings"),
                         ("ratings", "rectifications"), ("read_audit", "audit_reads"),
                         ("kpis", "kpi_escalations"), ("deadlines", "deadline_clocks")):
        assert models[model]["tables"][table]["live_rows"] > 0, f"{model}.{table} was empty: compared nothing"
    assert result["dead_letters"] == 0
    assert all(result["checks"].values()), result["checks"]
    assert proc.returncode == 0, tail

    # nothing left: no broker, API or PostgreSQL port, no process of its home, no PostgreSQL cluster
    for port in (BASE + 92, BASE + 94, BASE + 96, BASE + 432, BASE + 800):
        assert not port_open("127.0.0.1", port), f"port {port} still listening after the run"
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "home")], capture_output=True, text=True).stdout.strip()
    assert not left, f"processes of the run still running: {left}"
    clusters = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout
    assert f"onething_faults_{BASE + 432}" not in clusters


@pytest.mark.skipif(not LONG, reason="a second 3-node stack: ONETHING_TEST_SCALE=long (README, Tests)")
@pytest.mark.timeout(600)
def test_a_run_killed_with_sigkill_leaves_no_broker_cluster_or_disk_behind(tmp_path):
    """The CI job's time limit, the OOM killer: no code of the run's own runs, its reaper does."""
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "faults", "--short"], env=faults_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster = f"onething_faults_{BASE + 432}"
    up = lambda: port_open("127.0.0.1", BASE + 92) and port_open("127.0.0.1", BASE + 432)
    deadline = time.monotonic() + 300
    while not up() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
    assert up(), "the faults' stack did not come up"
    proc.kill()
    proc.wait()
    gone = lambda: (not any(port_open("127.0.0.1", BASE + p) for p in (92, 94, 96, 432, 800))
                    and cluster not in subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True,
                                                      text=True).stdout
                    and not subprocess.run(["pgrep", "-f", str(home)], capture_output=True).stdout.strip())
    deadline = time.monotonic() + 180
    while not gone() and time.monotonic() < deadline:
        time.sleep(1)
    assert gone(), (home / "faults" / "reaper.log").read_text() if (home / "faults" / "reaper.log").exists() else ""
    assert not os.path.ismount(home / "faults" / "kafka" / "node-3" / "data")
