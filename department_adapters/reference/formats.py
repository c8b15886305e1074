"""Numbers in each output's real format, from the catalog (`format:` of the output's field).

A department's documents carry numbers people recognise: a 道路运输经营许可证 reads
`粤交运管许可字440703000001号`, a 统一社会信用代码 passes the GB 32100 check, a 食品经营许可证
is `JY` and 14 digits. The catalog says the format of each output (catalog/data/fields.yaml);
this module fills it in. Placeholders:

    {region}  the task's 6-digit region code     {province} its first 2 digits   {city} first 4
    {abbr}    the province's one-character name (粤, 赣 …)
    {year}    the year of the decision            {date} YYYYMMDD
    {seq:N}   the register's counter, N digits (more once it outgrows them)
    {field:ID} a field of the task (e.g. the applicant's resident ID, for a 残疾人证号)

Outputs without a format: a unified social credit code (type uscc) is issued valid; an
enumerated output (a check's result) answers the value of a task field with the same options,
else the first option (核验通过); a date answers the day of the decision; anything else gets
the generic `<ABBR><region><counter>` of registers.py. No format may produce 18 digits in a
row: the log masker would take them for a resident ID.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date

from catalog.loader import FORMAT_TOKEN
from catalog.model import Catalog, Field
from catalog.validators import USCC_ALPHABET, uscc_check_char

#: GB/T 2260 province codes → the one-character names used on documents
PROVINCE_ABBR = {
    "11": "京", "12": "津", "13": "冀", "14": "晋", "15": "蒙", "21": "辽", "22": "吉", "23": "黑", "31": "沪",
    "32": "苏", "33": "浙", "34": "皖", "35": "闽", "36": "赣", "37": "鲁", "41": "豫", "42": "鄂", "43": "湘",
    "44": "粤", "45": "桂", "46": "琼", "50": "渝", "51": "川", "52": "贵", "53": "云", "54": "藏", "61": "陕",
    "62": "甘", "63": "青", "64": "宁", "65": "新", "71": "台", "81": "港", "82": "澳", "83": "台",
}


def uscc(kind: str, region: str, n: int) -> str:
    """A GB 32100 code: registration authority and kind (`91` a company, `92` a sole
    proprietorship), the region, `MA` and a 7-character serial from the counter (the letters keep
    it from being 18 digits in a row), and the check character."""
    serial, rest = "", n
    for _ in range(6):
        serial = USCC_ALPHABET[rest % 31] + serial
        rest //= 31
    first17 = f"{kind}{region}MA{serial}"[:17].ljust(17, "0")
    return first17 + uscc_check_char(first17)


def render(template: str, *, region: str, today: date, n: int, fields: Mapping[str, str]) -> str:
    """`template` with its placeholders filled; `n` is the counter's value for this record."""
    def one(m: re.Match) -> str:
        name, arg = m.groups()
        if name == "region":
            return region
        if name == "province":
            return region[:2]
        if name == "city":
            return region[:4]
        if name == "abbr":
            return PROVINCE_ABBR.get(region[:2], "")
        if name == "year":
            return f"{today:%Y}"
        if name == "date":
            return f"{today:%Y%m%d}"
        if name == "seq":
            return f"{n:0{int(arg)}d}"
        if name == "field":
            return str(fields.get(arg, ""))
        raise ValueError(f"unknown format placeholder {name!r}")  # the loader admits none
    return FORMAT_TOKEN.sub(one, template)


def output_value(catalog: Catalog, output: str, *, region: str, today: date, n: int,
                 fields: Mapping[str, str]) -> str | None:
    """The output's value in its format, or None when the catalog says nothing about its shape
    (the caller then uses the generic number)."""
    fdef: Field | None = catalog.fields.get(output)
    if fdef is None:
        return None
    if fdef.format:
        return render(fdef.format, region=region, today=today, n=n, fields=fields)
    if fdef.type == "uscc":
        return uscc("92" if output.startswith("sole_trader") else "91", region, n)
    if fdef.type == "enum" and fdef.options:
        options = {o.value for o in fdef.options}
        for fid, value in fields.items():   # the assessed category is the one applied for, …
            other = catalog.fields.get(fid)
            if other is not None and other.type == "enum" and {o.value for o in other.options} == options:
                return value
        return fdef.options[0].value         # … a check answers 核验通过 unless a rule says otherwise
    if fdef.type == "date":
        return today.isoformat()
    return None


def is_number(catalog: Catalog, output: str) -> bool:
    """Whether the output numbers its record (a licence number, a new code) rather than
    answering something (a check's result, a date): only a number may name the record."""
    fdef = catalog.fields.get(output)
    return fdef is not None and (bool(fdef.format) or fdef.type == "uscc")
