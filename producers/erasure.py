"""Erasure (个人信息保护法 Art. 47) and retention: a subject's personal data is forgotten by
destroying their keys, once their cases are closed and kept as long as the catalog says.

`erasable` is the rule, pure: every case of the subject is closed (completed or withdrawn) and
its bundle's retention period, counted from the day it closed, has passed — or an operator
overrides the period, which is recorded. `erase` applies it: the subject's data keys and the
departments' copies are destroyed (infra/keystore.py), the uploads of their cases deleted, and a
`SubjectErased` event (who, when, why; no personal data) is on the `privacy` topic before the
transaction commits. Afterwards every sealed copy — on the topics, in dead letters, in the read
models, in a rebuild from the log — opens as 已删除. `due` is the retention sweeper: subjects
whose every case is past its period.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import psycopg

from catalog.model import Catalog
from events.envelope import Actor, Event, new_event
from infra import keystore

#: 政务服务办件 records kept this long after closing unless a bundle says otherwise (estimate: the
#: archives rules give 10 years for most 行政许可 files; a bundle's own `retention: {years: …,
#: source: …}` in the catalog wins)
DEFAULT_RETENTION_YEARS = 10


@dataclass(frozen=True)
class SubjectCase:
    case_id: str
    bundle_code: str
    closed_on: date | None      # None: still open


class ErasureRefused(ValueError):
    """Why a subject may not be erased yet (names cases and dates, never personal data)."""


def retention_years(catalog: Catalog, bundle_code: str) -> int:
    b = catalog.bundles.get(bundle_code)
    return int(b.retention.value) if b is not None and b.retention is not None else DEFAULT_RETENTION_YEARS


def kept_until(catalog: Catalog, case: SubjectCase) -> date | None:
    if case.closed_on is None:
        return None
    years = retention_years(catalog, case.bundle_code)
    try:
        return case.closed_on.replace(year=case.closed_on.year + years)
    except ValueError:  # 29 February
        return case.closed_on.replace(year=case.closed_on.year + years, day=28) + timedelta(days=1)


def refusals(catalog: Catalog, cases: list[SubjectCase], today: date, *, override: bool) -> list[str]:
    """Why the subject may not be erased today; [] if they may."""
    out = []
    for case in cases:
        until = kept_until(catalog, case)
        if until is None:
            out.append(f"case {case.case_id} is not closed")
        elif today < until and not override:
            out.append(f"case {case.case_id} ({case.bundle_code}) is kept until {until.isoformat()} "
                       f"({retention_years(catalog, case.bundle_code)} years after it closed)")
    return out


# -- I/O -------------------------------------------------------------------------------------------
def subject_cases(conn: psycopg.Connection, subject: str) -> list[SubjectCase]:
    rows = conn.execute(
        "SELECT i.case_id, i.bundle_code, coalesce(v.completed_at, v.withdrawn_at, "
        "CASE WHEN i.status = 'withdrawn' THEN i.updated_at END) "
        "FROM intake_cases i LEFT JOIN case_view v USING (case_id) WHERE i.applicant_token = %s "
        "ORDER BY i.case_id", (subject,)).fetchall()
    return [SubjectCase(c, b, _day(closed)) for c, b, closed in rows]


def _day(value: Any) -> date | None:
    if value is None:
        return None
    return value.date() if isinstance(value, datetime) else value


def erase(conn: psycopg.Connection, publish, catalog: Catalog, subject: str, *, actor: Actor, reason: str,
          today: date, override: bool = False) -> Event:
    """Destroy the subject's keys and uploads, with the event acknowledged before the commit.
    `publish(topic, event)` waits for the broker; raising rolls everything back."""
    from infra.topics import PRIVACY

    if not reason.strip():
        raise ErasureRefused("an erasure needs a reason")
    with conn.transaction():
        cases = subject_cases(conn, subject)
        if not cases and not conn.execute("SELECT 1 FROM data_keys WHERE subject = %s AND erased_at IS NULL",
                                          (subject,)).fetchone():
            raise ErasureRefused("no personal data is held for this subject")
        problems = refusals(catalog, cases, today, override=override)
        if problems:
            raise ErasureRefused("; ".join(problems))
        who = f"{actor.role}:{actor.staff_id or actor.id_token}"
        key_ids = keystore.erase(conn, subject, by=who, reason=reason)
        ids = [c.case_id for c in cases]
        # their uploads, and what a clerk uploaded for their cases (sealed under the clerk's key)
        conn.execute("DELETE FROM intake_documents WHERE owner_token = %s OR ref IN "
                     "(SELECT ref FROM intake_document_uses WHERE applicant_token = %s)", (subject, subject))
        event = new_event("SubjectErased", subject,
                          {"subject": subject, "key_ids": key_ids, "case_ids": ids, "reason": reason,
                           "retention_overridden": override},
                          actor=actor, region_code="000000", correlation_id=f"erase:{subject}")
        publish(PRIVACY, event)
    return event


def due(conn: psycopg.Connection, catalog: Catalog, today: date, limit: int = 1000) -> list[tuple[str, date]]:
    """The retention sweeper: (subject, since when) for subjects holding keys whose every case is
    past its retention period — proposals for an operator, never erased automatically."""
    subjects = [s for (s,) in conn.execute(
        "SELECT subject FROM data_keys WHERE erased_at IS NULL ORDER BY created_at LIMIT %s", (limit,))]
    out = []
    for subject in subjects:
        cases = subject_cases(conn, subject)
        if cases and not refusals(catalog, cases, today, override=False):
            out.append((subject, max(kept_until(catalog, c) for c in cases)))
    return out
