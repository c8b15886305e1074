"""PostgreSQL roles of the platform's own components: each process reaches only the tables it needs.

The department adapters got roles of their own first (infra/db_roles.py); the platform's
components — the API, dispatch, the cascade, each read model, the deadline clock — used the
owner's role, so a bug or an injection in the status page could rewrite `dispatch_cases` or
read `e_license_holders` in full. Each now logs in as `onething_<component>`, a LOGIN role with

- SELECT/INSERT/UPDATE/DELETE on the tables it writes (`writes`) — only SELECT/INSERT on the
  append-only ones (`APPEND_ONLY`: the read audit, whose rows are evidence);
- SELECT on the tables it only reads (`reads`: the API reads the read models, never writes them);
- its runtime bookkeeping in `consumer_offsets` / `processed_events`, only under its own consumer
  names — the read model's name, a generation `name~stamp` a rebuild swapped in, or a lane
  `name.…` — through the same row policies as the departments';
- SELECT on `schema_version` (a process checks the schema before it starts) and
  `projection_generations` (a read model follows its generation).

The table below is the whole declaration; `apply_grants` (run by the owner after every
migration and after a rebuild swapped a read model's tables in: new tables carry no grants)
makes the database match it. DDL stays with the owner: migrations (`onething migrate`, `onething
up`) and rebuilds (`onething replay`) are the operator's commands and run as the owner; no
component may create, alter or drop a table.
"""
from __future__ import annotations

from dataclasses import dataclass

import psycopg
import structlog
from psycopg import sql

from . import db_roles

log = structlog.get_logger(__name__)

PREFIX = "onething_"
#: every component may read these
COMMON_READS = ("schema_version", "projection_generations")

_CASE_VIEW = ("case_view", "case_service_view", "case_materials", "case_timeline")
_KPIS = ("kpi_cases", "kpi_case_materials", "kpi_case_pauses", "kpi_service_attempts", "kpi_services",
         "kpi_breaches", "kpi_escalations")
_CASCADE = ("cascade_changes", "cascade_targets", "cascade_tasks", "cascade_departments")
_DEADLINES = ("deadline_clocks", "deadline_cases")
_PROACTIVE = ("proactive_items", "proactive_cases", "proactive_pending")
#: tables whose writer may only add rows: SELECT and INSERT, never UPDATE, DELETE or TRUNCATE (an
#: earlier grant of those is revoked). The read audit is evidence (infra/migrations/0014_read_audit.sql).
APPEND_ONLY = frozenset({"audit_reads"})


@dataclass(frozen=True)
class Access:
    """What one component may do: tables it writes, tables it reads, its consumer names."""
    writes: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()


#: component (the Kafka principal's name without `projection.`) → its access
COMPONENTS: dict[str, Access] = {
    # intake, documents, registers' change requests, ratings of intake, idempotent actions; it
    # reads every read model for the status page, worklists, the queue and the KPIs
    "api": Access(
        writes=("intake_cases", "intake_idempotency", "intake_documents", "intake_document_uses", "intake_ratings",
                "api_requests", "api_actions", "register_keys", "register_change_requests", "data_keys",
                "department_data_keys"),
        reads=("e_licenses", "e_license_holders", *_CASE_VIEW, *_KPIS, "escalation_queue", "rectifications",
               "case_ratings", "cascade_changes", "cascade_targets", *_DEADLINES, "audit_reads", *_PROACTIVE)),
    "dispatch": Access(writes=("dispatch_cases",), consumers=("dispatch",)),
    "cascade": Access(writes=_CASCADE, consumers=("cascade",)),
    "case_view": Access(writes=_CASE_VIEW, consumers=("case_view",)),
    "kpis": Access(writes=_KPIS, consumers=("kpis",)),
    "escalation_queue": Access(writes=("escalation_queue",), reads=("case_view",), consumers=("escalation_queue",)),
    "ratings": Access(writes=("case_ratings", "rectifications"), consumers=("ratings",)),
    "deadlines": Access(writes=_DEADLINES, consumers=("deadlines",)),
    "read_audit": Access(writes=("audit_reads",), consumers=("read_audit",)),  # append-only (APPEND_ONLY)
    # 免申即享: its offers (the citizen's inbox), what people applied for; it reads the e-licences
    # (dates of birth, discharge notices) and the company register's entries (legal representatives:
    # sealed under their own data key, whose subject in `data_keys` names them; it holds no master key)
    "proactive": Access(writes=_PROACTIVE, reads=("e_licenses", "e_license_holders", "register_keys", "data_keys"),
                        consumers=("proactive",)),
}


def role(component: str) -> str:
    if component not in COMPONENTS:
        raise ValueError(f"{component!r} is not a component with a PostgreSQL role (infra/db_components.py)")
    return PREFIX + component


def roles() -> list[str]:
    return [role(c) for c in COMPONENTS]


def component_of(principal: str | None) -> str | None:
    """The component a Kafka principal stands for (`projection.case_view` → `case_view`), if any."""
    if not principal:
        return None
    name = principal.removeprefix("projection.")
    return name if name in COMPONENTS else None


def component_url(database_url: str, component: str) -> str:
    return db_roles.role_url(database_url, role(component))


def existing(conn: psycopg.Connection) -> set[str]:
    return {r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles(),))}


def apply_grants(conn: psycopg.Connection) -> int:
    """As the tables' owner: every existing component role's grants and row policies, only what
    is missing (processes run beside it). Returns how many roles were changed."""
    present = existing(conn)
    if not present:
        return 0
    have = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    db_roles.enable_row_security(conn, [t for t in db_roles.CONSUMER_ROWS if t in have])
    policies = db_roles.policies(conn)
    changed = 0
    for component, access in COMPONENTS.items():
        name = role(component)
        if name not in present:
            continue
        crud = [t for t in (*access.writes, *(db_roles.CONSUMER_ROWS if access.consumers else ()))
                if t in have and t not in APPEND_ONLY]
        append = [t for t in access.writes if t in have and t in APPEND_ONLY]
        select = [t for t in (*access.reads, *COMMON_READS) if t in have]
        missing_crud = db_roles.lacking(conn, name, crud, "SELECT, INSERT, UPDATE, DELETE")
        missing_append = db_roles.lacking(conn, name, append, "SELECT, INSERT")
        excess = _changing(conn, name, append)
        missing_select = db_roles.lacking(conn, name, select, "SELECT")
        todo = [t for t in db_roles.CONSUMER_ROWS if access.consumers and t in have
                and (t, f"{name}_rows") not in policies]
        # a department table this component works on whole (the API grants every department its
        # data keys): row security is on there for the departments, so the component needs a policy
        whole = [t for t in (*access.writes, *access.reads) if t in db_roles.DEPARTMENT_ROWS and t in have
                 and (t, f"{name}_rows") not in policies]
        if not (missing_crud or missing_append or excess or missing_select or todo or whole):
            continue
        changed += 1
        ident = sql.Identifier(name)
        db_roles.grant(conn, name, missing_crud, "SELECT, INSERT, UPDATE, DELETE")
        db_roles.grant(conn, name, missing_append, "SELECT, INSERT")
        if excess:
            conn.execute(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(
                sql.SQL(", ").join(map(sql.Identifier, excess)), ident))
        db_roles.grant(conn, name, missing_select, "SELECT")
        rule = sql.SQL(" OR ").join(db_roles.consumer_rule(c, "~", ".") for c in access.consumers)
        for table in todo:
            db_roles.create_policy(conn, name, table, rule)
        if whole:
            db_roles.enable_row_security(conn, whole)
        for table in whole:
            db_roles.create_policy(conn, name, table, sql.SQL("true"))
        log.info("postgres.component_role_granted", role=name,
                 tables=len(missing_crud) + len(missing_append) + len(missing_select), revoked=len(excess),
                 policies=len(todo))
    return changed


def _changing(conn: psycopg.Connection, name: str, tables: list[str]) -> list[str]:
    """The append-only tables on which role `name` may still change or remove rows."""
    if not tables:
        return []
    return [t for (t,) in conn.execute(
        "SELECT t FROM unnest(%s::text[]) AS t WHERE has_table_privilege(%s, t, 'UPDATE, DELETE, TRUNCATE')",
        (tables, name))]
