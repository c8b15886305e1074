"""The dispatch fold (pure): dependency order, data minimisation, corrections, rejections,
withdrawals, repeats, and determinism of derived event ids."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from catalog.loader import load_catalog
from events.envelope import Actor, Event, new_event
from catalog.working_days import add_working_days
from projectors import case_state, deadline_clock
from projectors.deadline_clock import CHINA
from projectors.case_state import APPROVED, AWAITING_APPLICANT, BLOCKED, CANCELLED, COMPLETED, WITHDRAWN

from .support.newborn import submission

CATALOG = load_catalog()
DEPT = Actor("dept", "department", "department")


def decision(state, sid: str, outcome: str, outputs=None, missing=(), reason=None) -> Event:
    svc = state.services[sid]
    return new_event("DecisionRecorded", state.case_id,
                     {"task_id": svc.task_id, "department": svc.department, "service_id": sid, "outcome": outcome,
                      "reason": reason, "missing_materials": list(missing), "outputs": outputs or {}},
                     actor=DEPT, region_code="440203")


def outputs_of(sid: str) -> dict[str, str]:
    return {o: f"{o}-value" for o in CATALOG.service(sid).produces}


def tasks(events):
    return [e for e in events if e.type == "TaskDispatched"]


def run_to_completion(order_seed: int = 0, inputs: list | None = None):
    """Approve whatever is dispatched, in an order chosen by the seed; returns (state, all emitted).
    The input events are appended to `inputs` so a test can fold them again."""
    import random

    rnd = random.Random(order_seed)
    inputs = [] if inputs is None else inputs
    sub = submission("case-fold-1")
    inputs.append(sub)
    state, emitted = case_state.step(None, sub, CATALOG)
    log = list(emitted)
    pending = [e.payload["service_id"] for e in emitted if e.type == "TaskDispatched"]
    while pending:
        sid = pending.pop(rnd.randrange(len(pending)))
        d = decision(state, sid, "approved", outputs_of(sid))
        inputs.append(d)
        state, out = case_state.step(state, d, CATALOG)
        log += out
        pending += [e.payload["service_id"] for e in tasks(out)]
    return state, log


def test_submission_dispatches_only_services_without_unmet_dependencies():
    state, emitted = case_state.step(None, submission(), CATALOG)
    first = {e.payload["service_id"] for e in tasks(emitted)}
    assert first == {s for s in state.services if not CATALOG.service(s).consumes}
    assert "police.birth_registration" not in first  # waits for the birth certificate
    assert len({e.payload["department"] for e in tasks(emitted)}) >= 2  # parallel dispatch


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_any_decision_order_completes_respecting_dependencies_and_minimisation(seed):
    state, log = run_to_completion(seed)
    assert state.status == COMPLETED
    assert all(s.status == APPROVED for s in state.services.values())
    assert [e.type for e in log].count("CaseCompleted") == 1
    dispatched_at = {}
    for i, e in enumerate(log):
        if e.type == "TaskDispatched":
            dispatched_at[e.payload["service_id"]] = i
    for sid in state.services:
        svc = CATALOG.service(sid)
        for out in svc.consumes:
            producer = CATALOG.producers[out]
            assert dispatched_at[producer] < dispatched_at[sid], f"{sid} went before {producer}"
    for e in tasks(log):
        svc = CATALOG.service(e.payload["service_id"])
        assert set(e.payload["fields"]) <= {n.id for n in svc.fields}, "a field the service did not declare"
        assert {m["code"] for m in e.payload["materials"]} <= {n.id for n in svc.materials}
        assert set(e.payload["inputs"]) == set(case_state.awaited_outputs(CATALOG, svc.id, state.services))
        assert set(svc.consumes) <= set(e.payload["inputs"])  # the outputs it waits for, passed on
        assert e.payload["due_date"] is not None


def test_the_child_resident_id_flows_from_police_to_the_services_that_wait_for_it():
    _state, log = run_to_completion(1)
    hrss = next(e for e in tasks(log) if e.payload["service_id"] == "hrss.social_security_card")
    assert hrss.payload["inputs"] == {"child_resident_id": "child_resident_id-value"}


def test_replaying_the_same_events_emits_the_same_ids():
    inputs: list = []
    final, log1 = run_to_completion(7, inputs)
    state, log2 = None, []
    for ev in inputs:  # a re-run of the processor over the same log
        state, out = case_state.step(state, ev, CATALOG)
        log2 += out
    assert [e.id for e in log2] == [e.id for e in log1] and len(log1) > 9
    assert state == final


def test_a_repeated_event_changes_nothing():
    state, emitted = case_state.step(None, submission("case-rep"), CATALOG)
    sid = tasks(emitted)[0].payload["service_id"]
    d = decision(state, sid, "approved", outputs_of(sid))
    once, out = case_state.step(state, d, CATALOG)
    twice, out2 = case_state.step(once, d, CATALOG)
    assert twice is once and out2 == []
    again, out3 = case_state.step(once, submission("case-rep"), CATALOG)
    assert out3 == [] and again is once


def test_correction_waits_for_the_applicant_and_the_supplement_resumes():
    state, _ = case_state.step(None, submission("case-corr", promised=("medical_invoice",)), CATALOG)
    cert = "health.birth_certificate"
    state, emitted = case_state.step(state, decision(state, cert, "approved", outputs_of(cert)), CATALOG)
    sid, material = next((e.payload["service_id"], m["code"]) for e in tasks(emitted)
                         for m in e.payload["materials"] if m["source"] == "promised")
    state, out = case_state.step(state, decision(state, sid, "correction_requested", missing=[material],
                                                 reason="材料未提交"), CATALOG)
    assert state.status == AWAITING_APPLICANT and out == []
    supplement = new_event("MaterialsSupplemented", state.case_id,
                           {"materials": [{"code": material, "source": "uploaded", "ref": "doc-2"}],
                            "form": {}}, actor=Actor("p_test_applicant", "applicant", "online"), region_code="440203")
    state, out = case_state.step(state, supplement, CATALOG)
    assert state.status == "open"
    (retask,) = tasks(out)
    assert retask.payload["service_id"] == sid and retask.payload["task_id"].endswith(":2")
    assert {"code": material, "source": "uploaded", "ref": "doc-2"} in retask.payload["materials"]


def test_rejection_blocks_dependants_and_still_completes_the_case():
    state, emitted = case_state.step(None, submission("case-rej"), CATALOG)
    log = list(emitted)
    state, out = case_state.step(state, decision(state, "health.birth_certificate", "rejected", reason="信息不符"),
                                 CATALOG)
    log += out
    assert state.services["police.birth_registration"].status == BLOCKED
    assert state.services["hrss.social_security_card"].status == BLOCKED  # blocked transitively
    for sid in [e.payload["service_id"] for e in tasks(log)]:
        if state.services[sid].status not in case_state.FINAL:
            state, out = case_state.step(state, decision(state, sid, "approved", outputs_of(sid)), CATALOG)
            log += out
    assert state.status == COMPLETED
    done = next(e for e in log if e.type == "CaseCompleted")
    assert "health.birth_certificate" in done.payload["rejected"]


def test_withdrawal_cancels_pending_tasks_at_their_departments():
    state, emitted = case_state.step(None, submission("case-wd"), CATALOG)
    in_flight = {e.payload["service_id"] for e in tasks(emitted)}
    wd = new_event("ApplicationWithdrawn", state.case_id, {"reason": None},
                   actor=Actor("p_test_applicant", "applicant", "online"), region_code="440203")
    state, out = case_state.step(state, wd, CATALOG)
    assert state.status == WITHDRAWN
    assert {e.payload["service_id"] for e in out if e.type == "TaskCancelled"} == in_flight
    assert all(s.status == CANCELLED for s in state.services.values())
    late = decision(state, next(iter(in_flight)), "approved")
    assert case_state.step(state, late, CATALOG)[1] == []  # nothing happens after withdrawal


def test_state_survives_its_persistence_form():
    state, log = run_to_completion(3)
    import json

    assert case_state.from_json(json.loads(json.dumps(case_state.to_json(state), default=str))) == state


# -- the 补正 pause and 好差评 rectifications (issue 6) ----------------------------------------------
def _at(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=CHINA)


def _timed(event: Event, when: datetime) -> Event:
    return replace(event, envelope=replace(event.envelope, occurred_at=when))


def test_the_clock_stops_while_the_applicant_corrects_and_the_redispatch_keeps_its_first_due_date():
    sub = _timed(submission("case-pause", promised=("medical_invoice",)), _at(date(2026, 9, 28)))
    state, _ = case_state.step(None, sub, CATALOG)
    cert = "health.birth_certificate"
    approve = _timed(decision(state, cert, "approved", outputs_of(cert)), _at(date(2026, 9, 28), 15))
    state, emitted = case_state.step(state, approve, CATALOG)
    task = next(e for e in tasks(emitted) for m in e.payload["materials"] if m["source"] == "promised")
    sid, first_due = task.payload["service_id"], task.payload["due_date"]
    limit = deadline_clock.promised_days(CATALOG, "newborn", sid)
    assert first_due == add_working_days(date(2026, 9, 28), limit)
    # asked on Tuesday 29 September; the applicant supplies on Friday 9 October, after 国庆 (1–7
    # October): the clock stood still for 3 working days (Wed 30 Sep, Thu 8 and Fri 9 Oct)
    ask = _timed(decision(state, sid, "correction_requested", missing=["medical_invoice"]), _at(date(2026, 9, 29)))
    state, _ = case_state.step(state, ask, CATALOG)
    assert state.services[sid].paused_on == date(2026, 9, 29)
    supplement = _timed(new_event("MaterialsSupplemented", state.case_id,
                                  {"materials": [{"code": "medical_invoice", "source": "uploaded", "ref": "d"}],
                                   "form": {}}, actor=Actor("p_test_applicant", "applicant", "online"),
                                  region_code="440203"), _at(date(2026, 10, 9)))
    state, out = case_state.step(state, supplement, CATALOG)
    (retask,) = tasks(out)
    assert retask.payload["due_date"] == add_working_days(first_due, 3)
    assert retask.payload["due_date"] == deadline_clock.resumed_due(first_due, date(2026, 9, 29), date(2026, 10, 9))
    assert state.services[sid].paused_on is None


def rating(state, grade: str, services: dict[str, str] | None = None, when: datetime | None = None) -> Event:
    ev = new_event("CaseRated", state.case_id,
                   {"rating_id": f"rating-{state.case_id}", "grade": grade, "comment": "等了很久",
                    "services": [{"service_id": s, "grade": g, "comment": None} for s, g in (services or {}).items()]},
                   actor=Actor("p_test_applicant", "applicant", "online"), region_code="440203")
    return _timed(ev, when) if when else ev


def test_a_bad_rating_opens_rectifications_for_the_responsible_departments_once():
    state, _ = run_to_completion(5)
    assert state.status == COMPLETED
    bad = rating(state, "very_dissatisfied", {"tax.newborn_premium": "dissatisfied",
                                              "police.birth_registration": "satisfied"},
                 when=_at(date(2026, 9, 30)))
    after, out = case_state.step(state, bad, CATALOG)
    opened = {(e.payload["department"], e.payload["service_id"]) for e in out}
    lead = CATALOG.bundle("newborn").lead
    assert opened == {(lead, None), ("tax", "tax.newborn_premium")}  # the satisfied grade opens nothing
    assert all(e.type == "RectificationOpened" for e in out)
    # 15 working days from 30 September: 国庆 1–7 October off, the 调休 Saturday 10 October worked
    # (8, 9, 10, 12–16, 19–23, 26, 27 October)
    assert {e.payload["due_date"] for e in out} == {add_working_days(date(2026, 9, 30), 15)} \
        == {date(2026, 10, 27)}
    assert case_state.step(state, bad, CATALOG)[1] == out  # the same rating folded again: the same ids
    assert case_state.step(after, rating(after, "very_dissatisfied"), CATALOG)[1] == []  # rated once
    assert case_state.from_json(json.loads(json.dumps(case_state.to_json(after), default=str))) == after


def test_a_good_rating_opens_nothing_and_an_open_case_cannot_be_rated():
    state, _ = run_to_completion(6)
    assert case_state.step(state, rating(state, "satisfied"), CATALOG)[1] == []
    open_state, _ = case_state.step(None, submission("case-open-rated"), CATALOG)
    after, out = case_state.step(open_state, rating(open_state, "very_dissatisfied"), CATALOG)
    assert out == [] and after.rating_id is None


@given(st.integers(0, 10_000), st.randoms(use_true_random=False))
@settings(max_examples=80, deadline=None)
def test_a_case_ends_the_same_whatever_order_its_events_are_read_in(seed, rnd):
    """Kafka orders a partition, not the topics of one case: after a crash between sending tasks
    and storing the state, departments decide while dispatch restarts, and a decision can be read
    before the submission, or before the other department's decision that led to its task. Any
    order of the same events gives the same case and the same derived event ids — no decision is
    lost as "never submitted" or taken for a superseded attempt."""
    inputs: list[Event] = []
    expected_state, expected_log = run_to_completion(seed, inputs)
    shuffled = list(inputs)
    rnd.shuffle(shuffled)
    state, log = None, []
    for e in shuffled:
        state, out = case_state.step(state, e, CATALOG)
        log += out
    assert state.status == expected_state.status == COMPLETED
    assert {s: v.status for s, v in state.services.items()} == {s: v.status for s, v in expected_state.services.items()}
    assert state.outputs == expected_state.outputs and state.early == ()
    assert {e.id for e in log} == {e.id for e in expected_log}
    restored = case_state.from_json(json.loads(json.dumps(case_state.to_json(state))))
    assert restored.early == () and restored.status == COMPLETED


def test_a_case_held_before_its_submission_survives_its_persistence_form():
    sub = submission("case-held-1")
    first, _ = case_state.step(None, sub, CATALOG)
    d = decision(first, tasks(case_state.step(None, sub, CATALOG)[1])[0].payload["service_id"], "accepted")
    held, out = case_state.step(None, d, CATALOG)
    assert out == [] and held.status == case_state.UNSUBMITTED
    restored = case_state.from_json(json.loads(json.dumps(case_state.to_json(held))))
    assert [e.id for e in restored.early] == [d.id] and restored.seen == held.seen
    assert restored.early[0].payload["outcome"] == "accepted"
    again, out = case_state.step(restored, d, CATALOG)
    assert again is restored and out == []  # a repeat while waiting is still a repeat
