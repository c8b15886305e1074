"""一表申报: the merged form of a bundle or of any free combination of services (随意组合),
each department's minimised share of it, and validation of a filled-in form.

Three rules shape everything here:
- ask once: a field or material several services need appears once in the form;
- never ask what the applicant cannot know: an output of a service in the same application
  (the newborn's resident ID, issued by the police) is left out and flows between services;
- data minimisation: a department receives only what its own services declare.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping

from . import dag, validators
from .model import Catalog, Condition, Field, Material, Need, Service

__all__ = [
    "SelectionError", "Dependency", "Addition", "Selection", "FormField", "FormMaterial", "MergedForm",
    "DepartmentSubset", "FieldError", "dependencies", "select", "merged_form", "department_subset",
    "department_subsets", "minimise", "validate_form",
]


class SelectionError(ValueError):
    """The services asked for cannot form one application (unknown id, or they wait on each other)."""


@dataclass(frozen=True)
class Dependency:
    """`downstream` waits for `upstream` because it needs `output`."""
    upstream: str
    downstream: str
    output: str

    def __str__(self) -> str:
        return f"{self.downstream} waits for {self.upstream} ({self.output})"


@dataclass(frozen=True)
class Addition:
    """A service the applicant did not pick but that had to be added."""
    service: str
    needed_by: str
    output: str

    @property
    def reason(self) -> str:
        return f"added {self.service} because {self.needed_by} needs its output {self.output}"


@dataclass(frozen=True)
class Selection:
    """The services of one application, closed under their needs, in dispatch order."""
    services: tuple[str, ...]
    picked: tuple[str, ...]
    added: tuple[Addition, ...]
    dependencies: tuple[Dependency, ...]
    waves: tuple[tuple[str, ...], ...]
    bundle: str | None = None

    def upstream_of(self, service_id: str) -> tuple[Dependency, ...]:
        return tuple(d for d in self.dependencies if d.downstream == service_id)


def dependencies(services: Mapping[str, Service], producers: Mapping[str, str]) -> tuple[Dependency, ...]:
    """Implied edges among `services`: a service waits for any member producing what it needs.

    Not only `consumes`: a field a service would otherwise ask the applicant for (a child's
    resident ID for school enrolment) also comes from a member that produces it, when one
    is in the same application.
    """
    edges = []
    for sid, s in services.items():
        seen: set[str] = set()
        for need in s.needs:
            producer = producers.get(need)
            if need in seen or producer is None or producer == sid or producer not in services:
                continue
            seen.add(need)
            edges.append(Dependency(producer, sid, need))
    return tuple(edges)


def select(catalog: Catalog, bundle_code: str | None = None, services: Iterable[str] | None = None) -> Selection:
    """A bundle's services, any picked services, or both, plus every producer they consume from."""
    if bundle_code is None and services is None:
        raise SelectionError("name a bundle or some services")
    picked: list[str] = []
    if bundle_code is not None:
        try:
            picked.extend(catalog.bundle(bundle_code).services)
        except KeyError as exc:
            raise SelectionError(exc.args[0]) from None
    if isinstance(services, str):
        services = [services]
    for sid in services or ():
        if sid not in catalog.services:
            raise SelectionError(f"unknown service {sid!r}")
        if sid not in picked:
            picked.append(sid)
    chosen = list(picked)
    added: list[Addition] = []
    i = 0
    while i < len(chosen):  # breadth-first: reasons read from the picked service outwards
        s = catalog.services[chosen[i]]
        for out in s.consumes:
            producer = catalog.producers.get(out)
            if producer is None:
                raise SelectionError(f"{s.id} consumes {out!r}, which no service produces")
            if producer not in chosen:
                chosen.append(producer)
                added.append(Addition(producer, s.id, out))
        i += 1
    members = {sid: catalog.services[sid] for sid in chosen}
    edges = dependencies(members, catalog.producers)
    graph: dict[str, set[str]] = {sid: set() for sid in chosen}
    for e in edges:
        graph[e.downstream].add(e.upstream)
    try:
        order = dag.waves(graph)
    except dag.CycleError as exc:
        raise SelectionError(f"these services wait on each other: {' → '.join(exc.cycle)}") from None
    return Selection(services=tuple(s for wave in order for s in wave), picked=tuple(picked),
                     added=tuple(added), dependencies=edges, waves=order, bundle=bundle_code)


# --- the merged form -----------------------------------------------------------------------

@dataclass(frozen=True)
class FormField:
    """A field asked once. Required if any service requires it; else when any condition holds."""
    field: Field
    required: bool
    required_when: tuple[Condition, ...]
    services: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.field.id


@dataclass(frozen=True)
class FormMaterial:
    """A material asked once; `fetched` (免证办) ones come from the e-license library."""
    material: Material
    required: bool
    required_when: tuple[Condition, ...]
    services: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.material.id

    @property
    def fetched(self) -> bool:
        return self.material.e_license


@dataclass(frozen=True)
class MergedForm:
    selection: Selection
    fields: tuple[FormField, ...]
    materials: tuple[FormMaterial, ...]
    left_out: tuple[Dependency, ...]  # needs met by an earlier service's output, never asked

    def field(self, field_id: str) -> FormField | None:
        return next((f for f in self.fields if f.id == field_id), None)

    def material(self, material_id: str) -> FormMaterial | None:
        return next((m for m in self.materials if m.id == material_id), None)

    @property
    def uploads(self) -> tuple[FormMaterial, ...]:
        return tuple(m for m in self.materials if not m.fetched)

    @property
    def fetched(self) -> tuple[FormMaterial, ...]:
        return tuple(m for m in self.materials if m.fetched)


class _Merged:
    """Accumulates one field's or material's requirement across services."""

    def __init__(self) -> None:
        self.required = False
        self.conditions: list[Condition] = []
        self.services: list[str] = []

    def add(self, need: Need, service_id: str) -> None:
        self.required = self.required or (need.required and need.when is None)
        if need.when is not None and need.when not in self.conditions:
            self.conditions.append(need.when)
        if service_id not in self.services:
            self.services.append(service_id)

    def conditions_if_needed(self) -> tuple[Condition, ...]:
        return () if self.required else tuple(self.conditions)


_FORMS: dict[int, tuple[Catalog, dict]] = {}


def merged_form(catalog: Catalog, bundle_code: str | None = None,
                services: Iterable[str] | None = None) -> MergedForm:
    """The one form of an application, fields and materials in the order services go out.
    Remembered per catalog and selection (it is immutable; every submission asks for it)."""
    services = tuple(services) if services is not None else None
    held = _FORMS.get(id(catalog))
    if held is None or held[0] is not catalog:
        held = _FORMS[id(catalog)] = (catalog, {})
    key = (bundle_code, services)
    if key not in held[1]:
        held[1][key] = _merge(catalog, bundle_code, services)
    return held[1][key]


def _merge(catalog: Catalog, bundle_code: str | None, services: tuple[str, ...] | None) -> MergedForm:
    sel = select(catalog, bundle_code=bundle_code, services=services)
    produced = {out: sid for sid in sel.services for out in catalog.services[sid].produces}
    fields: dict[str, _Merged] = {}
    materials: dict[str, _Merged] = {}
    for sid in sel.services:
        s = catalog.services[sid]
        for need in s.fields:
            if need.id not in produced:
                fields.setdefault(need.id, _Merged()).add(need, sid)
        for need in s.materials:
            if need.id not in produced:
                materials.setdefault(need.id, _Merged()).add(need, sid)
    return MergedForm(
        selection=sel,
        fields=tuple(FormField(catalog.fields[fid], m.required, m.conditions_if_needed(), tuple(m.services))
                     for fid, m in fields.items()),
        materials=tuple(FormMaterial(catalog.materials[mid], m.required, m.conditions_if_needed(),
                                     tuple(m.services)) for mid, m in materials.items()),
        left_out=sel.dependencies)


# --- data minimisation ---------------------------------------------------------------------

@dataclass(frozen=True)
class DepartmentSubset:
    """What one department may receive for an application: its services' declared needs only."""
    department: str
    services: tuple[str, ...]
    fields: tuple[str, ...]
    materials: tuple[str, ...]


def _subset(catalog: Catalog, department: str, service_ids: Iterable[str]) -> DepartmentSubset:
    mine = [catalog.services[sid] for sid in service_ids if catalog.services[sid].department == department]
    fields: list[str] = []
    materials: list[str] = []
    for s in mine:
        for need in s.needs:
            bucket = fields if need in catalog.fields else materials
            if need not in bucket:
                bucket.append(need)
    return DepartmentSubset(department, tuple(s.id for s in mine), tuple(fields), tuple(materials))


def department_subsets(catalog: Catalog, bundle_code: str | None = None,
                       services: Iterable[str] | None = None) -> dict[str, DepartmentSubset]:
    """Every department of an application → its subset, in the order departments first act."""
    sel = select(catalog, bundle_code=bundle_code, services=services)
    order: list[str] = []
    for sid in sel.services:
        dept = catalog.services[sid].department
        if dept not in order:
            order.append(dept)
    return {d: _subset(catalog, d, sel.services) for d in order}


def department_subset(catalog: Catalog, department: str, bundle_code: str | None = None,
                      services: Iterable[str] | None = None) -> DepartmentSubset:
    sel = select(catalog, bundle_code=bundle_code, services=services)
    return _subset(catalog, department, sel.services)


def minimise(values: Mapping[str, Any], subset: DepartmentSubset) -> dict[str, Any]:
    """The part of a case's data (form values and upstream outputs) a department may see."""
    allowed = set(subset.fields) | set(subset.materials)
    return {k: v for k, v in values.items() if k in allowed}


# --- validation ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldError:
    """One actionable error: where (`path`), what (`code`), and a sentence in both languages.

    Messages name the field by its label and say what is wrong, never what was typed.
    """
    path: str
    code: str
    message_zh: str
    message_en: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message_zh} / {self.message_en}"


_FORM_MESSAGES: dict[str, tuple[str, str]] = {
    "form.unexpected_field": ("本次申请不收集此项，请勿提交", "this application does not ask for this field; leave it out"),
    "form.unexpected_material": ("本次申请不需要此材料", "this application does not need this document"),
    "material.required": ("请上传此材料", "please upload this document"),
    "string.type": ("应为文字", "must be text"),
    "string.too_long": ("内容过长", "is too long"),
    "string.pattern": ("格式不正确", "has the wrong format"),
    "date.format": ("日期格式应为YYYY-MM-DD", "a date is written YYYY-MM-DD"),
    "date.future": ("日期不能晚于今天", "the date cannot be in the future"),
    "date.past": ("日期不能早于今天", "the date cannot be in the past"),
    "enum.unknown": ("不是可选项之一", "is not one of the options"),
    "enum_set.type": ("应为可选项的列表", "must be a list of options"),
    "enum_set.duplicate": ("同一选项选了两次", "the same option is chosen twice"),
    "integer.type": ("应为整数", "must be a whole number"),
    "decimal.type": ("应为数字", "must be a number"),
    "number.too_small": ("数值过小", "is too small"),
    "number.too_large": ("数值过大", "is too large"),
    "boolean.type": ("应为“是”或“否”", "must be yes or no"),
}


def _sentence(code: str) -> tuple[str, str]:
    return _FORM_MESSAGES.get(code) or validators.message(code)


def _error(path: str, code: str, zh_label: str, en_label: str, extra: tuple[str, str] = ("", "")) -> FieldError:
    zh, en = _sentence(code)
    return FieldError(path, code, f"{zh_label}：{zh}{extra[0]}", f"{en_label}: {en}{extra[1]}")


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def _empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, (list, tuple, set)) and not value)


def _check_value(fdef: Field, value: Any, today: date) -> tuple[str, tuple[str, str]] | None:
    """(error code, extra text for the message) or None. Extra text is catalog data, never input."""
    t = fdef.type
    if t in ("resident_id", "uscc", "mobile", "region_code"):
        check = {"resident_id": lambda v: validators.check_resident_id(v, today=today),
                 "uscc": validators.check_uscc, "mobile": validators.check_mobile,
                 "region_code": validators.check_region_code}[t]
        code = check(value)
        return (code, ("", "")) if code else None
    if t in ("string", "text"):
        if not isinstance(value, str):
            return "string.type", ("", "")
        if fdef.max_length and len(value) > fdef.max_length:
            return "string.too_long", (f"（最多{fdef.max_length}字）", f" (at most {fdef.max_length} characters)")
        if fdef.pattern and not re.fullmatch(fdef.pattern, value):
            hint = (f"（{fdef.hint.zh}）", f" ({fdef.hint.en})") if fdef.hint else ("", "")
            return "string.pattern", hint
        return None
    if t == "date":
        if isinstance(value, date) and not hasattr(value, "hour"):
            d = value
        elif isinstance(value, str) and _ISO_DATE.fullmatch(value):
            try:
                d = date.fromisoformat(value)
            except ValueError:
                return "date.format", ("", "")
        else:
            return "date.format", ("", "")
        if fdef.validator == "past_date" and d > today:
            return "date.future", ("", "")
        if fdef.validator == "future_date" and d < today:
            return "date.past", ("", "")
        return None
    if t == "enum":
        if not isinstance(value, str) or fdef.option(value) is None:
            return "enum.unknown", _options_text(fdef)
        return None
    if t == "enum_set":
        if not isinstance(value, (list, tuple)):
            return "enum_set.type", _options_text(fdef)
        if any(not isinstance(v, str) or fdef.option(v) is None for v in value):
            return "enum.unknown", _options_text(fdef)
        if len(set(value)) != len(value):
            return "enum_set.duplicate", ("", "")
        return None
    if t in ("integer", "decimal"):
        if t == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                return "integer.type", ("", "")
            number = Decimal(value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
                return "decimal.type", ("", "")
            try:
                number = Decimal(str(value))
            except InvalidOperation:
                return "decimal.type", ("", "")
            if not number.is_finite():
                return "decimal.type", ("", "")
        if fdef.min is not None and number < Decimal(str(fdef.min)):
            return "number.too_small", (f"（不能小于{fdef.min:g}）", f" (at least {fdef.min:g})")
        if fdef.max is not None and number > Decimal(str(fdef.max)):
            return "number.too_large", (f"（不能大于{fdef.max:g}）", f" (at most {fdef.max:g})")
        return None
    if t == "boolean":
        return None if isinstance(value, bool) else ("boolean.type", ("", ""))
    raise ValueError(f"field type {t!r} has no check")  # the loader only admits known types


def _options_text(fdef: Field) -> tuple[str, str]:
    return ("（可选：" + "、".join(o.label.zh for o in fdef.options) + "）",
            " (options: " + ", ".join(o.value for o in fdef.options) + ")")


def _needed(required: bool, conditions: tuple[Condition, ...], values: Mapping[str, Any]) -> bool:
    """Conditions on a field not in the form (an output) cannot be judged yet: not needed now."""
    return required or any(c.holds(values) for c in conditions)


def validate_form(catalog: Catalog, bundle_or_services: str | Iterable[str], values: Mapping[str, Any],
                  materials: Mapping[str, Any], *, today: date | None = None) -> list[FieldError]:
    """Every error of a filled-in merged form at once; an empty list means it may be produced.

    `values` maps field id → value (dates as date or 'YYYY-MM-DD'); `materials` maps
    material id → an upload reference. E-licenses need no upload; anything the form does
    not ask for is refused rather than passed on, so no department gets data it should not.
    """
    today = today or date.today()
    if isinstance(bundle_or_services, str):
        form = merged_form(catalog, bundle_code=bundle_or_services)
    else:
        form = merged_form(catalog, services=list(bundle_or_services))
    errors: list[FieldError] = []
    asked = {f.id for f in form.fields}
    for key in values:
        if key not in asked:
            label = catalog.fields.get(key)
            errors.append(_error(f"fields.{key}", "form.unexpected_field",
                                 label.label.zh if label else str(key), label.label.en if label else str(key)))
    for ff in form.fields:
        path, fdef = f"fields.{ff.id}", ff.field
        value = values.get(ff.id)
        if _empty(value):
            if _needed(ff.required, ff.required_when, values):
                errors.append(_error(path, "required", fdef.label.zh, fdef.label.en))
            continue
        problem = _check_value(fdef, value, today)
        if problem:
            errors.append(_error(path, problem[0], fdef.label.zh, fdef.label.en, problem[1]))
    wanted = {m.id for m in form.materials}
    for key in materials:
        if key not in wanted:
            label = catalog.materials.get(key)
            errors.append(_error(f"materials.{key}", "form.unexpected_material",
                                 label.label.zh if label else str(key), label.label.en if label else str(key)))
    for fm in form.uploads:
        if _empty(materials.get(fm.id)) or materials.get(fm.id) is False:
            if _needed(fm.required, fm.required_when, values):
                errors.append(_error(f"materials.{fm.id}", "material.required",
                                     fm.material.label.zh, fm.material.label.en))
    return errors
