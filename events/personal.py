"""Personal data in events, sealed with its data subject's key: the log can forget (crypto-shredding).

Fact topics keep every event forever, and a form carries resident IDs, names, mobile numbers and
bank accounts. So a personal value never travels in clear: it is replaced by a sealed text

    pd1:<key id>:<base64url(nonce ‖ AES-256-GCM ciphertext ‖ tag)>

under the data key of the case's subject (infra/keystore.py keeps those keys, wrapped by a master
key). The field's id is bound in as associated data, so a sealed value moved to another field
does not open. Destroying the subject's key (erasure) leaves every copy — on every topic, in
dead letters, in read models, in a rebuild — unreadable at once; what opens it then reads
`ERASED` (已删除).

The value stays a string, so the events' Avro schemas (`form: map<string, string>`) do not change;
the key id is in the value, the envelope's routing fields stay clear. This module is the one
place that seals and opens; it is pure (keys are passed in) — fetching keys is the key store's.
"""
from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "pd1:"
ERASED = "已删除"
NONCE_BYTES = 12
_SEALED = re.compile(r"pd1:([0-9a-f]{32}):([A-Za-z0-9_-]+)")

#: key id → the data key (32 bytes), or None when it was destroyed
KeyLookup = Callable[[str], "bytes | None"]


class SealBroken(ValueError):
    """A sealed value that does not open under its key (altered, or moved to another field)."""


def seal(key: bytes, key_id: str, field: str, value: str) -> str:
    return _seal(AESGCM(key), key_id, field, value)


def _seal(aead: AESGCM, key_id: str, field: str, value: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = aead.encrypt(nonce, value.encode(), _aad(key_id, field))
    return f"{PREFIX}{key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def key_id_of(value: str) -> str | None:
    m = _SEALED.fullmatch(value) if is_sealed(value) else None
    return m.group(1) if m else None


def open_value(keys: KeyLookup, field: str, value: str) -> str:
    """The clear value; `ERASED` if its key was destroyed; a clear value as it is."""
    return _open(Opener.of(keys), field, value)


class Opener:
    """`keys` for the values of one call (or one task): each key looked up, and its cipher made,
    once — a task's fields are all under its subject's key. For `open_value` and `open_fields` (one
    task's worth: it keeps no key past the call that made it)."""

    def __init__(self, keys: KeyLookup):
        self.keys, self.aeads = keys, {}

    @classmethod
    def of(cls, keys: "KeyLookup | Opener") -> "Opener":
        return keys if isinstance(keys, Opener) else cls(keys)

    def __call__(self, key_id: str) -> AESGCM | None:
        if key_id not in self.aeads:
            key = self.keys(key_id)
            self.aeads[key_id] = AESGCM(key) if key is not None else None
        return self.aeads[key_id]


def _open(opener: Opener, field: str, value: str) -> str:
    if not is_sealed(value):
        return value
    m = _SEALED.fullmatch(value)
    if m is None:
        raise SealBroken(f"field {field}: not a sealed value")
    key_id, blob = m.groups()
    aead = opener(key_id)
    if aead is None:
        return ERASED
    raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
    try:
        return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(key_id, field)).decode()
    except InvalidTag:
        raise SealBroken(f"field {field}: the sealed value does not open under key {key_id}") from None


def seal_fields(key: bytes, key_id: str, values: Mapping[str, str], personal: Callable[[str], bool]) -> dict[str, str]:
    """`values` with every personal field sealed (already sealed ones left as they are)."""
    aead = AESGCM(key)
    return {k: _seal(aead, key_id, k, v) if personal(k) and not is_sealed(v) and v != "" else v
            for k, v in values.items()}


def open_fields(keys: KeyLookup, values: Mapping[str, str]) -> dict[str, str]:
    opener = Opener.of(keys)
    return {k: _open(opener, k, v) for k, v in values.items()}


def seal_bytes(key: bytes, key_id: str, label: str, data: bytes) -> bytes:
    """A document's body sealed like a value (nonce ‖ ciphertext ‖ tag), `label` (the document's
    ref) bound in: a body copied to another row does not open."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, data, _aad(key_id, label))


def open_bytes(keys: KeyLookup, key_id: str, label: str, sealed: bytes) -> bytes | None:
    """The clear body; None once its key was destroyed (erased)."""
    key = keys(key_id)
    if key is None:
        return None
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(key_id, label))
    except InvalidTag:
        raise SealBroken(f"document {label}: the sealed body does not open under key {key_id}") from None


def key_ids(values: Mapping[str, str]) -> set[str]:
    return {kid for v in values.values() if (kid := key_id_of(v))}


def _aad(key_id: str, field: str) -> bytes:
    return f"onething/pd1/{key_id}/{field}".encode()
