"""Who may call what: the API's access rules, one FastAPI dependency per rule.

Identity is an HTTP bearer token (`bearer_scheme`, so the OpenAPI document marks every route that
needs one); a route declares the rules it needs as parameters, and nothing inside a handler
decides who the caller may be. The rules:

- `caller` / `optional_caller`: a valid token (401 `auth.required` / `auth.invalid` otherwise);
- `filer`: an applicant logged in as themself, or a window / home-visit clerk (403); the receipt's
  status link (`scope: status:read`) is refused with 403 `auth.read_only`;
- `case_owner`: the case is the caller's own — the applicant's, or the person a clerk names in
  the body's `applicant` (404 otherwise, so nobody learns that a case exists);
- `visible_case`: the applicant owner, a department with a service on the case, or the status
  link of this very case may read it (404); `own_case`: only the applicant of it (their login or
  its status link: who read their data, 404 for anyone else);
- `supervisor`: the 办不成事 supervisor (403); `department_staff`: staff of the department in
  the path (404); `department_member`: any department's staff (404);
- `staff_id_required`: staff tokens name the acting staff member (identity.verify_token refuses
  clerk, department and supervisor tokens without one; this rule states it on the route too).
The KPI and register routers declare their own rules on `caller` (producers/kpi_api.py,
producers/register_api.py). A route that shows personal data also declares `read_audit`
(producers/api_audit.py): a staff read names its staff member and is recorded before it is answered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from catalog.validators import check_resident_id

from . import identity, intake_store
from .api_errors import ApiError, err, refuse
from .api_state import ApiState, api_state

bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer", bearerFormat="JWT",
                           description="HS256 JWT from the (demo) single sign-on: applicant, clerk, department, "
                                       "supervisor or register; the receipt's status link is read-only")



def identify(token: str | None) -> identity.Identity:
    """The identity of a bearer token, or the 401 the API answers (also used by the body-limit
    middleware, which authenticates writes before their body is read)."""
    if token is None:
        raise ApiError(401, [err("authorization", "auth.required")], {"WWW-Authenticate": "Bearer"})
    try:
        return identity.verify_token(token)
    except identity.InvalidToken:
        raise ApiError(401, [err("authorization", "auth.invalid")],
                       {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None


def caller(credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> identity.Identity:
    return identify(credentials.credentials if credentials else None)


#: `openapi_extra` of a route whose token is optional: OpenAPI's "bearer, or nothing" (`{}`)
OPTIONAL_TOKEN: dict = {"security": [{}]}


def optional_caller(credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)
                    ) -> identity.Identity | None:
    """No token: anonymous (None); a token that does not verify is still 401."""
    return identify(credentials.credentials) if credentials else None


def staff_id_required(ident: identity.Identity = Depends(caller)) -> identity.Identity:
    if ident.role in identity.NAMED_STAFF_ROLES and not ident.staff_id:
        raise refuse(403, "authorization", "auth.staff_id")
    return ident


def acting(ident: identity.Identity) -> identity.Identity:
    """Only a person's own login or a clerk acts; the status link only reads."""
    if ident.read_only:
        raise refuse(403, "authorization", "auth.read_only")
    if ident.role not in ("applicant", "clerk"):
        raise refuse(403, "authorization", "auth.forbidden")
    return ident


def filer(ident: identity.Identity = Depends(staff_id_required)) -> identity.Identity:
    """Who may file an application or upload a document."""
    return acting(ident)


@dataclass(frozen=True)
class Acting:
    """The caller and whose case it is: the caller, or the person a clerk files for."""
    ident: identity.Identity
    applicant_token: str


def acting_for(ident: identity.Identity, resident_id: Any) -> Acting:
    """The person a request is for (422 when a clerk names nobody, or an invalid resident ID)."""
    if ident.role == "applicant":
        return Acting(ident, ident.subject)
    if resident_id is None:
        raise ApiError(422, [err("applicant.resident_id", "applicant.required")])
    problem = check_resident_id(resident_id) if isinstance(resident_id, str) else "resident_id.format"
    if problem:
        from catalog.validators import message

        zh, en = message(problem)
        raise ApiError(422, [{"path": "applicant.resident_id", "code": problem,
                              "message_zh": f"申请人公民身份号码：{zh}", "message_en": f"Applicant's resident ID: {en}"}])
    return Acting(ident, identity.subject_token(resident_id))


async def named_applicant(request: Request) -> Any:
    """`applicant.resident_id` of a JSON body: whom a clerk acts for (read from the cached body,
    so the handler's own model sees the same bytes)."""
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    applicant = body.get("applicant") if isinstance(body, dict) else None
    return applicant.get("resident_id") if isinstance(applicant, dict) else None


def case_owner(case_id: str = Path(...), ident: identity.Identity = Depends(staff_id_required),
               resident_id: Any = Depends(named_applicant), state: ApiState = Depends(api_state)) -> Acting:
    """The case is the caller's own (404 otherwise); a status link may not act on it (403).
    Whose case it is never changes, so this needs no lock; what may be done to it now is checked
    by the handler under the case's row lock."""
    if ident.case_id and ident.case_id != case_id:
        raise refuse(404, "case_id", "case.not_found")
    if ident.role not in ("applicant", "clerk"):
        raise refuse(404, "case_id", "case.not_found")
    if ident.read_only:
        raise refuse(403, "authorization", "auth.read_only")
    try:
        who = acting_for(ident, resident_id)
    except ApiError:
        raise refuse(404, "case_id", "case.not_found") from None
    with state.database.connection() as conn:
        row = intake_store.get_case(conn, case_id)
    if row is None or row.applicant_token != who.applicant_token:
        raise refuse(404, "case_id", "case.not_found")
    return who


def may_see(ident: identity.Identity, case_id: str, applicant_token: str | None, departments: Any) -> bool:
    if ident.case_id and ident.case_id != case_id:
        return False
    if ident.role == "applicant":
        return applicant_token is not None and ident.subject == applicant_token
    if ident.role == "department":
        return ident.department in (departments or ())
    return False


@dataclass(frozen=True)
class SeenCase:
    """The case as its reader may see it: the case view, or (before the view caught up) the
    intake's own row."""
    view: dict | None
    row: intake_store.IntakeCase | None


def visible_case(case_id: str = Path(...), ident: identity.Identity = Depends(staff_id_required),
                 state: ApiState = Depends(api_state)) -> SeenCase:
    with state.database.connection() as conn:
        view = state.case_reader(conn, case_id)
        if view is not None:
            if may_see(ident, case_id, view.get("applicant_token"), view.get("departments")):
                return SeenCase(view, None)
            raise refuse(404, "case_id", "case.not_found")
        row = intake_store.get_case(conn, case_id)
    if row is None or not may_see(ident, case_id, row.applicant_token, row.departments):
        raise refuse(404, "case_id", "case.not_found")
    return SeenCase(None, row)


def own_case(seen: SeenCase = Depends(visible_case), ident: identity.Identity = Depends(caller)) -> SeenCase:
    """The applicant's own case only — their login or the receipt's link of it (404 for staff):
    who read the applicant's data is the applicant's to see."""
    if ident.role != "applicant":
        raise refuse(404, "case_id", "case.not_found")
    return seen


def supervisor(ident: identity.Identity = Depends(staff_id_required)) -> identity.Identity:
    if ident.role != "supervisor":
        raise refuse(403, "authorization", "auth.forbidden")
    return ident


def department_staff(department: str = Path(...),
                     ident: identity.Identity = Depends(staff_id_required)) -> identity.Identity:
    """Staff of the department named in the path (404 for anyone else: a worklist is not public)."""
    if ident.role != "department" or ident.department != department:
        raise refuse(404, "department", "not_found")
    return ident


def department_member(ident: identity.Identity = Depends(staff_id_required)) -> identity.Identity:
    if ident.role != "department":
        raise refuse(404, "department", "not_found")
    return ident
