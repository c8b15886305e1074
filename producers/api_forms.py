"""The merged form of any services picked together (随意组合, `GET /api/v1/forms?services=…`), and
what an application's or a correction's form and materials become: the MaterialRef records of
the event (uploaded, fetched as e-licences, promised 容缺), the errors of each, and the checks
that tie the form to the person it is for. Plain functions over a connection and the catalog.
E-licences a clerk's filing fetches are the applicant's data read by staff: recorded first
(`record_fetched`, producers/api_audit.py).

Who may call `GET /forms`: anyone, like a bundle's form; only an applicant's own login prefills it.
"""
from __future__ import annotations

from typing import Any

import psycopg
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from catalog.combination import COMBINATION, check_services, combination_label, parse_services
from catalog.form import MergedForm
from catalog.model import Catalog
from catalog.validators import check_resident_id

from . import api_audit, e_license, identity, intake_store
from .api_access import OPTIONAL_TOKEN, Acting, optional_caller
from .api_catalog import form_body, promisable
from .api_errors import ApiError, ApiRoute, err, jsonable
from .api_state import ApiState, api_state, label

UNKNOWN_REGION = "000000"


def needed(fm, values: dict[str, Any]) -> bool:
    return fm.required or any(c.holds(values) for c in fm.required_when)


def whole_numbers(mf: MergedForm, values: dict[str, Any]) -> dict[str, Any]:
    """The form's values with an integer field's `49.0` read as `49`: JSON has one number type, so
    `49.0` is the integer 49 to JSON Schema (the form's published schema, producers/api_form_schema.py)
    and to a client that computed it; found by schemathesis, which sends both spellings. Anything
    else is left for validate_form to judge."""
    integers = {ff.id for ff in mf.fields if ff.field.type == "integer"}
    return {k: int(v) if k in integers and isinstance(v, float) and v.is_integer() and abs(v) < 2**53 else v
            for k, v in values.items()}


def event_form(values: dict[str, Any]) -> dict[str, str]:
    """The event's form is text: booleans true/false, option sets comma-joined, blanks left out."""
    out = {}
    for k, v in values.items():
        if v is None or v == "" or v == []:
            continue
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, (list, tuple)):
            out[k] = ",".join(str(x) for x in v)
        else:
            out[k] = str(v)
    return out


def resolve_materials(conn: psycopg.Connection, cat: Catalog, mf: MergedForm, requested: dict[str, Any],
                      values: dict[str, Any], caller: Acting, *, submission: bool
                      ) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, str]]]:
    """(MaterialRef records, what validate_form should see, errors)."""
    errors: list[dict[str, str]] = []
    refs: list[dict[str, Any]] = []
    for_validation: dict[str, Any] = {}
    wanted = {fm.id: fm for fm in mf.materials}
    wallet = e_license.wallet(conn, caller.applicant_token)
    uploads = [v.get("ref") for v in requested.values() if isinstance(v, dict) and v.get("source") == "uploaded"]
    owned = intake_store.owned_documents(conn, caller.ident.subject, uploads)
    for code, entry in requested.items():
        path = f"materials.{code}"
        if code not in wanted:
            if not submission:  # validate_form reports these for a submission
                lbl = cat.materials.get(code)
                errors.append(err(path, "form.unexpected_material", (lbl.label.zh, lbl.label.en) if lbl else None))
            else:
                for_validation[code] = entry
            continue
        m = wanted[code].material
        lbl = (m.label.zh, m.label.en)
        source = entry.get("source") if isinstance(entry, dict) else None
        allowed = ("uploaded", "fetched", "promised") if submission else ("uploaded", "fetched")
        if source not in allowed:
            errors.append(err(f"{path}.source", "material.source", lbl))
            for_validation[code] = "?"
            continue
        if source == "uploaded":
            ref = entry.get("ref")
            if not isinstance(ref, str) or not ref:
                errors.append(err(f"{path}.ref", "material.ref_required", lbl))
            elif ref not in owned:
                errors.append(err(f"{path}.ref", "material.unknown_document", lbl))
            else:
                refs.append({"code": code, "source": "uploaded", "ref": ref})
            for_validation[code] = ref or "?"
        elif source == "promised":
            if not promisable(cat, code):
                errors.append(err(path, "material.not_promisable", lbl))
            else:
                refs.append({"code": code, "source": "promised", "ref": None})
            for_validation[code] = "promised"
        else:  # fetched
            if not m.e_license:
                errors.append(err(path, "material.not_e_license", lbl))
                continue
            licence = e_license.fetch_material(conn, code, wallet, values)
            if licence is None:
                errors.append(err(path, "material.e_license_not_found", lbl))
            else:
                refs.append({"code": code, "source": "fetched", "ref": licence})
    if submission:  # every e-licence the form needs is fetched without being asked for
        for fm in mf.fetched:
            if fm.id in requested or not needed(fm, values):
                continue
            licence = e_license.fetch_material(conn, fm.id, wallet, values)
            if licence is None:
                errors.append(err(f"materials.{fm.id}", "material.e_license_not_found",
                                  (fm.material.label.zh, fm.material.label.en)))
            else:
                refs.append({"code": fm.id, "source": "fetched", "ref": licence})
    record_fetched(caller, refs, submission=submission)
    return refs, for_validation, errors


def record_fetched(caller: Acting, refs: list[dict[str, Any]], *, submission: bool) -> None:
    """Staff filing or correcting for an applicant fetched the applicant's e-licences: a read of
    their data, recorded before the request goes on (503 if it cannot be). The case of a filing is
    known only when the request carries an Idempotency-Key (its id derives from it)."""
    fetched = tuple(r["code"] for r in refs if r["source"] == "fetched")
    if not fetched or caller.ident.role == "applicant":
        return
    audit, binding = api_audit.bound(caller.ident)
    case_id = binding.case_id
    if case_id is None and submission and binding.idempotency_key:
        case_id = intake_store.case_id_for(caller.ident.subject, binding.idempotency_key)
    audit.record([api_audit.Read(caller.applicant_token, "e_license", "filing" if submission else "correction",
                                 case_id=case_id, fields=fetched)])


def identity_checks(cat: Catalog, values: dict[str, Any], caller: Acting) -> list[dict[str, str]]:
    """The applicant's own resident ID in the form must be the logged-in (or named) person's."""
    errors = []
    for fid in ("applicant_resident_id", "guardian_resident_id"):
        value = values.get(fid)
        if isinstance(value, str) and check_resident_id(value) is None \
                and identity.subject_token(value) != caller.applicant_token:
            f = cat.fields.get(fid)
            errors.append(err(f"fields.{fid}", "identity.mismatch", (f.label.zh, f.label.en) if f else None))
    return errors


# -- 随意组合: the merged form of any services ------------------------------------------------------
router = APIRouter(prefix="/api/v1", tags=["catalog"], route_class=ApiRoute)


def combination_form(state: ApiState, services: list[str]) -> MergedForm:
    """The merged form of freely picked services, or 422 naming each service that is wrong and why."""
    _selection, problems = check_services(state.catalog, services)
    if problems:
        raise ApiError(422, [{"path": p.path, "code": p.code, "message_zh": p.message_zh, "message_en": p.message_en}
                             for p in problems])
    return state.catalog.merged_form(services=services)  # remembered per selection (catalog/form.py)


def added_view(state: ApiState, mf: MergedForm) -> list[dict[str, Any]]:
    """Each service the applicant did not pick but that had to be added, and why (in both languages)."""
    cat = state.catalog
    out = []
    for a in mf.selection.added:
        svc, by = cat.services[a.service], cat.services[a.needed_by]
        thing = cat.fields.get(a.output) or cat.materials.get(a.output)
        what = thing.label if thing is not None else None
        out.append({"service_id": a.service, "needed_by": a.needed_by, "output": a.output,
                    "reason": {"zh": f"已加入“{svc.label.zh}”：“{by.label.zh}”需要它办出的"
                                     f"{what.zh if what else a.output}",
                               "en": f"added {svc.label.en}: {by.label.en} needs its "
                                     f"{what.en if what else a.output}"},
                    "reason_text": a.reason})
    return out


@router.get("/forms", summary="随意组合: the merged form of any services, their dependencies added (each with why)",
            openapi_extra=OPTIONAL_TOKEN)
def combination(services: str = Query(..., description="service ids, comma-separated (e.g. "
                                                        "medical_insurance.newborn_enrolment,hrss.social_security_card)"),
                ident: identity.Identity | None = Depends(optional_caller),
                state: ApiState = Depends(api_state)) -> JSONResponse:
    from .api_form_schema import combination_schema

    picked = parse_services(services)
    mf = combination_form(state, picked)
    body = {"bundle": {"code": COMBINATION, "label": label(combination_label(state.catalog, mf.selection.services)),
                       "kind": None},
            "picked": list(mf.selection.picked), "added": added_view(state, mf),
            **form_body(state, mf, ident),
            "submit": {"method": "POST", "path": "/api/v1/applications",
                       "schema": combination_schema(state.catalog, mf)}}
    # a prefilled form is the applicant's personal data: no cache may keep it
    return JSONResponse(jsonable(body), headers={"Cache-Control": "no-store", "Vary": "Authorization"})
