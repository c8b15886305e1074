"""Life-event rules (免申即享 / 主动服务): YAML under catalog/rules/, checked with `file:line` errors.

A rule says what the government does, unasked, when something happens to a person or a company:

    trigger     a register event (`register: {register, change_kind, fields_any}`), a department's
                decision on a case (`decision: {service, outcome}`: the police registered a birth),
                or a date reached from register data (`date: {licence, field, years | age_by |
                retirement_age | days_before}`: the 80th birthday, the statutory retirement age of
                the 2025 reform by birth date, sex and job type (catalog/retirement_age.py), 30 days
                before a soldier's discharge date)
    to          who is told: the subject, the case's applicant, the spouse on the subject's
                marriage certificate, or a company's legal representative
    conditions  over e-licence and register data: `not_applied: [services]`, `licence: kind`
                (the person holds one), `not_deceased: true`
    outcome     `grant` (免申即享: decided, the department told, the citizen may decline within a
                window), `offer` (主动服务 / 快申快享: an inbox item with the merged form prefilled,
                accepted in one step, lapsing after a number of working days) or `pre_service`
                (三预清单: the list prepared before an expected event, offered on the day)

Every rule names its source or says `estimate: true` with a note, like the bundles. Loading is
pure (files in, `Rules` out); catalog/loader.py's line-aware YAML reader is reused, so a mistake
reads `catalog/rules/retirement.yaml:12: …` and every mistake of a load is reported at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .loader import CatalogError, Problem, _display, read_yaml
from .model import Catalog
from .proactive_model import (CATCH_UP_DAYS, DECISION_OUTCOMES, DEFAULT_LAPSE_DAYS, LICENCE_KINDS,  # noqa: F401
                              OUTCOMES, RECIPIENTS, REGISTER_KINDS, RETIREMENT_LAWS, RULES_DIR, Benefit, Condition,
                              ListItem, Outcome, Rule, Rules, Trigger)
from .retirement_age import JOB_TYPES


class _Reader:
    def __init__(self, name: str, catalog: Catalog, problems: list[Problem]):
        self.name, self.catalog, self.problems = name, catalog, problems

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.name, line, message))

    def mapping(self, value: Any, line: int, what: str) -> dict | None:
        if isinstance(value, dict):
            return value
        self.problem(line, f"{what} must be a mapping")
        return None

    def text(self, m: dict, key: str, what: str, required: bool = True) -> str | None:
        v = m.get(key)
        if v is None:
            if required:
                self.problem(m.line, f"{what}: `{key}` is required")
            return None
        if not isinstance(v, str) or not v.strip():
            self.problem(m.at(key), f"{what}: `{key}` must be non-empty text")
            return None
        return v.strip()

    def days(self, value: Any, line: int, what: str) -> int | None:
        m = self.mapping(value, line, what)
        if m is None:
            return None
        n = m.get("working_days")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 250:
            self.problem(m.at("working_days"), f"{what}: `working_days` must be a whole number 1..250")
            return None
        if not m.get("source") and m.get("estimate") is not True:
            self.problem(m.line, f"{what}: give a `source` or mark it `estimate: true`")
        return n

    def service(self, sid: Any, line: int, what: str) -> str | None:
        if not isinstance(sid, str) or sid not in self.catalog.services:
            self.problem(line, f"{what}: {sid!r} is not a service of the catalog (catalog/data/services.yaml)")
            return None
        return sid

    def department(self, code: Any, line: int, what: str) -> str | None:
        if not isinstance(code, str) or code not in self.catalog.departments:
            self.problem(line, f"{what}: {code!r} is not a department of the catalog")
            return None
        return code


def _trigger(r: _Reader, raw: Any, line: int, code: str) -> Trigger | None:
    m = r.mapping(raw, line, f"rule {code}: trigger")
    if m is None:
        return None
    kinds = [k for k in ("register", "decision", "date") if k in m]
    if len(kinds) != 1 or set(m) - {"register", "decision", "date"}:
        r.problem(m.line, f"rule {code}: trigger must be exactly one of register, decision, date")
        return None
    kind = kinds[0]
    t = r.mapping(m[kind], m.at(kind), f"rule {code}: trigger.{kind}")
    if t is None:
        return None
    what = f"rule {code}: trigger.{kind}"
    if kind == "register":
        register = t.get("register")
        if register not in REGISTER_KINDS:
            r.problem(t.at("register"), f"{what}: register must be one of {sorted(REGISTER_KINDS)}")
            return None
        change = t.get("change_kind")
        if change not in REGISTER_KINDS[register]:
            r.problem(t.at("change_kind"), f"{what}: change_kind must be one of {list(REGISTER_KINDS[register])}")
            return None
        fields_any = t.get("fields_any") or []
        if not isinstance(fields_any, list) or not all(isinstance(f, str) for f in fields_any):
            r.problem(t.at("fields_any"), f"{what}: fields_any must be a list of register field ids")
            fields_any = []
        return Trigger("register", register=register, change_kind=change, fields_any=tuple(fields_any))
    if kind == "decision":
        service = r.service(t.get("service"), t.at("service"), what)
        outcome = t.get("outcome", "approved")
        if outcome not in DECISION_OUTCOMES:
            r.problem(t.at("outcome"), f"{what}: outcome must be one of {list(DECISION_OUTCOMES)}")
            return None
        return Trigger("decision", service=service, outcome=outcome) if service else None
    licence = t.get("licence")
    if licence not in LICENCE_KINDS:
        r.problem(t.at("licence"), f"{what}: licence must be one of {list(LICENCE_KINDS)}")
        return None
    fld = r.text(t, "field", what)
    ways = [k for k in ("years", "age_by", "retirement_age", "days_before") if k in t]
    if len(ways) != 1:
        r.problem(t.line, f"{what}: give exactly one of years (an age), age_by (an age by sex and job type), "
                          f"retirement_age (the statutory age by birth date, sex and job type), "
                          f"days_before (ahead of an expected date)")
        return None
    if "years" not in t and not t.get("source") and t.get("estimate") is not True:
        r.problem(t.line, f"{what}: give a `source` or mark it `estimate: true`")
    years, age_by, days_before, law = None, {}, 0, None
    if "retirement_age" in t:
        law = t["retirement_age"]
        if law not in RETIREMENT_LAWS:
            r.problem(t.at("retirement_age"), f"{what}: retirement_age must be one of {list(RETIREMENT_LAWS)}")
            return None
        if t.get("default_job") not in (None, *JOB_TYPES):
            r.problem(t.at("default_job"), f"{what}: default_job must be one of {list(JOB_TYPES)}")
            return None
    elif "years" in t:
        years = t["years"]
        if not isinstance(years, int) or isinstance(years, bool) or not 1 <= years <= 120:
            r.problem(t.at("years"), f"{what}: years must be a whole number 1..120")
            return None
    elif "age_by" in t:
        age_by = _ages(r, t, what)
        if age_by is None:
            return None
    else:
        days_before = t["days_before"]
        if not isinstance(days_before, int) or isinstance(days_before, bool) or not 0 <= days_before <= 366:
            r.problem(t.at("days_before"), f"{what}: days_before must be a whole number 0..366")
            return None
    return Trigger("date", licence=licence, field=fld, years=years, age_by=age_by, job_field=t.get("job_field"),
                   default_job=t.get("default_job"), days_before=days_before, retirement_age=law) if fld else None


def _ages(r: _Reader, t: dict, what: str) -> dict | None:
    raw = r.mapping(t["age_by"], t.at("age_by"), f"{what}.age_by")
    if raw is None:
        return None
    out: dict[str, Any] = {}
    for sex, age in raw.items():
        if sex not in ("male", "female"):
            r.problem(raw.at(sex), f"{what}.age_by: {sex!r} is not a sex (male, female)")
            continue
        by_job = age if isinstance(age, dict) else {None: age}
        for job, years in by_job.items():
            if not isinstance(years, int) or isinstance(years, bool) or not 40 <= years <= 75:
                r.problem(raw.at(sex), f"{what}.age_by.{sex}: an age must be a whole number 40..75")
        out[sex] = dict(age) if isinstance(age, dict) else age
    if set(out) != {"male", "female"}:
        r.problem(raw.line, f"{what}.age_by: give an age for both male and female")
        return None
    jobs = [a for a in out.values() if isinstance(a, dict)]
    if jobs and not (t.get("default_job") and all(t["default_job"] in a for a in jobs)):
        r.problem(t.line, f"{what}: ages by job type need a default_job present under every sex that has jobs")
        return None
    return out


def _conditions(r: _Reader, raw: Any, line: int, code: str) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.problem(line, f"rule {code}: conditions must be a list")
        return ()
    out = []
    for i, c in enumerate(raw):
        m = r.mapping(c, raw.at(i), f"rule {code}: conditions[{i}]")
        if m is None:
            continue
        if len(m) != 1 or next(iter(m)) not in ("not_applied", "licence", "not_deceased"):
            r.problem(m.line, f"rule {code}: conditions[{i}] must be one of not_applied, licence, not_deceased")
            continue
        if "not_applied" in m:
            services = m["not_applied"] if isinstance(m["not_applied"], list) else []
            if not services:
                r.problem(m.line, f"rule {code}: not_applied must list services")
            ok = tuple(s for j, s in enumerate(services) if r.service(s, m.line, f"rule {code}: not_applied"))
            out.append(Condition(not_applied=ok))
        elif "licence" in m:
            if m["licence"] not in LICENCE_KINDS:
                r.problem(m.line, f"rule {code}: licence must be one of {list(LICENCE_KINDS)}")
                continue
            out.append(Condition(licence=m["licence"]))
        else:
            if m["not_deceased"] is not True:
                r.problem(m.line, f"rule {code}: not_deceased can only be true")
                continue
            out.append(Condition(not_deceased=True))
    return tuple(out)


def _outcome(r: _Reader, raw: Any, line: int, code: str, bundle: str | None) -> Outcome | None:
    m = r.mapping(raw, line, f"rule {code}: outcome")
    if m is None:
        return None
    if len(m) != 1 or next(iter(m)) not in OUTCOMES:
        r.problem(m.line, f"rule {code}: outcome must be exactly one of {list(OUTCOMES)}")
        return None
    kind = next(iter(m))
    o = r.mapping(m[kind], m.at(kind), f"rule {code}: outcome.{kind}") or {}
    what = f"rule {code}: outcome.{kind}"
    if kind == "grant":
        dept = r.department(o.get("department"), o.at("department") if o else line, what)
        service = r.service(o["service"], o.at("service"), what) if o.get("service") else None
        if service and dept and r.catalog.service(service).department != dept:
            r.problem(o.at("service"), f"{what}: {service} is not a service of {dept}")
        b = r.mapping(o.get("benefit"), o.at("benefit") if o else line, f"{what}.benefit")
        benefit = None
        if b is not None:
            texts = [r.text(b, k, f"{what}.benefit") for k in ("code", "zh", "en")]
            benefit = Benefit(*texts) if all(texts) else None
        window = r.days(o.get("decline_within"), o.at("decline_within") if o else line, f"{what}.decline_within")
        if not (dept and benefit and window):
            return None
        return Outcome("grant", department=dept, service=service, benefit=benefit, window_days=window)
    if bundle is None:
        r.problem(m.line, f"rule {code}: an {kind} needs the rule's `bundle` (the merged form it offers)")
        return None
    window = r.days(o.get("lapse_after"), o.at("lapse_after") if o else line, f"{what}.lapse_after")
    form_fields = {f.id for f in r.catalog.merged_form(bundle_code=bundle).fields}
    maps = {}
    for key in ("presets", "subject_fields", "trigger_fields"):
        v = o.get(key) or {}
        if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
            r.problem(o.at(key), f"{what}: {key} must map form field ids to text")
            v = {}
        for fid in v:
            if fid not in form_fields:
                r.problem(o.at(key), f"{what}: {key}: {fid!r} is not a field of the {bundle} form")
        maps[key] = dict(v)
    items: list[ListItem] = []
    if kind == "pre_service":
        raw_items = o.get("items")
        if not isinstance(raw_items, list) or not raw_items:
            r.problem(o.at("items") if o else line, f"{what}: items must list the services to prepare")
            raw_items = []
        members = set(r.catalog.bundle(bundle).services)
        for i, it in enumerate(raw_items):
            im = r.mapping(it, raw_items.at(i), f"{what}.items[{i}]")
            if im is None:
                continue
            sid = r.service(im.get("service"), im.at("service"), f"{what}.items[{i}]")
            if sid and sid not in members:
                r.problem(im.at("service"), f"{what}.items[{i}]: {sid} is not a service of the {bundle} bundle")
            when = im.get("when") or {}
            kind_ = when.get("licence_expires_before_trigger") if isinstance(when, dict) else None
            if when and kind_ not in LICENCE_KINDS:
                r.problem(im.at("when"), f"{what}.items[{i}]: when must be {{licence_expires_before_trigger: kind}}")
            zh, en = r.text(im, "zh", f"{what}.items[{i}]"), r.text(im, "en", f"{what}.items[{i}]")
            if sid and zh and en:
                items.append(ListItem(sid, zh, en, kind_))
    if not window:
        return None
    return Outcome(kind, window_days=window, presets=maps["presets"], subject_fields=maps["subject_fields"],
                   trigger_fields=maps["trigger_fields"], items=tuple(items))


def _rule(r: _Reader, raw: Any, line: int) -> Rule | None:
    m = r.mapping(raw, line, "a rule")
    if m is None:
        return None
    code = r.text(m, "code", "a rule")
    if code is None:
        return None
    unknown = set(m) - {"code", "zh", "en", "bundle", "trigger", "to", "conditions", "outcome", "source",
                        "estimate", "note"}
    for k in sorted(unknown, key=str):
        r.problem(m.at(k), f"rule {code}: unknown key {k!r}")
    zh, en = r.text(m, "zh", f"rule {code}"), r.text(m, "en", f"rule {code}")
    bundle = m.get("bundle")
    if bundle is not None and bundle not in r.catalog.bundles:
        r.problem(m.at("bundle"), f"rule {code}: {bundle!r} is not a bundle of the catalog")
        bundle = None
    if m.get("source") is None and m.get("estimate") is not True:
        r.problem(m.line, f"rule {code}: give a `source` (../shared/domain/…) or mark it `estimate: true` with a note")
    if m.get("estimate") is True and not m.get("note"):
        r.problem(m.at("estimate"), f"rule {code}: an estimate needs a `note` saying how it was chosen")
    to = m.get("to", "subject")
    if to not in RECIPIENTS:
        r.problem(m.at("to"), f"rule {code}: to must be one of {list(RECIPIENTS)}")
    trigger = _trigger(r, m.get("trigger"), m.at("trigger"), code)
    conditions = _conditions(r, m.get("conditions"), m.at("conditions"), code)
    outcome = _outcome(r, m.get("outcome"), m.at("outcome"), code, bundle)
    if trigger and to == "applicant" and trigger.kind != "decision":
        r.problem(m.at("to"), f"rule {code}: only a decision trigger has an applicant to tell")
    if trigger and to == "legal_representative" and trigger.register != "company":
        r.problem(m.at("to"), f"rule {code}: a legal representative is told only of a company register event")
    if trigger and outcome and outcome.kind == "pre_service" and not (trigger.kind == "date" and trigger.days_before):
        r.problem(m.at("outcome"), f"rule {code}: a pre-service list is prepared ahead of a date "
                                   f"(a date trigger with days_before)")
    if not (trigger and outcome and zh and en) or to not in RECIPIENTS:
        return None
    return Rule(code, zh, en, trigger, to, outcome, conditions, bundle, m.get("source"),
                m.get("estimate") is True, m.get("note"), f"{r.name}:{m.line}")


def load_rules(catalog: Catalog | None = None, directory: Path | str = RULES_DIR) -> Rules:
    """Every rule of `directory` (catalog/rules/ by default), or CatalogError listing every problem."""
    if catalog is None:
        from .loader import load_catalog

        catalog = load_catalog()
    problems: list[Problem] = []
    rules: dict[str, Rule] = {}
    files = sorted(Path(directory).glob("*.yaml"))
    if not files:
        raise CatalogError([Problem(_display(Path(directory)), 0, "no rule files (*.yaml)")])
    for path in files:
        r = _Reader(_display(path), catalog, problems)
        doc = read_yaml(path, problems)
        if doc is None:
            continue
        if not isinstance(doc, list):
            r.problem(getattr(doc, "line", 1), "a rule file is a list of rules")
            continue
        for i, raw in enumerate(doc):
            rule = _rule(r, raw, doc.at(i))
            if rule is None:
                continue
            if rule.code in rules:
                r.problem(doc.at(i), f"rule {rule.code} is already defined at {rules[rule.code].origin}")
                continue
            rules[rule.code] = rule
    if problems:
        raise CatalogError(problems)
    return Rules(rules)


_DEFAULT: Rules | None = None


def default_rules() -> Rules:
    """The package's rules over the package's catalog, loaded once per process (read-only data)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_rules()
    return _DEFAULT
