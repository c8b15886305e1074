"""The case view's statements (projectors/case_view.py), rendered once per schema.

Set-based: each write statement takes ALL of a batch's rows for one table as one jsonb array
(`jsonb_to_recordset`), because a round trip and a statement cost far more than a row, and
because text[] columns (missing, services) cannot travel in `unnest` arrays of unequal lengths.
The caller reduces the batch first to one row per key (an INSERT ... ON CONFLICT DO UPDATE may
not touch a row twice); the ON CONFLICT rules are still the monotonic ones, so a row meets the
stored state, written by earlier batches, exactly as single events would have met it.
"""
from __future__ import annotations

from psycopg import sql

from .postgres_projection import check_schema

TABLES = ("case_view", "case_service_view", "case_materials", "case_timeline")

RANK_INFERRED_FINAL = 4   # blocked / cancelled inferred by the view from the case's end (case_view.py)
WITHDRAWN_REASON = "withdrawn by the applicant"
BLOCKED_REASON = "a service it depends on was not approved"

CASE_COLUMNS = ("case_id text, updated_at timestamptz, receipt_no text, bundle_code text, services text[],"
                " applicant_token text, channel text, staff_id text, region_code text, submitted_at timestamptz,"
                " withdrawn_at timestamptz, completed_at timestamptz, completed_rejected text[]")
SUBMISSION = ("receipt_no", "bundle_code", "services", "applicant_token", "channel", "staff_id", "region_code",
              "submitted_at")
SERVICE_COLUMNS = ("case_id text, service_id text, department text, status text, attempt integer, rank smallint,"
                   " task_id text, reason text, reason_code text, missing text[], outputs jsonb,"
                   " updated_at timestamptz, dispatched_attempt integer, due_date date")
STATUS = ("status", "attempt", "rank", "task_id", "reason", "reason_code", "missing", "outputs", "updated_at")
TIMELINE_COLUMNS = ("case_id text, event_id uuid, entry_key text, occurred_at timestamptz, phase smallint,"
                    " sequence bigint, event_type text, text_zh text, text_en text, actor_role text, channel text,"
                    " department text, service_id text")


def _names(columns: str) -> str:
    return ", ".join(c.split()[0] for c in columns.split(", "))


class CaseViewSql:
    def __init__(self, schema: str):
        t = {name: sql.Identifier(schema, name) for name in TABLES}
        self.tables = t

        def f(text: str) -> str:
            return sql.SQL(text).format(cv=t["case_view"], sv=t["case_service_view"], mat=t["case_materials"],
                                        tl=t["case_timeline"], final=sql.Literal(RANK_INFERRED_FINAL),
                                        withdrawn=sql.Literal(WITHDRAWN_REASON),
                                        blocked=sql.Literal(BLOCKED_REASON)).as_string(None)

        # what the batch needs to know before it can decide which submission counts (the first
        # one seen wins) and whether a withdrawal ends a completed case (see case_view.py)
        self.known = f("SELECT case_id, submitted_at, withdrawn_at, completed_at FROM {cv} WHERE case_id = ANY(%s)")

        # one row per touched case: its facts (each recorded once: the first submission,
        # withdrawal, completion wins) and the latest event time
        sub = "EXCLUDED.submitted_at IS NOT NULL AND (c.submitted_at IS NULL OR c.submitted_at = EXCLUDED.submitted_at)"
        self.cases = f(
            f"INSERT INTO {{cv}} AS c ({_names(CASE_COLUMNS)}) SELECT {_names(CASE_COLUMNS)}"
            f" FROM jsonb_to_recordset(%s) AS x({CASE_COLUMNS}) "
            "ON CONFLICT (case_id) DO UPDATE SET updated_at = greatest(c.updated_at, EXCLUDED.updated_at), "
            + "".join(f"{c} = CASE WHEN {sub} THEN EXCLUDED.{c} ELSE c.{c} END, " for c in SUBMISSION)
            + "withdrawn_at = coalesce(c.withdrawn_at, EXCLUDED.withdrawn_at),"
            " completed_rejected = CASE WHEN c.completed_at IS NULL AND EXCLUDED.completed_at IS NOT NULL"
            "  THEN EXCLUDED.completed_rejected ELSE c.completed_rejected END,"
            " completed_at = coalesce(c.completed_at, EXCLUDED.completed_at)")
        # the monotonic status change: only when the row's (attempt, rank) >= the stored one;
        # the due date only from the TaskDispatched of the highest attempt
        win = "(s.attempt, s.rank) <= (EXCLUDED.attempt, EXCLUDED.rank)"
        due = "(EXCLUDED.dispatched_attempt > 0 AND EXCLUDED.dispatched_attempt >= s.dispatched_attempt)"
        self.services = f(
            f"INSERT INTO {{sv}} AS s ({_names(SERVICE_COLUMNS)}) SELECT {_names(SERVICE_COLUMNS)}"
            f" FROM jsonb_to_recordset(%s) AS x({SERVICE_COLUMNS}) "
            "ON CONFLICT (case_id, service_id) DO UPDATE SET department = coalesce(s.department, EXCLUDED.department), "
            + ", ".join(f"{c} = CASE WHEN {win} THEN EXCLUDED.{c} ELSE s.{c} END" for c in STATUS)
            + f", due_date = CASE WHEN {due} THEN EXCLUDED.due_date ELSE s.due_date END,"
            f" dispatched_attempt = CASE WHEN {due} THEN EXCLUDED.dispatched_attempt ELSE s.dispatched_attempt END")
        self.materials = f(
            "INSERT INTO {mat} AS m (case_id, code, source, updated_at) SELECT case_id, code, source, updated_at"
            " FROM jsonb_to_recordset(%s) AS x(case_id text, code text, source text, updated_at timestamptz) "
            "ON CONFLICT (case_id, code) DO UPDATE SET source = EXCLUDED.source, updated_at = EXCLUDED.updated_at "
            "WHERE m.updated_at IS NULL OR m.updated_at <= EXCLUDED.updated_at")
        # services a withdrawal leaves open become cancelled; services a completion lists as
        # blocked, still open, become blocked (the dispatch fold does both without an event)
        self.infer_final = f(
            "UPDATE {sv} s SET status = CASE WHEN c.withdrawn_at IS NOT NULL THEN 'cancelled' ELSE 'blocked' END,"
            " rank = {final}, reason = CASE WHEN c.withdrawn_at IS NOT NULL THEN {withdrawn} ELSE {blocked} END,"
            " reason_code = NULL,"
            " missing = '{{}}', outputs = '{{}}', updated_at = coalesce(c.withdrawn_at, c.completed_at) "
            "FROM {cv} c WHERE s.case_id = ANY(%(cases)s) AND c.case_id = ANY(%(cases)s) AND s.case_id = c.case_id"
            " AND s.rank < {final} AND (c.withdrawn_at IS NOT NULL"
            "  OR (c.completed_at IS NOT NULL AND s.service_id = ANY(c.completed_rejected)))")
        # completed only once every service shows its final state: CaseCompleted (on `cases`) can
        # overtake the decision it follows (on `decisions.<dept>`), and a case shown 办结 with a
        # service still 办理中 would be a contradiction on the status page
        self.case_status = f(
            "UPDATE {cv} c SET (due_date, status) = (SELECT max(s.due_date), CASE WHEN c.withdrawn_at IS NOT NULL"
            "  THEN 'withdrawn' WHEN c.completed_at IS NOT NULL AND NOT coalesce(bool_or(s.rank < {final}), false)"
            "  THEN 'completed' WHEN coalesce(bool_or(s.status = 'correction_requested'), false)"
            "  THEN 'awaiting_applicant' ELSE 'open' END FROM {sv} s WHERE s.case_id = c.case_id) "
            "WHERE c.case_id = ANY(%s)")
        # in the batch's order, so the first of two entries for one fact is the one kept
        self.timeline = f(
            f"INSERT INTO {{tl}} ({_names(TIMELINE_COLUMNS)}) SELECT {_names(TIMELINE_COLUMNS)}"
            f" FROM jsonb_to_recordset(%s) AS x(n integer, {TIMELINE_COLUMNS}) ORDER BY x.n ON CONFLICT DO NOTHING")
        self.reset = f("TRUNCATE {cv}, {sv}, {mat}, {tl}")
        self.count_cases = f("SELECT count(*) FROM {cv}")
        self.case_row = f(
            "SELECT case_id, receipt_no, bundle_code, services, applicant_token, channel, region_code, status,"
            " due_date, submitted_at, updated_at, completed_at, withdrawn_at FROM {cv} WHERE case_id = %s")
        self.service_rows = f(
            "SELECT service_id, department, status, attempt, due_date, reason, missing, outputs, reason_code "
            "FROM {sv} WHERE case_id = %s")
        self.timeline_rows = f(
            "SELECT occurred_at, event_type, text_zh, text_en, actor_role, channel FROM {tl} "
            "WHERE case_id = %s ORDER BY occurred_at, phase, sequence, event_id")
        self.worklist = f(
            "SELECT s.case_id, s.service_id, s.task_id, s.status, s.attempt, s.due_date, c.bundle_code "
            "FROM {sv} s JOIN {cv} c USING (case_id) "
            "WHERE s.department = %(department)s AND s.status = ANY(%(statuses)s) "
            "ORDER BY s.due_date NULLS LAST, s.case_id, s.service_id LIMIT %(limit)s")


_CACHE: dict[str, CaseViewSql] = {}


def sql_for(schema: str) -> CaseViewSql:
    """The statements for the view's tables in `schema`, rendered once per schema."""
    if schema not in _CACHE:
        _CACHE[schema] = CaseViewSql(check_schema(schema))
    return _CACHE[schema]
