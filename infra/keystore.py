"""The data keys of the data subjects, in PostgreSQL, wrapped by a master key (envelope encryption).

A subject (the pseudonymous applicant token, never a resident ID) has one active data key: a
random AES-256 key, stored only wrapped (AES-256-GCM) under the master key named by
`ONETHING_MASTER_KEY` / `ONETHING_MASTER_KEY_ID` — in production a KMS's key; in development
derived from a published secret. Events carry values sealed under it (events/personal.py).

A department gets the keys of its own cases only: when a case is accepted, the subject's data
key is wrapped once more for each department of the case, to the department's X25519 public key
(ephemeral-static ECDH, HKDF-SHA256, AES-256-GCM), in `department_data_keys` — a row a department
reads under row-level security, and can unwrap with its private key only. The platform never
needs a department's private key, and one department's rows are nothing to another.

Erasure destroys the subject's wrapped keys (both tables); every sealed copy then opens as
已删除. Rotating the master key re-wraps the data keys and touches no event: the log never held
a master-wrapped key. Unwrapped keys are cached in a process for `ONETHING_KEY_CACHE_S`
(30 s): the longest an erasure takes to reach a running process.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import threading
import time
import uuid
from dataclasses import dataclass

import psycopg
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from events.personal import KeyLookup

MASTER_KEY_ENV, MASTER_KEY_ID_ENV, OLD_MASTER_KEYS_ENV = (
    "ONETHING_MASTER_KEY", "ONETHING_MASTER_KEY_ID", "ONETHING_MASTER_KEYS_OLD")
DEV_SECRET_ENV = "ONETHING_KEY_DEV_SECRET"
DEV_SECRET = "onething-dev-key-secret-not-for-production"
CACHE_S_ENV = "ONETHING_KEY_CACHE_S"
#: `off` turns sealing personal data off — development only, for `onething bench --sealing-ab`
SEALING_ENV = "ONETHING_SEALING"


class KeyConfigError(SystemExit):
    """A key that is not configured (named by its variable, never its value)."""


def _dev_bytes(label: str) -> bytes:
    secret = os.environ.get(DEV_SECRET_ENV) or DEV_SECRET
    return hmac.new(secret.encode(), label.encode(), hashlib.sha256).digest()


def _b64key(variable: str, text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise KeyConfigError(f"{variable} must be 32 bytes, base64-encoded")
    return raw


def _dev_allowed() -> bool:
    from .safe_config import is_dev

    return is_dev()


def sealing_on(env=None) -> bool:
    """Whether the API seals what it accepts and a department its outputs. Only `onething bench
    --sealing-ab` turns it off (`ONETHING_SEALING=off`), to measure what sealing costs; outside
    development (ONETHING_ENV=dev) that is refused here and at every process's start
    (infra/safe_config.py): production never writes personal data in clear."""
    env = os.environ if env is None else env
    value = (env.get(SEALING_ENV) or "on").strip().lower()
    if value not in ("on", "off"):
        raise KeyConfigError(f"{SEALING_ENV} must be on or off")
    if value == "on":
        return True
    from .safe_config import is_dev

    if not is_dev(env):
        raise KeyConfigError(f"{SEALING_ENV}=off is refused: personal data is sealed outside development "
                             "(ONETHING_ENV=dev is not set)")
    return False


# -- the master key ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MasterKeys:
    """The current master key and those it replaced (still able to unwrap until re-wrapped)."""
    current_id: str
    keys: dict[str, bytes]

    @classmethod
    def from_env(cls) -> "MasterKeys":
        env = os.environ
        keys: dict[str, bytes] = {}
        for item in filter(None, (env.get(OLD_MASTER_KEYS_ENV) or "").split(",")):
            kid, _, text = item.partition("=")
            keys[kid.strip()] = _b64key(OLD_MASTER_KEYS_ENV, text.strip())
        if env.get(MASTER_KEY_ENV):
            current = env.get(MASTER_KEY_ID_ENV) or "k1"
            keys[current] = _b64key(MASTER_KEY_ENV, env[MASTER_KEY_ENV])
        elif _dev_allowed():
            current = "dev"
            keys[current] = _dev_bytes("master")
        else:
            raise KeyConfigError(f"{MASTER_KEY_ENV} is not set (the master key that wraps the data keys; "
                                 "README, \"Personal data\")")
        return cls(current, keys)

    def wrap(self, key_id: str, key: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(12)
        return self.current_id, nonce + AESGCM(self.keys[self.current_id]).encrypt(nonce, key, key_id.encode())

    def unwrap(self, master_id: str, key_id: str, wrapped: bytes) -> bytes:
        master = self.keys.get(master_id)
        if master is None:
            raise KeyConfigError(f"data key {key_id} is wrapped by master key {master_id!r}, which is not configured "
                                 f"(add it to {OLD_MASTER_KEYS_ENV} until `onething keys rotate` re-wrapped it)")
        return AESGCM(master).decrypt(wrapped[:12], wrapped[12:], key_id.encode())


# -- the departments' keys ---------------------------------------------------------------------------
def department_private_variable(department: str) -> str:
    return f"ONETHING_DEPARTMENT_KEY_{department.upper()}"


def department_public_variable(department: str) -> str:
    return f"ONETHING_DEPARTMENT_PUBLIC_KEY_{department.upper()}"


def department_private_key(department: str) -> X25519PrivateKey:
    """The department's own (its backend holds it); in development derived from the dev secret."""
    text = os.environ.get(department_private_variable(department))
    if text:
        return X25519PrivateKey.from_private_bytes(_b64key(department_private_variable(department), text))
    if _dev_allowed():
        return X25519PrivateKey.from_private_bytes(_dev_bytes(f"department:{department}"))
    raise KeyConfigError(f"{department_private_variable(department)} is not set (README, \"Personal data\")")


def department_public_key(department: str) -> X25519PublicKey:
    """What the platform knows of a department's key: its public half (read once per setting:
    every accepted case wraps its key for each of its departments)."""
    return _public_key(department, os.environ.get(department_public_variable(department)),
                       os.environ.get(department_private_variable(department)), _dev_allowed())


@functools.lru_cache(maxsize=256)
def _public_key(department: str, public: str | None, private: str | None, dev: bool) -> X25519PublicKey:
    if public:
        return X25519PublicKey.from_public_bytes(_b64key(department_public_variable(department), public))
    if dev or private:
        return department_private_key(department).public_key()
    raise KeyConfigError(f"{department_public_variable(department)} is not set (README, \"Personal data\")")


def _kek(shared: bytes, info: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=info.encode()).derive(shared)


def seal_to(public: X25519PublicKey, info: str, data: bytes) -> bytes:
    """`data` for the holder of `public`'s private key only (ephemeral-static X25519, HKDF-SHA256,
    AES-256-GCM; `info` binds the purpose): ephemeral public key ‖ nonce ‖ ciphertext."""
    ephemeral = X25519PrivateKey.generate()
    kek = _kek(ephemeral.exchange(public), info)
    nonce = os.urandom(12)
    eph = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return eph + nonce + AESGCM(kek).encrypt(nonce, data, info.encode())


def open_as(private: X25519PrivateKey, info: str, blob: bytes) -> bytes:
    kek = _kek(private.exchange(X25519PublicKey.from_public_bytes(blob[:32])), info)
    return AESGCM(kek).decrypt(blob[32:44], blob[44:], info.encode())


def wrap_for_department(department: str, key_id: str, key: bytes) -> bytes:
    return seal_to(department_public_key(department), f"onething/dept/{department}/{key_id}", key)


def wrap_for_departments(departments, key_id: str, key: bytes) -> list[bytes]:
    """`wrap_for_department` for each of a case's departments, in their order, with one ephemeral
    key for them all: a wrap costs one X25519 exchange instead of a key generation and an
    exchange (the grant was most of what sealing cost the API). Still each department's alone:
    its shared secret is the ephemeral key with *its* public key, and the KEK binds the
    department (randomness re-use across recipients, as multi-recipient DHIES/ECIES does). The
    rows of one case share the ephemeral public key — they are linked by their case already."""
    ephemeral = X25519PrivateKey.generate()
    eph = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    out = []
    for department in departments:
        info = f"onething/dept/{department}/{key_id}"
        nonce = os.urandom(12)
        kek = _kek(ephemeral.exchange(department_public_key(department)), info)
        out.append(eph + nonce + AESGCM(kek).encrypt(nonce, key, info.encode()))
    return out


def unwrap_as_department(private: X25519PrivateKey, department: str, key_id: str, wrapped: bytes) -> bytes:
    return open_as(private, f"onething/dept/{department}/{key_id}", wrapped)


# -- the operator's key (dead letters) -----------------------------------------------------------------
OPERATOR_KEY_ENV, OPERATOR_PUBLIC_KEY_ENV = "ONETHING_OPERATOR_KEY", "ONETHING_OPERATOR_PUBLIC_KEY"


def operator_private_key() -> X25519PrivateKey:
    """Only where an authorised operator reads dead letters (`onething deadletters show`)."""
    text = os.environ.get(OPERATOR_KEY_ENV)
    if text:
        return X25519PrivateKey.from_private_bytes(_b64key(OPERATOR_KEY_ENV, text))
    if _dev_allowed():
        return X25519PrivateKey.from_private_bytes(_dev_bytes("operator"))
    raise KeyConfigError(f"{OPERATOR_KEY_ENV} is not set (README, \"Personal data\")")


def operator_public_key() -> X25519PublicKey:
    """What every process that parks dead letters knows: the public half."""
    text = os.environ.get(OPERATOR_PUBLIC_KEY_ENV)
    if text:
        return X25519PublicKey.from_public_bytes(_b64key(OPERATOR_PUBLIC_KEY_ENV, text))
    return operator_private_key().public_key()


# -- the store -------------------------------------------------------------------------------------
def subject_key(conn: psycopg.Connection, subject: str, master: MasterKeys) -> tuple[str, bytes]:
    """The subject's active data key, made on first use (concurrent callers agree on one)."""
    row = conn.execute("SELECT key_id, master_key_id, wrapped FROM data_keys WHERE subject = %s AND erased_at IS NULL",
                       (subject,)).fetchone()
    if row is None:
        key_id, key = uuid.uuid4().hex, AESGCM.generate_key(bit_length=256)
        master_id, wrapped = master.wrap(key_id, key)
        conn.execute("INSERT INTO data_keys (key_id, subject, master_key_id, wrapped) VALUES (%s, %s, %s, %s) "
                     "ON CONFLICT DO NOTHING", (key_id, subject, master_id, wrapped))
        row = conn.execute("SELECT key_id, master_key_id, wrapped FROM data_keys WHERE subject = %s "
                           "AND erased_at IS NULL", (subject,)).fetchone()
    key_id, master_id, wrapped = row
    return key_id, master.unwrap(master_id, key_id, bytes(wrapped))


def grant(conn: psycopg.Connection, case_id: str, key_id: str, key: bytes, departments) -> None:
    """The key, wrapped for each department a case is sent to (once each; one statement)."""
    depts = sorted(set(departments))
    if not depts:
        return
    conn.execute("INSERT INTO department_data_keys (case_id, department, key_id, wrapped) "
                 "SELECT %s, d, %s, w FROM unnest(%s::text[], %s::bytea[]) AS x(d, w) ON CONFLICT DO NOTHING",
                 (case_id, key_id, depts, wrap_for_departments(depts, key_id, key)))


class _Cache:
    """key id → key (or None: destroyed), for a while: a batch of events opens without a query each."""

    def __init__(self, fetch, ttl_s: float | None = None):
        self.fetch, self.entries, self.lock = fetch, {}, threading.Lock()
        self.ttl_s = ttl_s if ttl_s is not None else float(os.environ.get(CACHE_S_ENV) or 30)

    def __call__(self, key_id: str) -> bytes | None:
        now = time.monotonic()
        with self.lock:
            hit = self.entries.get(key_id)
        if hit is not None and now - hit[1] < self.ttl_s:
            return hit[0]
        key = self.fetch(key_id)
        with self.lock:
            if len(self.entries) > 100_000:
                self.entries.clear()
            self.entries[key_id] = (key, now)
        return key


def platform_keys(connect, master: MasterKeys | None = None, ttl_s: float | None = None) -> KeyLookup:
    """A `KeyLookup` for the platform's processes; `connect()` lends a connection (a context manager)."""
    master = master or MasterKeys.from_env()

    def fetch(key_id: str) -> bytes | None:
        with connect() as conn:
            row = conn.execute("SELECT master_key_id, wrapped FROM data_keys WHERE key_id = %s", (key_id,)).fetchone()
        if row is None or row[1] is None:
            return None
        return master.unwrap(row[0], key_id, bytes(row[1]))

    return _Cache(fetch, ttl_s)


def department_keys(connect, department: str, ttl_s: float | None = None) -> KeyLookup:
    """A `KeyLookup` for a department's backend: only keys granted to it open."""
    private = department_private_key(department)

    def fetch(key_id: str) -> bytes | None:
        with connect() as conn:
            row = conn.execute("SELECT wrapped FROM department_data_keys WHERE key_id = %s AND department = %s "
                               "LIMIT 1", (key_id, department)).fetchone()
        return unwrap_as_department(private, department, key_id, bytes(row[0])) if row else None

    return _Cache(fetch, ttl_s)


def case_key_id(conn: psycopg.Connection, department: str, case_id: str) -> str | None:
    """The data key a department seals a case's outputs with (the subject's), if it was granted one."""
    row = conn.execute("SELECT key_id FROM department_data_keys WHERE case_id = %s AND department = %s",
                       (case_id, department)).fetchone()
    return row[0] if row else None


def erase(conn: psycopg.Connection, subject: str, *, by: str, reason: str) -> list[str]:
    """Destroy every data key of `subject` (and the departments' copies); returns their ids."""
    ids = [k for (k,) in conn.execute(
        "UPDATE data_keys SET wrapped = NULL, master_key_id = NULL, erased_at = now(), erased_by = %s, "
        "erase_reason = %s WHERE subject = %s AND erased_at IS NULL RETURNING key_id", (by, reason, subject))]
    if ids:
        conn.execute("DELETE FROM department_data_keys WHERE key_id = ANY(%s)", (ids,))
    return ids


def rotate(conn: psycopg.Connection, master: MasterKeys, batch: int = 500) -> int:
    """Re-wrap every data key not under the current master key; returns how many."""
    done = 0
    while True:
        with conn.transaction():
            n = _rotate_batch(conn, master, batch)
        if not n:
            return done
        done += n


def _rotate_batch(conn: psycopg.Connection, master: MasterKeys, batch: int) -> int:
    rows = conn.execute("SELECT key_id, master_key_id, wrapped FROM data_keys WHERE erased_at IS NULL "
                        "AND master_key_id <> %s LIMIT %s FOR UPDATE SKIP LOCKED",
                        (master.current_id, batch)).fetchall()
    for key_id, master_id, wrapped in rows:
        new_id, rewrapped = master.wrap(key_id, master.unwrap(master_id, key_id, bytes(wrapped)))
        conn.execute("UPDATE data_keys SET master_key_id = %s, wrapped = %s WHERE key_id = %s",
                     (new_id, rewrapped, key_id))
    return len(rows)


# -- register data (producers/registers.py) ------------------------------------------------------------
#: `department_data_keys.case_id` of a subject's key granted for their register data
REGISTER_GRANT_PREFIX = "register:"


def grant_subject(conn: psycopg.Connection, subject: str, key_id: str, key: bytes, departments) -> None:
    """The subject's key for the departments that keep a copy of their register data (the person's
    household address, a legal representative's name and ID): one row per (subject, department),
    `case_id` `register:<subject>`, wrapped only for departments that do not hold it yet — the same
    person's changes come again and again."""
    case_id = REGISTER_GRANT_PREFIX + subject
    depts = sorted(set(departments))
    if not depts:
        return
    have = {d for (d,) in conn.execute("SELECT department FROM department_data_keys WHERE case_id = %s "
                                       "AND key_id = %s AND department = ANY(%s)", (case_id, key_id, depts))}
    todo = [d for d in depts if d not in have]
    if todo:
        conn.execute("INSERT INTO department_data_keys (case_id, department, key_id, wrapped) "
                     "SELECT %s, d, %s, w FROM unnest(%s::text[], %s::bytea[]) AS x(d, w) "
                     "ON CONFLICT (case_id, department) DO UPDATE SET key_id = EXCLUDED.key_id, "
                     "wrapped = EXCLUDED.wrapped, granted_at = now()",
                     (case_id, key_id, todo, [wrap_for_department(d, key_id, key) for d in todo]))


def key_subject(conn: psycopg.Connection, key_id: str) -> str | None:
    """Whose data key this is (the subject's pseudonymous token), None once it was erased or if it is
    unknown. A register value sealed under a person's own key names that person without being
    opened: the proactive processor finds a company's legal representative so, with no master key."""
    row = conn.execute("SELECT subject FROM data_keys WHERE key_id = %s AND erased_at IS NULL", (key_id,)).fetchone()
    return row[0] if row else None
