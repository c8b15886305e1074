"""Numbers the simulated registers issue: gapless counters in PostgreSQL, and resident IDs.

Counters live in `department_register_counters` and are taken inside the adapter's
transaction: a decision that rolls back gives its numbers back, and two adapters of one
department never hand out the same number (the counter's row lock serialises them until the
transaction ends).

A batch takes its numbers set-based (`take`, `take_resident_ids`): every counter the batch needs
in ONE statement, each counter advanced by how many numbers the batch needs of it, so the
batch's numbers are a consecutive range per counter, given out in task order — the numbers a
task-at-a-time issuer would have given. The statements lock their counters in the counters'
order (a deadlock between two members is then limited to a resident-ID spill-over, and
PostgreSQL's deadlock detection turns it into a retry of the batch). A full resident-ID counter
is never locked.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

import psycopg

from catalog.validators import check_resident_id, resident_id_check_char
from department_adapters.sdk import InvalidTask

#: sequence codes (顺序码) per region, birth date and sex: odd for male, even for female, 000 unused
SEQUENCE_CODES = {"male": 500, "female": 499}

# every counter of a batch advanced in one statement; a counter seen for the first time starts at 0
_TAKE = ("INSERT INTO department_register_counters AS c (counter, value) "
         "SELECT counter, n FROM unnest(%s::text[], %s::bigint[]) AS v(counter, n) ORDER BY counter "
         "ON CONFLICT (counter) DO UPDATE SET value = c.value + EXCLUDED.value RETURNING counter, value")
# resident IDs: the committed state of the candidate counters (no lock: a full counter stays full) …
_SEEN = "SELECT counter, value FROM department_register_counters WHERE counter = ANY(%s)"
# … then the chosen ones created, locked while not full, and advanced
_CREATE = ("INSERT INTO department_register_counters (counter) SELECT unnest(%s::text[]) ORDER BY 1 "
           "ON CONFLICT DO NOTHING")
_LOCK = ("SELECT c.counter, c.value FROM department_register_counters c "
         "JOIN unnest(%s::text[], %s::bigint[]) AS v(counter, cap) ON c.counter = v.counter "
         "WHERE c.value < v.cap ORDER BY c.counter FOR UPDATE OF c")
_SET = ("UPDATE department_register_counters c SET value = v.value "
        "FROM unnest(%s::text[], %s::bigint[]) AS v(counter, value) WHERE c.counter = v.counter")


def take(conn: psycopg.Connection, counts: Mapping[str, int]) -> dict[str, int]:
    """Take `counts[counter]` numbers of each counter: → the first of each counter's range
    (first, first + 1, … first + n - 1 are the caller's)."""
    names = sorted(c for c, n in counts.items() if n > 0)
    if not names:
        return {}
    rows = conn.execute(_TAKE, (names, [counts[c] for c in names])).fetchall()
    return {c: value - counts[c] + 1 for c, value in rows}


def next_value(conn: psycopg.Connection, counter: str, cap: int | None = None) -> int | None:
    """The counter's next value (1, 2, …), or None when `cap` values were already issued."""
    if cap is None:
        return take(conn, {counter: 1})[counter]
    # a full counter is not updated, hence not locked
    conn.execute("INSERT INTO department_register_counters (counter) VALUES (%s) ON CONFLICT DO NOTHING",
                 (counter,))
    row = conn.execute("UPDATE department_register_counters SET value = value + 1 "
                       "WHERE counter = %s AND value < %s RETURNING value", (counter, cap)).fetchone()
    return row[0] if row else None


def resident_id(region: str, born: date, sequence: int) -> str:
    """GB 11643: 6-digit region, birth date, 3-digit sequence code, MOD 11-2 check character."""
    first17 = f"{region}{born:%Y%m%d}{sequence:03d}"
    return first17 + resident_id_check_char(first17)


def check_sex(sex: str) -> None:
    if sex not in SEQUENCE_CODES:
        raise InvalidTask(f"child_sex must be one of {sorted(SEQUENCE_CODES)}")


def _prefixes(region: str) -> list[str]:
    """The county codes an ID may carry, in the order they are used: the task's, then the
    other counties of its prefecture."""
    return [region] + [f"{region[:4]}{k:02d}" for k in range(1, 100) if f"{region[:4]}{k:02d}" != region]


def _counter(prefix: str, born: date, sex: str) -> str:
    return f"resident_id:{prefix}:{born:%Y%m%d}:{sex}"


def issue_resident_id(conn: psycopg.Connection, region: str, born: date, sex: str) -> str:
    """A new, unique resident ID for a person born on `born` and registered in `region`.

    A county has 500 sequence codes per sex and day. When they are used up (only load tests
    get there: every synthetic child shares a birth date) the next county code of the same
    prefecture is used, so the IDs stay unique and valid; a real register never needs that.
    """
    return take_resident_ids(conn, [(region, born, sex)])[0]


def take_resident_ids(conn: psycopg.Connection, requests: Sequence[tuple[str, date, str]],
                      seen: Mapping[str, int] | None = None) -> list[str]:
    """New, unique resident IDs for `requests` of (region, birth date, sex), in their order: the
    IDs `issue_resident_id` would give each request in turn. `seen` is the counters' state as
    `read_resident_counters` reads it, when the caller already has it (one round trip less).

    A round plans every request in order on what is known of the counters (a full counter stays
    full: the committed state is enough to skip it), locks the counters the plan uses (those
    still not full), and gives each request, in order, the next code of its first counter with
    room — if this transaction holds that counter; a request whose counter another member
    filled meanwhile waits for the next round."""
    for _region, _born, sex in requests:
        check_sex(sex)
    level = dict(read_resident_counters(conn, requests) if seen is None else seen)  # counter → value known
    candidates = {req: [_counter(p, req[1], req[2]) for p in _prefixes(req[0])] for req in dict.fromkeys(requests)}
    out: list[str | None] = [None] * len(requests)
    pending = list(range(len(requests)))
    while pending:
        planned = dict(level)
        chosen: set[str] = set()
        for n in pending:
            region, _born, sex = requests[n]
            counter = next((c for c in candidates[requests[n]] if planned.get(c, 0) < SEQUENCE_CODES[sex]), None)
            if counter is None:
                raise InvalidTask(f"no resident-ID sequence codes left in prefecture {region[:4]} for that birth date")
            planned[counter] = planned.get(counter, 0) + 1
            chosen.add(counter)
        names = sorted(chosen)
        conn.execute(_CREATE, (names,))
        locked = dict(conn.execute(_LOCK, (names, [SEQUENCE_CODES[c.rsplit(":", 1)[1]] for c in names])).fetchall())
        for counter in names:
            level[counter] = locked[counter] if counter in locked else SEQUENCE_CODES[counter.rsplit(":", 1)[1]]
        advanced: dict[str, int] = {}
        waiting = []
        for n in pending:
            region, born, sex = requests[n]
            counter = next((c for c in candidates[requests[n]] if level.get(c, 0) < SEQUENCE_CODES[sex]), None)
            if counter not in locked:    # full everywhere now (raised next round), or not held: next round
                waiting.append(n)
                continue
            value = level[counter] = advanced[counter] = level[counter] + 1
            rid = resident_id(counter.split(":", 2)[1], born, 2 * value - 1 if sex == "male" else 2 * value)
            problem = check_resident_id(rid, today=max(born, date.today()))
            if problem:  # the inputs were checked before; this is the last line of defence
                raise InvalidTask(f"could not form a valid resident ID ({problem})")
            out[n] = rid
        if advanced:
            conn.execute(_SET, (list(advanced), list(advanced.values())))
        pending = waiting
    return out  # type: ignore[return-value]


def resident_counters(requests: Sequence[tuple[str, date, str]]) -> list[str]:
    """Every counter `take_resident_ids` may look at for `requests`."""
    return list(dict.fromkeys(_counter(p, born, sex) for region, born, sex in dict.fromkeys(requests)
                              if sex in SEQUENCE_CODES for p in _prefixes(region)))


def read_resident_counters(conn: psycopg.Connection, requests: Sequence[tuple[str, date, str]]) -> dict[str, int]:
    return dict(conn.execute(_SEEN, (resident_counters(requests),)).fetchall())


class Recorder:
    """A number source for a dry run of the issuing functions: notes which numbers a batch
    needs, in order, and answers placeholders (never written anywhere)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.residents: list[tuple[str, date, str]] = []

    def number(self, counter: str) -> int:
        self.counts[counter] = self.counts.get(counter, 0) + 1
        return 1

    def resident_id(self, region: str, born: date, sex: str) -> str:
        check_sex(sex)
        self.residents.append((region, born, sex))
        return resident_id(region, born, 1 if sex == "male" else 2)

    def allocate(self, conn: psycopg.Connection) -> "Allocated":
        """Take every number noted, set-based: one statement for the counters (sent together
        with the read of the resident-ID counters in a pipeline), one more for resident IDs."""
        names = sorted(c for c, n in self.counts.items() if n > 0)
        taken = conn.execute(_TAKE, (names, [self.counts[c] for c in names])) if names else None
        seen = conn.execute(_SEEN, (resident_counters(self.residents),)) if self.residents else None
        ranges = {c: (last - self.counts[c] + 1, last) for c, last in taken.fetchall()} if taken is not None else {}
        rids = take_resident_ids(conn, self.residents, dict(seen.fetchall())) if seen is not None else []
        return Allocated(ranges, rids)


class Allocated:
    """The numbers a `Recorder` noted, taken: handed out in the order they were noted."""

    def __init__(self, ranges: Mapping[str, tuple[int, int]], resident_ids: Sequence[str]):
        self.ranges = {c: list(r) for c, r in ranges.items()}   # counter → [next, last]
        self.resident_ids = list(reversed(resident_ids))

    def number(self, counter: str) -> int:
        r = self.ranges.get(counter)
        if r is None or r[0] > r[1]:  # never a number outside what this transaction took
            raise RuntimeError("an issuing function asked for a number its dry run did not")
        r[0] += 1
        return r[0] - 1

    def resident_id(self, region: str, born: date, sex: str) -> str:
        if not self.resident_ids:
            raise RuntimeError("an issuing function asked for a resident ID its dry run did not")
        return self.resident_ids.pop()
