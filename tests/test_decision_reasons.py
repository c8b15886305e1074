"""A department's decision carries a reason code of its list: the SDK puts it on the event, refuses
a malformed one at the source, and the reference departments' rules carry one (their own, or
`not_eligible` / `materials_incomplete` / `promised_material_due` by default). Pure: no broker."""
from __future__ import annotations

import pytest

from catalog.loader import load_catalog
from catalog.reasons import load_reasons
from department_adapters.reference.backend import SimulatedBackend
from department_adapters.reference.config import BackendConfig
from department_adapters.sdk import AdapterProcessor, Decision
from events.envelope import Actor, new_event

CATALOG = load_catalog()


def _task(service_id: str, fields: dict, materials: list[dict], inputs: dict | None = None):
    dept = CATALOG.services[service_id].department
    return new_event("TaskDispatched", "case-r1", {
        "task_id": f"case-r1:{service_id}:1", "department": dept, "service_id": service_id, "kind": "case_service",
        "fields": fields, "materials": materials, "inputs": inputs or {}, "due_date": None},
        actor=Actor("system", "system", "system"), region_code="440203")


def test_the_decision_event_carries_the_code_and_a_malformed_code_is_refused_at_the_source():
    backend = SimulatedBackend("health", BackendConfig(processing_s=0))
    processor = AdapterProcessor(backend)
    task = _task("health.birth_certificate", {}, [])
    event = processor._event(task, 1, Decision("rejected", reason="own words", reason_code="hospital_not_registered"))
    assert event.payload["reason_code"] == "hospital_not_registered" and event.payload["reason"] == "own words"
    assert processor._event(task, 0, Decision("accepted")).payload["reason_code"] is None
    for bad in ("Bad Code", "出生", "x" * 65, "a-b"):
        with pytest.raises(ValueError, match="reason code"):
            Decision("rejected", reason_code=bad)


def test_reference_rules_carry_a_listed_code_their_own_or_the_default():
    health = CATALOG.services["health.birth_certificate"]
    fields = {n.id: "x" for n in health.fields}
    fields["birth_hospital"] = "未备案的私人诊所"
    reasons = load_reasons()
    config = BackendConfig.from_mapping({"processing_s": 0, "rejections": [
        {"service": "health.birth_certificate", "field": "birth_hospital", "equals": "未备案的私人诊所",
         "reason_code": "hospital_not_registered"}]})
    verdict = SimulatedBackend("health", config)._verdict(health, _task(health.id, fields, []).payload)
    assert verdict.outcome == "rejected" and verdict.reason_code == "hospital_not_registered"
    assert reasons.listed("health", verdict.reason_code)

    compact = BackendConfig.from_mapping({"processing_s": 0, "rejections": "health.birth_certificate:birth_hospital=未备案的私人诊所"})
    verdict = SimulatedBackend("health", compact)._verdict(health, _task(health.id, fields, []).payload)
    assert verdict.outcome == "rejected" and verdict.reason_code == "not_eligible"

    reimbursement = CATALOG.services["medical_insurance.childbirth_reimbursement"]
    rfields = {n.id: "x" for n in reimbursement.fields}
    inputs = {o: "x" for o in reimbursement.consumes}
    held = [{"code": n.id, "source": "uploaded", "ref": "doc"} for n in reimbursement.materials]
    promised = [dict(m, source="promised", ref=None) if m["code"] == "discharge_summary" else m for m in held]
    backend = SimulatedBackend("medical_insurance", BackendConfig(processing_s=0))
    verdict = backend._verdict(reimbursement, _task(reimbursement.id, rfields, promised, inputs).payload)
    assert verdict.outcome == "correction_requested" and verdict.reason_code == "promised_material_due"
    missing = [m for m in held if m["code"] != "discharge_summary"]
    verdict = backend._verdict(reimbursement, _task(reimbursement.id, rfields, missing, inputs).payload)
    assert verdict.reason_code == "materials_incomplete"


def test_a_code_the_department_does_not_list_still_goes_out_and_is_counted_by_department():
    from department_adapters.sdk import UNLISTED_REASONS

    processor = AdapterProcessor(SimulatedBackend("police", BackendConfig(processing_s=0)))
    before = UNLISTED_REASONS.labels("police")._value.get()
    processor._check_codes([Decision("rejected", reason_code="hospital_not_registered"),  # health's, not police's
                            Decision("rejected", reason_code="not_eligible"), Decision("accepted")])
    assert UNLISTED_REASONS.labels("police")._value.get() == before + 1
    event = processor._event(_task("police.birth_registration", {}, []), 1,
                             Decision("rejected", reason_code="hospital_not_registered"))
    assert event.payload["reason_code"] == "hospital_not_registered"  # the decision counts; readers show a generic reason
