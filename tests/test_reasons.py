"""理由代码 and what the applicant is told: the departments' bilingual reason lists load and are
checked, a code nobody lists reads as a generic reason, a finished case says 已办结 only when
every service was approved, the refused services come first, and a free combination (随意组合)
is refused with an error naming each wrong service. Pure: no broker, no database."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalog.combination import COMBINATION, check_services, combination_label, parse_services
from catalog.loader import CatalogError, load_catalog
from catalog.reasons import UNLISTED, load_reasons, resolve
from events import codec
from events.envelope import Actor, new_event
from events.schema_store import SCHEMAS_DIR, SchemaStore
from projectors import case_outcome
from projectors.timeline_text import describe

CATALOG = load_catalog()
STATUSES = ("approved", "rejected", "blocked")


def test_every_listed_department_is_the_catalogs_and_every_reason_speaks_both_languages():
    reasons = load_reasons()
    assert set(reasons.departments) <= set(CATALOG.departments)
    assert {"not_eligible", "materials_incomplete", "promised_material_due"} <= set(reasons.common)
    for dept in CATALOG.departments:
        for code, r in reasons.of(dept).items():
            assert r.kind in ("rejection", "correction"), code
            assert r.label.zh and r.label.en and r.label.zh != r.label.en, code
            assert any("\u4e00" <= ch <= "\u9fff" for ch in r.label.zh), code  # the Chinese page reads Chinese
            assert not any("\u4e00" <= ch <= "\u9fff" for ch in r.label.en.replace("办不成事", "")), code


def test_a_code_the_department_does_not_list_reads_as_the_generic_reason():
    reasons = load_reasons()
    own = resolve(reasons, "health", "hospital_not_registered")
    assert own.listed and "助产" in own.reason.label.zh and "midwifery" in own.reason.label.en
    assert resolve(reasons, "health", "not_eligible").listed  # a common code, any department
    other = resolve(reasons, "police", "hospital_not_registered")  # health's code, not the police's
    assert other.listed is False and other.reason is UNLISTED
    assert resolve(reasons, "health", None) is None


def test_a_reasons_file_with_mistakes_is_refused_naming_file_and_line(tmp_path: Path):
    path = tmp_path / "reasons.yaml"
    path.write_text(textwrap.dedent("""\
        common:
          not_eligible: {kind: rejection, zh: 不符合条件, en: not eligible}
        departments:
          starfleet:
            warp: {kind: rejection, zh: 超光速, en: warp}
          health:
            Bad-Code: {kind: rejection, zh: 坏, en: bad}
            no_english: {kind: rejection, zh: 只有中文}
            odd_kind: {kind: maybe, zh: 也许, en: maybe}
            not_eligible: {kind: rejection, zh: 重复, en: repeated}
        """), encoding="utf-8")
    with pytest.raises(CatalogError) as info:
        load_reasons(path, CATALOG)
    text = str(info.value)
    assert "reasons.yaml:4: department 'starfleet' is not in the catalog" in text
    assert "reasons.yaml:7: reason code 'Bad-Code' must be lower_snake_case" in text
    assert "no_english" in text and "missing 'en'" in text
    assert "odd_kind" in text and "'kind' must be one of rejection, correction" in text
    assert "reasons.yaml:10: reason 'not_eligible' of health repeats a common code" in text


@given(st.lists(st.sampled_from(STATUSES), min_size=1, max_size=12))
def test_completed_says_all_approved_only_when_every_service_was(statuses):
    result = case_outcome.outcome("completed", statuses)
    assert (result == case_outcome.ALL_APPROVED) == all(s == "approved" for s in statuses)
    assert (result == case_outcome.NONE_APPROVED) == all(s != "approved" for s in statuses)
    assert case_outcome.outcome("open", statuses) is None and case_outcome.outcome("withdrawn", statuses) is None


@given(st.lists(st.sampled_from(STATUSES + ("dispatched", "cancelled")), max_size=12))
def test_refused_services_come_first_then_what_they_blocked_each_in_its_order(statuses):
    services = [{"service_id": f"s{i}", "status": s} for i, s in enumerate(statuses)]
    shown = [s["service_id"] for s in case_outcome.shown_order(services)]
    assert sorted(shown) == sorted(s["service_id"] for s in services)
    ranks = [case_outcome.ORDER.get(statuses[int(sid[1:])], 2) for sid in shown]
    assert ranks == sorted(ranks)
    for rank in set(ranks):  # stable within a group
        group = [int(sid[1:]) for sid, r in zip(shown, ranks) if r == rank]
        assert group == sorted(group)


def test_a_refusal_says_why_in_both_languages_what_it_blocked_and_what_to_do():
    reasons = load_reasons()

    def row(sid, status, code=None, text=None):
        shown = case_outcome.reason_shown(reasons, CATALOG.services[sid].department, status, code, text)
        return {"service_id": sid, "status": status, "department": CATALOG.services[sid].department,
                "label": {"zh": CATALOG.services[sid].label.zh, "en": CATALOG.services[sid].label.en},
                "department_label": {}, "reason": text, "reason_code": shown.code,
                "reason_label": shown.label and {"zh": shown.label.zh, "en": shown.label.en},
                "reason_advice": shown.advice and {"zh": shown.advice.zh, "en": shown.advice.en}}

    services = [row("health.birth_certificate", "rejected", "hospital_not_registered", "free text"),
                row("police.birth_registration", "blocked"), row("hrss.social_security_card", "blocked"),
                row("tax.newborn_premium", "approved")]
    dependants = {"health.birth_certificate": ["police.birth_registration"],
                  "police.birth_registration": ["hrss.social_security_card"]}
    refused = case_outcome.refused(CATALOG, services, dependants)
    (item,) = refused["services"]
    assert "助产" in item["reason_label"]["zh"] and "midwifery" in item["reason_label"]["en"]
    assert item["reason"] is None  # the code's sentence replaces the department's own words
    assert [b["service_id"] for b in item["blocked"]] == ["police.birth_registration", "hrss.social_security_card"]
    steps = {s["kind"]: s for s in refused["next_steps"]}
    assert steps["escalate"]["service_id"] == "health.birth_certificate" and "办不成事" in steps["escalate"]["label"]["zh"]
    assert steps["reapply"]["services"] == ["health.birth_certificate", "police.birth_registration",
                                            "hrss.social_security_card"]
    assert steps["reapply"]["form_url"].startswith("/api/v1/forms?services=health.birth_certificate,")
    assert case_outcome.refused(CATALOG, services[3:], {}) is None
    unstated = case_outcome.reason_shown(reasons, "health", "rejected", None, None)
    assert unstated.label.zh == "部门未说明理由"


def test_the_timeline_names_the_reason_and_a_partial_end_is_not_called_complete():
    decision = new_event("DecisionRecorded", "case-x", {
        "task_id": "case-x:health.birth_certificate:1", "department": "health", "service_id": "health.birth_certificate",
        "kind": "case_service", "outcome": "rejected", "reason": "anything", "reason_code": "hospital_not_registered",
        "missing_materials": [], "outputs": {}}, actor=Actor("dept:health", "department", "department"),
        region_code="440203")
    zh, en = describe(decision, CATALOG)
    assert "不予办理" in zh and "助产" in zh and "anything" not in zh + en and "midwifery" in en
    done = new_event("CaseCompleted", "case-x", {"approved": ["a"] * 6, "rejected": ["b"] * 3},
                     actor=Actor("system", "system", "system"), region_code="440203")
    zh, en = describe(done, CATALOG)
    assert zh.startswith("部分办结") and "全部" not in zh and en.startswith("Partly completed")


def test_a_decision_written_before_reason_codes_reads_without_one_and_an_old_reader_skips_it():
    store = SchemaStore(SCHEMAS_DIR)
    versions = store.by_type["DecisionRecorded"]
    assert [v.version for v in versions][-1] >= 3
    payload = {"task_id": "t", "department": "health", "service_id": "health.birth_certificate",
               "kind": "case_service", "outcome": "rejected", "reason": "x", "reason_code": "hospital_not_registered",
               "missing_materials": [], "outputs": {}}
    event = new_event("DecisionRecorded", "case-y", payload, actor=Actor("dept:health", "department", "department"),
                      region_code="440203")
    wire = codec.encode(event, store)
    v2 = next(v for v in versions if v.version == 2)
    old = codec.decode(wire, store, reader=v2).payload
    assert "reason_code" not in old and old["outcome"] == "rejected"
    assert codec.decode(wire, store).payload["reason_code"] == "hospital_not_registered"
    schema = json.loads((SCHEMAS_DIR / "onething.DecisionRecorded.avsc").read_text())
    (field,) = [f for f in schema["fields"] if f["name"] == "reason_code"]
    assert field["default"] is None


def test_a_free_combination_names_each_wrong_service_and_why():
    assert parse_services(" medical_insurance.enrolment, ,police.household_record_check ") == [
        "medical_insurance.enrolment", "police.household_record_check"]
    selection, errors = check_services(CATALOG, ["medical_insurance.enrolment", "police.household_record_check"])
    assert errors == [] and {"police.birth_registration", "health.birth_certificate"} <= set(selection.services)
    reasons = {a.service: a for a in selection.added}
    assert reasons["police.birth_registration"].needed_by == "medical_insurance.enrolment"
    _, errors = check_services(CATALOG, ["medical_insurance.enrolment", "no.such_service", "medical_insurance.enrolment"])
    assert [(e.path, e.code) for e in errors] == [("services[1]", "service.unknown"), ("services[2]", "service.duplicate")]
    assert "no.such_service" in errors[0].message_en and "没有" in errors[0].message_zh
    _, errors = check_services(CATALOG, [])
    assert [e.code for e in errors] == ["services.empty"]
    label = combination_label(CATALOG, selection.services)
    assert label.zh.startswith("自选事项：") and f"等{len(selection.services)}项" in label.zh
    assert COMBINATION not in CATALOG.bundles
