"""The intake API fuzzed with schemathesis from its own OpenAPI document — the short form of
`onething fuzz` (infra/fuzz.py), against the app in-process and the suite's real broker and database.

What it pins down: each bundle's merged form is published as a JSON Schema the API agrees with
(what the schema admits is accepted, what it refuses is refused with its field and why), and so is
each register write's body (producers/register_schema.py, against the register rules); a few
hundred generated requests over every route × role (100; 300 at ONETHING_TEST_SCALE=long) get no
5xx, leak nothing of another subject and are refused in the API's error shape; generated
applications (25; 100 long) are accepted and dispatch turns every one into tasks, generated
register writes (24; 60 long) are accepted and every change reaches every department keeping one
of its fields (a cascade and register-copy adapters of this run), with no dead letter.
`onething fuzz` is the full run (10,000 requests).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import jsonschema_rs
import psycopg
import pytest
import schemathesis
from fastapi.testclient import TestClient

from catalog.loader import load_catalog
from catalog.subscriptions import load_subscriptions
from infra import fuzz_follow
from infra.fast_forward import end_offsets, store_offsets
from infra.fuzz_engine import Engine, fuzz_document
from infra.fuzz_world import ROLES, Caller, KnownCase, World
from infra.topics import REGISTRY_COMPANY, REGISTRY_PERSON, decisions_topic
from producers import identity
from producers.api_form_schema import available_bundles
from producers.intake_api import create_app
from producers.register_changes import COMPANY, KINDS, ChangeRefused, RegisterRecord, validate_change
from producers.register_schema import ENTITY_USCC, MARKET_USCC
from projectors.cascade import Cascade
from projectors.cascade_processor import CascadeConfig
from tests.support.api_role import api_settings
from tests.support.cascade_harness import AdapterThreads, company_fields, new_uscc
from tests.support.fast_forward import skip_history
from tests.support.scale import scaled
from tests.test_intake_api import retirement_request, ZHANG

ROOT = Path(__file__).resolve().parent.parent
CATALOG = load_catalog()
SUBS = load_subscriptions()
APPLICATIONS = scaled(100, 25)
REGISTERS = scaled(60, 24)         # register writes made acceptable (companies first, then what acts on them)
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


def register_body(doc: dict, name: str):
    return jsonschema_rs.Draft202012Validator({"components": doc["components"],
                                               "$ref": f"#/components/schemas/{name}"})


def test_each_register_write_is_a_request_body_of_its_own(document):
    paths = document["paths"]
    for path, name in (("/api/v1/registers/company", "CompanyRegistrationIn"),
                       ("/api/v1/registers/company/{uscc}/changes", "CompanyChangeIn"),
                       ("/api/v1/registers/company/{uscc}/deregistration", "DeregistrationIn"),
                       ("/api/v1/registers/company/{uscc}/conversion", "ConversionIn"),
                       ("/api/v1/registers/person/household-moves", "HouseholdMoveIn"),
                       ("/api/v1/registers/person/deaths", "DeathIn")):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{name}"}
    schemas = document["components"]["schemas"]
    registration = schemas["CompanyRegistrationIn"]["oneOf"]
    assert [b["properties"]["uscc"]["format"] for b in registration] == [ENTITY_USCC[c] for c in "123"]
    fields = registration[0]["properties"]["fields"]
    assert set(fields["required"]) == KINDS[(COMPANY, "registered")].required
    assert fields["additionalProperties"] is False
    assert "individual_business" not in fields["properties"]["company_type"]["enum"]
    assert [b["properties"]["fields"]["properties"]["company_type"]["enum"] for b in registration[1:]] == [
        ["individual_business"], ["cooperative"]]
    assert fields["properties"]["legal_representative_resident_id"]["format"] == "gb11643-resident-id"
    assert fields["properties"]["established_on"]["format"] == "past-date"
    assert fields["properties"]["name"]["maxLength"] == 100
    changes = schemas["CompanyChangeIn"]["properties"]["changes"]
    assert changes["minProperties"] == 1 and changes["dependentRequired"] == {
        "legal_representative_name": ["legal_representative_resident_id"],
        "legal_representative_resident_id": ["legal_representative_name"]}
    def uscc_of(path: str) -> dict:
        return next(p["schema"] for p in paths[path]["post"]["parameters"] if p["name"] == "uscc")

    assert uscc_of("/api/v1/registers/company/{uscc}/conversion")["format"] == ENTITY_USCC["2"]
    assert uscc_of("/api/v1/registers/company/{uscc}/changes")["format"] == MARKET_USCC
    death = schemas["DeathIn"]
    assert death["required"] == ["resident_id", "date_of_death"]
    assert schemas["HouseholdMoveIn"]["properties"]["household_region_code"]["format"] == "gb2260-region-code"


def test_a_register_schema_admits_what_the_rules_accept_and_refuses_what_they_refuse(document):
    rng = random.Random(7)
    uscc, fields = new_uscc(rng), company_fields(rng)
    check = register_body(document, "CompanyRegistrationIn")
    assert check.is_valid({"uscc": uscc, "fields": fields})
    validate_change(COMPANY, "registered", fields, raw_key=uscc)
    for broken in ({**fields, "registered_capital": 12}, {**fields, "registered_capital": "0"},
                   {**fields, "registered_capital": "10000000.5"}, {**fields, "company_type": "cooperative"},
                   {**fields, "established_on": "2020-1-1"}, {**fields, "name": "   "},
                   {**fields, "status": "active"}, {k: v for k, v in fields.items() if k != "address"}):
        assert not check.is_valid({"uscc": uscc, "fields": broken}), broken
        with pytest.raises(ChangeRefused):
            validate_change(COMPANY, "registered", broken, raw_key=uscc)
    # a check character is the format's to say (the fuzzer's generator draws valid ones); the rules refuse it
    rid = fields["legal_representative_resident_id"]
    wrong = {**fields, "legal_representative_resident_id": rid[:17] + ("0" if rid[17] != "0" else "1")}
    with pytest.raises(ChangeRefused):
        validate_change(COMPANY, "registered", wrong, raw_key=uscc)
    change = register_body(document, "CompanyChangeIn")
    current = RegisterRecord(COMPANY, uscc, 1, {**fields, "status": "active"})
    assert change.is_valid({"changes": {"registered_capital": "8888.5"}})
    validate_change(COMPANY, "changed", {"registered_capital": "8888.5"}, raw_key=uscc, current=current)
    for broken in ({}, {"legal_representative_name": "赵六"}, {"deregistered_on": "2020-01-01"}):
        assert not change.is_valid({"changes": broken}), broken
        with pytest.raises(ChangeRefused):
            validate_change(COMPANY, "changed", broken, raw_key=uscc, current=current)


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


class RegisterFlow:
    """A cascade of this run (its own name, from where the logs ended before the fuzz) and a
    register-copy adapter per subscribing department (groups of this run) answering only the sync
    tasks of the keys the fuzz's accepted register writes named. Started once the fuzz has drawn
    its last request: their Kafka clients' use of `random` in threads beside Hypothesis's draws
    would be "random inside strategies" to it, and every key is known by then."""

    def __init__(self, bootstrap: str, database_url: str):
        self.bootstrap, self.database_url = bootstrap, database_url
        self.run = uuid.uuid4().hex[:8]
        self.config = CascadeConfig(name=f"cascade.fuzz-{self.run}", start="latest", ack_timeout_s=5.0, tick_s=0.25)
        topics = [REGISTRY_COMPANY, REGISTRY_PERSON, *(decisions_topic(d) for d in SUBS.departments())]
        with psycopg.connect(database_url, autocommit=True) as conn:
            store_offsets(conn, self.config.name, end_offsets(bootstrap, topics))
        self.cascade: Cascade | None = None
        self.adapters: AdapterThreads | None = None
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, keys: set[str]) -> None:
        # the adapters first: they start at the end of the task topics, before the cascade sends
        self.adapters = AdapterThreads(self.bootstrap, self.database_url, SUBS.departments(), f"fuzz-{self.run}",
                                       keys).start()
        self.cascade = Cascade(self.bootstrap, self.database_url, self.config)
        self.thread = threading.Thread(target=self.cascade.run, args=(self.stopping.is_set,), daemon=True,
                                       name="fuzz-cascade")
        self.thread.start()

    def close(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(15)
        if self.adapters is not None:
            self.adapters.stop()
        if self.cascade is not None:
            self.cascade.close()


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
    flow = RegisterFlow(bootstrap, database_url)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            schema = schemathesis.openapi.from_dict(fuzz_document(client.get("/openapi.json").json()))
            engine = Engine(client, schema, CATALOG, seed_value=13)
            figures = engine.run(APPLICATIONS + REGISTERS + CELL_REQUESTS, APPLICATIONS, REGISTERS)
            refused = client.post("/api/v1/registers/company", headers=register_token(), json={
                "uscc": new_uscc(random.Random(3)), "fields": {**company_fields(random.Random(3)),
                                                               "registered_capital": 12}})
        flow.start(engine.world.register_keys)
        report = fuzz_follow.follow(bootstrap, starts, figures.accepted, timeout_s=90, groups=False,
                                    register_changes=engine.world.register_changes, until="applied")
    finally:
        stop(proc)
        flow.close()
    log_tail = (tmp_path / "dispatch.log").read_text(errors="replace")[-2000:]
    assert figures.server_errors == [] and figures.leaks == [] and figures.bad_refusals == []
    assert figures.generated >= APPLICATIONS + REGISTERS + CELL_REQUESTS
    routes = {route for route, _role in figures.sent}
    assert len(routes) == len(engine.operations), "every operation was fuzzed"
    assert {role for _route, role in figures.sent} == set(ROLES)
    assert len(figures.accepted) >= 0.9 * APPLICATIONS, figures.refusals.most_common(5)
    assert report.missing == 0, f"{report.missing} accepted applications not dispatched\n{log_tail}"
    assert report.dead_letters == [], report.dead_letters[:5]
    # register writes: most of those made acceptable are accepted, and every accepted change reached
    # every department that keeps one of its fields (the cascade and the adapters of this run)
    accepted = sum(figures.register_accepted.values())
    assert figures.register_writes >= REGISTERS and accepted >= 1
    assert accepted >= 0.7 * figures.register_writes, [r for r in figures.refusals.most_common()
                                                       if "registers" in r[0][0]]
    assert len(report.register_changes) >= accepted
    assert report.register_missing == 0, (f"{report.register_missing} register changes not applied everywhere: "
                                          f"{len(report.register_reached('logged'))} logged, "
                                          f"{len(report.register_reached('sent'))} sent")
    # refused input is refused with the field and the reason, never a 5xx
    assert any(code not in ("auth.required", "auth.invalid") for (_r, code) in figures.refusals)
    # … and a register write the schema refuses still gets the register rules' own problem, not pydantic's
    assert refused.status_code == 422 and refused.json()["errors"][0]["path"] == "changes.registered_capital"
    assert refused.json()["errors"][0]["code"] == "text.not_text"


def register_token() -> dict[str, str]:
    return {"Authorization": "Bearer " + identity.issue_token("register:fuzz-test", "register", "register",
                                                              staff_id="R-1")}



def test_an_integer_spelled_as_a_whole_float_is_the_integer():
    """schemathesis sends `49.0` for an integer field (JSON has one number type): the API reads 49."""
    from producers.api_forms import whole_numbers

    mf = CATALOG.merged_form(bundle_code="restaurant_opening")
    out = whole_numbers(mf, {"seats": 49.0, "business_area_m2": 80.0, "shop_name": "1.0"})
    assert out == {"seats": 49, "business_area_m2": 80.0, "shop_name": "1.0"} and type(out["seats"]) is int
    assert whole_numbers(mf, {"seats": 49.5})["seats"] == 49.5  # not whole: validate_form refuses it
