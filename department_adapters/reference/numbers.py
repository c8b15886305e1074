"""Numbers the simulated registers issue: gapless counters in PostgreSQL, and resident IDs.

Counters live in `department_register_counters` and are taken inside the adapter's
transaction: a decision that rolls back gives its number back, and two adapters of one
department never hand out the same number (the counter's row lock serialises them). A
transaction holds at most one counter lock, so issuers cannot deadlock each other.
"""
from __future__ import annotations

from datetime import date

import psycopg

from catalog.validators import check_resident_id, resident_id_check_char
from department_adapters.sdk import InvalidTask

#: sequence codes (顺序码) per region, birth date and sex: odd for male, even for female, 000 unused
SEQUENCE_CODES = {"male": 500, "female": 499}


def next_value(conn: psycopg.Connection, counter: str, cap: int | None = None) -> int | None:
    """The counter's next value (1, 2, …), or None when `cap` values were already issued."""
    conn.execute("INSERT INTO department_register_counters (counter) VALUES (%s) ON CONFLICT DO NOTHING",
                 (counter,))
    if cap is None:
        row = conn.execute("UPDATE department_register_counters SET value = value + 1 WHERE counter = %s "
                           "RETURNING value", (counter,)).fetchone()
    else:
        # a full counter is not updated, hence not locked: a spill-over never holds two locks
        row = conn.execute("UPDATE department_register_counters SET value = value + 1 "
                           "WHERE counter = %s AND value < %s RETURNING value", (counter, cap)).fetchone()
    return row[0] if row else None


def resident_id(region: str, born: date, sequence: int) -> str:
    """GB 11643: 6-digit region, birth date, 3-digit sequence code, MOD 11-2 check character."""
    first17 = f"{region}{born:%Y%m%d}{sequence:03d}"
    return first17 + resident_id_check_char(first17)


def issue_resident_id(conn: psycopg.Connection, region: str, born: date, sex: str) -> str:
    """A new, unique resident ID for a person born on `born` and registered in `region`.

    A county has 500 sequence codes per sex and day. When they are used up (only load tests
    get there: every synthetic child shares a birth date) the next county code of the same
    prefecture is used, so the IDs stay unique and valid; a real register never needs that.
    """
    if sex not in SEQUENCE_CODES:
        raise InvalidTask(f"child_sex must be one of {sorted(SEQUENCE_CODES)}")
    regions = [region] + [f"{region[:4]}{k:02d}" for k in range(1, 100) if f"{region[:4]}{k:02d}" != region]
    for prefix in regions:
        n = next_value(conn, f"resident_id:{prefix}:{born:%Y%m%d}:{sex}", SEQUENCE_CODES[sex])
        if n is not None:
            rid = resident_id(prefix, born, 2 * n - 1 if sex == "male" else 2 * n)
            problem = check_resident_id(rid, today=max(born, date.today()))
            if problem:  # the inputs were checked before; this is the last line of defence
                raise InvalidTask(f"could not form a valid resident ID ({problem})")
            return rid
    raise InvalidTask(f"no resident-ID sequence codes left in prefecture {region[:4]} for that birth date")
