"""The supervisor queue of 办不成事 escalations: a PostgreSQL read model.

An escalation comes from the applicant (a fact on `applications`) or from the deadline clock (a
derived event on `cases`); the supervisor's reply, extension and resolution are facts on
`applications`. They may be read in any order, so each event sets only its own columns
(infra/migrations/0009_oversight.sql), and deadlines are computed from the escalation's own
time: a reply within 3 working days, a resolution within 5, extendable to 10
(projectors/deadline_clock.py). Rebuildable from the log like every read model.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row

from catalog.loader import load_catalog
from catalog.model import Catalog
from events.envelope import Event
from infra import metrics
from infra.topics import APPLICATIONS, CASES

from . import deadline_clock as clock
from .postgres_projection import UnqualifiedTables

log = structlog.get_logger(__name__)

NAME = "escalation_queue"
HANDLED = ("CaseEscalated", "EscalationReplied", "EscalationExtended", "EscalationResolved")


class EscalationQueueProjection(UnqualifiedTables):
    event_types = frozenset(HANDLED)
    topics = (APPLICATIONS, CASES)
    migration = Path(__file__).resolve().parent.parent / "infra" / "migrations" / "0009_oversight.sql"
    probe_table = "escalation_queue"
    tables = ("escalation_queue",)

    def __init__(self, catalog: Catalog | None = None, *, name: str = NAME, schema: str = "public"):
        self.catalog = catalog or load_catalog()
        self.place(name, schema)

    tick_s = 5.0  # the open-items gauge for the dashboards

    def tick(self, step) -> None:
        from .deadlines import today_in_china

        count_open(step.conn, today_in_china())

    def reset(self, conn: psycopg.Connection) -> None:
        conn.execute("TRUNCATE escalation_queue")

    def wants(self, event: Event) -> bool:
        return event.type in HANDLED

    def apply(self, conn: psycopg.Connection, event: Event) -> None:
        if event.type not in HANDLED:
            return
        p, at = event.payload, event.envelope.occurred_at
        key = {"id": p["escalation_id"], "case_id": event.key, "at": at}
        if event.type == "CaseEscalated":
            d = clock.escalation_deadlines(at)
            conn.execute(
                "INSERT INTO escalation_queue AS q (escalation_id, case_id, origin, reason, service_id, department,"
                " comment, opened_at, reply_due, resolve_due) VALUES (%(id)s, %(case_id)s, %(origin)s, %(reason)s,"
                " %(service_id)s, %(department)s, %(comment)s, %(at)s, %(reply_due)s, %(resolve_due)s) "
                "ON CONFLICT (escalation_id) DO UPDATE SET origin = EXCLUDED.origin, reason = EXCLUDED.reason,"
                " service_id = EXCLUDED.service_id, department = EXCLUDED.department, comment = EXCLUDED.comment,"
                " opened_at = EXCLUDED.opened_at, reply_due = EXCLUDED.reply_due",
                key | {"origin": p["origin"], "reason": p["reason"], "service_id": p.get("service_id"),
                       "department": p.get("department"), "comment": p.get("comment"),
                       "reply_due": d.reply_due, "resolve_due": d.resolve_due})
            self._fix_resolve_due(conn, p["escalation_id"])  # an extension may have come first
        elif event.type == "EscalationReplied":
            conn.execute(
                "INSERT INTO escalation_queue AS q (escalation_id, case_id, replied_at, reply) VALUES"
                " (%(id)s, %(case_id)s, %(at)s, %(reply)s) ON CONFLICT (escalation_id) DO UPDATE SET"
                " replied_at = coalesce(q.replied_at, EXCLUDED.replied_at), reply = coalesce(q.reply, EXCLUDED.reply)",
                key | {"reply": p["reply"]})
        elif event.type == "EscalationExtended":
            conn.execute(
                "INSERT INTO escalation_queue AS q (escalation_id, case_id, resolve_within, extended_at,"
                " extension_reason) VALUES (%(id)s, %(case_id)s, %(within)s, %(at)s, %(reason)s) "
                "ON CONFLICT (escalation_id) DO UPDATE SET resolve_within = greatest(q.resolve_within,"
                " EXCLUDED.resolve_within), extended_at = greatest(q.extended_at, EXCLUDED.extended_at),"
                " extension_reason = CASE WHEN EXCLUDED.resolve_within >= q.resolve_within"
                "  THEN EXCLUDED.extension_reason ELSE q.extension_reason END",
                key | {"within": int(p["resolve_within_working_days"]), "reason": p["reason"]})
            self._fix_resolve_due(conn, p["escalation_id"])
        elif event.type == "EscalationResolved":
            conn.execute(
                "INSERT INTO escalation_queue AS q (escalation_id, case_id, resolved_at, resolution) VALUES"
                " (%(id)s, %(case_id)s, %(at)s, %(resolution)s) ON CONFLICT (escalation_id) DO UPDATE SET"
                " resolved_at = coalesce(q.resolved_at, EXCLUDED.resolved_at),"
                " resolution = coalesce(q.resolution, EXCLUDED.resolution)",
                key | {"resolution": p["resolution"]})

    def _fix_resolve_due(self, conn: psycopg.Connection, escalation_id: str) -> None:
        row = conn.execute("SELECT opened_at, resolve_within FROM escalation_queue WHERE escalation_id = %s",
                           (escalation_id,)).fetchone()
        if row and row[0] is not None:
            due = clock.escalation_deadlines(row[0], min(row[1], clock.RESOLVE_AT_MOST)).resolve_due
            conn.execute("UPDATE escalation_queue SET resolve_due = %s WHERE escalation_id = %s", (due, escalation_id))


# -- reading -----------------------------------------------------------------------------------------
def _state(row: dict[str, Any], today: date) -> dict[str, Any]:
    status = "resolved" if row["resolved_at"] else "replied" if row["replied_at"] else "open"
    reply_overdue = row["replied_at"] is None and row["reply_due"] is not None and today > row["reply_due"]
    resolve_overdue = row["resolved_at"] is None and row["resolve_due"] is not None and today > row["resolve_due"]
    left = clock.working_days_left(today, row["resolve_due"]) if row["resolve_due"] and not row["resolved_at"] else None
    return row | {"status": status, "reply_overdue": reply_overdue, "resolve_overdue": resolve_overdue,
                  "overdue": reply_overdue or resolve_overdue, "working_days_left": left,
                  "extendable": row["resolved_at"] is None and row["resolve_within"] < clock.RESOLVE_AT_MOST}


_SELECT = ("SELECT q.*, c.bundle_code, c.receipt_no, c.region_code FROM escalation_queue q "
           "LEFT JOIN case_view c USING (case_id) ")


def read_queue(conn: psycopg.Connection, *, status: str = "open", today: date, case_id: str | None = None,
               department: str | None = None, receipt_no: str | None = None, limit: int = 200, offset: int = 0
               ) -> list[dict[str, Any]]:
    """The queue, most urgent first (a page of it). status: open (not resolved) | resolved | all."""
    where = {"open": "WHERE q.resolved_at IS NULL AND q.opened_at IS NOT NULL ",
             "resolved": "WHERE q.resolved_at IS NOT NULL AND q.opened_at IS NOT NULL ",
             "all": "WHERE q.opened_at IS NOT NULL "}[status]
    if case_id is not None:
        where += "AND q.case_id = %(case_id)s "
    if department is not None:
        where += "AND q.department = %(department)s "
    if receipt_no is not None:
        where += "AND c.receipt_no = %(receipt_no)s "
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_SELECT + where + "ORDER BY q.resolve_due NULLS LAST, q.opened_at, q.escalation_id "
                           "LIMIT %(limit)s OFFSET %(offset)s",
                           {"case_id": case_id, "department": department, "receipt_no": receipt_no, "limit": limit,
                            "offset": offset}).fetchall()
    return [_state(r, today) for r in rows]


def count_queue(conn: psycopg.Connection, *, status: str = "open") -> int:
    where = {"open": "resolved_at IS NULL", "resolved": "resolved_at IS NOT NULL", "all": "TRUE"}[status]
    return conn.execute(f"SELECT count(*) FROM escalation_queue WHERE opened_at IS NOT NULL AND {where}").fetchone()[0]


def read_escalation(conn: psycopg.Connection, escalation_id: str, *, today: date) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_SELECT + "WHERE q.escalation_id = %s", (escalation_id,)).fetchone()
    return _state(row, today) if row and row["opened_at"] is not None else None


def read_case_escalations(conn: psycopg.Connection, case_id: str, *, today: date) -> list[dict[str, Any]]:
    """For the applicant's status page: without the comment of anybody else (there is none: a
    case has one applicant) and without the supervisors' internal fields."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_SELECT + "WHERE q.case_id = %s AND q.opened_at IS NOT NULL ORDER BY q.opened_at",
                           (case_id,)).fetchall()
    keep = ("escalation_id", "origin", "reason", "service_id", "department", "opened_at", "reply_due",
            "resolve_due", "replied_at", "reply", "resolved_at", "resolution", "status", "overdue")
    return [{k: v for k, v in _state(r, today).items() if k in keep} for r in rows]


def count_open(conn: psycopg.Connection, today: date) -> None:
    """onething_escalations_open{reason, overdue} for the SRE's and the manager's dashboards."""
    rows = conn.execute(
        "SELECT coalesce(reason, 'other'), (reply_due < %(today)s AND replied_at IS NULL)"
        " OR (resolve_due < %(today)s), count(*) FROM escalation_queue"
        " WHERE resolved_at IS NULL AND opened_at IS NOT NULL GROUP BY 1, 2", {"today": today}).fetchall()
    seen = set()
    for reason, overdue, n in rows:
        label = "true" if overdue else "false"
        metrics.ESCALATIONS_OPEN.labels(reason, label).set(n)
        seen.add((reason, label))
    for reason in ("stuck", "overdue", "rejected", "other"):
        for label in ("true", "false"):
            if (reason, label) not in seen:
                metrics.ESCALATIONS_OPEN.labels(reason, label).set(0)

