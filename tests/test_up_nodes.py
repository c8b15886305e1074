"""`onething up --nodes 3`: the local three-node KRaft cluster an operator starts with the topics'
production settings (replication 3, min.insync.replicas 2), what `onething status` shows of it whole
and with a broker killed, and `onething down` leaving nothing of it.

The scenario runs the real commands as subprocesses on a home and ports of its own (it is in the fault
lane: `-m slow`); the functions that read the cluster's health are tested on recorded answers first.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import TopicAuthorizationFailedError

from events import kafka_auth
from infra import acls, kafka_health
from infra.kafka_local import NODES_FILE, KafkaCluster, KafkaStackError, port_open, recorded_nodes
from infra.settings import Settings
from infra.stack import department_codes
from infra.topics import declared_topics, decisions_topic, tasks_topic
from .support.scale import LONG

ROOT = Path(__file__).resolve().parent.parent
ONETHING = [sys.executable, "-m", "infra.cli"]
POLICE = acls.adapter_principal("police")
# what the scenario's subprocesses must not inherit from the lane: they describe another stack
FOREIGN = ("KAFKA_BOOTSTRAP_SERVERS", "ONETHING_LOCAL_KAFKA", "ONETHING_KAFKA_NODES", "ONETHING_REPLICATION_FACTOR",
           "ONETHING_MIN_INSYNC_REPLICAS", "ONETHING_KAFKA_TLS", "ONETHING_KAFKA_TLS_CA",
           "ONETHING_KAFKA_CONTROLLER_PORT")


# -- the health functions, on answers as kafka-python gives them -----------------------------------------
def _partition(index: int, replicas: list[int], isr: list[int], leader: int) -> dict:
    return {"partition_index": index, "leader_id": leader, "replica_nodes": replicas, "isr_nodes": isr}


def test_a_local_node_whose_process_died_is_down_before_the_controller_fences_it():
    registered = [{"broker_id": i, "host": "127.0.0.1", "port": 9090 + 2 * i} for i in (1, 2, 3)]
    expected = [kafka_health.ExpectedBroker(1, "127.0.0.1:9092", 101, True),
                kafka_health.ExpectedBroker(2, "127.0.0.1:9094", None, False),   # killed a moment ago
                kafka_health.ExpectedBroker(3, "127.0.0.1:9096", 103, True)]
    rows = kafka_health.brokers(registered, expected)
    assert [(r["id"], r["state"], r["registered"]) for r in rows] == [
        (1, "up", True), (2, "down", True), (3, "up", True)]
    assert rows[1]["address"] == "127.0.0.1:9094" and rows[1]["pid"] is None


def test_a_broker_only_the_replica_assignments_name_is_listed_down():
    """A cluster of the operator's: no pids, but a replica id no registered broker has is a lost broker."""
    registered = [{"broker_id": 1, "host": "k1", "port": 9092}, {"broker_id": 3, "host": "k3", "port": 9092}]
    rows = kafka_health.brokers(registered, replica_ids={1, 2, 3})
    assert [(r["id"], r["address"], r["state"]) for r in rows] == [(1, "k1:9092", "up"), (2, None, "down"),
                                                                  (3, "k3:9092", "up")]
    assert "pid" not in rows[0]


def test_quorum_lag_is_the_leaders_log_end_minus_each_voters():
    described = {"topics": [{"topic_name": "__cluster_metadata", "partitions": [{
        "partition_index": 0, "leader_id": 3, "leader_epoch": 4, "high_watermark": 3482, "error": None,
        "current_voters": [
            {"replica_id": 1, "log_end_offset": 2957, "last_caught_up_timestamp": 1_000},
            {"replica_id": 2, "log_end_offset": 3480, "last_caught_up_timestamp": 9_500},
            {"replica_id": 3, "log_end_offset": 3482, "last_caught_up_timestamp": 10_000}],
        "observers": []}]}]}
    q = kafka_health.quorum(described, now_ms=10_000)
    assert q["leader"] == 3 and q["epoch"] == 4 and q["max_lag"] == 525
    assert [(v["id"], v["lag"], v["caught_up_ms_ago"]) for v in q["voters"]] == [
        (1, 525, 9_000), (2, 2, 500), (3, 0, 0)]


def test_a_voter_the_new_leader_has_not_heard_from_has_no_lag_figure():
    described = {"topics": [{"partitions": [{
        "leader_id": 3, "high_watermark": 10, "error": None,
        "current_voters": [{"replica_id": 2, "log_end_offset": -1, "last_caught_up_timestamp": -1},
                           {"replica_id": 3, "log_end_offset": 10, "last_caught_up_timestamp": 5}]}]}]}
    q = kafka_health.quorum(described, now_ms=5)
    assert q["voters"][0] == {"id": 2, "log_end_offset": -1, "lag": None, "caught_up_ms_ago": None}
    assert q["max_lag"] == 0


def test_under_replicated_partitions_are_those_with_fewer_in_sync_than_replicas():
    topics = [{"name": "applications", "partitions": [_partition(1, [1, 2, 3], [1, 3], 1),
                                                      _partition(0, [3, 1, 2], [3, 1, 2], 3)]},
              {"name": "__consumer_offsets", "partitions": [_partition(0, [2, 3, 1], [2], -1)]},
              {"name": "single", "partitions": [_partition(0, [1], [1], 1)]}]
    under = kafka_health.under_replicated(topics)
    assert [(u["topic"], u["partition"], u["leader"], u["missing"]) for u in under] == [
        ("__consumer_offsets", 0, None, [1, 3]), ("applications", 1, 1, [2])]
    problems = kafka_health.problems([{"id": 2, "address": "127.0.0.1:9094", "state": "down"}],
                                     {"leader": None, "voters": []}, under)
    assert problems == ["broker 2 (127.0.0.1:9094) is down", "the controller quorum has no leader",
                        "2 partition(s) under-replicated, 1 without a leader"]
    assert kafka_health.problems([{"id": 1, "address": "a:1", "state": "up"}], {"leader": 1, "voters": []}, []) == []


# -- the recorded node count --------------------------------------------------------------------------------
def _home_of(tmp_path: Path, nodes: int | None, formatted: bool = True) -> Path:
    kafka = tmp_path / "home" / "kafka"
    for i in range(1, (nodes or 1) + 1):
        data = kafka / f"node-{i}" / "data"
        data.mkdir(parents=True)
        if formatted:
            (data / "meta.properties").write_text("node.id=%d\n" % i)
    if nodes is not None:
        (kafka / NODES_FILE).write_text(json.dumps({"nodes": nodes}))
    return tmp_path / "home"


def test_settings_of_a_recorded_three_node_home_list_every_node_and_take_the_production_settings(tmp_path, monkeypatch):
    home = _home_of(tmp_path, 3)
    for name in (*FOREIGN, "ONETHING_KAFKA_HEAP_MB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONETHING_HOME", str(home))
    monkeypatch.setenv("ONETHING_KAFKA_PORT", "30000")
    s = Settings.from_env()
    assert s.kafka_nodes == 3 and recorded_nodes(home / "kafka") == 3
    assert s.bootstrap_servers == "127.0.0.1:30000,127.0.0.1:30002,127.0.0.1:30004"
    assert (s.replication_factor, s.min_insync_replicas, s.kafka_heap_mb) == (3, 2, 640)
    monkeypatch.setenv("ONETHING_MIN_INSYNC_REPLICAS", "3")          # an explicit value wins
    assert Settings.from_env().min_insync_replicas == 3
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9093")   # not ours: the record is not read
    remote = Settings.from_env()
    assert (remote.kafka_nodes, remote.replication_factor, remote.bootstrap_servers) == (1, 1, "kafka.example:9093")


def test_a_fresh_home_has_one_node_and_the_single_node_settings(tmp_path, monkeypatch):
    for name in FOREIGN:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONETHING_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("ONETHING_KAFKA_PORT", "30000")
    s = Settings.from_env()
    assert (s.kafka_nodes, s.bootstrap_servers, s.replication_factor, s.min_insync_replicas) == (
        1, "127.0.0.1:30000", 1, 1)
    assert Settings.from_env(kafka_nodes=3).bootstrap_servers.count(",") == 2


@pytest.mark.parametrize("recorded, asked", [(3, 1), (None, 3), (1, 3)])
def test_a_home_formatted_for_another_node_count_is_refused(tmp_path, recorded, asked):
    """A home without a record was formatted before it existed: it holds one node."""
    home = _home_of(tmp_path, recorded)
    cluster = KafkaCluster(home / "kafka", n=asked, base_port=30000, auth="none", tls=False)
    with pytest.raises(KafkaStackError, match=f"holds a {recorded or 1}-node cluster, not {asked}"):
        cluster.check_topology()
    with pytest.raises(KafkaStackError):
        cluster.start()   # refused before anything is formatted or started
    assert not list(home.glob("kafka/node-*/kafka.pid"))


def test_the_same_node_count_and_an_unformatted_home_pass(tmp_path):
    KafkaCluster(_home_of(tmp_path, 3) / "kafka", n=3, base_port=30000, auth="none", tls=False).check_topology()
    fresh = tmp_path / "fresh"
    KafkaCluster(fresh / "kafka", n=3, base_port=30000, auth="none", tls=False).check_topology()


# -- the scenario: the real commands on a cluster of their own ------------------------------------------------
def _free_base(tries: int = 200) -> int:
    """A client port with its five successors free (3 nodes x client and controller), away from the
    suite's stacks; random, so two runs at once do not race for the same ports."""
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(21000, 28000, 2)
        if not any(port_open("127.0.0.1", p, timeout=0.2) for p in range(base, base + 6)):
            return base
    raise RuntimeError("no six consecutive free ports")


def _cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*ONETHING, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _status(env: dict) -> tuple[int, dict]:
    proc = _cli(env, "status", "--json")
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def _wait_status(env: dict, ok, timeout: float, what: str) -> dict:
    """`status --json` again until `ok(rc, kafka)` holds: the cluster gets whole, or notices a loss,
    in seconds (broker.session.timeout.ms 6 s, replica.lag.time.max.ms 10 s), not at once."""
    deadline = time.monotonic() + timeout
    while True:
        rc, st = _status(env)
        if ok(rc, st["kafka"]):
            return st["kafka"]
        if time.monotonic() > deadline:
            pytest.fail(f"status never showed {what} in {timeout:.0f}s; last: rc={rc} "
                        f"{json.dumps({k: v for k, v in st['kafka'].items() if k != 'under_replicated'})} "
                        f"under-replicated={len(st['kafka'].get('under_replicated') or [])}")
        time.sleep(3)


def _described(admin: KafkaAdminClient, names: list[str], timeout: float = 60) -> dict[str, dict]:
    """The topics as the broker asked sees them, once it knows every one of them: a broker applies the
    controller's metadata a moment after the creation was acknowledged (an unknown topic has no
    partitions in its answer)."""
    deadline = time.monotonic() + timeout
    while True:
        described = {t["name"]: t for t in admin.describe_topics(names)}
        if all(t["error_code"] == 0 and t["partitions"] for t in described.values()) or time.monotonic() > deadline:
            return described
        time.sleep(1)


def _java_of(home: Path) -> list[str]:
    ps = subprocess.run(["pgrep", "-af", str(home)], capture_output=True, text=True)
    return [line for line in ps.stdout.splitlines() if "java" in line]


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="a 3-node cluster: `infra/onething.sh test-long` runs it (ONETHING_TEST_SCALE=long), beside test_faults' 3-node short form")
@pytest.mark.timeout(900)   # three JVMs formatting and starting on two shared cores
def test_up_three_nodes_status_shows_a_killed_broker_and_down_stops_all(tmp_path):
    home = tmp_path / "home"
    base = _free_base()
    addresses = [f"127.0.0.1:{base + 2 * i}" for i in range(3)]
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env.update(ONETHING_HOME=str(home), ONETHING_KAFKA_PORT=str(base), ONETHING_KAFKA_HEAP_MB="384",
               ONETHING_KAFKA_AUTH="scram", ONETHING_ENV="dev", COLUMNS="200")
    bootstrap = ",".join(addresses)
    started = time.monotonic()

    def step(what: str) -> None:   # shown with a failure: where the time went
        print(f"[{time.monotonic() - started:5.0f}s] {what}", flush=True)

    try:
        step(f"up --nodes 3 on {bootstrap}")
        up = _cli(env, "up", "--nodes", "3", timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr[-3000:]
        assert bootstrap in up.stdout and "(replication 3, min.insync.replicas 2)" in up.stdout
        assert "kafka acl" in up.stdout   # SCRAM users and ACLs applied to the three nodes
        assert recorded_nodes(home / "kafka") == 3

        # every declared topic: 3 replicas per partition, min.insync.replicas 2, in the cluster itself
        connection = kafka_auth.connection(bootstrap, auth_mode="scram", tls_ca=None)
        admin = KafkaAdminClient(**connection, request_timeout_ms=30_000)
        try:
            names = [spec.name for spec in declared_topics(department_codes())]
            described = _described(admin, names)
            assert set(described) == set(names)
            for name, topic in described.items():
                assert len(topic["partitions"]) == 6, name
                assert all(len(p["replica_nodes"]) == 3 and p["leader_id"] >= 0 for p in topic["partitions"]), name
            configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
            assert {n: configs["topic"][n]["min.insync.replicas"]["value"] for n in names} == {n: "2" for n in names}
            declared_partitions = sum(len(t["partitions"]) for t in described.values())
        finally:
            admin.close()

        step("topics checked; status until whole")
        # a later command finds all three nodes from the home's record alone (no --nodes)
        whole = _wait_status(env, lambda rc, k: rc == 0 and not k.get("under_replicated") and not k.get("problems"),
                             120, "a whole cluster")
        assert whole["bootstrap"] == bootstrap
        assert [(b["id"], b["address"], b["state"]) for b in whole["brokers"]] == [
            (i + 1, a, "up") for i, a in enumerate(addresses)]
        quorum = whole["quorum"]
        assert quorum["leader"] in (1, 2, 3) and sorted(v["id"] for v in quorum["voters"]) == [1, 2, 3]
        assert whole["under_replicated"] == [] and whole["controller"] == quorum["leader"]

        # kill -9 the quorum's leader: the active controller and a broker at once
        victim = quorum["leader"]
        pid = int((home / "kafka" / f"node-{victim}" / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        step(f"killed node {victim} (pid {pid}); status until it is lost")


        def lost(rc: int, k: dict) -> bool:   # every declared partition had the victim as a replica
            declared = [u for u in k.get("under_replicated") or [] if u["topic"] in names]
            return rc == 0 and len(declared) == declared_partitions and k["quorum"]["leader"] not in (None, victim)

        degraded = _wait_status(env, lost, 180, f"broker {victim} lost from every partition")
        states = {b["id"]: b["state"] for b in degraded["brokers"]}
        assert states == {i: ("down" if i == victim else "up") for i in (1, 2, 3)}
        assert all(victim in u["missing"] and u["leader"] not in (None, victim) for u in degraded["under_replicated"])
        assert f"broker {victim} ({addresses[victim - 1]}) is down" in degraded["problems"]
        text = _cli(env, "status")
        assert text.returncode == 0 and "brokers 2/3 up" in text.stdout
        assert "under-replicated partitions: " in text.stdout and "is down" in text.stdout

        step("degraded status seen; an acks=all write")
        # two in-sync replicas of three still take an acks=all write — as the ACLs allow, and only so
        producer = KafkaProducer(**kafka_auth.connection(bootstrap, POLICE, auth_mode="scram", tls_ca=None),
                                 acks="all", max_block_ms=30_000, request_timeout_ms=30_000)
        try:
            meta = producer.send(decisions_topic("police"), key=b"nodes", value=b"probe").get(timeout=60)
            assert meta.offset >= 0
            with pytest.raises(TopicAuthorizationFailedError):
                producer.send(tasks_topic("health"), key=b"nodes", value=b"forged").get(timeout=60)
        finally:
            producer.close(timeout=10)
    finally:
        step("down")
        down = _cli(env, "down", timeout=180)
    assert down.returncode == 0 and "stopped: kafka" in down.stdout, down.stdout + down.stderr[-2000:]
    try:
        time.sleep(1)
        assert _java_of(home) == [], "a broker of this home survived `onething down`"
        assert not any(port_open("127.0.0.1", p) for p in range(base, base + 6))
        rc, st = _status(env)
        assert rc == 1 and st["kafka"]["state"] == "down"
        assert [(b["id"], b["state"]) for b in st["kafka"]["brokers"]] == [(1, "down"), (2, "down"), (3, "down")]
    finally:
        KafkaCluster(home / "kafka", n=3, base_port=base, auth="scram", tls=False).stop(hard=True)  # whatever is left
