"""The KPI model's statements (projectors/kpis.py), one per table and kind of write, each taking
a whole batch as one parameter, so a checkpoint costs the same few statements whether it holds
one event or five hundred.

The batch travels as one JSON array of rows (`batch_rows`) unpacked by `json_array_elements`:
orjson encodes them in C (projectors/batch_rows.py), while binding Python lists as SQL arrays costs psycopg several microseconds
per value, a third of a checkpoint's CPU. Values keep their exact meaning on the way: text is
JSON-escaped, times and days go as ISO text, numbers as their repr.

A raw-fact upsert merges what the batch brings with the stored row by the model's fill-in rules
(least / earliest / first known / highest-ranked outcome, earliest on a tie). projectors/kpis_facts.py
folds the batch's events by the very same rules first, so no statement meets one row twice (an
INSERT ... ON CONFLICT DO UPDATE may not) and folding then merging equals merging event by event.
Every merge rule is associative, which is what makes that equality hold; keep it so.

Text that must sort the same in Python and in SQL (a rating id on a tie of times, the e-licence
codes of an attempt) is compared COLLATE "C": code-point order, whatever the database's locale.
"""
from __future__ import annotations


from psycopg import sql

from .batch_rows import rows_json
from .postgres_projection import check_schema

TABLES = ("kpi_cases", "kpi_case_materials", "kpi_case_pauses", "kpi_service_attempts", "kpi_services",
          "kpi_breaches", "kpi_escalations")


def batch_rows(rows: list[tuple]) -> tuple[str]:
    """The parameters of a statement below: its rows, in the order of its columns."""
    return (rows_json(rows),)


def _rows(*columns: str) -> str:
    """`name type` columns → the batch's rows as a relation. float8, not real, so a limit is
    rounded to real by its column, as when it was bound as a single value; `text[]` is a JSON
    array of text."""
    out = []
    for i, column in enumerate(columns):
        name, kind = column.split()
        value = f"ARRAY(SELECT jsonb_array_elements_text(r->{i}))" if kind == "text[]" else f"(r->>{i})::{kind}"
        out.append(f"{value} AS {name}")
    return "(SELECT " + ", ".join(out) + " FROM jsonb_array_elements(%s::jsonb) AS r)"


def _names(*columns: str) -> str:
    return ", ".join(c.split()[0] for c in columns)


CASES = ("case_id text", "bundle_code text", "region_code text", "submitted_at timestamptz", "received_on date",
         "promised_days float8", "statutory_days float8", "completed_at timestamptz", "withdrawn_at timestamptz",
         "rejected_services int", "rating_id text", "rating_grade text", "rated_at timestamptz")
MATERIALS = ("case_id text", "event_id text", "code text", "source text", "at timestamptz")
PAUSES = ("case_id text", "event_id text", "kind text", "at timestamptz")
ATTEMPTS = ("case_id text", "service_id text", "attempt int", "department text", "region_code text",
            "dispatched_at timestamptz", "due_date date", "ended_at timestamptz", "outcome text", "outcome_rank int",
            "cancelled_at timestamptz", "fetched text[]")
BREACHES = ("case_id text", "scope text", "subject_id text", "due_date date", "department text")
ESCALATIONS = ("escalation_id text", "case_id text", "origin text", "service_id text", "department text",
               "opened_at timestamptz", "resolved_at timestamptz")
GRADES = ("case_id text", "service_id text", "department text", "rating_grade text")
SERVICES = ("case_id text", "service_id text", "department text", "bundle_code text", "region_code text",
            "received_on date", "first_dispatched_at timestamptz", "status text", "paused bool", "due_date date",
            "ended_on date", "days_used int", "promised_days float8", "statutory_days float8",
            "materials_fetched int")
CASE_FIGURES = ("case_id text", "due_date date", "paused_days int", "paused_since date", "ended_on date",
                "days_used int", "materials_fetched int", "materials_uploaded int", "materials_promised int")


def _insert(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({_names(*columns)}) SELECT * FROM {_rows(*columns)} AS y"


# kpi_cases: a submission counts if it is the case's earliest; completion and withdrawal keep
# their earliest time; rejected_services is the last completion's; the earliest rating wins
_SUBMISSION_WINS = ("(EXCLUDED.submitted_at IS NOT NULL AND (c.submitted_at IS NULL"
                    " OR EXCLUDED.submitted_at < c.submitted_at))")
_RATING_WINS = ('(EXCLUDED.rated_at IS NOT NULL AND (c.rated_at IS NULL OR (EXCLUDED.rated_at,'
                ' EXCLUDED.rating_id COLLATE "C") < (c.rated_at, c.rating_id COLLATE "C")))')
_SUBMITTED = ("bundle_code", "region_code", "submitted_at", "received_on", "promised_days", "statutory_days")
_RATING = ("rating_id", "rating_grade", "rated_at")
# kpi_service_attempts: a later-seen decision replaces one if it ranks higher or, on the same
# rank, ended earlier
_OUTCOME_WINS = ("(EXCLUDED.ended_at IS NOT NULL AND (a.ended_at IS NULL"
                 " OR (EXCLUDED.outcome_rank, a.ended_at) > (a.outcome_rank, EXCLUDED.ended_at)))")


class Statements:
    def __init__(self, schema: str):
        t = {name: sql.Identifier(check_schema(schema), name) for name in TABLES}

        def f(text: str) -> str:
            return sql.SQL(text).format(
                c=t["kpi_cases"], m=t["kpi_case_materials"], p=t["kpi_case_pauses"], a=t["kpi_service_attempts"],
                s=t["kpi_services"], b=t["kpi_breaches"], e=t["kpi_escalations"]).as_string(None)

        self.reset = f("TRUNCATE {c}, {m}, {p}, {a}, {s}, {b}, {e}")
        self.count_cases = f("SELECT count(*) FROM {c} WHERE received_on IS NOT NULL")
        # before the batch's writes: the rated cases' winning ratings so far
        self.ratings_known = f("SELECT case_id, rated_at, rating_id FROM {c} WHERE case_id = ANY(%s::text[])")

        # -- raw facts (one attribute per name BatchFacts.rows() gives) ----------------------------------------
        self.cases = f(
            _insert("{c} AS c", CASES) + " ON CONFLICT (case_id) DO UPDATE SET "
            + ", ".join(f"{col} = CASE WHEN {_SUBMISSION_WINS} THEN EXCLUDED.{col} ELSE c.{col} END"
                        for col in _SUBMITTED)
            + ", completed_at = least(c.completed_at, EXCLUDED.completed_at),"
            " withdrawn_at = least(c.withdrawn_at, EXCLUDED.withdrawn_at),"
            " rejected_services = coalesce(EXCLUDED.rejected_services, c.rejected_services), "
            + ", ".join(f"{col} = CASE WHEN {_RATING_WINS} THEN EXCLUDED.{col} ELSE c.{col} END" for col in _RATING)
            + " WHERE EXCLUDED.submitted_at IS NOT NULL OR EXCLUDED.completed_at IS NOT NULL"
            " OR EXCLUDED.withdrawn_at IS NOT NULL OR EXCLUDED.rejected_services IS NOT NULL"
            " OR EXCLUDED.rated_at IS NOT NULL")
        self.materials = f(_insert("{m}", MATERIALS) + " ON CONFLICT DO NOTHING")
        self.pauses = f(_insert("{p}", PAUSES) + " ON CONFLICT DO NOTHING")
        self.attempts = f(
            _insert("{a} AS a", ATTEMPTS) + " ON CONFLICT (case_id, service_id, attempt) DO UPDATE SET"
            " department = coalesce(a.department, EXCLUDED.department),"
            " region_code = coalesce(a.region_code, EXCLUDED.region_code),"
            " due_date = CASE WHEN EXCLUDED.dispatched_at IS NOT NULL AND (a.dispatched_at IS NULL"
            "  OR EXCLUDED.dispatched_at < a.dispatched_at) THEN EXCLUDED.due_date ELSE a.due_date END,"
            " dispatched_at = least(a.dispatched_at, EXCLUDED.dispatched_at),"
            " fetched = CASE WHEN EXCLUDED.dispatched_at IS NULL THEN a.fetched ELSE"
            '  ARRAY(SELECT DISTINCT v COLLATE "C" FROM unnest(a.fetched || EXCLUDED.fetched) AS v ORDER BY 1) END,'
            f" outcome = CASE WHEN {_OUTCOME_WINS} THEN EXCLUDED.outcome ELSE a.outcome END,"
            f" ended_at = CASE WHEN {_OUTCOME_WINS} THEN EXCLUDED.ended_at ELSE a.ended_at END,"
            " outcome_rank = greatest(a.outcome_rank, EXCLUDED.outcome_rank),"
            " cancelled_at = least(a.cancelled_at, EXCLUDED.cancelled_at)")
        self.breaches = f(_insert("{b}", BREACHES) + " ON CONFLICT DO NOTHING")
        self.escalations = f(
            _insert("{e} AS e", ESCALATIONS) + " ON CONFLICT (escalation_id) DO UPDATE SET "
            + ", ".join(f"{col} = CASE WHEN e.opened_at IS NULL AND EXCLUDED.opened_at IS NOT NULL"
                        f" THEN EXCLUDED.{col} ELSE e.{col} END"
                        for col in ("origin", "service_id", "department", "opened_at"))
            + ", resolved_at = least(e.resolved_at, EXCLUDED.resolved_at)")
        self.service_grades = f(
            _insert("{s} AS s", GRADES) + " ON CONFLICT (case_id, service_id) DO UPDATE SET"
            " rating_grade = EXCLUDED.rating_grade, department = coalesce(s.department, EXCLUDED.department)")

        # -- settling ------------------------------------------------------------------------------
        # statements that find stored rows say `= ANY(array)` or ON CONFLICT: the planner guesses a
        # batch of JSON rows at 100, which for a small table means a hash join over a full scan
        self.attempts_of = f(
            "SELECT a.case_id, a.service_id, a.attempt, a.dispatched_at, a.due_date, a.ended_at, a.outcome,"
            " a.cancelled_at, a.department, a.region_code, a.fetched, c.bundle_code, c.region_code, c.received_on"
            " FROM {a} a LEFT JOIN {c} c USING (case_id) WHERE a.case_id = ANY(%s::text[])"
            " ORDER BY a.case_id, a.service_id, a.attempt")
        # a settled row that comes out as it was is not rewritten (no new row version, no index churn)
        figures = _names(*SERVICES[2:]).split(", ")
        self.services_settle = f(
            _insert("{s} AS s", SERVICES) + " ON CONFLICT (case_id, service_id) DO UPDATE SET "
            + ", ".join(f"{col} = EXCLUDED.{col}" for col in figures)
            + f" WHERE ({', '.join('s.' + c for c in figures)}) IS DISTINCT FROM"
            f" ({', '.join('EXCLUDED.' + c for c in figures)})")
        self.cases_of = f(
            "SELECT c.case_id, c.bundle_code, c.received_on, c.completed_at, (SELECT max(s.due_date) FROM {s} s"
            " WHERE s.case_id = c.case_id AND s.first_dispatched_at IS NOT NULL) FROM {c} c"
            " WHERE c.case_id = ANY(%s::text[])")
        self.pauses_of = f("SELECT case_id, kind, at FROM {p} WHERE case_id = ANY(%s::text[])")
        self.materials_of = f("SELECT case_id, code, source, at FROM {m} WHERE case_id = ANY(%s::text[])")
        figures = _names(*CASE_FIGURES[1:]).split(", ")  # of rows cases_of just found: always an update
        self.cases_settle = f(
            _insert("{c} AS c", CASE_FIGURES) + " ON CONFLICT (case_id) DO UPDATE SET "
            + ", ".join(f"{col} = EXCLUDED.{col}" for col in figures)
            + f" WHERE ({', '.join('c.' + c for c in figures)}) IS DISTINCT FROM"
            f" ({', '.join('EXCLUDED.' + c for c in figures)})")

_CACHE: dict[str, Statements] = {}


def statements(schema: str) -> Statements:
    if schema not in _CACHE:
        _CACHE[schema] = Statements(schema)
    return _CACHE[schema]
