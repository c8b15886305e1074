"""Checks for the identifiers people type wrong most often: 公民身份号码, 统一社会信用代码, 手机号码.

Standalone on purpose: the merged-form validator, the register-change producers and the
intake API all import these, so they depend on nothing else in the catalog.

Each `check_*` returns an error *code* (or None when the value is fine) rather than
raising, so a caller can collect every error of a form at once. `message(code)` turns a
code into a (Chinese, English) sentence a person can act on. Neither codes nor messages
ever contain the submitted value: a resident ID in an error message would end up in a
log line, which DESIGN.md forbids.
"""
from __future__ import annotations

import re
from datetime import date

__all__ = [
    "MESSAGES", "PROVINCE_CODES",
    "check_resident_id", "check_uscc", "check_mobile", "check_region_code",
    "resident_id_check_char", "uscc_check_char",
    "mask_resident_id", "mask_mobile", "mask_name", "message",
]

# GB/T 2260 province-level codes (省级行政区划代码). 71 台湾, 81 香港, 82 澳门 appear in
# 港澳台居民居住证 numbers, which follow the resident ID format; 83 is used for 台湾居民居住证.
PROVINCE_CODES: frozenset[str] = frozenset({
    "11", "12", "13", "14", "15",
    "21", "22", "23",
    "31", "32", "33", "34", "35", "36", "37",
    "41", "42", "43", "44", "45", "46",
    "50", "51", "52", "53", "54",
    "61", "62", "63", "64", "65",
    "71", "81", "82", "83",
})

# (zh, en) for every code a check can return. Keep them free of placeholders for values.
MESSAGES: dict[str, tuple[str, str]] = {
    "required": ("必填项未填写", "this field is required"),
    "not_text": ("应为文字", "must be text"),
    "resident_id.length": ("公民身份号码应为18位", "a resident ID has exactly 18 characters"),
    "resident_id.format": ("前17位应为数字，最后一位为数字或大写X",
                           "the first 17 characters must be digits and the last a digit or an upper-case X"),
    "resident_id.lowercase_x": ("校验位X应为大写", "the check character X must be upper case"),
    "resident_id.province": ("前两位不是有效的省级行政区划代码",
                             "the first two digits are not a valid province code"),
    "resident_id.birth_date": ("第7至14位不是有效的出生日期", "digits 7-14 are not a valid date of birth"),
    "resident_id.birth_date_future": ("出生日期晚于今天", "the date of birth is in the future"),
    "resident_id.birth_date_too_early": ("出生日期早于1900年", "the date of birth is before 1900"),
    "resident_id.checksum": ("校验位不正确，请核对号码是否抄错", "the checksum digit is wrong; check for a mistyped digit"),
    "uscc.length": ("统一社会信用代码应为18位", "a unified social credit code has exactly 18 characters"),
    "uscc.alphabet": ("含有不允许的字符（只允许数字和除I、O、S、V、Z外的大写字母）",
                      "contains a character that is not allowed (digits and upper-case letters except I, O, S, V, Z)"),
    "uscc.region": ("第3至8位应为6位数字的行政区划代码", "characters 3-8 must be a 6-digit region code"),
    "uscc.checksum": ("校验码不正确，请核对代码是否抄错", "the check character is wrong; check for a mistyped character"),
    "mobile.format": ("手机号码应为以13至19开头的11位数字",
                      "a mobile number has 11 digits and starts with 13 to 19"),
    "region_code.format": ("行政区划代码应为6位数字", "a region code has exactly 6 digits"),
    "region_code.province": ("前两位不是有效的省级行政区划代码",
                             "the first two digits are not a valid province code"),
}


def message(code: str) -> tuple[str, str]:
    """The (zh, en) sentence for an error code; unknown codes still say something useful."""
    return MESSAGES.get(code, ("填写内容不符合要求", "the value is not valid"))


# --- 公民身份号码 (GB 11643-1999, check character per ISO 7064 MOD 11-2) ---------------------

_RID_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))  # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2
_RID_CHECK = "10X98765432"
_RID_SHAPE = re.compile(r"[0-9]{17}[0-9X]", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def resident_id_check_char(first17: str) -> str:
    """The 18th character that makes `first17` (17 ASCII digits) a valid resident ID."""
    total = sum(int(c) * w for c, w in zip(first17, _RID_WEIGHTS))
    return _RID_CHECK[total % 11]


def check_resident_id(value: object, *, today: date | None = None) -> str | None:
    """None when `value` is a plausible 18-character resident ID, else an error code.

    Plausible: region prefix in a valid province, a real birth date between 1900-01-01 and
    `today`, and the MOD 11-2 check character. The 15-digit IDs of before 1999 are not
    accepted: every living holder has had an 18-character one since 2013.
    """
    if not isinstance(value, str):
        return "not_text"
    s = value
    if len(s) != 18:
        return "resident_id.length"
    if s[17] == "x" and _DIGITS.fullmatch(s[:17]):
        return "resident_id.lowercase_x"
    if not _RID_SHAPE.fullmatch(s):
        return "resident_id.format"
    if s[:2] not in PROVINCE_CODES:
        return "resident_id.province"
    try:
        born = date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return "resident_id.birth_date"
    if born.year < 1900:
        return "resident_id.birth_date_too_early"
    if born > (today or date.today()):
        return "resident_id.birth_date_future"
    if resident_id_check_char(s[:17]) != s[17]:
        return "resident_id.checksum"
    return None


# --- 统一社会信用代码 (GB 32100-2015) --------------------------------------------------------

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # 31 characters: no I, O, S, V, Z
_USCC_VALUE = {c: i for i, c in enumerate(USCC_ALPHABET)}
_USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))  # 1 3 9 27 19 26 16 17 20 29 25 13 8 24 10 30 28


def uscc_check_char(first17: str) -> str:
    """The 18th character that makes `first17` (17 characters of the alphabet) a valid USCC."""
    total = sum(_USCC_VALUE[c] * w for c, w in zip(first17, _USCC_WEIGHTS))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def check_uscc(value: object) -> str | None:
    """None when `value` is a well-formed unified social credit code, else an error code.

    The region part (characters 3-8) is only checked for being digits: national-level
    registrations use 100000, which is no province.
    """
    if not isinstance(value, str):
        return "not_text"
    s = value
    if len(s) != 18:
        return "uscc.length"
    if any(c not in _USCC_VALUE for c in s):
        return "uscc.alphabet"
    if not _DIGITS.fullmatch(s[2:8]):
        return "uscc.region"
    if uscc_check_char(s[:17]) != s[17]:
        return "uscc.checksum"
    return None


# --- 手机号码 and 行政区划代码 --------------------------------------------------------------

_MOBILE = re.compile(r"1[3-9][0-9]{9}", re.ASCII)
_REGION = re.compile(r"[0-9]{6}", re.ASCII)


def check_mobile(value: object) -> str | None:
    """None for an 11-digit mainland mobile number (1[3-9]…), no spaces or +86 prefix."""
    if not isinstance(value, str):
        return "not_text"
    return None if _MOBILE.fullmatch(value) else "mobile.format"


def check_region_code(value: object) -> str | None:
    """None for a 6-digit 行政区划代码 whose first two digits name a province."""
    if not isinstance(value, str):
        return "not_text"
    if not _REGION.fullmatch(value):
        return "region_code.format"
    if value[:2] not in PROVINCE_CODES:
        return "region_code.province"
    return None


# --- masking for logs and screens -----------------------------------------------------------
# The same shapes as infra/log.py's last-line masking, so a masked ID looks alike everywhere.

def mask_resident_id(value: str) -> str:
    """'110105194912310021' → '110**************1': province/city kept for routing, rest hidden."""
    s = str(value)
    if len(s) < 8:
        return "*" * len(s)
    return s[:3] + "*" * (len(s) - 4) + s[-1:]


def mask_mobile(value: str) -> str:
    """'13812345678' → '138****5678'."""
    s = str(value)
    if len(s) != 11:
        return "*" * len(s)
    return s[:3] + "****" + s[-4:]


def mask_name(value: str) -> str:
    """'张三' → '张*', '欧阳娜娜' → '欧***': the family name alone identifies nobody."""
    s = str(value)
    return s[:1] + "*" * max(1, len(s) - 1) if s else s
