"""One simulated department backend, driven by the catalog, its `BackendConfig` and `REGISTERS`.

A task flows: availability (outages raise `BackendUnavailable`, which the SDK retries) →
processing time → checks of the task against the catalog (a task that breaks the catalog's
contract is an `InvalidTask`, dead-lettered by the SDK) → rejection rules → corrections
(容缺 materials still promised, materials missing, correction rules) → approval, which issues
a record in the department's register and returns exactly the outputs the catalog says the
service produces. Every decision is `[accepted, <approved | correction_requested | rejected>]`;
a re-dispatch after a supplement is a new task (attempt n+1) and is decided afresh.

Every write goes through the `conn` the SDK passes, inside the SDK's transaction: the
register record, the work item and the SDK's decision record commit together or not at all.

`handle_batch` (the SDK's batch entry point; `handle` is a batch of one) decides a whole batch
with a few round trips: every task is checked and decided first, without the database; the
approved ones' issuing functions run dry to learn which numbers they need, those are taken
set-based (numbers.py), and the records and work items are written in a pipeline.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import psycopg
import structlog

from catalog.loader import load_catalog
from catalog.model import Catalog, Need, Service
from catalog.validators import check_region_code
from department_adapters.sdk import BackendUnavailable, Decision, InvalidTask
from events.envelope import Event

from . import automatic, numbers, registers
from .config import BackendConfig
from .registers import Issue, Record

log = structlog.get_logger(__name__)
DEFAULT_REGION = "440200"  # 韶关市, the demo's city, when a task names no usable region


@dataclass
class BackendStats:
    calls: int = 0          # handle() invocations, including those refused by an outage
    unavailable: int = 0    # … of which refused
    cancelled: int = 0
    decided: Counter = field(default_factory=Counter)  # outcome → count


class SimulatedBackend:
    """A department's backend for the adapter SDK (`department_adapters.sdk.Backend`).

    `department` is the department simulated (its services, its registers). `name` is what the
    SDK knows the backend by — topics `tasks.<name>` / `decisions.<name>`, group
    `adapter.<name>` — and defaults to the department; a different name runs the department
    on topics of its own (tests, a staging lane).
    """

    def __init__(self, department: str, config: BackendConfig | None = None, *, catalog: Catalog | None = None,
                 name: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.catalog = catalog or load_catalog()
        if department not in self.catalog.departments:
            raise ValueError(f"unknown department {department!r}")
        self.simulates = department
        self.department = name or department
        self.config = config or BackendConfig()
        self.clock = clock
        self.started = clock()
        self.stats = BackendStats()
        self._rng = random.Random(self.config.seed)
        self._down = False
        self._registers: dict[str, registers.Register] = {}

    # -- the SDK's interface -----------------------------------------------------------------
    def handle(self, task: Event, conn: psycopg.Connection) -> list[Decision]:
        return self.handle_batch([task], conn)[0]

    def handle_batch(self, tasks: Sequence[Event], conn: psycopg.Connection) -> list[list[Decision]]:
        """Decide `tasks` (the SDK's batch entry point): one list of decisions per task, the
        same as `handle` one task after the other would give, with the batch's numbers taken
        set-based and its records written in a few pipelined statements (a few round trips a
        batch instead of several a task). Any exception fails the whole batch; nothing of it is
        written (the SDK's transaction rolls back)."""
        verdicts: list[tuple[Event, Service, Decision]] = []
        for task in tasks:
            self.stats.calls += 1
            self._check_available()
            p = task.payload
            if p.get("kind") == "register_sync":
                # one change, many updates is the register-copy backend's job (register_copy.ByKind
                # routes it there); answering "applied" here would tell the cascade a lie
                raise InvalidTask("register syncs are not decided by the case-service backend")
            if p.get("kind") == "benefit_grant":
                # 免申即享: executed by the grant backend (grants.py, routed by register_copy.ByKind)
                raise InvalidTask("grants are not decided by the case-service backend")
            svc = self._service(p.get("service_id", ""))
            if self.config.processing_s and svc.auto_decision is None:  # 免批秒办 waits for nobody
                time.sleep(self.config.processing_s)
            verdicts.append((task, svc, self._verdict(svc, p)))
        issues, recorder = self._plan(conn, [(t, svc) for t, svc, v in verdicts if v.outcome == "approved"])
        with conn.pipeline():  # round trips only where a result is needed (the numbers), one for the rest
            issued = iter(self._issue(conn, issues, recorder))
            decided: list[tuple[Event, Service, Decision, str | None]] = []
            for task, svc, verdict in verdicts:
                record_no = None
                if verdict.outcome == "approved":
                    record_no, outputs = next(issued)
                    verdict = Decision("approved", outputs=outputs)
                decided.append((task, svc, verdict, record_no))
            self._record_work(conn, decided)
        out = []
        for task, svc, verdict, _ in decided:
            p = task.payload
            self.stats.decided[verdict.outcome] += 1
            log.info("reference.decided", department=self.simulates, task_id=p["task_id"], service_id=svc.id,
                     attempt=_attempt(p["task_id"]), outcome=verdict.outcome, missing=list(verdict.missing_materials))
            out.append([Decision("accepted"), verdict])
        return out

    def cancel(self, task: Event, conn: psycopg.Connection) -> None:
        """Stop work on the task: the work item is marked cancelled and any record it left in
        the register is voided. (The SDK keeps the task from ever reaching `handle` again.)"""
        p = task.payload
        task_id, sid = p["task_id"], p["service_id"]
        conn.execute(
            "INSERT INTO department_work_items (department, task_id, case_id, service_id, attempt, cancelled_at)"
            " VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (department, task_id) DO UPDATE"
            " SET cancelled_at = now() WHERE department_work_items.cancelled_at IS NULL",
            (self.simulates, task_id, task.key, sid, _attempt(task_id)))
        voided = 0
        if sid in self.catalog.services:
            voided = registers.void(conn, self._register(self.catalog.service(sid)).table, task_id, self.simulates)
        self.stats.cancelled += 1
        log.info("reference.cancelled", department=self.simulates, task_id=task_id, service_id=sid,
                 records_voided=voided)

    # -- availability ------------------------------------------------------------------------
    def _check_available(self) -> None:
        reason = self.config.down_reason(self.clock() - self.started)
        if reason is None and self.config.flaky_rate and self._rng.random() < self.config.flaky_rate:
            reason = "flaky"
        if reason is None:
            if self._down:
                self._down = False
                log.info("reference.backend_up", department=self.simulates)
            return
        self.stats.unavailable += 1
        if not self._down:
            self._down = True
            log.warning("reference.backend_down", department=self.simulates, reason=reason)
        raise BackendUnavailable(f"{self.simulates} backend unavailable ({reason})")

    # -- deciding ------------------------------------------------------------------------------
    def _service(self, sid: str) -> Service:
        svc = self.catalog.services.get(sid)
        if svc is None:
            raise InvalidTask(f"unknown service {sid!r}")
        if svc.department != self.simulates:
            raise InvalidTask(f"service {sid} belongs to {svc.department}, not {self.simulates}")
        return svc

    def _verdict(self, svc: Service, p: Mapping[str, Any]) -> Decision:
        task_fields: dict[str, str] = dict(p.get("fields") or {})
        inputs: dict[str, str] = dict(p.get("inputs") or {})
        typed = {k: True if v == "true" else False if v == "false" else v for k, v in task_fields.items()}
        # the catalog's contract: the merged form was validated and dispatch waits for inputs,
        # so a gap here is a fault upstream, not something the applicant can fix
        for need in svc.fields:
            if _needed(need, typed) and not task_fields.get(need.id):
                raise InvalidTask(f"required field {need.id} is missing from the task")
        for output in svc.consumes:
            if not inputs.get(output):
                raise InvalidTask(f"input {output} (an earlier service's output) is missing from the task")

        for rule in self.config.rejections:
            if rule.applies_to(svc.id) and rule.matches(task_fields):
                return Decision("rejected", reason=rule.reason or self._rejection_text(rule.field),
                                reason_code=rule.reason_code or "not_eligible")

        if svc.auto_decision is not None:
            failed = automatic.failed_condition(svc.auto_decision, typed, inputs)
            if failed is not None:
                return Decision("rejected", reason=automatic.refusal_text(self.catalog, failed),
                                reason_code="not_eligible")

        held = {m["code"]: m.get("source") or "uploaded" for m in p.get("materials") or ()}
        gaps: list[tuple[str, str]] = []   # (material, state)
        reasons: list[str] = []
        codes: list[str] = []
        for need in svc.materials:
            state = held.get(need.id, "missing")
            needed = _needed(need, typed)
            if not needed and state == "missing":
                continue  # not asked of this applicant (e.g. the marriage certificate of unmarried parents)
            hit = needed and ((state == "promised" and self.config.correct_promised)
                              or (state == "missing" and self.config.correct_missing))
            for rule in self.config.corrections:
                if rule.material == need.id and rule.applies_to(svc.id) and rule.triggered_by(state):
                    hit = True
                    if rule.reason and rule.reason not in reasons:
                        reasons.append(rule.reason)
                    if rule.reason_code and rule.reason_code not in codes:
                        codes.append(rule.reason_code)
            if hit:
                gaps.append((need.id, state))
        if gaps:
            default = "promised_material_due" if all(st == "promised" for _, st in gaps) else "materials_incomplete"
            return Decision("correction_requested", reason="; ".join(reasons) or self._correction_text(gaps),
                            missing_materials=tuple(code for code, _ in gaps), reason_code=(codes or [default])[0])
        return Decision("approved")

    def _rejection_text(self, field_id: str) -> str:
        fdef = self.catalog.fields.get(field_id)
        zh, en = (fdef.label.zh, fdef.label.en) if fdef else (field_id, field_id)
        return f"不符合办理条件：{zh} / not eligible: {en}"

    def _correction_text(self, gaps: list[tuple[str, str]]) -> str:
        zh, en = [], []
        for code, state in gaps:
            mat = self.catalog.materials.get(code)
            label_zh, label_en = (mat.label.zh, mat.label.en) if mat else (code, code)
            zh.append(label_zh + ("（容缺待补）" if state == "promised" else ""))
            en.append(label_en + (" (promised)" if state == "promised" else ""))
        return f"请补正材料：{'、'.join(zh)} / please supply: {', '.join(en)}"

    # -- issuing ------------------------------------------------------------------------------
    def _register(self, svc: Service) -> registers.Register:
        register = self._registers.get(svc.id)
        if register is None:
            e_licenses = frozenset(o for o in svc.produces
                                   if o in self.catalog.materials and self.catalog.materials[o].e_license)
            register = self._registers[svc.id] = registers.register_for(svc.id, svc.produces, e_licenses,
                                                                        catalog=self.catalog,
                                                                        auto=svc.auto_decision)
        return register

    def _plan(self, conn: psycopg.Connection, approved: Sequence[tuple[Event, Service]]
              ) -> tuple[list[tuple[Issue, Service]], numbers.Recorder]:
        """A dry run of the issuing functions for the approved tasks (no database): it checks
        what they check and notes which numbers the batch needs."""
        today = date.today()
        issues = [(Issue(conn, self.simulates, svc.id, task.payload["task_id"], task.key, task_region(task),
                         dict(task.payload.get("fields") or {}), dict(task.payload.get("inputs") or {}), today),
                   svc) for task, svc in approved]
        recorder = numbers.Recorder()
        for issue, svc in issues:
            self._record(replace(issue, numbers=recorder), svc)
        return issues, recorder

    def _issue(self, conn: psycopg.Connection, issues: Sequence[tuple[Issue, Service]],
               recorder: numbers.Recorder) -> list[tuple[str, dict[str, str]]]:
        """Take the numbers the dry run noted at once, run the issuing functions with them (in
        task order, so each task gets the numbers it would have got alone) and write the
        records: (record number, outputs) of each task."""
        if not issues:
            return []
        allocated = recorder.allocate(conn)
        records, out = [], []
        for issue, svc in issues:
            issue = replace(issue, numbers=allocated)
            table, record = self._record(issue, svc)
            records.append((table, issue, record))
            out.append((record.record_no, record.outputs))
        registers.insert_many(conn, records)
        return out

    def _record(self, issue: Issue, svc: Service) -> tuple[str, Record]:
        register = self._register(svc)
        record = register.issue(issue)
        # exactly what the catalog says the service produces: no more, and nothing missing
        outputs = {o: record.outputs[o] for o in svc.produces if record.outputs.get(o)}
        missing = [o for o in svc.produces if o not in outputs]
        if missing:
            n = issue.number(f"generic:{svc.id}")
            outputs.update({o: registers.generic_value(o, issue.region, n, False) for o in missing})
        return register.table, Record(record.record_no, {o: outputs[o] for o in svc.produces}, record.columns,
                                      record.region)

    def _record_work(self, conn: psycopg.Connection, decided: Sequence[tuple[Event, Service, Decision, str | None]]
                     ) -> None:
        rows = []
        for task, _svc, d, record_no in decided:
            p = task.payload
            rows.append((self.simulates, p["task_id"], task.key, p.get("service_id", ""), _attempt(p["task_id"]),
                         p.get("kind", "case_service"), d.outcome, d.reason, list(d.missing_materials), record_no))
        if len(rows) == 1:
            conn.execute(_WORK_ITEM, rows[0])
        elif rows:
            conn.cursor().executemany(_WORK_ITEM, rows)


_WORK_ITEM = ("INSERT INTO department_work_items (department, task_id, case_id, service_id, attempt, kind, outcome,"
              " reason, missing, record_no, decided_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())")


def _needed(need: Need, typed_fields: Mapping[str, Any]) -> bool:
    return need.required or (need.when is not None and need.when.holds(typed_fields))


def _attempt(task_id: str) -> int:
    """Task ids are `<case_id>:<service_id>:<attempt>` (projectors/case_state.py)."""
    last = task_id.rsplit(":", 1)[-1]
    return int(last) if last.isdigit() else 1


def task_region(task: Event) -> str:
    """The region the department files the task under: the form's region code, else an
    earlier service's, else the envelope's, else the demo city."""
    p = task.payload
    for candidate in ((p.get("fields") or {}).get("region_code"), (p.get("inputs") or {}).get("region_code"),
                      task.envelope.region_code):
        if candidate and check_region_code(candidate) is None:
            return candidate
    return DEFAULT_REGION
