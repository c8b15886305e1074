"""Realistic filled-in forms for any bundle or free combination, from the form the API serves
(`GET /api/v1/bundles/{code}/form`, `GET /api/v1/forms?services=…`): what `onething demo --bundle`
submits, and what tests use to apply for any combination.

Why from the served form rather than the catalog: it is what a real client has — field types,
options, bounds, patterns and the values the API prefilled from the applicant's own e-licences
(kept as they are: the applicant's own resident ID must be the logged-in person's). Everything
else is synthetic and plausible: names, addresses and companies of no real person, resident IDs
and USCCs with valid check characters (GB 11643, GB 32100).

Pure functions of the form JSON, the applicant and the day.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from catalog.validators import resident_id_check_char, uscc_check_char

__all__ = ["Applicant", "fill_form", "needed", "materials_plan", "synthetic_uscc",
           "synthetic_resident_id", "person_for"]


@dataclass(frozen=True)
class Applicant:
    """Who applies: their own data comes from their login's e-licences; these fill the rest."""
    name: str
    resident_id: str
    address: str
    region_code: str
    birth_date: str


def synthetic_resident_id(region: str, born: date, seq: int) -> str:
    first17 = f"{region}{born:%Y%m%d}{seq % 1000:03d}"
    return first17 + resident_id_check_char(first17)


def synthetic_uscc(n: int = 1, region: str = "440203") -> str:
    """91 (a company) + region + an organisation code + the GB 32100 check character."""
    first17 = f"91{region}{'MA5' + f'{n:06d}'[-6:]}"
    return first17 + uscc_check_char(first17)


#: which demo person applies for a bundle (producers/e_license.py DEMO_PEOPLE): who it is about
PEOPLE_BY_BUNDLE = {"newborn": "wang_fang", "retirement": "zhang_wei", "after_death": "liu_li",
                    "school_enrolment": "li_qiang", "veteran_discharge": "li_qiang"}


def person_for(bundle_code: str | None) -> str:
    return PEOPLE_BY_BUNDLE.get(bundle_code or "", "zhao_min")


# text fields by what their id says they hold (first match wins): plausible, of nobody real
_TEXT = (
    (r"(^|_)hospital", "韶关市妇幼保健院"),
    (r"customs_code", "4402960A1B"),
    (r"birth_certificate_no", "Q440203261"),
    (r"bankruptcy_case_no", "（2026）粤02破12号"),
    (r"(^|_)vin$", "LSVAM4187C2184231"),
    (r"invoice_no", "044002600111"),
    (r"bank_account", "6222020200112233445"),
    (r"bank_name|(^|_)bank$", "中国工商银行"),
    (r"(company|enterprise|business|shop|store|unit)_name|(^|_)name_of_", "韶关市一件事示范餐饮有限公司"),
    (r"child_name", "李小满"),
    (r"deceased_name", "刘建国"),
    (r"(spouse|father|mother|guardian|contact|legal_rep\w*|representative|agent|heir)_name", "李强"),
    (r"(^|_)name$", None),   # the applicant's own name
    (r"address|location|premises|site", None),  # the applicant's address
    (r"plate|vehicle_no", "粤F12345"),
    (r"licen[cs]e_no|certificate_no|permit_no|_no$|number", "2026-000123"),
    (r"school", "韶关市武江区实验小学"),
    (r"reason|purpose|description|note|remark|scope", "按规定申请办理"),
    (r"email", "demo@example.cn"),
)


def _text(fid: str, person: Applicant) -> str:
    for pattern, value in _TEXT:
        if re.search(pattern, fid):
            if value is not None:
                return value
            return person.name if "name" in pattern else person.address
    return "示例"


def _from_pattern(pattern: str, fid: str) -> str | None:
    """A value that matches the catalog's pattern (a full match), found by Hypothesis, deterministic."""
    from hypothesis import HealthCheck, find, settings
    from hypothesis import strategies as st

    try:
        return find(st.from_regex(pattern, fullmatch=True), lambda _v: True,
                    settings=settings(database=None, max_examples=50, suppress_health_check=list(HealthCheck)))
    except Exception:  # an unsatisfiable or exotic pattern: leave it to the API to name
        return None


def _value(f: dict[str, Any], person: Applicant, today: date, n: int) -> Any:
    fid, t = f["id"], f["type"]
    if t == "resident_id":
        if fid in ("applicant_resident_id", "guardian_resident_id"):
            return person.resident_id
        return synthetic_resident_id(person.region_code, date(1990, 1, 1) + timedelta(days=97 * (n + 1)), 100 + n)
    if t == "uscc":
        return synthetic_uscc(n + 1, person.region_code)
    if t == "mobile":
        return "13800138000"
    if t == "region_code":
        return person.region_code
    if t == "date":
        if "birth" in fid and "child" in fid or fid == "birth_date":
            return (today - timedelta(days=3)).isoformat()
        if f.get("validator") == "future_date" or re.search(r"(^|_)(planned|expected|start|open)", fid):
            return (today + timedelta(days=30)).isoformat()
        return (today - timedelta(days=30)).isoformat()
    if t == "enum":
        options = [o["value"] for o in f.get("options") or ()]
        preferred = {"registration_parent": "mother", "child_sex": "female", "retirement_type": "normal"}
        return preferred.get(fid) if preferred.get(fid) in options else (options[0] if options else None)
    if t == "enum_set":
        options = [o["value"] for o in f.get("options") or ()]
        return options[:1]
    if t in ("integer", "decimal"):
        low, high = f.get("min"), f.get("max")
        value = 5 if low is None else max(low, 5 if high is None or high >= 5 else low)
        if high is not None:
            value = min(value, high)
        return int(value) if t == "integer" else float(value)
    if t == "boolean":
        return False
    # string / text
    value = _text(fid, person)
    if f.get("pattern") and not re.fullmatch(f["pattern"], value):
        value = _from_pattern(f["pattern"], fid) or value
    if f.get("max_length"):
        value = value[: f["max_length"]]
    return value


def fill_form(form: dict[str, Any], person: Applicant, today: date | None = None,
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every field of the served form: the API's prefill kept, the rest plausible, `overrides` last.
    Conditional fields are filled too when a filled answer makes them required."""
    today = today or date.today()
    overrides = overrides or {}
    values: dict[str, Any] = {}
    for n, f in enumerate(form["fields"]):
        if f["id"] in overrides:
            values[f["id"]] = overrides[f["id"]]
        elif f.get("value") is not None:
            values[f["id"]] = f["value"]
        elif f["required"] or f["type"] == "boolean" or f["id"] in ("region_code",):
            values[f["id"]] = _value(f, person, today, n)
    for n, f in enumerate(form["fields"]):  # what the answers above made required
        if f["id"] not in values and needed(f, values):
            values[f["id"]] = _value(f, person, today, n)
    return {k: v for k, v in values.items() if v is not None}


def _holds(c: dict[str, Any], values: dict[str, Any]) -> bool:
    if c["field"] not in values:
        return False
    actual = values[c["field"]]
    if c["op"] == "equals":
        return actual == c["value"]
    if c["op"] == "in":
        return actual in c["value"]
    return isinstance(actual, list) and c["value"] in actual


def needed(item: dict[str, Any], values: dict[str, Any]) -> bool:
    """A served field or material is needed when required, or when one of its conditions holds."""
    return bool(item["required"]) or any(_holds(c, values) for c in item.get("required_when") or ())


def materials_plan(form: dict[str, Any], values: dict[str, Any], promise: tuple[str, ...] = ()
                   ) -> dict[str, str]:
    """material id → how it is supplied: `fetched` (an e-licence the library holds), `upload`, or
    `promised` (容缺, only where the form allows it and `promise` asks for it). Not needed: left out."""
    plan: dict[str, str] = {}
    for m in form["materials"]:
        if not needed(m, values):
            continue
        if m.get("fetched"):
            plan[m["id"]] = "fetched"
        elif m["id"] in promise and m.get("promisable"):
            plan[m["id"]] = "promised"
        else:
            plan[m["id"]] = "upload"   # an e-licence the library lacks is uploaded as a scan
    return plan
