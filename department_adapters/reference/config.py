"""How a simulated department behaves: processing time, correction and rejection rules, outages.

`BackendConfig` is plain data, built in code, from a dict (`from_mapping`) or from the
environment (`from_env`). Every variable may also be set for one department only, as
`ONETHING_SIM_<DEPARTMENT>_<NAME>` (e.g. `ONETHING_SIM_POLICE_OUTAGE_FLAG`), which wins over
the general `ONETHING_SIM_<NAME>`:

| variable                      | field            | default | meaning |
|-------------------------------|------------------|---------|---------|
| ONETHING_SIM_PROCESSING_S     | processing_s     | 0.05    | seconds each decision takes |
| ONETHING_SIM_CORRECT_PROMISED | correct_promised | 1       | ask for a correction (补正) when a material the service needs was promised for later (容缺, source `promised`) |
| ONETHING_SIM_CORRECT_MISSING  | correct_missing  | 1       | ask for a correction when a material the service needs is not in the task at all |
| ONETHING_SIM_CORRECT          | corrections      | none    | extra correction rules (below) |
| ONETHING_SIM_REJECT           | rejections       | none    | rejection rules (below) |
| ONETHING_SIM_DOWN_FIRST_S     | down_first_s     | 0       | unavailable for the first N seconds after start |
| ONETHING_SIM_OUTAGES          | outages          | none    | unavailable in windows `start-end` (seconds after start), comma separated: `30-45,120-130` |
| ONETHING_SIM_OUTAGE_FLAG      | outage_flag      | none    | unavailable while this file exists (`touch` it to take the department down, `rm` to bring it back) |
| ONETHING_SIM_FLAKY_RATE       | flaky_rate       | 0       | share of calls (0..1) that fail as unavailable, at random |
| ONETHING_SIM_SEED             | seed             | 0       | seed of that randomness |

Rules are a JSON list, or a compact text of `;`-separated entries. `service` is a pattern
over service ids (`*`, `police.*`, `tax.newborn_premium`; default `*`):

- rejection (不予办理): `{"service": "police.*", "field": "registration_parent", "equals": "father",
  "reason": "…"}` (or `"in": [...]`); compact `[service:]field=value[|value…]`. A task whose
  field has one of the values is rejected. The default reason names the field, never its value.
  Either kind of rule may name a `reason_code` of the department's list (catalog/data/reasons.yaml);
  without one a rejection carries `not_eligible`, a correction `materials_incomplete` (or
  `promised_material_due` when only 容缺 materials are missing).
- correction (补正): `{"service": "*", "material": "medical_invoice", "when": "absent", "reason": "…"}`;
  compact `[service:]material[@when]`. `when` is `missing` (not in the task), `promised`
  (容缺: promised for later) or `absent` (either; the default). A rule applies only to services
  that declare the material.

Rejections are checked before corrections: there is no point asking for a document of an
application that cannot succeed.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

ENV_PREFIX = "ONETHING_SIM_"
CORRECTION_WHEN = ("absent", "missing", "promised")


@dataclass(frozen=True)
class RejectRule:
    field: str
    values: tuple[str, ...]
    service: str = "*"
    reason: str | None = None
    reason_code: str | None = None   # from the department's list (catalog/data/reasons.yaml)

    def applies_to(self, service_id: str) -> bool:
        return fnmatchcase(service_id, self.service)

    def matches(self, task_fields: Mapping[str, str]) -> bool:
        return self.field in task_fields and task_fields[self.field] in self.values

    @classmethod
    def parse(cls, raw: Any) -> "RejectRule":
        if isinstance(raw, RejectRule):
            return raw
        if isinstance(raw, Mapping):
            unknown = set(raw) - {"service", "field", "equals", "in", "reason", "reason_code"}
            if unknown or "field" not in raw or ("equals" in raw) == ("in" in raw):
                raise ValueError(f"rejection rule needs field and one of equals/in, got keys {sorted(raw)}")
            values = (raw["equals"],) if "equals" in raw else tuple(raw["in"])
            return cls(str(raw["field"]), tuple(_text(v) for v in values), str(raw.get("service", "*")),
                       raw.get("reason"), raw.get("reason_code"))
        service, body = _split_service(str(raw))
        if "=" not in body:
            raise ValueError(f"rejection rule {raw!r}: expected [service:]field=value[|value…]")
        name, values = body.split("=", 1)
        return cls(name.strip(), tuple(v.strip() for v in values.split("|")), service)


@dataclass(frozen=True)
class CorrectionRule:
    material: str
    when: str = "absent"
    service: str = "*"
    reason: str | None = None
    reason_code: str | None = None   # from the department's list (catalog/data/reasons.yaml)

    def __post_init__(self) -> None:
        if self.when not in CORRECTION_WHEN:
            raise ValueError(f"correction rule `when` must be one of {CORRECTION_WHEN}, got {self.when!r}")

    def applies_to(self, service_id: str) -> bool:
        return fnmatchcase(service_id, self.service)

    def triggered_by(self, state: str) -> bool:
        """`state` is how the task holds the material: missing, promised, uploaded or fetched."""
        return state == self.when or (self.when == "absent" and state in ("missing", "promised"))

    @classmethod
    def parse(cls, raw: Any) -> "CorrectionRule":
        if isinstance(raw, CorrectionRule):
            return raw
        if isinstance(raw, Mapping):
            unknown = set(raw) - {"service", "material", "when", "reason", "reason_code"}
            if unknown or "material" not in raw:
                raise ValueError(f"correction rule needs material, got keys {sorted(raw)}")
            return cls(str(raw["material"]), str(raw.get("when", "absent")), str(raw.get("service", "*")),
                       raw.get("reason"), raw.get("reason_code"))
        service, body = _split_service(str(raw))
        material, _, when = body.partition("@")
        return cls(material.strip(), when.strip() or "absent", service)


@dataclass(frozen=True)
class BackendConfig:
    processing_s: float = 0.05
    correct_promised: bool = True
    correct_missing: bool = True
    corrections: tuple[CorrectionRule, ...] = ()
    rejections: tuple[RejectRule, ...] = ()
    down_first_s: float = 0.0
    outages: tuple[tuple[float, float], ...] = ()
    outage_flag: Path | None = None
    flaky_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.processing_s < 0 or self.down_first_s < 0:
            raise ValueError("processing_s and down_first_s must not be negative")
        if not 0.0 <= self.flaky_rate <= 1.0:
            raise ValueError(f"flaky_rate must be within 0..1, got {self.flaky_rate}")
        for start, end in self.outages:
            if not 0 <= start < end:
                raise ValueError(f"outage window must be 0 <= start < end, got {start}-{end}")

    # -- availability ----------------------------------------------------------------------
    def down_reason(self, elapsed_s: float) -> str | None:
        """Why the backend is down `elapsed_s` seconds after it started, or None if it is up.
        (The random `flaky_rate` is the backend's business: it owns the random generator.)"""
        if elapsed_s < self.down_first_s:
            return "starting"
        for start, end in self.outages:
            if start <= elapsed_s < end:
                return "outage window"
        if self.outage_flag is not None and Path(self.outage_flag).exists():
            return "outage flag"
        return None

    def summary(self) -> dict[str, Any]:
        """For the start-up log: counts of rules, never their values (a value could be personal)."""
        return {"processing_s": self.processing_s, "correct_promised": self.correct_promised,
                "correct_missing": self.correct_missing, "correction_rules": len(self.corrections),
                "rejection_rules": len(self.rejections), "down_first_s": self.down_first_s,
                "outage_windows": len(self.outages), "outage_flag": str(self.outage_flag) if self.outage_flag else None,
                "flaky_rate": self.flaky_rate}

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "BackendConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown backend settings {sorted(unknown)}; known: {sorted(known)}")
        kw: dict[str, Any] = {}
        for name, value in data.items():
            if value is None or value == "":
                continue
            if name in ("processing_s", "down_first_s", "flaky_rate"):
                kw[name] = float(value)
            elif name == "seed":
                kw[name] = int(value)
            elif name in ("correct_promised", "correct_missing"):
                kw[name] = _bool(value)
            elif name == "corrections":
                kw[name] = tuple(CorrectionRule.parse(r) for r in _rules(value))
            elif name == "rejections":
                kw[name] = tuple(RejectRule.parse(r) for r in _rules(value))
            elif name == "outages":
                kw[name] = _windows(value)
            elif name == "outage_flag":
                kw[name] = Path(value)
        return cls(**kw)

    @classmethod
    def from_env(cls, department: str | None = None, environ: Mapping[str, str] | None = None,
                 base: "BackendConfig | None" = None) -> "BackendConfig":
        """`base` (default: the defaults) overridden by ONETHING_SIM_* and ONETHING_SIM_<DEPT>_*."""
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        for name in ENV_NAMES:
            keys = [f"{ENV_PREFIX}{name.upper()}"]
            if department:
                keys.append(f"{ENV_PREFIX}{department.upper()}_{name.upper()}")
            for key in keys:  # the department's own setting wins
                if env.get(key, "") != "":
                    data[ENV_FIELDS[name]] = env[key]
        loaded = cls.from_mapping(data)
        if base is None:
            return loaded
        return replace(base, **{f: getattr(loaded, f) for f in data})


#: environment name suffix → field
ENV_FIELDS = {
    "processing_s": "processing_s", "correct_promised": "correct_promised", "correct_missing": "correct_missing",
    "correct": "corrections", "reject": "rejections", "down_first_s": "down_first_s", "outages": "outages",
    "outage_flag": "outage_flag", "flaky_rate": "flaky_rate", "seed": "seed",
}
ENV_NAMES = tuple(ENV_FIELDS)


def _text(value: Any) -> str:
    """Task fields are text: booleans travel as true/false."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


def _split_service(entry: str) -> tuple[str, str]:
    """`police.birth_registration:field=value` → (service, body); no `:` before `=`/`@` → `*`."""
    head, sep, rest = entry.partition(":")
    if sep and "=" not in head and "@" not in head:
        return head.strip() or "*", rest.strip()
    return "*", entry.strip()


def _rules(value: Any) -> list[Any]:
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            return list(json.loads(s))
        return [e for e in (p.strip() for p in s.split(";")) if e]
    if isinstance(value, (RejectRule, CorrectionRule, Mapping)):
        return [value]
    return list(value)


def _windows(value: Any) -> tuple[tuple[float, float], ...]:
    if isinstance(value, str):
        out = []
        for part in (p.strip() for p in value.split(",")):
            if part:
                start, sep, end = part.partition("-")
                if not sep:
                    raise ValueError(f"outage window {part!r}: expected start-end in seconds")
                out.append((float(start), float(end)))
        return tuple(out)
    return tuple((float(a), float(b)) for a, b in value)
