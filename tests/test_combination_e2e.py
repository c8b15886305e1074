"""随意组合 end to end: services of two bundles picked together, applied for through the intake
API and completed by every process of `onething run` (intake API, dispatch, the department
adapters, the case view), on the real broker and PostgreSQL.

The combination is 新生儿出生's medical-insurance enrolment with 社会保障卡居民服务's card
services (the card, its financial activation at the bank). The enrolment needs the child's
resident ID, so the API adds the police's birth registration and, for it, the hospital's birth
certificate — each with the reason it was added — and dispatch runs them in that order before
the enrolment, exactly as inside the newborn bundle. Where the catalog does not model the card
services, 退休's household record check stands in for them.
"""
from __future__ import annotations

import time

import httpx
import pytest

from catalog.loader import load_catalog
from catalog.validators import check_resident_id
from infra.demo_forms import Applicant, fill_form, materials_plan
from infra.supervisor import demo_departments, system
from producers import e_license, identity

from .support.fast_forward import skip_history
from .support.topics import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]
CATALOG = load_catalog()
CARD = ["medical_insurance.enrolment", "hrss.resident_card_issue", "bank.card_financial_activation"]
STAND_IN = ["medical_insurance.enrolment", "police.household_record_check"]
WANG = e_license.DEMO_PEOPLE["wang_fang"]


def _modelled(sid: str) -> bool:
    return any(b.modelled and sid in b.services for b in CATALOG.bundles.values())


PICKED = CARD if all(_modelled(s) for s in CARD) else STAND_IN


def test_a_combination_across_two_bundles_completes_through_every_process(settings, running_stack, database_url,
                                                                            tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("ONETHING_CASCADE_START", "latest")  # earlier tests' register changes are not ours
    selection = CATALOG.select(services=PICKED)
    departments = sorted({CATALOG.services[s].department for s in selection.services} | set(demo_departments()))
    skip_history(settings.bootstrap_servers, database_url)
    sup = system(tmp_path / "logs", departments=departments, env={"ONETHING_SIM_PROCESSING_S": "0"})
    base = f"http://127.0.0.1:{os.environ.get('ONETHING_API_PORT', '8000')}"
    token = identity.applicant_token(WANG.resident_id)
    auth = {"Authorization": f"Bearer {token}"}
    sup.start()
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            def api_up() -> bool:
                sup.check()
                try:
                    return http.get("/openapi.json").status_code == 200
                except httpx.HTTPError:
                    return False

            assert wait_for(api_up, 90, 0.5), "the intake API did not start"
            form = http.get("/api/v1/forms", params={"services": ",".join(PICKED)}, headers=auth).json()
            assert form["picked"] == PICKED
            added = {a["service_id"]: a["needed_by"] for a in form["added"]}
            assert added == {"police.birth_registration": "medical_insurance.enrolment",
                             "health.birth_certificate": "police.birth_registration"}
            values = fill_form(form, Applicant(WANG.name, WANG.resident_id, WANG.address, WANG.region_code,
                                               WANG.birth_date),
                               overrides={"child_name": "李小满"})
            materials = {}
            for mid, how in materials_plan(form, values).items():
                if how == "upload":
                    ref = http.post("/api/v1/documents", content=b"%PDF-1.4 scan", headers=auth
                                    | {"Content-Type": "application/pdf"}).json()["ref"]
                    materials[mid] = {"source": "uploaded", "ref": ref}
            r = http.post("/api/v1/applications", json={"services": PICKED, "form": values, "materials": materials},
                          headers=auth | {"Idempotency-Key": f"combination-{time.time_ns()}"})
            assert r.status_code == 202, r.text
            case_id = r.json()["case_id"]
            view: dict = {}

            def completed() -> bool:
                nonlocal view
                sup.check()
                got = http.get(f"/api/v1/cases/{case_id}", headers=auth)
                view = got.json() if got.status_code == 200 else {}
                return view.get("status") == "completed"

            started = time.monotonic()
            assert wait_for(completed, 180, 0.5), f"not completed: {view.get('status')} {view.get('services')}"
            took = time.monotonic() - started
    finally:
        problems = sup.stop()
    assert not problems, problems
    print(f"\nfree combination of {len(selection.services)} services completed in {took:.1f}s")

    services = {s["service_id"]: s for s in view["services"]}
    assert set(services) == set(selection.services)
    assert all(s["status"] == "approved" for s in services.values()), {k: v["status"] for k, v in services.items()}
    assert view["outcome"] == "all_approved" and view["status_label"]["zh"] == "已办结"
    assert view["bundle_label"]["zh"].startswith("自选事项：")
    child = services["police.birth_registration"]["outputs"]["child_resident_id"]
    assert check_resident_id(child) is None  # issued by the police, flowed on to the enrolment
    for sid in selection.services:  # every service's outputs are there
        assert set(CATALOG.services[sid].produces) <= set(services[sid]["outputs"]), sid
    texts = [t["text_zh"] for t in view["timeline"]]
    assert any("自选事项组合" in t for t in texts)
