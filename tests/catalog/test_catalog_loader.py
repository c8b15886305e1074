"""Loading: the shipped catalog is complete and valid; broken files fail with file:line."""
from __future__ import annotations

import os

import pytest

from catalog import CatalogError, load_catalog

#: issue 14: every bundle of the 2024 and 2025 lists, and the seeds' local ones, is modelled
MODELLED = {"newborn", "enterprise_change", "retirement", "school_enrolment", "enterprise_relocation",
            "enterprise_deregistration", "restaurant_opening", "disability_services", "utility_connection",
            "after_death", "veteran_discharge",
            "transport_company_opening", "credit_repair", "bankruptcy_check", "listing_compliance_check",
            "social_security_card_services", "enterprise_hiring", "public_rental_housing",
            "medical_expense_reimbursement", "sole_trader_opening", "second_hand_housing_transfer",
            "sole_trader_to_company", "car_trade_in_subsidy", "housing_fund_loan", "credit_report_query",
            "tax_credit_rating_query", "road_works_permit", "serious_illness_relief", "talent_subsidy"}
LOCAL_SEEDS = {"road_works_permit", "serious_illness_relief", "talent_subsidy"}


def test_shipped_catalog_covers_the_national_lists(shipped):
    by_batch = {}
    for b in shipped.bundles.values():
        by_batch.setdefault(b.listing.batch, set()).add(b.code)
    assert len(by_batch["2024-1"]) == 13
    assert {"enterprise_relocation", "veteran_discharge"} <= by_batch["2024-2"]
    assert len(by_batch["2024-2"]) <= 8
    assert {"sole_trader_to_company", "after_death"} <= by_batch["2025-1"]
    assert {"credit_report_query", "tax_credit_rating_query"} <= by_batch["2025-2"]
    assert {c for c, b in shipped.bundles.items() if b.modelled} == MODELLED == set(shipped.bundles)
    assert {c for c, b in shipped.bundles.items() if b.listing.batch == "local"} == LOCAL_SEEDS
    # 公民身后 belongs to 2025, not to the first batch (bundles-facts.md §2)
    assert shipped.bundle("after_death").listing.batch == "2025-1"


def test_every_modelled_bundle_is_modelled_in_full(shipped):
    first_eleven = {"newborn", "enterprise_change", "retirement", "school_enrolment", "enterprise_relocation",
                    "enterprise_deregistration", "restaurant_opening", "disability_services", "utility_connection",
                    "after_death", "veteran_discharge"}
    for code in MODELLED:
        b = shipped.bundle(code)
        least = 4 if code in first_eleven else 2   # the later ones are smaller (a query and its check)
        assert len(b.members) >= least, code
        for m in b.members:
            s = shipped.service(m.service)
            assert s.department in shipped.departments
            assert s.statutory is not None and m.promised is not None, (code, m.service)
            for figure in (s.statutory, m.promised):
                assert figure.source or (figure.estimate and figure.note), (code, m.service)
        departments = {shipped.service(s).department for s in b.services}
        assert len(departments) >= least, code


def test_newborn_has_the_real_dependency_chain(shipped):
    sel = shipped.select("newborn")
    wave = {sid: i for i, w in enumerate(sel.waves) for sid in w}
    chain = ["health.birth_certificate", "police.birth_registration", "medical_insurance.enrolment",
             "tax.newborn_premium"]
    assert [wave[s] for s in chain] == sorted(wave[s] for s in chain) and len({wave[s] for s in chain}) == 4
    assert wave["hrss.social_security_card"] > wave["police.birth_registration"]
    assert wave["disease_control.vaccination_record"] == 0
    departments = {shipped.service(s).department for s in sel.services}
    assert {"health", "police", "medical_insurance", "hrss", "tax", "disease_control"} <= departments


def test_the_birth_certificate_is_an_e_license_output(shipped):
    cert = shipped.materials["birth_medical_certificate"]
    assert cert.e_license and cert.issuer == "health"
    assert shipped.producers["birth_medical_certificate"] == "health.birth_certificate"
    for mid in ("mother_id_card", "household_register", "marriage_certificate", "business_license"):
        assert shipped.materials[mid].e_license, mid


def test_the_small_fixture_catalog_loads(write_catalog):
    cat = load_catalog(write_catalog())
    assert cat.bundle("birth").services == ("health.cert", "police.register", "health.guidance")


def _problems(path) -> str:
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    return str(info.value)


def _where(path) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def test_unknown_field_is_reported_with_file_and_line(write_catalog, find_line):
    root = write_catalog(data__services_yaml="""
        health.cert:
          department: health
          zh: 证明
          en: Certificate
          fields: [mother_name,
                   foo]
          produces: [cert_no]
          statutory: {days: 5, source: "test"}
        police.register:
          department: police
          zh: 登记
          en: Registration
          consumes: [cert_no]
          statutory: {days: 1, source: "test"}
        health.guidance: {department: health, zh: 指导, en: Guidance, statutory: {days: 1, source: t}}
    """)
    services = root / "data" / "services.yaml"
    message = _problems(root)
    expected = f"{_where(services)}:{find_line(services, 'foo]')}: service 'health.cert' needs unknown field 'foo'"
    assert expected in message


def test_a_dependency_cycle_is_rejected_naming_the_cycle(write_catalog, find_line):
    root = write_catalog(data__services_yaml="""
        health.cert:
          department: health
          zh: 证明
          en: Certificate
          consumes: [child_id]
          produces: [cert_no]
          statutory: {days: 5, source: "test"}
        police.register:
          department: police
          zh: 登记
          en: Registration
          consumes: [cert_no]
          produces: [child_id]
          statutory: {days: 1, source: "test"}
        health.guidance: {department: health, zh: 指导, en: Guidance, statutory: {days: 1, source: t}}
    """)
    services = root / "data" / "services.yaml"
    message = _problems(root)
    assert "dependency cycle: health.cert → police.register → health.cert" in message
    assert f"{_where(services)}:{find_line(services, 'consumes: [child_id]')}:" in message


def test_a_cycle_through_a_field_inside_a_bundle_is_rejected(write_catalog, find_line):
    # no `consumes` cycle, but inside the bundle each asks for what the other produces
    root = write_catalog(data__services_yaml="""
        health.cert:
          department: health
          zh: 证明
          en: Certificate
          fields: [child_id]
          produces: [cert_no]
          statutory: {days: 5, source: "test"}
        police.register:
          department: police
          zh: 登记
          en: Registration
          fields: [cert_no]
          produces: [child_id]
          statutory: {days: 1, source: "test"}
        health.guidance: {department: health, zh: 指导, en: Guidance, statutory: {days: 1, source: t}}
    """)
    bundle = root / "bundles" / "birth.yaml"
    message = _problems(root)
    assert f"{_where(bundle)}:{find_line(bundle, 'service: health.cert')}: bundle 'birth': dependency cycle" in message


def test_unknown_departments_are_reported(write_catalog, find_line):
    root = write_catalog(bundles__birth_yaml="""
        code: birth
        zh: 出生
        en: Birth
        kind: individual
        list: {batch: 2024-1, document: test, confidence: confirmed}
        lead: {department: ministry_of_magic, source: test}
        modelled: false
    """, data__services_yaml="""
        health.cert:
          department: hospital
          zh: 证明
          en: Certificate
          statutory: {days: 5, source: "test"}
    """)
    bundle, services = root / "bundles" / "birth.yaml", root / "data" / "services.yaml"
    message = _problems(root)
    assert (f"{_where(bundle)}:{find_line(bundle, 'ministry_of_magic')}: bundle 'birth': unknown lead department "
            "'ministry_of_magic'") in message
    assert (f"{_where(services)}:{find_line(services, 'department: hospital')}: service 'health.cert': unknown "
            "department 'hospital'") in message


def test_a_figure_without_source_or_estimate_note_is_refused(write_catalog, find_line):
    bundle_text = (write_catalog() / "bundles" / "birth.yaml").read_text(encoding="utf-8")
    root = write_catalog(bundles__birth_yaml=bundle_text.replace("{days: 2, source: test}}", "{days: 2}}", 1))
    bundle = root / "bundles" / "birth.yaml"
    message = _problems(root)
    assert f"{_where(bundle)}:{find_line(bundle, '{days: 2}}')}:" in message
    assert "a figure needs a 'source', or 'estimate: true' with a 'note'" in message


def test_yaml_syntax_errors_and_duplicate_keys_point_at_the_line(write_catalog):
    root = write_catalog(data__fields_yaml="""
        mother_name: {type: string, zh: 母亲姓名, en: Mother's name}
        married: {type: boolean, zh: 已婚, en: Married}
        cert_no: {type: string, zh: 证明编号, en: Certificate number}
        child_id: {type: resident_id, zh: 儿童身份号码, en: Child's ID}
        married: {type: boolean, zh: 已婚, en: Married again}
    """)
    assert f"{_where(root / 'data' / 'fields.yaml')}:5: duplicate key 'married'" in _problems(root)

    root = write_catalog(data__departments_yaml="health: {zh: 卫健, en: Health\npolice: [\n")
    message = _problems(root)
    assert _where(root / "data" / "departments.yaml") + ":" in message
    assert "unknown" not in message  # nothing cascades from a file that could not be read


def test_every_problem_is_reported_at_once(write_catalog):
    root = write_catalog(data__services_yaml="""
        health.cert:
          department: health
          zh: 证明
          en: Certificate
          fields: [nope_one]
          materials: [nope_two]
          consumes: [nope_three]
          produces: [cert_no]
          statutory: {days: 5, source: "test"}
          colour: blue
        police.register: {department: police, zh: 登记, en: Registration, consumes: [cert_no], statutory: {days: 1, source: t}}
        health.guidance: {department: health, zh: 指导, en: Guidance, statutory: {days: 1, source: t}}
    """)
    message = _problems(root)
    for fragment in ("unknown field 'nope_one'", "unknown material 'nope_two'", "consumes unknown output 'nope_three'",
                     "unknown key 'colour'"):
        assert fragment in message


def test_a_bundle_must_contain_the_producers_its_services_need(write_catalog, find_line):
    text = (write_catalog() / "bundles" / "birth.yaml").read_text(encoding="utf-8")
    root = write_catalog(bundles__birth_yaml=text.replace("  - {service: health.cert, promised: {days: 1, source: test}}\n", ""))
    bundle = root / "bundles" / "birth.yaml"
    assert (f"{_where(bundle)}:{find_line(bundle, 'police.register')}: bundle 'birth': 'police.register' needs "
            "'cert_no' from 'health.cert', which is not in the bundle") in _problems(root)


def test_a_condition_may_only_use_the_services_own_fields(write_catalog, find_line):
    root = write_catalog(data__services_yaml="""
        health.cert:
          department: health
          zh: 证明
          en: Certificate
          fields: [mother_name, married]
          produces: [cert_no]
          statutory: {days: 5, source: "test"}
        police.register:
          department: police
          zh: 登记
          en: Registration
          fields: [mother_name]
          materials:
            - {material: invoice, when: {field: married, equals: true}}
          consumes: [cert_no]
          statutory: {days: 1, source: "test"}
        health.guidance: {department: health, zh: 指导, en: Guidance, statutory: {days: 1, source: t}}
    """)
    services = root / "data" / "services.yaml"
    assert (f"{_where(services)}:{find_line(services, '- {material: invoice')}: service 'police.register': "
            "'invoice' depends on 'married', which is not one of this service's own fields") in _problems(root)


def test_a_yes_no_condition_must_compare_with_true_or_false(write_catalog, find_line):
    text = (write_catalog() / "data" / "services.yaml").read_text(encoding="utf-8")
    root = write_catalog(data__services_yaml=text.replace("{field: married, equals: true}",
                                                          "{field: married, equals: \"yes\"}"))
    services = root / "data" / "services.yaml"
    line = find_line(services, 'equals: "yes"')
    assert (f"{_where(services)}:{line}: service 'health.cert': 'invoice' "
            "depends on yes/no field 'married'; compare it with true or false") in _problems(root)
