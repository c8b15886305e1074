"""一表申报: the merged form of a bundle or of any free combination of services (随意组合),
each department's minimised share of it, and validation of a filled-in form.

Three rules shape everything here:
- ask once: a field or material several services need appears once in the form;
- never ask what the applicant cannot know: an output of a service in the same application
  (the newborn's resident ID, issued by the police) is left out and flows between services;
- data minimisation: a department receives only what its own services declare.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from . import dag
from .form_validation import FieldError, validate_form
from .model import Catalog, Condition, Field, Material, Need, Service

__all__ = [
    "SelectionError", "Dependency", "Addition", "Selection", "FormField", "FormMaterial", "MergedForm",
    "DepartmentSubset", "FieldError", "dependencies", "select", "merged_form", "department_subset",
    "department_subsets", "minimise", "validate_form", "applicable_services",
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

    def add(self, need: Need, service_id: str, applies_when: Condition | None = None) -> None:
        """`applies_when`: the service is in the application only under this condition, so what it
        requires is required only then (the loader keeps conditional services' needs unconditional)."""
        when = need.when if applies_when is None or not need.required else applies_when
        self.required = self.required or (need.required and when is None)
        if when is not None and when not in self.conditions:
            self.conditions.append(when)
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
    bundle = catalog.bundle(bundle_code) if bundle_code is not None else None
    # 情形引导: the bundle's questions come first, always asked; they decide which conditional
    # services apply (a free combination has neither: every service picked applies)
    conditions = {m.service: m.applies_when for m in bundle.members} if bundle is not None else {}
    for qid in bundle.questions if bundle is not None else ():
        merged = fields.setdefault(qid, _Merged())
        merged.required = True
        merged.services.extend(sid for sid, c in conditions.items() if c is not None and c.field == qid)
    for sid in sel.services:
        s = catalog.services[sid]
        for need in s.fields:
            if need.id not in produced:
                fields.setdefault(need.id, _Merged()).add(need, sid, conditions.get(sid))
        for need in s.materials:
            if need.id not in produced:
                materials.setdefault(need.id, _Merged()).add(need, sid, conditions.get(sid))
    return MergedForm(
        selection=sel,
        fields=tuple(FormField(catalog.fields[fid], m.required, m.conditions_if_needed(), tuple(m.services))
                     for fid, m in fields.items()),
        materials=tuple(FormMaterial(catalog.materials[mid], m.required, m.conditions_if_needed(),
                                     tuple(m.services)) for mid, m in materials.items()),
        left_out=sel.dependencies)


def applicable_services(catalog: Catalog, form: MergedForm, values: Mapping[str, Any]) -> tuple[str, ...]:
    """The services of an application with these answers, in dispatch order: a bundle's
    conditional service (`applies_when`) only when its condition holds, so it is never
    dispatched and never holds up completion otherwise. Every other service always applies
    (a free combination has no conditions)."""
    bundle = catalog.bundles.get(form.selection.bundle) if form.selection.bundle else None
    if bundle is None or not bundle.conditional:
        return form.selection.services
    applies = set(bundle.applicable(values)) | (set(form.selection.services) - set(bundle.services))
    return tuple(s for s in form.selection.services if s in applies)


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
