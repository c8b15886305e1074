"""The KPIs' HTTP API (producers/kpi_api.py) on a model of the manager's week: what a supervisor and
a department see, the bad parameters it names, and who it refuses.
"""
from __future__ import annotations

from datetime import date

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from producers import identity
from producers.kpi_api import create_router

from .support.kpi_scenarios import CAT, manager_week
from .support.kpi_model import RUN, model

__all__ = ["model"]  # a fixture of tests/support/kpi_model.py: pytest finds it here


@pytest.fixture
def api(model, settings, database_url):
    events, _ids = manager_week(f"kpi-{RUN}-api")
    model.build(events)
    app = FastAPI()
    assert settings.database_url == database_url
    app.include_router(create_router(settings, schema=model.schema, catalog=CAT, today=lambda: date(2026, 7, 1)))
    return TestClient(app)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


SUP = identity.issue_token("staff_sup1", "supervisor", "online", staff_id="sup1")


@pytest.mark.postgres
def test_api_supervisor_sees_every_bundle_and_department(api):
    r = api.get("/api/v1/kpis", params={"group_by": "bundle", "date_from": "2026-06-01", "date_to": "2026-06-30"},
                headers=bearer(SUP))
    assert r.status_code == 200, r.text
    body = r.json()
    newborn = body["groups"][0]
    assert newborn["key"] == "newborn" and newborn["on_time_rate"] == 0.75 and newborn["received"] == 5
    r = api.get("/api/v1/kpis", params={"group_by": "department", "date_from": "2026-06-01"}, headers=bearer(SUP))
    assert r.status_code == 200 and {"tax", "police", "health"} <= {g["key"] for g in r.json()["groups"]}
    r = api.get("/api/v1/kpis/reform/newborn", params={"date_from": "2026-06-01"}, headers=bearer(SUP))
    assert r.status_code == 200
    body = r.json()
    assert body["reform"]["time_days"] == {"before": 35.0, "after": 5.0, "reduction": pytest.approx(30 / 35)}
    assert body["reform"]["promised_total_days"] == 5
    assert body["measured"]["cases"] == 5 and body["measured"]["on_time_rate"] == 0.75
    assert body["measured"]["working_days_p90"] == 7


@pytest.mark.postgres
def test_api_a_department_sees_its_own_services_only(api):
    tax = identity.department_token("tax", "t001")
    r = api.get("/api/v1/kpis", params={"date_from": "2026-06-01"}, headers=bearer(tax))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["level"] == "service" and body["filters"]["department"] == "tax"
    assert body["total"]["received"] == 4 and body["total"]["on_time_rate"] == 0.25  # 1 of 4 tax services on time
    r = api.get("/api/v1/kpis", params={"department": "police"}, headers=bearer(tax))
    assert r.status_code == 403 and r.json()["errors"][0]["path"] == "department"


@pytest.mark.postgres
@pytest.mark.parametrize("params,path", [
    ({"group_by": "month"}, "group_by"), ({"date_from": "2026-13-01"}, "date_from"),
    ({"date_from": "2026-06-10", "date_to": "2026-06-01"}, "date_to"), ({"bundle": "nope"}, "bundle"),
    ({"department": "nope"}, "department"), ({"region": "44020"}, "region"), ({"region": "abcdef"}, "region"),
    ({"date_from": "2020-01-01", "date_to": "2026-01-01"}, "date_from"),
])
def test_api_names_the_bad_parameter(api, params, path):
    r = api.get("/api/v1/kpis", params=params, headers=bearer(SUP))
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["path"] == path and err["message_zh"] and err["message_en"]


@pytest.mark.postgres
def test_api_refuses_applicants_clerks_and_strangers(api):
    applicant = identity.issue_token("p_someone", "applicant", "online")
    clerk = identity.clerk_token("c001")
    assert api.get("/api/v1/kpis", headers=bearer(applicant)).status_code == 403
    assert api.get("/api/v1/kpis", headers=bearer(clerk)).status_code == 403
    assert api.get("/api/v1/kpis").status_code == 401
    assert api.get("/api/v1/kpis", headers=bearer("not-a-token")).status_code == 401
    assert api.get("/api/v1/kpis/reform/newborn", headers=bearer(applicant)).status_code == 403
    assert api.get("/api/v1/kpis/reform/nope", headers=bearer(SUP)).status_code == 404
    page = api.get("/kpis")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script src=\"/portal/kpis.js\"" in page.text and "style=" not in page.text
