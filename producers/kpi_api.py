"""HTTP for the KPIs (晴雨表): a FastAPI APIRouter over the read model of projectors/kpis.py.

    from producers.kpi_api import create_router
    app.include_router(create_router(settings))          # e.g. in producers/intake_api.create_app

Endpoints (JSON; errors {"errors": [{"path", "code", "message_zh", "message_en"}]}):
  GET /api/v1/kpis?group_by=bundle|department|region|city|day&date_from=YYYY-MM-DD&date_to=YYYY-MM-DD
                  &bundle=&department=&region=
      per group and in total: received, completed, withdrawn, open, on time, overdue, on-time rate,
      average and p90 working days used next to the promised and statutory limits, materials
      saved, ratings and satisfaction rate, deadlines breached, escalations. The window is the
      day of receipt (default: the last 30 days up to today). A supervisor sees everything; a
      department's staff see their own department's services only (department= may be left
      out, or must be their own).
  GET /api/v1/kpis/reform/{bundle}?date_from=&date_to=
      the catalog's computed reform figures of the bundle next to the measured ones.
  GET /kpis   the 晴雨表 page (portal/kpis.html; the token in the #token= fragment).

Who may read: `kpi_reader` (a supervisor, or a department's staff — scoped to its own services by
`department_scope`), dependencies over the API's bearer identity (producers/api_access.py). The
router's configuration (database, catalog, schema, clock) travels with its routes (`route_context`).

401 without a valid token, 403 for another role or another department, 422 naming a parameter
that cannot be used, 404 for a bundle the catalog does not know, 503 when the database is down.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable

import psycopg
from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, JSONResponse

from catalog.loader import load_catalog
from catalog.model import Catalog
from infra.settings import Settings
from projectors import kpis

from . import identity
from .api_access import caller
from .api_errors import ApiError, route_context, with_context
from .db import Database

READERS = ("supervisor", "department")
DEFAULT_WINDOW_DAYS = 30
MAX_WINDOW_DAYS = 3 * 366
PORTAL_DIR = Path(__file__).resolve().parent.parent / "portal"
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'")
MESSAGES = {
    "auth.required": ("请先登录", "please log in"),
    "auth.invalid": ("登录已失效，请重新登录", "your login is not valid any more; please log in again"),
    "auth.forbidden": ("当前身份不能查看晴雨表", "your role cannot see the KPIs"),
    "auth.other_department": ("只能查看本部门的数据", "you can see your own department's figures only"),
    "param.date": ("日期格式应为 YYYY-MM-DD", "a date is written YYYY-MM-DD"),
    "param.window": ("统计区间过长或起止日期颠倒", "the window is reversed or longer than three years"),
    "param.group_by": ("分组方式应为 bundle、department、region、city 或 day",
                       "group_by is one of bundle, department, region, city, day"),
    "param.bundle": ("目录中没有这件“一件事”", "no such bundle in the catalog"),
    "param.department": ("目录中没有这个部门", "no such department in the catalog"),
    "param.region": ("行政区划代码应为6位数字（或2位省、4位市前缀）",
                     "a region code has 6 digits (or a 2-digit province / 4-digit city prefix)"),
    "bundle.not_found": ("目录中没有这件“一件事”", "no such bundle in the catalog"),
    "bundle.not_modelled": ("这件“一件事”尚未建模，无法计算改革成效", "this bundle is not modelled yet: no figures"),
    "db.unavailable": ("系统繁忙，请稍后再试", "the system is busy; please try again"),
}


def _error(status: int, path: str, code: str, headers: dict[str, str] | None = None) -> ApiError:
    zh, en = MESSAGES[code]
    return ApiError(status, [{"path": path, "code": code, "message_zh": zh, "message_en": en}], headers)


@dataclass(frozen=True)
class KpiContext:
    """What the KPI routes read from: the database (the host app's pool), the catalog, the read
    model's schema and the day overdue is judged on."""
    database: Database
    catalog: Catalog
    schema: str
    today: Callable[[], date] | None

    def day(self) -> date:
        if self.today is not None:
            return self.today()
        from projectors.case_view import china_today

        return china_today()


def kpi_context(ctx: KpiContext = Depends(route_context)) -> KpiContext:
    return ctx


def kpi_reader(ident: identity.Identity = Depends(caller)) -> identity.Identity:
    """A supervisor or a department's staff (403 for anyone else)."""
    if ident.role not in READERS:
        raise _error(403, "authorization", "auth.forbidden")
    return ident


def department_scope(department: str | None = Query(None), ident: identity.Identity = Depends(kpi_reader)
                     ) -> str | None:
    """The department whose figures the caller may see: any for a supervisor, its own for staff."""
    if ident.role == "department":
        if department not in (None, "", ident.department):
            raise _error(403, "department", "auth.other_department")
        return ident.department
    return department


def _date(name: str, value: str | None) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _error(422, name, "param.date") from None


def window(date_from: str | None = Query(None), date_to: str | None = Query(None),
           ctx: KpiContext = Depends(kpi_context)) -> tuple[date, date]:
    start, end = _date("date_from", date_from), _date("date_to", date_to)
    end = end or ctx.day()
    start = start or end - timedelta(days=DEFAULT_WINDOW_DAYS - 1)
    if start > end or (end - start).days > MAX_WINDOW_DAYS:
        raise _error(422, "date_to" if start > end else "date_from", "param.window")
    return start, end


def get_kpis(group_by: str = Query("bundle"), bundle: str | None = Query(None), region: str | None = Query(None),
             department: str | None = Depends(department_scope), span: tuple[date, date] = Depends(window),
             ctx: KpiContext = Depends(kpi_context)):
    try:
        with ctx.database.connection() as conn:
            body = kpis.read_kpis(conn, group_by=group_by, date_from=span[0], date_to=span[1],
                                  bundle=bundle or None, department=department or None, region=region or None,
                                  today=ctx.day(), schema=ctx.schema, catalog=ctx.catalog)
    except kpis.KpiQueryError as exc:
        raise _error(422, exc.param, f"param.{exc.param}") from None
    except psycopg.OperationalError:
        raise _error(503, "", "db.unavailable", {"Retry-After": "5"}) from None
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def get_reform(bundle: str, _reader: identity.Identity = Depends(kpi_reader),
               ctx: KpiContext = Depends(kpi_context), date_from: str | None = Query(None),
               date_to: str | None = Query(None)):
    if bundle not in ctx.catalog.bundles:
        raise _error(404, "bundle", "bundle.not_found")
    if not ctx.catalog.bundles[bundle].modelled:
        raise _error(422, "bundle", "bundle.not_modelled")
    span = window(date_from, date_to, ctx)
    try:
        with ctx.database.connection() as conn:
            body: dict[str, Any] = kpis.measured_vs_reform(conn, ctx.catalog, bundle, date_from=span[0],
                                                           date_to=span[1], today=ctx.day(), schema=ctx.schema)
    except psycopg.OperationalError:
        raise _error(503, "", "db.unavailable", {"Retry-After": "5"}) from None
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def kpis_page() -> FileResponse:
    """晴雨表: the KPIs page (a supervisor's or department's token in the #token= fragment)."""
    return FileResponse(PORTAL_DIR / "kpis.html", media_type="text/html; charset=utf-8", headers={
        "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "Content-Security-Policy": CSP})


def create_router(settings: Settings, *, schema: str = "public", catalog: Catalog | None = None,
                  today=None, database: Database | None = None) -> APIRouter:
    """The router over `settings`' database, through `database` (the host app's connection pool;
    without one the router keeps a small pool of its own, opened on first use). `schema` (a test's own
    read model) and `today` (a callable giving the day overdue is judged on; default the deadline
    clock's day) are for tests. Handlers are plain `def`: FastAPI runs them in its threadpool, so
    their (blocking) psycopg calls never hold up the event loop."""
    ctx = KpiContext(database or Database.standalone(settings.database_url), catalog or load_catalog(), schema, today)
    router = APIRouter(tags=["KPIs (晴雨表)"], route_class=with_context(ctx, "KpiRoute"))
    router.add_api_route("/api/v1/kpis", get_kpis, methods=["GET"],
                         summary="晴雨表: volumes, timeliness, days used, materials saved, ratings")
    router.add_api_route("/api/v1/kpis/reform/{bundle}", get_reform, methods=["GET"],
                         summary="The catalog's reform figures of a bundle next to the measured ones")
    router.add_api_route("/kpis", kpis_page, methods=["GET"], include_in_schema=False)
    return router
