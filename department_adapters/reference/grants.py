"""A department's half of 免申即享: executing a benefit granted without application.

The proactive processor (projectors/proactive.py) tells the executing department of a grant once
its decline window closed without a decline: a `TaskDispatched` of kind `benefit_grant` on
`tasks.<department>`, keyed by the grant (its item id), task id `grant:<item id>`, service id the
catalog service it stands for or `<department>.<benefit code>`, and `fields` of ids, codes and
dates only — `grant_id`, `rule`, `benefit_code`, `beneficiary_token` (the person register's key),
`granted_on`, `decline_until`, `region_code` and, for a grant a case's decision triggered, its
`case_id`. The department executes it and answers on `decisions.<department>` with the same kind:
`applied` (executed) or `failed` (with a reason code). A `TaskCancelled` of that kind withdraws a
grant declined within its window that was sent before the decline was read (rare: a lagging
processor).

This reference backend executes every grant at once: one work item in `department_work_items`
(kind `benefit_grant`), in the SDK's transaction, so a grant delivered again is executed once (the
SDK is idempotent on the task id, and the row's key is the task id too).
"""
from __future__ import annotations

import psycopg
import structlog

from department_adapters.sdk import Decision, InvalidTask
from events.envelope import Event

log = structlog.get_logger(__name__)
GRANT_KIND = "benefit_grant"
GRANT_TASK_PREFIX = "grant:"


class GrantBackend:
    """Executes a department's grant tasks (kind benefit_grant); routed to by register_copy.ByKind."""

    def __init__(self, department: str, *, name: str | None = None):
        self.simulates = department
        self.department = name or department
        self.executed = 0
        self.cancelled = 0

    def handle(self, task: Event, conn: psycopg.Connection) -> list[Decision]:
        p = task.payload
        if p.get("kind") != GRANT_KIND or not str(p.get("task_id") or "").startswith(GRANT_TASK_PREFIX):
            raise InvalidTask("not a grant task (kind benefit_grant, task id grant:<id>)")
        fields = p.get("fields") or {}
        if not fields.get("beneficiary_token") or not fields.get("benefit_code"):
            raise InvalidTask("a grant task names its beneficiary_token and benefit_code")
        conn.execute(
            "INSERT INTO department_work_items (department, task_id, case_id, service_id, attempt, kind, outcome, "
            "decided_at) VALUES (%s, %s, %s, %s, 1, %s, 'applied', now()) ON CONFLICT (department, task_id) DO NOTHING",
            (self.simulates, p["task_id"], task.key, p["service_id"], GRANT_KIND))
        self.executed += 1
        log.info("reference.grant_executed", department=self.simulates, task_id=p["task_id"],
                 service_id=p["service_id"], benefit_code=fields["benefit_code"])
        return [Decision("accepted"), Decision("applied")]

    def cancel(self, task: Event, conn: psycopg.Connection) -> None:
        """The grant was declined within its window: the work item is marked cancelled (a payment the
        department made would be recovered by its own procedure; the reference does none)."""
        p = task.payload
        conn.execute(
            "INSERT INTO department_work_items (department, task_id, case_id, service_id, attempt, kind, cancelled_at)"
            " VALUES (%s, %s, %s, %s, 1, %s, now()) ON CONFLICT (department, task_id) DO UPDATE"
            " SET cancelled_at = now() WHERE department_work_items.cancelled_at IS NULL",
            (self.simulates, p["task_id"], task.key, p["service_id"], GRANT_KIND))
        self.cancelled += 1
        log.info("reference.grant_cancelled", department=self.simulates, task_id=p["task_id"])
