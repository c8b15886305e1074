"""Issue 14 in the catalog: conditional services (applies_when), departments without an adapter,
the automatic decision's rule, and output number formats — each mistake refused with file:line."""
from __future__ import annotations

import os
import re
from datetime import date

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from catalog import CatalogError, load_catalog
from catalog.cli import catalog as catalog_cli
from catalog.form import applicable_services, validate_form
from catalog.validators import check_uscc
from department_adapters.reference import formats



def _problems(path) -> str:
    try:
        load_catalog(path)
    except CatalogError as exc:
        return str(exc)
    raise AssertionError("the catalog loaded")


def _where(path) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel

CONDITIONAL_BIRTH = """
    code: birth
    zh: 出生
    en: Birth
    kind: individual
    list: {batch: 2024-1, document: test, confidence: confirmed}
    lead: {department: health, source: test}
    questions: [married]
    services:
      - {service: health.cert, promised: {days: 1, source: test}}
      - {service: police.register, promised: {days: 2, source: test}}
      - service: health.guidance
        applies_when: {field: married, equals: true}
        promised: {days: 2, source: test}
"""


def test_a_bundle_whose_department_has_no_adapter_is_refused_naming_it(write_catalog, find_line):
    root = write_catalog(data__departments_yaml="""
        health: {zh: 卫健, en: Health, adapter: {processing_s: 0.05}}
        police: {zh: 公安, en: Police}
    """)
    bundle = root / "bundles" / "birth.yaml"
    message = _problems(root)
    assert (f"{_where(bundle)}:{find_line(bundle, 'service: police.register')}: bundle 'birth': department 'police' "
            "(service 'police.register') has no adapter configuration") in message
    assert "health" not in message.split("department", 1)[1].split("(")[0]   # only the one without


def test_the_shipped_catalog_runs_every_bundle_end_to_end(shipped):
    configured = {c for c, d in shipped.departments.items() if d.adapter is not None}
    for b in shipped.bundles.values():
        assert {shipped.service(s).department for s in b.services} <= configured, b.code
    listed = CliRunner(env={"COLUMNS": "300"}).invoke(catalog_cli, ["list"])
    assert listed.exit_code == 0, listed.output
    rows = [line for line in listed.output.splitlines() if line.startswith("│ ") and "code" not in line]
    assert len(rows) == len(shipped.bundles) and all(row.rstrip("│ ").endswith("yes") for row in rows)


def test_seed_figures_appear_next_to_the_computed_ones(shipped):
    out = CliRunner(env={"COLUMNS": "300"}).invoke(catalog_cli, ["figures"]).output
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│ ")}
    assert set(shipped.bundles) <= set(rows)                                   # every bundle
    assert "50 → 6 (-88%)" in rows["road_works_permit"] and "中山: time_days 50 → 6 (-88%)" in rows["road_works_permit"]
    disability = rows["disability_services"]
    assert disability.count("85 → 25 (-71%)") == 2 and "trips 4 → 1 (-75%)" in disability
    assert "3 (1 conditional)" in rows["road_works_permit"]


def test_a_conditional_service_is_asked_and_applied_only_when_its_condition_holds(write_catalog):
    cat = load_catalog(write_catalog(bundles__birth_yaml=CONDITIONAL_BIRTH))
    mf = cat.merged_form(bundle_code="birth")
    married = mf.field("married")
    assert married.required   # the question is always asked
    values = {"mother_name": "王芳", "married": False}
    assert applicable_services(cat, mf, values) == ("health.cert", "police.register")
    assert validate_form(cat, "birth", values, {"invoice": "doc-1"}) == []
    married_values = {"mother_name": "王芳", "married": True}
    assert set(applicable_services(cat, mf, married_values)) == set(mf.selection.services)


def _bundle(cert: str, guidance: str, questions: str = "questions: [married]") -> str:
    return f"""
        code: birth
        zh: 出生
        en: Birth
        kind: individual
        list: {{batch: 2024-1, document: test, confidence: confirmed}}
        lead: {{department: health, source: test}}
        {questions}
        services:
          - {{service: health.cert, promised: {{days: 1, source: test}}{cert}}}
          - {{service: police.register, promised: {{days: 2, source: test}}}}
          - {{service: health.guidance, promised: {{days: 2, source: test}}{guidance}}}
    """


def test_conditions_the_form_cannot_decide_are_refused(write_catalog, find_line):
    root = write_catalog(bundles__birth_yaml=_bundle("", ", applies_when: {field: cert_no, equals: x}", ""))
    bundle = root / "bundles" / "birth.yaml"
    message = _problems(root)
    line = find_line(bundle, "service: health.guidance")
    assert f"{_where(bundle)}:{line}: bundle 'birth': 'health.guidance' applies when 'cert_no'" in message
    # a service waiting for a conditional one's output must share its condition
    root = write_catalog(bundles__birth_yaml=_bundle(", applies_when: {field: married, equals: true}", ""))
    message = _problems(root)
    assert (f"{_where(bundle)}:{find_line(bundle, 'service: police.register')}: bundle 'birth': 'police.register' "
            "waits for 'cert_no' from 'health.cert', which applies only when married equals True") in message
    # a yes/no question compared with text
    root = write_catalog(bundles__birth_yaml=_bundle("", ", applies_when: {field: married, equals: 'yes'}"))
    assert "compare yes/no field 'married' with true or false" in _problems(root)


def test_an_automatic_decision_must_rely_on_data_the_service_has(write_catalog):
    services = (write_catalog() / "data" / "services.yaml").read_text(encoding="utf-8").replace(
        "  produces: [cert_no]\n",
        "  produces: [cert_no]\n  auto_decision:\n    source: test\n"
        "    approve_when: [{field: child_id, equals: x}]\n    basis: nothing\n", 1)
    assert "auto_decision" in services
    root = write_catalog(data__services_yaml=services)
    message = _problems(root)
    assert "service 'health.cert': auto_decision relies on 'child_id', which is neither one of its fields" in message
    assert "auto_decision basis 'nothing' must be one of its outputs" in message


def test_an_unknown_format_placeholder_is_refused(write_catalog, find_line):
    root = write_catalog(data__fields_yaml="""
        mother_name: {type: string, zh: 母亲姓名, en: Mother's name, pii: true}
        married: {type: boolean, zh: 已婚, en: Married}
        cert_no: {type: string, zh: 证明编号, en: Certificate number, format: "ZM{regoin}{seq:6}"}
        child_id: {type: resident_id, zh: 儿童身份号码, en: Child's ID, pii: true}
    """)
    fields = root / "data" / "fields.yaml"
    assert f"{_where(fields)}:{find_line(fields, 'cert_no')}: field 'cert_no': unknown format placeholder {{regoin}}" \
        in _problems(root)


REGIONS = st.sampled_from(["440703", "360100", "110105", "650102", "442000"])


@given(region=REGIONS, n=st.integers(min_value=1, max_value=10**6 - 1))
def test_every_output_format_fills_in_and_never_looks_like_a_resident_id(region, n):
    """Up to a million records a service (the digit budget of the formats), a number never has 18 digits in a row (the log masker's resident-ID
    shape), and a new company's code always passes GB 32100."""
    cat = load_catalog()
    for fid, f in cat.fields.items():
        value = formats.output_value(cat, fid, region=region, today=date(2026, 12, 1), n=n, fields={})
        if f.format and "{field:" not in f.format:
            assert "{" not in value and not re.search(r"[0-9]{18}", value), (fid, value)
        if f.type == "uscc" and fid in cat.producers:
            assert check_uscc(value) is None, (fid, value)


def test_a_catalog_error_lists_problems_not_a_traceback(write_catalog):
    try:
        load_catalog(write_catalog(data__departments_yaml="health: {zh: 卫健, en: Health, adapter: {speed: 3}}\n"))
    except CatalogError as exc:
        assert "department 'health': adapter: unknown key 'speed'" in str(exc)
    else:
        raise AssertionError("loaded")


CONDITIONAL_BUNDLES = sorted(code for code, b in load_catalog().bundles.items() if b.conditional)


def _answers(code: str):
    """Any answers to a bundle's questions (and the fields its conditions read)."""
    cat = load_catalog()
    b = cat.bundle(code)
    names = sorted({*b.questions, *(m.applies_when.field for m in b.conditional)})
    strategies = {}
    for name in names:
        f = cat.fields[name]
        if f.type == "boolean":
            strategies[name] = st.booleans()
        elif f.type == "enum":
            strategies[name] = st.sampled_from([o.value for o in f.options])
        elif f.type == "enum_set":
            strategies[name] = st.lists(st.sampled_from([o.value for o in f.options]), unique=True, min_size=1)
    return st.fixed_dictionaries(strategies)


@given(data=st.data())
def test_the_services_that_apply_can_always_complete_on_their_own(data):
    """Whatever the answers: every unconditional service applies, a conditional one exactly when
    its condition holds, and every output an applicable service waits for comes from an
    applicable service — so a case of only those services can complete."""
    cat = load_catalog()
    code = data.draw(st.sampled_from(CONDITIONAL_BUNDLES))
    answers = data.draw(_answers(code))
    b = cat.bundle(code)
    mf = cat.merged_form(bundle_code=code)
    applies = set(applicable_services(cat, mf, answers))
    for m in b.members:
        assert (m.service in applies) == (m.applies_when is None or m.applies_when.holds(answers)), (code, m.service)
    for sid in applies:
        for out in cat.service(sid).consumes:
            assert cat.producers[out] in applies, (code, sid, out)
    for q in b.questions:
        assert mf.field(q).required, (code, q)
