"""The intake API fuzzed with schemathesis from its own OpenAPI document — the short form of
`onething fuzz` (infra/fuzz.py), against the app in-process and the suite's real broker and database.

What it pins down: each bundle's merged form is published as a JSON Schema the API agrees with
(what the schema admits is accepted, what it refuses is refused with its field and why); a few
hundred generated requests over every route × role (150; 300 at ONETHING_TEST_SCALE=long) get no
5xx, leak nothing of another subject and are refused in the API's error shape; generated
applications (40; 100 long) are accepted and dispatch turns every one into tasks with no dead
letter. `onething fuzz` is the full run (10,000 requests).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema_rs
import pytest
import schemathesis
from fastapi.testclient import TestClient

from catalog.loader import load_catalog
from infra import fuzz_follow
from infra.fuzz_engine import Engine, fuzz_document
from infra.fuzz_world import ROLES, Caller, KnownCase, World
from producers.api_form_schema import available_bundles
from producers.intake_api import create_app
from tests.support.api_role import api_settings
from tests.support.fast_forward import skip_history
from tests.support.scale import scaled
from tests.test_intake_api import retirement_request, ZHANG

ROOT = Path(__file__).resolve().parent.parent
CATALOG = load_catalog()
APPLICATIONS = scaled(100, 25)
CELL_REQUESTS = scaled(300, 100)   # every operation, then every role, even below operations × roles


@pytest.fixture(scope="module")
def document(settings) -> dict:
    return create_app(settings, seed_demo=False).openapi()


def validator(doc: dict, bundle: str):
    root = {"components": doc["components"], "$ref": f"#/components/schemas/Application_{bundle}"}
    return jsonschema_rs.Draft202012Validator(root)


def test_each_available_bundle_is_a_request_body_of_its_own(document):
    body = document["paths"]["/api/v1/applications"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    mapping = body["discriminator"]["mapping"]
    assert body["discriminator"]["propertyName"] == "bundle_code"
    assert sorted(mapping) == sorted(available_bundles(CATALOG)) and len(mapping) >= 10
    assert "bankruptcy_check" in mapping  # issue 14: every bundle is modelled, so every one is offered
    newborn = document["components"]["schemas"]["Application_newborn"]
    form = newborn["properties"]["form"]
    merged = CATALOG.merged_form(bundle_code="newborn")
    assert set(form["properties"]) == {f.id for f in merged.fields} and form["additionalProperties"] is False
    assert set(form["required"]) == {f.id for f in merged.fields if f.required}
    assert form["properties"]["child_sex"]["enum"] == ["male", "female"]
    assert form["properties"]["mother_resident_id"]["format"] == "gb11643-resident-id"
    assert form["properties"]["birth_date"]["format"] == "past-date"
    # father_name is required only when the father is known or the parents are married
    rules = [r for r in form["allOf"] if r["then"]["required"] == ["father_name"]]
    assert {json.dumps(r["if"], sort_keys=True) for r in rules} == {
        json.dumps({"properties": {"father_known": {"const": True}}, "required": ["father_known"]}, sort_keys=True),
        json.dumps({"properties": {"parents_married": {"const": True}}, "required": ["parents_married"]}, sort_keys=True)}
    mats = newborn["properties"]["materials"]
    assert "medical_invoice" in mats["required"] and "mother_id_card" not in mats["required"]  # e-licences: fetched
    sources = {s["properties"]["source"]["const"] for s in mats["properties"]["medical_invoice"]["oneOf"]}
    assert sources == {"uploaded", "promised"}
    assert "promised" not in json.dumps(mats["properties"]["mother_id_card"])  # core documents cannot wait


def test_the_schema_admits_what_the_api_accepts_and_refuses_what_it_refuses(document):
    good = retirement_request(ZHANG)
    check = validator(document, "retirement")
    assert check.is_valid(good)
    for broken in ({**good, "form": {**good["form"], "retirement_type": "whenever"}},
                   {**good, "form": {k: v for k, v in good["form"].items() if k != "contact_mobile"}},
                   {**good, "form": {**good["form"], "contact_mobile": "12345"}},
                   {**good, "form": {**good["form"], "favourite_colour": "blue"}},
                   {**good, "form": {**good["form"], "employment_status": "employed"}},  # employer now required
                   {**good, "materials": {"personnel_archive": {"source": "promised", "ref": "x"}}}):
        assert not check.is_valid(broken), broken


def test_the_leak_check_names_another_subjects_case_and_id():
    world = World(("police", "health"), ("newborn",))
    rid, subject = world.person()
    other_rid, other_subject = world.person()
    world.remember_case(KnownCase("case-" + "a" * 20, rid, subject, ("police",), None, subject, frozenset({rid})))
    mine = Caller("owner", "t", subject, rid)
    other = Caller("other_applicant", "t", other_subject, other_rid)
    body = json.dumps({"case_id": "case-" + "a" * 20, "resident_id": rid, "subject": subject})
    assert world.leaks(mine, "", body) == []
    assert len(world.leaks(other, "", body)) == 3
    assert world.leaks(other, "case-" + "a" * 20 + rid + subject, body) == []  # it sent them itself
    assert world.leaks(Caller("department_on_case", "t", department="police"), "", body) == []
    assert world.leaks(Caller("department_off_case", "t", department="health"), "", body) != []
    assert world.leaks(Caller("supervisor", "t"), "", body) == []


def start_dispatch(log_path: Path) -> subprocess.Popen:
    out = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "infra.process", "dispatch"], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "ONETHING_METRICS_PORT": "-1"})


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.broker
@pytest.mark.postgres
@pytest.mark.slow   # in the fault lane: the suite's lanes even out (infra/onething.sh)
def test_schemathesis_over_every_route_and_role_then_dispatch(settings, bootstrap, database_url, tmp_path):
    app = create_app(api_settings(settings, bootstrap, database_url), seed_demo=False)
    skip_history(bootstrap, database_url)
    starts = fuzz_follow.mark(bootstrap, CATALOG.departments)
    proc = start_dispatch(tmp_path / "dispatch.log")
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            schema = schemathesis.openapi.from_dict(fuzz_document(client.get("/openapi.json").json()))
            engine = Engine(client, schema, CATALOG, seed_value=13)
            figures = engine.run(APPLICATIONS + CELL_REQUESTS, APPLICATIONS)
        report = fuzz_follow.follow(bootstrap, starts, figures.accepted, timeout_s=90, groups=False)
    finally:
        stop(proc)
    log_tail = (tmp_path / "dispatch.log").read_text(errors="replace")[-2000:]
    assert figures.server_errors == [] and figures.leaks == [] and figures.bad_refusals == []
    assert figures.generated >= APPLICATIONS + CELL_REQUESTS
    routes = {route for route, _role in figures.sent}
    assert len(routes) == len(engine.operations), "every operation was fuzzed"
    assert {role for _route, role in figures.sent} == set(ROLES)
    assert len(figures.accepted) >= 0.9 * APPLICATIONS, figures.refusals.most_common(5)
    assert report.missing == 0, f"{report.missing} accepted applications not dispatched\n{log_tail}"
    assert report.dead_letters == [], report.dead_letters[:5]
    # refused input is refused with the field and the reason, never a 5xx
    assert any(code not in ("auth.required", "auth.invalid") for (_r, code) in figures.refusals)



def test_an_integer_spelled_as_a_whole_float_is_the_integer():
    """schemathesis sends `49.0` for an integer field (JSON has one number type): the API reads 49."""
    from producers.api_forms import whole_numbers

    mf = CATALOG.merged_form(bundle_code="restaurant_opening")
    out = whole_numbers(mf, {"seats": 49.0, "business_area_m2": 80.0, "shop_name": "1.0"})
    assert out == {"seats": 49, "business_area_m2": 80.0, "shop_name": "1.0"} and type(out["seats"]) is int
    assert whole_numbers(mf, {"seats": 49.5})["seats"] == 49.5  # not whole: validate_form refuses it
