"""Register producers against the real broker and PostgreSQL: per-key sequences without gap or
reuse under concurrent writers, produce failures and a crash between acknowledgement and commit,
idempotent retries, refusals that produce nothing, and person keys that never carry a resident ID."""
from __future__ import annotations

import random
import threading
import uuid

import psycopg
import pytest
from kafka.errors import KafkaTimeoutError

from infra.topics import REGISTRY_COMPANY, REGISTRY_PERSON
from producers.register_changes import ChangeRefused, fold_all
from producers.register_log import verify_master
from producers.register_resources import RegisterUnavailable
from producers.registers import ChangeNotConfirmed, RegisterRecorder, register_key

from .support.cascade_harness import company_fields, end_offsets, new_resident_id, new_uscc
from .support.topics import read_messages

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


@pytest.fixture
def recorder(bootstrap, database_url):
    r = RegisterRecorder(bootstrap, database_url)
    yield r
    r.close()


def events_of(bootstrap, starts, key):
    return [ev for _m, ev in read_messages(bootstrap, starts, keep=lambda m, ev: ev is not None and ev.key == key)]


def test_concurrent_writers_of_one_company_get_gapless_sequences_in_log_order(bootstrap, recorder):
    rng = random.Random()
    uscc = new_uscc(rng)
    starts = end_offsets(bootstrap, [REGISTRY_COMPANY])
    recorder.register_company(uscc, company_fields(rng))
    errors = []

    def writer(w: int) -> None:
        try:
            for i in range(15):
                recorder.change_company(uscc, {"business_scope": f"经营范围 {w}-{i}"})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert verify_master(bootstrap, recorder.database_url, "company", {uscc}) == []
    events = events_of(bootstrap, starts, uscc)
    assert [e.envelope.sequence for e in events] == list(range(1, 122))  # in log order, no gap, no repeat
    assert len({e.id for e in events}) == 121
    # the master register is the fold of the log: the same ciphertext (the legal representative sealed)
    assert fold_all(events)[("company", uscc)].fields == recorder.master("company", uscc, opened=False).fields


class _CrashAfterAck(RegisterRecorder):
    """Dies (once) after the broker acknowledged a change and before the confirm commits."""
    crash = True

    def _confirm(self, conn, after, event):
        if self.crash:
            self.crash = False
            raise SystemExit("killed between acknowledgement and commit")
        super()._confirm(conn, after, event)


def test_a_crash_between_acknowledgement_and_commit_neither_skips_nor_reuses_a_sequence(bootstrap, database_url):
    rng = random.Random()
    uscc = new_uscc(rng)
    starts = end_offsets(bootstrap, [REGISTRY_COMPANY])
    r = _CrashAfterAck(bootstrap, database_url)
    try:
        r.crash = False
        r.register_company(uscc, company_fields(rng))
        r.crash = True
        with pytest.raises(SystemExit):
            r.change_company(uscc, {"name": "崩溃前的名称有限公司"})
        # the next writer (any process) produces the intent again, then its own change
        r.change_company(uscc, {"address": "上海市徐汇区漕溪北路1号"})
        assert r.master("company", uscc).fields["name"] == "崩溃前的名称有限公司"
    finally:
        r.close()
    events = events_of(bootstrap, starts, uscc)
    first_seen = {}
    for e in events:
        first_seen.setdefault(e.id, e.envelope.sequence)
    assert sorted(first_seen.values()) == [1, 2, 3]
    assert [e.envelope.sequence for e in events] == [1, 2, 2, 3]  # the repeat carries the same id
    assert events[1].id == events[2].id


class _Future:
    def get(self, timeout=None):
        raise KafkaTimeoutError("no acknowledgement")


class _Unreachable:
    """A producer whose broker is gone: refuses before sending, or sends and never hears back."""

    def __init__(self, refuse: bool):
        self.refuse = refuse

    def send(self, *a, **kw):
        if self.refuse:
            raise KafkaTimeoutError("metadata not available")
        return _Future()


def test_a_refused_produce_records_nothing_and_an_unacknowledged_one_is_produced_before_the_next(
        bootstrap, database_url, recorder):
    rng = random.Random()
    uscc = new_uscc(rng)
    starts = end_offsets(bootstrap, [REGISTRY_COMPANY])
    recorder.register_company(uscc, company_fields(rng))

    refusing = RegisterRecorder(bootstrap, database_url, producer=_Unreachable(refuse=True))
    with pytest.raises(RegisterUnavailable):
        refusing.change_company(uscc, {"name": "不会登记的名称有限公司"})
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT next_sequence, pending_event FROM register_keys WHERE register = 'company' "
                            "AND register_key = %s", (uscc,)).fetchone() == (2, None)

    silent = RegisterRecorder(bootstrap, database_url, producer=_Unreachable(refuse=False))
    change_id = f"chg-{uuid.uuid4().hex}"
    with pytest.raises(ChangeNotConfirmed) as err:
        silent.change_company(uscc, {"name": "待确认的名称有限公司"}, change_id=change_id)
    assert err.value.sequence == 2
    refusing.close()
    silent.close()

    # the caller retries with the same change id: the held change goes out, answered as recorded
    again = recorder.change_company(uscc, {"name": "待确认的名称有限公司"}, change_id=change_id)
    assert again.replayed and again.sequence == 2 and again.event_id == err.value.event_id
    recorder.change_company(uscc, {"business_scope": "之后的变更"})
    events = events_of(bootstrap, starts, uscc)
    assert [e.envelope.sequence for e in events] == [1, 2, 3]
    assert events[1].payload["changes"] == {"name": "待确认的名称有限公司"}


def test_a_change_id_answers_a_retry_once_and_refuses_reuse_for_another_change(bootstrap, recorder):
    rng = random.Random()
    uscc = new_uscc(rng)
    starts = end_offsets(bootstrap, [REGISTRY_COMPANY])
    recorder.register_company(uscc, company_fields(rng))
    cid = f"chg-{uuid.uuid4().hex}"
    first = recorder.change_company(uscc, {"name": "甲有限公司"}, change_id=cid)
    second = recorder.change_company(uscc, {"name": "甲有限公司"}, change_id=cid)
    assert second.replayed and (second.sequence, second.event_id) == (first.sequence, first.event_id)
    with pytest.raises(ChangeRefused) as err:
        recorder.change_company(uscc, {"name": "乙有限公司"}, change_id=cid)
    assert [p.code for p in err.value.problems] == ["change_id.reused"]
    assert len(events_of(bootstrap, starts, uscc)) == 2


def test_a_malformed_change_is_refused_with_reasons_and_produces_nothing(bootstrap, recorder):
    rng = random.Random()
    uscc = new_uscc(rng)
    starts = end_offsets(bootstrap, [REGISTRY_COMPANY])
    recorder.register_company(uscc, company_fields(rng))
    with pytest.raises(ChangeRefused) as err:
        recorder.change_company(uscc, {"name": "  ", "shareholders": "x", "registered_capital": "many"})
    assert {(p.path, p.code) for p in err.value.problems} == {
        ("changes.name", "required"), ("changes.shareholders", "change.unknown_field"),
        ("changes.registered_capital", "amount.format")}
    bad = uscc[:17] + ("0" if uscc[17] != "0" else "1")
    with pytest.raises(ChangeRefused) as err:
        recorder.change_company(bad, {"name": "x"})
    assert [(p.path, p.code) for p in err.value.problems] == [("key", "uscc.checksum")]
    assert [e.envelope.sequence for e in events_of(bootstrap, starts, uscc)] == [1]
    assert recorder.master("company", bad) is None


def test_person_changes_travel_under_a_token_and_never_carry_the_resident_id(bootstrap, recorder, capsys):
    rid = new_resident_id(random.Random())
    token = register_key("person", rid)
    starts = end_offsets(bootstrap, [REGISTRY_PERSON])
    recorder.move_household(rid, "上海市黄浦区南京东路1号", "310101", "2024-05-01")
    recorder.record_death(rid, "2025-06-30", "SW-310101-0001")
    with pytest.raises(ChangeRefused) as err:
        recorder.move_household(rid, "上海市黄浦区南京东路2号", "310101", "2025-07-01")
    assert [p.code for p in err.value.problems] == ["person.deceased"]
    raw = read_messages(bootstrap, starts, keep=lambda m, ev: ev is not None and ev.key == token)
    assert [ev.envelope.sequence for _m, ev in raw] == [1, 2]
    assert raw[0][1].envelope.region_code == "310101"
    assert raw[1][1].payload["changes"]["status"] == "deceased"
    for m, _ev in raw:
        assert rid.encode() not in m.key + m.value
    with psycopg.connect(recorder.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM register_keys WHERE register_key = %s", (rid,)).fetchone()[0] == 0
    assert rid not in capsys.readouterr().err


def test_a_discarded_producer_with_records_pending_stops_its_sender_thread(bootstrap, database_url):
    """After a change the broker did not confirm, the recorder drops its producer for a fresh one.
    kafka-python's close(timeout=0) raises on records still pending before it stops the sender:
    a producer discarded that way kept its I/O thread (and its connections) for the process's life."""
    from events import bus

    from .support.poison import Topics

    recorder, topics = RegisterRecorder(bootstrap, database_url), Topics(bootstrap)
    try:
        (topic,) = topics.make(f"discarded-{uuid.uuid4().hex[:8]}")   # not a register's: nobody consumes it
        wedged = bus.make_producer(bootstrap, client_id="onething-registers-test", linger_ms=60_000)
        wedged.send(topic, key=b"k", value=b"pending for a minute")   # held by linger
        recorder._producer = wedged
        sender = wedged._sender
        recorder._discard_producer()
        sender.join(5)
        assert not sender.is_alive(), "the discarded producer's sender thread still runs"
        assert recorder._producer is None
    finally:
        recorder.close()
        topics.delete()
