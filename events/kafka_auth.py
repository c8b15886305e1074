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


class KafkaCredentialsMissing(RuntimeError):
    """No password for a principal outside development; the message names the variables to set."""


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


def mode(settings=None) -> str:
    """The protocol clients use: explicit setting, else the local stack's record, else the default."""
    settings = settings or _settings()
    if not settings.kafka_auth_explicit and settings.local_kafka:
        recorded = recorded_mode(settings.kafka_dir)
        if recorded in MODES:
            return recorded
    return settings.kafka_auth


def security(principal: str | Credentials | None = None, auth_mode: str | None = None) -> dict[str, Any]:
    """kafka-python's security keyword arguments for `principal` (nothing extra for PLAINTEXT)."""
    settings = None
    if auth_mode is None:
        settings = _settings()
        auth_mode = mode(settings)
    if auth_mode == "none":
        return {}
    # SCRAM proves the password without sending it; kafka-python still warns on every connection
    # that SASL_PLAINTEXT does not encrypt the traffic (README: production runs SASL_SSL)
    logging.getLogger("kafka.net.sasl.scram").setLevel(logging.ERROR)
    if isinstance(principal, Credentials):
        user, secret = principal.user, principal.password
    else:
        user = principal or default_principal()
        secret = password(user, settings)
    return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": MECHANISM,
            "sasl_plain_username": user, "sasl_plain_password": secret}


def connection(bootstrap: str, principal: str | Credentials | None = None,
               auth_mode: str | None = None) -> dict[str, Any]:
    """`bootstrap_servers` and the security arguments: `KafkaConsumer(**connection(b, "dispatch"), ...)`."""
    return {"bootstrap_servers": bootstrap, **security(principal, auth_mode)}


def principal_name(principal: str | Credentials | None) -> str:
    """For logs and client ids: the name, never the password."""
    if isinstance(principal, Credentials):
        return principal.user
    return principal or default_principal()
