"""Outside development every process refuses the published development credentials, naming
the variable to set; with ONETHING_ENV=dev (the demo, the tests) it starts as before."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from infra.safe_config import DEV_SECRETS, problems
from infra.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
STRONG = {"ONETHING_TOKEN_SECRET": "t" * 40, "ONETHING_PSEUDONYM_SECRET": "p" * 40,
          "DATABASE_URL": "postgresql://dispatch@db.example/onething", "ONETHING_KAFKA_AUTH": "scram",
          "ONETHING_KAFKA_PASSWORD_DISPATCH": "x" * 24, "ONETHING_OPERATOR_PUBLIC_KEY": "a" * 43 + "="}
SCRAM = replace(Settings(), kafka_auth="scram")


def test_development_allows_everything():
    assert problems(Settings(), ["dispatch"], env={"ONETHING_ENV": "dev"}) == []


def test_a_production_configuration_passes():
    assert problems(SCRAM, ["dispatch"], env=STRONG) == []


@pytest.mark.parametrize("variable, value, says", [
    ("ONETHING_TOKEN_SECRET", None, "ONETHING_TOKEN_SECRET is not set"),
    ("ONETHING_TOKEN_SECRET", DEV_SECRETS["ONETHING_TOKEN_SECRET"], "ONETHING_TOKEN_SECRET is the published"),
    ("ONETHING_PSEUDONYM_SECRET", "s3cr3t", "ONETHING_PSEUDONYM_SECRET is shorter than 32"),
    ("ONETHING_PSEUDONYM_SECRET", "t" * 40, "are the same"),
    ("DATABASE_URL", None, "DATABASE_URL is not set"),
    ("ONETHING_KAFKA_PASSWORD_DISPATCH", None, "ONETHING_KAFKA_PASSWORD_DISPATCH is not set"),
    ("ONETHING_KAFKA_DEV_SECRET", "anything", "ONETHING_KAFKA_DEV_SECRET is set"),
    ("ONETHING_OPERATOR_PUBLIC_KEY", None, "ONETHING_OPERATOR_PUBLIC_KEY is not set"),
    ("ONETHING_KEY_DEV_SECRET", "anything", "ONETHING_KEY_DEV_SECRET is set"),
])
def test_each_unsafe_setting_is_named(variable, value, says):
    env = {k: v for k, v in STRONG.items() if k != variable}
    if value is not None:
        env[variable] = value
    found = problems(SCRAM, ["dispatch"], env=env)
    assert len(found) == 1 and says in found[0], found
    assert not value or value not in found[0], "a problem never quotes a value"


def test_the_keys_of_personal_data_are_named_per_component():
    """The API seals (master key, the departments' public keys); an adapter opens (its private key)."""
    from catalog.loader import load_catalog

    api = problems(SCRAM, ["api"], env={**STRONG, "ONETHING_KAFKA_PASSWORD_API": "x" * 24})
    assert any(p.startswith("ONETHING_MASTER_KEY is not set") for p in api), api
    assert any("ONETHING_DEPARTMENT_PUBLIC_KEY_" in p for p in api), api
    keys = {f"ONETHING_DEPARTMENT_PUBLIC_KEY_{d.upper()}": "k" * 43 + "=" for d in load_catalog().departments}
    assert problems(SCRAM, ["api"], env={**STRONG, **keys, "ONETHING_KAFKA_PASSWORD_API": "x" * 24,
                                         "ONETHING_MASTER_KEY": "m" * 43 + "="}) == []
    police = problems(SCRAM, ["adapter.police"], env={**STRONG, "ONETHING_KAFKA_PASSWORD_ADAPTER_POLICE": "x" * 24})
    assert police == ["ONETHING_DEPARTMENT_KEY_POLICE is not set (the department's private key opens its tasks)"]


def test_kafka_without_authentication_is_refused():
    found = problems(replace(Settings(), kafka_auth="none"), ["dispatch"], env=STRONG)
    assert found == ["ONETHING_KAFKA_AUTH is not scram: Kafka without authentication lets anyone read every form"]


@pytest.mark.parametrize("bootstrap", ["kafka-1.example:9093,kafka-2.example:9093", "10.0.0.7:9093",
                                       "127.0.0.1:9092,kafka.example:9092", "[2001:db8::1]:9093"])
def test_kafka_off_this_machine_needs_tls(bootstrap, tmp_path):
    remote = replace(SCRAM, bootstrap_servers=bootstrap, local_kafka=False)
    found = problems(remote, ["dispatch"], env=STRONG)
    assert len(found) == 1 and found[0].startswith("ONETHING_KAFKA_TLS_CA is not set"), found
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert problems(remote, ["dispatch"], env={**STRONG, "ONETHING_KAFKA_TLS_CA": str(ca)}) == []
    missing = problems(remote, ["dispatch"], env={**STRONG, "ONETHING_KAFKA_TLS_CA": str(tmp_path / "gone.pem")})
    assert len(missing) == 1 and "ONETHING_KAFKA_TLS_CA names no readable file" in missing[0], missing
    assert "gone.pem" not in missing[0], "a problem never quotes a value"


@pytest.mark.parametrize("bootstrap", ["127.0.0.1:9092", "localhost:9092", "[::1]:9092", "127.0.0.2:9092,localhost:9094"])
def test_kafka_on_this_machine_needs_no_tls(bootstrap):
    assert problems(replace(SCRAM, bootstrap_servers=bootstrap), ["dispatch"], env=STRONG) == []


def test_one_shared_principal_password_is_enough():
    env = {k: v for k, v in STRONG.items() if k != "ONETHING_KAFKA_PASSWORD_DISPATCH"}
    env.update(ONETHING_KAFKA_USER="dispatch", ONETHING_KAFKA_PASSWORD="y" * 24)
    assert problems(SCRAM, ["dispatch"], env=env) == []


@pytest.mark.parametrize("component", ["api", "dispatch"])
def test_a_process_outside_development_exits_before_starting(component, tmp_path):
    """A real process, started as an operator would with nothing set: it exits at once, naming
    the variables, before connecting to anything (the ports below have nothing listening)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONETHING_") and k != "DATABASE_URL"}
    env.update(ONETHING_HOME=str(tmp_path), ONETHING_KAFKA_PORT="1", ONETHING_METRICS_PORT="-1",
               ONETHING_KAFKA_AUTH="none")
    done = subprocess.run([sys.executable, "-m", "infra.process", component], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "refusing to start outside development" in done.stderr, done.stderr[-2000:]
    for variable in ("ONETHING_TOKEN_SECRET", "ONETHING_PSEUDONYM_SECRET", "DATABASE_URL", "ONETHING_KAFKA_AUTH"):
        assert variable in done.stderr


@pytest.mark.postgres
def test_processes_outside_development_need_their_database_passwords(settings, database_url, monkeypatch):
    """The adapters log in as their departments' roles, dispatch as its component's; outside
    development a role's password must be given, never the one derived from the published
    development secret."""
    from infra import postgres_local
    from infra.process import database_roles
    from projectors.dispatch import Dispatch

    if settings.local_postgres:
        postgres_local.ensure_roles()

    class Adapter:
        department = "police"
        database_url = None

    monkeypatch.delenv("ONETHING_ENV")
    monkeypatch.delenv("ONETHING_DB_PASSWORD_ONETHING_DEPT_POLICE", raising=False)
    with pytest.raises(SystemExit, match="ONETHING_DB_PASSWORD_ONETHING_DEPT_POLICE is not set"):
        database_roles(settings, [Adapter()])
    monkeypatch.setenv("ONETHING_DB_PASSWORD_ONETHING_DEPT_POLICE", "given-by-the-dba")
    adapter = Adapter()
    database_roles(settings, [adapter])
    assert adapter.database_url.startswith("postgresql://onething_dept_police:given-by-the-dba@")
    with pytest.raises(SystemExit, match="ONETHING_DB_PASSWORD_ONETHING_DISPATCH is not set"):
        database_roles(settings, [Dispatch()])
    monkeypatch.setenv("ONETHING_DB_PASSWORD_ONETHING_DISPATCH", "given-too")
    dispatch = Dispatch()
    database_roles(settings, [dispatch])
    assert dispatch.database_url.startswith("postgresql://onething_dispatch:given-too@")
