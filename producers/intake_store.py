"""The intake API's own PostgreSQL state (migration 0005): accepted cases, idempotency keys,
per-case sequences and uploaded documents.

Every write that goes with an event runs in a transaction that stays open while the event
is produced and commits only after Kafka acknowledged it: if the broker is unreachable the
transaction rolls back and nothing points at an event that was never written.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import psycopg

from events import personal

#: namespace of case ids derived from an Idempotency-Key; changing it breaks retries in flight
CASE_NAMESPACE = uuid.UUID("2b7f3d2e-4c1a-5e8b-9f60-1d3c5a7e9b21")
MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
DOCUMENT_TYPES = frozenset({"application/pdf", "image/jpeg", "image/png", "image/webp", "image/heic"})


def connect(url: str) -> psycopg.Connection:
    """Autocommit: every multi-statement write says `with conn.transaction()` explicitly."""
    return psycopg.connect(url, connect_timeout=5, autocommit=True)


def request_hash(body: Any) -> str:
    """A fingerprint of a request body, to tell a retry from a different request under one key."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def case_id_for(caller_token: str, idempotency_key: str | None) -> str:
    """Random without a key; derived from (caller, key) with one, so even a retry after a crash
    between Kafka's acknowledgement and the commit produces the same case id (and event id),
    which every consumer drops as a repeat."""
    if idempotency_key is None:
        return f"case-{uuid.uuid4().hex[:20]}"
    return f"case-{uuid.uuid5(CASE_NAMESPACE, caller_token + '|' + idempotency_key).hex[:20]}"


@dataclass(frozen=True)
class IntakeCase:
    case_id: str
    receipt_no: str
    applicant_token: str
    bundle_code: str
    services: list[str]
    departments: list[str]
    region_code: str
    channel: str
    staff_id: str | None
    status: str
    next_sequence: int
    submitted_at: Any


_CASE_COLUMNS = ("case_id, receipt_no, applicant_token, bundle_code, services, departments, region_code, "
                 "channel, staff_id, status, next_sequence, submitted_at")


def get_case(conn: psycopg.Connection, case_id: str, *, for_update: bool = False) -> IntakeCase | None:
    row = conn.execute(f"SELECT {_CASE_COLUMNS} FROM intake_cases WHERE case_id = %s"
                       + (" FOR UPDATE" if for_update else ""), (case_id,)).fetchone()
    return IntakeCase(*row) if row else None


def claim_key(conn: psycopg.Connection, caller_token: str, key: str, body_hash: str,
              case_id: str) -> tuple[str, str] | None:
    """Claim an Idempotency-Key inside the caller's transaction.

    None: claimed, go on and produce. Otherwise (request_hash, case_id) of the earlier request.
    A concurrent claim of the same key waits here until the first transaction ends.
    """
    row = conn.execute(
        "INSERT INTO intake_idempotency (caller_token, idempotency_key, request_hash, case_id) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING case_id",
        (caller_token, key, body_hash, case_id)).fetchone()
    if row is not None:
        return None
    earlier = conn.execute(
        "SELECT request_hash, case_id FROM intake_idempotency WHERE caller_token = %s AND idempotency_key = %s",
        (caller_token, key)).fetchone()
    return earlier[0], earlier[1]


def idempotency_record(conn: psycopg.Connection, caller_token: str, key: str) -> str | None:
    row = conn.execute("SELECT case_id FROM intake_idempotency WHERE caller_token = %s AND idempotency_key = %s",
                       (caller_token, key)).fetchone()
    return row[0] if row else None


def insert_case(conn: psycopg.Connection, *, case_id: str, receipt_no: str, applicant_token: str,
                bundle_code: str, services: Iterable[str], departments: Iterable[str], region_code: str,
                channel: str, staff_id: str | None) -> None:
    conn.execute(
        "INSERT INTO intake_cases (case_id, receipt_no, applicant_token, bundle_code, services, departments, "
        "region_code, channel, staff_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (case_id, receipt_no, applicant_token, bundle_code, list(services), list(departments), region_code,
         channel, staff_id))


def take_sequence(conn: psycopg.Connection, case_id: str, *, status: str | None = None) -> int:
    """The envelope sequence of the next event of a case (the row must be locked FOR UPDATE)."""
    row = conn.execute(
        "UPDATE intake_cases SET next_sequence = next_sequence + 1, updated_at = now(), "
        "status = coalesce(%s, status) WHERE case_id = %s RETURNING next_sequence - 1",
        (status, case_id)).fetchone()
    return int(row[0])


def save_document(conn: psycopg.Connection, owner_token: str, content_type: str, body: bytes,
                  key: tuple[str, bytes]) -> dict[str, Any]:
    """Stores the body sealed under `key` (the owner's data key: key id, key); the digest is of the
    clear body, so a download can be checked against what the uploader was told."""
    ref = f"doc-{uuid.uuid4().hex}"
    digest = hashlib.sha256(body).hexdigest()
    key_id, data_key = key
    conn.execute("INSERT INTO intake_documents (ref, owner_token, content_type, size_bytes, sha256, body, key_id) "
                 "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                 (ref, owner_token, content_type, len(body), digest,
                  personal.seal_bytes(data_key, key_id, ref, body), key_id))
    return {"ref": ref, "sha256": digest, "size_bytes": len(body), "content_type": content_type}


@dataclass(frozen=True)
class StoredDocument:
    ref: str
    owner_token: str
    content_type: str
    sha256: str
    body: bytes           # as stored: sealed, unless key_id is None (stored before sealing)
    key_id: str | None


def stored_document(conn: psycopg.Connection, ref: str) -> StoredDocument | None:
    row = conn.execute("SELECT ref, owner_token, content_type, sha256, body, key_id FROM intake_documents "
                       "WHERE ref = %s", (ref,)).fetchone()
    return StoredDocument(row[0], row[1], row[2], row[3], bytes(row[4]), row[5]) if row else None


def record_uses(conn: psycopg.Connection, case_id: str, applicant_token: str, materials: Iterable[dict]) -> None:
    """The uploaded documents a case's materials name (before their refs are sealed)."""
    rows = [(m["ref"], case_id, m["code"], applicant_token) for m in materials
            if m.get("source") == "uploaded" and isinstance(m.get("ref"), str) and not personal.is_sealed(m["ref"])]
    if rows:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO intake_document_uses (ref, case_id, material_code, applicant_token) "
                            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", rows)


def document_uses(conn: psycopg.Connection, ref: str) -> list[tuple[str, str]]:
    """(case id, material code) of every case that used the document."""
    return [(c, m) for c, m in conn.execute(
        "SELECT case_id, material_code FROM intake_document_uses WHERE ref = %s ORDER BY used_at", (ref,))]


def owned_documents(conn: psycopg.Connection, owner_token: str, refs: Iterable[str]) -> set[str]:
    refs = [r for r in refs if isinstance(r, str)]
    if not refs:
        return set()
    rows = conn.execute("SELECT ref FROM intake_documents WHERE owner_token = %s AND ref = ANY(%s)",
                        (owner_token, refs)).fetchall()
    return {r[0] for r in rows}
