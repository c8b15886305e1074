"""`onething bench`: how fast the whole system is on this machine, next to the raw Kafka pipe.

It prints figures and never passes or fails (a slow day is not a bug). On a stack of its own
(broker on ONETHING_BENCH_KAFKA_PORT 29092, database onething_bench, ONETHING_HOME/bench), so
it never mixes with the demo's or the tests' data, with every process of `onething run`:

  (a) the raw pipe — kafka-python + fastavro, acks=all, the same broker, events of the system's
      own sizes: events/s produced and consumed at once, and consumed alone;
  (b) saturation: newborn cases/s completed through the intake API (applications posted as fast
      as the clients can), counted between 10 % and 90 % of completions;
  (c) at half that rate: p50/p99 of submit → status-visible (the case view shows it) and of
      submit → completed;
  (d) a rebuild of the case view from this run's events, events/s next to (a)'s consume rate;
  (e) CPU seconds of each process (and the broker and PostgreSQL) idle, in (b) and in (c);
  (f) each system figure as a ratio to the raw pipe;
  (g) with --sealing-ab: CPU a case at saturation with and without sealing personal data
      (infra/bench_sealing.py).

The figures' meaning, and this machine's, are in the README ("Benchmark").
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

BENCH_ENV = {"ONETHING_KAFKA_PORT": "29092", "ONETHING_DB_NAME": "onething_bench",
             "ONETHING_METRICS_BASE_PORT": "29400", "ONETHING_API_PORT": "28000"}


def bench_environment() -> None:
    """The bench's own stack, unless the operator named servers (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL)."""
    from .settings import REPO_ROOT

    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        os.environ["ONETHING_KAFKA_PORT"] = os.environ.get("ONETHING_BENCH_KAFKA_PORT", BENCH_ENV["ONETHING_KAFKA_PORT"])
        os.environ["ONETHING_HOME"] = str(Path(os.environ.get("ONETHING_HOME") or REPO_ROOT / ".onething") / "bench")
    if not os.environ.get("DATABASE_URL"):
        os.environ["ONETHING_DB_NAME"] = os.environ.get("ONETHING_BENCH_DB_NAME", BENCH_ENV["ONETHING_DB_NAME"])
    for k in ("ONETHING_METRICS_BASE_PORT", "ONETHING_API_PORT"):
        os.environ[k] = os.environ.get(f"ONETHING_BENCH_{k[9:]}", BENCH_ENV[k])


@dataclass
class Figures:
    raw_produced_per_s: float = 0.0
    raw_consumed_per_s: float = 0.0
    raw_consume_alone_per_s: float = 0.0
    event_bytes: float = 0.0
    saturation_cases_per_s: float = 0.0
    saturation_events_per_s: float = 0.0
    events_per_case: float = 0.0
    submitted_per_s: float = 0.0
    offered_per_s: float = 0.0
    visible_p50_ms: float = 0.0
    visible_p99_ms: float = 0.0
    completed_p50_ms: float = 0.0
    completed_p99_ms: float = 0.0
    latency_cases: int = 0
    rebuild_events_per_s: float = 0.0
    cpu_idle: dict[str, float] = field(default_factory=dict)
    cpu_saturation: dict[str, float] = field(default_factory=dict)
    cpu_latency: dict[str, float] = field(default_factory=dict)
    idle_seconds: float = 0.0
    saturation_seconds: float = 0.0
    latency_seconds: float = 0.0
    saturation_cases: int = 0
    # --sealing-ab: the saturation phase four times more on the same stack (A B B A), summed per mode
    unsealed_cases_per_s: float = 0.0
    unsealed_cases: int = 0
    unsealed_seconds: float = 0.0
    cpu_unsealed: dict[str, float] = field(default_factory=dict)
    sealed_cases_per_s: float = 0.0
    sealed_cases: int = 0
    sealed_seconds: float = 0.0
    cpu_sealed: dict[str, float] = field(default_factory=dict)


# -- CPU of the system's processes, the broker and PostgreSQL ------------------------------------------
def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pids_matching(needle: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def _postgres_pids(database: str) -> list[int]:
    """PostgreSQL's processes that work for `database`: its backends and autovacuum workers, and
    the server's own (postmaster, WAL writer, checkpointer …) — not the backends of the other
    databases of a shared server (a test run beside the bench would count in its figures)."""
    out = []
    for pid in sorted(set(_pids_matching("postgres: ") + _pids_matching("bin/postgres"))):
        try:
            words = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                     .decode(errors="replace").split())
        except OSError:
            continue
        client = any(w.endswith(")") and "(" in w or w == "[local]" for w in words)
        if database in words or not (client or "autovacuum" in words and "worker" in words):
            out.append(pid)
    return out


class CpuMeter:
    """CPU seconds per named process since `start()`: the supervisor's children, the broker, PostgreSQL."""

    def __init__(self, sup, settings):
        self.sup, self.settings = sup, settings
        self.database = settings.database_url.rsplit("/", 1)[-1].split("?", 1)[0]
        self.before: dict[str, float] = {}

    def sample(self) -> dict[str, float]:
        out = {n: _cpu_seconds(c.proc.pid) for n, c in self.sup.children.items() if c.proc}
        out["kafka broker"] = sum(_cpu_seconds(p) for p in _pids_matching(f"{self.settings.home}/kafka"))
        out["postgresql"] = sum(_cpu_seconds(p) for p in _postgres_pids(self.database))
        return out

    def start(self) -> None:
        self.before = self.sample()

    def since(self) -> dict[str, float]:
        now = self.sample()
        return {n: round(max(0.0, now[n] - self.before.get(n, 0.0)), 2) for n in now}


# -- (a) the raw pipe ----------------------------------------------------------------------------------
def sample_events() -> list:
    """One newborn case's events as the system writes them (a submission, its tasks, their
    decisions): the raw pipe moves events of these sizes."""
    from catalog.loader import load_catalog
    from events.envelope import Actor, new_event
    from projectors import case_state

    from .bench_cases import newborn_event

    catalog = load_catalog()
    first = newborn_event(f"case-raw-{uuid.uuid4().hex[:8]}")
    state, derived = case_state.step(None, first, catalog)
    events = [first, *derived]
    for task in [e for e in derived if e.type == "TaskDispatched"]:
        p = task.payload
        events.append(new_event("DecisionRecorded", task.key,
                                {"task_id": p["task_id"], "department": p["department"], "service_id": p["service_id"],
                                 "kind": "case_service", "outcome": "approved", "reason": None,
                                 "missing_materials": [], "outputs": {}},
                                actor=Actor("dept", "department", "department"), region_code="440203", cause=task))
    return events


def raw_pipe(bootstrap: str, count: int, progress) -> tuple[float, float, float, float]:
    """(produced/s, consumed/s while producing, consumed/s alone, mean event bytes)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
    from kafka.admin import NewTopic

    from events import bus, codec, kafka_auth

    samples = sample_events()
    encoded = [(e.key.encode(), codec.encode(e)) for e in samples]
    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**kafka_auth.connection(bootstrap))
    admin.create_topics([NewTopic(topic, 6, 1)])
    try:
        consumed, first_seen, last_seen = [0], [0.0], [0.0]
        ready = threading.Event()

        def consume() -> None:
            c = KafkaConsumer(**kafka_auth.connection(bootstrap), enable_auto_commit=False, fetch_max_wait_ms=100)
            tps = [TopicPartition(topic, p) for p in range(6)]
            c.assign(tps)
            c.seek_to_beginning(*tps)
            ready.set()
            while consumed[0] < count:
                for msgs in c.poll(timeout_ms=200, max_records=2000).values():
                    if not first_seen[0]:
                        first_seen[0] = time.monotonic()
                    for m in msgs:
                        codec.decode(m.value)
                    consumed[0] += len(msgs)
                    last_seen[0] = time.monotonic()
            c.close()

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        ready.wait(30)
        producer = bus.make_producer(bootstrap, client_id="onething-bench-raw")
        started = time.monotonic()
        futures = []
        for i in range(count):
            key, value = encoded[i % len(encoded)]
            futures.append(producer.send(topic, key=key, value=value))
            if i % 2000 == 0:
                progress(i / count)
        producer.flush()
        for f in futures:
            f.get(30)
        produced_s = time.monotonic() - started
        producer.close()
        t.join(120)
        consume_s = max(1e-6, last_seen[0] - min(first_seen[0], started))
        # consumed alone: the topic read again from the beginning by a fresh reader
        c = KafkaConsumer(**kafka_auth.connection(bootstrap), enable_auto_commit=False)
        tps = [TopicPartition(topic, p) for p in range(6)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        alone, t0 = 0, time.monotonic()
        while alone < count:
            for msgs in c.poll(timeout_ms=200, max_records=2000).values():
                for m in msgs:
                    codec.decode(m.value)
                alone += len(msgs)
        alone_s = time.monotonic() - t0
        c.close()
        size = sum(len(v) for _k, v in encoded) / len(encoded)
        return count / produced_s, consumed[0] / consume_s, count / alone_s, size
    finally:
        admin.delete_topics([topic])
        admin.close()


# -- (b)–(e) the system ---------------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def _total_end(bootstrap: str, topics: list[str]) -> int:
    from .fast_forward import end_offsets

    return sum(end_offsets(bootstrap, topics).values())


def run(*, quick: bool = False, cases: int | None = None, console=None, sealing_ab: bool = False) -> Figures:
    """The whole benchmark (see the module docstring) on the bench stack: brought up for it, and
    what it brought up (broker, PostgreSQL) stopped at the end, as after the test suite.
    `sealing_ab`: then the saturation phase twice more, unsealed and sealed (development only:
    refused before anything starts otherwise; infra/bench_sealing.py)."""
    from . import stack
    from .settings import Settings

    if sealing_ab:
        from .bench_sealing import refuse_outside_dev

        refuse_outside_dev()
    bench_environment()
    with stack.session(Settings.from_env()):
        return _measure(quick=quick, cases=cases, console=console, sealing_ab=sealing_ab)


#: what every process of the bench's system runs with
SYSTEM_ENV = {"ONETHING_SIM_PROCESSING_S": "0", "ONETHING_CASCADE_START": "latest", "ONETHING_LOG_LEVEL": "WARNING",
              # one demo applicant files every case: the per-subject limit would hold her back
              "ONETHING_API_SUBMIT_RATE": "off"}


def start_system(settings, env: dict[str, str] | None = None):
    """(supervisor, CPU meter, API base URL) of every process of `onething run`, started."""
    from .supervisor import system

    sup = system(Path(tempfile.mkdtemp(prefix="bench-")), env=SYSTEM_ENV | (env or {}))
    cpu = CpuMeter(sup, settings)
    sup.start()
    return sup, cpu, f"http://127.0.0.1:{os.environ['ONETHING_API_PORT']}"


def warm_up(base: str, sup, watcher) -> tuple[dict[str, str], dict]:
    """(headers, body) of the load, once 10 applications went through and every member settled."""
    from .bench_cases import post_applications, prepare_request

    _wait_ready(base, sup)
    auth, body = prepare_request(base)
    warm = post_applications(base, auth, body, 10, 10, watcher)
    _wait(lambda: watcher.done(warm) == len(warm), 120, sup)
    time.sleep(3)   # every member has joined and settled
    return auth, body


@dataclass
class Saturation:
    ids: list[str]
    seconds: float
    cpu: dict[str, float]
    cases_per_s: float
    submitted_per_s: float


def saturate(base: str, auth, body, n: int, watcher, sup, cpu: CpuMeter, progress=lambda done: None) -> Saturation:
    """(b): `n` applications posted by 32 clients as fast as accepted; CPU from the first post to
    the last completion; cases/s between 10 % and 90 % of completions."""
    from .bench_cases import post_applications

    cpu.start()
    t0 = time.monotonic()
    ids: list[str] = []
    poster = threading.Thread(target=lambda: ids.extend(post_applications(base, auth, body, n, 32, watcher)))
    poster.start()
    while poster.is_alive() or watcher.done(ids) < len(ids):
        progress(watcher.done(list(watcher.submitted)))
        sup.check()
        time.sleep(0.25)
        if time.monotonic() - t0 > 900:
            break
    poster.join()
    seconds, used = time.monotonic() - t0, cpu.since()
    done = sorted(watcher.completed[c] for c in ids if c in watcher.completed)
    lo, hi = done[int(0.1 * len(done))], done[int(0.9 * len(done)) - 1]
    subs = sorted(watcher.submitted[c] for c in ids)
    return Saturation(ids, seconds, used, (0.8 * len(done)) / max(1e-6, hi - lo),
                      len(subs) / max(1e-6, subs[-1] - subs[0]))


def _measure(*, quick: bool, cases: int | None, console, sealing_ab: bool = False) -> Figures:
    """Every process of `onething run` on the running bench stack, stopped at the end."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from catalog.loader import load_catalog
    from projectors.case_view import CaseViewProjection, create_schema, default_topics, drop_schema
    from projectors.postgres_projection import rebuild

    from .bench_cases import Watcher, post_applications
    from .fast_forward import end_offsets, skip_history
    from .settings import Settings

    console = console or Console(stderr=True)
    settings = Settings.from_env()
    f = Figures()
    n_raw = 20_000 if quick else 100_000
    n_sat = cases or (300 if quick else 2000)
    latency_s = 12.0 if quick else 45.0
    idle_s = 5.0 if quick else 20.0
    topics = list(default_topics(load_catalog()))
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console) as bar:
        step = bar.add_task("stack", total=10 if sealing_ab else 6, note="the bench stack is up")
        bar.update(step, advance=1, description="raw pipe", note=f"{n_raw} events, acks=all")
        sub = bar.add_task("  events", total=1.0, note="")
        f.raw_produced_per_s, f.raw_consumed_per_s, f.raw_consume_alone_per_s, f.event_bytes = raw_pipe(
            settings.bootstrap_servers, n_raw, lambda x: bar.update(sub, completed=x))
        bar.update(sub, completed=1.0, visible=False)
        bar.update(step, advance=1, description="system", note="starting every process of `onething run`")
        skip_history(settings.bootstrap_servers, settings.database_url)
        watcher = Watcher(settings.database_url, interval_s=0.1).start()   # light while saturating
        sup, cpu, base = start_system(settings)
        try:
            auth, body = warm_up(base, sup, watcher)
            bar.update(step, description="idle", note=f"{idle_s:.0f} s without load")
            cpu.start()
            time.sleep(idle_s)
            f.cpu_idle, f.idle_seconds = cpu.since(), idle_s
            # (b) saturation
            bar.update(step, advance=1, description="saturation", note=f"{n_sat} cases as fast as accepted")
            sat = bar.add_task("  completed", total=n_sat, note="")
            before = _total_end(settings.bootstrap_servers, topics)
            start_offsets = end_offsets(settings.bootstrap_servers, topics)
            r = saturate(base, auth, body, n_sat, watcher, sup, cpu, lambda n: bar.update(sat, completed=n))
            ids = r.ids
            f.saturation_seconds, f.cpu_saturation, f.saturation_cases = r.seconds, r.cpu, len(ids)
            f.saturation_cases_per_s, f.submitted_per_s = r.cases_per_s, r.submitted_per_s
            bar.update(sat, completed=n_sat, visible=False)
            f.events_per_case = (_total_end(settings.bootstrap_servers, topics) - before) / max(1, len(ids))
            f.saturation_events_per_s = f.saturation_cases_per_s * f.events_per_case
            # (c) latency at half the saturation rate
            f.offered_per_s = max(1.0, round(f.saturation_cases_per_s / 2, 1))
            watcher.interval = 0.02   # few cases pending at a time: fine-grained latencies cost little
            n_lat = int(f.offered_per_s * latency_s)
            bar.update(step, advance=1, description="latency", note=f"{n_lat} cases at {f.offered_per_s}/s")
            time.sleep(2)
            cpu.start()
            t1 = time.monotonic()
            lat_ids = post_applications(base, auth, body, n_lat, 64, watcher, rate_per_s=f.offered_per_s)
            _wait(lambda: watcher.done(lat_ids) == len(lat_ids), 300, sup)
            f.latency_seconds = time.monotonic() - t1
            f.cpu_latency = cpu.since()
            vis = [1000 * (watcher.visible[c] - watcher.submitted[c]) for c in lat_ids if c in watcher.visible]
            com = [1000 * (watcher.completed[c] - watcher.submitted[c]) for c in lat_ids if c in watcher.completed]
            f.latency_cases = len(com)
            f.visible_p50_ms, f.visible_p99_ms = _percentile(vis, 0.5), _percentile(vis, 0.99)
            f.completed_p50_ms, f.completed_p99_ms = _percentile(com, 0.5), _percentile(com, 0.99)
        finally:
            watcher.stop()
            sup.stop()
        # (d) a rebuild of the case view from this run's events, into a scratch schema
        bar.update(step, advance=1, description="rebuild", note="the case view from this run's events")
        run_id = uuid.uuid4().hex[:8]
        name = schema = f"bench_rebuild_{run_id}"
        import psycopg

        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            create_schema(conn, schema)
        try:
            t2 = time.monotonic()
            total = rebuild(CaseViewProjection(name, schema=schema), settings.bootstrap_servers,
                            settings.database_url, start=start_offsets)
            f.rebuild_events_per_s = total / (time.monotonic() - t2)
        finally:
            with psycopg.connect(settings.database_url, autocommit=True) as conn:
                drop_schema(conn, schema)
                conn.execute("DELETE FROM consumer_offsets WHERE consumer = %s", (name,))
                conn.execute("DELETE FROM processed_events WHERE consumer = %s", (name,))
        if sealing_ab:  # (g) the same saturation four times more on this stack: A B B A
            from .bench_sealing import ab_order, saturation_phase

            rates: dict[bool, list[float]] = {True: [], False: []}
            for sealing in ab_order():
                bar.update(step, advance=1, description="sealed" if sealing else "unsealed",
                           note=f"{n_sat} cases, ONETHING_SEALING={'on' if sealing else 'off'}")
                sat = bar.add_task("  completed", total=n_sat, note="")
                r = saturation_phase(settings, n_sat, sealing, lambda n: bar.update(sat, completed=n))
                cpu = f.cpu_sealed if sealing else f.cpu_unsealed
                for name, seconds in r.cpu.items():
                    cpu[name] = cpu.get(name, 0.0) + seconds
                if sealing:
                    f.sealed_seconds += r.seconds
                    f.sealed_cases += len(r.ids)
                else:
                    f.unsealed_seconds += r.seconds
                    f.unsealed_cases += len(r.ids)
                rates[sealing].append(r.cases_per_s)
                bar.update(sat, completed=n_sat, visible=False)
            f.sealed_cases_per_s = sum(rates[True]) / len(rates[True])
            f.unsealed_cases_per_s = sum(rates[False]) / len(rates[False])
        bar.update(step, advance=1, note="done")
    return f


def _wait(predicate, timeout_s: float, sup=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the system did not settle in time (see the process logs)")
        if sup is not None:
            sup.check()
        time.sleep(0.2)


def _wait_ready(base: str, sup, timeout_s: float = 90) -> None:
    import httpx

    def up() -> bool:
        try:
            return httpx.get(f"{base}/api/v1/bundles", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    _wait(up, timeout_s, sup)


# -- the report -------------------------------------------------------------------------------------------
def report(f: Figures, console) -> None:
    from rich.table import Table

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.3f}" if y else "-"

    t = Table("figure", "value", "ratio to the raw pipe", title=f"onething bench — {date.today().isoformat()}")
    t.add_row("(a) raw pipe: produced, events/s (acks=all)", f"{f.raw_produced_per_s:,.0f}", "")
    t.add_row("(a) raw pipe: consumed while producing, events/s", f"{f.raw_consumed_per_s:,.0f}", "")
    t.add_row("(a) raw pipe: consumed alone, events/s", f"{f.raw_consume_alone_per_s:,.0f}", "")
    t.add_row("    mean event size, bytes", f"{f.event_bytes:,.0f}", "")
    t.add_row("(b) saturation: newborn cases completed/s", f"{f.saturation_cases_per_s:,.1f}", "")
    t.add_row("    events per case (all topics)", f"{f.events_per_case:,.1f}", "")
    t.add_row("    events/s written by the system", f"{f.saturation_events_per_s:,.0f}",
              ratio(f.saturation_events_per_s, f.raw_produced_per_s))
    t.add_row("    applications accepted by the API/s", f"{f.submitted_per_s:,.1f}", "")
    t.add_row(f"(c) at {f.offered_per_s}/s offered: submit → visible p50 / p99, ms",
              f"{f.visible_p50_ms:,.0f} / {f.visible_p99_ms:,.0f}", "")
    t.add_row(f"    submit → completed p50 / p99, ms ({f.latency_cases} cases)",
              f"{f.completed_p50_ms:,.0f} / {f.completed_p99_ms:,.0f}", "")
    t.add_row("(d) case view rebuild, events/s", f"{f.rebuild_events_per_s:,.0f}",
              ratio(f.rebuild_events_per_s, f.raw_consume_alone_per_s))
    console.print(t)
    c = Table("process", f"idle {f.idle_seconds:.0f} s", f"saturation {f.saturation_seconds:.0f} s",
              f"latency {f.latency_seconds:.0f} s", title="(e) CPU seconds")
    for name in f.cpu_saturation:
        c.add_row(name, f"{f.cpu_idle.get(name, 0):.2f}", f"{f.cpu_saturation.get(name, 0):.1f}",
                  f"{f.cpu_latency.get(name, 0):.1f}")
    ours = [n for n in f.cpu_idle if n not in ("kafka broker", "postgresql")]
    idle_share = sum(f.cpu_idle[n] for n in ours) / max(1e-6, f.idle_seconds)
    c.add_row("[bold]onething processes, idle share of one core[/bold]", f"{100 * idle_share:.1f} %", "", "")
    console.print(c)
    if f.cpu_unsealed:
        from .bench_sealing import report_sealing

        report_sealing(f, console)
