"""TLS on the real broker: with ONETHING_KAFKA_TLS=1 the local stack serves SASL_SSL with a CA of
its own, its clients find that CA on their own and check the broker against it, and a client that
does not trust the CA is refused in the TLS handshake. This module starts a single-node broker of
its own (its own ONETHING_HOME under a temporary directory, ports 39192/39193) and stops it at the
end; the other tests check the settings without a broker."""
from __future__ import annotations

import logging
import socket
import ssl
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError

from events import bus, kafka_auth
from infra import kafka_security
from infra.kafka_local import KafkaCluster, local_cluster, port_open
from infra.settings import Settings

def _free_pair(start: int = 23192, stop: int = 23392) -> int:
    """A client port whose controller port (+1) is free too: apart from the suite's stacks, and below
    Linux's ephemeral range (32768 on): a port there may be an outgoing connection's by the time
    the broker binds it (it was, under pytest-xdist)."""
    for port in range(start, stop, 2):
        if not port_open("127.0.0.1", port) and not port_open("127.0.0.1", port + 1):
            return port
    raise RuntimeError(f"no two free ports between {start} and {stop}")


PORT = _free_pair()  # and PORT + 1 for the controller
TOPIC = f"tls.probe.{uuid.uuid4().hex[:8]}"
CLIENT_VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "ONETHING_LOCAL_KAFKA", "ONETHING_KAFKA_TLS_CA",
                    "ONETHING_KAFKA_TLS", "ONETHING_KAFKA_CONTROLLER_PORT")


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory):
    """The local stack as `onething up` starts it with ONETHING_KAFKA_TLS=1, on a home of its own."""
    home = tmp_path_factory.mktemp("tls-home")
    with pytest.MonkeyPatch.context() as env:
        for name in CLIENT_VARIABLES:
            env.delenv(name, raising=False)
        env.setenv("ONETHING_HOME", str(home))
        env.setenv("ONETHING_KAFKA_PORT", str(PORT))
        env.setenv("ONETHING_KAFKA_AUTH", "scram")
        env.setenv("ONETHING_KAFKA_HEAP_MB", "512")
        env.setenv("ONETHING_KAFKA_TLS", "1")
        settings = Settings.from_env()
        cluster = local_cluster(settings)
        assert cluster.tls and cluster.bootstrap == f"127.0.0.1:{PORT}"
        try:
            cluster.start(timeout=60)
            env.delenv("ONETHING_KAFKA_TLS")   # from here on clients know TLS from the stack's record alone
            yield settings, cluster
        finally:
            cluster.stop()


@pytest.mark.broker
def test_clients_find_the_stacks_ca_and_produce_and_consume_over_sasl_ssl(tls_stack):
    settings, cluster = tls_stack
    ca = settings.kafka_dir / "tls" / "ca.pem"
    kwargs = kafka_auth.security()
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["ssl_cafile"] == str(ca) == str(cluster.tls_ca) and kwargs["ssl_check_hostname"] is True

    admin = KafkaAdminClient(**kafka_auth.connection(cluster.bootstrap), request_timeout_ms=15_000)
    try:
        admin.create_topics([NewTopic(TOPIC, 1, 1)])
    finally:
        admin.close()
    producer = bus.make_producer(cluster.bootstrap, max_block_ms=15_000)
    try:
        meta = producer.send(TOPIC, key=b"tls", value=b"over SASL_SSL").get(timeout=30)
    finally:
        producer.close(timeout=10)
    consumer = bus.make_consumer(cluster.bootstrap, None, consumer_timeout_ms=10_000)
    try:
        consumer.assign([TopicPartition(TOPIC, 0)])
        consumer.seek(TopicPartition(TOPIC, 0), meta.offset)
        got = next(iter(consumer))
    finally:
        consumer.close()
    assert (got.key, got.value) == (b"tls", b"over SASL_SSL")


@pytest.mark.broker
def test_the_broker_shows_a_certificate_for_loopback_that_only_its_ca_vouches_for(tls_stack):
    settings, cluster = tls_stack
    trusting = ssl.create_default_context(cafile=str(cluster.tls_ca))
    with socket.create_connection(("127.0.0.1", PORT), timeout=5) as raw:
        with trusting.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            names = tls.getpeercert()["subjectAltName"]
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert ("IP Address", "127.0.0.1") in names and ("DNS", "localhost") in names
    with socket.create_connection(("127.0.0.1", PORT), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="self.signed certificate in certificate chain"):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")   # the system's CAs only


@pytest.mark.broker
def test_a_client_without_the_ca_is_refused(tls_stack, caplog):
    settings, cluster = tls_stack
    without_ca = {**kafka_auth.connection(cluster.bootstrap), "ssl_cafile": None}   # the system's CAs only
    assert without_ca["security_protocol"] == "SASL_SSL"
    with caplog.at_level(logging.DEBUG, logger="kafka"):
        with pytest.raises(KafkaError):
            KafkaConsumer(**without_ca, bootstrap_timeout_ms=4000, request_timeout_ms=3000).close()
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "CERTIFICATE_VERIFY_FAILED" in logged, logged[-2000:]
    assert without_ca["sasl_plain_password"] not in logged
    plaintext = kafka_auth.connection(cluster.bootstrap, tls_ca=None)   # SASL_PLAINTEXT on the TLS port
    assert plaintext["security_protocol"] == "SASL_PLAINTEXT"
    with pytest.raises(KafkaError):
        KafkaConsumer(**plaintext, bootstrap_timeout_ms=4000, request_timeout_ms=3000).close()


@pytest.mark.broker
def test_the_certificates_are_made_once_and_kept(tls_stack):
    settings, cluster = tls_stack
    tls_dir = cluster.home / "tls"
    before = {p.name: p.read_bytes() for p in tls_dir.iterdir()}
    assert set(before) == {"ca.pem", "ca.key", "broker.pem", "broker.key"}
    kafka_security.ensure_certificates(tls_dir)
    cluster.format()                                        # what a second `onething up` does first
    assert {p.name: p.read_bytes() for p in tls_dir.iterdir()} == before
    for key in ("ca.key", "broker.key"):
        assert (tls_dir / key).stat().st_mode & 0o077 == 0, f"{key} is readable by others"
    config = cluster.nodes[0].config_file.read_text()
    assert f"listeners=SASL_SSL://127.0.0.1:{PORT},CONTROLLER://127.0.0.1:{PORT + 1}" in config
    assert "ssl.keystore.type=PEM" in config and "ssl.truststore.type=PEM" in config
    assert cluster.record.tls() and cluster.record.mode() == "scram"


# -- without a broker ----------------------------------------------------------------------------------------
def _clean(monkeypatch, home: Path) -> None:
    for name in CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONETHING_HOME", str(home))


def test_the_default_stays_sasl_plaintext_on_loopback(tmp_path, monkeypatch):
    _clean(monkeypatch, tmp_path)
    cluster = KafkaCluster(tmp_path / "kafka", auth="scram", base_port=PORT)
    config = cluster.properties(cluster.nodes[0])
    assert f"listeners=SASL_PLAINTEXT://127.0.0.1:{PORT}," in config and "ssl." not in config
    assert not (tmp_path / "kafka" / "tls").exists(), "no certificates unless TLS is asked for"
    assert cluster.tls_ca is None
    assert kafka_auth.security(auth_mode="scram")["security_protocol"] == "SASL_PLAINTEXT"
    assert "ssl_cafile" not in kafka_auth.security(auth_mode="scram")
    assert kafka_auth.security(auth_mode="none") == {}
    plain_tls = KafkaCluster(tmp_path / "none-tls", auth="none", tls=True, base_port=PORT)   # no SASL: SSL
    config = plain_tls.properties(plain_tls.nodes[0])
    assert f"listeners=SSL://127.0.0.1:{PORT}," in config and "CONTROLLER:PLAINTEXT,SSL:SSL" in config


def test_the_ca_variable_turns_tls_on_for_every_client(tmp_path, monkeypatch):
    _clean(monkeypatch, tmp_path)
    monkeypatch.setenv("ONETHING_KAFKA_AUTH", "scram")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("ONETHING_KAFKA_TLS_CA", str(ca))
    scram = kafka_auth.security("dispatch", auth_mode="scram")
    assert (scram["security_protocol"], scram["ssl_cafile"], scram["ssl_check_hostname"]) == ("SASL_SSL", str(ca), True)
    assert kafka_auth.security(auth_mode="none") == {"security_protocol": "SSL", "ssl_cafile": str(ca),
                                                     "ssl_check_hostname": True}
    assert bus.producer_config("kafka.example:9093", "dispatch")["security_protocol"] == "SASL_SSL"
    monkeypatch.setenv("ONETHING_KAFKA_TLS_CA", str(tmp_path / "gone.pem"))
    with pytest.raises(kafka_auth.KafkaTlsMisconfigured, match="ONETHING_KAFKA_TLS_CA"):
        kafka_auth.security(auth_mode="scram")


def test_the_local_stacks_ca_is_found_only_for_the_local_stack(tmp_path, monkeypatch):
    _clean(monkeypatch, tmp_path)
    monkeypatch.setenv("ONETHING_KAFKA_TLS", "1")
    assert kafka_auth.tls_ca_file() == str(tmp_path / "kafka" / "tls" / "ca.pem")
    with pytest.raises(kafka_auth.KafkaTlsMisconfigured, match="start it first"):
        kafka_auth.security(auth_mode="scram")               # asked for TLS, stack not started: said so
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9093")   # the operator's cluster: its CA is theirs
    assert kafka_auth.tls_ca_file() is None
