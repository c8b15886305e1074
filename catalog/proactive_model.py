"""The life-event rules' model (免申即享 / 主动服务): plain frozen data, read by catalog/proactive_rules.py.

What each part means is in catalog/proactive_rules.py's docstring; this module only holds it, so a
processor or a test imports the model without the YAML reader.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from .model import Catalog

RULES_DIR = Path(__file__).resolve().parent / "rules"
RECIPIENTS = ("subject", "applicant", "spouse", "legal_representative")
OUTCOMES = ("grant", "offer", "pre_service")
#: e-licence kinds a date trigger or a condition may read (producers/e_license.py, migration 0017)
LICENCE_KINDS = ("id_card", "household_register", "marriage_certificate", "residence_permit",
                 "property_certificate", "discharge_notice", "only_child_certificate")
REGISTER_KINDS = {"person": ("household_moved", "died"),
                  "company": ("registered", "changed", "deregistered", "converted_to_company",
                              "registered_by_conversion")}
DECISION_OUTCOMES = ("approved", "rejected")
DEFAULT_LAPSE_DAYS = 60   # 快申快享 within 60 working days (bundles-facts.md §4)
#: `retirement_age:` schemes a date trigger may name (catalog/retirement_age.py)
RETIREMENT_LAWS = ("statutory_2025",)
CATCH_UP_DAYS = 30        # a date reached while nobody scanned is still acted on this many days later


@dataclass(frozen=True)
class Trigger:
    kind: str                                   # register | decision | date
    register: str | None = None
    change_kind: str | None = None
    fields_any: tuple[str, ...] = ()
    service: str | None = None
    outcome: str | None = None
    licence: str | None = None
    field: str | None = None
    years: int | None = None
    age_by: dict[str, Any] = dc_field(default_factory=dict)   # sex → age, or sex → {job type → age}
    job_field: str | None = None
    default_job: str | None = None
    days_before: int = 0
    retirement_age: str | None = None           # RETIREMENT_LAWS: the statutory age by birth date, sex, job type


@dataclass(frozen=True)
class Condition:
    not_applied: tuple[str, ...] = ()
    licence: str | None = None
    not_deceased: bool = False


@dataclass(frozen=True)
class Benefit:
    code: str
    zh: str
    en: str


@dataclass(frozen=True)
class ListItem:
    """One entry of a pre-service list: a service, why it is on the list, and when it applies."""
    service: str
    zh: str
    en: str
    expires_before_trigger: str | None = None   # a licence kind: on the list only if it expires first


@dataclass(frozen=True)
class Outcome:
    kind: str                                   # grant | offer | pre_service
    department: str | None = None               # grant
    service: str | None = None                  # grant: the catalog service it stands for, if any
    benefit: Benefit | None = None
    window_days: int = DEFAULT_LAPSE_DAYS       # grant: decline window; offer / list: lapse after
    presets: dict[str, str] = dc_field(default_factory=dict)
    subject_fields: dict[str, str] = dc_field(default_factory=dict)   # form field → the subject's id-card field
    trigger_fields: dict[str, str] = dc_field(default_factory=dict)   # form field → the register change's field
    items: tuple[ListItem, ...] = ()


@dataclass(frozen=True)
class Rule:
    code: str
    zh: str
    en: str
    trigger: Trigger
    to: str
    outcome: Outcome
    conditions: tuple[Condition, ...] = ()
    bundle: str | None = None
    source: str | None = None
    estimate: bool = False
    note: str | None = None
    origin: str = ""                            # file:line, for messages


@dataclass(frozen=True)
class Rules:
    rules: dict[str, Rule]

    def __iter__(self):
        return iter(self.rules.values())

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, code: str) -> Rule | None:
        return self.rules.get(code)

    def by_trigger(self, kind: str) -> list[Rule]:
        return [r for r in self.rules.values() if r.trigger.kind == kind]

    def decision_departments(self, catalog: Catalog) -> list[str]:
        """The departments whose decisions some rule listens to (their decisions.<d> topics)."""
        return sorted({catalog.service(r.trigger.service).department for r in self.by_trigger("decision")})

    def grant_departments(self) -> list[str]:
        """The departments that execute some rule's grant: the proactive processor sends them tasks on
        tasks.<d> and reads their answers on decisions.<d>."""
        return sorted({r.outcome.department for r in self.rules.values() if r.outcome.kind == "grant"})

    def listened_departments(self, catalog: Catalog) -> list[str]:
        """Every decisions.<d> the proactive processor reads: the rules' triggers and the grants' answers."""
        return sorted(set(self.decision_departments(catalog)) | set(self.grant_departments()))
