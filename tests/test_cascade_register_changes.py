"""Register changes and the cascade's planning, pure: checks before a change becomes an event,
个转企 inheritance, the master register as a fold of the log, and deterministic sync tasks."""
from __future__ import annotations

import random
import uuid
from datetime import date, datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog.subscriptions import load_subscriptions
from events.envelope import Actor
from producers.register_changes import (ChangeRefused, RegisterRecord, change_event, conversion_changes, fold,
                                        fold_all, validate_change)
from projectors import cascade_plan as plan

from .support.cascade_harness import company_fields, new_resident_id, new_uscc

SUBS = load_subscriptions()
TODAY = date(2025, 7, 1)
RNG = random.Random(7)
USCC = new_uscc(RNG)
SOLE_TRADER = new_uscc(RNG, entity_class="2")
RID = new_resident_id(RNG)
ACTOR = Actor("register:market_regulation", "register", "register")


def registered(uscc: str = USCC, **overrides) -> RegisterRecord:
    fields = {**company_fields(random.Random(1)), "status": "active", **overrides}
    return RegisterRecord("company", uscc, 1, fields)


def refused(*args, **kw) -> list[tuple[str, str]]:
    with pytest.raises(ChangeRefused) as err:
        validate_change(*args, **kw, today=TODAY)
    return [(p.path, p.code) for p in err.value.problems]


# --- checks before an event exists ------------------------------------------------------------

def test_a_valid_change_keeps_only_what_changes():
    current = registered()
    out = validate_change("company", "changed", {"name": " 新名称有限公司 ", "address": current.fields["address"]},
                          raw_key=USCC, current=current, today=TODAY)
    assert out == {"name": "新名称有限公司"}


def test_every_problem_is_reported_by_field_and_never_echoes_the_value():
    secret_name = "欧阳娜娜"
    bad_id = RID[:17] + ("0" if RID[17] != "0" else "1")
    with pytest.raises(ChangeRefused) as err:
        validate_change("company", "changed",
                        {"name": "", "colour": "品红色", "registered_capital": "-5", "legal_representative_name": secret_name,
                         "legal_representative_resident_id": bad_id, "company_type": "spaceship",
                         "deregistered_on": "2025-01-01"},
                        raw_key=USCC, current=registered(), today=TODAY)
    got = {(p.path, p.code) for p in err.value.problems}
    assert got == {("changes.name", "required"), ("changes.colour", "change.unknown_field"),
                   ("changes.registered_capital", "amount.format"),
                   ("changes.legal_representative_resident_id", "resident_id.checksum"),
                   ("changes.company_type", "enum.option"), ("changes.deregistered_on", "change.not_allowed")}
    text = str(err.value) + repr([p.as_dict() for p in err.value.problems])
    for value in (secret_name, bad_id, "spaceship", "品红色"):
        assert value not in text
    assert all(p.message_zh and p.message_en for p in err.value.problems)


def test_keys_are_checked_by_checksum():
    bad_uscc = USCC[:17] + ("0" if USCC[17] != "0" else "1")
    assert refused("company", "changed", {"name": "x"}, raw_key=bad_uscc, current=registered()) == [
        ("key", "uscc.checksum")]
    bad_rid = RID[:17] + ("0" if RID[17] != "0" else "1")
    assert ("key", "resident_id.checksum") in refused("person", "died", {"date_of_death": "2025-06-30"},
                                                     raw_key=bad_rid)


def test_legal_representative_changes_name_and_id_together():
    assert refused("company", "changed", {"legal_representative_name": "王五"}, raw_key=USCC,
                   current=registered()) == [("changes.legal_representative_resident_id", "change.together")]


def test_the_register_state_decides_what_may_change():
    assert refused("company", "changed", {"name": "x"}, raw_key=USCC, current=None) == [("key", "register.unknown_key")]
    gone = registered(status="deregistered")
    assert refused("company", "changed", {"name": "x"}, raw_key=USCC, current=gone) == [("key", "register.not_active")]
    assert refused("company", "registered", company_fields(random.Random(2)), raw_key=USCC,
                   current=registered()) == [("key", "register.already_registered")]
    same = registered()
    assert refused("company", "changed", {"name": same.fields["name"]}, raw_key=USCC, current=same) == [
        ("changes", "change.nothing_changed")]
    dead = RegisterRecord("person", "p_x", 3, {"status": "deceased"})
    assert refused("person", "household_moved", {"household_address": "a", "household_region_code": "310104",
                                                 "household_moved_on": "2025-01-02"},
                   raw_key=RID, current=dead) == [("key", "person.deceased")]


def test_entity_class_of_the_code_must_match_the_type():
    fields = company_fields(random.Random(3), company_type="individual_business")
    assert ("changes.company_type", "uscc.entity_class") in refused("company", "registered", fields, raw_key=USCC)
    assert validate_change("company", "registered", fields, raw_key=SOLE_TRADER, today=TODAY)["status"] == "active"


def test_dates_and_amounts():
    current = registered()
    assert refused("company", "deregistered", {"deregistered_on": "2031-01-01"}, raw_key=USCC, current=current) == [
        ("changes.deregistered_on", "date.future")]
    assert refused("company", "deregistered", {"deregistered_on": "2025-13-01"}, raw_key=USCC, current=current) == [
        ("changes.deregistered_on", "date.format")]
    out = validate_change("company", "changed", {"registered_capital": "0100.500"}, raw_key=USCC, current=current,
                          today=TODAY)
    assert out == {"registered_capital": "100.5"}


def test_death_implies_the_status():
    out = validate_change("person", "died", {"date_of_death": "2025-06-30", "death_certificate_no": "SW-1"},
                          raw_key=RID, today=TODAY)
    assert out == {"date_of_death": "2025-06-30", "death_certificate_no": "SW-1", "status": "deceased"}


# --- 个转企 ---------------------------------------------------------------------------------------

def test_conversion_inherits_business_years_and_credit_record_from_the_register():
    old = RegisterRecord("company", SOLE_TRADER, 4, {
        **company_fields(random.Random(4), company_type="individual_business"),
        "established_on": "2012-03-15", "credit_rating": "A", "status": "active"})
    fields = {k: v for k, v in company_fields(random.Random(5)).items() if k != "established_on"}
    old_changes, new_changes = conversion_changes(old, SOLE_TRADER, USCC, fields, "2025-06-01", today=TODAY)
    assert old_changes == {"status": "converted", "successor_uscc": USCC, "converted_on": "2025-06-01"}
    assert new_changes["established_on"] == "2012-03-15"
    assert new_changes["credit_rating"] == "A"
    assert new_changes["predecessor_uscc"] == SOLE_TRADER
    assert new_changes["status"] == "active"


def test_conversion_refuses_what_it_must_inherit_and_wrong_entity_classes():
    old = registered(SOLE_TRADER, company_type="individual_business")
    with pytest.raises(ChangeRefused) as err:
        conversion_changes(old, SOLE_TRADER, USCC, {**company_fields(random.Random(6))}, "2025-06-01", today=TODAY)
    assert ("changes.established_on", "conversion.inherited") in {(p.path, p.code) for p in err.value.problems}
    with pytest.raises(ChangeRefused) as err:
        conversion_changes(registered(), USCC, new_uscc(RNG), {}, "2025-06-01", today=TODAY)
    assert ("key", "conversion.not_individual_business") in {(p.path, p.code) for p in err.value.problems}


# --- the master register is the fold of its log ------------------------------------------------

def _event(key: str, seq: int, changes: dict) -> object:
    return change_event("company", key, "changed", changes, sequence=seq, actor=ACTOR, region_code="310115")


@settings(max_examples=60)
@given(st.lists(st.dictionaries(st.sampled_from(["name", "address", "business_scope"]),
                                st.one_of(st.none(), st.text(min_size=1, max_size=5)), min_size=1),
                min_size=1, max_size=12),
       st.randoms())
def test_fold_gives_each_field_its_newest_value_whatever_the_delivery(changes, rnd):
    events = [_event(USCC, i + 1, c) for i, c in enumerate(changes)]
    delivered = events + [rnd.choice(events) for _ in range(3)]  # repeats, as after a crash
    master = fold_all(delivered[: len(events)] + delivered[len(events):])[("company", USCC)]
    expected = {}
    for c in changes:
        expected.update(c)
    assert master.fields == expected
    assert master.sequence == len(changes)
    assert fold(master, events[0]) is master  # an older change is a no-op


# --- planning -----------------------------------------------------------------------------------

def _ref(changes: dict) -> plan.ChangeRef:
    return plan.ChangeRef(str(uuid.uuid4()), "company", USCC, 7, "changed", datetime(2025, 7, 1, tzinfo=timezone.utc),
                          "corr", "310115", changes)


def test_sync_tasks_are_deterministic_and_carry_only_their_fields():
    ref = _ref({"name": "新", "business_scope": "咨询", "address": None})
    a = plan.sync_task(ref, "tax", ["name", "address"], 1)
    b = plan.sync_task(ref, "tax", ["address", "name"], 1)
    assert a.id == b.id and a.payload == b.payload
    assert a.payload["fields"] == {"name": "新"}
    assert a.payload["inputs"]["cleared"] == "address"
    assert a.payload["kind"] == "register_sync" and a.key == USCC and a.envelope.sequence == 7
    assert a.envelope.causation_id == ref.event_id
    retry = plan.sync_task(ref, "tax", ["name", "address"], 2)
    assert retry.id != a.id and retry.payload["task_id"] != a.payload["task_id"]
    assert plan.sync_task(ref, "bank", ["name"], 1).payload["task_id"] != a.payload["task_id"]


def test_backoff_doubles_up_to_the_cap():
    assert [plan.backoff(n, 2, 10) for n in range(1, 6)] == [2, 4, 8, 10, 10]


def test_messages_the_cascade_cannot_process_are_named():
    ev = _event(USCC, 1, {"name": "x"})
    assert plan.check_change(ev, "registry.company", SUBS) is None
    assert plan.check_change(ev, "registry.person", SUBS) == "a company change on the wrong topic"
    bad = _event(USCC, 1, {"name": "x", "colour": "red", "size": "9"})
    assert plan.check_change(bad, "registry.company", SUBS) == "2 field(s) not in the company register"
    assert plan.check_change(_event(USCC, 0, {"name": "x"}), "registry.company", SUBS)
