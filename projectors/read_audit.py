"""谁查看了我的数据: the read audit, a PostgreSQL read model of `audit.reads`.

Every read of personal data by staff through the API is a `PersonalDataRead` fact on
`audit.reads` (producers/api_audit.py), keyed by the data subject's pseudonymous token. This
projection appends one row per read to `audit_reads` and chains the rows of each subject by hash
(projectors/audit_chain.py), so a row changed or taken out afterwards shows in `onething audit
verify`. It only ever inserts: its PostgreSQL role may SELECT and INSERT and nothing else
(infra/db_components.py `APPEND_ONLY`), and a trigger refuses UPDATE and DELETE to everyone.

The chain's order is the log's: the topic is keyed by subject, so a subject's reads are on one
partition in one order, and a batch loads the heads of the chains it touches with one query and
inserts its rows with one statement. Rebuilt from the log it gives the same rows and hashes.

Readers: the applicant's status page (`case_reads`: who, in which role, when, why — never the
staff member's id), the supervisor (`staff_reads`: what one staff member read), the operator
(`verify`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row

from events.envelope import Event
from infra.topics import AUDIT_READS

from .audit_chain import HASHED, Break, Head, breaks, extend
from .batch_rows import rows_json
from .postgres_projection import UnqualifiedTables

log = structlog.get_logger(__name__)

NAME = "read_audit"
HANDLED = ("PersonalDataRead",)
_COLUMNS = (*HASHED, "prev_hash", "row_hash")
_TYPES = {"position": "bigint", "occurred_at": "timestamptz", "fields": "text[]"}
_RECORD = ", ".join(f"{c} {_TYPES.get(c, 'text')}" for c in _COLUMNS)
_INSERT = (f"INSERT INTO audit_reads ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} FROM jsonb_to_recordset(%s)"
           f" AS x({_RECORD}) ORDER BY subject, position")


def row_of(event: Event) -> dict[str, Any]:
    """The audit row of one read, before it is linked into its subject's chain."""
    p, env = event.payload, event.envelope
    if p["subject"] != event.key:  # the chain's order is the key's partition order
        raise ValueError("a PersonalDataRead is keyed by its subject")
    return {"subject": p["subject"], "event_id": event.id, "occurred_at": env.occurred_at,
            "staff_id": env.actor.staff_id or env.actor.id_token, "role": env.actor.role,
            "channel": env.actor.channel, "department": p.get("department"), "kind": p["kind"],
            "case_id": p.get("case_id"), "service_id": p.get("service_id"), "fields": list(p.get("fields") or ()),
            "document_id": p.get("document_id"), "purpose": p["purpose"], "purpose_id": p.get("purpose_id"),
            "route": p["route"], "correlation_id": env.correlation_id}


class ReadAuditProjection(UnqualifiedTables):
    event_types = frozenset(HANDLED)
    topics = (AUDIT_READS,)
    migration = Path(__file__).resolve().parent.parent / "infra" / "migrations" / "0014_read_audit.sql"
    probe_table = "audit_reads"
    tables = ("audit_reads",)

    def __init__(self, *, name: str = NAME, schema: str = "public"):
        self.place(name, schema)

    def reset(self, conn: psycopg.Connection) -> None:
        """For the owner's rebuild from the log (the component role may not truncate)."""
        conn.execute("TRUNCATE audit_reads")

    def wants(self, event: Event) -> bool:
        return event.type in HANDLED

    def apply(self, conn: psycopg.Connection, event: Event) -> None:
        self.apply_batch(conn, [event])

    def apply_batch(self, conn: psycopg.Connection, events: list[Event]) -> None:
        rows = [row_of(e) for e in events if e.type in HANDLED]
        if not rows:
            return
        subjects = sorted({r["subject"] for r in rows})
        heads = {s: Head(int(p), h) for s, p, h in conn.execute(
            "SELECT DISTINCT ON (subject) subject, position, row_hash FROM audit_reads WHERE subject = ANY(%s) "
            "ORDER BY subject, position DESC", (subjects,))}
        linked, _ = extend(heads, rows)
        conn.execute(_INSERT, (rows_json(linked),))


def processors() -> list:
    """The read audit as a processor of the runtime (the read-models process; `onething run read-audit`)."""
    from .postgres_projection import ProjectionProcessor

    return [ProjectionProcessor(ReadAuditProjection())]


# -- reading ---------------------------------------------------------------------------------------
def case_reads(conn: psycopg.Connection, subject: str, case_id: str, *, uncased: bool = False,
               limit: int = 200) -> list[dict[str, Any]]:
    """What the applicant sees: reads of this case (and, with `uncased`, of the person outside any
    case: e-licences fetched while filing, register entries), newest first. Never the staff
    member's id: the same reader, role, purpose and Beijing day are one line with a count."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT department, role, kind, case_id, service_id, fields, purpose, purpose_id,"
            " min(occurred_at) AS first_at, max(occurred_at) AS last_at, count(*) AS times FROM audit_reads"
            " WHERE subject = %(subject)s AND (case_id = %(case_id)s OR (%(uncased)s AND case_id IS NULL))"
            " GROUP BY department, role, kind, case_id, service_id, fields, purpose, purpose_id,"
            " (occurred_at AT TIME ZONE 'Asia/Shanghai')::date ORDER BY last_at DESC LIMIT %(limit)s",
            {"subject": subject, "case_id": case_id, "uncased": uncased, "limit": limit}).fetchall()


_STAFF_COLUMNS = ", ".join((*HASHED, "row_hash"))


def staff_reads(conn: psycopg.Connection, staff_id: str, *, since: datetime | None = None,
                until: datetime | None = None, limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """What one staff member read, newest first (a page of it), and how many reads in all."""
    where = "staff_id = %(staff_id)s AND (%(since)s::timestamptz IS NULL OR occurred_at >= %(since)s)" \
            " AND (%(until)s::timestamptz IS NULL OR occurred_at < %(until)s)"
    args = {"staff_id": staff_id, "since": since, "until": until, "limit": limit, "offset": offset}
    with conn.cursor(row_factory=dict_row) as cur:
        total = cur.execute(f"SELECT count(*) AS n FROM audit_reads WHERE {where}", args).fetchone()["n"]
        rows = cur.execute(f"SELECT {_STAFF_COLUMNS} FROM audit_reads WHERE {where}"
                           " ORDER BY occurred_at DESC, event_id LIMIT %(limit)s OFFSET %(offset)s", args).fetchall()
    return total, rows


@dataclass
class Verification:
    rows: int = 0
    chains: int = 0
    broken: list[Break] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.broken


def verify(conn: psycopg.Connection, subject: str | None = None,
           progress: Callable[[int], None] | None = None) -> Verification:
    """Check every chain (or one subject's) as stored: one pass over the table in chain order
    through a server-side cursor, so a large audit is never held in memory."""
    result = Verification()

    def counted(cur) -> Iterator[dict[str, Any]]:
        last = None
        for row in cur:
            result.rows += 1
            if row["subject"] != last:
                result.chains += 1
                last = row["subject"]
            if progress and result.rows % 10_000 == 0:
                progress(result.rows)
            yield row

    with conn.transaction(), conn.cursor("audit_verify", row_factory=dict_row) as cur:
        cur.itersize = 2000
        cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM audit_reads"
                    + (" WHERE subject = %s" if subject else "") + " ORDER BY subject, position",
                    (subject,) if subject else None)
        result.broken = list(breaks(counted(cur)))
    if result.broken:
        log.warning("audit.chain_broken", chains=len(result.broken), rows=result.rows)
    return result
