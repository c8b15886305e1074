"""The catalog's vocabulary as frozen dataclasses: what a bundle (一件事) is made of.

Plain data with no behaviour beyond lookups, so the form, DAG and figures modules can be
pure functions over it and tests can build small catalogs by hand. Every definition keeps
the file and line it came from (`origin`), because an operator who edits the YAML needs to
be told *where* a later check failed, not just what.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping

# Field types the merged form knows how to check (see form.py).
FIELD_TYPES = frozenset({
    "string", "text", "date", "enum", "enum_set", "resident_id", "uscc", "mobile",
    "region_code", "integer", "decimal", "boolean",
})
# Extra checks a field may name on top of its type.
FIELD_VALIDATORS = frozenset({"past_date", "future_date"})


@dataclass(frozen=True)
class Origin:
    """Where a definition was read from; printed as `file:line` in every load error."""
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Label:
    """Every name a person reads comes in Chinese (for the applicant) and English (for us)."""
    zh: str
    en: str


@dataclass(frozen=True)
class AdapterConfig:
    """How the department's reference adapter runs it (department_adapters/reference/).

    A department without one has no simulated backend, so a bundle naming it would be accepted
    and then wait forever: the loader refuses such a bundle."""
    processing_s: float = 0.05


@dataclass(frozen=True)
class Department:
    """部门: a body that decides services and receives a minimised task payload."""
    code: str
    label: Label
    origin: Origin | None = None
    adapter: AdapterConfig | None = None


@dataclass(frozen=True)
class Option:
    value: str
    label: Label


@dataclass(frozen=True)
class Field:
    """One item of information, defined once for the whole catalog.

    `pii` marks personal data: the form never echoes it and logs must mask it.
    """
    id: str
    type: str
    label: Label
    pii: bool = False
    validator: str | None = None
    options: tuple[Option, ...] = ()
    min: float | None = None
    max: float | None = None
    max_length: int | None = None
    pattern: str | None = None
    hint: Label | None = None
    origin: Origin | None = None
    #: how an output is numbered by the department that issues it (reference adapters' formats.py)
    format: str | None = None

    def option(self, value: str) -> Option | None:
        return next((o for o in self.options if o.value == value), None)


@dataclass(frozen=True)
class Material:
    """材料: a document. `e_license` (电子证照, 免证办) means it is fetched, never uploaded."""
    id: str
    label: Label
    e_license: bool = False
    issuer: str | None = None  # department code that issues it, when known
    note: str | None = None
    origin: Origin | None = None


@dataclass(frozen=True)
class Figure:
    """A number taken from the world, with where it came from.

    `estimate` is true when no public source gives the number; `note` then says how it was
    chosen. The loader refuses a figure that has neither a source nor an estimate note, so
    nothing in the catalog is invented silently.
    """
    value: float
    source: str | None = None
    estimate: bool = False
    note: str | None = None
    origin: Origin | None = None


@dataclass(frozen=True)
class Condition:
    """`field == value`, `field in values` or `values-of-field contains value`."""
    field: str
    op: str  # "equals" | "in" | "contains"
    value: Any

    def holds(self, values: Mapping[str, Any]) -> bool:
        if self.field not in values:
            return False
        actual = values[self.field]
        if self.op == "equals":
            return actual == self.value
        if self.op == "in":
            return actual in self.value
        if self.op == "contains":
            return isinstance(actual, (list, tuple, set, frozenset)) and self.value in actual
        raise ValueError(f"unknown condition operator {self.op!r}")

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value!r}"


@dataclass(frozen=True)
class Need:
    """A field or material a service asks for: always, or only when a condition holds."""
    id: str
    required: bool = True
    when: Condition | None = None


@dataclass(frozen=True)
class AutoDecision:
    """免批秒办: the service is decided by rule from shared data, without a clerk.

    Approved when every condition of `approve_when` holds over the task's fields and the
    outputs it consumes (none: approved on the data alone, as a check that always answers);
    otherwise refused, naming the condition that failed. `basis`, an output of the service,
    records the data the decision relied on."""
    source: str
    approve_when: tuple[Condition, ...] = ()
    basis: str | None = None

    @property
    def relies_on(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.field for c in self.approve_when))


@dataclass(frozen=True)
class Service:
    """事项: one department's administrative service.

    `fields` and `materials` are what the applicant supplies; `consumes` names outputs of
    other services (data the applicant cannot know yet, like the newborn's resident ID);
    `produces` names this service's outputs. A dependency is implied, never declared: a
    service waits for whichever service produces an output it needs.
    """
    id: str
    department: str
    label: Label
    fields: tuple[Need, ...] = ()
    materials: tuple[Need, ...] = ()
    consumes: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    statutory: Figure | None = None  # 法定时限, working days, the service on its own
    steps: int = 2          # applicant-facing steps when applied for alone (submit, collect)
    trips: int = 1          # visits to the department when applied for alone
    in_person: bool = False  # needs the person present even online (fingerprint, 首签 at hospital)
    note: str | None = None
    origin: Origin | None = None
    auto_decision: AutoDecision | None = None

    @property
    def needs(self) -> tuple[str, ...]:
        """Every field, material and output id this service reads."""
        return tuple(n.id for n in self.fields) + tuple(n.id for n in self.materials) + self.consumes


@dataclass(frozen=True)
class Member:
    """A service as part of a bundle, with the limit the bundle promises for it (承诺时限)."""
    service: str
    promised: Figure | None = None
    origin: Origin | None = None
    #: the service is part of the application only when this holds over the form's answers
    applies_when: Condition | None = None


@dataclass(frozen=True)
class ClaimedChange:
    """One before/after figure as a locality reported it (either pair may be partial)."""
    before: float | None = None
    after: float | None = None
    change_pct: float | None = None  # e.g. -55 for "材料 −55%"

    @property
    def reduction(self) -> float | None:
        """Share saved, 0..1, whichever way the claim was phrased."""
        if self.change_pct is not None:
            return -self.change_pct / 100
        if self.before and self.after is not None:
            return 1 - self.after / self.before
        return None


METRICS = ("time_days", "materials", "steps", "trips")


@dataclass(frozen=True)
class Claim:
    """A seed's published result for a bundle (e.g. Qinghai 新生儿出生: 32 → 5 working days)."""
    place: str
    source: str
    changes: Mapping[str, ClaimedChange] = field(default_factory=dict)  # metric → change
    note: str | None = None


@dataclass(frozen=True)
class ListEntry:
    """Which national list (重点事项清单) names the bundle, and how sure we are."""
    batch: str               # "2024-1", "2024-2", "2025-1", "2025-2"
    document: str | None
    confidence: str          # "confirmed" | "likely" | "uncertain"
    source: str | None = None


@dataclass(frozen=True)
class Bundle:
    """一件事: a life event grouping services of several departments."""
    code: str
    label: Label
    kind: str                     # "individual" | "enterprise"
    listing: ListEntry
    lead: str | None              # department code of the 牵头部门
    lead_source: str | None = None
    modelled: bool = True
    members: tuple[Member, ...] = ()
    promised_total: Figure | None = None
    dropped_materials: tuple[str, ...] = ()  # materials abolished by the reform (counted "before")
    claims: tuple[Claim, ...] = ()
    note: str | None = None
    origin: Origin | None = None
    #: how long a closed case's personal data is kept before it may be erased (producers/erasure.py)
    retention: Figure | None = None
    #: 情形引导: fields asked to find which conditional services apply (no department receives them
    #: unless a service of its own asks for them too)
    questions: tuple[str, ...] = ()

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(m.service for m in self.members)

    def member(self, service_id: str) -> Member | None:
        return next((m for m in self.members if m.service == service_id), None)

    @property
    def conditional(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.applies_when is not None)

    def applicable(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """The services of an application with these answers: a conditional one only when its
        condition holds (a company without employees registers no employer account)."""
        return tuple(m.service for m in self.members if m.applies_when is None or m.applies_when.holds(values))


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: it is a registry
class Catalog:
    """Every definition, by id. Build one with `catalog.loader.load_catalog`."""
    departments: Mapping[str, Department]
    fields: Mapping[str, Field]
    materials: Mapping[str, Material]
    services: Mapping[str, Service]
    bundles: Mapping[str, Bundle]
    claims: tuple[Claim, ...] = ()  # programme-wide claims (data/claims.yaml), e.g. 鹤山's 14 bundles

    @cached_property
    def producers(self) -> Mapping[str, str]:
        """Output id → the one service that produces it."""
        return {out: s.id for s in self.services.values() for out in s.produces}

    def bundle(self, code: str) -> Bundle:
        try:
            return self.bundles[code]
        except KeyError:
            raise KeyError(f"unknown bundle {code!r}") from None

    def service(self, service_id: str) -> Service:
        try:
            return self.services[service_id]
        except KeyError:
            raise KeyError(f"unknown service {service_id!r}") from None

    def department(self, code: str) -> Department:
        try:
            return self.departments[code]
        except KeyError:
            raise KeyError(f"unknown department {code!r}") from None

    # Conveniences over the pure functions in form.py and figures.py; imported lazily
    # because those modules import this one.
    def select(self, bundle_code: str | None = None, services: Iterable[str] | None = None):
        from .form import select
        return select(self, bundle_code=bundle_code, services=services)

    def merged_form(self, bundle_code: str | None = None, services: Iterable[str] | None = None):
        from .form import merged_form
        return merged_form(self, bundle_code=bundle_code, services=services)

    def department_subset(self, department: str, bundle_code: str | None = None,
                          services: Iterable[str] | None = None):
        from .form import department_subset
        return department_subset(self, department, bundle_code=bundle_code, services=services)

    def department_subsets(self, bundle_code: str | None = None, services: Iterable[str] | None = None):
        from .form import department_subsets
        return department_subsets(self, bundle_code=bundle_code, services=services)

    def dispatch_waves(self, bundle_code: str | None = None,
                       services: Iterable[str] | None = None) -> tuple[tuple[str, ...], ...]:
        return self.select(bundle_code=bundle_code, services=services).waves

    def figures(self, bundle_code: str):
        from .figures import bundle_figures
        return bundle_figures(self, bundle_code)
