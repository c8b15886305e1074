"""YAML → catalog model, with every problem reported as `file:line: what is wrong`.

The catalog is edited by people (policy staff adding a local bundle), so a mistake must be
found when the catalog loads, not when the first citizen applies, and the message must
point at the line to fix. All problems of a load are collected and raised together.

Layout of a catalog directory (the package's own is the default):

    data/departments.yaml   code → {zh, en}
    data/fields.yaml        id → {type, zh, en, pii, validator, options, …}
    data/materials.yaml     id → {zh, en, e_license, issuer, note}
    data/services.yaml      id → {department, zh, en, fields, materials, consumes, produces, statutory, …}
    data/claims.yaml        optional: programme-wide claims (several bundles at once)
    bundles/<code>.yaml     one bundle per file (see bundles/newborn.yaml)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import dag
from .form import dependencies
from .model import (FIELD_TYPES, FIELD_VALIDATORS, METRICS, Bundle, Catalog, Claim, ClaimedChange,
                    Condition, Department, Field, Figure, Label, ListEntry, Material, Member, Need,
                    Option, Origin, Service)

__all__ = ["CatalogError", "Problem", "load_catalog", "read_yaml", "DEFAULT_ROOT"]

DEFAULT_ROOT = Path(__file__).resolve().parent
_ID = re.compile(r"[a-z][a-z0-9_]*")
_SERVICE_ID = re.compile(r"([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)")
BATCHES = ("2024-1", "2024-2", "2025-1", "2025-2", "2026-1", "local")
CONFIDENCE = ("confirmed", "likely", "uncertain")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class CatalogError(ValueError):
    """The catalog did not load; `problems` lists every mistake found, each with file and line."""

    def __init__(self, problems: list[Problem]):
        self.problems = tuple(problems)
        super().__init__("\n".join(map(str, self.problems)))


# --- YAML that remembers line numbers ------------------------------------------------------

class _Map(dict):
    """A mapping that knows its own line and each key's line (1-based)."""
    line: int = 0
    key_lines: dict

    def at(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class _Seq(list):
    line: int = 0
    item_lines: list

    def at(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _MarkedLoader(yaml.SafeLoader):
    pass


def _construct_map(loader: _MarkedLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise _DuplicateKey(None, None, f"duplicate key {key!r} (a definition may appear only once)",
                                key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_seq(loader: _MarkedLoader, node: yaml.SequenceNode) -> _Seq:
    result = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def _display(path: Path) -> str:
    """Relative to the working directory when inside it (as editors and CI print paths)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def read_yaml(path: Path, problems: list[Problem]) -> Any:
    """Parse one file with line-aware containers; a syntax error becomes a Problem."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_MarkedLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        problems.append(Problem(_display(path), line, f"{exc.problem or exc.context}"))
    except (OSError, yaml.YAMLError) as exc:
        problems.append(Problem(_display(path), 0, f"cannot read: {exc}"))
    return None


# --- a reader per file ---------------------------------------------------------------------

class _File:
    """Typed access to one parsed file that records problems instead of raising."""

    def __init__(self, path: Path, problems: list[Problem]):
        self.path = path
        self.name = _display(path)
        self.problems = problems

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.name, line, message))

    def origin(self, line: int) -> Origin:
        return Origin(self.name, line)

    def mapping(self, value: Any, line: int, what: str) -> _Map | None:
        if isinstance(value, _Map):
            return value
        self.problem(line, f"{what} must be a mapping")
        return None

    def seq(self, value: Any, line: int, what: str) -> _Seq:
        if value is None:
            return _Seq()
        if isinstance(value, _Seq):
            return value
        self.problem(line, f"{what} must be a list")
        return _Seq()

    def keys(self, m: _Map, allowed: set[str], what: str) -> None:
        for key in m:
            if key not in allowed:
                self.problem(m.at(key), f"{what}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")

    def text(self, m: _Map, key: str, what: str, required: bool = True) -> str | None:
        value = m.get(key)
        if value is None:
            if required:
                self.problem(m.line, f"{what}: missing {key!r}")
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(m.at(key), f"{what}: {key!r} must be non-empty text")
            return None
        return value

    def flag(self, m: _Map, key: str, what: str, default: bool = False) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            self.problem(m.at(key), f"{what}: {key!r} must be true or false")
            return default
        return value

    def number(self, m: _Map, key: str, what: str, *, integer: bool = False, default: Any = None,
               minimum: float = 0) -> Any:
        value = m.get(key, default)
        if value is None:
            return None
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or value < minimum:
            kind = "a whole number" if integer else "a number"
            self.problem(m.at(key), f"{what}: {key!r} must be {kind} ≥ {minimum}")
            return default
        return value

    def label(self, m: _Map, what: str) -> Label:
        return Label(self.text(m, "zh", what) or "?", self.text(m, "en", what) or "?")

    def figure(self, value: Any, line: int, what: str, unit_key: str = "days") -> Figure | None:
        """A sourced number: {days: 5, source: …} or {days: 5, estimate: true, note: …}."""
        m = self.mapping(value, line, what)
        if m is None:
            return None
        self.keys(m, {unit_key, "source", "estimate", "note"}, what)
        number = self.number(m, unit_key, what)
        if number is None:
            if unit_key not in m:
                self.problem(m.line, f"{what}: missing {unit_key!r}")
            return None
        source = self.text(m, "source", what, required=False)
        estimate = self.flag(m, "estimate", what)
        note = self.text(m, "note", what, required=False)
        if not source and not (estimate and note):
            self.problem(m.line, f"{what}: a figure needs a 'source', or 'estimate: true' with a 'note' "
                                 "saying how it was chosen")
        return Figure(float(number), source, estimate, note, self.origin(m.line))


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
        f.keys(m, {"zh", "en"}, f"department {code!r}")
        out[code] = Department(code, f.label(m, f"department {code!r}"), f.origin(line))
    return out


_FIELD_KEYS = {"type", "zh", "en", "pii", "validator", "options", "min", "max", "max_length", "pattern", "hint"}


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
        out[fid] = Field(
            id=fid, type=ftype or "string", label=f.label(m, what), pii=f.flag(m, "pii", what),
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
                 "steps", "trips", "in_person", "note"}


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


# --- bundles -------------------------------------------------------------------------------

_BUNDLE_KEYS = {"code", "zh", "en", "kind", "list", "lead", "modelled", "promised_total", "services",
                "dropped_materials", "claims", "note", "retention"}


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


def _bundle(f: _File, doc: Any, departments: dict[str, Department], services: dict[str, Service],
            materials: dict[str, Material], producers: dict[str, str]) -> Bundle | None:
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
            f.keys(item_map, {"service", "promised"}, f"{what}: service entry")
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
        members.append(Member(sid, promised, f.origin(at)))
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
        promised_total=promised_total, dropped_materials=tuple(dropped),
        claims=tuple(_claims(f, m.get("claims"), m.at("claims"), what)),
        note=f.text(m, "note", what, required=False), origin=f.origin(m.line))


# --- the whole catalog ---------------------------------------------------------------------

def _load(root: Path) -> Catalog:
    problems: list[Problem] = []
    data = root / "data"
    bundle_dir = root / "bundles"
    if not bundle_dir.is_dir():
        problems.append(Problem(_display(bundle_dir), 0, "no bundles directory"))
    paths = {name: data / f"{name}.yaml" for name in ("departments", "fields", "materials", "services")}
    if (data / "claims.yaml").exists():
        paths["claims"] = data / "claims.yaml"
    bundle_paths = sorted(bundle_dir.glob("*.yaml")) if bundle_dir.is_dir() else []
    # Syntax first: a file that does not parse would make every reference into it look
    # unknown, burying the one real mistake under consequences.
    docs = {key: read_yaml(path, problems) for key, path in [*paths.items(), *((p, p) for p in bundle_paths)]}
    if problems:
        raise CatalogError(problems)
    files = {key: _File(path, problems) for key, path in [*paths.items(), *((p, p) for p in bundle_paths)]}

    departments = _departments(files["departments"], docs["departments"])
    fields = _fields(files["fields"], docs["fields"])
    materials = _materials(files["materials"], docs["materials"], departments)
    for mid, mat in materials.items():
        if mid in fields:
            files["materials"].problem(mat.origin.line, f"material {mid!r} has the same id as a field; outputs "
                                                        "are named by id, so ids must be unique across fields and materials")
    services, service_lines = _services(files["services"], docs["services"], departments)
    producers = _check_services(files["services"], services, service_lines, fields, materials)
    bundles: dict[str, Bundle] = {}
    for path in bundle_paths:
        bundle = _bundle(files[path], docs[path], departments, services, materials, producers)
        if bundle is None:
            continue
        if bundle.code in bundles:
            files[path].problem(1, f"bundle code {bundle.code!r} is already used by {bundles[bundle.code].origin}")
            continue
        bundles[bundle.code] = bundle
    claims = _programme_claims(files["claims"], docs["claims"]) if "claims" in paths else []
    if problems:
        raise CatalogError(problems)
    return Catalog(departments, fields, materials, services, bundles, tuple(claims))


def _programme_claims(f: _File, doc: Any) -> list[Claim]:
    m = f.mapping(doc, 1, "claims file")
    if m is None:
        return []
    f.keys(m, {"claims"}, "claims file")
    return _claims(f, m.get("claims"), m.at("claims"), "programme")


_DEFAULT: Catalog | None = None


def load_catalog(path: str | os.PathLike | None = None) -> Catalog:
    """Load and validate a catalog directory; raises CatalogError listing every problem.

    The package's own catalog (path None) is loaded once per process and cached: it is
    read-only data. Other paths are read afresh each call, so an operator checking an edited
    copy always sees the current files.
    """
    global _DEFAULT
    if path is None:
        if _DEFAULT is None:
            _DEFAULT = _load(DEFAULT_ROOT)
        return _DEFAULT
    return _load(Path(path))
