"""PostgreSQL roles of the department adapters: a department's connection reaches only its own rows.

One role served every process, so a department backend's connection could read
`e_license_holders`, every case's state in `dispatch_cases` and every upload in
`intake_documents`. The adapters are the part of the system a department runs (or that stands in
for its backend), so they are the first to get roles of their own: `onething_dept_<department>`,
a LOGIN role with

- SELECT/INSERT/UPDATE/DELETE on its simulated backend's tables (`<department>_…`, the longest
  department prefix wins: `housing_fund_…` is not housing's) and on the adapters' shared tables
  (decisions, cancellations, work items, generic records, register copies …) — where a row-level
  security policy lets it see and write only rows whose `department` is its own;
- its runtime bookkeeping in `consumer_offsets` / `processed_events`, only under consumer names
  `adapter.<department>` (and a test lane's `adapter.<department>.…`);
- the numbering counters (`department_register_counters`, no department column: shared, granted);
- nothing else: no platform table (cases, intake, e-licences, read models, registers).

The owner (the migrations' role) owns every table and is not subject to these policies; the
platform's own processes still use it (README "Security model" says what remains).

Roles are created by whoever administers the cluster (`create_roles`, which `onething up` runs as
the local superuser for the dev stack; a DBA in production) and granted by the owner after every
migration (`apply_grants`, idempotent). Passwords: `ONETHING_DB_PASSWORD_<ROLE>`
(`ONETHING_DB_PASSWORD_ONETHING_DEPT_POLICE`); in development (ONETHING_ENV=dev or the local
stack) derived from a published development secret — never for a database others can reach.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from urllib.parse import quote, urlparse, urlunparse

import psycopg
import structlog
from psycopg import sql

log = structlog.get_logger(__name__)

PREFIX = "onething_dept_"
DEV_SECRET = "onething-dev-postgres-secret-not-for-production"
#: shared adapter tables with a `department` column: one policy each
DEPARTMENT_ROWS = ("adapter_decisions", "adapter_cancellations", "department_work_items",
                   "department_generic_records", "register_copies", "register_copy_applied",
                   "register_copy_follow_ups", "register_copy_outages", "department_data_keys")
#: the runtime's bookkeeping, keyed by consumer name
CONSUMER_ROWS = ("consumer_offsets", "processed_events")
SHARED = ("department_register_counters",)
#: read only: a process checks the schema's version before it starts (infra/process.py)
READS = ("schema_version",)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}")


def role(department: str) -> str:
    if not _NAME.fullmatch(department):
        raise ValueError(f"department {department!r} is not a valid role name part")
    return PREFIX + department


def password_variable(role_name: str) -> str:
    return "ONETHING_DB_PASSWORD_" + role_name.upper()


def password(role_name: str) -> str:
    """The role's password: its variable, else (development) derived from the dev secret."""
    given = os.environ.get(password_variable(role_name))
    if given:
        return given
    secret = os.environ.get("ONETHING_DB_DEV_SECRET") or DEV_SECRET
    return hmac.new(secret.encode(), f"postgres:{role_name}".encode(), hashlib.sha256).hexdigest()[:32]


def department_url(database_url: str, department: str) -> str:
    """`database_url` with the department's role and password instead of the owner's."""
    return role_url(database_url, role(department))


def role_url(database_url: str, name: str) -> str:
    """`database_url`'s server and database, logged in as `name` with its password."""
    parts = urlparse(database_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(name)}:{quote(password(name), safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunparse(parts._replace(netloc=netloc))


def owned_tables(tables: Iterable[str], departments: Iterable[str]) -> dict[str, list[str]]:
    """Each department's own tables: those named `<department>_…`, by the longest prefix."""
    depts = sorted(set(departments), key=len, reverse=True)
    out: dict[str, list[str]] = {d: [] for d in depts}
    for table in sorted(tables):
        owner = next((d for d in depts if table.startswith(d + "_")), None)
        if owner is not None and table not in DEPARTMENT_ROWS and table not in SHARED:
            out[owner].append(table)
    return out


def create_roles(conn: psycopg.Connection, departments: Iterable[str]) -> list[str]:
    """As a role that may create roles: each department's LOGIN role, its password (re)set."""
    made = []
    for dept in sorted(set(departments)):
        name = role(dept)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN NOINHERIT PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password(name))))
        if not exists:
            made.append(name)
    return made


def existing_roles(conn: psycopg.Connection, departments: Iterable[str]) -> list[str]:
    names = [role(d) for d in departments]
    return [r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,))]


def apply_grants(conn: psycopg.Connection, departments: Iterable[str]) -> int:
    """As the tables' owner: the grants and row policies of every department role that exists.
    Returns how many roles were changed. Only what is missing is applied — every process runs
    this at boot beside live transactions, and GRANT, ALTER TABLE and CREATE POLICY take locks."""
    present = set(existing_roles(conn, departments))
    if not present:
        return 0
    tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    have = set(tables)
    owned = owned_tables(tables, [d for d in departments if role(d) in present])
    enable_row_security(conn, [t for t in (*DEPARTMENT_ROWS, *CONSUMER_ROWS) if t in have])
    present_policies = policies(conn)
    changed = 0
    for dept, own in owned.items():
        name = role(dept)
        crud = [t for t in (*own, *DEPARTMENT_ROWS, *CONSUMER_ROWS, *SHARED) if t in have]
        missing = lacking(conn, name, crud, "SELECT, INSERT, UPDATE, DELETE")
        unread = lacking(conn, name, [t for t in READS if t in have], "SELECT")
        todo = [t for t in (*DEPARTMENT_ROWS, *CONSUMER_ROWS) if t in have and (t, f"{name}_rows") not in present_policies]
        if not missing and not unread and not todo:
            continue
        changed += 1
        grant(conn, name, missing, "SELECT, INSERT, UPDATE, DELETE")
        grant(conn, name, unread, "SELECT")
        mine = consumer_rule(f"adapter.{dept}", ".")
        for table in todo:
            rule = mine if table in CONSUMER_ROWS else sql.SQL("department = {}").format(sql.Literal(dept))
            create_policy(conn, name, table, rule)
        log.info("postgres.department_role_granted", role=name, tables=len(missing), policies=len(todo))
    return changed


# -- shared by the department and the component roles (infra/db_components.py) ---------------------
def consumer_rule(name: str, *separators: str) -> sql.Composable:
    """Rows of consumer `name` and of `name<separator>…` (a lane, a generation)."""
    return sql.SQL(" OR ").join([sql.SQL("consumer = {}").format(sql.Literal(name))] + [
        sql.SQL("starts_with(consumer, {})").format(sql.Literal(name + sep)) for sep in separators])


def grant(conn: psycopg.Connection, name: str, tables: list[str], privileges: str) -> None:
    """USAGE on the schema, and `privileges` on `tables` (with the sequences when it may write)."""
    ident = sql.Identifier(name)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
    if not tables:
        return
    conn.execute(sql.SQL("GRANT " + privileges + " ON {} TO {}").format(
        sql.SQL(", ").join(map(sql.Identifier, tables)), ident))
    if "INSERT" in privileges:
        conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident))


def enable_row_security(conn: psycopg.Connection, tables: list[str]) -> None:
    unguarded = [t for (t,) in conn.execute(
        "SELECT relname FROM pg_class WHERE relname = ANY(%s) AND relkind = 'r' AND NOT relrowsecurity "
        "AND relnamespace = 'public'::regnamespace", (tables,))]
    for table in unguarded:
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(sql.Identifier(table)))


def policies(conn: psycopg.Connection) -> set[tuple[str, str]]:
    return {(t, p) for t, p in conn.execute("SELECT tablename, policyname FROM pg_policies WHERE schemaname = 'public'")}


def lacking(conn: psycopg.Connection, name: str, tables: list[str], privileges: str) -> list[str]:
    """The tables on which role `name` lacks any of `privileges`."""
    if not tables:
        return []
    return [t for (t,) in conn.execute(
        "SELECT t FROM unnest(%s::text[]) AS t WHERE NOT has_table_privilege(%s, t, %s)", (tables, name, privileges))]


def create_policy(conn: psycopg.Connection, name: str, table: str, rule: sql.Composable) -> None:
    conn.execute(sql.SQL("CREATE POLICY {} ON {} TO {} USING ({}) WITH CHECK ({})").format(
        sql.Identifier(f"{name}_rows"), sql.Identifier(table), sql.Identifier(name), rule, rule))
