"""The pages and /metrics: the citizen status page, the supervisor queue page (each reads its
token from the #token= fragment and calls the API with it; the page itself is public), and
Prometheus' scrape."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infra.settings import REPO_ROOT

from .api_errors import ApiRoute

PORTAL_DIR = REPO_ROOT / "portal"
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'")

router = APIRouter(route_class=ApiRoute, include_in_schema=False)


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def page(name: str) -> FileResponse:
    return FileResponse(PORTAL_DIR / name, media_type="text/html; charset=utf-8", headers={
        "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "Content-Security-Policy": CSP})


@router.get("/status/{case_id}")
def status_page(case_id: str) -> FileResponse:
    """The citizen's status page (the receipt's read-only link, or the applicant's own login)."""
    return page("index.html")


@router.get("/")
@router.get("/search")
def search_page() -> FileResponse:
    """The portal's home: 智问智搜, a search box over the bundles (portal/search.html)."""
    return page("search.html")


@router.get("/supervisor")
def supervisor_page() -> FileResponse:
    """办不成事督办台: the supervisor queue (a supervisor's token in the #token= fragment)."""
    return page("supervisor.html")
