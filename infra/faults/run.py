"""`onething faults`: bring the faults' stack up, run the load throughout, each scenario in turn,
verify at the end, print one row per scenario, and stop everything it started.

A scenario's window runs from its start to its recovery: the fault is injected after a few
seconds of steady load, held, healed, and the scenario has recovered when every application
started before the heal has been answered 202 and its case completed, and every partition is in
sync again. Its figures are those of the applications started inside its window. Exit code 0
only when nothing was lost or duplicated anywhere and every check of verify.py held.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import structlog

from . import rebuilds
from .aftercare import Aftercare
from .load import ApplicationLoad, RegisterLoad
from .scenarios import Context, Scenario, SkipScenario, chosen
from .stack import FaultStack
from .verify import Completions, Findings, gather

log = structlog.get_logger(__name__)

LEAD_S = 5.0            # steady load before each fault
RECOVERY_TIMEOUT_S = 300.0


@dataclass
class Window:
    name: str
    what: str
    started: float
    fault_at: float | None = None
    healed_at: float | None = None
    recovered_at: float | None = None
    ended: float = 0.0
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None
    facts: dict = field(default_factory=dict)   # what the scenario observed (e.g. `onething status` meanwhile)


@dataclass
class Row:
    scenario: str
    sent: int = 0
    accepted: int = 0
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    refused: int = 0
    server_errors: int = 0       # 5xx other than a 503 with Retry-After
    unavailable: int = 0         # 503 with Retry-After: allowed, counted
    register_changes: int = 0    # company changes started in the window …
    register_recorded: int = 0   # … and recorded (each once: a change id)
    recover_s: float | None = None
    p99_accept_ms: float | None = None   # the client's time to 202 (retries included), started during the fault
    p99_request_ms: float | None = None  # each request's answer time during the fault
    notes: str = ""
    facts: dict = field(default_factory=dict)
    ok: bool = True


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


class FaultRun:
    def __init__(self, stack: FaultStack, short: bool, rate_per_s: float, progress=lambda note: None):
        self.stack, self.short, self.rate, self.progress = stack, short, rate_per_s, progress
        self.ctx = Context(stack, short)
        self.completions = Completions(stack.database_url)
        self.windows: list[Window] = []

    # -- the loop ------------------------------------------------------------------------------------
    def tick(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self.stack.sup.check()
            self.completions.poll(self.load.case_ids())
            self.aftercare.offer(list(self.completions.completed))
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.5, left))

    def settled_before(self, moment: float) -> bool:
        """Every application started before `moment` answered 202 and its case completed, and every
        register change started before it recorded."""
        if any(c.recorded_at is None and c.started < moment for c in self.registers.snapshot()):
            return False
        for app in self.load.snapshot():
            if app.started >= moment:
                break
            if app.refused:
                continue
            if not app.case_ids or any(c not in self.completions.completed for c in app.case_ids):
                return False
        return True

    def start(self) -> None:
        from ..bench_cases import prepare_request

        base = f"http://127.0.0.1:{self.stack.api_port}"
        self.progress("the load: applications through the API, company changes through the register")
        auth, body = prepare_request(base)
        self.warm_up(base, auth, body)
        self.registers = RegisterLoad(self.stack.bootstrap, self.stack.database_url, companies=12,
                                      rate_per_s=1.0, run=uuid.uuid4().hex[:8]).start()
        self.load = ApplicationLoad(base, auth, body, self.rate).start()
        self.aftercare = Aftercare(base, auth).start()
        baseline = Window("steady load (no fault)", "the load alone, before the first fault", time.monotonic())
        self.tick(LEAD_S)
        self._recover(baseline, time.monotonic())
        self.windows.append(baseline)

    def warm_up(self, base: str, auth: dict, body: dict, timeout_s: float = 300.0) -> None:
        """One application through the whole system before the load: every processor has joined its
        group and found its coordinator, so the baseline measures the system, not its start."""
        import httpx

        self.progress("warming up: one application through every process")
        deadline = time.monotonic() + timeout_s
        key, case_id = f"faults-warm-{uuid.uuid4().hex}", None
        while case_id is None and time.monotonic() < deadline:
            try:
                r = httpx.post(f"{base}/api/v1/applications", json=body, headers=auth | {"Idempotency-Key": key},
                               timeout=20)
                if r.status_code == 202:
                    case_id = r.json()["case_id"]
                    break
            except httpx.HTTPError:
                pass
            self.stack.sup.check()
            time.sleep(1)
        while case_id and case_id not in self.completions.completed and time.monotonic() < deadline:
            self.completions.poll([case_id])
            self.stack.sup.check()
            time.sleep(0.5)
        if case_id not in self.completions.completed:
            raise RuntimeError(f"the warm-up application did not complete in {timeout_s:.0f} s; "
                               f"see the process logs in {self.stack.sup.log_dir}")

    def scenario(self, s: Scenario) -> Window:
        w = Window(s.name, s.what, time.monotonic())
        self.progress(f"{s.name}: steady load")
        self.tick(LEAD_S)
        if s.name.startswith("process "):   # work in flight: an accepted case not yet completed
            deadline = time.monotonic() + 15
            while self.settled_before(time.monotonic()) and time.monotonic() < deadline:
                self.tick(0.2)
        self.ctx.notes = w.notes
        w.fault_at = time.monotonic()
        self.progress(f"{s.name}: {s.what}")
        try:
            s.inject(self.ctx)
            w.facts.update(self.ctx.state.pop("status_down", {}))
            self.tick(s.hold(self.short))
            w.healed_at = time.monotonic()
            s.heal(self.ctx)
        except SkipScenario as exc:
            w.skipped = str(exc)
        except Exception as exc:   # reported in its row; the run goes on to the next scenario
            log.exception("faults.scenario_failed", scenario=s.name)
            w.error = f"{type(exc).__name__}: {str(exc)[:200]}"
        self.progress(f"{s.name}: recovering")
        self._recover(w, w.healed_at or w.fault_at)
        self.windows.append(w)
        return w

    def pending(self) -> int:
        """Applications not answered 202 yet, and accepted cases not completed yet."""
        return sum(1 for a in self.load.snapshot() if not a.refused and (
            not a.case_ids or any(c not in self.completions.completed for c in a.case_ids)))

    def _recover(self, w: Window, healed: float) -> None:
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        said = time.monotonic()
        while time.monotonic() < deadline:
            if self.settled_before(healed) and self.ctx.under_replicated() == 0:
                w.recovered_at = time.monotonic()
                break
            self.tick(0.5)
            if time.monotonic() - said > 15:
                said = time.monotonic()
                self.progress(f"{w.name}: recovering, {self.pending()} applications or cases still open, "
                              f"{len(self.completions.completed)} completed")
        else:
            w.notes.append(f"not recovered in {RECOVERY_TIMEOUT_S:.0f} s")
        w.ended = time.monotonic()

    def finish(self) -> Findings:
        self.progress("the load stops; waiting for every accepted case")
        stop_at = time.monotonic()
        self.load._stopping.set()
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while (self.load._thread.is_alive() or not self.settled_before(time.monotonic())) \
                and time.monotonic() < deadline:
            self.tick(0.5)
        self.load.stop(5)
        self.registers.stop()
        self.progress("the aftercare of completed cases: ratings, escalations, a clerk's reads")
        self.aftercare.offer(list(self.completions.completed))
        self.aftercare.stop()
        if self.windows:
            self.windows[-1].ended = max(self.windows[-1].ended, stop_at)
        self.progress("the cascade settling: every register change at every copy")
        companies = self.registers.companies
        case_ids = set(self.load.case_ids())
        deadline = time.monotonic() + 180
        while True:
            findings = gather(self.stack.bootstrap, self.stack.database_url, case_ids, companies)
            if not findings.register_problems or time.monotonic() > deadline:
                break
            self.tick(3)
        self.progress("every read model against a rebuild from the log")
        results = rebuilds.compare_all(self.stack.bootstrap, self.stack.database_url, progress=self.progress)
        findings.rebuild_differences = rebuilds.summary(results)
        findings.read_models = {m: r.as_dict() for m, r in results.items()}
        findings.read_models_equal = rebuilds.all_equal(results)
        findings.aftercare = self.aftercare.counts()
        findings.aftercare_problems = self.aftercare.problems(self.stack.database_url)
        self.completions.close()
        return findings

    def abort(self) -> None:
        """Interrupted: the clients stop where they are (the stack goes down next)."""
        for load in (getattr(self, "load", None), getattr(self, "registers", None), getattr(self, "aftercare", None)):
            if load is not None:
                load._stopping.set()
        if getattr(self, "registers", None) is not None:
            self.registers.recorder.close()

    # -- the figures ---------------------------------------------------------------------------------
    def rows(self, f: Findings) -> list[Row]:
        apps = self.load.snapshot()
        rows = []
        for i, w in enumerate(self.windows):
            end = self.windows[i + 1].started if i + 1 < len(self.windows) else float("inf")
            mine = [a for a in apps if w.started <= a.started < end]
            r = Row(w.name, facts=w.facts)
            attempts = [t for a in apps for t in a.attempts if w.started <= t.at < end]
            r.sent = len(attempts)
            changes = [c for c in self.registers.snapshot() if w.started <= c.started < end]
            r.register_changes, r.register_recorded = len(changes), sum(1 for c in changes if c.recorded_at)
            r.server_errors = sum(1 for t in attempts if t.status and t.status >= 500
                                  and not (t.status == 503 and t.retry_after))
            r.unavailable = sum(1 for t in attempts if t.status == 503 and t.retry_after)
            r.refused = sum(1 for a in mine if a.refused)
            accepted = [a for a in mine if a.case_ids]
            r.accepted = len(accepted)
            cases = [c for a in accepted for c in a.case_ids]
            r.completed = sum(1 for c in cases if c in f.completed)
            r.lost = sum(1 for a in mine if not a.case_ids and not a.refused) + sum(1 for c in cases if c not in f.completed)
            r.duplicated = sum(1 for a in accepted if len(a.case_ids) > 1) + sum(
                1 for c in cases if c in f.completed and f.case_problems(c))
            if w.fault_at is not None and w.recovered_at is not None:
                r.recover_s = round(w.recovered_at - w.fault_at, 1)
            if w.fault_at is not None:
                until = w.recovered_at or w.ended
                during = [a for a in mine if w.fault_at <= a.started < until and a.accepted_at]
                r.p99_accept_ms = _p99([1000 * a.first_accept_seconds for a in during])
                r.p99_request_ms = _p99([1000 * t.seconds for t in attempts if w.fault_at <= t.at < until])
            notes = list(w.notes)
            if w.skipped:
                notes.insert(0, f"not run: {w.skipped}")
            if w.error:
                notes.insert(0, f"fault not injected: {w.error}")
            bad = sorted({p for c in cases for p in f.case_problems(c)})[:3]
            notes += bad
            r.notes = "; ".join(notes)
            r.ok = not (r.lost or r.duplicated or r.server_errors or r.refused or w.error
                        or r.register_recorded < r.register_changes or (w.recovered_at is None))
            rows.append(r)
        return rows


def _differences(r: dict) -> str:
    """One line per read model: rows differing, and per table which columns and which keys."""
    if r["error"]:
        return f"not compared: {r['error']}"
    rows = sum(d["live_rows"] for d in r["tables"].values())
    head = (f"{r['differing_rows']} of {rows} rows differ"
            + ("" if r["same_offsets"] else " (not at the live one's offsets)")
            + ("" if r["caught_up"] else " (the live one had not caught up)"))
    tables = [f"{t}: {d['rows']} ({d['missing']} missing, {d['extra']} extra; columns {d['columns']}; "
              f"e.g. {d['samples']})" for t, d in r["tables"].items() if d["rows"]]
    return "; ".join([head, *tables])


def main(*, short: bool, only: list[str] | None, rate: float | None, as_json: str | None, console) -> int:
    from rich.table import Table

    from ..settings import Settings

    home = Settings.from_env().home / "faults"
    stack = FaultStack(home, base_port=int(os.environ.get("ONETHING_FAULTS_BASE_PORT") or 31000),
                       partitions=int(os.environ.get("ONETHING_FAULTS_PARTITIONS") or (2 if short else 3)))
    scenarios = chosen(short, only)
    started = time.monotonic()
    say = lambda note: console.print(f"[dim]{time.monotonic() - started:6.0f} s[/dim]  {note}")
    run = FaultRun(stack, short, rate or (1.0 if short else 2.0), progress=say)
    try:
        say(f"the faults' stack under {home} ({len(scenarios)} scenarios{', short form' if short else ''})")
        stack.up(progress=say)
        stack.system().start()
        stack.wait_api()
        run.start()
        for s in scenarios:
            run.scenario(s)
        findings = run.finish()
    except BaseException:
        run.abort()
        raise
    finally:
        say("stopping everything this started")
        run.ctx.close()
        stack.down()
    rows = run.rows(findings)
    checks = {
        "every register change applied once, in order, by every subscriber": not findings.register_problems,
        "read models equal a rebuild from the log": findings.read_models_equal,
        "every rating, escalation and read answered and in its read model": not findings.aftercare_problems,
        "nothing dead-lettered": findings.dead_letters == 0,
        "every scenario recovered, nothing lost or duplicated": all(r.ok for r in rows),
    }
    t = Table("scenario", "sent", "accepted", "completed", "lost", "dup", "5xx", "503", "register", "recover s",
              "p99 accept ms", "p99 request ms", "notes",
              title=f"onething faults{' --short' if short else ''} — {date.today().isoformat()}")
    fmt = lambda x: "-" if x is None else f"{x:,.0f}"
    for r in rows:
        t.add_row(r.scenario, str(r.sent), str(r.accepted), str(r.completed), str(r.lost), str(r.duplicated),
                  str(r.server_errors), str(r.unavailable), f"{r.register_recorded}/{r.register_changes}",
                  "-" if r.recover_s is None else f"{r.recover_s:.1f}",
                  fmt(r.p99_accept_ms), fmt(r.p99_request_ms), r.notes, style=None if r.ok else "red")
    console.print(t, width=max(console.width, 200))   # a log or CI: wide enough for every column
    console.print(f"register: {findings.register_changes} company changes on the log, "
                  f"{findings.register_applications} applications at the copies"
                  + (f"; problems: {findings.register_problems[:3]}" if findings.register_problems else ""))
    for model, r in findings.read_models.items():
        console.print(f"read model {model} vs a rebuild from the log: {_differences(r)}")
    missing = [m for m in rebuilds.EXPECTED if m not in findings.read_models]
    if missing:
        console.print(f"[red]read models not compared: {missing}[/red]")
    console.print(f"aftercare answered: {findings.aftercare}"
                  + (f"; problems: {findings.aftercare_problems[:3]}" if findings.aftercare_problems else ""))
    console.print(f"dead letters: {findings.dead_letters}; total {time.monotonic() - started:.0f} s")
    for what, held in checks.items():
        console.print(f"{'[green]held[/green]' if held else '[red]FAILED[/red]'}  {what}")
    if as_json:
        Path(as_json).write_text(json.dumps({"date": date.today().isoformat(), "short": short,
                                             "rows": [asdict(r) for r in rows], "checks": checks,
                                             "register_changes": findings.register_changes,
                                             "register_problems": findings.register_problems,
                                             "rebuild_differences": findings.rebuild_differences,
                                             "read_models": findings.read_models,
                                             "aftercare": findings.aftercare,
                                             "aftercare_problems": findings.aftercare_problems,
                                             "dead_letters": findings.dead_letters,
                                             "seconds": round(time.monotonic() - started)}, ensure_ascii=False, indent=1))
    return 0 if all(checks.values()) else 1
