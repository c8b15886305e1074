"""The operator's commands beside the stack's: rebuild a read model (`onething replay …`), check the
read audit's chains (`onething audit verify`), the local Prometheus (`onething prometheus up|down`).
Loaded by `onething` only when one of them is asked for (infra/cli.py `LAZY`)."""
from __future__ import annotations

import click

from .cli import StackFailure, _settings, console


@click.group(help="Rebuild a read model from the log.")
def replay() -> None:
    pass


@replay.command("case-view", help="Drop the case view and rebuild it from the log, with a progress bar.")
def replay_case_view() -> None:
    from projectors import case_view

    case_view.replay(_settings(), console=console)


@replay.command("oversight", help="Drop the supervisor queue and the ratings/rectifications and rebuild them.")
def replay_oversight() -> None:
    from projectors import oversight

    total = oversight.replay(_settings(), console=console)
    console.print(f"oversight: {total} events replayed")


@replay.command("kpis", help="Drop the KPIs (晴雨表) and rebuild them from the log, with a progress bar "
                             "(needed after the catalog's limits change: they are stored in the rows).")
def replay_kpis() -> None:
    from projectors import kpis

    kpis.replay(_settings(), console=console)


@replay.command("deadlines", help="Drop the deadline clocks and rebuild them (stop `run deadlines` first). "
                                  "Alarms already raised are raised again with the same ids: consumers drop them.")
def replay_deadlines() -> None:
    from projectors import deadlines
    from projectors.postgres_projection import replay_with_progress

    total = replay_with_progress(_settings(), deadlines.DeadlineClockProjection(), console)
    console.print(f"deadlines: {total} events replayed")


@click.group(help="谁查看了我的数据: the read audit of personal data.")
def audit() -> None:
    pass


@audit.command("verify", help="Check every subject's hash chain of reads (or one subject's); print the first broken "
                              "row of each broken chain and exit 1.")
@click.option("--subject", help="the data subject's pseudonymous token (p_…)")
def audit_verify(subject: str | None) -> None:
    import psycopg

    from projectors import read_audit

    with psycopg.connect(_settings().database_url) as conn:
        result = read_audit.verify(conn, subject)
    for broken in result.broken:
        console.print(f"[red]broken:[/red] {broken.describe()}", highlight=False, soft_wrap=True)
    if not result.ok:
        raise StackFailure(f"read audit: {len(result.broken)} of {result.chains} chains broken ({result.rows} rows read)")
    console.print(f"read audit: {result.chains} chain{'s' if result.chains != 1 else ''}, {result.rows} rows, "
                  "every chain holds", highlight=False)


@click.group(help="The SRE view: a local Prometheus scraping every process, with the alert rules.")
def prometheus() -> None:
    pass


@prometheus.command("up", help="Start (or reuse) Prometheus on ONETHING_PROMETHEUS_PORT (9090), scraping every "
                               "process `onething run` starts.")
def prometheus_up() -> None:
    from . import prometheus_local, supervisor

    s = _settings()
    prom = prometheus_local.LocalPrometheus(s.home)
    try:
        started = prom.up(prometheus_local.targets_of(supervisor.system(s.home / "logs")))
    except prometheus_local.PrometheusError as exc:
        raise StackFailure(str(exc)) from None
    console.print(f"prometheus {'started' if started else 'already running'}: {prom.url}  "
                  f"(alerts: {prom.url}/alerts; data in {prom.dir})")
    console.print(f"Grafana dashboard to import: {prometheus_local.DASHBOARD}")


@prometheus.command("down", help="Stop the local Prometheus.")
def prometheus_down() -> None:
    from . import prometheus_local

    prom = prometheus_local.LocalPrometheus(_settings().home)
    console.print("prometheus stopped" if prom.down() else "prometheus was not running")
