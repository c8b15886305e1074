"""The local broker's security settings: listeners, SCRAM super users at format time, and the
record of the mode a stack was started in. Kept apart from infra/kafka_local.py (processes and
lifecycle) because it holds the one place the broker's own password is written.

scram: clients and brokers speak SASL/SCRAM-SHA-512 on `SASL_PLAINTEXT`; the controller listener
(127.0.0.1 only) speaks SASL/PLAIN with a static login for `broker`, because SCRAM credentials live
in the metadata log the controller itself serves; KRaft's StandardAuthorizer denies whatever no
ACL allows; `admin` and `broker` are super users. none: PLAINTEXT and no authorizer.
"""
from __future__ import annotations

import json
from pathlib import Path

from events import kafka_auth

SUPER_USERS = (kafka_auth.ADMIN, kafka_auth.BROKER)
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def listener_properties(port: int, controller_port: int, auth: str) -> dict[str, object]:
    """server.properties entries for the listeners and, for scram, authentication and authorization."""
    if auth == "none":
        return {
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        }
    broker = kafka_auth.password(kafka_auth.BROKER)
    return {
        "listeners": f"SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": kafka_auth.MECHANISM,
        "sasl.mechanism.inter.broker.protocol": kafka_auth.MECHANISM,
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{kafka_auth.BROKER}" password="{broker}";',
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config":
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{kafka_auth.BROKER}" password="{broker}" user_{kafka_auth.BROKER}="{broker}";',
        "authorizer.class.name": AUTHORIZER,
        "super.users": ";".join(f"User:{u}" for u in SUPER_USERS),
        "allow.everyone.if.no.acl.found": "false",
    }


def format_args(auth: str) -> list[str]:
    """`kafka-storage format` arguments that write the super users into the bootstrap metadata, in
    the one JVM run that formats. The passwords are on that command line for its few seconds."""
    if auth != "scram":
        return []
    args: list[str] = []
    for user in SUPER_USERS:
        args += ["--add-scram", f"{kafka_auth.MECHANISM}=[name={user},password={kafka_auth.password(user)}]"]
    return args


def redact(text: str) -> str:
    """A tool's output with the super users' passwords blanked, for an error message."""
    for user in SUPER_USERS:
        text = text.replace(kafka_auth.password(user), "***")
    return text


def upsert_super_users(bootstrap: str) -> list[str]:
    """Create `admin` and `broker` through the admin API of a PLAINTEXT broker without an
    authorizer (a stack formatted before SCRAM existed); returns the users it could not create."""
    from kafka import KafkaAdminClient
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap, auth_mode="none"), client_id="onething-admin",
                             request_timeout_ms=15000)
    try:
        result = admin.alter_user_scram_credentials([
            UserScramCredentialUpsertion(u, ScramMechanism.SCRAM_SHA_512, kafka_auth.password(u)) for u in SUPER_USERS])
    finally:
        admin.close()
    return sorted(u for u, err in result.items() if err)


class AuthRecord:
    """`<home>/auth.json`: the mode the stack was last started in and whether its super users exist.
    Clients of a running local stack read the mode from here (events/kafka_auth.py)."""

    def __init__(self, home: Path):
        self.path = Path(home) / kafka_auth.AUTH_FILE

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def mode(self) -> str:
        """"none" for a stack started before this record existed."""
        return self.read().get("mode", "none")

    def has_super_users(self) -> bool:
        return bool(self.read().get("scram_users"))

    def update(self, **fields: object) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.read(), **fields}))
        tmp.replace(self.path)
