"""理由代码: each department's bilingual list of reasons for refusing a service (不予办理) or asking
for a correction (补正), read from `data/reasons.yaml` and checked like the rest of the catalog.

Why a code and not the department's own sentence: the status page is bilingual and a department
writes in one language (before this list, the Chinese page showed English reasons); a code is also
what statistics and the supervisors can count. A decision carries the code (`DecisionRecorded.
reason_code`); readers turn it into the sentence of the page's language with `resolve`.

A code the department does not list (a backend newer than the catalog, a typo) is **shown as a
generic reason, not dead-lettered**: a decision is a department's fact — the service was refused
or approved whatever the wording — and parking it would leave the case open for ever, which hurts
the applicant far more than a vague sentence. `resolve` then answers the `unlisted` reason (and
`Resolved.listed` is False, so the case view can count it for the operators).

Pure data and lookups; loading is the only I/O.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .loader import DEFAULT_ROOT, CatalogError, Problem, _File, read_yaml
from .model import Catalog, Label, Origin

__all__ = ["KINDS", "Reason", "ReasonList", "Resolved", "UNLISTED", "UNSTATED", "load_reasons", "resolve"]

KINDS = ("rejection", "correction")
_CODE = re.compile(r"[a-z][a-z0-9_]*")
COMMON = "common"


@dataclass(frozen=True)
class Reason:
    """One reason: the sentence the applicant reads and what they can do next, in both languages."""
    code: str
    kind: str                     # rejection | correction
    label: Label
    advice: Label | None = None
    department: str | None = None  # None: a common reason every department may use
    origin: Origin | None = None


#: shown for a code the department does not list (see the module docstring)
UNLISTED = Reason("unlisted", "rejection",
                  Label("部门给出的理由不在其公布的理由清单中，请向该部门咨询具体原因",
                        "The department gave a reason that is not on its published list; ask the department why"),
                  Label("可向该部门咨询；如仍无法办理，可通过“办不成事”反映。",
                        'Ask the department; if it still cannot be done, report it as "can\'t get it done".'))
#: shown for a refusal that carries no code and no sentence at all
UNSTATED = Reason("unstated", "rejection",
                  Label("部门未说明理由", "The department gave no reason"),
                  Label("可向该部门咨询；如仍无法办理，可通过“办不成事”反映。",
                        'Ask the department; if it still cannot be done, report it as "can\'t get it done".'))


@dataclass(frozen=True)
class Resolved:
    reason: Reason
    listed: bool


@dataclass(frozen=True)
class ReasonList:
    """Every department's codes; `common` ones apply to every department."""
    common: Mapping[str, Reason]
    departments: Mapping[str, Mapping[str, Reason]]

    def of(self, department: str) -> dict[str, Reason]:
        """The codes `department` may use: the common ones and its own (its own win)."""
        return {**self.common, **self.departments.get(department, {})}

    def lookup(self, department: str, code: str) -> Reason | None:
        return self.departments.get(department, {}).get(code) or self.common.get(code)

    def listed(self, department: str, code: str) -> bool:
        return self.lookup(department, code) is not None


def resolve(reasons: ReasonList, department: str | None, code: str | None) -> Resolved | None:
    """The reason to show for a decision's code: None when it carries none (the reader then shows
    the department's own sentence, if any); the `unlisted` reason for a code not on the list."""
    if not code:
        return None
    found = reasons.lookup(department or "", code)
    return Resolved(found, True) if found else Resolved(UNLISTED, False)


# -- loading --------------------------------------------------------------------------------------
def _reason(f: _File, code: Any, body: Any, line: int, department: str | None) -> Reason | None:
    what = f"reason {code!r}" + (f" of {department}" if department else " (common)")
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        f.problem(line, f"reason code {code!r} must be lower_snake_case")
        return None
    m = f.mapping(body, line, what)
    if m is None:
        return None
    f.keys(m, {"kind", "zh", "en", "advice"}, what)
    kind = m.get("kind")
    if kind not in KINDS:
        f.problem(m.at("kind"), f"{what}: 'kind' must be one of {', '.join(KINDS)}")
    advice = None
    if "advice" in m:
        a = f.mapping(m["advice"], m.at("advice"), f"{what} advice")
        if a is not None:
            f.keys(a, {"zh", "en"}, f"{what} advice")
            advice = f.label(a, f"{what} advice")
    return Reason(code, str(kind), f.label(m, what), advice, department, f.origin(line))


def _parse(f: _File, doc: Any, catalog: Catalog | None) -> ReasonList:
    root = f.mapping(doc, 1, "reasons file")
    if root is None:
        return ReasonList({}, {})
    f.keys(root, {COMMON, "departments"}, "reasons file")
    common: dict[str, Reason] = {}
    m = f.mapping(root.get(COMMON) or _empty(), root.at(COMMON), "common reasons")
    for code, body in (m or {}).items():
        r = _reason(f, code, body, m.at(code), None)
        if r is not None:
            common[code] = r
    departments: dict[str, dict[str, Reason]] = {}
    dm = f.mapping(root.get("departments") or _empty(), root.at("departments"), "departments")
    for dept, codes in (dm or {}).items():
        line = dm.at(dept)
        if catalog is not None and dept not in catalog.departments:
            f.problem(line, f"department {dept!r} is not in the catalog's departments (data/departments.yaml)")
            continue
        cm = f.mapping(codes, line, f"reasons of {dept}")
        own: dict[str, Reason] = {}
        for code, body in (cm or {}).items():
            if code in common:
                f.problem(cm.at(code), f"reason {code!r} of {dept} repeats a common code; give it another name")
                continue
            r = _reason(f, code, body, cm.at(code), str(dept))
            if r is not None:
                own[code] = r
        departments[str(dept)] = own
    return ReasonList(common, departments)


def _empty():
    from .loader import _Map

    return _Map()


_DEFAULT: ReasonList | None = None


def load_reasons(path: str | os.PathLike | None = None, catalog: Catalog | None = None) -> ReasonList:
    """Load and check a reasons file (default: the package's `data/reasons.yaml`, checked against
    the package's catalog and cached); raises CatalogError naming each problem's file and line."""
    global _DEFAULT
    if path is None and catalog is None and _DEFAULT is not None:
        return _DEFAULT
    if catalog is None and path is None:
        from .loader import load_catalog

        catalog = load_catalog()
    target = Path(path) if path is not None else DEFAULT_ROOT / "data" / "reasons.yaml"
    problems: list[Problem] = []
    doc = read_yaml(target, problems)
    if problems:
        raise CatalogError(problems)
    out = _parse(_File(target, problems), doc, catalog)
    if problems:
        raise CatalogError(problems)
    if path is None:
        _DEFAULT = out
    return out
