"""Every topic, declared once, applied idempotently through kafka-python's admin client.

Fact topics (from people, registers and departments) are kept forever: they are the system
of record and every read model is rebuilt from them. Derived topics are kept forever too,
because department backends and read-model rebuilds consume them; they could be recomputed
from the facts. A partition count that differs from the declaration is reported, never
silently ignored: growing it changes which partition a key lands on.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError

FOREVER = -1
DEADLETTER_RETENTION_MS = 365 * 24 * 3600 * 1000

APPLICATIONS = "applications"
CASES = "cases"
DEADLETTER = "deadletter"
REGISTRY_COMPANY = "registry.company"
REGISTRY_PERSON = "registry.person"
SMOKE = "smoke"
CASCADE = "cascade"
AUDIT_READS = "audit.reads"
PRIVACY = "privacy"
PROACTIVE = "proactive"


def tasks_topic(department: str) -> str:
    return f"tasks.{department}"


def decisions_topic(department: str) -> str:
    return f"decisions.{department}"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    kind: str  # fact | derived | deadletter
    partitions: int
    replication: int
    retention_ms: int = FOREVER
    cleanup_policy: str = "delete"
    min_insync_replicas: int = 1
    doc: str = ""

    def configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "retention.bytes": "-1",
            "cleanup.policy": self.cleanup_policy,
            "min.insync.replicas": str(self.min_insync_replicas),
        }


def declared_topics(departments: Iterable[str], partitions: int = 6, replication: int = 1,
                    min_insync_replicas: int = 1) -> list[TopicSpec]:
    """The whole topology. Case topics share one partition count so they are co-partitioned."""
    kw = dict(partitions=partitions, replication=replication, min_insync_replicas=min_insync_replicas)
    specs = [
        TopicSpec(APPLICATIONS, "fact", doc="facts from people: submitted, supplemented, withdrawn, escalated, rated; supervisors' actions", **kw),
        TopicSpec(REGISTRY_COMPANY, "fact", doc="market-regulation register changes, keyed by USCC", **kw),
        TopicSpec(REGISTRY_PERSON, "fact", doc="person register changes, keyed by a person token", **kw),
        TopicSpec(CASES, "derived", doc="case state derived by dispatch: completed, overdue, escalated", **kw),
        TopicSpec(DEADLETTER, "deadletter", retention_ms=DEADLETTER_RETENTION_MS,
                  doc="messages a consumer could not process, with reason and origin", **kw),
        TopicSpec(CASCADE, "derived", doc="cascade escalations (办不成事 for register syncs)", **kw),
        TopicSpec(AUDIT_READS, "fact", doc="谁查看了我的数据: every read of personal data by staff, keyed by the "
                                        "data subject's pseudonymous token", **kw),
        TopicSpec(PRIVACY, "fact", doc="erasures of data subjects (SubjectErased: who, when, why; no personal data), "
                                    "keyed by the pseudonymous subject token", **kw),
        TopicSpec(PROACTIVE, "fact", doc="免申即享 / 主动服务: offers, grants and pre-service lists the proactive "
                                         "processor derives from life events, and the recipients' acceptances and "
                                         "declines (facts from the API); keyed by the recipient's pseudonymous token", **kw),
        TopicSpec(SMOKE, "derived", retention_ms=24 * 3600 * 1000,
                  doc="round trips of `onething smoke`; nothing consumes it", **kw),
    ]
    for dept in sorted(set(departments)):
        specs.append(TopicSpec(tasks_topic(dept), "derived", doc=f"tasks for {dept}", **kw))
        specs.append(TopicSpec(decisions_topic(dept), "fact", doc=f"decisions of {dept}", **kw))
    return specs


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)  # human-readable differences, never fixed silently

    @property
    def ok(self) -> bool:
        return not self.drift


def apply_topics(admin: KafkaAdminClient, specs: list[TopicSpec]) -> ApplyReport:
    report = ApplyReport()
    existing = set(admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    for spec in missing:
        try:
            admin.create_topics([NewTopic(spec.name, spec.partitions, spec.replication,
                                          topic_configs=spec.configs())])
            report.created.append(spec.name)
        except TopicAlreadyExistsError:  # another starter won the race: check it like the rest
            existing.add(spec.name)
    present = [s for s in specs if s.name in existing]
    if present:
        described = {t["name"]: t for t in admin.describe_topics([s.name for s in present])}
        configs = _topic_configs(admin, [s.name for s in present])
        for spec in present:
            actual = len(described[spec.name]["partitions"])
            problems = []
            if actual != spec.partitions:
                problems.append(f"{actual} partitions, declared {spec.partitions}"
                                + (" (cannot shrink; recreate the topic)" if actual > spec.partitions
                                   else " (grow with `onething topics grow`: keys will move partitions)"))
            for name, want in spec.configs().items():
                have = configs.get(spec.name, {}).get(name)
                if have is not None and have != want:
                    problems.append(f"{name}={have}, declared {want}")
            if problems:
                report.drift.append(f"{spec.name}: " + "; ".join(problems))
            else:
                report.unchanged.append(spec.name)
    return report


def _topic_configs(admin: KafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    response = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    return {name: {k: entry["value"] for k, entry in entries.items()}
            for name, entries in response.get("topic", {}).items()}


def grow_partitions(admin: KafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
    """Explicit, operator-requested growth to the declared count."""
    from kafka.admin import NewPartitions

    described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([s.name for s in specs])}
    grow = {s.name: NewPartitions(s.partitions) for s in specs if described.get(s.name, s.partitions) < s.partitions}
    if grow:
        admin.create_partitions(grow)
    return sorted(grow)
