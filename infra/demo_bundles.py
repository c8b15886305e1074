"""`onething demo --bundle CODE` (repeatable) and `onething demo --all`: realistic applications of any
bundle (一件事), submitted through the intake API like a citizen's browser would — the served
form, filled plausibly (infra/demo_forms.py), its uploads, its e-licences fetched — and their
progress shown live, as the newborn demo shows its four cases (infra/demo.py, still the default).

Each bundle's application is filed by a demo person it fits (a mother for 新生儿出生, a retiree for
退休, a legal representative for a company's bundles). The system runs every process of
`onething run`, with the adapters of every department the chosen bundles need: a bundle whose
department has no adapter would wait for ever, and the table says which department it waits for.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.live import Live
from rich.table import Table

from .demo import TERMINAL, _wait_api, console
from .demo_forms import PEOPLE_BY_BUNDLE, Applicant, fill_form, materials_plan, person_for
from .settings import Settings
from .supervisor import StopFailed, Supervisor, demo_departments, system


@dataclass
class BundleCase:
    bundle: str
    label: str
    person: str
    case_id: str = ""
    status_url: str = ""
    token: str = ""
    view: dict | None = None
    refused: list[dict[str, Any]] = field(default_factory=list)   # the API's 422 errors, if it refused
    submitted_at: float = 0.0
    ended_at: float | None = None


def chosen_bundles(catalog, codes: list[str] | None, every: bool) -> list[str]:
    """The bundles to demo: `--all` every modelled one, else those named; an unknown or unmodelled
    code is an error naming it and the codes that can be chosen."""
    available = [c for c, b in catalog.bundles.items() if b.modelled and b.members]
    if every:
        return available
    wrong = [c for c in codes or () if c not in available]
    if wrong:
        raise ValueError(f"no modelled bundle {', '.join(map(repr, wrong))}; choose from: {', '.join(available)}")
    return list(dict.fromkeys(codes or ()))


def departments_for(catalog, bundles: list[str]) -> list[str]:
    needed = {catalog.services[s].department for b in bundles for s in catalog.select(bundle_code=b).services}
    return sorted(needed | set(demo_departments()))


#: who files the bundles that no particular person fits, in turn: one person filing 29 applications
#: in a minute is neither realistic nor allowed (the API's per-subject submission rate)
ROTATION = ("zhao_min", "chen_jing", "li_qiang", "zhang_wei", "liu_li", "wang_fang")


def applicants(bundles: list[str]) -> list[tuple[str, str]]:
    """(bundle, demo person) for each bundle: the person it fits, else the next in turn."""
    out, turn = [], 0
    for b in bundles:
        who = person_for(b)
        if b not in PEOPLE_BY_BUNDLE:
            who, turn = ROTATION[turn % len(ROTATION)], turn + 1
        out.append((b, who))
    return out


def _post(client: httpx.Client, path: str, tries: int = 4, **kw) -> httpx.Response:
    """POST, waiting out a 429 (Retry-After) a few times: the demo files faster than people do."""
    for _ in range(tries - 1):
        r = client.post(path, **kw)
        if r.status_code != 429:
            return r
        time.sleep(min(float(r.headers.get("Retry-After") or 5), 30))
    return client.post(path, **kw)


def submit(client: httpx.Client, case: BundleCase) -> None:
    """One application of `case.bundle`, as a client of the API: the served form, filled, sent."""
    from producers import e_license, identity

    person = e_license.DEMO_PEOPLE[case.person]
    case.token = identity.applicant_token(person.resident_id)
    auth = {"Authorization": f"Bearer {case.token}"}
    form = client.get(f"/api/v1/bundles/{case.bundle}/form", headers=auth).json()
    applicant = Applicant(person.name, person.resident_id, person.address, person.region_code, person.birth_date)
    values = fill_form(form, applicant)
    materials: dict[str, Any] = {}
    for mid, how in materials_plan(form, values).items():
        if how == "fetched":
            continue  # the API fetches every e-licence the form needs
        if how == "promised":
            materials[mid] = {"source": "promised"}
            continue
        r = _post(client, "/api/v1/documents", content=f"%PDF-1.4 demo {mid}".encode(),
                  headers=auth | {"Content-Type": "application/pdf"})
        materials[mid] = {"source": "uploaded", "ref": r.json()["ref"]}
    r = _post(client, "/api/v1/applications", json={"bundle_code": case.bundle, "form": values, "materials": materials},
              headers=auth | {"Idempotency-Key": f"demo-{case.bundle}-{time.time_ns()}"})
    case.submitted_at = time.monotonic()
    if r.status_code != 202:
        case.refused = r.json().get("errors", []) if r.headers.get("content-type", "").startswith("application/json") \
            else [{"path": "", "code": str(r.status_code), "message_zh": r.text[:200], "message_en": r.text[:200]}]
        return
    body = r.json()
    case.case_id, case.status_url = body["case_id"], body["status_url"]


def refresh(client: httpx.Client, case: BundleCase) -> None:
    if not case.case_id:
        return
    r = client.get(f"/api/v1/cases/{case.case_id}", headers={"Authorization": f"Bearer {case.token}"})
    if r.status_code == 200:
        case.view = r.json()
        if case.view.get("status") in TERMINAL and case.ended_at is None:
            case.ended_at = time.monotonic()


def ended(case: BundleCase) -> bool:
    return bool(case.refused) or bool(case.view and case.view.get("status") in TERMINAL)


def table(cases: list[BundleCase]) -> Table:
    t = Table(title="一件事 — live status (每个一件事的办理进度)", expand=True)
    t.add_column("一件事 bundle")
    t.add_column("状态 status")
    t.add_column("services: approved / all")
    t.add_column("waiting for")
    t.add_column("time")
    for c in cases:
        if c.refused:
            t.add_row(c.label, "[red]refused by the API[/red]", "—",
                      "; ".join(f"{e['path']}: {e['code']}" for e in c.refused[:3]), "—")
            continue
        v = c.view or {}
        services = v.get("services", [])
        approved = sum(1 for s in services if s["status"] == "approved")
        waiting = ", ".join(sorted({s["department"] for s in services if s["status"] in ("dispatched", "accepted")}))
        status = (v.get("status_label") or {}).get("zh") or v.get("status", "submitted")
        missing = ", ".join(m["label"]["zh"] for m in v.get("missing", []))
        took = (c.ended_at or time.monotonic()) - c.submitted_at if c.submitted_at else 0
        t.add_row(c.label, status + (f" (缺: {missing})" if missing else ""), f"{approved} / {len(services)}",
                  waiting or "—", f"{took:.0f}s")
    return t


def run(settings: Settings, bundles: list[str], *, exit_when_done: bool, timeout_s: float = 600,
        processing_s: float = 0.8, before_start=None) -> tuple[bool, list[BundleCase]]:
    """Bring the stack up, start every process, submit one application of each bundle and follow
    them until each has ended (or `timeout_s`); stops every process (StopFailed if one had to be killed)."""
    from catalog.loader import load_catalog

    from . import stack

    catalog = load_catalog()
    with console.status("bringing the stack up (Kafka, PostgreSQL, topics)…"):
        stack.up(settings)
    if before_start:
        before_start(settings)
    sup: Supervisor = system(settings.home / "logs", departments=departments_for(catalog, bundles),
                             env={"ONETHING_SIM_PROCESSING_S": str(processing_s)})
    base = f"http://{os.environ.get('ONETHING_API_HOST', '127.0.0.1')}:{os.environ.get('ONETHING_API_PORT', '8000')}"
    cases = [BundleCase(b, f"{catalog.bundles[b].label.zh} ({b})", who) for b, who in applicants(bundles)]
    ok = False
    sup.stop_on_signals(interrupt=True)
    try:
        sup.start()
        with console.status(f"starting every process, with the adapters of {len(departments_for(catalog, bundles))} "
                            "departments…"):
            _wait_api(base)
        with httpx.Client(base_url=base, timeout=30) as client:
            for c in cases:
                submit(client, c)
            deadline = time.monotonic() + timeout_s
            with Live(table(cases), console=console, refresh_per_second=2) as live:
                while time.monotonic() < deadline:
                    for c in cases:
                        refresh(client, c)
                    live.update(table(cases))
                    if all(ended(c) for c in cases):
                        ok = not any(c.refused for c in cases)
                        break
                    sup.check()
                    time.sleep(1)
        console.print("\n[bold]Status pages[/bold] (open in a browser while the demo runs):")
        for c in cases:
            if c.status_url:
                console.print(f"  {c.label}: {base}{c.status_url}")
        for c in cases:
            for e in c.refused:
                console.print(f"  [red]{c.label} refused[/red]: {e['path']}: {e['message_en']}")
        console.print("[green]every application reached its end[/green]" if ok
                      else "[red]not every application reached its end[/red]")
        if not exit_when_done:
            console.print("serving until Ctrl-C …")
            while True:
                sup.check()
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping every process…"):
            problems = sup.stop()
    if problems:
        raise StopFailed(problems)
    return ok, cases
