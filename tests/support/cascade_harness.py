"""Running the cascade against the real broker and PostgreSQL without touching anyone else's work.

Topics are shared with other tests and with anything else running on the machine, so:
- every run uses register keys of its own (synthetic USCCs and resident IDs, valid checksums);
- the cascade runs under a name of its own (its consumer group, stored offsets and state rows),
  starting at the current end of the topics (`ONETHING_CASCADE_START=latest`);
- department adapters run in groups of their own, start at the end of the task topics, and
  pass over every task that is not a register sync of this run's keys without a decision.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psycopg

from events import kafka_auth
from catalog.validators import USCC_ALPHABET, resident_id_check_char, uscc_check_char
from department_adapters.reference.register_copy import RegisterCopyBackend
from department_adapters.sdk import Adapter

ROOT = Path(__file__).resolve().parent.parent.parent
_ORG = [c for c in USCC_ALPHABET]


def new_uscc(rng: random.Random, entity_class: str = "1", region: str = "310115") -> str:
    """A valid USCC registered by market regulation (9), of entity class 1 (company) or 2 (individual business)."""
    body = "9" + entity_class + region + "".join(rng.choice(_ORG) for _ in range(9))
    return body + uscc_check_char(body)


def new_resident_id(rng: random.Random, region: str = "310104") -> str:
    first17 = f"{region}{rng.randint(1940, 2000)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    return first17 + resident_id_check_char(first17)


def company_fields(rng: random.Random, n: int = 0, company_type: str = "limited_liability") -> dict[str, str]:
    return {"name": f"上海测试{n}号有限公司", "address": f"上海市浦东新区张江路{rng.randint(1, 999)}号",
            "legal_representative_name": rng.choice(["张伟", "王芳", "李娜", "刘洋"]),
            "legal_representative_resident_id": new_resident_id(rng),
            "business_scope": "软件开发；信息技术咨询服务", "registered_capital": str(rng.randint(10, 5000)),
            "company_type": company_type, "established_on": f"20{rng.randint(10, 20)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"}


class RunAdapter(Adapter):
    """The SDK's adapter in a group of this run, starting at the end of the task topic, deciding
    only register syncs of this run's keys (everything else is passed over without a decision)."""

    def __init__(self, backend, bootstrap: str, database_url: str, *, group: str, keys: Iterable[str],
                 retry_for_s: float = 2.0):
        self.keys = set(keys)
        super().__init__(backend, bootstrap, database_url, retry_for_s=retry_for_s, group=group, start="latest",
                         keep=lambda t: t.key in self.keys and t.payload.get("kind") == "register_sync",
                         consumer_options={"fetch_max_wait_ms": 100}, max_poll_records=50)


class AdapterThreads:
    """Adapters for several departments, one thread each (for the smaller flow tests)."""

    def __init__(self, bootstrap: str, database_url: str, departments: Iterable[str], run: str, keys: set[str]):
        self.stopping = threading.Event()
        self.adapters = [RunAdapter(RegisterCopyBackend(d), bootstrap, database_url, group=f"adapter.{d}.test-{run}",
                                    keys=keys) for d in departments]
        self.threads: list[threading.Thread] = []

    def start(self) -> "AdapterThreads":
        for a in self.adapters:
            a.ready()
        for a in self.adapters:
            t = threading.Thread(target=a.run, args=(self.stopping.is_set,), daemon=True, name=f"adapter-{a.department}")
            t.start()
            self.threads.append(t)
        return self

    def add_keys(self, keys: Iterable[str]) -> None:
        for a in self.adapters:
            a.keys.update(keys)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(10)
        for a in self.adapters:
            a.close()


def foreign_adapters(bootstrap: str, departments: Iterable[str]) -> list[str]:
    """The departments' own adapter groups (`adapter.<department>`) that have live members. They
    would answer this run's sync tasks too, and the SDK's idempotency on task id would then keep
    this run's adapters from ever applying them."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap), client_id="onething-cascade-tests")
    try:
        groups = admin.describe_groups([f"adapter.{d}" for d in departments])
    finally:
        admin.close()
    return sorted(g for g, info in groups.items() if info.get("members"))


def skip_if_foreign_adapters(bootstrap: str, departments: Iterable[str]) -> None:
    """A running `onething run`/`demo` would answer this run's sync tasks first: say so and stop."""
    import pytest

    busy = foreign_adapters(bootstrap, departments)
    if busy:
        pytest.fail(f"other processes run {', '.join(busy)} (e.g. `onething run`); stop them to run the cascade "
                    "tests, whose sync tasks they would answer")


# --- processes (so a test can kill -9 them) -------------------------------------------------------

def cascade_env(name: str, **overrides: str) -> dict[str, str]:
    env = {**os.environ, "ONETHING_CASCADE_NAME": name, "ONETHING_CASCADE_START": "latest",
           "ONETHING_METRICS_PORT": "-1", "ONETHING_LOG_LEVEL": "WARNING"}
    env.update(overrides)
    return env


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    out = open(log_path, "ab")
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stored_positions(database_url: str, consumer: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM consumer_offsets WHERE consumer = %s", (consumer,)).fetchone()[0]


def wait_cascade_ready(database_url: str, name: str, partitions: int, timeout_s: float = 60.0) -> None:
    """A cascade started at `latest` stores its starting offsets first: wait for them."""
    from catalog.subscriptions import load_subscriptions

    expected = (2 + len(load_subscriptions().departments())) * partitions
    deadline = time.monotonic() + timeout_s
    while stored_positions(database_url, name) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"cascade {name} did not store its starting offsets")
        time.sleep(0.2)


def open_changes(database_url: str, cascade: str, keys: Iterable[str]) -> tuple[int, int]:
    """(changes seen, changes not yet complete) of these keys."""
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*), count(*) FILTER (WHERE completed_at IS NULL) FROM cascade_changes "
                            "WHERE cascade = %s AND register_key = ANY(%s)", (cascade, list(keys))).fetchone()


def wait_complete(database_url: str, cascade: str, keys: Iterable[str], expected: int, timeout_s: float,
                  procs: dict[str, subprocess.Popen] | None = None) -> tuple[int, int]:
    """Wait until `expected` changes of `keys` were seen and none is open; fail fast if a process died."""
    keys = list(keys)
    deadline = time.monotonic() + timeout_s
    seen, still_open = open_changes(database_url, cascade, keys)
    while seen < expected or still_open:
        if time.monotonic() > deadline:
            break
        for what, proc in (procs or {}).items():
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}")
        time.sleep(0.5)
        seen, still_open = open_changes(database_url, cascade, keys)
    return seen, still_open


# --- reading back what this run wrote ------------------------------------------------------------

def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap), enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        return consumer.end_offsets(tps)
    finally:
        consumer.close()


