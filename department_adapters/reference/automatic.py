"""免批秒办: a service the catalog marks `auto_decision` is decided by rule from shared data.

No clerk and no processing time: the rule (`approve_when`, conditions over the task's fields
and the outputs of earlier services — a degree verified by education, contributions checked by
social security) is evaluated the moment the task arrives; approved when every condition
holds, refused naming the first that does not. What the decision relied on is recorded twice:
in the register record (`decided_by = 'rule'`, `basis`, migration 0015) and, when the catalog
names a `basis` output, in the decision's outputs, so the applicant sees why.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from catalog.model import AutoDecision, Catalog, Condition


def _value(name: str, fields: Mapping[str, Any], inputs: Mapping[str, Any]) -> Any:
    return fields[name] if name in fields else inputs.get(name)


def failed_condition(auto: AutoDecision, fields: Mapping[str, Any], inputs: Mapping[str, Any]) -> Condition | None:
    """The first condition of the rule that does not hold, or None: approve."""
    values = {**inputs, **fields}
    return next((c for c in auto.approve_when if not c.holds(values)), None)


def refusal_text(catalog: Catalog, failed: Condition) -> str:
    """Names the requirement, never the applicant's value."""
    fdef = catalog.fields.get(failed.field)
    zh, en = (fdef.label.zh, fdef.label.en) if fdef else (failed.field, failed.field)
    return f"不符合自动审批条件：{zh} / automatic decision: {en} does not meet the requirement"


def basis(catalog: Catalog, auto: AutoDecision, fields: Mapping[str, Any],
          inputs: Mapping[str, Any]) -> dict[str, str]:
    """field → the value the rule read (a personal field as 已核验 only: the record needs to say
    it was checked, not to copy it)."""
    out: dict[str, str] = {}
    for name in auto.relies_on:
        fdef = catalog.fields.get(name)
        value = _value(name, fields, inputs)
        out[name] = "已核验" if fdef is not None and fdef.pii else str(value)
    return out


def basis_text(catalog: Catalog, relied_on: Mapping[str, str]) -> str:
    """`免批秒办：学历学位核验结果=核验通过；…` in the labels a person reads."""
    parts = []
    for name, value in relied_on.items():
        fdef = catalog.fields.get(name)
        label = fdef.label.zh if fdef else name
        option = fdef.option(value) if fdef is not None and fdef.options else None
        parts.append(f"{label}={option.label.zh if option else value}")
    return "免批秒办（系统自动审批）依据：" + "；".join(parts)
