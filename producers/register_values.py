"""A register value on its own, and the words a refusal is given in.

`check_value` says whether one typed value is what its field's type allows (normalised, or an
error code); `MESSAGES` and `problem` turn any error code of the register rules into a `Problem`
a person can act on, in Chinese and English, naming the field and never repeating the value;
`ChangeRefused` carries them. Separate from producers/register_changes.py because none of this
knows a register, a kind of change or an entry as it stands: it is the vocabulary those rules
(and the register API's answers) are written in.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from catalog.subscriptions import RegisterField
from catalog.validators import check_region_code, check_resident_id, check_uscc
from catalog.validators import message as validator_message
from producers.text_rules import text_problems

# (zh, en) per error code; never a placeholder for the submitted value
MESSAGES: dict[str, tuple[str, str]] = {
    "required": ("必填项未填写", "this field is required"),
    "change.unknown_register": ("没有这个登记簿（应为 company 或 person）", "there is no such register (company or person)"),
    "change.unknown_kind": ("该登记簿没有这种变更类型", "this register has no such kind of change"),
    "change.unknown_field": ("不是该登记簿的登记事项", "not a field of this register"),
    "change.not_allowed": ("此类变更不能修改该事项", "this kind of change cannot set this field"),
    "change.cannot_clear": ("登记事项不能清空", "a registration item cannot be cleared"),
    "change.empty": ("请至少填写一项变更内容", "give at least one field to change"),
    "change.nothing_changed": ("填写的内容与登记簿一致，没有变更", "every value given equals the register; nothing changes"),
    "change.together": ("法定代表人的姓名和公民身份号码须一并变更",
                        "the legal representative's name and resident ID change together"),
    "text.not_text": ("应为文字", "must be text"),
    "text.too_long": ("内容过长", "the text is too long"),
    "text.control": ("含有不可见的控制字符", "contains invisible control characters"),
    "date.format": ("日期格式应为YYYY-MM-DD", "a date is written YYYY-MM-DD"),
    "date.future": ("日期不能晚于今天", "the date cannot be in the future"),
    "date.too_early": ("日期不能早于1900年", "the date cannot be before 1900"),
    "date.before_established": ("日期早于成立日期", "the date is before the date of establishment"),
    "amount.format": ("应为数字，最多6位小数（单位：万元）", "a number with at most 6 decimals (in 10,000 CNY)"),
    "amount.range": ("应大于0且不超过1000亿元", "must be more than 0 and at most 10 billion (10,000 CNY)"),
    "enum.option": ("不是允许的取值", "not one of the allowed values"),
    "register.unknown_key": ("登记簿中没有该主体，请先办理设立登记", "not in the register; register it first"),
    "register.already_registered": ("该主体已在登记簿中", "already in the register"),
    "register.not_active": ("该主体已注销或已转型，不能再变更", "deregistered or converted: it cannot change any more"),
    "person.deceased": ("该人员已登记死亡，不能再变更", "this person is registered as deceased: no further changes"),
    "uscc.not_market_entity": ("不是市场监管部门登记的代码（首位应为9）",
                               "not a code registered by market regulation (the first character is 9)"),
    "uscc.entity_class": ("代码的主体类别（第2位）与类型不符",
                          "the entity class (2nd character of the code) does not match the type"),
    "conversion.not_individual_business": ("原主体不是个体工商户（代码第2位应为2）",
                                           "the old entity is not an individual business (2nd character 2)"),
    "conversion.not_company": ("新主体代码不是企业代码（第2位应为1）",
                               "the new entity's code is not a company code (2nd character 1)"),
    "conversion.same_code": ("新旧主体代码相同", "the old and the new code are the same"),
    "change_id.reused": ("该变更编号已用于另一项变更", "this change id was used for a different change"),
    "conversion.inherited": ("营业年限和信用记录由原个体工商户承继，不能另行填写",
                             "business years and credit record are inherited from the individual business"),
}


@dataclass(frozen=True)
class Problem:
    """One reason a change is refused: where (`path`), a stable `code`, and a sentence a person can act on."""
    path: str
    code: str
    message_zh: str
    message_en: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "code": self.code, "message_zh": self.message_zh, "message_en": self.message_en}


class ChangeRefused(ValueError):
    """The change was not recorded; `problems` says which field and why (never the value)."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{p.path}: {p.message_en}" for p in self.problems))


def problem(path: str, code: str, label: tuple[str, str] | None = None) -> Problem:
    zh, en = MESSAGES.get(code) or validator_message(code)
    if label:
        zh, en = f"{label[0]}：{zh}", f"{label[1]}: {en}"
    return Problem(path, code, zh, en)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_AMOUNT = re.compile(r"\d{1,9}(\.\d{1,6})?", re.ASCII)
_EARLIEST = date(1900, 1, 1)
_MAX_CAPITAL = Decimal("10000000")  # 万元: 1000亿元


def check_value(f: RegisterField, value: Any, today: date) -> tuple[str | None, str | None]:
    """(normalised value, None) or (None, error code). Never raises on bad input."""
    if not isinstance(value, str):
        return None, "text.not_text"
    v = unicodedata.normalize("NFC", value).strip()
    if not v:
        return None, "required"
    if f.type == "text":
        if text_problems(v, multiline=frozenset()):  # the one rule (producers/text_rules.py); all single-line
            return None, "text.control"
        if f.max_length and len(v) > f.max_length:
            return None, "text.too_long"
        return v, None
    if f.type == "uscc":
        code = check_uscc(v)
        return (None, code) if code else (v, None)
    if f.type == "resident_id":
        code = check_resident_id(v, today=today)
        return (None, code) if code else (v, None)
    if f.type == "region_code":
        code = check_region_code(v)
        return (None, code) if code else (v, None)
    if f.type == "enum":
        return (v, None) if v in f.options else (None, "enum.option")
    if f.type == "date":
        if not _DATE.fullmatch(v):
            return None, "date.format"
        try:
            d = date.fromisoformat(v)
        except ValueError:
            return None, "date.format"
        if d > today:
            return None, "date.future"
        if d < _EARLIEST:
            return None, "date.too_early"
        return v, None
    if f.type == "amount":
        if not _AMOUNT.fullmatch(v):
            return None, "amount.format"
        try:
            amount = Decimal(v)
        except InvalidOperation:
            return None, "amount.format"
        if amount <= 0 or amount > _MAX_CAPITAL:
            return None, "amount.range"
        text = format(amount.normalize(), "f")
        return text, None
    return None, "text.not_text"  # pragma: no cover - FIELD_TYPES is closed
