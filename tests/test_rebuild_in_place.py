"""`postgres_projection.rebuild` empties the read model it is given, and only that one: a
projection of unqualified tables (ratings, escalation queue, read audit) placed in a schema of its
own must not empty the live tables of the same names in public (found reading the code: its reset
ran without the projection's search_path)."""
from __future__ import annotations

import uuid

import psycopg
import pytest

from events import bus
from events.envelope import Actor, new_event
from infra import migrations
from projectors.postgres_projection import drop_schema, rebuild
from projectors.ratings import RatingsProjection

RUN = uuid.uuid4().hex[:8]
APPLICANT = Actor("p_test_applicant", "applicant", "online")


def rated(case_id: str):
    return new_event("CaseRated", case_id, {"rating_id": f"r-{case_id}", "grade": "satisfied", "comment": None,
                                            "services": []}, actor=APPLICANT, region_code="440203")


@pytest.mark.postgres
def test_a_rebuild_in_a_schema_of_its_own_leaves_the_live_tables_alone(bootstrap, database_url, fresh_topic):
    migrations.migrate(database_url)
    live_case, schema = f"case-rip-live-{RUN}", f"rip_{RUN}"
    topic = fresh_topic(partitions=1)
    producer = bus.make_producer(bootstrap)
    try:
        bus.publish(producer, topic, rated(f"case-rip-log-{RUN}"))
    finally:
        producer.close()
    projection = RatingsProjection(name=schema, schema=schema)
    projection.topics = (topic,)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:   # a row in public, as the live one has
            projection.create_schema(conn, schema)
            conn.execute("INSERT INTO public.case_ratings (case_id, rating_id, grade, services, rated_at) "
                         "VALUES (%s, %s, 'satisfied', '[]', now())", (live_case, f"r-{live_case}"))
        assert rebuild(projection, bootstrap, database_url) == 1
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FROM public.case_ratings WHERE case_id = %s",
                                (live_case,)).fetchone()[0] == 1   # the live row is still there
            assert [r[0] for r in conn.execute(f"SELECT case_id FROM {schema}.case_ratings")] == \
                [f"case-rip-log-{RUN}"]   # the rebuilt model holds the log, and only the log
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM public.case_ratings WHERE case_id = %s", (live_case,))
            drop_schema(conn, schema)
            conn.execute("DELETE FROM consumer_offsets WHERE consumer = %s", (schema,))
            conn.execute("DELETE FROM processed_events WHERE consumer = %s", (schema,))
