"""Who may say what on a department's topic: a department speaks only for its own services.

A department's backend writes `decisions.<dept>` and nothing else (the Kafka ACLs in
infra/topics.py); what it writes there names a department, a service and a task, and until this
check nothing tied the three together — health could decide disease control's vaccination
record by writing `service_id: disease_control.vaccination_record` on `decisions.health`. So a
message on `decisions.<dept>` is folded only if

- it is a type a department says (a decision, a correction request — a decision with that
  outcome —, a register-sync acknowledgement, a rectification reply),
- its actor is a department and the department it names is the topic's,
- the service it decides belongs to that department (the catalog says who owns a case service;
  a register sync's service id starts with its department), and
- a case service's task id is one of this case's tasks for that service (`case:service:attempt`),
- a grant's answer (kind `benefit_grant`, 免申即享) names a service of that department — the catalog's,
  or `<department>.<benefit>` for a benefit the catalog has no service for — and the task id
  `grant:<key>` of the grant it is keyed by,
- a rectification reply's id is one of that department's rectifications: dispatch names them
  `rect-<department>-<hex>` (projectors/case_state.py), so the id alone says whose it is and a
  department cannot close another's 差评整改 in the case view, the deadline clock or the ratings.

Anything else is dead-lettered by every processor that reads it, with the reason
`decision.not_authorised: …` (a reason names types, departments and services, never content), and
counted in `onething_dead_letters_total{reason="decision.not_authorised"}`, which an alert rule
watches (infra/prometheus/alerts.yml). Whether the task is still open is the fold's business: a
late decision on a superseded attempt is the owning department speaking, and is ignored there.

The binding is to the topic because the topic is what the broker authenticates: the payload's
`department` and the actor are the sender's own words. Messages on other topics are the
platform's own processors' (their principals may write them); this module does not judge them.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from events.envelope import Event

REASON = "decision.not_authorised"
DECISIONS_PREFIX = "decisions."
#: what a department may say on its decision topic
SPOKEN = frozenset({"DecisionRecorded", "RectificationReplied"})
REGISTER_SYNC = "register_sync"
BENEFIT_GRANT = "benefit_grant"
GRANT_TASK_PREFIX = "grant:"   # projectors/proactive_plan.py: a grant's task id names its key

Owner = Callable[[str], "str | None"]


def department_of_topic(topic: str) -> str | None:
    """The department whose decision topic this is, or None for any other topic."""
    if topic.startswith(DECISIONS_PREFIX):
        return topic[len(DECISIONS_PREFIX):] or None
    return None


def refusal(topic: str, event: Event, owner: Owner) -> str | None:
    """Why `event` on `topic` may not be folded (the dead letter's reason), or None if it may.

    `owner(service_id)` is the department the catalog gives a case service (None if unknown)."""
    dept = department_of_topic(topic)
    if dept is None:
        return None
    if event.type not in SPOKEN:
        return _no(f"{event.type} is not a department's to say (on {topic})")
    if event.envelope.actor.role != "department":
        return _no(f"{event.type} on {topic} from a {event.envelope.actor.role}, not a department")
    p = event.payload
    claimed = p.get("department")
    if claimed != dept:
        return _no(f"{event.type} on {topic} names department {_short(claimed)}")
    if event.type == "RectificationReplied":
        if not str(p.get("rectification_id") or "").startswith(rectification_prefix(dept)):
            return _no(f"{dept} replied on a rectification that is not one of its own")
        return None
    sid = str(p.get("service_id") or "")
    if p.get("kind") == REGISTER_SYNC:
        if not sid.startswith(dept + "."):
            return _no(f"register sync {_short(sid)} acknowledged by {dept}")
        return None
    if p.get("kind") == BENEFIT_GRANT:
        owning = owner(sid)
        if owning != dept and not (owning is None and sid.startswith(dept + ".")):
            return _no(f"{dept} answered a grant of service {_short(sid)}, not one of its own")
        if str(p.get("task_id") or "") != GRANT_TASK_PREFIX + event.key:
            return _no(f"{dept} answered a grant task id that is not the grant's it is keyed by")
        return None
    owning = owner(sid)
    if owning != dept:
        whose = f"belongs to {owning}" if owning else "is not in the catalog"
        return _no(f"{dept} decided service {_short(sid)}, which {whose}")
    task = str(p.get("task_id") or "")
    prefix = f"{event.key}:{sid}:"
    attempt = task[len(prefix):]
    if not (task.startswith(prefix) and attempt.isascii() and attempt.isdigit()):
        return _no(f"{dept} decided a task id that is not one of this case's tasks for {_short(sid)}")
    return None


def rectification_prefix(department: str) -> str:
    """Every rectification id of `department` starts with this (projectors/case_state.py)."""
    return f"rect-{department}-"


def catalog_owner(catalog) -> Owner:
    """`owner` from a catalog: the department of each case service."""
    services = catalog.services

    def owner(sid: str) -> str | None:
        svc = services.get(sid)
        return svc.department if svc is not None else None

    return owner


def _no(detail: str) -> str:
    return f"{REASON}: {detail}"[:500]


_ID = re.compile(r"[a-z][a-z0-9_.]{0,79}")


def _short(value: object) -> str:
    """A claimed department or service id, quoted only if it looks like one: a forger chooses
    these, and a reason is logged and kept, so anything else is described, not quoted."""
    text = str(value) if value is not None else ""
    if _ID.fullmatch(text):
        return repr(text)
    return f"<an id of {len(text)} characters>"
