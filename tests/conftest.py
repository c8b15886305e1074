"""Fixtures for tests against the real broker and the real PostgreSQL.

The session brings the local stack up once (idempotent: it reuses what already runs), so
`pytest` works on its own as well as after `infra/onething.sh test`.
"""
from __future__ import annotations

import uuid

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from infra import stack
from infra.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def running_stack(settings: Settings) -> Settings:
    stack.up(settings)
    return settings


@pytest.fixture(scope="session")
def bootstrap(running_stack: Settings) -> str:
    return running_stack.bootstrap_servers


@pytest.fixture(scope="session")
def database_url(running_stack: Settings) -> str:
    return running_stack.database_url


@pytest.fixture
def fresh_topic(bootstrap: str):
    """A topic of the test's own, so tests never see each other's messages."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    created: list[str] = []

    def make(partitions: int = 6, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:10]}"
        admin.create_topics([NewTopic(name, partitions, 1)])
        created.append(name)
        return name

    yield make
    if created:
        admin.delete_topics(created)
    admin.close()
