"""Every read model of the faults' stack against a fresh rebuild of it from the log.

Why: a read model that survived leader kills, PostgreSQL crashes and redeliveries must hold
exactly what replaying the log gives; anything else is a lost, doubled or order-dependent update
that a status page, a KPI or a deadline would show forever. The case view alone is not enough:
each read model folds the log with code of its own.

Which: every projection of the processes `onething run` starts for the system that keeps a
PostgreSQL read model (PROCESSES; infra/process.py), found from the processes themselves so a new
read model cannot be silently left out: case view, KPIs, escalation queue, ratings, read audit,
deadlines. (Dispatch, cascade and proactive in `core` are processors with state, not read models
rebuilt from the log.)

How, per read model: wait until the live one stored offsets at the log's end (under its current
generation's namespace: a shadow rebuild renames it, projectors/generations.py); build a new
instance of the same class into a schema of its own and run it from the log's beginning to the
offsets the live one reached (not `postgres_projection.rebuild`, which resets in place and reads
to the log's end: the schema is new, hence empty, and the target is the live one's offsets).
The faults' stack is a cluster and database of its own and the live read models follow every
case on it, so the rebuild follows everything too (no `keep`). Then each table is compared with
its live public table (EXCEPT both ways over the columns both have, then a join on the table's
key for which columns differ), and the rebuild's schema and its offsets and processed ids are
dropped, whatever happened.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import psycopg
import structlog

log = structlog.get_logger(__name__)

#: the processes of the system (infra/supervisor.py `system`) whose projections keep read models
PROCESSES = ("core", "read-models", "deadlines")
#: what a complete run compares: a read model missing from it is a failure, not a skip
EXPECTED = ("case_view", "kpis", "escalation_queue", "ratings", "read_audit", "deadlines")
SAMPLES = 3

#: columns that are not a function of the log, so a rebuild cannot reproduce them. Every other
#: column of these tables is written from events only (checked: in infra/migrations/ no other
#: column of a read model's table defaults to now(), and their statements never write now()).
NOT_OF_THE_LOG = {
    ("audit_reads", "recorded_at"): "DEFAULT now(): when the projection wrote the row (not hashed)",
    ("deadline_clocks", "warned_due"): "marked by the live clock's tick when it raised DeadlineApproaching",
    ("deadline_clocks", "breached_due"): "marked by the live clock's tick when it raised DeadlineBreached",
}


@dataclass
class TableResult:
    rows: int = 0                  # rows (by key) that differ, are missing or are extra
    live_rows: int = 0             # so a comparison of two empty tables shows as one
    rebuilt_rows: int = 0
    only_live: int = 0             # live rows the rebuild has not (live EXCEPT rebuild)
    only_rebuild: int = 0          # rebuilt rows the live one has not
    missing: int = 0               # keys only the live table has
    extra: int = 0                 # keys only the rebuild has
    columns: dict[str, int] = field(default_factory=dict)   # column → rows differing in it (key in both)
    samples: list[str] = field(default_factory=list)  # up to SAMPLES differing keys, '/'-joined
    key: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # column → why it is not compared


@dataclass
class ModelResult:
    model: str
    tables: dict[str, TableResult] = field(default_factory=dict)
    caught_up: bool = False        # the live one reached the log's end before the rebuild
    same_offsets: bool = False     # live and rebuild stood at the same offsets when compared
    messages: int = 0              # log positions up to the live offsets (transaction markers included)
    seconds: float = 0.0
    error: str | None = None

    @property
    def differing(self) -> int:
        return sum(t.rows for t in self.tables.values())

    @property
    def equal(self) -> bool:
        return self.error is None and self.same_offsets and bool(self.tables) and self.differing == 0

    def as_dict(self) -> dict:
        return asdict(self) | {"differing_rows": self.differing, "equal": self.equal}


def live_projections(settings=None) -> list:
    """The projection of every processor of PROCESSES that keeps a PostgreSQL read model."""
    from infra.process import processors_of
    from infra.settings import Settings

    settings = settings or Settings.from_env()
    return [p.projection for name in PROCESSES for p in processors_of(name, settings)
            if hasattr(getattr(p, "projection", None), "create_schema")]


def compare_all(bootstrap: str, database_url: str, progress: Callable[[str], None] = lambda note: None,
                projections: list | None = None) -> dict[str, ModelResult]:
    """Each read model, one after another (the faults' machine has few cores)."""
    from .verify import wait_caught_up

    projections = live_projections() if projections is None else projections
    out: dict[str, ModelResult] = {}
    for live in projections:
        caught_up = wait_caught_up(bootstrap, database_url, live.name, topics=tuple(live.topics))
        result = rebuild_and_compare(live, bootstrap, database_url, caught_up)
        out[live.name] = result
        rows = sum(t.live_rows for t in result.tables.values())
        progress(f"{live.name}: {result.differing} of {rows} rows differ from the rebuild "
                 f"({result.messages} log positions, {result.seconds:.0f} s)"
                 + (f"; {result.error}" if result.error else ""))
    return out


def rebuild_and_compare(live, bootstrap: str, database_url: str, caught_up: bool = True) -> ModelResult:
    from infra.fast_forward import end_offsets
    from projectors import generations
    from projectors.checkpoint import stored_offsets
    from projectors.postgres_projection import ProjectionRunner, _follow

    result = ModelResult(live.name, caught_up=caught_up)
    started = time.monotonic()
    schema = f"rebuild_{uuid.uuid4().hex[:8]}_{live.name}"[:63]
    fresh = type(live)(name=schema, schema=schema)
    # a rebuild reads the log and never writes to it: the deadline clock's tick raises events
    fresh.tick_s = None
    runner = None
    try:
        partitions = list(end_offsets(bootstrap, list(live.topics)))
        with psycopg.connect(database_url, autocommit=True) as conn:
            live_at = stored_offsets(conn, generations.current(conn, live.name), partitions)
            target = {tp: max(0, live_at.get(tp, 0)) for tp in partitions}
            fresh.create_schema(conn, schema)
        result.messages = sum(target.values())

        def renew() -> ProjectionRunner:
            return ProjectionRunner(fresh, bootstrap, database_url, group_prefix="faults-rebuild")

        runner = _follow(renew(), target, schema, None, renew=renew)
        with psycopg.connect(database_url, autocommit=True) as conn:
            rebuilt_at = stored_offsets(conn, schema, partitions)
            live_now = stored_offsets(conn, generations.current(conn, live.name), partitions)
            result.same_offsets = all(rebuilt_at.get(tp, 0) == live_now.get(tp, 0) == target[tp]
                                      for tp in partitions)
            for table in live.tables:
                result.tables[table] = compare_table(conn, table, schema)
    except Exception as exc:   # reported as this read model's failure; the others are still compared
        log.exception("faults.rebuild_failed", read_model=live.name)
        result.error = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        if runner is not None:
            runner.close()
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                generations.discard(conn, schema, schema)   # the schema, its offsets and processed ids
        except psycopg.Error:
            log.exception("faults.rebuild_not_dropped", schema=schema)
        result.seconds = round(time.monotonic() - started, 1)
    return result


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(conn, schema: str, table: str) -> list[tuple[str, str]]:
    return conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                        (schema, table)).fetchall()


def _key(conn, table: str) -> list[str]:
    """The live table's primary key, else its widest unique index (case_timeline: case, entry)."""
    row = conn.execute(
        "SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i "
        "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisunique "
        "GROUP BY i.indexrelid, i.indisprimary ORDER BY i.indisprimary DESC, count(*) DESC, i.indexrelid LIMIT 1",
        (f"public.{table}",)).fetchone()
    return list(row[0]) if row else []


def compare_table(conn, table: str, schema: str) -> TableResult:
    """The live public `table` against `schema`'s, over the columns both have."""
    theirs = dict(_columns(conn, schema, table))
    res = TableResult(excluded={c: why for (t, c), why in NOT_OF_THE_LOG.items() if t == table})
    cols = [(c, typ) for c, typ in _columns(conn, "public", table) if c in theirs and c not in res.excluded]
    if not cols:
        raise RuntimeError(f"{table}: no column to compare (is it in {schema}?)")
    # json has no equality operator: compared as text
    sel = ", ".join(f"{_ident(c)}::text AS {_ident(c)}" if typ == "json" else _ident(c) for c, typ in cols)
    live, rebuilt = f"public.{_ident(table)}", f"{_ident(schema)}.{_ident(table)}"
    res.live_rows, res.rebuilt_rows = conn.execute(
        f"SELECT (SELECT count(*) FROM {live}), (SELECT count(*) FROM {rebuilt})").fetchone()
    only = {}
    for side, (a, b) in {"live": (live, rebuilt), "rebuild": (rebuilt, live)}.items():
        only[side] = conn.execute(f"SELECT count(*) FROM (SELECT {sel} FROM {a} EXCEPT "
                                  f"SELECT {sel} FROM {b}) d").fetchone()[0]
    res.only_live, res.only_rebuild = only["live"], only["rebuild"]
    names = [c for c, _ in cols]
    res.key = [k for k in _key(conn, table) if k in names]
    if not res.only_live and not res.only_rebuild:
        return res
    if not res.key:   # no key to join on: the rows each way are all it can say
        res.rows = res.only_live + res.only_rebuild
        return res
    keys = ", ".join(_ident(k) for k in res.key)
    on = lambda x: " AND ".join(f"{x}.{_ident(k)} = d.{_ident(k)}" for k in res.key)
    others = [c for c in names if c not in res.key]
    differs = [f"count(*) FILTER (WHERE l._here AND r._here AND l.{_ident(c)} IS DISTINCT FROM r.{_ident(c)})"
               for c in others]
    query = (f"WITH d AS (SELECT {keys} FROM (SELECT {sel} FROM {live} EXCEPT SELECT {sel} FROM {rebuilt}) a "
             f"UNION SELECT {keys} FROM (SELECT {sel} FROM {rebuilt} EXCEPT SELECT {sel} FROM {live}) b) "
             f"SELECT count(*), count(*) FILTER (WHERE r._here IS NULL), count(*) FILTER (WHERE l._here IS NULL)"
             + "".join(", " + x for x in differs)
             + f", (array_agg(concat_ws('/', {', '.join(f'd.{_ident(k)}::text' for k in res.key)}) "
             f"ORDER BY {', '.join(f'd.{_ident(k)}' for k in res.key)}))[1:{SAMPLES}] "
             f"FROM d LEFT JOIN (SELECT true AS _here, {sel} FROM {live}) l ON {on('l')} "
             f"LEFT JOIN (SELECT true AS _here, {sel} FROM {rebuilt}) r ON {on('r')}")
    row = conn.execute(query).fetchone()
    res.rows, res.missing, res.extra = row[0], row[1], row[2]
    res.columns = {c: n for c, n in zip(others, row[3:3 + len(others)]) if n}
    res.samples = list(row[-1] or [])
    return res


def summary(results: dict[str, ModelResult]) -> dict[str, int]:
    """Read model → rows differing (a read model that could not be compared: -1)."""
    return {m: (r.differing if r.error is None else -1) for m, r in results.items()}


def all_equal(results: dict[str, ModelResult]) -> bool:
    """Every expected read model compared, at the live one's offsets, and equal."""
    return set(EXPECTED) <= set(results) and all(r.equal for r in results.values())
