"""Every process serves Prometheus metrics: events consumed and produced per topic and type,
processing latency, consumer lag, cases by state — scraped from the real processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from events import bus

from .support.fast_forward import skip_history
from .support.newborn import submission
from .support.topics import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parent.parent


def _start(component: str, *args: str, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "infra.process", component, *args], cwd=ROOT,
                            env={**os.environ, "ONETHING_METRICS_PORT": str(port)}, start_new_session=True,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return ""


def test_dispatch_adapter_and_case_view_expose_their_series(bootstrap, database_url, tmp_path):
    skip_history(bootstrap, database_url)  # from the log's end, whatever offsets an earlier run stored
    procs = {"dispatch": _start("dispatch", port=19481, log=tmp_path / "d.log"),
             "health": _start("adapter", "health", port=19482, log=tmp_path / "a.log"),
             "case-view": _start("case-view", port=19483, log=tmp_path / "v.log")}
    try:
        producer = bus.make_producer(bootstrap)
        bus.publish(producer, "applications", submission())
        producer.close()
        wanted = {
            19481: ['onething_events_consumed_total{event_type="ApplicationSubmitted",group="dispatch"',
                    'onething_events_produced_total{event_type="TaskDispatched"', "onething_processing_seconds_bucket"],
            19482: ['onething_adapter_tasks_total{department="health"', "onething_consumer_lag{group=\"adapter.health\""],
            19483: ["onething_cases{", 'onething_events_consumed_total{event_type="ApplicationSubmitted",group="projection.case_view"',
                    "onething_consumer_lag{group=\"projection.case_view\""],
        }

        def all_present() -> bool:
            return all(all(series in _scrape(port) for series in names) for port, names in wanted.items())

        ok = wait_for(all_present, 120, 2)
        missing = {port: [s for s in names if s not in _scrape(port)] for port, names in wanted.items()}
        assert ok, missing
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
