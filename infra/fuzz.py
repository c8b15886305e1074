"""`onething fuzz`: schemathesis against the running intake API, then the log checked behind it.

    onething run &                      # the whole system (ONETHING_API_PORT picks the API's port)
    onething fuzz --requests 10000      # ≥ 10,000 generated requests over every route × role

What it does (infra/fuzz_engine.py): reads the API's own /openapi.json — where each bundle's merged
form is a JSON Schema (producers/api_form_schema.py), and so is each register write
(producers/register_schema.py) — and draws every request from it with schemathesis: applications
and register writes made acceptable as a client would make them, then every operation as every
role with positive and negative data. Each answer is checked (no 5xx, no leak of another subject's
data, every refusal naming its field and why); then, from the log (infra/fuzz_follow.py), every
accepted application must have been dispatched into tasks, every accepted register change applied
by every department that keeps one of its fields, every consumer group must have caught up, and
no dead letter may have been written. Prints the figures; exits 1 on any failure.

Needs the `test` extra (schemathesis). The tokens are signed with the API's own secret
(ONETHING_TOKEN_SECRET; the development default on a development stack).
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict

import click
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 200)  # a log file gets the whole table
SHORT = {"anonymous": "anon", "bad_token": "bad", "owner": "own", "other_applicant": "oth", "clerk": "clk",
         "department_on_case": "d-on", "department_off_case": "d-off", "supervisor": "sup", "register": "reg",
         "system": "sys", "receipt_link": "link"}


def _default_url() -> str:
    host = os.environ.get("ONETHING_API_HOST") or "127.0.0.1"
    return f"http://{host}:{os.environ.get('ONETHING_API_PORT') or 8000}"


@click.command(help="Fuzz the running API with schemathesis (every route × role), then check that every "
                    "application it got accepted was dispatched, every register change applied by every department "
                    "keeping a copy, every consumer caught up and no dead letter was written.")
@click.option("--requests", "n_requests", default=10_000, show_default=True, help="generated requests in all")
@click.option("--applications", type=int, default=None, help="applications made acceptable [requests/8]")
@click.option("--min-accepted", type=int, default=None, help="fail below this many accepted [80% of applications]")
@click.option("--registers", type=int, default=None, help="register writes made acceptable [requests/16]")
@click.option("--min-register-accepted", type=int, default=None,
              help="fail below this many register writes accepted [80% of register writes]")
@click.option("--url", default=None, help="the API [http://ONETHING_API_HOST:ONETHING_API_PORT]")
@click.option("--seed", default=0, show_default=True, help="Hypothesis seed and the world's")
@click.option("--follow-timeout", default=300, show_default=True, help="seconds to wait for the log to catch up")
@click.option("--json", "as_json", type=click.Path(dir_okay=False), default=None, help="write the figures here too")
def fuzz(n_requests: int, applications: int | None, min_accepted: int | None, registers: int | None,
         min_register_accepted: int | None, url: str | None, seed: int, follow_timeout: int,
         as_json: str | None) -> None:
    try:
        import schemathesis
    except ImportError:
        raise click.ClickException("schemathesis is not installed: .venv/bin/pip install -e '.[test]'") from None
    import httpx

    from catalog.loader import load_catalog

    from . import fuzz_follow
    from .fuzz_engine import Engine, fuzz_document
    from .settings import Settings

    settings = Settings.from_env()
    url = url or _default_url()
    applications = applications if applications is not None else max(10, n_requests // 8)
    min_accepted = min_accepted if min_accepted is not None else int(applications * 0.8)
    registers = registers if registers is not None else max(6, n_requests // 16)
    min_register_accepted = (min_register_accepted if min_register_accepted is not None
                             else int(registers * 0.8))
    catalog = load_catalog()
    with httpx.Client(base_url=url, timeout=60) as client:
        try:
            doc = client.get("/openapi.json").raise_for_status().json()
        except httpx.HTTPError as exc:
            raise click.ClickException(f"no API at {url} ({type(exc).__name__}): start it with `onething run`") from None
        starts = fuzz_follow.mark(settings.bootstrap_servers, catalog.departments)
        schema = schemathesis.openapi.from_dict(fuzz_document(doc))
        engine = Engine(client, schema, catalog, seed_value=seed)
        console.print(f"fuzzing {url}: {len(engine.operations)} operations × {len(SHORT)} roles, "
                      f"{n_requests} requests ({applications} applications, {registers} register writes), "
                      f"schemathesis {schemathesis.__version__}")
        with console.status("") as status:
            engine.progress = lambda f: status.update(
                f"{f.generated} requests, {len(f.accepted)} applications and {sum(f.register_accepted.values())} "
                f"register writes accepted, {len(f.server_errors)} 5xx")
            figures = engine.run(n_requests, applications, registers)
    changes = dict(engine.world.register_changes)
    console.print(f"sent {figures.generated} generated requests (+{sum(figures.helpers.values())} uploads for "
                  f"applications) in {figures.seconds:.0f} s; following {len(figures.accepted)} accepted applications "
                  f"and {len(changes)} register changes …")
    report = fuzz_follow.follow(settings.bootstrap_servers, starts, figures.accepted, timeout_s=follow_timeout,
                                register_changes=changes)
    print_figures(figures, report)
    failures = failures_of(figures, report, min_accepted, min_register_accepted)
    if as_json:
        with open(as_json, "w") as fh:
            json.dump(as_dict(figures, report, failures), fh, indent=2, ensure_ascii=False)
    for f in failures:
        console.print(f"[red]FAIL[/red] {f}")
    if failures:
        sys.exit(1)
    console.print("[green]fuzz passed[/green]")


def failures_of(figures, report, min_accepted: int, min_register_accepted: int = 0) -> list[str]:
    out = [f"5xx: {e}" for e in figures.server_errors[:20]]
    out += [f"leak: {e}" for e in figures.leaks[:20]]
    out += [f"refusal without field and reason: {e}" for e in figures.bad_refusals[:20]]
    if len(figures.accepted) < min_accepted:
        out.append(f"only {len(figures.accepted)} applications accepted (at least {min_accepted} wanted)")
    if report.missing:
        out.append(f"{report.missing} accepted applications never dispatched")
    accepted = sum(figures.register_accepted.values())
    if accepted < min_register_accepted:
        out.append(f"only {accepted} register writes accepted (at least {min_register_accepted} wanted)")
    if report.register_missing:
        out.append(f"{report.register_missing} of {len(report.register_changes)} accepted register changes not "
                   f"{report.until} (logged {len(report.register_reached('logged'))}, sent to every department "
                   f"{len(report.register_reached('sent'))})")
    out += [f"dead letter: {d['consumer']} on {d['origin_topic']}: {d['reason']}" for d in report.dead_letters[:20]]
    out += [f"consumer group {g} still {n} behind" for g, n in sorted(report.behind.items())]
    return out


def print_figures(figures, report) -> None:
    routes: dict[str, Counter] = defaultdict(Counter)
    for (route, role), n in figures.sent.items():
        routes[route][role] += n
    by_status: dict[str, Counter] = defaultdict(Counter)
    for (route, status), n in figures.statuses.items():
        by_status[route][status] += n
    table = Table("route", "sent", *SHORT.values(), "statuses", title="generated requests per route and role")
    for route in sorted(routes, key=lambda r: (r.split(" ", 1)[1], r)):
        roles = routes[route]
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(by_status[route].items()))
        table.add_row(route, str(sum(roles.values())), *(str(roles.get(r, 0)) for r in SHORT), statuses)
    console.print(table)
    all_statuses: Counter = Counter()
    for (_route, status), n in figures.statuses.items():
        all_statuses[status] += n
    summary = Table("figure", "value", title="fuzz figures")
    rows = [
        ("requests generated", figures.generated), ("uploads for applications", sum(figures.helpers.values())),
        ("statuses (all)", " ".join(f"{s}:{n}" for s, n in sorted(all_statuses.items()))),
        ("applications made acceptable", figures.applications), ("applications accepted (202)", len(figures.accepted)),
        ("followed through: dispatched into tasks", len(report.dispatched)), ("… of which completed", len(report.completed)),
        ("register writes made acceptable", figures.register_writes),
        ("register writes accepted (202)", f"{sum(figures.register_accepted.values())}: " + " ".join(
            f"{r.removeprefix('POST /api/v1/registers/')}:{n}" for r, n in sorted(figures.register_accepted.items()))),
        ("register changes followed: logged / sent to every department / applied by every one",
         f"{len(report.register_changes)}: {len(report.register_reached('logged'))} / "
         f"{len(report.register_reached('sent'))} / {len(report.register_reached('applied'))}"),
        ("other accepted writes", " ".join(f"{r}:{n}" for r, n in sorted(figures.accepted_writes.items())) or "0"),
        ("dead letters", len(report.dead_letters)), ("consumer groups behind", len(report.behind)),
        ("5xx", len(figures.server_errors)), ("leaks", len(figures.leaks)),
        ("refusals without field/reason", len(figures.bad_refusals)),
        ("requests the client could not send", sum(figures.transport_errors.values())),
        ("seconds: fuzzing / following", f"{figures.seconds:.0f} / {report.seconds:.0f}"),
    ]
    for name, value in rows:
        summary.add_row(name, str(value))
    console.print(summary)


def as_dict(figures, report, failures: list[str]) -> dict:
    from .fuzz_follow import UNTIL

    return {"requests": figures.generated, "uploads": sum(figures.helpers.values()),
            "per_route_role": {f"{route} | {role}": n for (route, role), n in sorted(figures.sent.items())},
            "statuses": {f"{route} | {status}": n for (route, status), n in sorted(figures.statuses.items())},
            "applications": figures.applications, "accepted": len(figures.accepted),
            "dispatched": len(report.dispatched), "completed": len(report.completed),
            "register_writes": figures.register_writes, "register_accepted": dict(figures.register_accepted),
            "register_changes": len(report.register_changes),
            "register_followed": {stage: len(report.register_reached(stage)) for stage in UNTIL},
            "dead_letters": report.dead_letters, "behind": report.behind, "server_errors": figures.server_errors,
            "leaks": figures.leaks, "bad_refusals": figures.bad_refusals,
            "transport_errors": dict(figures.transport_errors), "failures": failures}
