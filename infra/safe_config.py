"""Refuse to start a real deployment with development credentials.

The project ships values that make the demo work with nothing configured: a published token
secret (anyone who has read the source can mint a supervisor's token), a published pseudonym
secret, the local database's `onething:onething`, Kafka without authentication or with passwords
derived from a published secret, Kafka off this machine without TLS. Each is fine on a developer's machine and a breach anywhere
else, and a warning in a log is read after the breach. So every process (the API and every
processor, `python -m infra.process …`) checks its configuration first and, outside development,
exits naming each variable to set.

Development is declared, never guessed: `ONETHING_ENV=dev`. `infra/onething.sh`, `onething demo`,
`onething bench` and the test suite set it; `onething run` on its own does not.
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable

from producers import identity

ENV = "ONETHING_ENV"
DEV = "dev"
MIN_SECRET_CHARS = 32
TOKEN_SECRET = identity.TOKEN_SECRET_ENV
PSEUDONYM_SECRET = identity.PSEUDONYM_SECRET_ENV
DEV_SECRETS = {TOKEN_SECRET: identity.DEV_TOKEN_SECRET, PSEUDONYM_SECRET: identity.DEV_PSEUDONYM_SECRET}


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def remote_kafka_hosts(bootstrap: str) -> list[str]:
    """The bootstrap servers' hosts that are not this machine (`host:port`, `[v6]:port`, comma-separated)."""
    hosts = []
    for server in filter(None, (s.strip() for s in bootstrap.split(","))):
        host = server.rsplit(":", 1)[0] if server.count(":") == 1 or server.startswith("[") else server
        host = host.strip("[]").lower()
        if not _loopback(host):
            hosts.append(host)
    return hosts


class UnsafeConfiguration(SystemExit):
    """A process that must not start: the message names every variable to set (never a value)."""


def is_dev(env: dict[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get(ENV) == DEV


def problems(settings, principals: Iterable[str] = (), env: dict[str, str] | None = None) -> list[str]:
    """What is unsafe for a process outside development, one line per variable; [] in development.

    `principals` are the Kafka principals the process logs in as (infra/acls.py)."""
    env = dict(os.environ if env is None else env)
    if is_dev(env):
        return []
    out: list[str] = []
    for name, dev_value in DEV_SECRETS.items():
        value = env.get(name) or ""
        if not value:
            out.append(f"{name} is not set (the published development secret would be used)")
        elif value == dev_value:
            out.append(f"{name} is the published development secret")
        elif len(value) < MIN_SECRET_CHARS:
            out.append(f"{name} is shorter than {MIN_SECRET_CHARS} characters")
    if env.get(TOKEN_SECRET) and env.get(TOKEN_SECRET) == env.get(PSEUDONYM_SECRET):
        out.append(f"{TOKEN_SECRET} and {PSEUDONYM_SECRET} are the same: rotating one must not change the other")
    if not env.get("DATABASE_URL"):
        out.append("DATABASE_URL is not set (the local development database and its password would be used)")
    from events.kafka_auth import TLS_CA_ENV

    ca = env.get(TLS_CA_ENV)
    if ca and not (os.path.isfile(ca) and os.access(ca, os.R_OK)):
        out.append(f"{TLS_CA_ENV} names no readable file (the CA Kafka's certificates are checked against)")
    elif not ca and remote_kafka_hosts(settings.bootstrap_servers):
        out.append(f"{TLS_CA_ENV} is not set: Kafka is not on this machine, and without TLS "
                   "every form crosses the network unencrypted")
    if settings.kafka_auth != "scram":
        out.append("ONETHING_KAFKA_AUTH is not scram: Kafka without authentication lets anyone read every form")
    else:
        if env.get("ONETHING_KAFKA_DEV_SECRET"):
            out.append("ONETHING_KAFKA_DEV_SECRET is set: development passwords are for development only")
        from events.kafka_auth import password_variable

        for principal in sorted(set(principals)):
            own = password_variable(principal)
            shared = env.get("ONETHING_KAFKA_USER") == principal and env.get("ONETHING_KAFKA_PASSWORD")
            if not env.get(own) and not shared:
                out.append(f"{own} is not set (Kafka password of principal {principal})")
    out += _key_problems(env, principals)
    return out


def _key_problems(env: dict[str, str], principals: Iterable[str]) -> list[str]:
    """The keys of personal data (infra/keystore.py): the API seals with the master key and wraps
    for each department's public key; a department opens with its private key; every process
    seals its dead letters to the operator's public key."""
    from infra import keystore

    out = []
    if env.get(keystore.DEV_SECRET_ENV):
        out.append(f"{keystore.DEV_SECRET_ENV} is set: development keys are for development only")
    if (env.get(keystore.SEALING_ENV) or "on").strip().lower() != "on":
        out.append(f"{keystore.SEALING_ENV} is not on: personal data would be written unsealed "
                   "(`onething bench --sealing-ab` only, in development)")
    if not env.get(keystore.OPERATOR_PUBLIC_KEY_ENV):
        out.append(f"{keystore.OPERATOR_PUBLIC_KEY_ENV} is not set (dead letters are sealed to it)")
    wanted = set(principals)
    if "api" in wanted:
        from catalog.loader import load_catalog

        if not env.get(keystore.MASTER_KEY_ENV):
            out.append(f"{keystore.MASTER_KEY_ENV} is not set (the master key that wraps the data keys)")
        missing = [d for d in sorted(load_catalog().departments)
                   if not env.get(keystore.department_public_variable(d))]
        if missing:
            out.append(f"{keystore.department_public_variable(missing[0])} is not set (and {len(missing) - 1} more "
                       "departments' public keys: a case's data key is wrapped for each department it goes to)")
    for principal in sorted(p for p in wanted if p.startswith("adapter.")):
        variable = keystore.department_private_variable(principal.removeprefix("adapter."))
        if not env.get(variable):
            out.append(f"{variable} is not set (the department's private key opens its tasks)")
    return out


def require_safe(settings, component: str, principals: Iterable[str] = ()) -> None:
    """Exit before anything starts if `problems` finds any."""
    found = problems(settings, principals)
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise UnsafeConfiguration(
            f"onething {component}: refusing to start outside development ({ENV}={DEV} is not set):\n{lines}\n"
            f"Set these (README, \"Security model\"), or {ENV}={DEV} on a development machine.")
