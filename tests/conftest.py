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
# pytest-xdist (`-n 2`): each worker's processes serve metrics from a block of their own
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and _WORKER[2:].isdigit():
    os.environ["ONETHING_METRICS_BASE_PORT"] = str(int(os.environ["ONETHING_METRICS_BASE_PORT"]) + 400 * int(_WORKER[2:]))
# Tests submit and upload as a handful of demo people, far faster than a person would: the
# per-subject rate limits (producers/api_limits.py) are raised for them; test_api_limits.py
# checks the limits themselves on an app of its own.
os.environ.setdefault("ONETHING_API_SUBMIT_RATE", "100000/minute")
os.environ.setdefault("ONETHING_API_UPLOAD_RATE", "100000/minute")
os.environ.setdefault("ONETHING_ENV", "dev")  # development credentials allowed (infra/safe_config.py)

import pytest
import structlog
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
    """The suite's stack, up for the session; it stops what it started (infra/stack.py `session`).
    Under pytest-xdist the controller brought it up before the workers started (pytest_configure
    below) and takes it down after they end: a worker only uses it."""
    if os.environ.get("ONETHING_TEST_STACK_OWNER") == "xdist" and _WORKER:
        _seed_demo_people(settings)
        yield settings
        return
    with stack.session(settings):
        _seed_demo_people(settings)
        yield settings


def _seed_demo_people(settings: Settings) -> None:
    """The demo people's e-licences (producers/e_license.py), which many tests file with: seeded
    once here, not by whichever test happens to start an app with seed_demo first (an empty
    database each run, and pytest-xdist's order, made that a matter of luck)."""
    import psycopg

    from producers.e_license import seed_demo_people

    with psycopg.connect(settings.database_url) as conn:
        seed_demo_people(conn)


_XDIST_SESSION: list = []


def _xdist_controller(config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


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


@pytest.fixture(autouse=True)
def _structlog_restored():
    """Each test starts from the same logging configuration: a CLI test run in process configures
    structlog at WARNING (infra/cli.py), and a later test's capture_logs would then see no info."""
    before = structlog.get_config()
    yield
    structlog.configure(**before)


def pytest_configure(config):
    config.addinivalue_line("markers", "after_all_logs: reads the logs every other test's processes wrote; "
                                       "runs last (tests/conftest.py)")
    if _xdist_controller(config) and os.environ.get("ONETHING_TEST_STACK_OWNER") != "xdist":
        # one stack for every worker, up before they start (two workers starting one broker would race)
        session = stack.session(Settings.from_env())
        session.__enter__()
        _XDIST_SESSION.append(session)
        os.environ["ONETHING_TEST_STACK_OWNER"] = "xdist"   # the workers inherit it


def pytest_unconfigure(config):
    while _XDIST_SESSION:
        _XDIST_SESSION.pop().__exit__(None, None, None)
        os.environ.pop("ONETHING_TEST_STACK_OWNER", None)


#: files that run the system's own processors (named groups: dispatch, the read models, the
#: adapters) on the shared stack: under pytest-xdist one of them at a time (a lock file), as two
#: `dispatch` members in one group would split each other's partitions
SYSTEM_FILES = {"test_process_metrics.py", "test_prometheus.py", "test_read_audit.py", "test_shutdown.py",
                "test_inbox_page.py", "test_status_page.py",
                # its real-topics test did not converge in 180 s beside the other worker's whole system
                # (2026-12-02: 432 partitions assigned, applied 0 — the rebalance listener's call never
                # came; projectors/assignment.py now reconciles); kept apart, its 432 partitions are heavy
                "test_case_view.py",
                # the cascade's own harness skips when another system's adapters hold the departments'
                # groups: never beside a file that runs the system
                "test_cascade_flow.py", "test_register_sealing.py"}


@pytest.fixture(scope="module", autouse=True)
def _one_system_file_at_a_time(request):
    if not _WORKER or Path(str(request.node.path)).name not in SYSTEM_FILES:
        yield
        return
    import fcntl

    home = Path(os.environ.get("ONETHING_HOME") or ".")
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "system-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes
        yield


def pytest_collection_modifyitems(items):
    """Tests that read the whole log (a live rebuild of the case view) run first, while the suite's
    own stack holds little of it; their outcome does not depend on the order, only their time.
    Tests that scan the log files the other tests' processes wrote (tests/test_log_masking.py) run last."""
    whole = [i for i in items if i.get_closest_marker("whole_log")]
    last = [i for i in items if i.get_closest_marker("after_all_logs")]
    items[:] = whole + [i for i in items if i not in whole and i not in last] + last

