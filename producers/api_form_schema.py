"""Each bundle's merged form (一表申报) as a JSON Schema, published in the API's OpenAPI document.

Why: `ApplicationIn.form` is a free map to FastAPI (the catalog, not pydantic, validates it), so
the OpenAPI document said nothing a client or a generator could build an application from. Here
the catalog's merged form becomes one request body per bundle — `POST /api/v1/applications` takes
`oneOf` them, discriminated by `bundle_code` — with every field's type, options, bounds, length
and pattern, what is required always and what only when another answer holds (`if`/`then`), and
the materials each bundle takes with the sources each may have.

The schema documents; the API stays the authority: `catalog.form.validate_form` and the material
checks run on every submission as before and refuse with an error per field. What a schema
cannot say is left to them and said in `description`s: a resident ID's GB 11643 check character
and a USCC's GB 32100 one (named by the formats `gb11643-resident-id` and `gb32100-uscc`), that
`applicant_resident_id` / `guardian_resident_id` must be the logged-in person's own, that an
uploaded `ref` must be one of the caller's own uploads, and that an e-licence is fetched only
when the e-licence library holds it (else upload a scan). Dates that must not lie in the future
(or the past) use the formats `past-date` / `future-date`, `YYYY-MM-DD` like `date`.
"""
from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

from catalog.form import FormField, FormMaterial, MergedForm
from catalog.model import Catalog, Condition, Field

from .api_catalog import promisable

__all__ = ["available_bundles", "form_schema", "materials_schema", "application_schema", "combination_schema", "publish",
           "RESIDENT_ID", "USCC", "PAST_DATE", "FUTURE_DATE", "SUBMIT_PATH"]

RESIDENT_ID, USCC, PAST_DATE, FUTURE_DATE = "gb11643-resident-id", "gb32100-uscc", "past-date", "future-date"
SUBMIT_PATH = "/api/v1/applications"
_PROVINCES = "(?:1[1-5]|2[1-3]|3[1-7]|4[1-6]|5[0-4]|6[1-5]|71|8[1-3])"  # catalog/validators.py PROVINCE_CODES
_USCC_CHAR = "[0-9A-HJ-NPQRTUWXY]"
#: single-line text as producers/text_rules.py admits it (no C0/C1 controls, DEL, bidi controls,
#: line separators, BMP noncharacters), written with escapes so the document is ASCII. Lone surrogates
#: (refused too) are left out of the class: ECMA and Rust regex engines cannot name them, and a
#: validator that cannot compile a pattern ignores it (schemathesis did). UTF-8 cannot carry them anyway.
TEXT_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028-\\u202e\\u2066-\\u2069\\ufdd0-\\ufdef\\ufffe\\uffff]*$"
_DATE_SHAPE = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def available_bundles(catalog: Catalog) -> list[str]:
    """The bundles that can be applied for online (the others answer 422 `bundle.not_available`)."""
    return [code for code, b in catalog.bundles.items() if b.modelled and b.members]


def _anchored(pattern: str) -> str:
    """The catalog's patterns are full matches (Python `re.fullmatch`); JSON Schema's search."""
    return f"^(?:{pattern})$"


def field_schema(f: Field, required: bool) -> dict[str, Any]:
    """One field's value; `required` values may not be blank (blank counts as not given)."""
    title, t = f"{f.label.zh} / {f.label.en}", f.type
    out: dict[str, Any] = {"title": title}
    if t == "resident_id":
        out |= {"type": "string", "format": RESIDENT_ID, "minLength": 18, "maxLength": 18,
                "pattern": f"^{_PROVINCES}[0-9]{{4}}(?:19|20)[0-9]{{2}}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
                           "[0-9]{3}[0-9X]$",
                "description": "公民身份号码: GB 11643, a real birth date not after today and the MOD 11-2 check character"}
    elif t == "uscc":
        out |= {"type": "string", "format": USCC, "pattern": f"^{_USCC_CHAR}{{2}}[0-9]{{6}}{_USCC_CHAR}{{10}}$",
                "description": "统一社会信用代码: GB 32100, with its MOD 31 check character"}
    elif t == "mobile":
        out |= {"type": "string", "pattern": "^1[3-9][0-9]{9}$"}
    elif t == "region_code":
        out |= {"type": "string", "pattern": f"^{_PROVINCES}[0-9]{{4}}$"}
    elif t in ("string", "text"):
        out |= {"type": "string", "pattern": _anchored(f.pattern) if f.pattern else TEXT_PATTERN}
        if f.max_length:
            out["maxLength"] = f.max_length
        if required:
            out["minLength"] = 1
        if f.hint:
            out["description"] = f"{f.hint.zh} / {f.hint.en}"
    elif t == "date":
        fmt = {"past_date": PAST_DATE, "future_date": FUTURE_DATE}.get(f.validator or "", "date")
        out |= {"type": "string", "format": fmt, "pattern": _DATE_SHAPE}
    elif t == "enum":
        out |= {"type": "string", "enum": [o.value for o in f.options]}
    elif t == "enum_set":
        out |= {"type": "array", "items": {"type": "string", "enum": [o.value for o in f.options]},
                "uniqueItems": True, "minItems": 1 if required else 0}
    elif t in ("integer", "decimal"):
        out["type"] = "integer" if t == "integer" else "number"
        if t == "integer":
            out["description"] = "a whole number (49.0 is read as 49: JSON has one number type)"
        if f.min is not None:
            out["minimum"] = f.min
        if f.max is not None:
            out["maximum"] = f.max
    elif t == "boolean":
        out["type"] = "boolean"
    else:  # the loader admits only the types above; a new one must be described here
        raise ValueError(f"field type {t!r} has no JSON Schema")
    return out


def condition_schema(c: Condition) -> dict[str, Any]:
    """The `if` of a condition on a form answer (catalog/model.py `Condition.holds`)."""
    if c.op == "equals":
        test: dict[str, Any] = {"const": c.value}
    elif c.op == "in":
        test = {"enum": list(c.value)}
    elif c.op == "contains":
        test = {"type": "array", "contains": {"const": c.value}}
    else:
        raise ValueError(f"unknown condition operator {c.op!r}")
    return {"properties": {c.field: test}, "required": [c.field]}


def _conditionals(items: tuple[FormField, ...] | tuple[FormMaterial, ...], wrap) -> list[dict[str, Any]]:
    """`if` an answer holds `then` this field (or material) is required; one rule per condition."""
    rules = []
    for item in items:
        if item.required:
            continue
        for c in item.required_when:  # and not blank: "" or [] counts as not given
            rules.append({"if": wrap(condition_schema(c)),
                          "then": {"required": [item.id], "properties": {item.id: {"minLength": 1, "minItems": 1}}}})
    return rules


def form_schema(mf: MergedForm) -> dict[str, Any]:
    """`form` of a submission of this merged form: field id → value, nothing else."""
    schema: dict[str, Any] = {
        "type": "object", "additionalProperties": False,
        "properties": {ff.id: field_schema(ff.field, ff.required) for ff in mf.fields},
        "required": [ff.id for ff in mf.fields if ff.required],
    }
    rules = _conditionals(mf.fields, lambda s: s)
    if rules:
        schema["allOf"] = rules
    return schema


def _uploaded(title: str) -> dict[str, Any]:
    return {"title": title, "type": "object", "additionalProperties": False, "required": ["source", "ref"],
            "properties": {"source": {"const": "uploaded"},
                           "ref": {"type": "string", "minLength": 1, "pattern": TEXT_PATTERN,
                                   "description": "the ref POST /api/v1/documents answered to this caller"}}}


def material_schema(catalog: Catalog, fm: FormMaterial) -> dict[str, Any]:
    """The sources a material may come from: an upload always; 电子证照 fetched; 容缺 promised."""
    m = fm.material
    title = f"{m.label.zh} / {m.label.en}"
    sources = [_uploaded(f"{title}: uploaded")]
    if m.e_license:
        sources.append({"title": f"{title}: fetched", "type": "object", "additionalProperties": False,
                        "required": ["source"], "properties": {"source": {"const": "fetched"}},
                        "description": "fetched from the e-licence library (also without naming it); when the "
                                       "library holds none for the applicant, upload a scan instead"})
    elif promisable(catalog, fm.id):
        sources.append({"title": f"{title}: promised (容缺)", "type": "object", "additionalProperties": False,
                        "required": ["source"], "properties": {"source": {"const": "promised"}}})
    return {"oneOf": sources} if len(sources) > 1 else sources[0]


def materials_schema(catalog: Catalog, mf: MergedForm) -> dict[str, Any]:
    """`materials` of a submission: the uploads the form needs are required (e-licences are
    fetched unless named); nothing the form does not ask for."""
    return {"type": "object", "additionalProperties": False,
            "properties": {fm.id: material_schema(catalog, fm) for fm in mf.materials},
            "required": [fm.id for fm in mf.uploads if fm.required]}


def application_schema(catalog: Catalog, code: str, mf: MergedForm) -> dict[str, Any]:
    """One bundle's whole request body; materials that a form answer makes required, as rules."""
    b = catalog.bundles[code]
    schema: dict[str, Any] = {
        "title": f"{b.label.zh} / {b.label.en}", "type": "object", "additionalProperties": False,
        "required": ["bundle_code", "form", "materials"],
        "properties": {"bundle_code": {"const": code}, "form": form_schema(mf),
                       "materials": materials_schema(catalog, mf),
                       "applicant": {"$ref": "#/components/schemas/Applicant"}},
        "description": "applicant_resident_id / guardian_resident_id, when the form has them, are the "
                       "logged-in applicant's own (or, for a clerk, the person named in `applicant`)",
    }
    rules = _conditionals(mf.uploads, lambda s: {"properties": {"form": s}})
    rules = [{"if": r["if"], "then": {"properties": {"materials": r["then"]}}} for r in rules]
    if rules:
        schema["allOf"] = rules
    return schema


def combination_schema(catalog: Catalog, mf: MergedForm) -> dict[str, Any]:
    """The request body of a free combination (随意组合): `services` (the ones picked; what they
    need is added by the API) instead of `bundle_code`. Not in the OpenAPI document — combinations
    are countless — but answered with each combination's form (`GET /api/v1/forms?services=…`)."""
    picked = list(mf.selection.picked)
    schema: dict[str, Any] = {
        "title": "随意组合 / services of your choice", "type": "object", "additionalProperties": False,
        "required": ["services", "form", "materials"],
        "properties": {"services": {"type": "array", "items": {"type": "string", "enum": picked},
                                    "minItems": len(picked), "maxItems": len(picked), "uniqueItems": True},
                       "form": form_schema(mf), "materials": materials_schema(catalog, mf),
                       "applicant": {"type": "object", "required": ["resident_id"],
                                     "properties": {"resident_id": {"type": "string"}}}},
    }
    rules = _conditionals(mf.uploads, lambda s: {"properties": {"form": s}})
    rules = [{"if": r["if"], "then": {"properties": {"materials": r["then"]}}} for r in rules]
    if rules:
        schema["allOf"] = rules
    return schema


def _component(code: str) -> str:
    return "Application_" + re.sub(r"[^A-Za-z0-9_]", "_", code)


def publish(app: FastAPI, catalog: Catalog) -> None:
    """Make `app.openapi()` describe each bundle's application (built once, like FastAPI's own)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        mapping = {}
        for code in available_bundles(catalog):
            name = _component(code)
            components[name] = application_schema(catalog, code, catalog.merged_form(bundle_code=code))
            mapping[code] = f"#/components/schemas/{name}"
        op = doc["paths"][SUBMIT_PATH]["post"]
        op["requestBody"]["content"]["application/json"]["schema"] = {
            "oneOf": [{"$ref": ref} for ref in mapping.values()],
            "discriminator": {"propertyName": "bundle_code", "mapping": mapping}}
        op["description"] = (op.get("description") or "") + (
            "One body per bundle (一件事), from the catalog's merged form. The API validates every field "
            "again and answers 422 with one error per field (path, code, why) for anything it refuses. "
            "随意组合: instead of `bundle_code`, a body may name `services` picked freely (their "
            "dependencies are added); that body's schema is `submit.schema` of "
            "GET /api/v1/forms?services=….")
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
