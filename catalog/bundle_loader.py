"""Bundle files (bundles/<code>.yaml) → `Bundle`, with the checks that need the whole catalog:
members and their promised limits, conditional services (`applies_when`), the bundle's own
dependency graph, and a reference adapter for every department it names.
"""
from __future__ import annotations

from typing import Any

from . import dag
from .form import dependencies
from .marked_yaml import _File
from .model import (METRICS, Bundle, Claim, ClaimedChange, Department, Field, ListEntry, Material, Member,
                    Service)
from .services_loader import _condition, _id_list

BATCHES = ("2024-1", "2024-2", "2025-1", "2025-2", "2026-1", "local")
CONFIDENCE = ("confirmed", "likely", "uncertain")


# --- bundles -------------------------------------------------------------------------------

_BUNDLE_KEYS = {"code", "zh", "en", "kind", "list", "lead", "modelled", "promised_total", "services",
                "dropped_materials", "claims", "note", "retention", "questions"}


def _claims(f: _File, value: Any, line: int, what: str) -> list[Claim]:
    out = []
    items = f.seq(value, line, f"{what}: claims")
    for i, item in enumerate(items):
        m = f.mapping(item, items.at(i), f"{what}: claim")
        if m is None:
            continue
        f.keys(m, {"place", "source", "note", *METRICS}, f"{what}: claim")
        changes = {}
        for metric in METRICS:
            if metric not in m:
                continue
            cm = f.mapping(m[metric], m.at(metric), f"{what}: claim {metric}")
            if cm is None:
                continue
            f.keys(cm, {"before", "after", "change_pct"}, f"{what}: claim {metric}")
            before = f.number(cm, "before", f"{what}: claim {metric}")
            after = f.number(cm, "after", f"{what}: claim {metric}")
            pct = f.number(cm, "change_pct", f"{what}: claim {metric}", minimum=-100)
            if pct is None and before is None and after is None:
                f.problem(cm.line, f"{what}: claim {metric}: give 'before' and/or 'after', or 'change_pct'")
            changes[metric] = ClaimedChange(before, after, pct)
        if not changes:
            f.problem(m.line, f"{what}: a claim names at least one of {', '.join(METRICS)}")
        out.append(Claim(f.text(m, "place", f"{what}: claim") or "?", f.text(m, "source", f"{what}: claim") or "?",
                         changes, f.text(m, "note", f"{what}: claim", required=False)))
    return out


def _check_conditions(f: _File, what: str, members: list[Member], member_lines: dict[str, int],
                      services: dict[str, Service], fields: dict[str, Field], producers: dict[str, str],
                      questions: set[str]) -> None:
    """A conditional service (`applies_when`) must be decidable from the answers, before any
    department acts: its condition reads a question of the bundle or a field an unconditional
    member asks for; nothing unconditional may wait for its outputs (it might never run); and
    its own needs carry no conditions of their own (the merged form asks them when it applies)."""
    unconditional = {m.service for m in members if m.applies_when is None}
    asked = questions | {n.id for sid in unconditional for n in services[sid].fields}
    conditions = {m.service: m.applies_when for m in members}
    for m in members:
        cond, at = m.applies_when, member_lines[m.service]
        if cond is None:
            continue
        if cond.field not in asked:
            f.problem(at, f"{what}: {m.service!r} applies when {cond.field!r} …, but the form does not ask for it "
                          "unconditionally (add it to the bundle's questions)")
        fdef = fields.get(cond.field)
        if fdef is not None:
            wanted = cond.value if cond.op == "in" else (cond.value,)
            if fdef.options and any(fdef.option(str(v)) is None for v in wanted):
                f.problem(at, f"{what}: {m.service!r} applies when {cond.field!r} is {cond.value!r}, which is not "
                              "one of its options")
            if fdef.type == "boolean" and not all(isinstance(v, bool) for v in wanted):
                f.problem(at, f"{what}: {m.service!r}: compare yes/no field {cond.field!r} with true or false")
            if cond.op == "contains" and fdef.type != "enum_set":
                f.problem(at, f"{what}: {m.service!r}: 'contains' needs an enum_set field, {cond.field!r} is "
                              f"{fdef.type}")
        svc = services[m.service]
        for need in svc.fields + svc.materials:
            if need.when is not None:
                f.problem(at, f"{what}: conditional service {m.service!r} asks for {need.id!r} only when "
                              f"{need.when}; a conditional service's needs may not have conditions of their own")
        for other in members:
            waits = [o for o in services[other.service].needs if producers.get(o) == m.service]
            if waits and conditions[other.service] != cond:
                f.problem(member_lines[other.service],
                          f"{what}: {other.service!r} waits for {waits[0]!r} from {m.service!r}, which applies only "
                          f"when {cond}; give it the same applies_when")


def _check_adapters(f: _File, what: str, members: list[Member], services: dict[str, Service],
                    departments: dict[str, Department]) -> None:
    """Every department of the bundle has a reference adapter configured: a case is accepted
    only if each of its services can be answered."""
    for m in members:
        dept = services[m.service].department
        if dept in departments and departments[dept].adapter is None:
            at = m.origin.line if m.origin else 0
            f.problem(at, f"{what}: department {dept!r} (service {m.service!r}) has no adapter configuration "
                          f"(give it an 'adapter' in data/departments.yaml, {departments[dept].origin})")


def _bundle(f: _File, doc: Any, departments: dict[str, Department], services: dict[str, Service],
            materials: dict[str, Material], producers: dict[str, str],
            fields: dict[str, Field] | None = None) -> Bundle | None:
    fields = fields or {}
    m = f.mapping(doc, 1, "bundle file")
    if m is None:
        return None
    code = f.text(m, "code", "bundle")
    what = f"bundle {code!r}"
    f.keys(m, _BUNDLE_KEYS, what)
    if code and code != f.path.stem:
        f.problem(m.at("code"), f"{what}: the file must be named after its code ({code}.yaml)")
    kind = f.text(m, "kind", what)
    if kind and kind not in ("individual", "enterprise"):
        f.problem(m.at("kind"), f"{what}: kind must be 'individual' or 'enterprise'")
    listing = ListEntry("local", None, "uncertain")
    lm = f.mapping(m.get("list"), m.at("list"), f"{what}: list")
    if lm is not None:
        f.keys(lm, {"batch", "document", "confidence", "source"}, f"{what}: list")
        batch = f.text(lm, "batch", f"{what}: list")
        if batch and batch not in BATCHES:
            f.problem(lm.at("batch"), f"{what}: batch must be one of {', '.join(BATCHES)}")
        confidence = f.text(lm, "confidence", f"{what}: list")
        if confidence and confidence not in CONFIDENCE:
            f.problem(lm.at("confidence"), f"{what}: confidence must be one of {', '.join(CONFIDENCE)}")
        listing = ListEntry(batch or "local", f.text(lm, "document", f"{what}: list", required=False),
                            confidence or "uncertain", f.text(lm, "source", f"{what}: list", required=False))
    lead, lead_source = None, None
    if "lead" in m:
        ld = f.mapping(m["lead"], m.at("lead"), f"{what}: lead")
        if ld is not None:
            f.keys(ld, {"department", "source"}, f"{what}: lead")
            lead = f.text(ld, "department", f"{what}: lead")
            lead_source = f.text(ld, "source", f"{what}: lead")
            if lead and lead not in departments:
                f.problem(ld.at("department"), f"{what}: unknown lead department {lead!r}")
    modelled = f.flag(m, "modelled", what, default=True)
    members: list[Member] = []
    items = f.seq(m.get("services"), m.at("services"), f"{what}: services")
    member_lines: dict[str, int] = {}
    for i, item in enumerate(items):
        at = items.at(i)
        if isinstance(item, str):
            item_map = None
            sid = item
        else:
            item_map = f.mapping(item, at, f"{what}: service entry")
            if item_map is None:
                continue
            f.keys(item_map, {"service", "promised", "applies_when"}, f"{what}: service entry")
            sid = f.text(item_map, "service", f"{what}: service entry")
            if sid is None:
                continue
        if sid not in services:
            f.problem(at, f"{what}: unknown service {sid!r}")
            continue
        if sid in member_lines:
            f.problem(at, f"{what}: service {sid!r} listed twice")
            continue
        member_lines[sid] = at
        promised = None
        if item_map is not None and "promised" in item_map:
            promised = f.figure(item_map["promised"], item_map.at("promised"), f"{what}: {sid}: promised limit")
        elif modelled:
            f.problem(at, f"{what}: service {sid!r} has no promised limit (give a source, or estimate: true "
                          "with a note)")
        applies_when = None
        if item_map is not None and "applies_when" in item_map:
            applies_when = _condition(f, item_map["applies_when"], item_map.at("applies_when"),
                                      f"{what}: {sid}: applies_when")
        members.append(Member(sid, promised, f.origin(at), applies_when))
    if modelled and not members:
        f.problem(m.line, f"{what}: a modelled bundle lists its services (or say modelled: false)")
    if not modelled and members:
        f.problem(m.at("services"), f"{what}: modelled: false bundles list no services yet")
    # members must bring every output they consume
    for sid, at in member_lines.items():
        for out in services[sid].consumes:
            producer = producers.get(out)
            if producer and producer not in member_lines:
                f.problem(at, f"{what}: {sid!r} needs {out!r} from {producer!r}, which is not in the bundle")
    # the bundle's own dependency graph (fields produced inside the bundle count too)
    if members:  # the same dependency rule the merged form uses
        edges = dependencies({sid: services[sid] for sid in member_lines}, producers)
        graph = {sid: set() for sid in member_lines}
        for e in edges:
            graph[e.downstream].add(e.upstream)
        cycle = dag.find_cycle(graph)
        if cycle:
            f.problem(member_lines[cycle[0]], f"{what}: dependency cycle: " + " → ".join(cycle))
    questions, question_lines = _id_list(f, m.get("questions"), m.at("questions"), f"{what}: questions")
    for qid, at in zip(questions, question_lines):
        if qid not in fields:
            f.problem(at, f"{what}: question {qid!r} is not a field (fields.yaml)")
        elif qid in producers:
            f.problem(at, f"{what}: question {qid!r} is an output of {producers[qid]!r}; ask only what the "
                          "applicant knows")
    if members:
        _check_conditions(f, what, members, member_lines, services, fields, producers, set(questions))
        _check_adapters(f, what, members, services, departments)
    dropped, dropped_lines = _id_list(f, m.get("dropped_materials"), m.at("dropped_materials"),
                                      f"{what}: dropped_materials")
    for mid, at in zip(dropped, dropped_lines):
        if mid not in materials:
            f.problem(at, f"{what}: unknown dropped material {mid!r}")
    promised_total = None
    if "promised_total" in m:
        promised_total = f.figure(m["promised_total"], m.at("promised_total"), f"{what}: promised_total")
    return Bundle(
        code=code or f.path.stem, label=f.label(m, what), kind=kind or "individual", listing=listing,
        lead=lead, lead_source=lead_source, modelled=modelled, members=tuple(members),
        retention=f.figure(m["retention"], m.at("retention"), f"{what}: retention", unit_key="years")
        if "retention" in m else None,
        promised_total=promised_total, dropped_materials=tuple(dropped), questions=tuple(questions),
        claims=tuple(_claims(f, m.get("claims"), m.at("claims"), what)),
        note=f.text(m, "note", what, required=False), origin=f.origin(m.line))
