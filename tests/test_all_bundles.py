"""Every 一件事 of the catalog end to end (issue 14): every process of `onething run` real, one
application of every modelled bundle through the intake API, each case completed with every
service approved and every service's outputs present — a bundle whose department has no
adapter would wait forever and fail here. The talent subsidy (南昌, 免批秒办) is decided by rule
within a second, and its register records what the rule relied on.
"""
from __future__ import annotations

import re
import socket
import time
from datetime import date, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from catalog.form import applicable_services
from catalog.loader import load_catalog
from catalog.model import Catalog, Condition, Field
from catalog.validators import check_resident_id, check_uscc
from department_adapters.reference.formats import uscc
from infra.samples import resident_id
from infra.supervisor import system
from producers import identity

from .support.fast_forward import skip_history

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]
CATALOG = load_catalog()
MODELLED = sorted(code for code, b in CATALOG.bundles.items() if b.modelled)
REGION = "440703"   # 鹤山市

#: values for the fields whose pattern a generic value would not meet
PATTERNED = {
    "bank_account_no": "6222020200112233445", "company_bank_account_no": "6222020200112233",
    "customs_code": "4407960ABC", "vehicle_plate_no": "粤J12345", "old_vehicle_plate_no": "粤J54321",
    "old_vehicle_vin": "LSVAU2180N2123456", "new_vehicle_invoice_no": "044001900111",
    "bankruptcy_case_no": "（2024）粤0784破12号",
    "degree_level": "master",   # 南昌's rule subsidises bachelors and above (a college diploma is refused)
}


def _satisfy(values: dict[str, Any], cond: Condition) -> None:
    if cond.op == "equals":
        values[cond.field] = cond.value
    elif cond.op == "in":
        values[cond.field] = cond.value[0]
    else:
        values[cond.field] = sorted({*values.get(cond.field, []), cond.value})


def sample_value(f: Field, n: int, today: date) -> Any:
    """A valid answer of the field's type (a person would type something like it)."""
    if f.id in PATTERNED:
        return PATTERNED[f.id]
    t = f.type
    if t in ("string", "text"):
        return ("测试" + f.label.zh)[: f.max_length or 50]
    if t == "date":
        return (today + timedelta(days=10) if f.validator == "future_date" else today - timedelta(days=3)).isoformat()
    if t == "enum":
        return f.options[0].value
    if t == "enum_set":
        return [f.options[0].value]
    if t == "resident_id":
        return resident_id(REGION, date(1980, 1, 1) + timedelta(days=n), f"{100 + n % 800:03d}")
    if t == "uscc":
        return uscc("91", REGION, 1000 + n)
    if t == "mobile":
        return "13800138000"
    if t == "region_code":
        return REGION
    if t in ("integer", "decimal"):
        low = f.min if f.min is not None else 1
        value = max(low, 1)
        return int(value) if t == "integer" else float(value)
    if t == "boolean":
        return False
    raise AssertionError(f"no sample for type {t}")


def application(cat: Catalog, code: str, applicant_id: str, ref: str, today: date) -> dict[str, Any]:
    """A valid merged form of the bundle, every conditional service made to apply."""
    mf = cat.merged_form(bundle_code=code)
    values = {ff.id: sample_value(ff.field, i, today) for i, ff in enumerate(mf.fields)}
    for fid in ("applicant_resident_id", "guardian_resident_id"):
        if fid in values:
            values[fid] = applicant_id   # the logged-in person's own ID
    for member in cat.bundle(code).conditional:
        _satisfy(values, member.applies_when)
    materials = {fm.id: {"source": "uploaded", "ref": ref} for fm in mf.materials}
    return {"bundle_code": code, "form": values, "materials": materials}


def test_a_sample_application_of_every_bundle_is_valid_and_applies_every_service():
    """The pure half, in milliseconds: the body the end-to-end test sends passes the catalog's
    validation, and with the conditions made true every service of the bundle applies."""
    from catalog.form import validate_form

    for n, code in enumerate(MODELLED):
        body = application(CATALOG, code, resident_id(REGION, date(1990, 1, 1), f"{n:03d}"), "doc-1", date.today())
        assert validate_form(CATALOG, code, body["form"], body["materials"]) == [], code
        mf = CATALOG.merged_form(bundle_code=code)
        assert set(applicable_services(CATALOG, mf, body["form"])) == set(mf.selection.services), code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_application_of_every_bundle_completes_through_every_process(settings, running_stack, database_url,
                                                                          bootstrap, tmp_path, monkeypatch):
    port = _free_port()
    monkeypatch.setenv("ONETHING_API_PORT", str(port))
    monkeypatch.setenv("ONETHING_CASCADE_START", "latest")
    skip_history(bootstrap, database_url)
    sup = system(tmp_path / "logs", env={"ONETHING_SIM_PROCESSING_S": "0"})
    sup.start()
    base = f"http://127.0.0.1:{port}"
    cases: dict[str, tuple[str, str]] = {}   # bundle → (case id, token)
    started = time.monotonic()
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    if client.get("/openapi.json", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                sup.check()
                time.sleep(0.5)
            for n, code in enumerate(MODELLED):
                applicant = resident_id(REGION, date(1990, 1, 1) + timedelta(days=n), f"{200 + n:03d}")
                token = identity.applicant_token(applicant)
                auth = {"Authorization": f"Bearer {token}"}
                ref = client.post("/api/v1/documents", content=b"%PDF-1.4 scan", headers=auth
                                  | {"Content-Type": "application/pdf"}).json()["ref"]
                r = client.post("/api/v1/applications", json=application(CATALOG, code, applicant, ref, date.today()),
                                headers=auth)
                assert r.status_code == 202, (code, r.text)
                cases[code] = (r.json()["case_id"], token)
            # a company without staff: its employer registration does not apply, is never sent, and
            # the case completes without it
            applicant = resident_id(REGION, date(1975, 6, 1), "777")
            token = identity.applicant_token(applicant)
            auth = {"Authorization": f"Bearer {token}"}
            ref = client.post("/api/v1/documents", content=b"%PDF-1.4 scan", headers=auth
                              | {"Content-Type": "application/pdf"}).json()["ref"]
            body = application(CATALOG, "transport_company_opening", applicant, ref, date.today())
            body["form"]["has_employees"] = False
            r = client.post("/api/v1/applications", json=body, headers=auth)
            assert r.status_code == 202, r.text
            cases["no_employees"] = (r.json()["case_id"], token)
            views: dict[str, dict] = {}
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and len(views) < len(cases):
                for code, (case_id, token) in cases.items():
                    if code in views:
                        continue
                    r = client.get(f"/api/v1/cases/{case_id}", headers={"Authorization": f"Bearer {token}"})
                    if r.status_code == 200 and r.json().get("status") in ("completed", "withdrawn"):
                        views[code] = r.json()
                sup.check()
                time.sleep(1)
        elapsed = time.monotonic() - started
    finally:
        sup.stop()
    stuck = sorted(set(cases) - set(views))
    assert not stuck, f"never completed (does every department answer?): {stuck}"
    lone = {s["service_id"] for s in views.pop("no_employees")["services"]}
    print(f"\n{len(views)} bundles (and a company without staff) completed end to end in {elapsed:.0f}s")
    assert lone == set(CATALOG.bundle("transport_company_opening").services) - {"hrss.unit_social_insurance_registration"}
    for code, view in views.items():
        services = {s["service_id"]: s for s in view["services"]}
        assert set(services) == set(CATALOG.bundle(code).services), code   # every condition was made true
        for sid, s in services.items():
            assert s["status"] == "approved", (code, sid, s.get("status"), s.get("reason"))
            assert set(CATALOG.service(sid).produces) <= set(s.get("outputs") or {}), (code, sid)

    # numbers in their real formats; a new company's code passes GB 32100
    outputs = {k: v for view in views.values() for s in view["services"] for k, v in (s.get("outputs") or {}).items()}
    assert check_uscc(outputs["new_company_uscc"]) is None and check_uscc(outputs["sole_trader_uscc"]) is None
    assert outputs["road_transport_permit_no"].startswith("粤交运管许可字440703")
    assert re.fullmatch(r"JY2[0-9]{13}", outputs["food_business_permit_no"])   # JY, 14 digits
    assert check_resident_id(outputs["child_resident_id"]) is None
    assert outputs["degree_verification_result"] == "verified"
    assert "免批秒办" in outputs["talent_living_subsidy_basis"]

    # 免批秒办: the register records that the rule decided, and what it relied on
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT service_id, decided_by, basis FROM department_generic_records WHERE case_id = %s",
                            (cases["talent_subsidy"][0],)).fetchall()
    by_service = {sid: (who, basis) for sid, who, basis in rows}
    assert by_service["hrss.talent_living_subsidy"][0] == "rule"
    assert by_service["hrss.talent_living_subsidy"][1]["degree_verification_result"] == "verified"
