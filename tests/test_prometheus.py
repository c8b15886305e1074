"""The SRE view: alert rules checked and unit-tested with promtool, and a real Prometheus server
(Debian's package) scraping a running system, asked through its HTTP API for the key series,
the loaded rules and every expression of the Grafana dashboard."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from events import bus
from infra import prometheus_local
from infra.prometheus_local import ALERTS, DASHBOARD, LocalPrometheus, targets_of
from infra.supervisor import system

from .support.fast_forward import skip_history
from .support.newborn import submission
from .support.topics import wait_for

ROOT = Path(__file__).resolve().parent.parent
ALERTS_TEST = ROOT / "infra" / "prometheus" / "alerts_test.yml"
ALERT_NAMES = {"OnethingProcessDown", "OnethingConsumerLagGrowing", "OnethingDeadLetters", "OnethingDeadlineBreached",
               "OnethingEscalationsOverdue", "OnethingRectificationsOverdue", "OnethingCascadeBacklogStuck",
               "OnethingDecisionNotAuthorised"}
DEPARTMENTS = ["health", "police"]  # a few adapters are enough to see their series


def _promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: infra/onething.sh installs Debian's prometheus package"
    return subprocess.run([tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


# -- (a) the rules, offline ------------------------------------------------------------------------
def test_alert_rules_pass_promtool_check():
    done = _promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_fire_on_synthetic_series_and_stay_silent_otherwise():
    done = _promtool("test", "rules", str(ALERTS_TEST))
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text()))
    assert tested == ALERT_NAMES, "every alert has a unit test"


def test_alert_labels_carry_no_personal_data():
    text = ALERTS.read_text()
    for forbidden in ("case_id", "resident_id", "id_token", "name", "mobile", "receipt_no"):
        assert f"$labels.{forbidden}" not in text and f"{forbidden}=" not in text, forbidden


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def test_dashboard_parses_and_every_panel_has_a_query():
    d = _dashboard()
    assert d["schemaVersion"] >= 36 and d["uid"]
    assert any(v["name"] == "DS_PROMETHEUS" and v["type"] == "datasource" for v in d["templating"]["list"])
    panels = _panels(d)
    assert len(panels) >= 12
    for p in panels:
        assert p.get("targets"), p["title"]
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        for t in p["targets"]:
            assert t.get("expr", "").strip(), p["title"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in ("onething_consumer_lag", "onething_events_consumed_total", "onething_events_produced_total",
                   "onething_processing_seconds_bucket", "onething_dead_letters_total",
                   "onething_deadlines_breached_total", "onething_escalations_open", "onething_rectifications_open",
                   "onething_cases", "onething_api_request_seconds_bucket", "onething_cascade_pending_targets", "up{"):
        assert metric in exprs, f"no panel shows {metric}"
    ys = [(p["gridPos"]["y"], p["gridPos"]["x"]) for p in d["panels"]]
    assert len(set(ys)) == len(ys), "panels overlap"


def _as_promql(expr: str) -> str:
    """Grafana's variables as Prometheus would see them once Grafana filled them in."""
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")
            .replace("$group", ".*"))


# -- (b, c) a real Prometheus scraping a running system ----------------------------------------------
def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_block(n: int, start: int = 19600, stop: int = 20000) -> int:
    """A base port with n free ports after it (other tests use the stack's 19400 + index)."""
    for base in range(start, stop, 50):
        if all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free block of ports")


@pytest.fixture(scope="module")
def live(running_stack, tmp_path_factory):
    """The system (api, core, read models, the adapters of two departments, the deadline clock) and
    a Prometheus scraping it; both stopped afterwards."""
    settings = running_stack
    if not shutil.which("prometheus"):
        pytest.fail("prometheus missing: infra/onething.sh installs Debian's prometheus package")
    api_port = _free_block(1, 18600, 18900)
    env = {"ONETHING_METRICS_BASE_PORT": str(_free_block(20)), "ONETHING_API_PORT": str(api_port),
           "ONETHING_CASCADE_START": "latest", "ONETHING_SIM_PROCESSING_S": "0"}
    skip_history(settings.bootstrap_servers, settings.database_url)  # from the log's end, not an earlier run's
    sup = system(tmp_path_factory.mktemp("logs"), departments=DEPARTMENTS, env=env)
    # a TSDB of the test's own: series a previous run left (up to 5 minutes old) must not count
    home = tmp_path_factory.mktemp("home")
    port = int(os.environ.get("ONETHING_PROMETHEUS_PORT") or 19090)
    prom = LocalPrometheus(home, port if _free(port) else _free_block(1, 19091, 19190))
    sup.start()
    started = False
    try:
        started = prom.up(targets_of(sup))
        # events flow: applications through the broker, so throughput and latency series exist; a
        # dozen keys reach every partition, whichever members of the groups own them (the groups
        # start where they are: moving their offsets could skip another test's events)
        producer = bus.make_producer(settings.bootstrap_servers)
        try:
            bus.publish_all(producer, [("applications", submission()) for _ in range(12)])
        finally:
            producer.close()
        yield prom, sup
    finally:
        if started:
            prom.down()
        sup.stop()


def _query(prom: LocalPrometheus, expr: str) -> list[dict]:
    r = httpx.get(f"{prom.url}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _targets(prom: LocalPrometheus) -> dict[str, str]:
    body = httpx.get(f"{prom.url}/api/v1/targets", params={"state": "active"}, timeout=10).json()
    return {t["labels"]["process"]: t["health"] for t in body["data"]["activeTargets"]
            if t["labels"].get("job") == prometheus_local.JOB}


def _target_errors(prom: LocalPrometheus) -> dict[str, str]:
    body = httpx.get(f"{prom.url}/api/v1/targets", params={"state": "active"}, timeout=10).json()
    return {t["labels"].get("process", "?"): t.get("lastError", "") for t in body["data"]["activeTargets"]}


@pytest.mark.broker
@pytest.mark.postgres
def test_prometheus_scrapes_every_process_and_finds_the_key_series(live):
    prom, sup = live
    expected = set(sup.children)
    assert expected == {"api", "core", "read-models", "adapters", "deadlines"}

    def all_up() -> bool:
        sup.check()
        targets = _targets(prom)
        return set(targets) == expected and set(targets.values()) == {"up"}

    # the scrape targets are the supervisor's children, and every one answers
    assert wait_for(all_up, 60, 1), (expected, _targets(prom))

    wanted = {
        "every process up": 'up{job="onething"} == 1',
        "lag of dispatch": 'onething_consumer_lag{group="dispatch",process="core"}',
        "lag of the case view": 'onething_consumer_lag{group="projection.case_view",process="read-models"}',
        "lag of an adapter": 'onething_consumer_lag{group=~"adapter.+",process="adapters"}',
        "checkpoints of the runtime": 'onething_checkpoints_total{group="dispatch",outcome="committed"}',
        "events consumed by dispatch": 'onething_events_consumed_total{group="dispatch"}',
        "events consumed by the case view": 'onething_events_consumed_total{group="projection.case_view"}',
        "events produced": 'onething_events_produced_total{event_type="TaskDispatched"}',
        "processing latency": 'onething_processing_seconds_bucket{group="dispatch"}',
        "dead letters (at 0 from start)": 'onething_dead_letters_total{group="dispatch"}',
        "cascade backlog": "onething_cascade_pending_targets",
        "cases by status": "onething_cases",
        "api latency": "onething_api_request_seconds_bucket",
    }
    missing: dict[str, str] = {}

    def present() -> bool:
        missing.clear()
        missing.update({what: e for what, e in wanted.items() if not _query(prom, e)})
        return not missing

    assert wait_for(present, 60, 2), missing

    def every_process_up() -> bool:
        sup.check()
        return {r["metric"]["process"]: r["value"][1] for r in _query(prom, 'up{job="onething"}')} == \
            {name: "1" for name in expected}

    assert wait_for(every_process_up, 30, 1), (_query(prom, 'up{job="onething"}'), _target_errors(prom))
    labels = {k for r in _query(prom, "onething_consumer_lag") for k in r["metric"]}
    assert labels <= {"__name__", "group", "topic", "partition", "job", "instance", "process", "stack"}, labels

    rules = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting"}
    assert loaded == ALERT_NAMES, loaded
    assert all(r.get("health") in ("ok", "unknown") for g in rules for r in g["rules"]), rules
    # (pending at the very start, before the processes served /metrics, is allowed: that is what `for: 1m` is for)
    firing_down = _query(prom, 'ALERTS{alertname="OnethingProcessDown",alertstate="firing"}')
    assert firing_down == [], firing_down


@pytest.mark.broker
@pytest.mark.postgres
def test_every_dashboard_query_is_accepted_by_prometheus(live):
    prom, _sup = live
    panels = _panels(_dashboard())
    rejected = {}
    for p in panels:
        for t in p["targets"]:
            r = httpx.get(f"{prom.url}/api/v1/query", params={"query": _as_promql(t["expr"])}, timeout=10)
            if r.status_code != 200 or r.json().get("status") != "success":
                rejected[f'{p["title"]} / {t["refId"]}'] = r.text[:300]
    assert not rejected, rejected

    # the panels the issue names show data from the running system
    by_title = {p["title"]: p for p in panels}
    for title in ("Process up 进程存活", "Consumer lag by group 消费积压", "Events consumed /s 消费速率",
                  "Events produced /s 生产速率", "Processing latency p50 / p95 / p99 处理耗时", "Dead letters 死信",
                  "Cascade backlog 联动积压", "Cases by status 办件状态"):
        expr = _as_promql(by_title[title]["targets"][0]["expr"])
        assert wait_for(lambda e=expr: bool(_query(prom, e)), 30, 2), f"panel {title!r} has no data: {expr}"
