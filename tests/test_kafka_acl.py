"""Kafka's own trust boundary: each department's principal reads only its tasks and writes only its
decisions, against the real broker (SASL/SCRAM-SHA-512, StandardAuthorizer, the ACLs of
infra/acls.py). The broker tests need the stack started with ONETHING_KAFKA_AUTH=scram; the
table tests need nothing."""
from __future__ import annotations

import logging
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import GroupAuthorizationFailedError, KafkaTimeoutError, TopicAuthorizationFailedError

from events import bus, kafka_auth
from infra import acls
from infra.topics import APPLICATIONS, DEADLETTER, decisions_topic, tasks_topic

POLICE = acls.adapter_principal("police")
RUN = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def scram(running_stack):
    if kafka_auth.mode(running_stack) != "scram":
        pytest.skip("the stack runs without authentication: run with ONETHING_KAFKA_AUTH=scram")
    return running_stack.bootstrap_servers


@pytest.fixture(scope="module")
def seeded(scram):
    """One message on each topic the police principal must not read (written by the operator),
    so a refused read is told apart from an empty topic."""
    producer = bus.make_producer(scram)
    for topic in (tasks_topic("health"), APPLICATIONS, tasks_topic("police")):
        producer.send(topic, key=f"acl-{RUN}".encode(), value=b"probe", partition=0).get(timeout=30)
    producer.close()
    return scram


def _police_consumer(bootstrap: str, group: str | None = None) -> KafkaConsumer:
    return KafkaConsumer(**kafka_auth.connection(bootstrap, POLICE), group_id=group, enable_auto_commit=False,
                         auto_offset_reset="earliest", request_timeout_ms=10_000)


def _fetch(consumer: KafkaConsumer, tp: TopicPartition, polls: int = 6) -> int:
    consumer.assign([tp])
    consumer.seek(tp, 0)
    return sum(len(ms) for _ in range(polls) for ms in consumer.poll(timeout_ms=500).values())


@pytest.mark.broker
@pytest.mark.parametrize("topic", [tasks_topic("health"), APPLICATIONS])
def test_police_is_refused_reading_other_topics(seeded, topic):
    consumer = _police_consumer(seeded)
    try:
        assert topic not in consumer.topics()                  # metadata hides it
        with pytest.raises(TopicAuthorizationFailedError):
            consumer.end_offsets([TopicPartition(topic, 0)])    # ListOffsets refused
        assert _fetch(consumer, TopicPartition(topic, 0)) == 0  # Fetch returns nothing, though it holds a message
    finally:
        consumer.close()
    admin_reader = KafkaConsumer(**kafka_auth.connection(seeded), enable_auto_commit=False)
    try:
        assert _fetch(admin_reader, TopicPartition(topic, 0)) >= 1  # the message is there
    finally:
        admin_reader.close()


@pytest.mark.broker
def test_police_reads_its_tasks_in_its_own_group(seeded):
    consumer = _police_consumer(seeded, group=f"{POLICE}.test-acl-{RUN}")
    try:
        assert _fetch(consumer, TopicPartition(tasks_topic("police"), 0)) >= 1
        consumer.commit()                                        # its group: READ on GROUP adapter.police.*
    finally:
        consumer.close()
    other = _police_consumer(seeded, group="dispatch")           # another component's group
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            other.subscribe([tasks_topic("police")])
            for _ in range(10):
                other.poll(timeout_ms=500)
    finally:
        other.close()


@pytest.mark.broker
def test_police_writes_only_its_decisions(scram):
    producer = bus.make_producer(scram, POLICE, max_block_ms=10_000)   # idempotent: WRITE implies IDEMPOTENT_WRITE
    try:
        meta = producer.send(decisions_topic("police"), key=b"acl", value=b"probe").get(timeout=30)
        assert meta.topic == decisions_topic("police") and meta.offset >= 0
        producer.send(DEADLETTER, key=b"acl", value=b"probe").get(timeout=30)   # its dead letters
        for topic in (decisions_topic("health"), APPLICATIONS, tasks_topic("police")):
            with pytest.raises(TopicAuthorizationFailedError):
                producer.send(topic, key=b"acl", value=b"forged").get(timeout=30)
    finally:
        producer.close(timeout=10)


@pytest.mark.broker
def test_a_wrong_password_is_refused(scram, caplog):
    wrong = kafka_auth.Credentials(POLICE, "not-the-password-" + RUN)
    with caplog.at_level(logging.WARNING, logger="kafka"):
        with pytest.raises(KafkaTimeoutError):
            KafkaConsumer(**kafka_auth.connection(scram, wrong), bootstrap_timeout_ms=6000).close()
    # kafka-python logs the broker's refusal ("Authentication failed … invalid credentials") when it
    # reads it; on some runs the broker's close arrives first and only `socket disconnected` is
    # logged — the right password connecting at once below shows the refusal was the credentials'
    failures = [r.getMessage() for r in caplog.records if "Authentication failed" in r.getMessage()]
    assert all("invalid credentials" in f for f in failures)
    assert not any(wrong.password in r.getMessage() for r in caplog.records)
    assert wrong.password not in repr(wrong)
    right = KafkaConsumer(**kafka_auth.connection(scram, POLICE), bootstrap_timeout_ms=10_000)
    assert tasks_topic("police") in right.topics()
    right.close()


@pytest.mark.broker
def test_plaintext_clients_are_refused(scram):
    with pytest.raises(KafkaTimeoutError):
        KafkaConsumer(bootstrap_servers=scram, bootstrap_timeout_ms=4000, request_timeout_ms=3000).close()


# -- the table (no broker) -------------------------------------------------------------------------------
def test_a_department_reads_only_its_tasks_and_writes_only_its_decisions():
    grants = {g for g in acls.catalog_grants() if g.principal == POLICE}
    assert {(g.operation, g.resource, g.name, g.prefixed) for g in grants} == {
        ("READ", "topic", "tasks.police", False), ("WRITE", "topic", "decisions.police", False),
        ("WRITE", "topic", "deadletter", False), ("READ", "group", POLICE, False),
        ("READ", "group", POLICE + ".", True)}
    assert set(acls.principals(acls.catalog_grants())) >= {"admin", "broker", "api", "dispatch", "cascade", POLICE}


def test_every_processor_of_onething_run_logs_in_as_its_own_principal_and_may_do_its_work():
    """Each processor's principal may read all it reads; each principal is one processor's."""
    from infra.process import processors_of
    from infra.settings import Settings
    from infra.supervisor import demo_departments

    settings = Settings.from_env()
    hosted = [*processors_of("core", settings), *processors_of("read-models", settings),
              *processors_of("deadlines", settings), *processors_of("adapters", settings, ",".join(demo_departments()))]
    by_principal = {}
    for p in hosted:
        principal = acls.principal_for(p)
        assert principal is not None, p.group
        assert principal not in by_principal, f"{p.group} and {by_principal.get(principal)} share {principal}"
        by_principal[principal] = p.group
        groups = {(g.name, g.prefixed) for g in acls.catalog_grants() if g.principal == principal and g.resource == "group"}
        assert any(p.group == n or (pref and p.group.startswith(n)) for n, pref in groups), p.group
    assert by_principal["dispatch"] == "dispatch" and by_principal[POLICE] == POLICE


@pytest.mark.broker
def test_the_api_writes_facts_and_replies_but_reads_nothing_and_derives_nothing(scram):
    producer = bus.make_producer(scram, acls.API, max_block_ms=10_000)
    try:
        for topic in (APPLICATIONS, "registry.company", decisions_topic("health")):
            assert producer.send(topic, key=b"acl", value=b"probe").get(timeout=30).topic == topic
        for topic in (tasks_topic("police"), "cases"):
            with pytest.raises(TopicAuthorizationFailedError):
                producer.send(topic, key=b"acl", value=b"forged").get(timeout=30)
    finally:
        producer.close(timeout=10)
    consumer = KafkaConsumer(**kafka_auth.connection(scram, acls.API), enable_auto_commit=False)
    try:  # WRITE implies DESCRIBE (it sees the topic and its offsets), but a Fetch needs READ
        with pytest.raises(TopicAuthorizationFailedError):
            _fetch(consumer, TopicPartition(APPLICATIONS, 0))
    finally:
        consumer.close()


def test_passwords_come_from_the_environment_and_are_derived_only_in_development(monkeypatch):
    for name in ("ONETHING_KAFKA_USER", "ONETHING_KAFKA_PASSWORD", kafka_auth.password_variable(POLICE), "ONETHING_ENV"):
        monkeypatch.delenv(name, raising=False)
    assert kafka_auth.password_variable(POLICE) == "ONETHING_KAFKA_PASSWORD_ADAPTER_POLICE"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9093")       # a cluster of the operator's
    with pytest.raises(kafka_auth.KafkaCredentialsMissing, match="ONETHING_KAFKA_PASSWORD_ADAPTER_POLICE"):
        kafka_auth.password(POLICE)
    monkeypatch.setenv("ONETHING_KAFKA_USER", POLICE)
    monkeypatch.setenv("ONETHING_KAFKA_PASSWORD", "one-principal-process")
    assert kafka_auth.password(POLICE) == "one-principal-process"
    monkeypatch.setenv(kafka_auth.password_variable(POLICE), "per-principal")
    assert kafka_auth.password(POLICE) == "per-principal"
    monkeypatch.delenv(kafka_auth.password_variable(POLICE))
    monkeypatch.delenv("ONETHING_KAFKA_PASSWORD")
    monkeypatch.setenv("ONETHING_ENV", "dev")
    derived = kafka_auth.password(POLICE)
    assert derived == kafka_auth.dev_password(POLICE) != kafka_auth.dev_password("adapter.health")
    kwargs = kafka_auth.security(POLICE, auth_mode="scram")
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512" and kwargs["sasl_plain_username"] == POLICE
    assert kafka_auth.security(POLICE, auth_mode="none") == {}


def test_the_proactive_processor_tells_only_the_departments_that_execute_grants():
    """免申即享: a grant is told to its department on tasks.<d> (projectors/proactive.py); proactive may
    write the tasks of the departments some rule grants through, read their answers, and no more."""
    grants = {(g.operation, g.name) for g in acls.catalog_grants() if g.principal == acls.PROACTIVE_PRINCIPAL}
    assert {("WRITE", tasks_topic("civil_affairs")), ("WRITE", tasks_topic("medical_insurance")),
            ("READ", decisions_topic("civil_affairs")), ("READ", decisions_topic("police"))} <= grants
    assert ("WRITE", tasks_topic("police")) not in grants          # no rule grants through the police
    assert not any(op == "WRITE" and name.startswith("decisions.") for op, name in grants)


@pytest.mark.broker
def test_proactive_writes_a_grant_departments_tasks_and_not_another_departments(scram):
    producer = bus.make_producer(scram, acls.PROACTIVE_PRINCIPAL, max_block_ms=10_000)
    try:
        assert producer.send(tasks_topic("civil_affairs"), key=b"acl", value=b"probe").get(timeout=30)
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(tasks_topic("police"), key=b"acl", value=b"forged").get(timeout=30)
    finally:
        producer.close(timeout=10)
