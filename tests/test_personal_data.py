"""Personal data sealed under the subject's key (events/personal.py, infra/keystore.py).

Properties of the seal for pure logic; the key store, the department grants, erasure and the
master key's rotation against the real PostgreSQL.
"""
from __future__ import annotations

import base64
import os
import uuid
from contextlib import nullcontext

import psycopg
import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given
from hypothesis import strategies as st

from events import personal
from infra import db_roles, keystore, migrations, postgres_local

KEY, KID = bytes(range(32)), uuid.UUID(int=7).hex
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
fields = st.from_regex(r"[a-z][a-z_]{0,30}", fullmatch=True)


@given(fields, text)
def test_a_sealed_value_opens_to_itself_and_shows_nothing_of_it(field, value):
    sealed = personal.seal(KEY, KID, field, value)
    assert personal.is_sealed(sealed) and personal.key_id_of(sealed) == KID
    assert personal.open_value(lambda k: KEY if k == KID else None, field, sealed) == value
    if len(value) >= 4:
        assert value not in sealed


@given(fields, fields, text)
def test_a_value_moved_to_another_field_does_not_open(field, other, value):
    sealed = personal.seal(KEY, KID, field, value)
    if other != field:
        with pytest.raises(personal.SealBroken):
            personal.open_value(lambda _k: KEY, other, sealed)


@given(fields, text)
def test_a_destroyed_key_opens_as_erased(field, value):
    assert personal.open_value(lambda _k: None, field, personal.seal(KEY, KID, field, value)) == personal.ERASED


def test_only_personal_fields_are_sealed_and_clear_values_pass_through():
    form = {"child_name": "小满", "bank_name": "中国工商银行", "empty": ""}
    sealed = personal.seal_fields(KEY, KID, form, lambda f: f != "bank_name")
    assert sealed["bank_name"] == "中国工商银行" and sealed["empty"] == ""
    assert personal.is_sealed(sealed["child_name"]) and "小满" not in sealed["child_name"]
    assert personal.seal_fields(KEY, KID, sealed, lambda _f: True)["child_name"] == sealed["child_name"], \
        "sealed once"
    assert personal.open_fields(lambda _k: KEY, sealed) == form


def test_a_department_unwraps_only_what_was_wrapped_for_it(monkeypatch):
    monkeypatch.setenv("ONETHING_ENV", "dev")
    wrapped = keystore.wrap_for_department("police", KID, KEY)
    assert keystore.unwrap_as_department(keystore.department_private_key("police"), "police", KID, wrapped) == KEY
    with pytest.raises(InvalidTag):
        keystore.unwrap_as_department(keystore.department_private_key("health"), "health", KID, wrapped)


def test_one_ephemeral_for_a_case_still_leaves_each_department_only_its_own_wrap(monkeypatch):
    monkeypatch.setenv("ONETHING_ENV", "dev")
    depts = ["civil_affairs", "health", "police"]
    wraps = keystore.wrap_for_departments(depts, KID, KEY)
    for d, w in zip(depts, wraps):
        assert keystore.unwrap_as_department(keystore.department_private_key(d), d, KID, w) == KEY
        for other in set(depts) - {d}:
            with pytest.raises(InvalidTag):  # another department's key, or this row claimed as its own
                keystore.unwrap_as_department(keystore.department_private_key(other), other, KID, w)
    assert len({w[:32] for w in wraps}) == 1, "one ephemeral key a case"
    assert keystore.wrap_for_departments(depts, KID, KEY)[0][:32] != wraps[0][:32], "a new one for the next"


@given(st.dictionaries(fields, st.tuples(text, st.booleans()), max_size=8))
def test_values_under_several_keys_open_each_under_its_own_and_erased_ones_as_erased(values):
    other_kid, other_key = uuid.UUID(int=8).hex, bytes(range(1, 33))
    sealed = {f: personal.seal(KEY, KID, f, v) if mine else personal.seal(other_key, other_kid, f, v)
              for f, (v, mine) in values.items()}
    looked_up = []

    def keys(kid):
        looked_up.append(kid)
        return KEY if kid == KID else None   # the other subject's key was destroyed

    opened = personal.open_fields(keys, sealed)
    assert opened == {f: v if mine else personal.ERASED for f, (v, mine) in values.items()}
    assert sorted(looked_up) == sorted(set(looked_up)), "each key looked up once a call"


def test_outside_development_the_master_key_must_be_given(monkeypatch):
    monkeypatch.delenv("ONETHING_ENV", raising=False)
    monkeypatch.delenv(keystore.MASTER_KEY_ENV, raising=False)
    with pytest.raises(SystemExit, match="ONETHING_MASTER_KEY is not set"):
        keystore.MasterKeys.from_env()
    monkeypatch.setenv(keystore.MASTER_KEY_ENV, "c2hvcnQ=")
    with pytest.raises(SystemExit, match="32 bytes"):
        keystore.MasterKeys.from_env()


# -- the store ------------------------------------------------------------------------------------
@pytest.fixture
def owner(settings, database_url, monkeypatch):
    monkeypatch.setenv("ONETHING_ENV", "dev")
    if settings.local_postgres:
        postgres_local.ensure_roles()
    migrations.migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def test_a_subject_has_one_key_and_erasure_destroys_every_copy(owner, database_url):
    master, subject, case_id = keystore.MasterKeys.from_env(), f"subject-{uuid.uuid4().hex}", f"case-{uuid.uuid4().hex}"
    key_id, key = keystore.subject_key(owner, subject, master)
    assert keystore.subject_key(owner, subject, master) == (key_id, key), "the same key on a second call"
    keystore.grant(owner, case_id, key_id, key, ["police", "health"])
    sealed = personal.seal(key, key_id, "child_name", "小满")

    with psycopg.connect(db_roles.department_url(database_url, "police"), autocommit=True) as police:
        opens = keystore.department_keys(lambda: nullcontext(police), "police", ttl_s=0)
        assert personal.open_value(opens, "child_name", sealed) == "小满"
        assert keystore.case_key_id(police, "police", case_id) == key_id
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            police.execute("SELECT 1 FROM data_keys LIMIT 1")
    with psycopg.connect(db_roles.department_url(database_url, "tax"), autocommit=True) as tax:
        assert keystore.case_key_id(tax, "tax", case_id) is None, "tax was not sent this case"
        assert personal.open_value(keystore.department_keys(lambda: nullcontext(tax), "tax", ttl_s=0), "child_name",
                                   sealed) == personal.ERASED

    platform = keystore.platform_keys(lambda: nullcontext(owner), master, ttl_s=0)
    assert personal.open_value(platform, "child_name", sealed) == "小满"
    assert keystore.erase(owner, subject, by="supervisor:S-1", reason="test") == [key_id]
    assert personal.open_value(platform, "child_name", sealed) == personal.ERASED
    assert owner.execute("SELECT count(*) FROM department_data_keys WHERE key_id = %s", (key_id,)).fetchone()[0] == 0
    new_id, _ = keystore.subject_key(owner, subject, master)
    assert new_id != key_id, "a subject who comes back after erasure gets a new key"


def test_rotating_the_master_key_rewraps_and_the_old_values_still_open(owner, monkeypatch):
    old = keystore.MasterKeys.from_env()
    subject = f"subject-{uuid.uuid4().hex}"
    key_id, key = keystore.subject_key(owner, subject, old)
    sealed = personal.seal(key, key_id, "contact_mobile", "13800138000")
    new_key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(keystore.MASTER_KEY_ENV, new_key)
    monkeypatch.setenv(keystore.MASTER_KEY_ID_ENV, "k2")
    monkeypatch.setenv(keystore.OLD_MASTER_KEYS_ENV, f"{old.current_id}={base64.b64encode(old.keys[old.current_id]).decode()}")
    assert keystore.rotate(owner, keystore.MasterKeys.from_env()) >= 1
    assert owner.execute("SELECT master_key_id FROM data_keys WHERE key_id = %s", (key_id,)).fetchone()[0] == "k2"
    monkeypatch.delenv(keystore.OLD_MASTER_KEYS_ENV)
    only_new = keystore.MasterKeys.from_env()
    assert personal.open_value(keystore.platform_keys(lambda: nullcontext(owner), only_new, ttl_s=0),
                               "contact_mobile", sealed) == "13800138000"
    # the rest of the suite's keys: back under the development master key
    monkeypatch.setenv(keystore.OLD_MASTER_KEYS_ENV, f"k2={new_key}")
    monkeypatch.delenv(keystore.MASTER_KEY_ENV)
    keystore.rotate(owner, keystore.MasterKeys.from_env())



def test_a_department_sees_only_the_outputs_its_own_services_wait_for(monkeypatch):
    """Disease control's clerk no longer sees the child's resident ID the police issued; the
    tax office, whose premium needs it, does; the applicant sees every output, opened."""
    from types import SimpleNamespace

    from catalog.loader import load_catalog
    from producers.api_personal import shown_view

    catalog = load_catalog()
    sealed = personal.seal(KEY, KID, "child_resident_id", "440203202611290012")
    view = {"services": [
        {"service_id": "police.birth_registration", "department": "police", "outputs": {"child_resident_id": sealed}},
        {"service_id": "disease_control.vaccination_record", "department": "disease_control",
         "outputs": {"vaccination_record_no": "VR-1"}},
        {"service_id": "tax.newborn_premium", "department": "tax", "outputs": {}}]}
    state = SimpleNamespace(catalog=catalog, platform_keys=lambda: (lambda k: KEY if k == KID else None))

    def outputs(role: str, department: str | None) -> dict[str, dict]:
        shown = shown_view(state, view, SimpleNamespace(role=role, department=department))
        return {s["service_id"]: s["outputs"] for s in shown["services"]}

    dc = outputs("department", "disease_control")
    assert dc["police.birth_registration"] == {} and dc["disease_control.vaccination_record"] == {"vaccination_record_no": "VR-1"}
    assert outputs("department", "tax")["police.birth_registration"] == {"child_resident_id": "440203202611290012"}
    assert outputs("applicant", None)["police.birth_registration"] == {"child_resident_id": "440203202611290012"}
