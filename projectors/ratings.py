"""好差评 and 差评整改: ratings as received and the departments' rectifications, a PostgreSQL read model.

CaseRated (applicant, on `applications`) fills `case_ratings`; RectificationOpened (derived by
dispatch, on `tasks.<dept>`) and RectificationReplied (the department, on `decisions.<dept>`)
fill `rectifications`, each event setting only its own columns so a reply read before its
opening still ends in the same row. The department's worklist of rectifications and the
status page read from here.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from catalog.loader import load_catalog
from catalog.model import Catalog
from events.envelope import Event
from infra import metrics
from infra.topics import APPLICATIONS, decisions_topic, tasks_topic

from . import deadline_clock as clock
from .postgres_projection import UnqualifiedTables

NAME = "ratings"
HANDLED = ("CaseRated", "RectificationOpened", "RectificationReplied")
GRADES = ("very_satisfied", "satisfied", "basically_satisfied", "dissatisfied", "very_dissatisfied")
GRADE_LABELS = {"very_satisfied": {"zh": "非常满意", "en": "Very satisfied"},
                "satisfied": {"zh": "满意", "en": "Satisfied"},
                "basically_satisfied": {"zh": "基本满意", "en": "Basically satisfied"},
                "dissatisfied": {"zh": "不满意", "en": "Dissatisfied"},
                "very_dissatisfied": {"zh": "非常不满意", "en": "Very dissatisfied"}}


class RatingsProjection(UnqualifiedTables):
    event_types = frozenset(HANDLED)
    migration = Path(__file__).resolve().parent.parent / "infra" / "migrations" / "0009_oversight.sql"
    probe_table = "case_ratings"
    tables = ("case_ratings", "rectifications")

    def __init__(self, catalog: Catalog | None = None, *, name: str = NAME, schema: str = "public"):
        self.catalog = catalog or load_catalog()
        self.place(name, schema)
        departments = sorted(self.catalog.departments)
        self.topics = (APPLICATIONS, *(tasks_topic(d) for d in departments),
                       *(decisions_topic(d) for d in departments))

    tick_s = 5.0  # the open-items gauge for the dashboards

    def tick(self, step) -> None:
        from .deadlines import today_in_china

        count_open(step.conn, today_in_china())

    def reset(self, conn: psycopg.Connection) -> None:
        conn.execute("TRUNCATE case_ratings, rectifications")

    def wants(self, event: Event) -> bool:
        return event.type in HANDLED

    def apply(self, conn: psycopg.Connection, event: Event) -> None:
        p, at = event.payload, event.envelope.occurred_at
        if event.type == "CaseRated":
            conn.execute(
                "INSERT INTO case_ratings (case_id, rating_id, grade, comment, services, rated_at) VALUES"
                " (%s, %s, %s, %s, %s, %s) ON CONFLICT (case_id) DO NOTHING",  # the first rating counts
                (event.key, p["rating_id"], p["grade"], p.get("comment"), Jsonb(list(p.get("services") or [])), at))
        elif event.type == "RectificationOpened":
            conn.execute(
                "INSERT INTO rectifications AS r (rectification_id, case_id, rating_id, department, service_id,"
                " grade, comment, due_date, opened_at) VALUES (%(id)s, %(case_id)s, %(rating_id)s, %(department)s,"
                " %(service_id)s, %(grade)s, %(comment)s, %(due)s, %(at)s) ON CONFLICT (rectification_id) DO UPDATE"
                " SET rating_id = EXCLUDED.rating_id, department = EXCLUDED.department,"
                " service_id = EXCLUDED.service_id, grade = EXCLUDED.grade, comment = EXCLUDED.comment,"
                " due_date = EXCLUDED.due_date, opened_at = EXCLUDED.opened_at,"
                # a reply read before the opening counts only if the rectification's department gave it
                " replied_at = CASE WHEN r.department = EXCLUDED.department THEN r.replied_at END,"
                " reply = CASE WHEN r.department = EXCLUDED.department THEN r.reply END",
                {"id": p["rectification_id"], "case_id": event.key, "rating_id": p["rating_id"],
                 "department": p["department"], "service_id": p.get("service_id"), "grade": p["grade"],
                 "comment": p.get("comment"), "due": p["due_date"], "at": at})
        elif event.type == "RectificationReplied":
            conn.execute(
                "INSERT INTO rectifications AS r (rectification_id, case_id, department, replied_at, reply) VALUES"
                " (%s, %s, %s, %s, %s) ON CONFLICT (rectification_id) DO UPDATE SET"
                " replied_at = coalesce(r.replied_at, EXCLUDED.replied_at), reply = coalesce(r.reply, EXCLUDED.reply)"
                " WHERE r.department = EXCLUDED.department",  # only the rectification's own department replies
                (p["rectification_id"], event.key, p["department"], at, p["reply"]))


def _rect(row: dict[str, Any], today: date) -> dict[str, Any]:
    open_ = row["replied_at"] is None
    due = row["due_date"]
    return row | {"status": "open" if open_ else "replied",
                  "overdue": bool(open_ and due is not None and today > due),
                  "working_days_left": clock.working_days_left(today, due) if open_ and due else None,
                  "grade_label": GRADE_LABELS.get(row["grade"] or "")}


def read_rectifications(conn: psycopg.Connection, department: str, *, status: str = "open", today: date,
                        limit: int = 200) -> list[dict[str, Any]]:
    """A department's rectifications, most urgent first (status open | replied | all)."""
    where = {"open": "AND replied_at IS NULL", "replied": "AND replied_at IS NOT NULL", "all": ""}[status]
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM rectifications WHERE department = %s AND opened_at IS NOT NULL "
                           f"{where} ORDER BY due_date, opened_at LIMIT %s", (department, limit)).fetchall()
    return [_rect(r, today) for r in rows]


def read_rectification(conn: psycopg.Connection, rectification_id: str, *, today: date) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM rectifications WHERE rectification_id = %s", (rectification_id,)).fetchone()
    return _rect(row, today) if row and row["opened_at"] is not None else None


def read_case_rating(conn: psycopg.Connection, case_id: str, *, today: date) -> dict[str, Any] | None:
    """The rating of a case and what became of its bad grades, for the applicant's status page."""
    with conn.cursor(row_factory=dict_row) as cur:
        rating = cur.execute("SELECT rating_id, grade, comment, services, rated_at FROM case_ratings "
                             "WHERE case_id = %s", (case_id,)).fetchone()
        if rating is None:
            return None
        rects = cur.execute("SELECT * FROM rectifications WHERE case_id = %s AND opened_at IS NOT NULL "
                            "ORDER BY department, service_id NULLS FIRST", (case_id,)).fetchall()
    keep = ("rectification_id", "department", "service_id", "due_date", "status", "overdue", "replied_at", "reply")
    return rating | {"grade_label": GRADE_LABELS[rating["grade"]],
                     "rectifications": [{k: v for k, v in _rect(r, today).items() if k in keep} for r in rects]}


def count_open(conn: psycopg.Connection, today: date) -> None:
    rows = conn.execute("SELECT department, due_date < %s, count(*) FROM rectifications WHERE replied_at IS NULL"
                        " AND opened_at IS NOT NULL GROUP BY 1, 2", (today,)).fetchall()
    metrics.RECTIFICATIONS_OPEN.clear()
    for department, overdue, n in rows:
        metrics.RECTIFICATIONS_OPEN.labels(department or "none", "true" if overdue else "false").set(n)
