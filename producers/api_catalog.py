"""The catalog's routes: the bundles (一件事) and the merged form (一表申报), prefilled from the
caller's own e-licences. Public: anyone may read them; only an applicant's own login prefills."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from catalog.form import MergedForm
from catalog.model import Catalog

from . import e_license, identity
from .api_access import OPTIONAL_TOKEN, optional_caller
from .api_errors import ApiError, ApiRoute, err, jsonable
from .api_state import ApiState, api_state, label

router = APIRouter(prefix="/api/v1", tags=["catalog"], route_class=ApiRoute)


def promisable(catalog: Catalog, material_id: str) -> bool:
    """容缺: only secondary documents may be promised for later; identity and civil-status
    documents (every e-licence kind, every ID card) are core and must be there at once."""
    mat = catalog.materials[material_id]
    return not (mat.e_license or material_id.endswith("_id_card") or material_id == "household_register")


def services_view(catalog: Catalog, service_ids) -> list[dict[str, Any]]:
    out = []
    for sid in service_ids:
        s = catalog.services[sid]
        out.append({"service_id": sid, "label": label(s.label), "department": s.department,
                    "department_label": label(catalog.departments[s.department].label)})
    return out


def ordered_departments(catalog: Catalog, service_ids) -> list[str]:
    seen: list[str] = []
    for sid in service_ids:
        d = catalog.services[sid].department
        if d not in seen:
            seen.append(d)
    return seen


@router.get("/bundles", summary="一件事: every bundle")
def bundles(state: ApiState = Depends(api_state)) -> dict[str, Any]:
    cat = state.catalog
    out = []
    for b in cat.bundles.values():
        services = list(cat.select(bundle_code=b.code).services) if b.modelled and b.members else []
        out.append({"code": b.code, "label": label(b.label), "kind": b.kind,
                    "available": bool(services), "lead": b.lead,
                    "promised_days": b.promised_total.value if b.promised_total else None,
                    "services": len(services), "departments": ordered_departments(cat, services)})
    return {"bundles": out}


def bundle_form(state: ApiState, code: str) -> MergedForm:
    if code not in state.catalog.bundles:
        raise ApiError(404, [err("bundle_code", "bundle.unknown")])
    b = state.catalog.bundles[code]
    if not (b.modelled and b.members):
        raise ApiError(404, [err("bundle_code", "bundle.not_available")])
    return state.merged_form(code)


@router.get("/bundles/{code}/form", summary="一表申报: the merged form, prefilled from the caller's own e-licences",
            openapi_extra=OPTIONAL_TOKEN)
def form(code: str, ident: identity.Identity | None = Depends(optional_caller),
         state: ApiState = Depends(api_state)) -> JSONResponse:
    mf = bundle_form(state, code)
    b = state.catalog.bundles[code]
    body = {"bundle": {"code": code, "label": label(b.label), "kind": b.kind}, **form_body(state, mf, ident)}
    # a prefilled form is the applicant's personal data: no cache may keep it
    return JSONResponse(jsonable(body), headers={"Cache-Control": "no-store", "Vary": "Authorization"})


def form_body(state: ApiState, mf: MergedForm, ident: identity.Identity | None) -> dict[str, Any]:
    """A merged form as the API shows it, prefilled from the caller's own e-licences: the same
    shape as a bundle's form (`GET /api/v1/bundles/{code}/form`)."""
    cat = state.catalog
    wallet = e_license.Wallet()
    if ident is not None and ident.role == "applicant" and not ident.read_only:
        with state.database.connection() as conn:
            wallet = e_license.wallet(conn, ident.subject)
    prefilled = e_license.prefill(wallet, {f.id for f in mf.fields})
    fields = []
    for ff in mf.fields:
        f = ff.field
        value, lic = prefilled.get(ff.id, (None, None))
        fields.append({
            "id": ff.id, "type": f.type, "label": label(f.label), "required": ff.required,
            "required_when": [{"field": c.field, "op": c.op, "value": c.value} for c in ff.required_when],
            "services": list(ff.services), "pii": f.pii,
            "options": [{"value": o.value, "label": label(o.label)} for o in f.options],
            "hint": label(f.hint) if f.hint else None, "max_length": f.max_length, "pattern": f.pattern,
            "min": f.min, "max": f.max, "value": value,
            "prefilled_from": {"kind": lic.kind, "licence_no": lic.licence_no,
                               "label": dict(zip(("zh", "en"), e_license.KIND_LABELS[lic.kind]))} if lic else None,
        })
    materials = []
    for fm in mf.materials:
        m = fm.material
        preview = e_license.material_preview(fm.id, wallet, prefilled) if m.e_license else None
        materials.append({
            "id": fm.id, "label": label(m.label), "required": fm.required,
            "required_when": [{"field": c.field, "op": c.op, "value": c.value} for c in fm.required_when],
            "services": list(fm.services), "e_license": m.e_license, "issuer": m.issuer,
            "fetched": preview is not None, "licence_no": preview["licence_no"] if preview else None,
            "holder": preview["holder"] if preview else None, "promisable": promisable(cat, fm.id),
        })
    return {"services": services_view(cat, mf.selection.services), "waves": [list(w) for w in mf.selection.waves],
            "fields": fields, "materials": materials, "prefilled": bool(prefilled)}
