"""The deadline clock's statements (projectors/deadlines.py), rendered once per schema.

Four statements a batch in two round trips, whatever its length: the stored rows the batch's
events touch and its cases' facts (two reads, sent together), the case facts and the clock rows
the batch changed (two writes), each write taking all of
its rows as one JSON parameter (`batch_rows.rows_json`, unpacked by `jsonb_array_elements`),
since a round trip and a statement cost far more than a row.

The rules live in Python (projectors/deadlines_facts.py): the rows arrive here already folded,
one per key, so the upsert only writes what it is given. It never sets `warned_due` or
`breached_due`: they belong to the tick (`DeadlineTicker._mark`), and an upsert that carried
them would undo a mark made between this batch's read and its write.
"""
from __future__ import annotations

from psycopg import sql

from .postgres_projection import check_schema

# the clock row as deadlines_facts.Row holds it, in this order
CLOCK_COLUMNS = ("case_id text", "scope text", "subject_id text", "department text", "task_id text",
                 "attempt int", "due_date date", "paused_on date", "closed_at timestamptz", "cause_event_id text",
                 "correlation_id text", "region_code text", "extended_to int")
CASE_COLUMNS = ("case_id text", "bundle_code text", "submitted_on date", "promised_due date", "submission_id text",
                "closed_at timestamptz", "pauses jsonb")
KEY = ("case_id", "scope", "subject_id")


def _names(columns: tuple[str, ...]) -> list[str]:
    return [c.split()[0] for c in columns]


def _rows(columns: tuple[str, ...]) -> str:
    """The JSON array of rows (each an array in the order of `columns`) as a relation."""
    values = ", ".join(f"(r->>{i})::{c.split()[1]}" for i, c in enumerate(columns))
    return f"SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS r"


class ClockSql:
    def __init__(self, schema: str):
        t = sql.Identifier(check_schema(schema), "deadline_clocks")
        c = sql.Identifier(schema, "deadline_cases")

        def f(text: str) -> str:
            return sql.SQL(text).format(t=t, c=c).as_string(None)

        clock, case = _names(CLOCK_COLUMNS), _names(CASE_COLUMNS)
        self.reset = f("TRUNCATE {t}, {c}")
        # the rows the batch's rules touch (deadlines_facts.ClockRows.ask): by key, and all the case and
        # service clocks of a case that completes or is withdrawn; index scans on the primary key
        self.rows_of = f(
            f"SELECT {', '.join(clock)} FROM {{t}} WHERE ({', '.join(KEY)}) IN"
            f" (SELECT r->>0, r->>1, r->>2 FROM jsonb_array_elements(%s::jsonb) AS r)"
            f" UNION ALL SELECT {', '.join(clock)} FROM {{t}} WHERE case_id = ANY(%s::text[])"
            " AND scope IN ('case', 'service')")
        self.cases_of = f(f"SELECT {', '.join(case)} FROM {{c}} WHERE case_id = ANY(%s::text[])")
        # the case facts arrive folded too (deadlines_facts.CaseFacts): written as given
        self.cases = f(
            f"INSERT INTO {{c}} ({', '.join(case)}) {_rows(CASE_COLUMNS)} ON CONFLICT (case_id) DO UPDATE SET "
            + ", ".join(f"{n} = EXCLUDED.{n}" for n in case if n != "case_id"))
        self.write = f(
            f"INSERT INTO {{t}} ({', '.join(clock)}) {_rows(CLOCK_COLUMNS)}"
            f" ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET "
            + ", ".join(f"{n} = EXCLUDED.{n}" for n in clock if n not in KEY))


_CACHE: dict[str, ClockSql] = {}


def statements(schema: str) -> ClockSql:
    if schema not in _CACHE:
        _CACHE[schema] = ClockSql(schema)
    return _CACHE[schema]
