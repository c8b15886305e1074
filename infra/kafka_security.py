"""The local broker's security settings: listeners, TLS certificates, SCRAM super users at format
time, and the record of the mode a stack was started in. Kept apart from infra/kafka_local.py
(processes and lifecycle) because it holds the one place the broker's own password and private key
are written.

scram: clients and brokers speak SASL/SCRAM-SHA-512 on `SASL_PLAINTEXT`; the controller listener
(127.0.0.1 only) speaks SASL/PLAIN with a static login for `broker`, because SCRAM credentials live
in the metadata log the controller itself serves; KRaft's StandardAuthorizer denies whatever no
ACL allows; `admin` and `broker` are super users. none: PLAINTEXT and no authorizer.

tls (ONETHING_KAFKA_TLS=1): the client and inter-broker listener speaks `SASL_SSL` (`SSL` with
auth none) with a certificate for 127.0.0.1 and localhost signed by a CA generated for this stack
(`<home>/tls`, kept across restarts), in Kafka's PEM key and trust stores; the controller listener
stays as above, on 127.0.0.1 only.
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import structlog

from events import kafka_auth

log = structlog.get_logger(__name__)

SUPER_USERS = (kafka_auth.ADMIN, kafka_auth.BROKER)
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
BROKER_DNS = ("localhost",)
BROKER_IPS = ("127.0.0.1",)
CA_DAYS, BROKER_DAYS = 3650, 365
RENEW_BEFORE = timedelta(days=30)   # a certificate closer than this to its end is made anew at start


def listener_properties(port: int, controller_port: int, auth: str,
                        tls: "TlsFiles | None" = None) -> dict[str, object]:
    """server.properties entries for the listeners, for tls the PEM stores, and, for scram,
    authentication and authorization."""
    if auth == "none":
        client = "SSL" if tls else "PLAINTEXT"
        props: dict[str, object] = {
            "listeners": f"{client}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"{client}://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": client,
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{client}:{client}",
        }
        return {**props, **(tls.properties() if tls else {})}
    client = "SASL_SSL" if tls else "SASL_PLAINTEXT"
    broker = kafka_auth.password(kafka_auth.BROKER)
    return {
        "listeners": f"{client}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"{client}://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": client,
        "listener.security.protocol.map": f"CONTROLLER:SASL_PLAINTEXT,{client}:{client}",
        **(tls.properties() if tls else {}),
        "sasl.enabled.mechanisms": kafka_auth.MECHANISM,
        "sasl.mechanism.inter.broker.protocol": kafka_auth.MECHANISM,
        f"listener.name.{client.lower()}.scram-sha-512.sasl.jaas.config":
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


def upsert_super_users(bootstrap: str, tls_ca: Path | None = None) -> list[str]:
    """Create `admin` and `broker` through the admin API of a PLAINTEXT (or SSL) broker without an
    authorizer (a stack formatted before SCRAM existed); returns the users it could not create."""
    from kafka import KafkaAdminClient
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap, auth_mode="none", tls_ca=tls_ca),
                             client_id="onething-admin", request_timeout_ms=15000)
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

    def tls(self) -> bool:
        return bool(self.read().get("tls"))

    def has_super_users(self) -> bool:
        return bool(self.read().get("scram_users"))

    def update(self, **fields: object) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.read(), **fields}))
        tmp.replace(self.path)


# -- TLS: the local stack's own CA and broker certificate ----------------------------------------------
@dataclass(frozen=True)
class TlsFiles:
    """`<home>/tls`: `ca.pem` (what clients trust: ONETHING_KAFKA_TLS_CA), `ca.key`, `broker.pem`
    (the broker's certificate, then the CA's) and `broker.key`. The keys are readable by their owner only."""
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / kafka_auth.CA_FILE

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def cert(self) -> Path:
        return self.dir / "broker.pem"

    @property
    def key(self) -> Path:
        return self.dir / "broker.key"

    def properties(self) -> dict[str, str]:
        """Kafka's PEM stores (KIP-651): the PEM text inline in server.properties (which is readable by
        its owner only), its line breaks written as the `\\n` escapes Java's Properties reads back."""
        def inline(path: Path) -> str:
            return path.read_text().strip().replace("\n", "\\n")

        return {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.certificate.chain": inline(self.cert),
            "ssl.keystore.key": inline(self.key),
            "ssl.truststore.type": "PEM",          # inter-broker connections check each other against the CA
            "ssl.truststore.certificates": inline(self.ca),
            "ssl.endpoint.identification.algorithm": "https",
            "ssl.client.auth": "none",             # clients prove who they are with SCRAM, not certificates
        }


def ensure_certificates(directory: Path) -> TlsFiles:
    """The stack's CA and broker certificate, made once and kept: made anew only when missing,
    unreadable, not matching (the broker's not signed by this CA, its key not its own, a name
    missing) or within RENEW_BEFORE of their end."""
    files = TlsFiles(Path(directory))
    files.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(files.dir, 0o700)
    ca = _load(files.ca, files.ca_key)
    if ca is None or not _ca_ok(*ca):
        ca = _new_certificate(files.ca, files.ca_key, None)
    broker = _load(files.cert, files.key)
    if broker is None or not _broker_ok(broker[0], broker[1], ca[0]):
        _new_certificate(files.cert, files.key, ca)
    return files


def _load(cert_path: Path, key_path: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError):
        return None


def _fresh(cert) -> bool:
    return cert.not_valid_after_utc - datetime.now(timezone.utc) > RENEW_BEFORE


def _own_key(cert, key) -> bool:
    return cert.public_key().public_numbers() == key.public_key().public_numbers()


def _ca_ok(cert, key) -> bool:
    from cryptography import x509

    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
    return is_ca and _fresh(cert) and _own_key(cert, key)


def _broker_ok(cert, key, ca_cert) -> bool:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca_cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    return (set(BROKER_DNS) <= set(names.get_values_for_type(x509.DNSName))
            and {ipaddress.ip_address(a) for a in BROKER_IPS} <= set(names.get_values_for_type(x509.IPAddress))
            and _fresh(cert) and _own_key(cert, key))


def _new_certificate(cert_path: Path, key_path: Path, issuer):
    """A P-256 key and its certificate: the CA's own (issuer None) or the broker's, signed by `issuer`
    (the CA's certificate and key). Written key first, each atomically; returns (certificate, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    is_ca = issuer is None
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "onething local stack"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "onething local Kafka CA" if is_ca else "localhost")])
    signer_cert, signer_key = (None, key) if is_ca else issuer
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(subject if is_ca else signer_cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(days=CA_DAYS if is_ca else BROKER_DAYS))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not is_ca, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=is_ca, crl_sign=is_ca, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if not is_ca:
        builder = (builder
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
                                  critical=False)
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.DNSName(d) for d in BROKER_DNS]
                       + [x509.IPAddress(ipaddress.ip_address(a)) for a in BROKER_IPS]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    cert = builder.sign(signer_key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, pem if is_ca else pem + signer_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("kafka.tls.certificate_made", what="ca" if is_ca else "broker", path=str(cert_path),
             not_after=cert.not_valid_after_utc.isoformat())
    return cert, key


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)
