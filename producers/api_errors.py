"""The API's one error shape and the route class every router uses.

Every refusal of every API (intake, oversight, KPIs, registers) is
`{"errors": [{"path", "code", "message_zh", "message_en"}]}`, never quoting what a person typed.
Handlers and dependencies raise `ApiError`; `ApiRoute` — the route class of every router — turns
it into that body, so a router answers the same whether it is mounted on the intake app or on a
bare FastAPI app of a test. `ApiRoute` also refuses control characters in path, query and JSON
body strings (producers/text_rules.py) before the handler runs, once for every route.
"""
from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.responses import Response

from catalog.form import FieldError

from . import text_rules

MESSAGES: dict[str, tuple[str, str]] = {
    "auth.required": ("请先登录", "please log in"),
    "auth.invalid": ("登录已失效，请重新登录", "your login is not valid any more; please log in again"),
    "auth.forbidden": ("当前身份不能办理此操作", "your role cannot do this"),
    "auth.read_only": ("查询链接只能查看办件，办理请登录本人账号",
                       "the status link can only show the case; log in as yourself to act on it"),
    "auth.staff_id": ("工作人员登录须带工号", "a staff login names the staff member"),
    "case.not_found": ("未找到该办件", "no such case"),
    "case.withdrawn": ("该办件已撤回", "this case has been withdrawn"),
    "case.completed": ("该办件已办结", "this case is already completed"),
    "bundle.unknown": ("没有这个“一件事”", "there is no such bundle"),
    "bundle.not_available": ("该“一件事”暂未开通网上申报", "this bundle cannot be applied for online yet"),
    "kafka.unavailable": ("系统繁忙，申请未提交，请稍后重试", "the system is busy; nothing was submitted, please try again"),
    "database.unavailable": ("系统繁忙，请稍后重试", "the system is busy; please try again"),
    "idempotency.key_reused": ("同一提交编号已用于另一份申请", "this Idempotency-Key was used for a different request"),
    "idempotency.key_format": ("提交编号应为1至200个可见字符", "an Idempotency-Key has 1 to 200 visible characters"),
    "applicant.required": ("代办时须提供申请人的公民身份号码", "an assisted filing names the applicant's resident ID"),
    "identity.mismatch": ("须为申请人本人的公民身份号码（与登录身份不一致）",
                          "must be the applicant's own resident ID (it does not match the logged-in person)"),
    "form.unexpected_material": ("本次申请不需要此材料", "this application does not need this document"),
    "material.source": ("材料来源应为上传、电子证照或容缺承诺", "a material's source is uploaded, fetched or promised"),
    "material.ref_required": ("请先上传文件", "upload the file first"),
    "material.unknown_document": ("找不到此上传文件，请重新上传", "this upload was not found; upload it again"),
    "material.not_promisable": ("此为核心材料，不能容缺后补", "this is a core document; it cannot be promised for later"),
    "material.e_license_not_found": ("电子证照库中未找到此证照，请上传扫描件",
                                     "not found in the e-licence library; upload a scan instead"),
    "material.not_e_license": ("此材料没有电子证照，请上传", "this document has no e-licence; upload it"),
    "supplement.empty": ("请至少补充一项材料或信息", "supply at least one document or field"),
    "document.type": ("只接受PDF、JPEG、PNG、WEBP或HEIC文件", "only PDF, JPEG, PNG, WEBP or HEIC files are accepted"),
    "document.too_large": ("文件不能超过10MB", "a file can be at most 10 MB"),
    "document.empty": ("文件为空", "the file is empty"),
    "request.too_large": ("提交内容过大", "the request body is too large"),
    "rate.limited": ("操作过于频繁，请稍后再试", "too many requests; please wait a moment"),
    "worklist.unavailable": ("部门工作台暂未开通", "the department worklist is not available yet"),
    "request.invalid": ("请求格式不正确", "the request is malformed"),
    "not_found": ("页面不存在", "not found"),
}


def err(path: str, code: str, label: tuple[str, str] | None = None) -> dict[str, str]:
    """One error entry; `label` (a field's zh/en label) prefixes the message."""
    zh, en = MESSAGES.get(code, ("请求无法处理", "the request cannot be handled"))
    if label:
        zh, en = f"{label[0]}：{zh}", f"{label[1]}: {en}"
    return {"path": path, "code": code, "message_zh": zh, "message_en": en}


def field_error(e: FieldError) -> dict[str, str]:
    return {"path": e.path, "code": e.code, "message_zh": e.message_zh, "message_en": e.message_en}


class ApiError(Exception):
    """A refusal: the status, its errors, headers and (rarely) more top-level keys of the body."""

    def __init__(self, status: int, errors: list[dict[str, str]], headers: dict[str, str] | None = None,
                 **extra: Any):
        super().__init__(status)
        self.status, self.errors, self.headers, self.extra = status, errors, headers or {}, extra

    def response(self) -> Response:
        return FastJSON({"errors": self.errors, **self.extra}, status_code=self.status, headers=self.headers)


def refuse(status: int, path: str, code: str, headers: dict[str, str] | None = None) -> ApiError:
    return ApiError(status, [err(path, code)], headers)


class FastJSON(JSONResponse):
    """A JSONResponse rendered by orjson, ~20x faster than the standard encoder and the same
    bytes as Starlette's `json.dumps(ensure_ascii=False, separators=(",", ":"))` for what it is
    used on: dicts with str keys of str, int, bool, None and lists of those (error bodies,
    acceptances). Not for floats (orjson writes 1e16 where json writes 1e+16) or anything
    orjson serialises natively and json refuses (UUIDs, enums, dataclasses, datetimes):
    those answers keep `JSONResponse`. What orjson refuses goes to the standard encoder."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:  # orjson.JSONEncodeError: a non-str key, an int beyond 64 bits
            return super().render(content)


def jsonable(value: Any) -> Any:
    """Plain JSON values of a read model's row: dates and times as ISO text."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def no_store(value: Any) -> JSONResponse:
    return JSONResponse(jsonable(value), headers={"Cache-Control": "no-store"})


def dedupe(errors: list[dict[str, str]]) -> list[dict[str, str]]:
    seen, out = set(), []
    for e in errors:
        k = (e["path"], e["code"])
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


# -- text hygiene, once for every route ------------------------------------------------------------
# JSON can carry a refused character only as a \-escape (raw control characters are invalid in a
# string), or raw as one of the refused characters above U+007E: DEL, C1, bidi controls, line
# separators, noncharacters. A body without any of these byte sequences is clean without parsing.
_MAYBE_REFUSED = re.compile(rb"[\\\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]|\xe2\x81[\xa6-\xa9]"
                            rb"|\xef\xb7[\x90-\xaf]|\xef\xbf[\xbe\xbf]|[\xf0-\xf4][\x8f\x9f\xaf\xbf]\xbf[\xbe\xbf]")
_ONE_LINE: frozenset[str] = frozenset()


async def text_errors(request: Request) -> list[dict[str, str]]:
    """Errors for refused characters (producers/text_rules.py) in the request's path parameters,
    query and JSON body, each naming its field."""
    problems: list = []
    for name, value in request.path_params.items():
        if isinstance(value, str):
            problems += text_rules.text_problems(value, (name,), _ONE_LINE)
    for name, value in request.query_params.multi_items():
        problems += text_rules.text_problems({name: value}, (), _ONE_LINE)
    ctype = request.headers.get("content-type", "")
    if request.method in ("POST", "PUT", "PATCH") and (not ctype or "json" in ctype):
        raw = await request.body()  # cached on the request: the handler reads the same bytes
        if _MAYBE_REFUSED.search(raw):
            problems += text_rules.text_problems(_json(raw))
    return text_rules.text_errors(problems) if problems else []


def _json(raw: bytes) -> Any:
    """The body as Python's json reads it (orjson refuses a lone surrogate that json accepts)."""
    import json

    try:
        return json.loads(raw)
    except ValueError:
        return None  # malformed: FastAPI's own validation answers it


class ApiRoute(APIRoute):
    """The route class of every router: control characters refused (422 naming the field) before
    the handler, and an `ApiError` from a dependency or handler answered in the API's error shape.

    `context` carries a router's configuration (its database, catalog, clock) with each of its
    routes — a subclass per router made by `with_context`; `include_router` keeps the class, so the
    configuration travels with the routes into whichever app mounts them (see `route_context`)."""

    context: Any = None

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                errors = await text_errors(request)
                if errors:
                    raise ApiError(422, errors)
                return await handler(request)
            except ApiError as exc:
                return exc.response()

        return route


def with_context(context: Any, name: str = "ContextRoute") -> type[ApiRoute]:
    return type(name, (ApiRoute,), {"context": context})


def route_context(request: Request) -> Any:
    """The configuration of the router whose route is serving the request (a FastAPI dependency)."""
    return type(request.scope["route"]).context
