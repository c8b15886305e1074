"""The dictionaries and services of a catalog (data/*.yaml) → model objects, each problem with
its file and line: departments (and their adapter configuration), fields (and their output
formats), materials, services (and their automatic decisions), and the catalog-wide checks of
references, output ownership and the consumes graph.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import dag
from .marked_yaml import _File
from .model import (FIELD_TYPES, FIELD_VALIDATORS, AdapterConfig, AutoDecision, Condition, Department, Field,
                    Material, Need, Option, Service)

_ID = re.compile(r"[a-z][a-z0-9_]*")
_SERVICE_ID = re.compile(r"([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)")


# --- dictionaries --------------------------------------------------------------------------

def _departments(f: _File, doc: Any) -> dict[str, Department]:
    out: dict[str, Department] = {}
    root = f.mapping(doc, 1, "departments file")
    for code, body in (root or {}).items():
        line = root.at(code)
        if not isinstance(code, str) or not _ID.fullmatch(code):
            f.problem(line, f"department code {code!r} must be lower_snake_case")
            continue
        m = f.mapping(body, line, f"department {code!r}")
        if m is None:
            continue
        f.keys(m, {"zh", "en", "adapter"}, f"department {code!r}")
        adapter = None
        if "adapter" in m:
            am = f.mapping(m["adapter"], m.at("adapter"), f"department {code!r}: adapter")
            if am is not None:
                f.keys(am, {"processing_s"}, f"department {code!r}: adapter")
                adapter = AdapterConfig(float(f.number(am, "processing_s", f"department {code!r}: adapter",
                                                       default=0.05)))
        out[code] = Department(code, f.label(m, f"department {code!r}"), f.origin(line), adapter)
    return out


_FIELD_KEYS = {"type", "zh", "en", "pii", "validator", "options", "min", "max", "max_length", "pattern", "hint",
               "format"}
#: placeholders of an output's number format (department_adapters/reference/formats.py)
FORMAT_TOKEN = re.compile(r"\{([a-z_]+)(?::([a-z0-9_]+))?\}")
FORMAT_NAMES = {"region", "province", "city", "abbr", "year", "date", "seq", "field"}


def _fields(f: _File, doc: Any) -> dict[str, Field]:
    out: dict[str, Field] = {}
    root = f.mapping(doc, 1, "fields file")
    for fid, body in (root or {}).items():
        line = root.at(fid)
        what = f"field {fid!r}"
        if not isinstance(fid, str) or not _ID.fullmatch(fid):
            f.problem(line, f"field id {fid!r} must be lower_snake_case")
            continue
        m = f.mapping(body, line, what)
        if m is None:
            continue
        f.keys(m, _FIELD_KEYS, what)
        ftype = f.text(m, "type", what)
        if ftype and ftype not in FIELD_TYPES:
            f.problem(m.at("type"), f"{what}: unknown type {ftype!r} (known: {', '.join(sorted(FIELD_TYPES))})")
        validator = f.text(m, "validator", what, required=False)
        if validator and validator not in FIELD_VALIDATORS:
            f.problem(m.at("validator"), f"{what}: unknown validator {validator!r} "
                                         f"(known: {', '.join(sorted(FIELD_VALIDATORS))})")
        if validator and ftype != "date":
            f.problem(m.at("validator"), f"{what}: validator {validator!r} applies to dates only")
        options: list[Option] = []
        if ftype in ("enum", "enum_set"):
            om = f.mapping(m.get("options"), m.at("options"), f"{what}: options")
            for value, olabel in (om or {}).items():
                if not isinstance(value, str):  # YAML reads yes/no/on/1 as bool or int
                    f.problem(om.at(value), f"{what}: option {value!r} must be text (quote it)")
                    continue
                ol = f.mapping(olabel, om.at(value), f"{what}: option {value!r}")
                if ol is not None:
                    options.append(Option(str(value), f.label(ol, f"{what}: option {value!r}")))
            if om is not None and not options:
                f.problem(m.at("options"), f"{what}: an enumeration needs at least one option")
        elif "options" in m:
            f.problem(m.at("options"), f"{what}: only enum and enum_set fields have options")
        pattern = f.text(m, "pattern", what, required=False)
        if pattern:
            try:
                re.compile(pattern)
            except re.error as exc:
                f.problem(m.at("pattern"), f"{what}: pattern is not a valid regular expression ({exc})")
                pattern = None
        hint = None
        if "hint" in m:
            hm = f.mapping(m["hint"], m.at("hint"), f"{what}: hint")
            hint = f.label(hm, f"{what}: hint") if hm is not None else None
        fmt = f.text(m, "format", what, required=False)
        if fmt:
            for token in FORMAT_TOKEN.finditer(fmt):
                name, arg = token.groups()
                if name not in FORMAT_NAMES:
                    f.problem(m.at("format"), f"{what}: unknown format placeholder {{{name}}} "
                                              f"(known: {', '.join(sorted(FORMAT_NAMES))})")
                elif name in ("seq", "field") and not arg:
                    f.problem(m.at("format"), f"{what}: {{{name}}} needs an argument ({{seq:6}}, {{field:id}})")
                elif name == "seq" and not arg.isdigit():
                    f.problem(m.at("format"), f"{what}: {{seq:N}} takes a number of digits")
        out[fid] = Field(
            format=fmt, id=fid, type=ftype or "string", label=f.label(m, what), pii=f.flag(m, "pii", what),
            validator=validator, options=tuple(options),
            min=f.number(m, "min", what, minimum=float("-inf")), max=f.number(m, "max", what, minimum=float("-inf")),
            max_length=f.number(m, "max_length", what, integer=True, minimum=1),
            pattern=pattern, hint=hint, origin=f.origin(line))
    return out


def _materials(f: _File, doc: Any, departments: dict[str, Department]) -> dict[str, Material]:
    out: dict[str, Material] = {}
    root = f.mapping(doc, 1, "materials file")
    for mid, body in (root or {}).items():
        line = root.at(mid)
        what = f"material {mid!r}"
        if not isinstance(mid, str) or not _ID.fullmatch(mid):
            f.problem(line, f"material id {mid!r} must be lower_snake_case")
            continue
        m = f.mapping(body, line, what)
        if m is None:
            continue
        f.keys(m, {"zh", "en", "e_license", "issuer", "note"}, what)
        issuer = f.text(m, "issuer", what, required=False)
        if issuer and issuer not in departments:
            f.problem(m.at("issuer"), f"{what}: unknown issuing department {issuer!r}")
        out[mid] = Material(mid, f.label(m, what), f.flag(m, "e_license", what), issuer,
                            f.text(m, "note", what, required=False), f.origin(line))
    return out


# --- services ------------------------------------------------------------------------------

_SERVICE_KEYS = {"department", "zh", "en", "fields", "materials", "consumes", "produces", "statutory",
                 "steps", "trips", "in_person", "note", "auto_decision"}


def _auto_decision(f: _File, value: Any, line: int, what: str) -> AutoDecision | None:
    """`auto_decision: {source, approve_when: [conditions], basis: output}` (免批秒办)."""
    m = f.mapping(value, line, f"{what}: auto_decision")
    if m is None:
        return None
    f.keys(m, {"source", "approve_when", "basis"}, f"{what}: auto_decision")
    source = f.text(m, "source", f"{what}: auto_decision")
    items = f.seq(m.get("approve_when"), m.at("approve_when"), f"{what}: auto_decision: approve_when")
    conditions = [c for i, item in enumerate(items)
                  if (c := _condition(f, item, items.at(i), f"{what}: auto_decision: approve_when")) is not None]
    basis = f.text(m, "basis", f"{what}: auto_decision", required=False)
    return AutoDecision(source or "?", tuple(conditions), basis)


def _condition(f: _File, value: Any, line: int, what: str) -> Condition | None:
    m = f.mapping(value, line, what)
    if m is None:
        return None
    f.keys(m, {"field", "equals", "in", "contains"}, what)
    ops = [op for op in ("equals", "in", "contains") if op in m]
    field_id = f.text(m, "field", what)
    if len(ops) != 1:
        f.problem(m.line, f"{what}: say exactly one of 'equals', 'in', 'contains'")
        return None
    op = ops[0]
    operand = m[op]
    if op == "in":
        operand = tuple(f.seq(operand, m.at(op), f"{what}: 'in'"))
    return Condition(field_id, op, operand) if field_id else None


def _needs(f: _File, value: Any, line: int, what: str, kind: str) -> tuple[list[Need], list[int]]:
    """`[id, {field: id, required: false}, {field: id, when: {...}}]` → needs and their lines."""
    needs, lines = [], []
    items = f.seq(value, line, f"{what}: {kind}s")
    for i, item in enumerate(items):
        at = items.at(i)
        if isinstance(item, str):
            needs.append(Need(item))
        else:
            m = f.mapping(item, at, f"{what}: a {kind}")
            if m is None:
                continue
            f.keys(m, {kind, "required", "when"}, f"{what}: {kind} entry")
            nid = f.text(m, kind, f"{what}: {kind} entry")
            if nid is None:
                continue
            when = _condition(f, m["when"], m.at("when"), f"{what}: {kind} {nid!r}: when") if "when" in m else None
            required = f.flag(m, "required", f"{what}: {kind} {nid!r}", default=True)
            if when is not None and "required" in m:
                f.problem(m.at("required"), f"{what}: {kind} {nid!r}: give 'required' or 'when', not both")
            needs.append(Need(nid, required=required if when is None else False, when=when))
        lines.append(at)
    return needs, lines


def _id_list(f: _File, value: Any, line: int, what: str) -> tuple[list[str], list[int]]:
    items = f.seq(value, line, what)
    ids, lines = [], []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            f.problem(items.at(i), f"{what}: entries must be ids")
            continue
        ids.append(item)
        lines.append(items.at(i))
    return ids, lines


@dataclass
class _ServiceLines:
    """Lines of a service's references, kept only for the checks that follow parsing."""
    fields: list[int]
    materials: list[int]
    consumes: list[int]
    produces: list[int]
    conditions: list[int]


def _services(f: _File, doc: Any, departments: dict[str, Department]) -> tuple[dict[str, Service], dict[str, _ServiceLines]]:
    out: dict[str, Service] = {}
    lines: dict[str, _ServiceLines] = {}
    root = f.mapping(doc, 1, "services file")
    for sid, body in (root or {}).items():
        line = root.at(sid)
        what = f"service {sid!r}"
        match = _SERVICE_ID.fullmatch(sid) if isinstance(sid, str) else None
        if not match:
            f.problem(line, f"service id {sid!r} must look like 'department.service_name'")
            continue
        m = f.mapping(body, line, what)
        if m is None:
            continue
        f.keys(m, _SERVICE_KEYS, what)
        dept = f.text(m, "department", what)
        if dept and dept not in departments:
            f.problem(m.at("department"), f"{what}: unknown department {dept!r}")
        if dept and match.group(1) != dept:
            f.problem(m.at("department"), f"{what}: the id must start with its department ({dept!r})")
        fields, field_lines = _needs(f, m.get("fields"), m.at("fields"), what, "field")
        materials, material_lines = _needs(f, m.get("materials"), m.at("materials"), what, "material")
        consumes, consume_lines = _id_list(f, m.get("consumes"), m.at("consumes"), f"{what}: consumes")
        produces, produce_lines = _id_list(f, m.get("produces"), m.at("produces"), f"{what}: produces")
        statutory = None
        if "statutory" in m:
            statutory = f.figure(m["statutory"], m.at("statutory"), f"{what}: statutory limit")
        else:
            f.problem(line, f"{what}: missing 'statutory' limit (give a source, or estimate: true with a note)")
        out[sid] = Service(
            id=sid, department=dept or match.group(1), label=f.label(m, what),
            fields=tuple(fields), materials=tuple(materials), consumes=tuple(consumes), produces=tuple(produces),
            statutory=statutory,
            steps=f.number(m, "steps", what, integer=True, default=2, minimum=1),
            trips=f.number(m, "trips", what, integer=True, default=1),
            in_person=f.flag(m, "in_person", what), note=f.text(m, "note", what, required=False),
            auto_decision=_auto_decision(f, m["auto_decision"], m.at("auto_decision"), what)
            if "auto_decision" in m else None,
            origin=f.origin(line))
        cond_lines = [ln for need, ln in zip(fields + materials, field_lines + material_lines) if need.when]
        lines[sid] = _ServiceLines(field_lines, material_lines, consume_lines, produce_lines, cond_lines)
    return out, lines


def _check_services(f: _File, services: dict[str, Service], lines: dict[str, _ServiceLines],
                    fields: dict[str, Field], materials: dict[str, Material]) -> dict[str, str]:
    """References, output ownership and the catalog-wide consumes graph. Returns output → producer."""
    producers: dict[str, str] = {}
    for sid, s in services.items():
        ln = lines[sid]
        for need, at in zip(s.fields, ln.fields):
            if need.id not in fields:
                f.problem(at, f"service {sid!r} needs unknown field {need.id!r}")
        for need, at in zip(s.materials, ln.materials):
            if need.id not in materials:
                f.problem(at, f"service {sid!r} needs unknown material {need.id!r}")
        for kind, needs, at_lines in (("field", s.fields, ln.fields), ("material", s.materials, ln.materials)):
            seen: set[str] = set()
            for need, at in zip(needs, at_lines):
                if need.id in seen:
                    f.problem(at, f"service {sid!r} lists {kind} {need.id!r} twice")
                seen.add(need.id)
        own_fields = {n.id for n in s.fields}
        for need, at in zip([n for n in s.fields + s.materials if n.when], ln.conditions):
            cond = need.when
            if cond.field not in own_fields:
                f.problem(at, f"service {sid!r}: {need.id!r} depends on {cond.field!r}, which is not one of "
                              "this service's own fields")
                continue
            fdef = fields.get(cond.field)
            if fdef and fdef.options:
                wanted = cond.value if cond.op == "in" else (cond.value,)
                for v in wanted:
                    if fdef.option(str(v)) is None:
                        f.problem(at, f"service {sid!r}: {need.id!r} depends on {cond.field!r} being {v!r}, "
                                      f"which is not one of its options")
            if fdef and fdef.type == "boolean" and not all(isinstance(v, bool) for v in
                                                            (cond.value if cond.op == "in" else (cond.value,))):
                f.problem(at, f"service {sid!r}: {need.id!r} depends on yes/no field {cond.field!r}; compare it "
                              "with true or false (unquoted)")
            if fdef and cond.op == "contains" and fdef.type != "enum_set":
                f.problem(at, f"service {sid!r}: 'contains' needs an enum_set field, {cond.field!r} is {fdef.type}")
        for out, at in zip(s.produces, ln.produces):
            if out not in fields and out not in materials:
                f.problem(at, f"service {sid!r} produces unknown output {out!r} (declare it in fields.yaml "
                              "or materials.yaml)")
            elif out in producers:
                f.problem(at, f"output {out!r} is produced by both {producers[out]!r} and {sid!r}; "
                              "an output has one producer")
            else:
                producers[out] = sid
        auto = s.auto_decision
        if auto is not None:
            at = s.origin.line if s.origin else 0
            readable = {n.id for n in s.fields} | set(s.consumes)
            for cond in auto.approve_when:
                if cond.field not in readable:
                    f.problem(at, f"service {sid!r}: auto_decision relies on {cond.field!r}, which is neither one of "
                                  "its fields nor an output it consumes")
            if auto.basis is not None and auto.basis not in s.produces:
                f.problem(at, f"service {sid!r}: auto_decision basis {auto.basis!r} must be one of its outputs "
                              "(produces)")
    for sid, s in services.items():
        for out, at in zip(s.consumes, lines[sid].consumes):
            if out not in fields and out not in materials:
                f.problem(at, f"service {sid!r} consumes unknown output {out!r}")
            elif out not in producers:
                f.problem(at, f"service {sid!r} consumes {out!r}, but no service produces it")
            elif producers[out] == sid:
                f.problem(at, f"service {sid!r} consumes its own output {out!r}")
    graph = {sid: {producers[o] for o in s.consumes if o in producers and producers[o] != sid}
             for sid, s in services.items()}
    cycle = dag.find_cycle(graph)
    if cycle:
        waiting, waited_for = cycle[0], cycle[1]
        output = next(o for o in services[waiting].consumes if producers.get(o) == waited_for)
        at = lines[waiting].consumes[services[waiting].consumes.index(output)]
        f.problem(at, "dependency cycle: " + " → ".join(cycle) + " (each waits for an output of the next)")
    return producers
