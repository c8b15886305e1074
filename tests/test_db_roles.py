"""A department adapter's PostgreSQL role reaches its own tables and rows, nothing of the platform.

Real PostgreSQL: the roles `onething up` creates (infra/postgres_local.py) and the grants and
row policies the migrations apply (infra/db_roles.py), tried as the police adapter connects.
"""
from __future__ import annotations

import uuid

import psycopg
import pytest

from infra import db_roles, migrations, postgres_local

pytestmark = pytest.mark.postgres
RUN = uuid.uuid4().hex[:8]


@pytest.fixture
def owner(settings, database_url):
    if settings.local_postgres:
        postgres_local.ensure_roles()
    migrations.migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        if not db_roles.existing_roles(conn, ["police", "health"]):
            pytest.skip("this database has no department roles (create them as its administrator: README)")
        yield conn
        conn.execute("DELETE FROM adapter_decisions WHERE task_id LIKE %s", (f"roles-{RUN}-%",))
        conn.execute("DELETE FROM consumer_offsets WHERE topic = %s", (f"roles-{RUN}",))


@pytest.fixture
def police(owner, database_url):
    with psycopg.connect(db_roles.department_url(database_url, "police"), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "onething_dept_police"
        yield conn


@pytest.mark.parametrize("table", ["e_license_holders", "dispatch_cases", "intake_documents", "intake_cases",
                                   "case_view", "health_birth_certificates", "register_keys"])
def test_a_department_is_refused_on_platform_tables_and_other_departments(police, table):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        police.execute(f"SELECT 1 FROM {table} LIMIT 1")


def test_a_department_reads_and_writes_its_own_register(police):
    police.execute("SELECT count(*) FROM police_household_register").fetchone()
    police.execute("SELECT max(version) FROM schema_version").fetchone()  # the check before it starts
    police.execute("SELECT count(*) FROM department_work_items").fetchone()


def test_shared_adapter_tables_show_a_department_only_its_own_rows(owner, police):
    for dept in ("police", "health"):
        owner.execute("INSERT INTO adapter_decisions (department, task_id, position, event_id, outcome) "
                      "VALUES (%s, %s, 0, %s, 'approved')", (dept, f"roles-{RUN}-{dept}", uuid.uuid4()))
    seen = police.execute("SELECT department FROM adapter_decisions WHERE task_id LIKE %s",
                          (f"roles-{RUN}-%",)).fetchall()
    assert seen == [("police",)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # new row violates row-level security
        police.execute("INSERT INTO adapter_decisions (department, task_id, position, event_id, outcome) "
                       "VALUES ('health', %s, 0, %s, 'rejected')", (f"roles-{RUN}-forged", uuid.uuid4()))
    assert police.execute("UPDATE adapter_decisions SET outcome = 'rejected' WHERE task_id = %s",
                          (f"roles-{RUN}-health",)).rowcount == 0


def test_the_runtime_bookkeeping_only_under_its_own_consumer_names(police):
    police.execute("INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) "
                   "VALUES ('adapter.police.lane', %s, 0, 1)", (f"roles-{RUN}",))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        police.execute("INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) "
                       "VALUES ('dispatch', %s, 0, 1)", (f"roles-{RUN}",))
    assert police.execute("SELECT count(*) FROM consumer_offsets WHERE consumer = 'dispatch'").fetchone()[0] == 0


def test_grants_are_applied_once(owner):
    from catalog.loader import load_catalog

    assert db_roles.apply_grants(owner, load_catalog().departments) == 0, "a re-run changes nothing"


def test_own_tables_go_to_the_longest_department_prefix():
    owned = db_roles.owned_tables(["housing_fund_accounts", "housing_permits", "police_x", "adapter_decisions"],
                                  ["housing", "housing_fund", "police"])
    assert owned == {"housing_fund": ["housing_fund_accounts"], "housing": ["housing_permits"], "police": ["police_x"]}
