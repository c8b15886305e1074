"""Validation of a filled-in merged form (一表申报): every error at once, each naming the field
and saying what is wrong in both languages — never what was typed. Split from form.py, which
builds the form this checks."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping

from . import validators
from .model import Catalog, Condition, Field

__all__ = ["FieldError", "validate_form"]


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
    from .form import merged_form   # form.py re-exports this module: imported when first used

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
