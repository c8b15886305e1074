"""Dispatch: applications and decisions in, tasks and completions out — a keyed fold on the runtime.

Reads `applications` and every `decisions.<department>` (co-partitioned by case id), folds each
event into its case (`case_state.step`, pure) and emits the derived events: tasks to
`tasks.<department>`, completions and the rest to `cases`. The runtime (projectors/runtime.py)
batches it: one query for the states a batch touches (cached per owned partition), the fold in
offset order, one flush for every derived event, one versioned write of the changed states with
the stored offsets, one commit.

Why it cannot lose or double a task: the derived events are acknowledged by the broker before
the transaction that stores the case's state and the offsets commits; a crash in between
re-reads the batch and derives the very same events (ids from their causes), which consumers
drop; the case state records every folded event id, so a repeat is a no-op.

Why not faust-streaming any more (it ran dispatch until the batched runtime): a faust agent acks
per event and has no batched manual ack (`take()` acks on its own, faust-streaming #606, #192),
so the safe design on it — concurrency 1, ack in order only after the broker acknowledged the
derived events and the state committed — paid a broker round trip and a PostgreSQL commit per
event. The README ("Processing runtime") records the figures measured for both.
"""
from __future__ import annotations

from typing import Any

import structlog

from catalog.loader import load_catalog
from catalog.model import Catalog
from events.envelope import Event
from infra.topics import APPLICATIONS, CASES, decisions_topic, tasks_topic

from . import case_state
from .case_state import CaseError, CaseState
from .keyed_fold import KeyedFold

log = structlog.get_logger(__name__)
GROUP = "dispatch"


def sink_for(event: Event) -> str:
    if event.type in ("TaskDispatched", "TaskCancelled", "RectificationOpened"):
        return tasks_topic(event.payload["department"])
    return CASES


class Dispatch(KeyedFold[CaseState]):
    name = group = GROUP
    table, key_column = "dispatch_cases", "case_id"
    dedupe = False          # the case state records every folded event id
    start = "committed"     # a deployment that ran on faust resumes from the group's Kafka offsets
    rejects = (CaseError, KeyError)

    def __init__(self, catalog: Catalog | None = None, departments: list[str] | None = None):
        super().__init__()
        self.catalog = catalog or load_catalog()
        self.topics = (APPLICATIONS, *(decisions_topic(d) for d in sorted(departments or self.catalog.departments)))

    def wants(self, event: Event) -> bool:
        return not case_state.belongs_to_no_case(event)  # register syncs and grants share the decision topics

    def fold(self, state: CaseState | None, event: Event) -> tuple[CaseState | None, list[tuple[str, Event]]]:
        after, derived = case_state.step(state, event, self.catalog)
        return after, [(sink_for(d), d) for d in derived]

    def to_json(self, state: CaseState) -> dict[str, Any]:
        return case_state.to_json(state)

    def from_json(self, data: dict[str, Any]) -> CaseState:
        return case_state.from_json(data)


def processors(settings=None) -> list[Dispatch]:
    return [Dispatch()]
