"""What each audited route shows, as the reads it records (producers/api_audit.py `Read`).

One function per kind of answer, beside the rule rather than inside each handler, so what counts
as a read of whose data is decided in one place:

- the case view (a department's staff; clerks and supervisors if a rule ever lets them): one read
  of the case, purpose its open task (the department's service still at it, else its latest);
- a worklist, the supervisor's queue, a department's rectifications: one read per listed case and
  item — each is a line the citizen may see, and a list shows every listed person's case (many
  reads of a page refreshed again and again are one line a day on the status page);
- a company's register entry: a read of its legal representative, when their fields are shown;
- cascade changes: a read per change of the person register (its key is the person's token);
  a company's changes show field names only and record nothing.
Subjects come from the intake's own rows (the case's applicant_token), never from a token's claims.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from events.personal import ERASED

from . import identity
from .api_audit import UNKNOWN_REGION, Read

OPEN_STATUSES = ("dispatched", "accepted", "correction_requested")
LEGAL_REPRESENTATIVE = ("legal_representative_name", "legal_representative_resident_id")


def subjects_of(conn: psycopg.Connection, case_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """case id → (the applicant's token, region code), from the intake's rows (then the case view)."""
    wanted = sorted(set(case_ids))
    if not wanted:
        return {}
    found = {c: (t, r or UNKNOWN_REGION) for c, t, r in conn.execute(
        "SELECT case_id, applicant_token, region_code FROM intake_cases WHERE case_id = ANY(%s)", (wanted,))}
    rest = [c for c in wanted if c not in found]
    if rest:
        found |= {c: (t, r or UNKNOWN_REGION) for c, t, r in conn.execute(
            "SELECT case_id, applicant_token, region_code FROM case_view WHERE case_id = ANY(%s) "
            "AND applicant_token IS NOT NULL", (rest,))}
    return found


def case_view_read(conn: psycopg.Connection, ident: identity.Identity, case_id: str, view: dict[str, Any]) -> Read:
    """The case as shown: the names of the outputs in it (personal data: a child's resident ID)."""
    shown = sorted({k for s in view.get("services") or () for k in (s.get("outputs") or {})})
    mine = [s for s in view.get("services") or () if ident.department and s.get("department") == ident.department]
    service = next((s for s in mine if s.get("status") in OPEN_STATUSES), mine[-1] if mine else None)
    task_id = None
    if service is not None:
        row = conn.execute("SELECT task_id FROM case_service_view WHERE case_id = %s AND service_id = %s",
                           (case_id, service["service_id"])).fetchone()
        task_id = row[0] if row else None
    return Read(view.get("applicant_token") or "", "case_view", "task", case_id=case_id,
                service_id=service["service_id"] if service else None, fields=tuple(shown), purpose_id=task_id,
                region_code=view.get("region_code") or UNKNOWN_REGION)


def listed_reads(conn: psycopg.Connection, items: list[dict[str, Any]], kind: str, purpose: str,
                 purpose_key: str) -> tuple[list[Read], list[dict[str, Any]]]:
    """A list's reads, one per item, and the items that may be shown: an item whose subject is not
    known cannot be recorded, so it is left out (no read without a record)."""
    subjects = subjects_of(conn, (i["case_id"] for i in items if i.get("case_id")))
    reads, shown = [], []
    for item in items:
        who = subjects.get(item.get("case_id"))
        if who is None:
            continue
        reads.append(Read(who[0], kind, purpose, case_id=item["case_id"], service_id=item.get("service_id"),
                          purpose_id=item.get(purpose_key), region_code=who[1]))
        shown.append(item)
    return reads, shown


def register_entry_read(entry_fields: dict[str, Any], shown: dict[str, Any], uscc: str) -> Read | None:
    """A company's entry shows its legal representative's name and ID to who keeps them (the entry
    opened: once that person was erased it shows 已删除, and nobody's data is read)."""
    personal = tuple(k for k in LEGAL_REPRESENTATIVE if k in shown)
    resident_id = entry_fields.get("legal_representative_resident_id")
    if not personal or not isinstance(resident_id, str) or not resident_id or resident_id == ERASED:
        return None
    return Read(identity.subject_token(resident_id), "register_entry", "register", fields=personal,
                purpose_id=uscc)


def cascade_reads(changes: Iterable[dict[str, Any]]) -> list[Read]:
    """Changes of the person register name the person by their token: each is a read of that person."""
    return [Read(c["key"], "cascade_change", "cascade", fields=tuple(c.get("changed_fields") or ()),
                 purpose_id=c.get("change_event_id"))
            for c in changes if c.get("register") == "person" and c.get("key")]
