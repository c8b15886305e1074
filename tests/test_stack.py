"""The stack the project starts itself: migrations, topics as code, the CLI, one node and three."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from events import bus, codec, kafka_auth
from events.envelope import new_event
from infra import migrations
from infra.kafka_local import KafkaCluster, port_open
from infra.topics import TopicSpec, apply_topics
from .support.scale import LONG

ROOT = Path(__file__).resolve().parent.parent
ONETHING = [sys.executable, "-m", "infra.cli"]


@pytest.mark.postgres
def test_migrations_apply_once(database_url):
    assert migrations.migrate(database_url) == []  # the session already applied everything
    with psycopg.connect(database_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert versions == [m.version for m in migrations.discover()]


@pytest.mark.broker
def test_topics_apply_is_idempotent_and_reports_partition_drift(bootstrap):
    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap))
    name = f"test.drift.{uuid.uuid4().hex[:8]}"
    try:
        spec = TopicSpec(name, "fact", partitions=3, replication=1)
        first = apply_topics(admin, [spec])
        assert first.created == [name]
        again = apply_topics(admin, [spec])
        assert again.created == [] and again.unchanged == [name] and again.ok
        grown = TopicSpec(name, "fact", partitions=6, replication=1)
        drift = apply_topics(admin, [grown])
        assert not drift.ok and "3 partitions, declared 6" in drift.drift[0]
        described = admin.describe_topics([name])[0]
        assert len(described["partitions"]) == 3  # reported, not silently changed
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        assert configs["topic"][name]["retention.ms"]["value"] == "-1"  # facts are kept forever
    finally:
        admin.delete_topics([name])
        admin.close()


def _cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*ONETHING, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.broker
def test_cli_up_status_down_on_a_broker_of_its_own(running_stack, tmp_path):
    """A second stack on other ports: up twice (reuse), status shows everything, down leaves nothing."""
    env = {**os.environ, "ONETHING_HOME": str(tmp_path / "home"), "ONETHING_KAFKA_PORT": "19392",
           "ONETHING_KAFKA_HEAP_MB": "512", "COLUMNS": "200",
           "ONETHING_PARTITIONS": "1"}   # the commands are under test, not the partition count: 80, not 480, to create
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    try:
        up = _cli(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "127.0.0.1:19392" in up.stdout and "created" in up.stdout
        again = _cli(env, "up")
        assert again.returncode == 0 and "reusing the running broker" in again.stdout
        assert "0 created" in again.stdout

        st = _cli(env, "status")
        assert st.returncode == 0, st.stdout + st.stderr
        assert "kafka     up" in st.stdout and "postgres  up" in st.stdout
        for topic in ("applications", "registry.company", "tasks.police", "decisions.health", "deadletter"):
            assert topic in st.stdout
    finally:
        down = _cli(env, "down")
    assert down.returncode == 0 and "stopped: kafka" in down.stdout
    time.sleep(0.5)
    assert not port_open("127.0.0.1", 19392)
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "home")], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "a broker process survived `onething down`"
    st = _cli(env, "status")
    assert st.returncode == 1 and "kafka     down" in st.stdout


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="a 3-node cluster: `infra/onething.sh test-long` runs it (ONETHING_TEST_SCALE=long), beside test_faults' 3-node short form")
def test_three_node_cluster_survives_losing_a_broker(tmp_path):
    """The fault-test topology: replication 3, min.insync 2, acks=all keeps working with one node down."""
    cluster = KafkaCluster(tmp_path / "k3", n=3, base_port=19292, heap_mb=512)
    cluster.start(timeout=120)
    try:
        admin = KafkaAdminClient(**kafka_auth.connection(cluster.bootstrap))
        apply_topics(admin, [TopicSpec("facts", "fact", partitions=3, replication=3, min_insync_replicas=2)])
        admin.close()
        producer = bus.make_producer(cluster.bootstrap)
        events = [new_event("ApplicationWithdrawn", f"case-{i % 30}", {"reason": str(i)}, region_code="440200",
                            sequence=i // 30) for i in range(600)]
        bus.publish_all(producer, [("facts", e) for e in events[:300]])
        cluster.stop_node(cluster.nodes[1], hard=True)  # kill -9 one broker
        bus.publish_all(producer, [("facts", e) for e in events[300:]], timeout=120)
        producer.close()

        consumer = KafkaConsumer(**kafka_auth.connection(cluster.bootstrap), enable_auto_commit=False,
                                 auto_offset_reset="earliest", consumer_timeout_ms=20_000)
        consumer.assign([TopicPartition("facts", p) for p in range(3)])
        ids = {codec.decode(m.value).id for m in consumer}
        consumer.close()
        assert ids == {e.id for e in events}
    finally:
        cluster.stop(hard=True)
