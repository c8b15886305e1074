"""Fixtures for tests against the real broker and the real PostgreSQL.

The session brings the local stack up once (idempotent: it reuses what already runs), so
`pytest` works on its own as well as after `infra/onething.sh test`.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

# The suite runs on a stack of its own (broker on 19092, database onething_test), so tests
# never leave events in the stack the demo and developers use, and the other way round.
# Set KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL to run it against servers of your choosing.
if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
    os.environ.setdefault("ONETHING_HOME", str(Path(__file__).resolve().parent.parent / ".onething" / "test"))
    os.environ.setdefault("ONETHING_KAFKA_PORT", "19092")
if not os.environ.get("DATABASE_URL"):
    os.environ.setdefault("ONETHING_DB_NAME", "onething_test")
os.environ.setdefault("ONETHING_METRICS_BASE_PORT", "19400")
# Tests submit and upload as a handful of demo people, far faster than a person would: the
# per-subject rate limits (producers/api_limits.py) are raised for them; test_api_limits.py
# checks the limits themselves on an app of its own.
os.environ.setdefault("ONETHING_API_SUBMIT_RATE", "100000/minute")
os.environ.setdefault("ONETHING_API_UPLOAD_RATE", "100000/minute")
os.environ.setdefault("ONETHING_ENV", "dev")  # development credentials allowed (infra/safe_config.py)

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from events import kafka_auth
from infra import stack
from infra.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def running_stack(settings: Settings):
    """The suite's stack, up for the session; it stops what it started (infra/stack.py `session`)."""
    with stack.session(settings):
        yield settings


@pytest.fixture(scope="session")
def bootstrap(running_stack: Settings) -> str:
    return running_stack.bootstrap_servers


@pytest.fixture(scope="session")
def database_url(running_stack: Settings) -> str:
    return running_stack.database_url


@pytest.fixture
def fresh_topic(bootstrap: str):
    """A topic of the test's own, so tests never see each other's messages."""
    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap))
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


def pytest_configure(config):
    config.addinivalue_line("markers", "after_all_logs: reads the logs every other test's processes wrote; "
                                       "runs last (tests/conftest.py)")


def pytest_collection_modifyitems(items):
    """Tests that read the whole log (a live rebuild of the case view) run first, while the suite's
    own stack holds little of it; their outcome does not depend on the order, only their time.
    Tests that scan the log files the other tests' processes wrote (tests/test_log_masking.py) run last."""
    whole = [i for i in items if i.get_closest_marker("whole_log")]
    last = [i for i in items if i.get_closest_marker("after_all_logs")]
    items[:] = whole + [i for i in items if i not in whole and i not in last] + last
