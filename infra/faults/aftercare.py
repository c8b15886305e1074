"""What applicants and staff do with a completed case while the faults go on: rate it (好差评,
dissatisfied, which opens a rectification for the department), escalate it (办不成事) and have a
police clerk open it (a read of personal data, on `audit.reads`).

Why: without them the escalation queue, the ratings and the read audit stay empty through a
faults run, and "every read model equals its rebuild" would hold for them vacuously; the
rectification and escalation clocks of the deadline projection would not be exercised either.
Each action is one request kept with its Idempotency-Key and tried again, like the
applications' clients (a refused connection, a timeout, a 5xx or a 429), until answered or given
up. A 409 is an answer here (these routes have no "still in flight" 409: a concurrent retry waits
for the first), so a refusal such as `escalation.open` is reported as itself, not as a give-up.
`problems` then checks each answered action against the read models: each accepted rating one
row, each accepted escalation one row (and one only: a retry after a commit that PostgreSQL lost
was once a second escalation), each read recorded.
"""
from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import psycopg
import structlog

log = structlog.get_logger(__name__)

POLICE_CLERK = "faults-police-1"
RATED_SERVICE = "tax.newborn_premium"   # a service of the newborn bundle: its department gets a rectification


@dataclass
class Action:
    case_id: str
    kind: str                      # rating | escalation | read
    key: str = field(default_factory=lambda: f"faults-after-{uuid.uuid4().hex}")
    tries: int = 0
    status: int | None = None      # the final answer
    answer: dict = field(default_factory=dict)
    refusal: str = ""              # the error codes of a 4xx answer


def _request(kind: str, case_id: str) -> tuple[str, str, dict | None]:
    if kind == "rating":
        return "POST", f"/api/v1/cases/{case_id}/rating", {
            "grade": "dissatisfied", "comment": None,
            "services": [{"service_id": RATED_SERVICE, "grade": "very_dissatisfied", "comment": None}]}
    if kind == "escalation":
        return "POST", f"/api/v1/cases/{case_id}/escalations", {"reason": "other", "comment": None}
    return "GET", f"/api/v1/cases/{case_id}", None


def _codes(r: httpx.Response) -> str:
    """The error codes of a refusal (`escalation.open`), never its body: it may name the applicant."""
    try:
        return ",".join(str(e.get("code")) for e in r.json().get("errors", ()))
    except (ValueError, AttributeError):
        return ""


class Aftercare:
    """Every `every`-th completed case gets the three actions, from a thread of its own."""

    KINDS = ("rating", "escalation", "read")

    def __init__(self, base: str, applicant_auth: dict[str, str], every: int = 4, give_up_s: float = 300.0):
        from producers import identity

        self.base, self.every, self.give_up_s = base, every, give_up_s
        self.auth = {"rating": applicant_auth, "escalation": applicant_auth,
                     "read": {"Authorization": f"Bearer {identity.department_token('police', POLICE_CLERK)}"}}
        self.actions: list[Action] = []
        self.offered: set[str] = set()
        self.lock = threading.Lock()
        self.todo: queue.Queue[str] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="faults-aftercare")
        self._seen = 0

    def start(self) -> "Aftercare":
        self._thread.start()
        return self

    def offer(self, completed) -> None:
        """Cases the view shows completed (in the order they completed); every `every`-th is taken."""
        for case_id in completed:
            if case_id in self.offered:
                continue
            self.offered.add(case_id)
            self._seen += 1
            if self._seen % self.every == 1:
                self.todo.put(case_id)

    def stop(self, wait_s: float = 400.0) -> None:
        """No new cases; the ones taken are carried through (each until answered or given up)."""
        self._stopping.set()
        self._thread.join(wait_s)

    def snapshot(self) -> list[Action]:
        with self.lock:
            return list(self.actions)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.base, timeout=20) as client:
            while not (self._stopping.is_set() and self.todo.empty()):
                try:
                    case_id = self.todo.get(timeout=0.5)
                except queue.Empty:
                    continue
                for kind in self.KINDS:
                    action = Action(case_id, kind)
                    with self.lock:
                        self.actions.append(action)
                    self._until_answered(client, action)

    def _until_answered(self, client: httpx.Client, a: Action) -> None:
        method, path, body = _request(a.kind, a.case_id)
        started, backoff = time.monotonic(), 0.5
        while time.monotonic() - started < self.give_up_s:
            a.tries += 1
            try:
                r = client.request(method, path, json=body, headers=self.auth[a.kind] | {"Idempotency-Key": a.key})
            except httpx.HTTPError as exc:
                log.info("faults.aftercare.retry", kind=a.kind, error=type(exc).__name__)
            else:
                if r.status_code < 500 and r.status_code not in (408, 429):
                    a.status = r.status_code
                    if r.status_code >= 400:
                        a.refusal = _codes(r)
                        log.warning("faults.aftercare.refused", kind=a.kind, status=r.status_code, codes=a.refusal)
                    else:
                        a.answer = r.json() if method == "POST" else {}
                    return
            time.sleep(backoff)
            backoff = min(5.0, backoff * 2)
        log.warning("faults.aftercare.gave_up", kind=a.kind, tries=a.tries)

    def problems(self, database_url: str) -> list[str]:
        """Each action answered, and found once in its read model."""
        actions, out = self.snapshot(), []
        out += [f"{a.kind} of {a.case_id} answered {a.status or f'nothing in {a.tries} tries'} {a.refusal}".rstrip()
                for a in actions if a.status not in (200, 202)]
        ratings = {a.answer.get("rating_id") for a in actions if a.kind == "rating" and a.status == 202}
        escalations = {a.answer.get("escalation_id") for a in actions if a.kind == "escalation" and a.status == 202}
        read = {a.case_id for a in actions if a.kind == "read" and a.status == 200}
        with psycopg.connect(database_url) as conn:
            have_ratings = {r[0] for r in conn.execute(
                "SELECT rating_id FROM case_ratings WHERE rating_id = ANY(%s)", (sorted(ratings),))}
            have_escalations = {r[0] for r in conn.execute(
                "SELECT escalation_id FROM escalation_queue WHERE escalation_id = ANY(%s)", (sorted(escalations),))}
            escalated = dict(conn.execute(   # one request, one escalation: a retry is not a second
                "SELECT case_id, count(*) FROM escalation_queue WHERE case_id = ANY(%s) GROUP BY case_id",
                (sorted({a.case_id for a in actions if a.kind == "escalation"}),)).fetchall())
            have_reads = {r[0] for r in conn.execute(
                "SELECT DISTINCT case_id FROM audit_reads WHERE case_id = ANY(%s) AND staff_id = %s",
                (sorted(read), POLICE_CLERK))}
        out += [f"rating {r} not in the ratings" for r in sorted(ratings - have_ratings)]
        out += [f"escalation {e} not in the queue" for e in sorted(escalations - have_escalations)]
        out += [f"the police clerk's read of {c} not in the read audit" for c in sorted(read - have_reads)]
        out += [f"{n} escalations of {c} for one request" for c, n in sorted(escalated.items()) if n > 1]
        return out

    def counts(self) -> dict[str, int]:
        """kind → actions answered 2xx."""
        actions = self.snapshot()
        return {k: sum(1 for a in actions if a.kind == k and a.status in (200, 202)) for k in self.KINDS}
