"""The API fuzzer's engine: schemathesis draws the requests from the OpenAPI document, the world
(infra/fuzz_world.py) says who sends them and what they name, and every answer is checked.

Three kinds of generated request:
- **applications**: a body drawn from the bundle's published JSON Schema (producers/api_form_schema.py)
  made into one that can be accepted, as a client would make it: sent as the person whose resident
  ID the form says is the applicant's own (or by a clerk naming that person), each material it says
  is uploaded uploaded first by the same caller (so its `ref` is theirs), and the e-licences its
  form needs uploaded as scans (the synthetic people hold none in the library);
- **register writes** (一处变更): a body drawn from the route's published JSON Schema
  (producers/register_schema.py) made into one that can be accepted, as the register's own client
  would make it: sent with a register token, its path naming a company the fuzz registered that
  may take the change (an individual business for 个转企), its dates not before that company's
  establishment, a person or a new code no write named yet (Hypothesis repeats values);
- **cells**: every operation × every role, positive and negative data alike, its path naming a
  known case, department, bundle or harvested id most of the time.

Checks on every answer: no 5xx; no leak (the world's rule); every refusal in the API's error shape
with a code and a sentence for each error. Requests go through any httpx client: a real server's
(`onething fuzz`) or a Starlette TestClient around the app (tests/test_api_fuzz.py).
"""
from __future__ import annotations

import json
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import httpx
import structlog
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException

from catalog.model import Catalog
from producers import identity
from producers.api_catalog import ordered_departments
from producers.api_forms import needed

from .fuzz_world import REGISTER_PREFIX, ROLES, Caller, KnownCase, World, register_formats

log = structlog.get_logger("infra.fuzz")
SUBMIT = ("POST", "/api/v1/applications")
#: the form fields that must be the logged-in applicant's own resident ID (producers/api_forms.py)
IDENTITY_FIELDS = ("applicant_resident_id", "guardian_resident_id")
#: routes the OpenAPI document leaves out (pages, the document itself): fuzzed all the same
PAGES = {"/status/{case_id}": [{"name": "case_id", "in": "path", "required": True, "schema": {"type": "string"}}],
         "/supervisor": [], "/kpis": [], "/metrics": [], "/openapi.json": [], "/docs": [], "/redoc": [],
         "/docs/oauth2-redirect": []}
PDF = b"%PDF-1.4\n% onething fuzz: a synthetic document\n"
#: the register writes made acceptable, by route, with their share of the register budget: companies
#: are registered first (the others act on them), individual businesses are converted, people move and die
REGISTER_WRITES = {"company": 4, "company/{uscc}/changes": 2, "company/{uscc}/conversion": 1,
                   "person/household-moves": 2, "person/deaths": 1, "company/{uscc}/deregistration": 1}


def fuzz_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The API's OpenAPI document with its unlisted GET pages added, so they are fuzzed too."""
    doc = json.loads(json.dumps(doc))
    for path, params in PAGES.items():
        doc["paths"].setdefault(path, {"get": {"parameters": params, "responses": {"200": {"description": "page"}}}})
    return doc


@dataclass
class Figures:
    """What a run sent and got: per (route, role) and status; what it found."""
    sent: Counter = field(default_factory=Counter)          # (method route, role) → generated requests
    statuses: Counter = field(default_factory=Counter)      # (method route, status) → count
    helpers: Counter = field(default_factory=Counter)       # uploads made for applications, by status
    accepted: list[str] = field(default_factory=list)       # case ids of accepted applications
    applications: int = 0                                   # application submissions made acceptable
    register_writes: int = 0                                # register writes made acceptable
    register_accepted: Counter = field(default_factory=Counter)  # … of which accepted (202), by route
    accepted_writes: Counter = field(default_factory=Counter)  # other 2xx writes, by route
    refusals: Counter = field(default_factory=Counter)      # (method route, error code) → 4xx answers
    server_errors: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    bad_refusals: list[str] = field(default_factory=list)
    transport_errors: Counter = field(default_factory=Counter)
    unsatisfiable: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def generated(self) -> int:
        return sum(self.sent.values())

    @property
    def ok(self) -> bool:
        return not (self.server_errors or self.leaks or self.bad_refusals)


def refusal_problem(route: str, response: httpx.Response) -> str | None:
    """A 4xx of the API must say what is wrong: {"errors": [{"path", "code", "message_en", …}]}."""
    if not (400 <= response.status_code < 500) or not route.startswith("/api/"):
        return None
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError):
        return f"{response.status_code} without a JSON error body"
    if not isinstance(errors, list) or not errors:
        return f"{response.status_code} without errors"
    for e in errors:
        if not isinstance(e, dict) or not e.get("code") or not e.get("message_en") or "path" not in e:
            return f"{response.status_code} with an error lacking path, code or message"
    return None


class Engine:
    def __init__(self, client: httpx.Client, schema: Any, catalog: Catalog, *, world: World | None = None,
                 seed_value: int = 0, progress: Callable[[Figures], None] | None = None):
        register_formats()
        self.client, self.schema, self.catalog = client, schema, catalog
        self.world = world or World(tuple(sorted(catalog.departments)),
                                    tuple(c for c, b in catalog.bundles.items() if b.modelled and b.members))
        self.world.rng.seed(seed_value)
        self.seed, self.figures, self.progress = seed_value, Figures(), progress
        self.operations = [op.ok() for op in schema.get_all_operations() if op.ok() is not None]

    # -- sending --------------------------------------------------------------------------------
    def send(self, method: str, route: str, path: str, caller: Caller, *, headers: dict | None = None,
             params: Any = None, body: Any = None, content: bytes | None = None, helper: bool = False
             ) -> httpx.Response | None:
        hdrs = {k: str(v) for k, v in (headers or {}).items() if k.lower() != "authorization"}
        hdrs.update(caller.headers())
        kw: dict[str, Any] = {"headers": hdrs, "params": params}
        if content is None and isinstance(body, (bytes, bytearray)):
            content = bytes(body)  # negative data: a body that is not JSON at all, sent as JSON
            hdrs.setdefault("Content-Type", "application/json")
        if content is not None:
            kw["content"] = content
        elif body is not None:
            kw["content"] = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
            hdrs.setdefault("Content-Type", "application/json")
        label = f"{method} {route}"
        try:
            response = self.client.request(method, path, **kw)
        except (httpx.HTTPError, UnicodeError, ValueError) as exc:  # the client refused to send it
            self.figures.transport_errors[type(exc).__name__] += 1
            return None
        if helper:
            self.figures.helpers[response.status_code] += 1
        else:
            self.figures.sent[(label, caller.role)] += 1
        self.figures.statuses[(label, response.status_code)] += 1
        self.check(label, route, caller, path + json.dumps(params, default=str) + (kw.get("content") or b"").decode(
            "utf-8", "replace"), response)
        return response

    def check(self, label: str, route: str, caller: Caller, request_text: str, response: httpx.Response) -> None:
        f = self.figures
        if response.status_code >= 500:
            f.server_errors.append(f"{label} as {caller.role}: {response.status_code} {response.text[:200]}")
        leaked = self.world.leaks(caller, request_text, response.text)
        if leaked:
            f.leaks.append(f"{label} as {caller.role}: {', '.join(leaked[:5])}")
        problem = refusal_problem(route, response)
        if problem:
            f.bad_refusals.append(f"{label} as {caller.role}: {problem}")
        elif 400 <= response.status_code < 500 and route.startswith("/api/"):
            for code in {e["code"] for e in response.json()["errors"]}:
                f.refusals[(label, code)] += 1
        if 200 <= response.status_code < 300 and response.headers.get("content-type", "").startswith("application/json"):
            try:
                self.world.harvest_from(response.json())
            except ValueError:
                pass

    def upload(self, caller: Caller) -> str | None:
        r = self.send("POST", "/api/v1/documents", "/api/v1/documents", caller, content=PDF, helper=True,
                      headers={"Content-Type": "application/pdf"})
        return r.json().get("ref") if r is not None and r.status_code == 201 else None

    # -- applications ---------------------------------------------------------------------------
    def submit(self, case: Any) -> None:
        """One generated application made acceptable, sent, and remembered when accepted."""
        body = case.body if isinstance(case.body, dict) else None
        if body is None or not isinstance(body.get("form"), dict) or not isinstance(body.get("materials"), dict):
            return self.cell(case, "owner")
        form, code = dict(body["form"]), body.get("bundle_code")
        if code not in self.catalog.bundles:
            return self.cell(case, "owner")
        # the applicant is a new person each time (Hypothesis repeats values; one person's submissions
        # would meet the per-subject rate limit), and the form names them where it asks for them
        rid, subject = self.world.person()
        for fid in IDENTITY_FIELDS:
            if fid in form:
                form[fid] = rid
        clerk = self.world.rng.random() < 0.25
        caller = (self.world.caller("clerk", None) if clerk
                  else Caller("owner", identity.applicant_token(rid), subject, rid))
        body = {**body, "form": form}
        if clerk:
            body["applicant"] = {"resident_id": rid}
        else:
            body.pop("applicant", None)
        mf = self.catalog.merged_form(bundle_code=code)
        materials = dict(body["materials"])
        for fm in mf.fetched:  # synthetic people hold no e-licence: a scan of each one the form needs
            named = materials.get(fm.id)
            if (isinstance(named, dict) and named.get("source") == "fetched") or (named is None and needed(fm, form)):
                materials[fm.id] = {"source": "uploaded", "ref": ""}
        for mid, entry in list(materials.items()):
            if isinstance(entry, dict) and entry.get("source") == "uploaded":
                materials[mid] = {"source": "uploaded", "ref": self.upload(caller) or "upload-failed"}
        body["materials"] = materials
        headers = {"Idempotency-Key": str(uuid.uuid4())} if self.world.rng.random() < 0.5 else {}
        self.figures.applications += 1
        r = self.send("POST", SUBMIT[1], SUBMIT[1], caller, headers=headers, body=body)
        if r is not None and r.status_code == 202:
            accepted = r.json()
            services = self.catalog.merged_form(bundle_code=code).selection.services
            link = accepted.get("status_url", "").partition("#token=")[2] or None
            rids = frozenset(v for v in form.values() if isinstance(v, str) and len(v) == 18)
            self.world.remember_case(KnownCase(accepted["case_id"], rid, subject,
                                               tuple(ordered_departments(self.catalog, services)), link,
                                               caller.subject or subject, rids))
            self.figures.accepted.append(accepted["case_id"])

    def run_applications(self, n: int) -> None:
        op = self.schema["/api/v1/applications"]["POST"]
        self._drive(op.as_strategy(), n, self.submit, "applications")

    # -- register writes --------------------------------------------------------------------------
    def register_write(self, case: Any) -> None:
        """One generated register write made acceptable, sent as the register, remembered when accepted."""
        route = case.path
        body = None if type(case.body).__name__ == "NotSet" else case.body
        if not isinstance(body, dict):
            return self.cell(case, "register")
        world = self.world
        company = world.company_for(route) if "{uscc}" in route else None
        uscc = company.uscc if company is not None else (case.path_parameters or {}).get("uscc")
        body = dict(world.fit_register_body(route, company, body))
        if route.startswith(REGISTER_PREFIX + "person/"):
            body["resident_id"] = world.fresh_resident_id()
        elif route == REGISTER_PREFIX + "company":  # of the entity class its company_type fits
            generated = str(body.get("uscc") or "91")
            body["uscc"] = world.fresh_uscc(generated[1] if generated[1:2] in ("1", "2", "3") else "1")
        elif route.endswith("/conversion"):
            body["company_uscc"] = world.fresh_uscc("1")
        headers = {"Idempotency-Key": str(uuid.uuid4())} if world.rng.random() < 0.5 else {}
        path = route.replace("{uscc}", quote(str(uscc), safe="")) if uscc is not None else route
        self.figures.register_writes += 1
        r = self.send("POST", route, path, world.caller("register", None), headers=headers, body=body)
        if r is not None and r.status_code == 202:
            self.figures.register_accepted[f"POST {route}"] += 1
            world.register_accepted(route, uscc, body, r.json())

    def run_registers(self, n: int) -> None:
        if n <= 0:
            return
        total = sum(REGISTER_WRITES.values())
        shares = {tail: max(1, n * weight // total) for tail, weight in REGISTER_WRITES.items()}
        shares["company"] += max(0, n - sum(shares.values()))  # the rest: more companies to act on
        for tail, share in shares.items():
            route = REGISTER_PREFIX + tail
            self._drive(self.schema[route]["POST"].as_strategy(), share, self.register_write,
                        f"register writes {route}")

    # -- every operation × every role ------------------------------------------------------------
    def cell(self, case: Any, role: str) -> None:
        known = self.world.any_case()
        caller = self.world.caller(role, known)
        path_params = {}
        for name, value in (case.path_parameters or {}).items():
            mine = self.world.path_value(name, value, known, caller, case.path)
            path_params[name] = quote(str(mine), safe="") if mine is not value else value
        route = case.path
        path = route.format(**path_params) if path_params else route
        body = None if type(case.body).__name__ == "NotSet" else case.body
        if role == "clerk" and isinstance(body, dict) and known is not None and "{case_id}" in route:
            body = {**body, "applicant": {"resident_id": known.owner_rid}}
        r = self.send(case.method.upper(), route, path, caller, headers=dict(case.headers or {}),
                      params=dict(case.query or {}), body=body)
        if r is not None and 200 <= r.status_code < 300 and case.method.upper() == "POST":
            self.figures.accepted_writes[f"POST {route}"] += 1
            if isinstance(body, dict):
                self.world.harvest_from(body)
            if route.startswith(REGISTER_PREFIX):
                self.world.register_accepted(route, path_params.get("uscc"), body, r.json())

    def strategies(self, op: Any) -> Any:
        from schemathesis import GenerationMode

        out = [op.as_strategy()]
        try:
            out.append(op.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        except Exception:  # an operation with nothing to make invalid
            pass
        return st.one_of(out)

    def run_cells(self, budget: int) -> None:
        # every operation first (each with another role), then every role again, so that even a
        # budget smaller than operations × roles reaches every operation and every role
        ops = list(self.operations)
        self.world.rng.shuffle(ops)
        cells = [(op, ROLES[(i + n) % len(ROLES)]) for i in range(len(ROLES)) for n, op in enumerate(ops)]
        start = self.figures.generated
        rounds = 0
        while self.figures.generated - start < budget and rounds < 20:
            left = budget - (self.figures.generated - start)
            per = max(1, -(-left // len(cells)))
            for op, role in cells:
                if self.figures.generated - start >= budget:
                    break
                self._drive(self.strategies(op), per, lambda c, r=role: self.cell(c, r),
                            f"{op.method.upper()} {op.path} as {role}", round_no=rounds)
            rounds += 1

    def _drive(self, strategy: Any, n: int, body: Callable[[Any], None], what: str, round_no: int = 0) -> None:
        """Draw up to `n` examples (Hypothesis stops early when a space is exhausted)."""
        def one(case: Any) -> None:
            try:
                body(case)
            except Exception as exc:  # the engine's own failure must not stop the run: counted, shown
                last = traceback.extract_tb(exc.__traceback__)[-1]
                where = f"{Path(last.filename).name}:{last.lineno}"
                self.figures.transport_errors[f"engine {type(exc).__name__} at {where}"] += 1
                log.warning("fuzz.engine_error", what=what, error=type(exc).__name__, where=where)
            if self.progress is not None:
                self.progress(self.figures)

        runner = settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
                          suppress_health_check=list(HealthCheck))(given(strategy)(one))
        try:
            seed(self.seed * 1000 + round_no)(runner)()
        except HypothesisException as exc:
            self.figures.unsatisfiable.append(f"{what}: {type(exc).__name__}")

    def run(self, requests: int, applications: int, registers: int = 0) -> Figures:
        started = time.monotonic()
        self.run_applications(applications)
        self.run_registers(registers)
        self.run_cells(max(0, requests - self.figures.generated))
        self.figures.seconds = time.monotonic() - started
        return self.figures
