"""The register writes (一处变更) as JSON Schema, published in the API's OpenAPI document.

Why: the request models of producers/register_api.py take every value as it comes (`Any`), so that
the register rules (producers/register_changes.py), not pydantic, check it and refuse with their
own problem per field. Left at that, the OpenAPI document described every body as free values and
no client or generator (`onething fuzz`) could build a write that is accepted. So each model
publishes (pydantic `json_schema_extra`, `published`) the schema built here from what the rules
check, from the same sources: the register's fields and their types (catalog/data/subscriptions.yaml:
text with its maximum length, enums with their closed lists, dates, amounts, codes) and what each
kind of change allows and requires (register_changes.KINDS). The path parameter `{uscc}` is
described too (`uscc_parameter`): a code registered by market regulation, of the entity class the
route needs (个转企 starts from an individual business).

The schema documents; the rules stay the authority and run on every write as before. What a schema
cannot say is left to them and named in formats and descriptions: the GB 32100 and GB 11643 check
characters (`gb32100-uscc-*`, `gb11643-resident-id`), a region code that names a real region
(`gb2260-region-code`; the rules check its province), dates not in the future (`past-date`), and
what depends on the entry as it stands — a company must be registered and active to change, a
date may not be before its establishment, `company_type` must fit the entity class of a code that
is in the path, a change must change something. A body names nothing else (`additionalProperties`:
the API passes over a member it does not know, but the route refuses a control character anywhere).
"""
from __future__ import annotations

from typing import Any

from catalog.subscriptions import RegisterField, Subscriptions, load_subscriptions

from .api_form_schema import _PROVINCES, _USCC_CHAR, PAST_DATE, RESIDENT_ID, TEXT_PATTERN
from .register_changes import _ENTITY_CLASS, COMPANY, KINDS, PERSON, _entity_class_ok

__all__ = ["MARKET_USCC", "ENTITY_USCC", "REGION_CODE", "BODIES", "body_schema", "uscc_parameter", "published",
           "AMOUNT_PATTERN", "company_types"]

#: a USCC registered by market regulation (first character 9), any entity class, with its check character
MARKET_USCC = "gb32100-uscc-market"
#: … of one entity class (the 2nd character): 1 company, 2 individual business, 3 farmers' cooperative
ENTITY_USCC = {"1": "gb32100-uscc-company", "2": "gb32100-uscc-individual-business",
               "3": "gb32100-uscc-cooperative"}
REGION_CODE = "gb2260-region-code"
#: registered capital in 万元 as text: more than 0, at most 10,000,000 (1000亿元), at most 6 decimals
#: (register_values.check_value `amount`), written without leading zeros
AMOUNT_PATTERN = "^(?:[1-9][0-9]{0,6}(?:\\.[0-9]{1,6})?|10000000(?:\\.0{1,6})?|0\\.[0-9]{0,5}[1-9])$"
_DATE_PATTERN = "^(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])$"
_CONTROLS = TEXT_PATTERN[3:-3]  # the class body of producers/api_form_schema.TEXT_PATTERN
#: single-line text with at least one character that is not white space (the rules strip it first)
_NONBLANK = f"^[^{_CONTROLS}]*[^\\s{_CONTROLS}][^{_CONTROLS}]*$"
_RESIDENT_ID_PATTERN = (f"^{_PROVINCES}[0-9]{{4}}(?:19|20)[0-9]{{2}}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
                        "[0-9]{3}[0-9X]$")


def _uscc(classes: str) -> dict[str, Any]:
    """A code registered by market regulation of one of the entity classes `classes` (e.g. "123")."""
    fmt = ENTITY_USCC[classes] if len(classes) == 1 else MARKET_USCC
    entity_class = classes if len(classes) == 1 else f"[{classes}]"
    which = {"1": "a company", "2": "an individual business", "3": "a farmers' cooperative"}
    return {"type": "string", "format": fmt, "minLength": 18, "maxLength": 18,
            "pattern": f"^9{entity_class}[0-9]{{6}}{_USCC_CHAR}{{10}}$",
            "description": "统一社会信用代码 registered by market regulation (GB 32100: first character 9, the 2nd the "
                           "entity class, 3rd-8th the region, the MOD 31 check character last), of "
                           + " or ".join(which[c] for c in classes)}


def field_schema(f: RegisterField, *, options: tuple[str, ...] | None = None) -> dict[str, Any]:
    """One register field's value, as register_values.check_value checks it (a string always)."""
    out: dict[str, Any] = {"title": f"{f.zh} / {f.en}", "type": "string"}
    if f.type == "text":
        out |= {"minLength": 1, "pattern": _NONBLANK,
                "description": "one line of text, not blank (white space around it is dropped)"}
        if f.max_length:
            out["maxLength"] = f.max_length
    elif f.type == "enum":
        out["enum"] = list(options if options is not None else f.options)
    elif f.type == "date":
        out |= {"format": PAST_DATE, "pattern": _DATE_PATTERN,
                "description": "YYYY-MM-DD, not after today and not before 1900-01-01"}
    elif f.type == "amount":
        out |= {"pattern": AMOUNT_PATTERN,
                "description": "万元, a decimal number written as text: more than 0, at most 10000000 (1000亿元), "
                               "at most 6 decimals"}
    elif f.type == "resident_id":
        out |= {"format": RESIDENT_ID, "minLength": 18, "maxLength": 18, "pattern": _RESIDENT_ID_PATTERN,
                "description": "公民身份号码: GB 11643, a real birth date not after today and the MOD 11-2 check "
                               "character; never stored in clear, logged or echoed"}
    elif f.type == "region_code":
        out |= {"format": REGION_CODE, "pattern": f"^{_PROVINCES}[0-9]{{4}}$",
                "description": "行政区划代码 (GB/T 2260): 6 digits, the first two a province"}
    elif f.type == "uscc":
        out |= _uscc("123")
    else:  # catalog/subscriptions.FIELD_TYPES is closed; a new type must be described here
        raise ValueError(f"register field type {f.type!r} has no JSON Schema")
    return out


def _types_of(classes: str, options: tuple[str, ...]) -> tuple[str, ...]:
    """The company types that fit codes of these entity classes (register_changes._entity_class_ok)."""
    return tuple(o for o in options if any(_entity_class_ok("9" + c, o) for c in classes))


def company_types(entity_class: str, subs: Subscriptions | None = None) -> tuple[str, ...]:
    """The `company_type`s a code of `entity_class` (its 2nd character) may be registered with."""
    subs = subs or load_subscriptions()
    return _types_of(entity_class, subs.register(COMPANY).fields["company_type"].options)


def _fields(subs: Subscriptions, register: str, kind: str, *, leave_out: frozenset[str] = frozenset(),
            classes: str = "123", require: bool = True) -> dict[str, Any]:
    """The field → value object of a change of `kind`: only what the kind allows, what it requires."""
    reg, k = subs.register(register), KINDS[(register, kind)]
    props = {}
    for fid in sorted(k.allowed - leave_out):
        f = reg.fields[fid]
        props[fid] = field_schema(f, options=_types_of(classes, f.options) if fid == "company_type" else None)
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if require:
        out["required"] = sorted(k.required - leave_out)
    return out


def _registration(subs: Subscriptions, cls: str) -> dict[str, Any]:
    title = {"1": "a company", "2": "an individual business", "3": "a farmers' cooperative"}[cls]
    return _object(f"设立登记 of {title} (entity class {cls})",
                   {"uscc": _uscc(cls), "fields": _fields(subs, COMPANY, "registered", classes=cls)})


def body_schema(name: str, subs: Subscriptions | None = None) -> dict[str, Any]:
    """The request body `name` (a model of producers/register_api.py) as JSON Schema."""
    subs = subs or load_subscriptions()
    person = subs.register(PERSON).fields
    if name == "CompanyRegistrationIn":
        return {"title": "设立登记 / Registration",
                "description": "every registration item; `company_type` fits the entity class of `uscc` "
                               "(its 2nd character). A code already in the register is refused.",
                "oneOf": [_registration(subs, c) for c in sorted(_ENTITY_CLASS)]}
    if name == "CompanyChangeIn":
        changes = _fields(subs, COMPANY, "changed", require=False)
        together = sorted(k for group in KINDS[(COMPANY, "changed")].together for k in group)
        changes |= {"minProperties": 1, "dependentRequired": {a: [b for b in together if b != a] for a in together},
                    "description": "field → new value, at least one that differs from the register; the legal "
                                   "representative's name and resident ID change together; `company_type` fits "
                                   "the entity class of the code in the path (its 2nd character)"}
        return _object("变更登记 / Change of registration", {"changes": changes})
    if name == "DeregistrationIn":
        dereg = field_schema(subs.register(COMPANY).fields["deregistered_on"])
        dereg["description"] += "; not before the company's establishment"
        return _object("注销登记 / Deregistration", {"deregistered_on": dereg})
    if name == "ConversionIn":
        inherited = frozenset({"predecessor_uscc", "converted_on", "established_on", "credit_rating"})
        fields = _fields(subs, COMPANY, "registered_by_conversion", leave_out=inherited, classes="1")
        fields["description"] = ("the new company's registration items; its business years (established_on) "
                                 "and credit record (credit_rating) are inherited from the individual business")
        converted = field_schema(subs.register(COMPANY).fields["converted_on"])
        converted["description"] += "; not before the individual business's establishment"
        return _object("个转企 / Individual business converted into a company",
                       {"company_uscc": _uscc("1"), "fields": fields, "converted_on": converted})
    if name == "HouseholdMoveIn":
        return _object("户口迁移 / Household registration moved",
                       {"resident_id": _resident_id(subs),
                        "household_address": field_schema(person["household_address"]),
                        "household_region_code": field_schema(person["household_region_code"]),
                        "moved_on": field_schema(person["household_moved_on"])},
                       description="a person registered as deceased cannot move")
    if name == "DeathIn":
        return _object("死亡登记 / Death",
                       {"resident_id": _resident_id(subs), "date_of_death": field_schema(person["date_of_death"]),
                        "death_certificate_no": field_schema(person["death_certificate_no"])},
                       optional=("death_certificate_no",),
                       description="recorded once: a person registered as deceased takes no further change")
    raise KeyError(f"no register body {name!r}")


def _object(title: str, properties: dict[str, Any], *, optional: tuple[str, ...] = (),
            description: str | None = None) -> dict[str, Any]:
    """A request body: these members, every one required but the `optional` ones, nothing else."""
    out: dict[str, Any] = {"title": title, "type": "object", "additionalProperties": False,
                           "required": [k for k in properties if k not in optional], "properties": properties}
    if description:
        out["description"] = description
    return out


def _resident_id(subs: Subscriptions) -> dict[str, Any]:
    rid = field_schema(subs.register(COMPANY).fields["legal_representative_resident_id"])
    return rid | {"title": "公民身份号码 / Resident ID"}


BODIES = ("CompanyRegistrationIn", "CompanyChangeIn", "DeregistrationIn", "ConversionIn", "HouseholdMoveIn", "DeathIn")


def published(schema: dict[str, Any], model: type) -> None:
    """pydantic `json_schema_extra` of a register body: its schema is the precise one built here
    (the model itself stays lenient, so the register rules answer for every value)."""
    precise = body_schema(model.__name__)
    schema.clear()
    schema.update(precise)


def uscc_parameter(classes: str = "123") -> dict[str, Any]:
    """`json_schema_extra` of a `{uscc}` path parameter: the entity classes the route takes."""
    return _uscc(classes)
