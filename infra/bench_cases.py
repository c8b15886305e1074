"""The benchmark's load: newborn applications posted to the intake API as a citizen's client would
(an Idempotency-Key each), and a watcher that notes when the case view first shows each case and
when it shows it completed."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import date, timedelta

import httpx
import psycopg

from infra.samples import submission


def newborn_event(case_id: str):
    """A newborn ApplicationSubmitted as the intake API writes it (for the raw pipe's sizes)."""
    return submission(case_id)


def prepare_request(base: str) -> tuple[dict[str, str], dict]:
    """Headers and body of a complete newborn application by a demo applicant: the prefilled form,
    what only she knows, and an uploaded invoice (one upload serves every application)."""
    from producers import e_license, identity

    person = e_license.DEMO_PEOPLE["wang_fang"]
    auth = {"Authorization": f"Bearer {identity.applicant_token(person.resident_id)}"}
    with httpx.Client(base_url=base, timeout=30) as client:
        form = client.get("/api/v1/bundles/newborn/form", headers=auth).json()
        values = {f["id"]: f["value"] for f in form["fields"] if f["value"] is not None}
        values.update({"child_name": "小满", "child_sex": "female",
                       "birth_date": (date.today() - timedelta(days=2)).isoformat(),
                       "birth_hospital": "韶关市妇幼保健院", "contact_mobile": "13800138000",
                       "bank_name": "中国工商银行", "bank_account_no": "6222020200112233445",
                       "registration_parent": "mother"})
        values.setdefault("father_known", False)
        values.setdefault("parents_married", False)
        for key in ("household_address", "residence_address", "mailing_address"):
            values.setdefault(key, person.address)
        values.setdefault("region_code", person.region_code)
        refs = [client.post("/api/v1/documents", content=b"%PDF-1.4 bench document", headers=auth
                            | {"Content-Type": "application/pdf"}).json()["ref"] for _ in range(2)]
    materials = {"medical_invoice": {"source": "uploaded", "ref": refs[0]},
                 "discharge_summary": {"source": "uploaded", "ref": refs[1]}}
    return auth, {"bundle_code": "newborn", "form": values, "materials": materials}


class Watcher:
    """Polls the case view every `interval_s` for the cases submitted so far; notes the first
    time each is visible and the first time it is completed (wall clock, time.monotonic)."""

    def __init__(self, database_url: str, interval_s: float = 0.02):
        self.database_url, self.interval = database_url, interval_s
        self.submitted: dict[str, float] = {}
        self.visible: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="bench-watcher")

    def start(self) -> "Watcher":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)

    def note_submitted(self, case_id: str, at: float) -> None:
        with self.lock:
            self.submitted[case_id] = at

    def _loop(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self.stopping.is_set():
                with self.lock:
                    pending = [c for c in self.submitted if c not in self.completed]
                if pending:
                    rows = conn.execute("SELECT case_id, status FROM case_view WHERE case_id = ANY(%s) "
                                        "AND bundle_code IS NOT NULL", (pending,)).fetchall()
                    now = time.monotonic()
                    for case_id, status in rows:
                        self.visible.setdefault(case_id, now)
                        if status == "completed":
                            self.completed.setdefault(case_id, now)
                self.stopping.wait(self.interval)

    def done(self, case_ids) -> int:
        return sum(1 for c in case_ids if c in self.completed)


async def _post_all(base: str, auth: dict, body: dict, count: int, concurrency: int, watcher: Watcher,
                    rate_per_s: float | None, progress) -> list[str]:
    """Post `count` applications with `concurrency` clients; at `rate_per_s` if given (paced), else
    as fast as they are answered. A refused or failed request is retried with its key, as a client would."""
    sem = asyncio.Semaphore(concurrency)
    ids: list[str] = []
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        async def one(i: int) -> None:
            if rate_per_s:
                await asyncio.sleep(max(0.0, started + i / rate_per_s - time.monotonic()))
            key = f"bench-{uuid.uuid4().hex}"
            async with sem:
                t0 = time.monotonic()
                for _attempt in range(10):
                    try:
                        r = await client.post("/api/v1/applications", json=body, headers=auth | {"Idempotency-Key": key})
                        if r.status_code == 202:
                            case_id = r.json()["case_id"]
                            watcher.note_submitted(case_id, t0)
                            ids.append(case_id)
                            progress(len(ids))
                            return
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.5)

        await asyncio.gather(*(one(i) for i in range(count)))
    return ids


def post_applications(base: str, auth: dict, body: dict, count: int, concurrency: int, watcher: Watcher,
                      rate_per_s: float | None = None, progress=lambda n: None) -> list[str]:
    return asyncio.run(_post_all(base, auth, body, count, concurrency, watcher, rate_per_s, progress))
