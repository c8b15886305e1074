"""Reference adapters without a broker: their configuration, numbers, batches, the SDK's batch
path and every catalog service decided by its department (PostgreSQL only). The broker half is
tests/test_reference_adapters.py, whose task builders these tests share.
"""
from __future__ import annotations

import re
import time
import uuid
from datetime import date

import psycopg
import pytest
import structlog
import structlog.testing

from catalog.validators import check_resident_id, check_uscc
from department_adapters.reference import BackendConfig, CorrectionRule, RejectRule, SimulatedBackend
from department_adapters.reference import numbers, registers
from department_adapters.reference.run import build_backend, case_backend
from department_adapters.sdk import AdapterProcessor, BackendUnavailable, Decision, InvalidTask
from events.envelope import Event, new_event
from infra.topics import tasks_topic
from projectors.checkpoint import Item, Step

from .support.newborn import as_event_form
from .test_reference_adapters import CATALOG, FAST, NEWBORN, cancellation, case_id, table_of, task

pytestmark = pytest.mark.postgres


def test_config_from_env_and_mapping(tmp_path):
    env = {
        "ONETHING_SIM_PROCESSING_S": "0.2", "ONETHING_SIM_POLICE_PROCESSING_S": "1.5",
        "ONETHING_SIM_REJECT": "police.*:registration_parent=father|other; child_sex=unknown",
        "ONETHING_SIM_CORRECT": '[{"material": "medical_invoice", "when": "promised"}]',
        "ONETHING_SIM_CORRECT_PROMISED": "0", "ONETHING_SIM_OUTAGES": "10-20, 30-31.5",
        "ONETHING_SIM_HRSS_OUTAGE_FLAG": str(tmp_path / "down"), "ONETHING_SIM_DOWN_FIRST_S": "3",
    }
    police = BackendConfig.from_env("police", env)
    assert police.processing_s == 1.5 and police.correct_promised is False and police.correct_missing is True
    assert police.rejections == (RejectRule("registration_parent", ("father", "other"), "police.*"),
                                 RejectRule("child_sex", ("unknown",)))
    assert police.corrections == (CorrectionRule("medical_invoice", "promised"),)
    assert police.outages == ((10.0, 20.0), (30.0, 31.5)) and police.outage_flag is None
    assert BackendConfig.from_env("hrss", env).outage_flag == tmp_path / "down"
    assert BackendConfig.from_env("tax", {}) == BackendConfig()
    assert [police.down_reason(s) for s in (0, 5, 15, 25, 31)] == ["starting", None, "outage window", None,
                                                                   "outage window"]
    hrss = BackendConfig.from_env("hrss", env)
    assert hrss.down_reason(5) is None
    (tmp_path / "down").touch()
    assert hrss.down_reason(5) == "outage flag"
    assert "father" not in str(police.summary()), "the start-up log shows no rule values"
    with pytest.raises(ValueError):
        BackendConfig.from_mapping({"procesing_s": 1})
    with pytest.raises(ValueError):
        BackendConfig.from_mapping({"corrections": "x@sometimes"})


def test_outage_for_the_first_seconds_uses_the_backends_clock(database_url):
    now = [100.0]
    backend = SimulatedBackend("tax", BackendConfig(processing_s=0, down_first_s=5), clock=lambda: now[0])
    t = task("tax.newborn_premium", case_id())
    with psycopg.connect(database_url) as conn:
        with pytest.raises(BackendUnavailable):
            backend.handle(t, conn)
        now[0] += 5
        decisions = backend.handle(t, conn)
        conn.rollback()
    assert [d.outcome for d in decisions] == ["accepted", "approved"]
    assert backend.stats.unavailable == 1 and backend.stats.calls == 2

    flaky = SimulatedBackend("tax", BackendConfig(processing_s=0, flaky_rate=1.0))
    with psycopg.connect(database_url) as conn, pytest.raises(BackendUnavailable, match="flaky"):
        flaky.handle(t, conn)


def test_invalid_tasks_and_logs_without_personal_data(database_url):
    # logging starts from the defaults in every test (tests/conftest.py): a CLI test before this one
    # had left structlog filtering below WARNING, and capture_logs then saw nothing (CI, 2026-12-02)
    backend = SimulatedBackend("police", FAST)
    t = task("police.birth_registration", case_id())
    with psycopg.connect(database_url) as conn, structlog.testing.capture_logs() as logs:
        decisions = backend.handle(t, conn)
        conn.rollback()
        broken = task("police.birth_registration", case_id())
        del broken.payload["fields"]["birth_date"]
        with pytest.raises(InvalidTask, match="birth_date"):
            backend.handle(broken, conn)
        no_input = task("police.birth_registration", case_id())
        no_input.payload["inputs"].clear()
        with pytest.raises(InvalidTask, match="birth_certificate_no"):
            backend.handle(no_input, conn)
        conn.rollback()
    sync = task("police.birth_registration", case_id())
    sync.payload["kind"] = "register_sync"
    with pytest.raises(InvalidTask, match="register sync"):
        backend.handle(sync, None)  # refused before any write: never a false "applied"
    assert case_backend(build_backend("police", FAST)).simulates == "police"
    assert logs and logs[0]["event"] == "reference.decided" and logs[0]["task_id"] == t.payload["task_id"]
    personal = [*t.payload["fields"].values(), decisions[1].outputs["child_resident_id"]]
    personal = [v for v in personal if v not in ("female", "mother", "false", "true", "440203")]
    text = repr(logs)
    assert not [v for v in personal if v in text], "logs carry ids and outcomes, never personal data"


def test_resident_ids_spill_to_the_next_county_when_a_day_is_full(database_url):
    born = date(1999, 1, 1)  # a day no other test issues IDs for
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO department_register_counters (counter, value) VALUES (%s, 500)"
                     " ON CONFLICT (counter) DO UPDATE SET value = 500", (f"resident_id:440203:{born:%Y%m%d}:male",))
        rid = numbers.issue_resident_id(conn, "440203", born, "male")
        conn.rollback()  # leaves the shared counters as they were
    assert rid[:6] != "440203" and rid[:4] == "4402" and check_resident_id(rid) is None
    assert int(rid[16]) % 2 == 1


def test_resident_ids_of_a_batch_are_those_issued_one_at_a_time(database_url):
    """Set-based resident IDs (a batch's police tasks) spill over exactly like one at a time."""
    born = date(1999, 1, 2)  # a day no other test issues IDs for
    a, c, m = ("440203", born, "female"), ("440201", born, "female"), ("440203", born, "male")
    requests = [a, c, a, a, m]  # 440203 has two female codes left: the third spills to 440201, after c's
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO department_register_counters (counter, value) VALUES (%s, 497)"
                     " ON CONFLICT (counter) DO UPDATE SET value = 497", (f"resident_id:440203:{born:%Y%m%d}:female",))
        with conn.transaction(force_rollback=True):
            one = [numbers.issue_resident_id(conn, *r) for r in requests]
        with conn.transaction(force_rollback=True):
            batch = numbers.take_resident_ids(conn, requests)
        conn.rollback()  # leaves the shared counters as they were
    assert batch == one and len(set(one)) == len(one)
    assert [rid[:6] for rid in one] == ["440203", "440201", "440203", "440201", "440203"]
    assert all(check_resident_id(rid) is None for rid in one)


def test_a_batch_decides_and_records_as_one_task_at_a_time(database_url):
    """`handle_batch` (what the SDK calls with a poll's fresh tasks) against `handle` one task
    after the other, from the same counters: the same decisions, register rows and work items."""
    departments = sorted({CATALOG.service(s).department for s in NEWBORN})
    tasks: dict[str, list[Event]] = {d: [] for d in departments}
    for n in range(3):
        case = case_id()
        for sid in NEWBORN:  # the second case promised its invoice: a correction among approvals
            tasks[CATALOG.service(sid).department].append(
                task(sid, case, promised=("medical_invoice",) if n == 1 else ()))
    task_ids = [t.payload["task_id"] for ts in tasks.values() for t in ts]

    def recorded(conn: psycopg.Connection) -> dict[str, list[tuple]]:
        rows = {table_of(sid): conn.execute(f"SELECT * FROM {table_of(sid)} WHERE task_id = ANY(%s) ORDER BY task_id",
                                            (task_ids,)).fetchall() for sid in NEWBORN}
        rows["work"] = conn.execute("SELECT * FROM department_work_items WHERE task_id = ANY(%s) "
                                    "ORDER BY department, task_id", (task_ids,)).fetchall()
        return rows

    with psycopg.connect(database_url) as conn:
        # no other writer takes numbers between the two runs, so both start from the same counters
        conn.execute("LOCK TABLE department_register_counters IN EXCLUSIVE MODE")
        with conn.transaction(force_rollback=True):
            one = {d: [build_backend(d, FAST).handle(t, conn) for t in ts] for d, ts in tasks.items()}
            one_rows = recorded(conn)
        with conn.transaction(force_rollback=True):
            batch = {d: build_backend(d, FAST).handle_batch(ts, conn) for d, ts in tasks.items()}
            batch_rows = recorded(conn)
        conn.rollback()  # a dry run: the shared registers and counters keep nothing

    assert batch == one
    assert batch_rows == one_rows
    finals = [ds[1].outcome for d in departments for ds in one[d]]
    assert finals.count("correction_requested") == 1 and finals.count("approved") == len(finals) - 1
    assert all(len(rows) == 3 for table, rows in one_rows.items() if table != table_of(
        "medical_insurance.childbirth_reimbursement") and table != "work")
    cards = [int(ds[1].outputs["social_security_card_no"][1:]) for ds in batch["hrss"]]
    assert cards == list(range(cards[0], cards[0] + 3)), "a batch's numbers are consecutive, in task order"


class _HandleOnly:
    """A department team's backend that implements only `handle`."""

    def __init__(self, department: str):
        self.department = department
        self.calls: list[str] = []

    def handle(self, t: Event, conn: psycopg.Connection) -> list[Decision]:
        self.calls.append(t.payload["task_id"])
        return [Decision("accepted"), Decision("approved", outputs={"n": str(len(self.calls))})]

    def cancel(self, t: Event, conn: psycopg.Connection) -> None:
        self.calls.append("cancel " + t.payload["task_id"])


class _Batched(_HandleOnly):
    def __init__(self, department: str):
        super().__init__(department)
        self.batches: list[list[str]] = []

    def handle_batch(self, tasks: list[Event], conn: psycopg.Connection) -> list[list[Decision]]:
        self.batches.append([t.payload["task_id"] for t in tasks])
        return [self.handle(t, conn) for t in tasks]


def test_the_sdk_gives_a_batch_backend_the_same_tasks_in_the_same_order(database_url):
    """A poll's batch with a repeat, a cancellation before a task and one after it: a backend
    with `handle_batch` gets the fresh tasks in runs that end at each cancellation, each task
    once; the decisions emitted are those of a backend asked one task at a time."""
    sid = "hrss.social_security_card"
    t1, t2, t3, t4 = (task(sid, case_id()) for _ in range(4))
    events = [t1, t2, t1, cancellation(t3), t3, t4, cancellation(t4)]
    emitted = {}
    for kind in (_HandleOnly, _Batched):
        backend = kind(f"sdk_t{uuid.uuid4().hex[:8]}")
        processor = AdapterProcessor(backend)
        with psycopg.connect(database_url) as conn, conn.transaction(force_rollback=True):
            step = Step(conn, items=[Item(tasks_topic(backend.department), 0, n, e.key.encode(), None, e)
                                     for n, e in enumerate(events)])
            processor.process(step)
        assert backend.calls == [t1.payload["task_id"], t2.payload["task_id"], "cancel " + t3.payload["task_id"],
                                 t4.payload["task_id"], "cancel " + t4.payload["task_id"]]
        emitted[kind] = [(e.id, e.payload["task_id"], e.payload["outcome"], e.payload["outputs"]) for _, e in step.out]
    assert backend.batches == [[t1.payload["task_id"], t2.payload["task_id"]], [t4.payload["task_id"]]]
    assert emitted[_Batched] == emitted[_HandleOnly]
    assert [tid for _, tid, _, _ in emitted[_Batched]] == [t.payload["task_id"] for t in (t1, t1, t2, t2, t1, t1, t4, t4)]


def test_simulated_decisions_carry_a_newborn_case_through_the_fold_to_completion(database_url):
    """The contract with dispatch, without the broker: every task the fold sends is decided by
    its department's backend, outputs flow to the services that wait for them (the police's
    resident ID to tax and hrss …), a promised material is asked for, supplied, re-dispatched
    as attempt 2 and approved, and the case completes with all nine services approved."""
    from projectors import case_state

    from .support.newborn import submission

    backends = {d: SimulatedBackend(d, FAST) for d in {CATALOG.service(s).department for s in NEWBORN}}
    state, pending = case_state.step(None, submission(case_id(), promised=("medical_invoice",)), CATALOG)
    corrections = 0
    with psycopg.connect(database_url) as conn:
        while pending:
            ev = pending.pop(0)
            if ev.type != "TaskDispatched":
                continue
            for d in backends[ev.payload["department"]].handle(ev, conn):
                decided = new_event("DecisionRecorded", ev.key,
                                    {"task_id": ev.payload["task_id"], "department": ev.payload["department"],
                                     "service_id": ev.payload["service_id"], "kind": "case_service",
                                     "outcome": d.outcome, "reason": d.reason,
                                     "missing_materials": list(d.missing_materials), "outputs": d.outputs},
                                    region_code="440203", cause=ev)
                state, more = case_state.step(state, decided, CATALOG)
                pending += more
            if state.status == case_state.AWAITING_APPLICANT and not pending:
                corrections += 1
                missing = sorted({m for s in state.services.values() for m in s.missing})
                assert missing == ["medical_invoice"]
                supplied = new_event("MaterialsSupplemented", state.case_id,
                                     {"materials": [{"code": "medical_invoice", "source": "uploaded",
                                                     "ref": "doc-invoice-2"}], "form": {}}, region_code="440203")
                state, more = case_state.step(state, supplied, CATALOG)
                pending += more
        conn.rollback()  # a dry run: the shared registers keep nothing
    assert corrections == 1 and state.status == case_state.COMPLETED
    assert {s.status for s in state.services.values()} == {case_state.APPROVED}
    assert state.services["medical_insurance.childbirth_reimbursement"].attempt == 2
    assert check_resident_id(state.outputs["child_resident_id"]) is None
    assert set(state.outputs) == {o for s in NEWBORN for o in CATALOG.service(s).produces}


# -- issue 14: every department of the catalog, numbers in their formats, 免批秒办 ----------------
def _catalog_task(service_id: str, case: str, overrides: dict | None = None, inputs: dict | None = None) -> Event:
    """A task of any service of the catalog, its fields sample answers of their types."""
    from .test_all_bundles import sample_value

    svc = CATALOG.service(service_id)
    today = date.today()
    form = {n.id: sample_value(CATALOG.fields[n.id], i, today) for i, n in enumerate(svc.fields)}
    if "region_code" in form:
        form["region_code"] = "360102"   # 南昌 东湖区: the envelope's region too
    form.update(overrides or {})
    given = {o: (CATALOG.fields[o].options[0].value if o in CATALOG.fields and CATALOG.fields[o].options else "X1")
             for o in svc.consumes}
    payload = {
        "task_id": f"{case}:{service_id}:1", "department": svc.department, "service_id": service_id,
        "kind": "case_service", "fields": as_event_form(form),
        "materials": [{"code": n.id, "source": "uploaded", "ref": "doc-1"} for n in svc.materials],
        "inputs": {**given, **(inputs or {})}, "due_date": None,
    }
    return new_event("TaskDispatched", case, payload, region_code="360102")


def test_every_service_of_the_catalog_is_decided_by_its_department_with_every_output(database_url):
    """What `onething run adapters` hosts by default answers every service of every bundle: approved,
    with exactly the outputs the catalog says, numbered in each output's format."""
    from department_adapters.reference.run import catalog_departments

    services = sorted({s for b in CATALOG.bundles.values() for s in b.services})
    assert {CATALOG.service(s).department for s in services} <= set(catalog_departments())
    backends = {d: SimulatedBackend(d, FAST) for d in catalog_departments()}
    with psycopg.connect(database_url) as conn:
        for sid in services:
            svc = CATALOG.service(sid)
            decisions = backends[svc.department].handle(_catalog_task(sid, case_id()), conn)
            assert [d.outcome for d in decisions] == ["accepted", "approved"], (sid, decisions[-1].reason)
            assert set(decisions[1].outputs) == set(svc.produces), sid
        conn.rollback()
    out = {}
    with psycopg.connect(database_url) as conn:
        for sid in ("transport.road_transport_business_permit", "market_regulation.food_business_permit",
                    "market_regulation.conversion_registration", "natural_resources.transfer_registration"):
            svc = CATALOG.service(sid)
            out.update(backends[svc.department].handle(_catalog_task(sid, case_id()), conn)[1].outputs)
        conn.rollback()
    assert re.fullmatch(r"赣交运管许可字360102[0-9]{6}号", out["road_transport_permit_no"])
    assert re.fullmatch(r"JY2360102[0-9]{7}", out["food_business_permit_no"])
    assert check_uscc(out["new_company_uscc"]) is None and out["new_company_uscc"].startswith("91360102MA")
    assert re.fullmatch(rf"赣（{date.today():%Y}）不动产权第[0-9]{{7}}号", out["property_title_no"])


def test_an_automatic_decision_is_approved_within_a_second_and_records_what_it_relied_on(database_url):
    slow = SimulatedBackend("hrss", BackendConfig(processing_s=1.5))   # a clerk takes 1.5 s a task
    verified = {"degree_verification_result": "verified", "talent_social_insurance_check_result": "verified"}
    t = _catalog_task("hrss.talent_living_subsidy", case_id(), {"degree_level": "master"}, verified)
    with psycopg.connect(database_url) as conn:
        started = time.monotonic()
        decision = slow.handle(t, conn)[1]
        took = time.monotonic() - started
        record = registers.find(conn, registers.GENERIC_TABLE, t.payload["task_id"])
        refused = slow.handle(_catalog_task("hrss.talent_living_subsidy", case_id(), {"degree_level": "college"},
                                            verified), conn)[1]
        clerk_started = time.monotonic()
        slow.handle(_catalog_task("hrss.employment_registration", case_id()), conn)
        clerk_took = time.monotonic() - clerk_started
        conn.rollback()
    assert decision.outcome == "approved" and took < 1.0 <= clerk_took
    assert decision.outputs["talent_living_subsidy_no"].startswith("RCBT")
    assert "免批秒办" in decision.outputs["talent_living_subsidy_basis"] and "硕士研究生" in \
        decision.outputs["talent_living_subsidy_basis"]
    assert record["decided_by"] == "rule"
    assert record["basis"] == {"degree_verification_result": "verified", "talent_social_insurance_check_result":
                               "verified", "degree_level": "master"}
    # the rule refuses a college diploma, naming the requirement, never the applicant's answer
    assert refused.outcome == "rejected" and "最高学历学位" in refused.reason and "college" not in refused.reason
