"""The KPIs as read (晴雨表, projectors/kpis.py): the facts stored per case and per service
aggregated by SQL for any grouping, window and filter, the ratios shown (on-time rate,
satisfaction), and the catalog's limits and reform figures next to what was measured.

Nothing here writes; the model's rules for what is stored live in projectors/kpis.py. Every
public name is re-exported there, where callers import it from.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import sql

from catalog.figures import bundle_figures
from catalog.loader import load_catalog
from catalog.model import Catalog

from . import deadline_clock as clock
from .postgres_projection import check_schema as _check_schema

GRADES = ("very_satisfied", "satisfied", "basically_satisfied", "dissatisfied", "very_dissatisfied")
SATISFIED = frozenset(GRADES[:3])
GROUP_BY = ("bundle", "department", "region", "city", "day")


# -- the ratios --------------------------------------------------------------------------------------
def on_time_rate(on_time: int, overdue: int) -> float | None:
    """Share on time among those that can be judged (ended on time, or late / overdue)."""
    judged = on_time + overdue
    return on_time / judged if judged else None


def satisfaction_rate(counts: Mapping[str, int]) -> float | None:
    """Share of 非常满意 + 满意 + 基本满意 among every grade given; None without ratings."""
    unknown = set(counts) - set(GRADES)
    if unknown:
        raise ValueError(f"unknown grades {sorted(unknown)}")
    total = sum(counts.values())
    return sum(n for g, n in counts.items() if g in SATISFIED) / total if total else None


# -- the catalog's side --------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _figures(catalog: Catalog, bundle_code: str):
    try:
        return bundle_figures(catalog, bundle_code)
    except (KeyError, ValueError):
        return None


def bundle_limits(catalog: Catalog, bundle_code: str | None) -> tuple[float | None, float | None]:
    """(promised, statutory) working days of a bundle as a whole: the promised total (else the
    longest chain of promised limits), and the statutory limits one after another."""
    if not bundle_code or bundle_code not in catalog.bundles:
        return None, None
    total = clock.case_promised_days(catalog, bundle_code)
    fig = _figures(catalog, bundle_code)
    promised = float(total) if total is not None else (fig.time_days.after if fig else None)
    return promised, (fig.time_days.before if fig else None)


def reform_figures(catalog: Catalog, bundle_code: str) -> dict[str, Any]:
    """The catalog's computed reform figures of a bundle (catalog/figures.py), JSON-able:
    materials, steps, working days and trips before (each service on its own) and after (the
    bundle), the critical path, which figures rest on estimates, and the published claims.
    KeyError for an unknown bundle, ValueError for one listed but not modelled."""
    bundle = catalog.bundle(bundle_code)
    fig = bundle_figures(catalog, bundle_code)

    def change(c) -> dict[str, Any]:
        return {"before": c.before, "after": c.after, "reduction": c.reduction}

    return {
        "bundle": bundle_code, "label": {"zh": bundle.label.zh, "en": bundle.label.en},
        "services": fig.services, "departments": fig.departments,
        "promised_total_days": clock.case_promised_days(catalog, bundle_code),
        "materials": change(fig.materials), "steps": change(fig.steps), "time_days": change(fig.time_days),
        "trips": change(fig.trips), "critical_path": list(fig.critical_path), "estimated": sorted(fig.estimated),
        "claims": [{"place": c.place, "source": c.source,
                    "changes": {m: {"before": ch.before, "after": ch.after, "reduction": ch.reduction}
                                for m, ch in c.changes.items()}} for c in fig.claims],
    }


# -- reading ---------------------------------------------------------------------------------------
class KpiQueryError(ValueError):
    """A parameter read_kpis cannot use; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def region_prefix(region: str | None) -> str | None:
    """A region filter: a 6-digit code, or its province (2 digits) / city (4 digits) prefix; a
    full code ending in 00 or 0000 (a city's or province's own code) matches its whole area."""
    if region is None:
        return None
    if not (region.isascii() and region.isdigit() and len(region) in (2, 4, 6)):
        raise KpiQueryError("region", "a 行政区划代码 has 6 digits (or a 2-digit province / 4-digit city prefix)")
    if len(region) == 6:
        region = region[:4] if region.endswith("00") else region
        region = region[:2] if region.endswith("00") and len(region) == 4 else region
    return region


def _group_expr(group_by: str, level: str) -> sql.Composable:
    t = sql.Identifier("f")
    col = {"bundle": "bundle_code", "department": "department", "region": "region_code", "day": "received_on",
           "city": "region_code"}[group_by]
    expr = sql.SQL("{}.{}").format(t, sql.Identifier(col))
    if group_by == "city":
        return sql.SQL("(left({}, 4) || '00')").format(expr)
    if group_by == "day":
        return sql.SQL("to_char({}, 'YYYY-MM-DD')").format(expr)
    return expr


_GRADE_COLS = ", ".join(f"count(*) FILTER (WHERE f.rating_grade = '{g}') AS rated_{g}" for g in GRADES)
_TIMELY = (
    "count(*) FILTER (WHERE f.due_date IS NOT NULL AND f.ended_on IS NOT NULL AND f.ended_on <= f.due_date)"
    " AS on_time,"
    " count(*) FILTER (WHERE f.due_date IS NOT NULL AND f.ended_on IS NOT NULL AND f.ended_on > f.due_date)"
    " AS late,"
    " count(*) FILTER (WHERE f.due_date IS NOT NULL AND f.ended_on IS NULL AND {open} AND NOT {paused}"
    "  AND %(today)s::date > f.due_date) AS overdue_open,"
    " avg(f.days_used)::float8 AS days_avg,"
    " percentile_disc(0.9) WITHIN GROUP (ORDER BY f.days_used) AS days_p90,"
    " avg(f.promised_days)::float8 AS promised_days, avg(f.statutory_days)::float8 AS statutory_days,")


def _case_query(schema: str, key: sql.Composable, where: sql.Composable) -> sql.Composed:
    timely = _TIMELY.format(open="f.completed_at IS NULL AND f.withdrawn_at IS NULL",
                            paused="(f.paused_since IS NOT NULL)")
    return sql.SQL(
        "WITH b AS (SELECT case_id, count(*) AS n FROM {b} WHERE scope IN ('case', 'service') GROUP BY case_id),"
        " e AS (SELECT case_id, count(*) AS n, count(*) FILTER (WHERE origin = 'applicant') AS by_applicant,"
        "  count(*) FILTER (WHERE resolved_at IS NOT NULL) AS resolved FROM {e} GROUP BY case_id) "
        "SELECT GROUPING({key}) AS is_total, {key} AS key, count(*) AS received,"
        " count(*) FILTER (WHERE f.completed_at IS NOT NULL) AS completed,"
        " count(*) FILTER (WHERE f.completed_at IS NOT NULL AND coalesce(f.rejected_services, 0) = 0)"
        "  AS completed_approved,"
        " count(*) FILTER (WHERE f.withdrawn_at IS NOT NULL AND f.completed_at IS NULL) AS withdrawn, "
        + timely +
        " coalesce(sum(f.materials_fetched), 0)::bigint AS materials_saved,"
        " avg(f.materials_fetched)::float8 AS materials_saved_avg,"
        " avg(f.materials_uploaded)::float8 AS materials_uploaded_avg, " + _GRADE_COLS + ","
        " coalesce(sum(b.n), 0)::bigint AS deadlines_breached, coalesce(sum(e.n), 0)::bigint AS escalations,"
        " coalesce(sum(e.by_applicant), 0)::bigint AS escalations_by_applicant,"
        " coalesce(sum(e.resolved), 0)::bigint AS escalations_resolved "
        "FROM {c} f LEFT JOIN b USING (case_id) LEFT JOIN e USING (case_id) "
        "WHERE f.received_on IS NOT NULL {where} GROUP BY GROUPING SETS (({key}), ()) ORDER BY 1 DESC, 2"
    ).format(key=key, where=where, b=sql.Identifier(schema, "kpi_breaches"),
             e=sql.Identifier(schema, "kpi_escalations"), c=sql.Identifier(schema, "kpi_cases"))


def _service_query(schema: str, key: sql.Composable, where: sql.Composable) -> sql.Composed:
    timely = _TIMELY.format(open="f.status = 'open'", paused="f.paused")
    return sql.SQL(
        "WITH b AS (SELECT case_id, subject_id, count(*) AS n FROM {b} WHERE scope = 'service'"
        "  GROUP BY case_id, subject_id),"
        " e AS (SELECT case_id, service_id, count(*) AS n, count(*) FILTER (WHERE origin = 'applicant')"
        "  AS by_applicant, count(*) FILTER (WHERE resolved_at IS NOT NULL) AS resolved FROM {e}"
        "  WHERE service_id IS NOT NULL GROUP BY case_id, service_id) "
        "SELECT GROUPING({key}) AS is_total, {key} AS key, count(*) AS received,"
        " count(*) FILTER (WHERE f.status IN ('approved', 'rejected')) AS completed,"
        " count(*) FILTER (WHERE f.status = 'approved') AS completed_approved,"
        " count(*) FILTER (WHERE f.status = 'cancelled') AS withdrawn, "
        + timely +
        " coalesce(sum(f.materials_fetched), 0)::bigint AS materials_saved,"
        " avg(f.materials_fetched)::float8 AS materials_saved_avg, NULL::float8 AS materials_uploaded_avg, "
        + _GRADE_COLS + ","
        " coalesce(sum(b.n), 0)::bigint AS deadlines_breached, coalesce(sum(e.n), 0)::bigint AS escalations,"
        " coalesce(sum(e.by_applicant), 0)::bigint AS escalations_by_applicant,"
        " coalesce(sum(e.resolved), 0)::bigint AS escalations_resolved "
        "FROM {s} f LEFT JOIN b ON b.case_id = f.case_id AND b.subject_id = f.service_id"
        " LEFT JOIN e ON e.case_id = f.case_id AND e.service_id = f.service_id "
        "WHERE f.first_dispatched_at IS NOT NULL {where} GROUP BY GROUPING SETS (({key}), ()) ORDER BY 1 DESC, 2"
    ).format(key=key, where=where, b=sql.Identifier(schema, "kpi_breaches"),
             e=sql.Identifier(schema, "kpi_escalations"), s=sql.Identifier(schema, "kpi_services"))


def _label(catalog: Catalog, group_by: str, key: str | None) -> dict[str, str] | None:
    if key is None:
        return None
    if group_by == "bundle" and key in catalog.bundles:
        lb = catalog.bundles[key].label
        return {"zh": lb.zh, "en": lb.en}
    if group_by == "department" and key in catalog.departments:
        lb = catalog.departments[key].label
        return {"zh": lb.zh, "en": lb.en}
    return None


def _figures_of(row: dict[str, Any]) -> dict[str, Any]:
    ratings = {g: row.pop(f"rated_{g}") for g in GRADES}
    overdue = row["late"] + row["overdue_open"]
    received = row["received"]
    out = {k: v for k, v in row.items() if k not in ("is_total", "key")}
    out.update(
        overdue=overdue, on_time_rate=on_time_rate(row["on_time"], overdue),
        open=received - row["completed"] - row["withdrawn"],
        completion_rate=row["completed"] / received if received else None,
        ratings=ratings, rated=sum(ratings.values()), satisfaction_rate=satisfaction_rate(ratings))
    return out


def read_kpis(conn: psycopg.Connection, *, group_by: str = "bundle", date_from: date | None = None,
              date_to: date | None = None, bundle: str | None = None, department: str | None = None,
              region: str | None = None, today: date | None = None, schema: str = "public",
              catalog: Catalog | None = None) -> dict[str, Any]:
    """The KPIs of the cases received in [date_from, date_to] (Beijing days, both included; open
    ends unbounded), one entry per group and a total, JSON-able.

    Level: grouped by department, or filtered to one department, every figure is about services
    (a department's tasks: received = dispatched to it, completed = decided by it, withdrawn =
    cancelled by a withdrawal, days used = days at the department); otherwise about cases.
    Overdue-while-open is judged as of `today` (default: the deadline clock's day). KpiQueryError
    names a parameter it cannot use."""
    catalog = catalog or load_catalog()
    if group_by not in GROUP_BY:
        raise KpiQueryError("group_by", f"one of {', '.join(GROUP_BY)}")
    if date_from is not None and date_to is not None and date_from > date_to:
        raise KpiQueryError("date_to", "must not be before date_from")
    if bundle is not None and bundle not in catalog.bundles:
        raise KpiQueryError("bundle", "no such bundle (一件事) in the catalog")
    if department is not None and department not in catalog.departments:
        raise KpiQueryError("department", "no such department in the catalog")
    prefix = region_prefix(region)
    _check_schema(schema)
    from .case_view import china_today

    today = today or china_today()
    level = "service" if group_by == "department" or department is not None else "case"
    conds, params = [], {"today": today}
    for name, value, cond in (("date_from", date_from, "f.received_on >= %(date_from)s"),
                              ("date_to", date_to, "f.received_on <= %(date_to)s"),
                              ("bundle", bundle, "f.bundle_code = %(bundle)s"),
                              ("department", department, "f.department = %(department)s"),
                              ("region", prefix, "f.region_code LIKE %(region)s || '%%'")):
        if value is not None:
            conds.append(sql.SQL(" AND " + cond))
            params[name] = value
    where = sql.Composed(conds)
    key = _group_expr(group_by, level)
    query = (_service_query if level == "service" else _case_query)(schema, key, where)
    cur = conn.execute(query, params)
    cols = [d.name for d in cur.description]
    groups, total = [], None
    for values in cur.fetchall():
        row = dict(zip(cols, values))
        is_total, k = row["is_total"], row["key"]
        figures = _figures_of(row)
        if is_total:
            total = figures
            continue
        entry = {"key": k, "label": _label(catalog, group_by, k), **figures}
        if group_by == "bundle" and k:
            promised, statutory = bundle_limits(catalog, k)
            fig = _figures(catalog, k)
            entry["catalog"] = {"promised_days": promised, "statutory_days": statutory,
                                "promised_total_days": clock.case_promised_days(catalog, k),
                                "materials_before": fig.materials.before if fig else None,
                                "materials_after": fig.materials.after if fig else None,
                                "time_reduction": fig.time_days.reduction if fig else None,
                                "materials_reduction": fig.materials.reduction if fig else None}
        groups.append(entry)
    if total is None:  # no rows at all
        total = _figures_of({c: 0 for c in cols} | {"days_avg": None, "days_p90": None, "promised_days": None,
                                                    "statutory_days": None, "materials_saved_avg": None,
                                                    "materials_uploaded_avg": None})
    return {"group_by": group_by, "level": level, "today": today.isoformat(),
            "date_from": date_from.isoformat() if date_from else None,
            "date_to": date_to.isoformat() if date_to else None,
            "filters": {"bundle": bundle, "department": department, "region": region},
            "groups": groups, "total": total}


def measured_vs_reform(conn: psycopg.Connection, catalog: Catalog, bundle_code: str, *,
                       date_from: date | None = None, date_to: date | None = None, today: date | None = None,
                       schema: str = "public") -> dict[str, Any]:
    """The catalog's reform figures of a bundle next to what its cases measured."""
    figures = reform_figures(catalog, bundle_code)
    kpis = read_kpis(conn, group_by="bundle", bundle=bundle_code, date_from=date_from, date_to=date_to,
                     today=today, schema=schema, catalog=catalog)
    t = kpis["total"]
    return {"bundle": bundle_code, "reform": figures, "measured": {
        "cases": t["received"], "completed": t["completed"], "on_time_rate": t["on_time_rate"],
        "working_days_avg": t["days_avg"], "working_days_p90": t["days_p90"],
        "materials_uploaded_avg": t["materials_uploaded_avg"], "materials_saved_avg": t["materials_saved_avg"],
        "satisfaction_rate": t["satisfaction_rate"], "date_from": kpis["date_from"], "date_to": kpis["date_to"]}}

