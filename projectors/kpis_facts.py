"""The raw facts of one batch of KPI events (projectors/kpis.py), folded in Python before they
are written, and which case and service rows the batch must settle.

Why fold first: one INSERT ... ON CONFLICT DO UPDATE may not touch a row twice, and a batch
often holds several events of one task attempt or case. Each fold below applies the rule its
statement in projectors/kpis_sql.py applies against the stored row, in the batch's order, so
"fold the batch, then merge it once" gives the rows "merge event by event" gives.

Which rows a batch settles: those the events would have settled one by one, once each. One by
one, a TaskDispatched seen before any event that creates its case row settles no case; the batch
settles the case if a later event of the batch created the row (a withdrawal, a rating). That
gives the same row: a case row without its submission has no day of receipt, and settling it
gives the columns' defaults (case_clock), the figures of a row never settled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from catalog.model import Catalog

from . import deadline_clock as clock
from .timeline_text import attempt_of

# an attempt keeps its highest-ranked outcome: a correction request ends an attempt, a decision ends the service
OUTCOME_RANK = {"correction_requested": 1, "approved": 2, "rejected": 2}


@dataclass
class _Case:
    submission: tuple | None = None     # (bundle, region, at, day, promised, statutory) of the earliest
    completed_at: datetime | None = None
    withdrawn_at: datetime | None = None
    rejected: int | None = None         # of the last completion seen
    rating: tuple | None = None         # (rating_id, grade, at) of the batch's earliest


@dataclass
class _Attempt:
    department: str | None = None
    region: str | None = None
    dispatched_at: datetime | None = None
    due_date: date | None = None
    fetched: set[str] = field(default_factory=set)
    ended_at: datetime | None = None
    outcome: str | None = None
    rank: int = 0
    cancelled_at: datetime | None = None


def _least(a, b):
    return b if a is None else a if b is None else min(a, b)


class BatchFacts:
    """Feed it a batch's events in order (`add`); `rows()` then holds the raw facts to write."""

    def __init__(self, catalog: Catalog, limits):
        self.catalog = catalog
        self.limits = limits                          # bundle -> (promised, statutory)
        self.cases: dict[str, _Case] = {}
        self.materials: dict[tuple, tuple] = {}
        self.pauses: dict[tuple, tuple] = {}
        self.attempts: dict[tuple, _Attempt] = {}
        self.breaches: dict[tuple, str | None] = {}
        self.escalations: dict[str, list] = {}
        self.ratings: list[tuple[str, str, datetime, list]] = []  # in order
        self.settle_cases: set[str] = set()
        self.settle_services: set[tuple[str, str]] = set()
        self.submitted: set[str] = set()              # every service of these cases is settled

    # -- folding -------------------------------------------------------------------------------------
    def add(self, etype: str, case_id: str, event_id: str, at: datetime, region: str, p: dict) -> None:
        getattr(self, f"_on_{etype}")(case_id, event_id, at, region, p)

    def _case(self, case_id: str) -> _Case:
        return self.cases.setdefault(case_id, _Case())

    def _refs(self, case_id, event_id, at, materials) -> None:
        for m in materials or ():
            self.materials.setdefault((case_id, event_id, m["code"]), (m["source"], at))

    def _on_ApplicationSubmitted(self, case_id, event_id, at, region, p) -> None:
        c = self._case(case_id)
        if c.submission is None or at < c.submission[2]:
            bundle = p["bundle_code"]
            c.submission = (bundle, region, at, clock.china_date(at), *self.limits(bundle))
        self._refs(case_id, event_id, at, p.get("materials"))
        self.submitted.add(case_id)
        self.settle_cases.add(case_id)

    def _on_MaterialsSupplemented(self, case_id, event_id, at, region, p) -> None:
        self._case(case_id)
        self._refs(case_id, event_id, at, p.get("materials"))
        self.pauses.setdefault((case_id, event_id), ("supply", at))
        self.settle_cases.add(case_id)

    def _on_ApplicationWithdrawn(self, case_id, event_id, at, region, p) -> None:
        c = self._case(case_id)
        c.withdrawn_at = _least(c.withdrawn_at, at)

    def _on_CaseCompleted(self, case_id, event_id, at, region, p) -> None:
        c = self._case(case_id)
        c.completed_at = _least(c.completed_at, at)
        c.rejected = len(p.get("rejected") or ())
        self.settle_cases.add(case_id)

    def _on_CaseRated(self, case_id, event_id, at, region, p) -> None:
        c = self._case(case_id)
        if c.rating is None or (at, p["rating_id"]) < (c.rating[2], c.rating[0]):  # code points, as COLLATE "C"
            c.rating = (p["rating_id"], p["grade"], at)
        self.ratings.append((case_id, p["rating_id"], at, list(p.get("services") or ())))

    def _attempt(self, case_id, p, region) -> _Attempt:
        key = (case_id, p["service_id"], attempt_of(p["task_id"]))
        a = self.attempts.get(key)
        if a is None:
            a = self.attempts[key] = _Attempt(region=region)  # the first write sets it, whatever its kind
        a.department = a.department if a.department is not None else p["department"]
        self.settle_services.add((case_id, p["service_id"]))
        return a

    def _on_TaskDispatched(self, case_id, event_id, at, region, p) -> None:
        a = self._attempt(case_id, p, region)
        a.region = a.region if a.region is not None else region
        if a.dispatched_at is None or at < a.dispatched_at:
            a.dispatched_at, a.due_date = at, p.get("due_date")
        a.fetched.update(m["code"] for m in p.get("materials") or () if m.get("source") == "fetched")
        self.settle_cases.add(case_id)  # a bundle without a promised total: the services' due dates

    def _on_TaskCancelled(self, case_id, event_id, at, region, p) -> None:
        a = self._attempt(case_id, p, region)
        a.cancelled_at = _least(a.cancelled_at, at)

    def _on_DecisionRecorded(self, case_id, event_id, at, region, p) -> None:
        rank = OUTCOME_RANK.get(p["outcome"])
        if rank is None:
            return  # accepted: the attempt goes on
        a = self._attempt(case_id, p, region)
        a.region = a.region if a.region is not None else region
        if a.ended_at is None or rank > a.rank or (rank == a.rank and at < a.ended_at):
            a.ended_at, a.outcome = at, p["outcome"]
        a.rank = max(a.rank, rank)
        if p["outcome"] == "correction_requested":
            self._case(case_id)
            self.pauses.setdefault((case_id, event_id), ("request", at))
            self.settle_cases.add(case_id)

    def _on_DeadlineBreached(self, case_id, event_id, at, region, p) -> None:
        self.breaches.setdefault((case_id, p["scope"], p.get("subject_id") or "", p["due_date"]), p.get("department"))

    def _on_CaseEscalated(self, case_id, event_id, at, region, p) -> None:
        e = self.escalations.setdefault(p["escalation_id"], [case_id, None, None, None, None, None])
        if e[4] is None:
            e[1:5] = [p.get("origin"), p.get("service_id"), p.get("department"), at]

    def _on_EscalationResolved(self, case_id, event_id, at, region, p) -> None:
        e = self.escalations.setdefault(p["escalation_id"], [case_id, None, None, None, None, None])
        e[5] = _least(e[5], at)

    # -- after the read of the stored ratings ------------------------------------------------------------
    def to_look_up(self) -> list[str]:
        """Cases whose stored rating the batch needs: the rated ones."""
        return sorted({r[0] for r in self.ratings})

    def known(self, stored: dict[str, tuple[datetime | None, str | None]]) -> list[tuple[str, str, str | None, str]]:
        """The service grades to write, given the stored winning ratings (case id -> (rated_at,
        rating_id)). One by one, a rating brings its service grades if it is the earliest rating
        of its case seen so far, so which grades count depends on the order the ratings are seen in."""
        best = {cid: (at, rid) for cid, (at, rid) in stored.items() if at is not None}
        grades: dict[tuple[str, str], tuple[str, str | None]] = {}
        for case_id, rating_id, at, services in self.ratings:
            if case_id not in best or (at, rating_id) < best[case_id]:
                best[case_id] = (at, rating_id)
            if best[case_id][1] != rating_id:
                continue
            for r in services:
                svc = self.catalog.services.get(r["service_id"])
                grades[(case_id, r["service_id"])] = (r["grade"], svc.department if svc else None)
        return [(cid, sid, dept, g) for (cid, sid), (g, dept) in grades.items()]

    def settles_service(self, case_id: str, service_id: str) -> bool:
        """Those of the batch's task events, and every service of a submitted case (whose bundle,
        region and cohort day it brings)."""
        return case_id in self.submitted or (case_id, service_id) in self.settle_services

    def cases_with_services_to_settle(self) -> list[str]:
        return sorted({cid for cid, _sid in self.settle_services} | self.submitted)

    def rows(self) -> dict[str, list[tuple]]:
        """Rows per raw-fact statement of projectors/kpis_sql.py, in its columns' order; a
        statement without rows is left out."""
        out = {
            "cases": [(cid, *(c.submission or (None,) * 6), c.completed_at, c.withdrawn_at, c.rejected,
                       *(c.rating or (None,) * 3)) for cid, c in self.cases.items()],
            "materials": [(*k, *v) for k, v in self.materials.items()],
            "pauses": [(*k, *v) for k, v in self.pauses.items()],
            "attempts": [(*k, a.department, a.region, a.dispatched_at, a.due_date, a.ended_at, a.outcome, a.rank,
                          a.cancelled_at, sorted(a.fetched)) for k, a in self.attempts.items()],
            "breaches": [(*k, dept) for k, dept in self.breaches.items()],
            "escalations": [(eid, *e) for eid, e in self.escalations.items()],
        }
        return {name: rows for name, rows in out.items() if rows}
