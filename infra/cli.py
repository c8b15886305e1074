"""`onething`: the operator's command for the stack, the schemas, the catalog and the demo."""
from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console
from rich.table import Table

from .settings import Settings

console = Console()


class StackFailure(click.ClickException):
    """Shown as a one-line error with the fix; no traceback for an operator."""


def _settings() -> Settings:
    return Settings.from_env()


class LazyGroup(click.Group):
    """A group whose subcommands named in `lazy` are imported when first asked for (click's
    documented pattern for large CLIs)."""

    lazy: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, help="onething — 高效办成一件事: one application, many departments, one live status.")
@click.option("--log-level", default="WARNING", envvar="ONETHING_LOG_LEVEL", show_default=True)
def main(log_level: str) -> None:
    from . import log

    log.configure("onething-cli", log_level)


@main.command(help="Apply the schema's migrations and the roles' grants to DATABASE_URL (as the tables' owner). "
                   "Outside development the processes only check the schema: run this first on every upgrade.")
def migrate() -> None:
    from . import migrations

    s = _settings()
    applied = migrations.migrate(s.database_url)
    console.print(f"migrations applied now: {applied or 'none'}; schema at {migrations.current_version(s.database_url)}")


@main.command(help="Start (or reuse) the broker and PostgreSQL, apply migrations and topics.")
@click.option("--nodes", type=click.IntRange(1, 9), default=None,
              help="KRaft nodes of the local cluster (3: replication 3, min.insync.replicas 2, as in production); "
                   "recorded in ONETHING_HOME, so later commands need not repeat it  [default: ONETHING_KAFKA_NODES, "
                   "else what the home holds, else 1]")
def up(nodes: int | None) -> None:
    from . import stack
    from .kafka_local import KafkaStackError
    from .postgres_local import PostgresStackError

    s = Settings.from_env(kafka_nodes=nodes)
    if nodes is not None and not s.local_kafka:
        raise StackFailure("--nodes sizes the local cluster; KAFKA_BOOTSTRAP_SERVERS names a cluster of "
                           "your own (set ONETHING_REPLICATION_FACTOR / ONETHING_MIN_INSYNC_REPLICAS for it)")
    try:
        with console.status("bringing the stack up…"):
            report = stack.up(s)
    except (KafkaStackError, PostgresStackError) as exc:
        raise StackFailure(str(exc)) from None
    for note in report.notes:
        console.print(f"[dim]{note}[/dim]")
    console.print(f"kafka     {report.kafka}" + (f"   (log: {report.kafka_log})" if report.kafka_log else ""))
    console.print(f"postgres  {report.postgres}   migrations applied now: {report.migrations_applied or 'none'}")
    console.print(f"topics    {len(report.topics.created)} created, {len(report.topics.unchanged)} unchanged"
                  f"   (replication {s.replication_factor}, min.insync.replicas {s.min_insync_replicas})")
    for line in report.topics.drift:
        console.print(f"[bold red]topic drift[/bold red] {line}")
    if report.acls is not None:
        console.print(f"kafka acl {len(report.acls.users)} users, {report.acls.created} ACLs created, "
                      f"{report.acls.unchanged} unchanged (SASL/SCRAM-SHA-512, StandardAuthorizer)")
        for line in report.acls.extra:
            console.print(f"[yellow]acl not declared[/yellow] {line}")
    if not report.topics.ok:
        raise StackFailure("topics differ from their declaration (see above); nothing was changed")


@main.command(help="Stop the local broker (and PostgreSQL with --postgres).")
@click.option("--postgres", "with_postgres", is_flag=True, help="also stop Debian's PostgreSQL cluster")
def down(with_postgres: bool) -> None:
    from . import stack

    s = _settings()
    stopped = stack.down(s)
    if with_postgres and stack.stop_postgres(s):
        stopped.append("postgres")
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@main.command(help="Brokers, the controller quorum, under-replicated partitions, PostgreSQL, topics with end "
                   "offsets, consumer groups with lag. Exits 1 when Kafka or PostgreSQL is down, also with --json "
                   "(a degraded cluster that still answers is shown, in --json as kafka.problems).")
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    import logging

    from . import stack

    # a dead broker is a row of the table: kafka-python's connection errors to it would only repeat it
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    st = stack.status(_settings())
    k, p = st["kafka"], st["postgres"]
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        sys.exit(0 if k.get("state") == "up" and p.get("state") == "up" else 1)
    brokers = k.get("brokers", [])
    up_count = sum(1 for b in brokers if b["state"] == "up")
    console.print(f"kafka     {k.get('state')}  {k['bootstrap']}  brokers {up_count}/{len(brokers)} up"
                  + (f"  controller={k['controller']}" if k.get("controller") is not None else ""))
    console.print(f"postgres  {p.get('state')}  {p['url']}  {p.get('version', p.get('error', ''))}"
                  f"  schema_version={p.get('schema_version')}")
    _print_kafka_health(k)
    if "topics" in st:
        table = Table("topic", "partitions", "end offsets", title="topics")
        for t in st["topics"]:
            table.add_row(t["name"], str(t["partitions"]), "?" if t["end_offsets"] is None else str(t["end_offsets"]))
        console.print(table)
        groups = Table("consumer group", "partitions", "lag", title="consumer groups")
        for g in st["groups"]:
            groups.add_row(g["group"], str(g["partitions"]), str(g["lag"]))
        console.print(groups)
        projections = Table("read model (PostgreSQL)", "partitions", "lag", title="projections")
        for pr in st.get("projections", []):
            projections.add_row(pr["projection"], str(pr["partitions"]), str(pr["lag"]))
        console.print(projections)
    if k.get("state") != "up" or p.get("state") != "up":
        sys.exit(1)


def _print_kafka_health(k: dict) -> None:
    """The brokers, the quorum and the partitions that lost a replica: what `status` adds for a cluster."""
    if k.get("brokers"):
        table = Table("broker", "address", "state", "pid", title="brokers")
        for b in k["brokers"]:
            state = "[green]up[/green]" if b["state"] == "up" else "[bold red]down[/bold red]"
            table.add_row(str(b["id"]), b["address"] or "?", state, str(b.get("pid") or "-"))
        console.print(table)
    q = k.get("quorum")
    if q:
        table = Table("voter", "log end offset", "lag", "caught up (ms ago)",
                      title=f"controller quorum: leader {q['leader']}, epoch {q.get('epoch')}, "
                            f"high watermark {q.get('high_watermark')}")
        for v in q["voters"]:
            table.add_row(f"{v['id']}" + (" (leader)" if v["id"] == q["leader"] else ""), str(v["log_end_offset"]),
                          str(v["lag"]), str(v["caught_up_ms_ago"]))
        console.print(table)
    under = k.get("under_replicated")
    if under is not None:
        console.print(f"under-replicated partitions: {len(under)}")
        if under:
            table = Table("topic", "partition", "leader", "replicas", "in sync", title="under-replicated")
            for u in under[:20]:
                table.add_row(u["topic"], str(u["partition"]), str(u["leader"]), ",".join(map(str, u["replicas"])),
                              ",".join(map(str, u["isr"])))
            console.print(table)
            if len(under) > 20:
                console.print(f"… and {len(under) - 20} more (`onething status --json`)")
    for line in k.get("problems", []) + k.get("errors", []):
        console.print(f"[bold red]kafka[/bold red] {line}")


@main.group(help="Topics as code.")
def topics() -> None:
    pass


@topics.command("apply", help="Create missing topics; report any drift from the declaration.")
def topics_apply() -> None:
    from . import stack
    from .topics import apply_topics

    s = _settings()
    admin = stack.admin_client(s)
    try:
        report = apply_topics(admin, stack.topic_specs(s))
    finally:
        admin.close()
    console.print(f"{len(report.created)} created, {len(report.unchanged)} unchanged")
    for line in report.drift:
        console.print(f"[bold red]drift[/bold red] {line}")
    if not report.ok:
        sys.exit(1)


@topics.command("grow", help="Grow partition counts to the declaration (keys move partitions!).")
@click.confirmation_option(prompt="Growing partitions changes which partition a key lands on. Continue?")
def topics_grow() -> None:
    from . import stack
    from .topics import grow_partitions

    s = _settings()
    admin = stack.admin_client(s)
    try:
        grown = grow_partitions(admin, stack.topic_specs(s))
    finally:
        admin.close()
    console.print("grown: " + (", ".join(grown) or "none"))


@main.group(help="The Avro contract in schemas/.")
def schemas() -> None:
    pass


@schemas.command("check", help="Fail if a source differs from its published version or breaks a reader.")
def schemas_check() -> None:
    from events.compatibility import check_full_transitive
    from events.publish import pending_changes
    from events.schema_store import SchemaStore

    store = SchemaStore()
    pending = pending_changes()
    bad = False
    for event_type, source in pending.items():
        problems = check_full_transitive(source, store.by_type.get(event_type, []))
        state = "INCOMPATIBLE" if problems else "compatible, not yet published"
        bad = bad or bool(problems)
        console.print(f"{event_type}: {state}")
        for p in problems:
            console.print(f"   {p}")
    if not pending:
        console.print(f"{len(store.event_types())} event types, every source published")
    sys.exit(1 if bad or pending else 0)


@schemas.command("publish", help="Publish a new version of each changed, compatible schema.")
def schemas_publish() -> None:
    from events.publish import publish
    from events.schema_store import SchemaError

    try:
        written = publish()
    except SchemaError as exc:
        raise StackFailure(str(exc)) from None
    for event_type, version in written:
        console.print(f"published {event_type} v{version}")
    if not written:
        console.print("nothing to publish")


@main.command(help="Produce events through the real broker and read them back.")
@click.option("--count", default=1000, show_default=True)
def smoke(count: int) -> None:
    from . import smoke as smoke_mod

    result = smoke_mod.run(_settings(), count=count)
    console.print(f"produced {result.produced}, read back {result.read_back}, per-key order "
                  f"{'kept' if result.in_order else 'BROKEN'}, {result.seconds:.2f}s")
    if result.read_back != result.produced or not result.in_order:
        sys.exit(1)


@main.command(help="The main job: the stack, every process, four newborn applications shown live; "
                   "--bundle CODE (repeatable) or --all: one realistic application of each bundle instead.")
@click.option("--exit-when-done", is_flag=True, help="stop once every demo case has ended (for CI)")
@click.option("--timeout", default=600, show_default=True, help="seconds to wait for the cases")
@click.option("--bundle", "bundles", multiple=True, metavar="CODE",
              help="apply for this bundle (一件事) instead of the newborn demo; repeatable")
@click.option("--all", "every", is_flag=True, help="apply for every modelled bundle")
@click.pass_context
def demo(ctx: click.Context, exit_when_done: bool, timeout: int, bundles: tuple[str, ...], every: bool) -> None:
    from . import safe_config
    from .demo import run_demo

    os.environ.setdefault(safe_config.ENV, safe_config.DEV)  # the demo is development by definition
    chosen = None
    if bundles or every:
        from catalog.loader import load_catalog

        from .demo_bundles import chosen_bundles

        try:
            chosen = chosen_bundles(load_catalog(), list(bundles), every)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--bundle") from None
    ctx.invoke(up)
    ctx.invoke(smoke, count=1000)
    from .supervisor import StopFailed

    try:
        if chosen is not None:
            from . import demo_bundles

            ok, _ = demo_bundles.run(_settings(), chosen, exit_when_done=exit_when_done, timeout_s=timeout)
        else:
            ok, _cases = run_demo(_settings(), exit_when_done=exit_when_done, timeout_s=timeout)
    except StopFailed as exc:
        raise StackFailure(f"not every process stopped cleanly: {exc}") from None
    if not ok:
        sys.exit(1)


@main.command(help="Run the whole system (no NAME: api, core, read-models, adapters, deadlines under a supervisor) "
                   "or one process: api, core, read-models, adapters [DEPT,…], deadlines, or one processor alone: "
                   "dispatch, cascade, case-view, kpis, oversight, read-audit, adapter DEPT.")
@click.argument("name", required=False)
@click.argument("arg", required=False)
def run(name: str | None, arg: str | None) -> None:

    from . import process, supervisor

    if name:
        process.main([name] + ([arg] if arg else []))
        return
    s = _settings()
    from .safe_config import require_safe

    require_safe(s, "run")  # before any child starts (each child checks its own Kafka principals too)
    sup = supervisor.system(s.home / "logs")
    stopping = sup.stop_on_signals()  # Ctrl-C, SIGTERM (systemd, a script) and SIGHUP stop every child
    sup.start()
    console.print(f"running {', '.join(sup.children)}; logs in {s.home / 'logs'}; Ctrl-C stops")
    problems: list[str] = []
    try:
        while not stopping.is_set():
            for restarted in sup.check():
                console.print(f"[yellow]restarted {restarted}[/yellow]")
            stopping.wait(1)
    finally:
        problems = sup.stop()   # README, "Stopping: signals, exit status, systemd"
    if problems:
        raise StackFailure("not every process stopped cleanly: " + "; ".join(problems))
    console.print(f"stopped ({sup.stop_signal or 'done'}): every process ended")


@main.command(help="Benchmark the whole system against the raw Kafka pipe on a stack of its own; prints figures.")
@click.option("--quick", is_flag=True, help="a short run (under a minute and a half)")
@click.option("--cases", type=int, default=None, help="applications for the saturation run (default 2000, quick 300)")
@click.option("--json", "as_json", type=click.Path(dir_okay=False), default=None, help="also write the figures here")
@click.option("--sealing-ab", is_flag=True,
              help="then saturation again with personal data unsealed (ONETHING_SEALING=off; ONETHING_ENV=dev only): "
                   "what sealing costs, CPU a case with and without")
def bench(quick: bool, cases: int | None, as_json: str | None, sealing_ab: bool) -> None:
    from dataclasses import asdict

    from . import bench as bench_mod
    from . import safe_config

    os.environ.setdefault(safe_config.ENV, safe_config.DEV)  # a stack of its own, thrown away
    figures = bench_mod.run(quick=quick, cases=cases, console=console, sealing_ab=sealing_ab)
    bench_mod.report(figures, console)
    if as_json:
        with open(as_json, "w") as out:
            json.dump(asdict(figures), out, indent=2)


#: command → "module:attribute", imported only when that command runs (or `--help` lists them all):
#: `onething run core` does not pay for jieba, pypinyin, schemathesis or the fault scenarios
LAZY = {
    "erase": "producers.privacy_cli:erase", "retention": "producers.privacy_cli:retention",
    "keys": "producers.privacy_cli:keys", "deadletters": "producers.privacy_cli:deadletters",
    "catalog": "catalog.cli:catalog", "registers": "producers.register_cli:registers",
    "cascade": "producers.register_cli:cascade",
    "proactive": "projectors.proactive_cli:proactive",   # 免申即享: the life-event rules (catalog/rules/)
    "fuzz": "infra.fuzz:fuzz",                            # schemathesis against the running API
    "faults": "infra.faults.command:faults",              # the fault scenarios (infra/faults/)
    "replay": "infra.cli_ops:replay", "audit": "infra.cli_ops:audit", "prometheus": "infra.cli_ops:prometheus",
}
main.lazy = LAZY


if __name__ == "__main__":
    main()
