"""The steady load of a faults run, and a record of everything each client was answered.

Applications: newborn applications posted to the intake API at a steady rate, each by a client
that keeps its Idempotency-Key and tries again on a refused connection, a timeout, a 5xx or a 429,
honouring Retry-After (at most `max_wait_s`), until it is answered 202 or gives up after
`give_up_s`. Register changes: company changes written by the register's own recorder
(producers/registers.py) with a change id, tried again with the same id until recorded.
Nothing here judges; verify.py reads these records.
"""
from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import structlog

log = structlog.get_logger(__name__)


@dataclass
class Attempt:
    at: float                 # time.monotonic() when sent
    seconds: float            # until answered (or failed)
    status: int | None        # None: no HTTP answer (refused, reset, timed out)
    retry_after: bool = False
    error: str | None = None


@dataclass
class Application:
    key: str
    started: float
    attempts: list[Attempt] = field(default_factory=list)
    case_ids: set[str] = field(default_factory=set)   # more than one: a duplicate
    accepted_at: float | None = None
    refused: int | None = None                        # a 4xx other than 429: the load's own bug

    @property
    def first_accept_seconds(self) -> float | None:
        return None if self.accepted_at is None else self.accepted_at - self.started


class ApplicationLoad:
    """Posts applications at `rate_per_s` from a thread of its own until `stop()`."""

    def __init__(self, base: str, auth: dict[str, str], body: dict, rate_per_s: float,
                 max_wait_s: float = 5.0, give_up_s: float = 600.0, timeout_s: float = 20.0):
        self.base, self.auth, self.body = base, auth, body
        self.rate = rate_per_s
        self.max_wait_s, self.give_up_s, self.timeout_s = max_wait_s, give_up_s, timeout_s
        self.applications: list[Application] = []
        self.lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="faults-load")

    def start(self) -> "ApplicationLoad":
        self._thread.start()
        return self

    def stop(self, wait_s: float = 660.0) -> None:
        """No new applications; the ones in flight go on trying until answered or given up."""
        self._stopping.set()
        self._thread.join(wait_s)

    def snapshot(self) -> list[Application]:
        with self.lock:
            return list(self.applications)

    def case_ids(self) -> dict[str, float]:
        """case id → when its application was started (every case answered 202 so far)."""
        with self.lock:
            return {c: a.started for a in self.applications for c in a.case_ids}

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=self.base, timeout=self.timeout_s, limits=limits) as client:
            tasks: set[asyncio.Task] = set()
            started = time.monotonic()
            n = 0
            while not self._stopping.is_set():
                due = started + n / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if self._stopping.is_set():
                    break
                app = Application(f"faults-{uuid.uuid4().hex}", time.monotonic())
                with self.lock:
                    self.applications.append(app)
                task = asyncio.create_task(self._one(client, app))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            if tasks:
                await asyncio.wait(tasks)

    async def _one(self, client: httpx.AsyncClient, app: Application) -> None:
        backoff = 0.5
        while time.monotonic() - app.started < self.give_up_s:
            t0 = time.monotonic()
            try:
                r = await client.post("/api/v1/applications", json=self.body,
                                      headers=self.auth | {"Idempotency-Key": app.key})
            except httpx.HTTPError as exc:
                app.attempts.append(Attempt(t0, time.monotonic() - t0, None, error=type(exc).__name__))
                await asyncio.sleep(backoff + random.random() * 0.2)
                backoff = min(self.max_wait_s, backoff * 2)
                continue
            retry_after = r.headers.get("Retry-After")
            app.attempts.append(Attempt(t0, time.monotonic() - t0, r.status_code, retry_after is not None))
            if r.status_code == 202:
                app.case_ids.add(r.json()["case_id"])
                if app.accepted_at is None:
                    app.accepted_at = time.monotonic()
                return
            if 400 <= r.status_code < 500 and r.status_code not in (408, 409, 429):
                app.refused = r.status_code   # 409: the same key still in flight — try again
                log.warning("faults.load.refused", status=r.status_code, body=r.text[:300])
                return
            wait = float(retry_after) if retry_after and retry_after.isdigit() else backoff
            await asyncio.sleep(min(self.max_wait_s, wait) + random.random() * 0.2)
            backoff = min(self.max_wait_s, backoff * 2)


@dataclass
class RegisterChange:
    uscc: str
    change_id: str
    changes: dict
    started: float
    tries: int = 0
    sequence: int | None = None
    recorded_at: float | None = None


class RegisterLoad:
    """Company changes at `rate_per_s` over `companies` companies, from a thread of its own.
    Each change is tried again with its change id until recorded: never recorded twice."""

    def __init__(self, bootstrap: str, database_url: str, companies: int, rate_per_s: float, run: str):
        from producers.registers import RegisterRecorder

        self.recorder = RegisterRecorder(bootstrap, database_url)
        self.rate, self.run = rate_per_s, run
        self.rng = random.Random(run)
        self.companies = [_uscc(self.rng) for _ in range(companies)]
        self.changes: list[RegisterChange] = []
        self.lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="faults-registers")

    def start(self) -> "RegisterLoad":
        for i, uscc in enumerate(self.companies):   # before the faults: registered once each
            self._until_recorded(RegisterChange(uscc, f"{self.run}-{uscc}-0", _company(i), time.monotonic()),
                                 register=True)
        self._thread.start()
        return self

    def stop(self, wait_s: float = 300.0) -> None:
        self._stopping.set()
        self._thread.join(wait_s)
        self.recorder.close()

    def snapshot(self) -> list[RegisterChange]:
        with self.lock:
            return list(self.changes)

    def _loop(self) -> None:
        started, n = time.monotonic(), 0
        while not self._stopping.is_set():
            due = started + n / self.rate
            if self._stopping.wait(max(0.0, due - time.monotonic())):
                break
            uscc = self.companies[n % len(self.companies)]
            change = RegisterChange(uscc, f"{self.run}-{uscc}-{n + 1}",
                                    {"business_scope": f"经营范围第{n + 1}版", "address": f"上海市浦东新区故障路{n + 1}号"},
                                    time.monotonic())
            with self.lock:
                self.changes.append(change)
            self._until_recorded(change)
            n += 1

    def _until_recorded(self, change: RegisterChange, register: bool = False, give_up_s: float = 600.0) -> None:
        from producers.register_resources import RegisterUnavailable
        from producers.registers import ChangeNotConfirmed

        while time.monotonic() - change.started < give_up_s:
            change.tries += 1
            try:
                verb = self.recorder.register_company if register else self.recorder.change_company
                recorded = verb(change.uscc, change.changes, change_id=change.change_id)
                change.sequence, change.recorded_at = recorded.sequence, time.monotonic()
                return
            except (RegisterUnavailable, ChangeNotConfirmed) as exc:
                log.info("faults.register.retry", error=type(exc).__name__, tries=change.tries)
            except Exception as exc:   # the database restarting: anything psycopg raises on the way
                log.info("faults.register.retry", error=type(exc).__name__, tries=change.tries)
            time.sleep(min(5.0, 0.5 * change.tries))


def _uscc(rng: random.Random) -> str:
    """A valid 统一社会信用代码 (GB 32100) of a company registered in 上海 浦东."""
    from catalog.validators import USCC_ALPHABET, uscc_check_char

    body = "91310115" + "".join(rng.choice(USCC_ALPHABET) for _ in range(9))
    return body + uscc_check_char(body)


def _company(i: int) -> dict:
    return {"name": f"上海故障测试第{i}号有限公司", "company_type": "limited_liability",
            "legal_representative_name": "故障测试", "legal_representative_resident_id": "310104198001010017",
            "address": f"上海市浦东新区故障路{i}号",
            "business_scope": "软件开发", "registered_capital": "1000", "established_on": "2020-01-01"}
