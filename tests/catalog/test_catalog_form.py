"""The merged form, free combination, department subsets and form validation, on real bundles."""
from __future__ import annotations

from datetime import date

import pytest

from catalog.form import SelectionError, minimise, validate_form
from catalog.validators import resident_id_check_char


def rid(first17: str) -> str:
    return first17 + resident_id_check_char(first17)


MOTHER = rid("11010519900307004")
FATHER = rid("44200019880512003")


def newborn_values(**changes):
    values = {
        "child_name": "王小明", "child_sex": "male", "birth_date": "2025-03-01", "birth_hospital": "市妇幼保健院",
        "mother_name": "李红", "mother_resident_id": MOTHER, "father_known": True, "father_name": "王强",
        "father_resident_id": FATHER, "parents_married": True, "household_address": "广东省中山市东区某路1号",
        "residence_address": "广东省中山市东区某路1号", "mailing_address": "广东省中山市东区某路1号",
        "region_code": "442000", "contact_mobile": "13812345678", "bank_name": "某银行",
        "bank_account_no": "6222020200112233445", "registration_parent": "father",
    }
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


UPLOADS = {"medical_invoice": "upload-1", "discharge_summary": "upload-2"}
TODAY = date(2025, 3, 10)


def test_newborn_merged_form_asks_each_field_once_and_never_for_outputs(shipped):
    form = shipped.merged_form("newborn")
    ids = [f.id for f in form.fields]
    assert len(ids) == len(set(ids))
    assert "child_resident_id" not in ids and "birth_certificate_no" not in ids
    assert {"mother_name", "mother_resident_id", "child_name", "birth_date", "contact_mobile"} <= set(ids)
    assert form.field("mother_name").services and len(form.field("mother_name").services) >= 4
    assert [m.id for m in form.uploads] == ["medical_invoice", "discharge_summary"]
    fetched = {m.id for m in form.fetched}
    assert {"mother_id_card", "household_register", "marriage_certificate"} <= fetched
    assert "birth_medical_certificate" not in fetched | {m.id for m in form.uploads}  # passed on, not asked
    left_out = {(d.output, d.upstream) for d in form.left_out}
    assert ("child_resident_id", "police.birth_registration") in left_out


def test_free_combination_adds_dependencies_and_says_why(shipped):
    sel = shipped.select(services=["hrss.social_security_card"])
    assert [a.reason for a in sel.added] == [
        "added police.birth_registration because hrss.social_security_card needs its output child_resident_id",
        "added health.birth_certificate because police.birth_registration needs its output birth_certificate_no",
    ]
    assert sel.waves == (("health.birth_certificate",), ("police.birth_registration",), ("hrss.social_security_card",))
    # picking services of different bundles together (随意组合)
    mixed = shipped.merged_form(services=["hrss.social_security_card", "housing_fund.retirement_withdrawal"])
    assert "housing_fund.retirement_withdrawal" in mixed.selection.services
    assert "hrss.pension_retirement" in mixed.selection.services
    with pytest.raises(SelectionError, match="unknown service 'police.teleport'"):
        shipped.select(services=["police.teleport"])


def test_a_picked_service_producing_a_field_another_asks_for_fills_it(shipped):
    """Enrolment asks parents for the child's ID, unless the same application registers the birth."""
    alone = shipped.merged_form(services=["education.enrolment_admission"])
    assert alone.field("child_resident_id") is not None
    with_birth = shipped.merged_form(services=["education.enrolment_admission", "police.birth_registration"])
    assert with_birth.field("child_resident_id") is None
    order = [s for w in with_birth.selection.waves for s in w]
    assert order.index("police.birth_registration") < order.index("education.enrolment_admission")


def test_department_subsets_are_minimal(shipped):
    subsets = shipped.department_subsets("newborn")
    assert len(subsets) >= 5
    tax = subsets["tax"]
    assert set(tax.fields) == {"contact_mobile", "child_resident_id", "medical_insurance_enrolment_no"}
    assert "mother_resident_id" not in tax.fields and "bank_account_no" not in tax.fields
    police = shipped.department_subset("police", "newborn")
    assert "birth_certificate_no" in police.fields and "birth_medical_certificate" in police.materials
    assert "bank_account_no" not in police.fields and "medical_invoice" not in police.materials
    case = newborn_values(child_resident_id=rid("44200020250301001"), medical_insurance_enrolment_no="MI-1")
    assert set(minimise(case, tax)) == {"contact_mobile", "child_resident_id", "medical_insurance_enrolment_no"}


def test_a_complete_newborn_form_is_valid(shipped):
    assert validate_form(shipped, "newborn", newborn_values(), UPLOADS, today=TODAY) == []


def test_all_errors_come_back_at_once_naming_field_and_never_the_value(shipped):
    bad_mother = MOTHER[:17] + ("0" if MOTHER[17] != "0" else "1")
    values = newborn_values(mother_resident_id=bad_mother, contact_mobile="12345678901", child_name=None,
                            birth_date="2025-04-01", child_sex="boy", registration_parent=None,
                            father_resident_id=None, bank_account_no="12ab", favourite_colour="blue")
    errors = validate_form(shipped, "newborn", values, {"medical_invoice": "upload-1"}, today=TODAY)
    by_path = {e.path: e for e in errors}
    assert set(by_path) == {
        "fields.mother_resident_id", "fields.contact_mobile", "fields.child_name", "fields.birth_date",
        "fields.child_sex", "fields.registration_parent", "fields.father_resident_id", "fields.bank_account_no",
        "fields.favourite_colour", "materials.discharge_summary"}
    assert by_path["fields.mother_resident_id"].code == "resident_id.checksum"
    assert "校验位不正确" in by_path["fields.mother_resident_id"].message_zh
    assert "checksum digit is wrong" in by_path["fields.mother_resident_id"].message_en
    assert by_path["fields.mother_resident_id"].message_zh.startswith("母亲公民身份号码")
    assert by_path["fields.father_resident_id"].code == "required"   # required because father_known is true
    assert by_path["fields.birth_date"].code == "date.future"
    assert by_path["fields.bank_account_no"].message_en.endswith("(10 to 30 digits)")
    for e in errors:
        for secret in (bad_mother, "12345678901", "boy", "12ab", "blue"):
            assert secret not in e.message_zh and secret not in e.message_en and secret not in str(e)


def test_required_when_rules_follow_the_answers(shipped):
    single = newborn_values(father_known=False, parents_married=False, father_name=None, father_resident_id=None,
                            registration_parent="mother")
    assert validate_form(shipped, "newborn", single, UPLOADS, today=TODAY) == []
    # e-licenses are fetched: nothing to upload for the marriage certificate even when married
    assert validate_form(shipped, "newborn", newborn_values(), UPLOADS, today=TODAY) == []

    base = {"uscc": "91350100M000100Y43", "company_name": "某某有限公司", "applicant_name": "张三",
            "applicant_resident_id": MOTHER, "contact_mobile": "13912345678", "region_code": "350100"}
    uploads = {"change_resolution": "u1", "articles_amendment": "u2"}
    name_change = dict(base, change_items=["name"])
    errors = validate_form(shipped, "enterprise_change", name_change, uploads)
    assert [(e.path, e.code) for e in errors] == [("fields.new_company_name", "required")]
    address_change = dict(base, change_items=["address"], new_registered_address="福州市某路2号")
    errors = validate_form(shipped, "enterprise_change", address_change, uploads)
    assert [(e.path, e.code) for e in errors] == [("materials.premises_certificate", "material.required")]
    bad_uscc = dict(name_change, uscc="91350100M000100Y44", new_company_name="新名称有限公司",
                    change_items=["name", "name"])
    codes = {e.path: e.code for e in validate_form(shipped, "enterprise_change", bad_uscc, uploads)}
    assert codes == {"fields.uscc": "uscc.checksum", "fields.change_items": "enum_set.duplicate"}


def test_validate_form_accepts_a_free_combination(shipped):
    errors = validate_form(shipped, ["hrss.social_security_card"], {}, {}, today=TODAY)
    assert {e.path for e in errors} >= {"fields.child_name", "fields.birth_date", "fields.mother_resident_id"}
    assert "fields.child_resident_id" not in {e.path for e in errors}
