"""智问智搜's route: `GET /api/v1/search?q=…` — the bundles (and services) a query in everyday words
finds, best first (catalog/search.py ranks them), each with the link to its merged form: a bundle's
`GET /api/v1/bundles/{code}/form`, a service's `GET /api/v1/forms?services=<id>` (随意组合).

Public, like the catalog it searches: it reads no personal data, so it needs no login and caches
nothing about the caller. It is rate-limited per client address (`ONETHING_API_SEARCH_RATE`,
producers/api_limits.py) and refuses a query over `MAX_QUERY_LENGTH` characters with 422 naming `q`.
The query is never logged: a person may type their name or ID into a search box.

The index is built once per catalog, on the first search (with jieba's dictionary, ~1 s); later
searches take a few milliseconds.
"""
from __future__ import annotations

import threading
from typing import Any

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from catalog.loader import CatalogError
from catalog.model import Catalog
from catalog.search import MAX_QUERY_LENGTH, SearchIndex, build_index, search
from catalog.search_terms import SearchTerms, load_search_terms

from .api_errors import MESSAGES, ApiError, ApiRoute, err, jsonable
from .api_state import ApiState, api_state, label

log = structlog.get_logger("producers.api_search")

MESSAGES.update({
    "search.query_empty": ("请输入要找的事，例如“生孩子”“开饭馆”", "type what you want to do, e.g. “baby” or “open a restaurant”"),
    "search.query_too_long": (f"搜索内容不能超过{MAX_QUERY_LENGTH}个字，请说得简短些",
                              f"a search is at most {MAX_QUERY_LENGTH} characters; say it more briefly"),
    "search.unavailable": ("搜索暂不可用，请从事项列表中选择", "search is not available; choose from the list of bundles"),
})
MAX_LIMIT = 20

router = APIRouter(prefix="/api/v1", tags=["search"], route_class=ApiRoute)

_indexes: dict[int, tuple[Catalog, SearchIndex]] = {}
_lock = threading.Lock()


def search_index(catalog: Catalog) -> SearchIndex:
    """The catalog's search index, built on first use (once per catalog, under a lock)."""
    held = _indexes.get(id(catalog))
    if held is not None and held[0] is catalog:
        return held[1]
    with _lock:
        held = _indexes.get(id(catalog))
        if held is None or held[0] is not catalog:
            try:
                terms = load_search_terms(catalog)
            except CatalogError as exc:  # the word list is broken: say where, search by names only
                log.error("search.terms_invalid", problems=[str(p) for p in exc.problems][:20])
                terms = SearchTerms({})
            held = (catalog, build_index(catalog, terms))
            _indexes[id(catalog)] = held
    return held[1]


def search_rate(request: Request, state: ApiState = Depends(api_state)) -> None:
    """One search counted against the caller's address (the route needs no login to count by)."""
    state.limits.hit("search", request.client.host if request.client else "unknown")


@router.get("/search", summary="智问智搜: the bundles and services a query in everyday words finds",
            dependencies=[Depends(search_rate)],
            description="Colloquial, misspelt or pinyin queries (生孩子要办什么, 退修, shz, baby). Public; "
                        f"at most {MAX_QUERY_LENGTH} characters; a query that matches nothing well returns "
                        "empty lists rather than a guess.")
def search_route(state: ApiState = Depends(api_state),
                 q: str = Query(..., description="what the person typed",
                                json_schema_extra={"maxLength": MAX_QUERY_LENGTH}),
                 limit: int = Query(5, ge=1, le=MAX_LIMIT, description="at most this many bundles and services")
                 ) -> JSONResponse:
    if len(q) > MAX_QUERY_LENGTH:
        raise ApiError(422, [err("q", "search.query_too_long")])
    if not q.strip():
        raise ApiError(422, [err("q", "search.query_empty")])
    cat = state.catalog
    result = search(search_index(cat), q, limit=limit)
    bundles = []
    for h in result.bundles:
        b = cat.bundles[h.code]
        available = bool(b.modelled and b.members)
        bundles.append({"code": b.code, "label": label(b.label), "kind": b.kind, "score": h.score,
                        "matched": h.matched, "available": available,
                        "form_url": f"/api/v1/bundles/{b.code}/form" if available else None})
    services = []
    for h in result.services:
        s = cat.services[h.code]
        services.append({"service_id": s.id, "label": label(s.label), "department": s.department,
                         "department_label": label(cat.departments[s.department].label),
                         "bundles": [code for code, b in cat.bundles.items() if s.id in b.services],
                         "score": h.score, "matched": h.matched,
                         # 随意组合: the merged form of this one service, what it depends on added
                         "form_url": f"/api/v1/forms?services={s.id}"})
    body: dict[str, Any] = {"query": q, "bundles": bundles, "services": services}
    return JSONResponse(jsonable(body), headers={"Cache-Control": "public, max-age=300"})
