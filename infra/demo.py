"""`onething demo`: the whole system on this machine, four newborn applications, live progress.

The four cases show the paths the reform is about: one complete application (every service
approved, outputs flowing from the hospital to the police to social security); one accepted
with a promised material (容缺) whose correction request (补正) is answered through the API;
one rejected by a department (its dependants are blocked, the rest completes); one withdrawn
(its pending tasks cancelled at the departments). Then 一办即评 and 办不成事: the complete case is
rated, the applicant of the rejected one reports it to the supervisor queue and rates it 不满意,
which opens rectification tasks for the health department.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import date, timedelta

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .settings import Settings
from .supervisor import StopFailed, Supervisor, system

console = Console()
TERMINAL = {"completed", "withdrawn"}
REJECTING_HOSPITAL = "未备案的私人诊所"


@dataclass
class DemoCase:
    title: str
    person: str
    case_id: str = ""
    status_url: str = ""
    token: str = ""
    view: dict | None = None
    supplemented: bool = False


def demo_env(processing_s: float = 0.8) -> dict[str, str]:
    """Simulated departments slow enough to watch, and the health department's rejection rule, with
    the code of its reason list (catalog/data/reasons.yaml) the status page shows in zh and en."""
    rule = {"service": "health.birth_certificate", "field": "birth_hospital", "equals": REJECTING_HOSPITAL,
            "reason_code": "hospital_not_registered"}
    return {
        "ONETHING_SIM_PROCESSING_S": str(processing_s),
        "ONETHING_SIM_HEALTH_REJECT": json.dumps([rule], ensure_ascii=False),
    }


def _wait_api(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the intake API did not answer on {base}")


def _submit(client: httpx.Client, case: DemoCase, *, hospital: str, promise_discharge: bool) -> None:
    from producers import e_license, identity

    person = e_license.DEMO_PEOPLE[case.person]
    case.token = identity.applicant_token(person.resident_id)
    auth = {"Authorization": f"Bearer {case.token}"}
    form = client.get("/api/v1/bundles/newborn/form", headers=auth).json()
    values = {f["id"]: f["value"] for f in form["fields"] if f["value"] is not None}
    values.update({
        "child_name": "小满", "child_sex": "female", "birth_date": (date.today() - timedelta(days=2)).isoformat(),
        "birth_hospital": hospital, "contact_mobile": "13800138000", "bank_name": "中国工商银行",
        "bank_account_no": "6222020200112233445", "registration_parent": "mother",
    })
    values.setdefault("father_known", False)
    values.setdefault("parents_married", False)
    for key in ("household_address", "residence_address", "mailing_address"):
        values.setdefault(key, person.address)
    values.setdefault("region_code", person.region_code)
    invoice = client.post("/api/v1/documents", content=b"%PDF-1.4 demo invoice", headers=auth
                          | {"Content-Type": "application/pdf"}).json()["ref"]
    materials = {"medical_invoice": {"source": "uploaded", "ref": invoice}}
    if promise_discharge:
        materials["discharge_summary"] = {"source": "promised"}
    else:
        summary = client.post("/api/v1/documents", content=b"%PDF-1.4 demo discharge summary",
                              headers=auth | {"Content-Type": "application/pdf"}).json()["ref"]
        materials["discharge_summary"] = {"source": "uploaded", "ref": summary}
    r = client.post("/api/v1/applications", json={"bundle_code": "newborn", "form": values, "materials": materials},
                    headers=auth | {"Idempotency-Key": f"demo-{case.person}-{time.time_ns()}"})
    if r.status_code != 202:
        raise RuntimeError(f"submission refused ({r.status_code}): {r.text[:500]}")
    body = r.json()
    case.case_id, case.status_url = body["case_id"], body["status_url"]


def _refresh(client: httpx.Client, case: DemoCase) -> None:
    r = client.get(f"/api/v1/cases/{case.case_id}", headers={"Authorization": f"Bearer {case.token}"})
    if r.status_code == 200:
        case.view = r.json()


def _supplement(client: httpx.Client, case: DemoCase) -> None:
    auth = {"Authorization": f"Bearer {case.token}"}
    ref = client.post("/api/v1/documents", content=b"%PDF-1.4 the discharge summary, supplied",
                      headers=auth | {"Content-Type": "application/pdf"}).json()["ref"]
    r = client.post(f"/api/v1/cases/{case.case_id}/materials",
                    json={"materials": {"discharge_summary": {"source": "uploaded", "ref": ref}}}, headers=auth)
    r.raise_for_status()
    case.supplemented = True


def _oversight(client: httpx.Client, cases: list[DemoCase], timeout_s: float = 30) -> None:
    """一办即评 and 办不成事 on the finished cases: the complete one is rated 非常满意; the applicant
    whose birth certificate was refused reports it (办不成事) and rates 不满意, which sends a
    rectification task to the health department (the 牵头部门 of 新生儿出生)."""
    complete, _, rejected, _ = cases
    for case, body in ((complete, {"grade": "very_satisfied"}),
                       (rejected, {"grade": "dissatisfied", "comment": "出生医学证明被退回，原因不清楚",
                                   "services": [{"service_id": "health.birth_certificate",
                                                 "grade": "very_dissatisfied"}]})):
        client.post(f"/api/v1/cases/{case.case_id}/rating", json=body,
                    headers={"Authorization": f"Bearer {case.token}"})
    client.post(f"/api/v1/cases/{rejected.case_id}/escalations",
                json={"reason": "rejected", "service_id": "health.birth_certificate",
                      "comment": "医院已备案，请核实"}, headers={"Authorization": f"Bearer {rejected.token}"})
    deadline = time.monotonic() + timeout_s
    with console.status("好差评 and 办不成事: rating two cases, reporting the refused certificate…"):
        while time.monotonic() < deadline:
            for c in (complete, rejected):
                _refresh(client, c)
            v = rejected.view or {}
            if (complete.view or {}).get("rating") and v.get("escalations") and \
                    len((v.get("rating") or {}).get("rectifications") or ()) >= 2:
                break
            time.sleep(1)
    table = Table(title="好差评 · 办不成事 (ratings and escalations)", expand=True)
    table.add_column("case")
    table.add_column("评价 rating")
    table.add_column("整改 rectifications")
    table.add_column("办不成事 escalations")
    for c in (complete, rejected):
        v = c.view or {}
        rating = v.get("rating") or {}
        rects = ", ".join(f"{r['department']}: {r['status']} (due {r['due_date']})" for r in rating.get("rectifications") or ())
        escs = ", ".join(f"{e['reason']}: {e['status']} (reply by {e['reply_due']})" for e in v.get("escalations") or ())
        table.add_row(c.title, (rating.get("grade_label") or {}).get("zh", "—"), rects or "—", escs or "—")
    console.print(table)


def _table(cases: list[DemoCase], base: str) -> Table:
    table = Table(title="新生儿出生一件事 — live status (每个事项的进度)", expand=True)
    table.add_column("case")
    table.add_column("状态 status")
    table.add_column("services: approved / all")
    table.add_column("waiting for")
    for c in cases:
        v = c.view or {}
        services = v.get("services", [])
        approved = sum(1 for s in services if s["status"] == "approved")
        waiting = ", ".join(sorted({s["department"] for s in services if s["status"] in ("dispatched", "accepted")}))
        missing = ", ".join(m["label"]["zh"] for m in v.get("missing", []))
        status = v.get("status", "submitted")
        table.add_row(c.title, f"{status}" + (f" (缺: {missing})" if missing else ""),
                      f"{approved} / {len(services)}", waiting or "—")
    return table


def run_demo(settings: Settings, *, exit_when_done: bool, timeout_s: float = 600, processing_s: float = 0.8,
             before_start=None) -> tuple[bool, list[DemoCase]]:
    """`before_start(settings)` runs once the stack is up, before any process starts (tests use it).
    SIGTERM, SIGINT (also in the background, where a shell ignores it) and SIGHUP end the demo and
    stop every process; raises StopFailed when one of them had to be killed or stopped with an error."""
    from . import stack

    with console.status("bringing the stack up (Kafka, PostgreSQL, topics)…"):
        stack.up(settings)
    if before_start:
        before_start(settings)
    sup: Supervisor = system(settings.home / "logs", env=demo_env(processing_s))
    prom = None
    import os

    base = f"http://{os.environ.get('ONETHING_API_HOST', '127.0.0.1')}:{os.environ.get('ONETHING_API_PORT', '8000')}"
    ok = False
    cases: list[DemoCase] = []
    sup.stop_on_signals(interrupt=True)   # the demo's loops wait on HTTP and sleeps: the signal interrupts them
    try:
        sup.start()
        if not exit_when_done:  # the SRE's view of the running demo, stopped with it
            from . import prometheus_local

            prom = prometheus_local.for_system(settings, sup)
        with console.status("starting the intake API, dispatch, case view and six department adapters…"):
            _wait_api(base)
        cases += [DemoCase("complete 齐全", "wang_fang"), DemoCase("容缺→补正 correction", "chen_jing"),
                 DemoCase("rejected 不予受理", "liu_li"), DemoCase("withdrawn 撤回", "wang_fang")]
        with httpx.Client(base_url=base, timeout=30) as client:
            _submit(client, cases[0], hospital="韶关市妇幼保健院", promise_discharge=False)
            _submit(client, cases[1], hospital="韶关市妇幼保健院", promise_discharge=True)
            _submit(client, cases[2], hospital=REJECTING_HOSPITAL, promise_discharge=False)
            _submit(client, cases[3], hospital="韶关市妇幼保健院", promise_discharge=False)
            withdrawn = False
            deadline = time.monotonic() + timeout_s
            with Live(_table(cases, base), console=console, refresh_per_second=2) as live:
                while time.monotonic() < deadline:
                    for c in cases:
                        _refresh(client, c)
                    if not withdrawn:
                        r = client.post(f"/api/v1/cases/{cases[3].case_id}/withdraw", json={"reason": "demo"},
                                        headers={"Authorization": f"Bearer {cases[3].token}"})
                        withdrawn = r.status_code == 202
                    c = cases[1]
                    if c.view and c.view.get("status") == "awaiting_applicant" and not c.supplemented:
                        _supplement(client, c)
                    live.update(_table(cases, base))
                    if all(c.view and c.view.get("status") in TERMINAL for c in cases):
                        ok = True
                        break
                    sup.check()
                    time.sleep(1)
            if ok:
                _oversight(client, cases)
        console.print("\n[bold]Status pages[/bold] (open in a browser while the demo runs):")
        for c in cases:
            console.print(f"  {c.title}: {base}{c.status_url}")
        from producers import identity

        supervisor = identity.supervisor_token("demo-supervisor")  # a staff login: 8 hours at most
        console.print(f"  办不成事督办台 (supervisor queue): {base}/supervisor#token={supervisor}")
        console.print(f"  晴雨表 (KPIs): {base}/kpis#token={supervisor}")
        console.print(f"\nlogs: {settings.home / 'logs'}   metrics: /metrics on the API and ports 9400+")
        if prom is not None:
            console.print(f"Prometheus: {prom.url} (alerts: {prom.url}/alerts); Grafana dashboard to import: "
                          "infra/grafana/onething-dashboard.json")
        console.print("[green]every case reached its end[/green]" if ok else "[red]timed out before every case ended[/red]")
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
            if prom is not None:
                prom.down()
    if problems:
        raise StopFailed(problems)
    return ok, cases
