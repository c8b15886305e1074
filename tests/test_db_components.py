"""Each platform component's PostgreSQL role reaches only the tables it needs (infra/db_components.py).

Real PostgreSQL: the roles `onething up` creates and the grants the migrations apply, tried as
the processes connect (infra/process.py picks a processor's role from its Kafka principal).
"""
from __future__ import annotations

import uuid

import psycopg
import pytest

from infra import db_components, migrations, postgres_local
from infra.settings import Settings

pytestmark = pytest.mark.postgres
RUN = uuid.uuid4().hex[:8]


@pytest.fixture
def owner(settings, database_url):
    if settings.local_postgres:
        postgres_local.ensure_roles()
    migrations.migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        if len(db_components.existing(conn)) < len(db_components.COMPONENTS):
            pytest.skip("this database has no component roles (create them as its administrator: README)")
        yield conn
        conn.execute("DELETE FROM consumer_offsets WHERE topic = %s", (f"roles-{RUN}",))


def as_role(database_url: str, component: str) -> psycopg.Connection:
    conn = psycopg.connect(db_components.component_url(database_url, component), autocommit=True)
    assert conn.execute("SELECT current_user").fetchone()[0] == f"onething_{component}"
    return conn


@pytest.mark.parametrize("component, table", [
    ("api", "dispatch_cases"), ("case_view", "e_license_holders"), ("case_view", "intake_documents"),
    ("dispatch", "intake_documents"), ("dispatch", "e_license_holders"), ("kpis", "case_view"),
    ("deadlines", "police_household_register"), ("cascade", "dispatch_cases"), ("ratings", "intake_cases"),
    ("read_audit", "intake_cases"), ("read_audit", "case_view")])
def test_a_component_is_refused_on_tables_it_does_not_need(owner, database_url, component, table):
    with as_role(database_url, component) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(f"SELECT 1 FROM {table} LIMIT 1")


def test_the_api_reads_the_read_models_but_never_writes_them(owner, database_url):
    with as_role(database_url, "api") as conn:
        conn.execute("SELECT count(*) FROM case_view").fetchone()
        conn.execute("SELECT count(*) FROM intake_cases").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM case_view WHERE case_id = %s", (f"roles-{RUN}",))


def test_the_read_audit_is_append_only_for_its_writer_and_read_only_for_the_api(owner, database_url):
    """Its rows are evidence (infra/db_components.py APPEND_ONLY): the projection adds, nobody edits."""
    for component, allowed in (("read_audit", ("SELECT", "INSERT")), ("api", ("SELECT",))):
        held = {p for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE") if owner.execute(
            "SELECT has_table_privilege(%s, 'audit_reads', %s)", (db_components.role(component), p)).fetchone()[0]}
        assert held == set(allowed), component
    with as_role(database_url, "read_audit") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("TRUNCATE audit_reads")
    # a grant too many (by hand, or from before the table was append-only) is taken back
    owner.execute("GRANT UPDATE, DELETE ON audit_reads TO onething_read_audit")
    assert db_components.apply_grants(owner) == 1
    assert not owner.execute("SELECT has_table_privilege('onething_read_audit', 'audit_reads', 'UPDATE, DELETE')"
                             ).fetchone()[0]


def test_no_component_may_change_the_schema(owner, database_url):
    for component in ("api", "case_view"):
        with as_role(database_url, component) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE case_view ADD COLUMN forged text")


def test_bookkeeping_only_under_its_own_consumer_names_generations_included(owner, database_url):
    with as_role(database_url, "case_view") as conn:
        for consumer in ("case_view", "case_view~20261201", "case_view.lane"):
            conn.execute("INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) "
                         "VALUES (%s, %s, 0, 1)", (consumer, f"roles-{RUN}"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) "
                         "VALUES ('dispatch', %s, 0, 1)", (f"roles-{RUN}",))
        assert conn.execute("SELECT count(*) FROM consumer_offsets WHERE consumer = 'dispatch'").fetchone()[0] == 0


def test_grants_are_applied_once(owner):
    assert db_components.apply_grants(owner) == 0, "a re-run changes nothing"


def test_each_hosted_processor_gets_its_components_role():
    """The processes of `onething run` log in as their components, none as the owner."""
    from infra import process

    settings = Settings.from_env()
    for name in ("core", "read-models", "deadlines"):
        for p in process.processors_of(name, settings):
            assert process._role_of(p) == db_components.role(db_components.component_of(p.group)), p.group


def test_a_process_refuses_a_schema_it_was_not_written_for(owner, database_url, monkeypatch):
    for component in db_components.COMPONENTS:  # each checks as its own role (no owner's password)
        migrations.require_current(db_components.component_url(database_url, component))
    latest = migrations.discover()[-1]
    ahead = migrations.Migration(latest.version + 1, "next", latest.path)
    monkeypatch.setattr(migrations, "discover", lambda *_: [latest, ahead])
    with pytest.raises(migrations.SchemaBehind, match="onething migrate"):
        migrations.require_current(database_url)
