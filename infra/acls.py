"""Who may read and write what on Kafka: a principal per component and its ACLs, declared once
beside the topics (infra/topics.py) and applied idempotently by `onething up`.

Used only when the stack runs with authentication (ONETHING_KAFKA_AUTH=scram): the broker's
StandardAuthorizer then denies whatever no ACL here allows (`allow.everyone.if.no.acl.found=false`).
A principal is named after the consumer group of what it runs, so logs, lag and ACLs read alike:

    api                        writes applications, registry.company, registry.person,
                               decisions.<d> (staff's rectification replies), audit.reads
                               (every read of personal data by staff) and privacy (erasures);
                               reads nothing
    dispatch                   reads applications, decisions.*; writes tasks.*, cases, deadletter
    cascade                    reads registry.*, decisions.<d> of subscribers; writes their tasks.<d>,
                               cascade, deadletter
    projection.<read model>    reads its topics; writes deadletter (projection.deadlines also cases;
                               projection.read_audit reads audit.reads only)
    adapter.<d>                reads tasks.<d>; writes decisions.<d>, deadletter
    proactive                  reads registry.*, applications, proactive and the decisions.<d> its rules
                               listen to or its grants are answered on (catalog/rules/); writes proactive,
                               the tasks.<d> of the departments that execute grants (免申即享: the grant
                               told to its department), deadletter (the api also writes proactive:
                               acceptances and declines)
    admin, broker              super users (the operator's tools, `onething up`, tests; the brokers)

Each reads through its own consumer group (READ on the GROUP; an adapter also on groups named
`adapter.<d>.<anything>`, a second deployment or a test lane). WRITE implies DESCRIBE and, since
Kafka 3.0 (KIP-679), IDEMPOTENT_WRITE, so the idempotent producers need nothing more.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from events import kafka_auth

from .topics import (APPLICATIONS, AUDIT_READS, CASCADE, CASES, DEADLETTER, PRIVACY, PROACTIVE, REGISTRY_COMPANY,
                     REGISTRY_PERSON, decisions_topic, tasks_topic)

log = structlog.get_logger(__name__)

READ, WRITE = "READ", "WRITE"
TOPIC, GROUP = "topic", "group"
API, DISPATCH, CASCADE_PRINCIPAL = "api", "dispatch", "cascade"
CASE_VIEW, KPIS, ESCALATION_QUEUE, RATINGS, DEADLINES = (
    "projection.case_view", "projection.kpis", "projection.escalation_queue", "projection.ratings",
    "projection.deadlines")
READ_AUDIT = "projection.read_audit"
PROACTIVE_PRINCIPAL = "proactive"


def adapter_principal(department: str) -> str:
    return f"adapter.{department}"


@dataclass(frozen=True, order=True)
class Grant:
    """ALLOW `principal` to `operation` on a topic or group, by literal name or by prefix."""
    principal: str
    operation: str
    resource: str
    name: str
    prefixed: bool = False


def _grants(principal: str, reads: Iterable[str] = (), writes: Iterable[str] = (),
            groups: Iterable[str] = (), group_prefixes: Iterable[str] = ()) -> list[Grant]:
    return ([Grant(principal, READ, TOPIC, t) for t in reads]
            + [Grant(principal, WRITE, TOPIC, t) for t in writes]
            + [Grant(principal, READ, GROUP, g) for g in groups]
            + [Grant(principal, READ, GROUP, g, prefixed=True) for g in group_prefixes])


def declared_grants(departments: Iterable[str], register_departments: Iterable[str]) -> list[Grant]:
    """The whole table. `register_departments` keep register copies (the cascade's subscribers)."""
    depts = sorted(set(departments))
    subscribers = sorted(set(register_departments))
    tasks = [tasks_topic(d) for d in depts]
    decisions = [decisions_topic(d) for d in depts]
    case_topics = [APPLICATIONS, CASES, *tasks, *decisions]
    grants = _grants(API, writes=[APPLICATIONS, REGISTRY_COMPANY, REGISTRY_PERSON, *decisions, AUDIT_READS, PRIVACY,
                                  PROACTIVE])
    grants += _grants(DISPATCH, reads=[APPLICATIONS, *decisions], writes=[*tasks, CASES, DEADLETTER],
                      groups=[DISPATCH])
    grants += _grants(CASCADE_PRINCIPAL, reads=[REGISTRY_COMPANY, REGISTRY_PERSON,
                                                *(decisions_topic(d) for d in subscribers)],
                      writes=[*(tasks_topic(d) for d in subscribers), CASCADE, DEADLETTER],
                      groups=[CASCADE_PRINCIPAL])
    for principal in (CASE_VIEW, KPIS):
        grants += _grants(principal, reads=case_topics, writes=[DEADLETTER], groups=[principal])
    grants += _grants(ESCALATION_QUEUE, reads=[APPLICATIONS, CASES], writes=[DEADLETTER], groups=[ESCALATION_QUEUE])
    grants += _grants(RATINGS, reads=[APPLICATIONS, *tasks, *decisions], writes=[DEADLETTER], groups=[RATINGS])
    grants += _grants(DEADLINES, reads=case_topics, writes=[CASES, DEADLETTER], groups=[DEADLINES])
    grants += _grants(READ_AUDIT, reads=[AUDIT_READS], writes=[DEADLETTER], groups=[READ_AUDIT])
    listened_depts, granting = _rule_departments()
    listened = [decisions_topic(d) for d in listened_depts if d in depts]
    grant_tasks = [tasks_topic(d) for d in granting if d in depts]
    grants += _grants(PROACTIVE_PRINCIPAL, reads=[REGISTRY_COMPANY, REGISTRY_PERSON, APPLICATIONS, PROACTIVE, *listened],
                      writes=[PROACTIVE, *grant_tasks, DEADLETTER], groups=[PROACTIVE_PRINCIPAL])
    for d in depts:
        p = adapter_principal(d)
        grants += _grants(p, reads=[tasks_topic(d)], writes=[decisions_topic(d), DEADLETTER],
                          groups=[p], group_prefixes=[p + "."])
    return sorted(set(grants))


def _rule_departments() -> tuple[list[str], list[str]]:
    """(the departments whose decisions.<d> the proactive processor reads: what a life-event rule
    listens to and the grants' answers; the departments it sends grants to on tasks.<d>)
    (catalog/rules/)."""
    from catalog.proactive_rules import default_rules

    rules = default_rules()
    return rules.listened_departments(_catalog()), rules.grant_departments()


def _catalog():
    from catalog.loader import load_catalog

    return load_catalog()


def principals(grants: Iterable[Grant]) -> list[str]:
    """Every SCRAM user the stack needs: the super users and each principal of the table."""
    return sorted({kafka_auth.ADMIN, kafka_auth.BROKER, *(g.principal for g in grants)})


@functools.lru_cache(maxsize=1)
def catalog_grants() -> tuple[Grant, ...]:
    """The table for the catalog's departments and subscriptions (what `onething up` applies)."""
    from catalog.loader import load_catalog
    from catalog.subscriptions import load_subscriptions

    return tuple(declared_grants(load_catalog().departments, load_subscriptions().departments()))


def principal_for(processor) -> str | kafka_auth.Credentials | None:
    """The principal a processor of the runtime authenticates as: its own `principal` if it has
    one (the SDK's explicit credentials), else its component's — named after its group — when
    that principal may read every topic it reads. Anything else (a test lane on topics of its
    own, a second cascade deployment) is None: the process's default principal
    (ONETHING_KAFKA_USER, else admin), with a log line."""
    explicit = getattr(processor, "principal", None)
    if explicit:
        return explicit
    group = processor.group
    department = getattr(processor, "department", None)
    candidate = group
    if department and (group == adapter_principal(department) or group.startswith(adapter_principal(department) + ".")):
        candidate = adapter_principal(department)
    readable = {g.name for g in catalog_grants() if g.principal == candidate and g.operation == READ
                and g.resource == TOPIC}
    if readable and set(processor.topics) <= readable:
        return candidate
    log.info("kafka.principal.default", group=group, principal=kafka_auth.default_principal())
    return None


# -- applying the table ----------------------------------------------------------------------------------
@dataclass
class AclReport:
    users: list[str] = field(default_factory=list)     # SCRAM users created or refreshed
    created: int = 0                                   # ACL bindings created now
    unchanged: int = 0
    extra: list[str] = field(default_factory=list)     # bindings on the broker the table does not hold (reported)


def _acl(grant: Grant):
    from kafka.admin import (ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern,
                             ResourceType)

    return ACL(principal=f"User:{grant.principal}", host="*", operation=ACLOperation[grant.operation],
               permission_type=ACLPermissionType.ALLOW,
               resource_pattern=ResourcePattern(
                   ResourceType.TOPIC if grant.resource == TOPIC else ResourceType.GROUP, grant.name,
                   ACLResourcePatternType.PREFIXED if grant.prefixed else ACLResourcePatternType.LITERAL))


def _existing(admin) -> set[Grant]:
    from kafka.admin import (ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                             ResourcePatternFilter, ResourceType)

    acls, _ = admin.describe_acls(ACLFilter(principal=None, host=None, operation=ACLOperation.ANY,
                                            permission_type=ACLPermissionType.ANY,
                                            resource_pattern=ResourcePatternFilter(ResourceType.ANY, None,
                                                                                   ACLResourcePatternType.ANY)))
    out = set()
    for a in acls:
        rp = a.resource_pattern
        if a.permission_type != ACLPermissionType.ALLOW or a.host != "*" or rp.resource_type not in (
                ResourceType.TOPIC, ResourceType.GROUP):
            out.add(Grant(a.principal.split(":", 1)[-1], a.operation.name, rp.resource_type.name.lower(),
                          rp.resource_name + " (not an ALLOW on * of a topic or group)"))
            continue
        out.add(Grant(a.principal.split(":", 1)[-1], a.operation.name,
                      TOPIC if rp.resource_type == ResourceType.TOPIC else GROUP, rp.resource_name,
                      rp.pattern_type == ACLResourcePatternType.PREFIXED))
    return out


def ensure_users(admin, users: Iterable[str]) -> list[str]:
    """Create (or refresh) a SCRAM-SHA-512 credential per user, in one request: the passwords are
    the configured or, in development, the derived ones (events/kafka_auth.py). Idempotent."""
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    users = sorted(set(users))
    result = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(u, ScramMechanism.SCRAM_SHA_512, kafka_auth.password(u)) for u in users])
    failed = {u: err for u, err in result.items() if err}
    if failed:
        raise RuntimeError(f"could not create the Kafka users {sorted(failed)}: {sorted(set(failed.values()))}")
    return users


def apply_acls(admin, grants: Iterable[Grant], create_users: bool = True) -> AclReport:
    """Create the users (when this side knows their passwords) and every missing binding; a binding
    the table does not hold is reported, never deleted silently (like topics' drift)."""
    report = AclReport()
    grants = sorted(set(grants))
    if create_users:
        report.users = ensure_users(admin, principals(grants))
    existing = _existing(admin)
    missing = [g for g in grants if g not in existing]
    if missing:
        result = admin.create_acls([_acl(g) for g in missing])
        if result["failed"]:
            raise RuntimeError(f"{len(result['failed'])} ACL bindings were refused: "
                               f"{sorted({getattr(e, '__name__', type(e).__name__) for e in result['failed']})}")
    report.created = len(missing)
    report.unchanged = len(grants) - len(missing)
    report.extra = sorted(f"{g.principal} {g.operation} {g.resource} {g.name}{'*' if g.prefixed else ''}"
                          for g in existing - set(grants))
    log.info("kafka.acls.applied", users=len(report.users), created=report.created, unchanged=report.unchanged,
             extra=len(report.extra))
    return report
