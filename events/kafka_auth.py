"""Who a Kafka client is: the security keyword arguments every kafka-python client is built with.

Every producer, consumer and admin client of the project gets its connection through
`connection(bootstrap, principal)`, so the protocol (PLAINTEXT or SASL/SCRAM-SHA-512) and the
credentials are decided in one place. Principals are named after what they run (`dispatch`,
`projection.case_view`, `adapter.police`, `api`, `admin`: infra/acls.py holds the list and what
each may read and write).

Which protocol: `ONETHING_KAFKA_AUTH` when set; otherwise, for the local stack, what the stack
recorded when it was started (`<ONETHING_HOME>/kafka/auth.json`), so a client of a running stack
speaks its protocol; otherwise the default of infra/settings.py.

Which password, for principal P (never logged, never in an exception message):
1. `ONETHING_KAFKA_PASSWORD_<P>` (P upper-cased, every other character `_`:
   `ONETHING_KAFKA_PASSWORD_ADAPTER_POLICE`);
2. `ONETHING_KAFKA_PASSWORD` when `ONETHING_KAFKA_USER` is P (one principal per process);
3. development only (`ONETHING_ENV=dev`, or the local stack `onething up` starts): derived from
   the development secret `ONETHING_KAFKA_DEV_SECRET` (default: a value published in this file),
   so the demo and the tests work out of the box. Anyone who reads this file can derive them:
   a stack reachable by others must set real passwords.
A client built without a principal is `ONETHING_KAFKA_USER`, else the operator's `admin`
(tools, `onething up`, tests).

TLS (a cluster off this machine must use it: infra/safe_config.py): `ONETHING_KAFKA_TLS_CA`, the
path of a PEM file with the CA certificate(s) the brokers' certificates are checked against. When
set, the protocol is `SASL_SSL` (`SSL` when authentication is off), and the broker's certificate
must be signed by that CA and name the host dialled (`ssl_check_hostname`). For the local stack
started with `ONETHING_KAFKA_TLS=1` (infra/kafka_local.py), the CA is the one it generated,
`<ONETHING_HOME>/kafka/tls/ca.pem`, found without the variable: when `ONETHING_KAFKA_TLS=1`, or
when the running stack recorded that it was started with TLS (`ONETHING_KAFKA_TLS=0` says no).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"     # the operator: `onething up`, topic and ACL creation, tools, tests (super user)
BROKER = "broker"   # inter-broker and broker-to-controller traffic (super user)
MODES = ("none", "scram")
DEV_SECRET = "onething-dev-kafka-secret-not-for-production"
AUTH_FILE = "auth.json"
TLS_CA_ENV = "ONETHING_KAFKA_TLS_CA"   # a PEM CA file: clients speak SASL_SSL (or SSL) and check the broker
TLS_ENV = "ONETHING_KAFKA_TLS"         # "1": the local stack serves TLS with a CA of its own (infra/kafka_local.py)
TLS_DIR = "tls"                        # <kafka home>/tls: the local stack's CA and broker certificate
CA_FILE = "ca.pem"
AUTO = "auto"                          # security(tls_ca=AUTO): from the environment or the local stack's record


class KafkaCredentialsMissing(RuntimeError):
    """No password for a principal outside development; the message names the variables to set."""


class KafkaTlsMisconfigured(RuntimeError):
    """TLS was asked for but its CA file cannot be read; the message names the variable."""


@dataclass(frozen=True)
class Credentials:
    """A principal with its password, given explicitly (the adapter SDK's `kafka_user`/`kafka_password`)."""
    user: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(user={self.user!r})"


def password_variable(principal: str) -> str:
    return "ONETHING_KAFKA_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", principal.upper())


def default_principal() -> str:
    return os.environ.get("ONETHING_KAFKA_USER") or ADMIN


def _settings():
    from infra.settings import Settings  # lazy: events/ stays importable without infra's settings read

    return Settings.from_env()


def dev_allowed(settings=None) -> bool:
    """Derived passwords only for development: `ONETHING_ENV=dev` or the stack the project starts."""
    settings = settings or _settings()
    return os.environ.get("ONETHING_ENV") == "dev" or settings.local_kafka


def dev_password(principal: str) -> str:
    """Deterministic per principal, so every local process and the broker agree without a file."""
    secret = os.environ.get("ONETHING_KAFKA_DEV_SECRET") or DEV_SECRET
    return hmac.new(secret.encode(), f"kafka:{principal}".encode(), hashlib.sha256).hexdigest()[:32]


def password(principal: str, settings=None) -> str:
    explicit = os.environ.get(password_variable(principal))
    if explicit:
        return explicit
    if os.environ.get("ONETHING_KAFKA_USER") == principal and os.environ.get("ONETHING_KAFKA_PASSWORD"):
        return os.environ["ONETHING_KAFKA_PASSWORD"]
    if dev_allowed(settings):
        return dev_password(principal)
    raise KafkaCredentialsMissing(
        f"no Kafka password for principal {principal!r}: set {password_variable(principal)} "
        f"(or ONETHING_KAFKA_USER={principal} with ONETHING_KAFKA_PASSWORD)")


def recorded_mode(kafka_dir: Path) -> str | None:
    """How the local stack under `kafka_dir` was last started, if it was."""
    try:
        return json.loads((Path(kafka_dir) / AUTH_FILE).read_text()).get("mode")
    except (OSError, ValueError):
        return None


def local_ca(kafka_dir: Path) -> Path:
    """Where the local stack under `kafka_dir` keeps the CA certificate it generated."""
    return Path(kafka_dir) / TLS_DIR / CA_FILE


def recorded_tls(kafka_dir: Path) -> bool:
    """Whether the local stack under `kafka_dir` was last started with TLS."""
    try:
        return bool(json.loads((Path(kafka_dir) / AUTH_FILE).read_text()).get("tls"))
    except (OSError, ValueError, AttributeError):
        return False


def tls_ca_file(settings=None) -> str | None:
    """The CA file clients check the brokers against, or None for no TLS: `ONETHING_KAFKA_TLS_CA`;
    else, for the local stack, its generated CA if `ONETHING_KAFKA_TLS=1` or its record says TLS."""
    explicit = os.environ.get(TLS_CA_ENV)
    if explicit:
        return explicit
    settings = settings or _settings()
    if not settings.local_kafka:
        return None
    wanted = os.environ.get(TLS_ENV)
    if wanted == "1" or (not wanted and recorded_tls(settings.kafka_dir)):
        return str(local_ca(settings.kafka_dir))
    return None


def _tls(ca: str | Path) -> dict[str, Any]:
    if not os.path.isfile(ca) or not os.access(ca, os.R_OK):
        raise KafkaTlsMisconfigured(
            f"the Kafka TLS CA file {str(ca)!r} cannot be read: set {TLS_CA_ENV} to a readable PEM file "
            f"(for the local stack started with {TLS_ENV}=1, start it first: `onething up`)")
    return {"ssl_cafile": str(ca), "ssl_check_hostname": True}


def mode(settings=None) -> str:
    """The protocol clients use: explicit setting, else the local stack's record, else the default."""
    settings = settings or _settings()
    if not settings.kafka_auth_explicit and settings.local_kafka:
        recorded = recorded_mode(settings.kafka_dir)
        if recorded in MODES:
            return recorded
    return settings.kafka_auth


def security(principal: str | Credentials | None = None, auth_mode: str | None = None,
             tls_ca: str | Path | None = AUTO) -> dict[str, Any]:
    """kafka-python's security keyword arguments for `principal` (nothing extra for PLAINTEXT).

    `tls_ca`: the CA file for TLS, None for none; by default `tls_ca_file(settings)` decides."""
    settings = None
    if auth_mode is None or tls_ca == AUTO:
        settings = _settings()
    if auth_mode is None:
        auth_mode = mode(settings)
    if tls_ca == AUTO:
        tls_ca = tls_ca_file(settings)
    tls = _tls(tls_ca) if tls_ca else {}
    if auth_mode == "none":
        return {"security_protocol": "SSL", **tls} if tls else {}
    # SCRAM proves the password without sending it; over SASL_PLAINTEXT kafka-python warns on every
    # connection that the traffic is not encrypted (README: a cluster off this machine runs SASL_SSL)
    logging.getLogger("kafka.net.sasl.scram").setLevel(logging.ERROR)
    if isinstance(principal, Credentials):
        user, secret = principal.user, principal.password
    else:
        user = principal or default_principal()
        secret = password(user, settings)
    return {"security_protocol": "SASL_SSL" if tls else "SASL_PLAINTEXT", "sasl_mechanism": MECHANISM,
            "sasl_plain_username": user, "sasl_plain_password": secret, **tls}


def connection(bootstrap: str, principal: str | Credentials | None = None,
               auth_mode: str | None = None, tls_ca: str | Path | None = AUTO) -> dict[str, Any]:
    """`bootstrap_servers` and the security arguments: `KafkaConsumer(**connection(b, "dispatch"), ...)`."""
    return {"bootstrap_servers": bootstrap, **security(principal, auth_mode, tls_ca)}


def principal_name(principal: str | Credentials | None) -> str:
    """For logs and client ids: the name, never the password."""
    if isinstance(principal, Credentials):
        return principal.user
    return principal or default_principal()
