"""Reading dead letters as an operator: the latest letters, and the record of what was seen.

Opening a dead letter shows an original event, whose personal fields an operator may open too;
that is a read of someone's data like a clerk's, so each opened event of a case is recorded on
`audit.reads` (kind `dead_letter`, purpose `operations`, the operator's staff id in the envelope,
the reason they gave as the purpose's id — on the topic only, never in a log line), before the
command prints anything.
"""
from __future__ import annotations

import uuid

import psycopg
from kafka import KafkaConsumer, TopicPartition

from events import bus, codec, kafka_auth, personal
from events.envelope import Actor, Event, new_event
from infra.topics import AUDIT_READS

UNKNOWN_REGION = "000000"


def latest(bootstrap: str, topic: str, limit: int) -> list[Event]:
    """The last `limit` dead letters of each partition, oldest first."""
    consumer = KafkaConsumer(**kafka_auth.connection(bootstrap), enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begins[tp], ends[tp] - limit))
        out: list[Event] = []
        left = {tp for tp in tps if consumer.position(tp) < ends[tp]}
        while left:
            for tp, records in consumer.poll(timeout_ms=2000).items():
                for r in records:
                    if r.offset < ends[tp]:
                        try:
                            out.append(codec.decode(r.value))
                        except Exception:  # not a dead letter (a poison of the dead-letter topic itself)
                            pass
                if consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        return sorted(out, key=lambda e: e.envelope.occurred_at)[-limit:]
    finally:
        consumer.close()


def record_operator_reads(producer, database_url: str, operator: str, reason: str, originals: list[Event],
                          with_fields: bool) -> int:
    """One PersonalDataRead per original event of a known case; acknowledged before returning."""
    case_ids = sorted({e.key for e in originals if e.key})
    if not case_ids:
        return 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        subjects = dict(conn.execute("SELECT case_id, applicant_token FROM intake_cases WHERE case_id = ANY(%s)",
                                     (case_ids,)).fetchall())
    actor = Actor(f"operator:{operator}", "system", "system", staff_id=operator)
    # never the operator's reason here: it is free text and correlation ids are logged
    correlation = f"deadletters:{uuid.uuid4().hex[:12]}"
    events = []
    for original in originals:
        subject = subjects.get(original.key)
        if subject is None:
            continue
        form = original.payload.get("form") or original.payload.get("fields") or {}
        shown = sorted(k for k, v in form.items() if personal.is_sealed(v)) if with_fields else []
        events.append(new_event("PersonalDataRead", subject, {
            "subject": subject, "department": None, "kind": "dead_letter", "case_id": original.key,
            "service_id": original.payload.get("service_id"), "fields": shown, "document_id": None,
            "purpose": "operations", "purpose_id": reason[:200], "route": "onething deadletters show"},
            actor=actor, region_code=original.envelope.region_code or UNKNOWN_REGION, correlation_id=correlation))
    bus.publish_all(producer, [(AUDIT_READS, e) for e in events])
    return len(events)
