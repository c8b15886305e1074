"""The registers' own personal data, sealed (crypto-shredding, issue 11): a person's household
address and death certificate number, a company's legal representative's name and resident ID.

Pure: which fields are personal is declared once (catalog/data/subscriptions.yaml), whose key
seals them (the person; the legal representative), that only those are sealed and open back, and
which departments are granted the key. Against the real broker and PostgreSQL, with the cascade
and an adapter per subscribing department running: a household move, a death (through a
department that fails until escalated) and a change of legal representative leave none of their
values in clear in any raw record on registry.person, registry.company, cascade, tasks.<dept>,
decisions.<dept> or the dead letters, nor in the register's or the cascade's tables; each
department's copy holds the clear values it keeps; the master entry and its rebuild from the log
agree; the proactive processor still finds the legal representative. After erasing the person
and the representative, the entry, the rebuild, the sync tasks and a department copy rebuilt
from them read 已删除, the cascade and the proactive processor go on, and an event written before
sealing is still read as it is.
"""
from __future__ import annotations

import json
import random
import time
import uuid
from contextlib import nullcontext
from datetime import date

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalog.loader import CatalogError, load_catalog
from catalog.subscriptions import load_subscriptions
from department_adapters.personal_data import DepartmentKeys
from department_adapters.reference.register_copy import RegisterCopyBackend, clear_outage, read_copy, set_outage
from events import bus, personal
from events.envelope import Actor
from infra import keystore
from infra.topics import CASCADE, DEADLETTER, REGISTRY_COMPANY, REGISTRY_PERSON, decisions_topic, tasks_topic
from producers import erasure, identity
from producers.register_changes import (ChangeRefused, change_event, key_holders, seal_changes, sealing_subject)
from producers.register_log import master_from_log, verify_master
from producers.registers import RegisterRecorder, register_key
from projectors.checkpoint import Item, Step
from projectors.proactive import ProactiveProcessor

from .support.cascade_harness import company_fields, end_offsets, new_resident_id, new_uscc
from .support.topics import read_messages

SUBS = load_subscriptions()
COMPANY, PERSON = SUBS.register("company"), SUBS.register("person")
KEY, KEY_ID = bytes(range(32)), "ab" * 16
REGISTER = Actor("register:population", "register", "register")


def _lookup(key_id: str) -> bytes | None:
    return KEY if key_id == KEY_ID else None


# --- pure -----------------------------------------------------------------------------------------

def test_the_registers_declare_once_what_is_personal_and_whose_it_is():
    assert PERSON.personal_fields == {"household_address", "death_certificate_no"}
    assert COMPANY.personal_fields == {"legal_representative_name", "legal_representative_resident_id"}
    assert PERSON.subject == "key" and COMPANY.subject == "legal_representative_resident_id"
    for reg in (PERSON, COMPANY):  # what the cascade routes and the rules trigger on stays clear
        assert not reg.personal_fields & {"status", "date_of_death", "household_region_code", "household_moved_on",
                                          "established_on", "converted_on", "predecessor_uscc", "successor_uscc"}


_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40)


@given(st.sampled_from(["person", "company"]).flatmap(
    lambda r: st.tuples(st.just(r), st.dictionaries(st.sampled_from(sorted(SUBS.register(r).fields)),
                                                    st.one_of(st.none(), _text), min_size=1))))
def test_only_personal_values_are_sealed_and_each_opens_back_in_its_own_field(case):
    register, changes = case
    reg = SUBS.register(register)
    sealed = seal_changes(reg, changes, KEY, KEY_ID)
    assert list(sealed) == list(changes)
    for field, value in changes.items():
        if field in reg.personal_fields and value:
            assert personal.is_sealed(sealed[field])
            assert personal.open_value(_lookup, field, sealed[field]) == value
        else:
            assert sealed[field] == value
    assert personal.open_fields(_lookup, {k: v for k, v in sealed.items() if v is not None}) == {
        k: v for k, v in changes.items() if v is not None}


def test_the_key_is_the_persons_own_for_both_registers():
    rid, other = new_resident_id(random.Random(1)), new_resident_id(random.Random(2))
    token = identity.subject_token(rid)
    assert sealing_subject(PERSON, token, {"household_address": "上海市静安区"}, {}) == token
    assert sealing_subject(PERSON, token, {"status": "deceased", "date_of_death": "2025-01-01"}, {}) is None
    rep = {"legal_representative_name": "欧阳明", "legal_representative_resident_id": other}
    assert sealing_subject(COMPANY, "91310115MA1K4LXQ8H", rep, {}) == identity.subject_token(other)
    assert sealing_subject(COMPANY, "91310115MA1K4LXQ8H", {"legal_representative_name": "欧阳明"},
                           {"legal_representative_resident_id": rid}) == token   # the representative as registered
    assert sealing_subject(COMPANY, "91310115MA1K4LXQ8H", {"name": "新名称有限公司"}, {}) is None
    for current in ({}, {"legal_representative_resident_id": personal.ERASED}):
        with pytest.raises(ChangeRefused) as refused:
            sealing_subject(COMPANY, "91310115MA1K4LXQ8H", {"legal_representative_name": "欧阳明"}, current)
        assert [p.path for p in refused.value.problems] == ["changes.legal_representative_resident_id"]
        assert "欧阳明" not in str(refused.value)


def test_only_the_departments_sent_a_sealed_value_are_granted_the_key():
    moved = seal_changes(PERSON, {"household_address": "上海市静安区南京西路1号", "household_region_code": "310106",
                                  "household_moved_on": "2024-01-02"}, KEY, KEY_ID)
    assert key_holders(SUBS, "person", moved) == ("civil_affairs", "police")   # hrss, 医保 keep only the region
    died = seal_changes(PERSON, {"date_of_death": "2025-01-01", "death_certificate_no": "SW-1", "status": "deceased"},
                        KEY, KEY_ID)
    assert key_holders(SUBS, "person", died) == ("funeral", "police")
    rep = seal_changes(COMPANY, {"legal_representative_name": "欧阳明",
                                 "legal_representative_resident_id": new_resident_id(random.Random(3))}, KEY, KEY_ID)
    assert set(key_holders(SUBS, "company", rep)) == set(SUBS.targets("company", rep))
    assert key_holders(SUBS, "company", {"name": "新名称有限公司"}) == ()
    assert key_holders(SUBS, "person", {"household_address": "before sealing, in clear"}) == ()


def test_a_subject_that_is_not_a_resident_id_field_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "subscriptions.yaml"
    path.write_text("registers:\n  company:\n    zh: 登记簿\n    en: Register\n    key: USCC\n"
                    "    subject: name\n    fields:\n      name: {zh: 名称, en: Name, type: text, pii: true}\n"
                    "subscriptions:\n  tax:\n    company: {fields: [name], source: x}\n")
    with pytest.raises(CatalogError) as err:
        load_subscriptions(path, departments={"tax"})
    assert "subscriptions.yaml:6: register company: subject must be `key` or one of its resident_id fields" \
        in str(err.value)


# --- against the broker and the database ---------------------------------------------------------

_SURNAMES, _GIVEN = "欧阳司马上官诸葛东方皇甫尉迟公孙", "翊翾翀翃翚翛翜翡翣翥翦翧翨翩翪翫翬翭翮翯"


def _name(rng: random.Random) -> str:
    i = rng.randrange(0, len(_SURNAMES), 2)
    return _SURNAMES[i:i + 2] + rng.choice(_GIVEN) + rng.choice(_GIVEN)


def _all_topics() -> list[str]:
    departments = SUBS.departments()
    return [REGISTRY_PERSON, REGISTRY_COMPANY, CASCADE, DEADLETTER, *(tasks_topic(d) for d in departments),
            *(decisions_topic(d) for d in departments)]


def _fold_proactive(database_url: str, topic: str, event) -> list:
    """The proactive processor's step over one register event, as the runtime runs it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        step = Step(conn, items=[Item(topic, 0, 0, event.key.encode(), b"", event)])
        with conn.transaction():
            ProactiveProcessor().process(step)
        return [e for _t, e in step.out]


def _wait_escalated(database_url: str, cascade: str, key: str, department: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            if conn.execute("SELECT 1 FROM cascade_targets WHERE cascade = %s AND register_key = %s AND department = %s"
                            " AND escalated_at IS NOT NULL", (cascade, key, department)).fetchone():
                return
        time.sleep(0.3)
    raise AssertionError(f"{department} was never escalated")


from .test_cascade_flow import world  # noqa: E402,F401  (the cascade and every subscribing department, running)


@pytest.mark.broker
@pytest.mark.postgres
def test_register_personal_data_is_ciphertext_everywhere_opens_for_its_departments_and_erases(
        world, bootstrap, database_url):
    from .test_cascade_flow import copies

    rng = random.Random()
    rid, address, certificate = new_resident_id(rng), f"上海市静安区南京西路{rng.randint(1000, 99999)}弄", \
        f"SW-{uuid.uuid4().hex[:12]}"
    token = register_key("person", rid)
    uscc = new_uscc(rng)
    reps = [(_name(rng), new_resident_id(rng, "440203")) for _ in range(2)]
    secrets = [rid, address, certificate, *(v for rep in reps for v in rep)]
    world.keys(token, uscc)
    starts = end_offsets(bootstrap, _all_topics())

    world.recorder.move_household(rid, address, "310106", "2023-09-01")
    with psycopg.connect(database_url, autocommit=True) as conn:
        set_outage(conn, "funeral", 60, "failing", "火化系统维护")   # the death is retried, then escalated
    world.recorder.record_death(rid, "2025-06-28", certificate)
    world.recorder.register_company(uscc, {**company_fields(rng), "legal_representative_name": reps[0][0],
                                           "legal_representative_resident_id": reps[0][1]})
    world.recorder.change_company(uscc, {"legal_representative_name": reps[1][0],
                                         "legal_representative_resident_id": reps[1][1]})
    moved = world.recorder.change_company(uscc, {"address": f"上海市浦东新区世纪大道{rng.randint(1, 999)}号"})
    _wait_escalated(database_url, world.name, token, "funeral")
    with psycopg.connect(database_url, autocommit=True) as conn:
        clear_outage(conn, "funeral")
    world.wait([token], 2)
    world.wait([uscc], 3)

    # 1. no value in clear in any raw record of any topic that carried them, nor in the tables
    messages = read_messages(bootstrap, starts)
    mine = [(m, ev) for m, ev in messages if ev is not None and ev.key in (token, uscc)]
    assert {m.topic for m, _ev in mine} >= {REGISTRY_PERSON, REGISTRY_COMPANY, CASCADE, tasks_topic("police"),
                                            tasks_topic("bank"), tasks_topic("funeral")}
    assert any(ev.type == "CascadeEscalated" for _m, ev in mine)
    for m, ev in messages:
        raw = (m.key or b"") + (m.value or b"")
        text = repr(ev.payload) if ev is not None else ""
        for secret in secrets:
            assert secret.encode() not in raw and secret not in text, (m.topic, m.offset)
    with psycopg.connect(database_url) as conn:
        stored = json.dumps([conn.execute("SELECT record::text, encode(pending_event, 'escape') FROM register_keys "
                                          "WHERE register_key = ANY(%s)", ([token, uscc],)).fetchall(),
                             conn.execute("SELECT changes::text FROM cascade_changes WHERE register_key = ANY(%s)",
                                          ([token, uscc],)).fetchall()], ensure_ascii=False)
        holders = {d for (d,) in conn.execute("SELECT department FROM department_data_keys WHERE case_id = %s",
                                              (keystore.REGISTER_GRANT_PREFIX + token,))}
        rep_holders = {d for (d,) in conn.execute("SELECT department FROM department_data_keys WHERE case_id = %s",
                                                  (keystore.REGISTER_GRANT_PREFIX + identity.subject_token(reps[1][1]),))}
    assert not [s for s in secrets if s in stored]
    assert holders == {"police", "civil_affairs", "funeral"}, "only who is sent a sealed value holds the key"
    assert rep_holders == set(SUBS.targets("company", COMPANY.personal_fields))
    sealed_entry = world.recorder.master("person", rid, opened=False).fields
    assert personal.is_sealed(sealed_entry["household_address"]) and sealed_entry["date_of_death"] == "2025-06-28"

    # 2. each department's copy holds the clear values it keeps; the entry opens for its readers
    person_copies = copies(database_url, token)
    assert person_copies["police"]["fields"]["household_address"] == address
    assert person_copies["police"]["fields"]["death_certificate_no"] == certificate
    assert person_copies["civil_affairs"]["fields"]["household_address"] == address
    assert person_copies["funeral"]["fields"]["death_certificate_no"] == certificate
    assert "household_address" not in person_copies["hrss"]["fields"]
    company_copies = copies(database_url, uscc)
    assert company_copies["bank"]["fields"]["legal_representative_name"] == reps[1][0]
    assert company_copies["bank"]["fields"]["legal_representative_resident_id"] == reps[1][1]
    assert company_copies["hrss"]["fields"]["legal_representative_name"] == reps[1][0]
    entry = world.recorder.master("company", uscc).fields
    assert (entry["legal_representative_name"], entry["legal_representative_resident_id"]) == reps[1]
    for dept, copy in company_copies.items():
        assert copy["fields"] == {f: entry[f] for f in SUBS.fields_for(dept, "company") if f in entry}, dept
    assert world.recorder.master("person", rid).fields["household_address"] == address
    # the master entry is the fold of the log: the same ciphertext, compared without a key
    assert verify_master(bootstrap, database_url, "person", {token}) == []
    assert verify_master(bootstrap, database_url, "company", {uscc}) == []
    # the proactive processor finds the legal representative from the sealed entry (no master key)
    moved_event = next(ev for m, ev in mine if m.topic == REGISTRY_COMPANY and ev.id == moved.event_id)
    offers = [e for e in _fold_proactive(database_url, REGISTRY_COMPANY, moved_event)
              if e.payload.get("rule") == "enterprise_relocation_offer"]
    assert [o.key for o in offers] == [identity.subject_token(reps[1][1])]

    # 3. erase the person and the representative: everything reads 已删除, nothing stops
    catalog = load_catalog()
    supervisor = Actor("sup-test", "supervisor", "online", staff_id="S-11")
    producer = bus.make_producer(bootstrap)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for subject in (token, identity.subject_token(reps[1][1])):
                erasure.erase(conn, lambda topic, ev: bus.publish(producer, topic, ev), catalog, subject,
                              actor=supervisor, reason="本人要求删除", today=date.today(), override=True)
    finally:
        producer.close()
    fresh = RegisterRecorder(bootstrap, database_url)   # a process started after the erasure: no cached key
    try:
        after = fresh.master("person", rid).fields
        assert after["household_address"] == after["death_certificate_no"] == personal.ERASED
        assert (after["date_of_death"], after["status"]) == ("2025-06-28", "deceased")
        company = fresh.master("company", uscc).fields
        assert company["legal_representative_name"] == company["legal_representative_resident_id"] == personal.ERASED
        assert company["name"] == entry["name"], "the company's own items are kept"
    finally:
        fresh.close()
    assert verify_master(bootstrap, database_url, "person", {token}) == []
    with psycopg.connect(database_url) as conn:
        keys = keystore.platform_keys(lambda: nullcontext(conn), ttl_s=0)
        rebuilt = master_from_log(bootstrap, "person", {token})[token].fields
        assert personal.open_value(keys, "household_address", rebuilt["household_address"]) == personal.ERASED
        assert not conn.execute("SELECT 1 FROM department_data_keys WHERE case_id = %s",
                                (keystore.REGISTER_GRANT_PREFIX + token,)).fetchone()

    # the police rebuild their copy from the sync tasks on their topic: the erased values stay erased
    police_tasks = sorted({ev.id: ev for m, ev in mine if m.topic == tasks_topic("police") and ev.key == token
                           and ev.type == "TaskDispatched"}.values(), key=lambda t: t.envelope.sequence)
    assert [t.payload["inputs"]["change_kind"] for t in police_tasks] == ["household_moved", "died"]
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM register_copies WHERE department = 'police' AND register_key = %s", (token,))
        conn.execute("DELETE FROM register_copy_applied WHERE department = 'police' AND register_key = %s", (token,))
        conn.execute("DELETE FROM register_copy_follow_ups WHERE department = 'police' AND register_key = %s", (token,))
        police = DepartmentKeys("police").bind(conn)
        backend = RegisterCopyBackend("police")
        for task in police_tasks:
            opened = police.open_task(task)
            assert [d.outcome for d in backend.handle(opened, conn)] == ["applied"]
        conn.commit()
        rebuilt_copy = read_copy(conn, "police", "person", token)["fields"]
    assert rebuilt_copy["household_address"] == rebuilt_copy["death_certificate_no"] == personal.ERASED
    assert (rebuilt_copy["household_region_code"], rebuilt_copy["status"]) == ("310106", "deceased")

    # the cascade, the adapters and the proactive processor go on
    company_starts = end_offsets(bootstrap, [REGISTRY_COMPANY])
    later = world.recorder.change_company(uscc, {"address": f"上海市黄浦区中山东一路{rng.randint(1, 99)}号"})
    world.wait([uscc], 4)
    assert world.failure is None
    (later_event,) = [ev for _m, ev in read_messages(bootstrap, company_starts,
                                                     keep=lambda m, ev: ev is not None and ev.id == later.event_id)]
    assert not [e for e in _fold_proactive(database_url, REGISTRY_COMPANY, later_event)
                if e.payload.get("rule") == "enterprise_relocation_offer"], "nobody to tell: the representative was erased"
    assert copies(database_url, uscc)["bank"]["fields"]["legal_representative_name"] == reps[1][0], \
        "a department's own register is kept under its own law"


@pytest.mark.broker
@pytest.mark.postgres
def test_a_change_recorded_before_sealing_is_read_as_it_is(world, bootstrap, database_url):
    """The log is kept forever: clear values from before still flow to the departments and fold."""
    rng = random.Random()
    rid = new_resident_id(rng)
    token = register_key("person", rid)
    address = f"上海市徐汇区衡山路{rng.randint(1000, 99999)}号"
    world.keys(token)
    starts = end_offsets(bootstrap, [tasks_topic("police")])
    old = change_event("person", token, "household_moved", {"household_address": address,
                                                            "household_region_code": "310104",
                                                            "household_moved_on": "2019-05-06"},
                       sequence=1, actor=REGISTER, region_code="310104")
    producer = bus.make_producer(bootstrap)
    try:
        bus.publish(producer, REGISTRY_PERSON, old)
    finally:
        producer.close()
    world.wait([token], 1)
    copy = read_copy(psycopg.connect(database_url), "police", "person", token)
    assert copy["fields"]["household_address"] == address
    assert master_from_log(bootstrap, "person", {token})[token].fields["household_address"] == address
    (task,) = [ev for _m, ev in read_messages(bootstrap, starts, keep=lambda m, ev: ev is not None and ev.key == token)]
    with psycopg.connect(database_url) as conn:
        assert DepartmentKeys("police").bind(conn).open_task(task) is task, "nothing sealed: read as it is"
    assert task.payload["fields"]["household_address"] == address
    # the next change of that person, recorded now, is sealed and checked against the clear entry
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO register_keys (register, register_key, next_sequence, record) VALUES "
                     "('person', %s, 2, %s)", (token, json.dumps(dict(old.payload["changes"]), ensure_ascii=False)))
    world.recorder.record_death(rid, "2025-07-01", f"SW-{uuid.uuid4().hex[:10]}")
    world.wait([token], 2)
    entry = world.recorder.master("person", rid, opened=False).fields
    assert entry["household_address"] == address and personal.is_sealed(entry["death_certificate_no"])
    assert verify_master(bootstrap, database_url, "person", {token}) == []

