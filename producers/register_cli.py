"""`onething registers …` (record register changes) and `onething cascade …` (its status, outages).

    onething registers register 91310115MA1K4LXQ8H --set name=… --set address=… …   # 设立 / import
    onething registers change 91310115MA1K4LXQ8H --set name=上海新名称有限公司
    onething registers deregister 91310115MA1K4LXQ8H --on 2025-06-30
    onething registers convert 92310115MA1K4LXQ8X 91310115MA1K4LXQ8H --set name=… --on 2025-07-01  # 个转企
    onething registers move-household --address … --region 310104 --on 2025-07-01   # asks for the resident ID
    onething registers death --on 2025-07-02 [--certificate …]                       # asks for the resident ID
    onething registers show 91310115MA1K4LXQ8H
    onething registers flush                     # produce changes left unacknowledged
    onething cascade status [KEY] [--open] [--json]
    onething cascade outage tax --for 60 [--mode failing --reason …] | --clear

A resident ID is never an argument (shell history, process lists): it is asked for without
echo, or read from standard input with `--resident-id-stdin`. Errors name the field and say
why, in Chinese and English, and never repeat the value.
"""
from __future__ import annotations

import json
import sys

import click
import psycopg
from rich.console import Console
from rich.table import Table

from catalog.validators import check_resident_id
from infra.settings import Settings

from .register_changes import COMPANY, PERSON, ChangeRefused
from .register_resources import RegisterUnavailable
from .registers import ChangeNotConfirmed, RegisterRecorder, register_key

console = Console()
EXIT_REFUSED, EXIT_UNAVAILABLE = 2, 3


def _pairs(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter("write each field as name=value", param_hint="--set")
        out[name.strip()] = value
    return out


def _resident_id(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().strip()
    return click.prompt("公民身份号码 (resident ID)", hide_input=True).strip()


def _record(do) -> None:
    """Run one recording and report it; exit 2 when refused, 3 when the stack is unavailable."""
    settings = Settings.from_env()
    recorder = RegisterRecorder(settings.bootstrap_servers, settings.database_url)
    try:
        result = do(recorder)
    except ChangeRefused as exc:
        console.print("[bold red]refused[/bold red] — nothing was recorded:")
        for p in exc.problems:
            console.print(f"  {p.path}: {p.message_zh} / {p.message_en}  [dim]({p.code})[/dim]")
        sys.exit(EXIT_REFUSED)
    except ChangeNotConfirmed as exc:
        console.print(f"[yellow]sent, not yet acknowledged[/yellow]: sequence {exc.sequence} of this entry is held "
                      "and will be produced before any later change (or by `onething registers flush`)")
        sys.exit(EXIT_UNAVAILABLE)
    except RegisterUnavailable as exc:
        console.print(f"[bold red]unavailable[/bold red]: {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    finally:
        recorder.close()
    for r in result if isinstance(result, tuple) else (result,):
        console.print(f"recorded {r.register} {r.change_kind}: key {r.key} sequence {r.sequence} "
                      f"event {r.event_id}" + (" (replayed)" if r.replayed else ""))


@click.group("registers", help="Master registers (一处变更): record checked changes as events.")
def registers() -> None:
    pass


_set = click.option("--set", "values", multiple=True, metavar="FIELD=VALUE", help="a register field (repeat)")
_change_id = click.option("--change-id", default=None, help="idempotency key: a retry records nothing twice")


@registers.command("register", help="设立登记: bring a company (or an individual business) into the register.")
@click.argument("uscc")
@_set
@_change_id
def register_cmd(uscc: str, values: tuple[str, ...], change_id: str | None) -> None:
    _record(lambda r: r.register_company(uscc, _pairs(values), change_id=change_id))


@registers.command("change", help="变更登记: name, address, legal representative, business scope, capital, type.")
@click.argument("uscc")
@_set
@_change_id
def change_cmd(uscc: str, values: tuple[str, ...], change_id: str | None) -> None:
    _record(lambda r: r.change_company(uscc, _pairs(values), change_id=change_id))


@registers.command("deregister", help="注销登记.")
@click.argument("uscc")
@click.option("--on", "on", required=True, metavar="YYYY-MM-DD")
@_change_id
def deregister_cmd(uscc: str, on: str, change_id: str | None) -> None:
    _record(lambda r: r.deregister_company(uscc, on, change_id=change_id))


@registers.command("convert", help="个转企: the individual business becomes a company, keeping its business "
                                   "years and credit record.")
@click.argument("sole_trader_uscc")
@click.argument("company_uscc")
@_set
@click.option("--on", "on", required=True, metavar="YYYY-MM-DD")
@_change_id
def convert_cmd(sole_trader_uscc: str, company_uscc: str, values: tuple[str, ...], on: str,
                change_id: str | None) -> None:
    _record(lambda r: r.convert_sole_trader(sole_trader_uscc, company_uscc, _pairs(values), on, change_id=change_id))


@registers.command("move-household", help="户口迁移 (asks for the resident ID).")
@click.option("--address", required=True)
@click.option("--region", required=True, metavar="REGION_CODE")
@click.option("--on", "on", required=True, metavar="YYYY-MM-DD")
@click.option("--resident-id-stdin", is_flag=True, help="read the resident ID from standard input")
@_change_id
def move_cmd(address: str, region: str, on: str, resident_id_stdin: bool, change_id: str | None) -> None:
    rid = _resident_id(resident_id_stdin)
    _record(lambda r: r.move_household(rid, address, region, on, change_id=change_id))


@registers.command("death", help="死亡登记: starts 公民身后 in every department (asks for the resident ID).")
@click.option("--on", "on", required=True, metavar="YYYY-MM-DD")
@click.option("--certificate", default=None, help="death certificate number")
@click.option("--resident-id-stdin", is_flag=True, help="read the resident ID from standard input")
@_change_id
def death_cmd(on: str, certificate: str | None, resident_id_stdin: bool, change_id: str | None) -> None:
    rid = _resident_id(resident_id_stdin)
    _record(lambda r: r.record_death(rid, on, certificate, change_id=change_id))


@registers.command("show", help="A company's master entry, as of its last confirmed change.")
@click.argument("uscc")
@click.option("--json", "as_json", is_flag=True)
def show_cmd(uscc: str, as_json: bool) -> None:
    settings = Settings.from_env()
    recorder = RegisterRecorder(settings.bootstrap_servers, settings.database_url)
    try:
        entry = recorder.master(COMPANY, uscc)
    finally:
        recorder.close()
    if entry is None:
        console.print("not in the register")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(entry.to_json(), ensure_ascii=False, indent=2))
        return
    table = Table("field", "value", title=f"{uscc} (sequence {entry.sequence})")
    for name, value in sorted(entry.fields.items()):
        table.add_row(name, "—" if value is None else str(value))
    console.print(table)


@registers.command("verify", help="Rebuild the register from its topic and compare it with the recorded entries.")
@click.option("--register", "register", type=click.Choice([COMPANY, PERSON]), default=COMPANY, show_default=True)
def verify_cmd(register: str) -> None:
    from .register_log import verify_master

    settings = Settings.from_env()
    with console.status(f"folding registry.{register} from its beginning…"):
        differ = verify_master(settings.bootstrap_servers, settings.database_url, register)
    if differ:
        console.print(f"[bold red]{len(differ)} entries differ from the log[/bold red]: " + ", ".join(differ[:20]))
        sys.exit(1)
    console.print(f"every {register} entry equals the fold of its log")


@registers.command("flush", help="Produce every change left sent-but-unacknowledged, in order.")
def flush_cmd() -> None:
    settings = Settings.from_env()
    recorder = RegisterRecorder(settings.bootstrap_servers, settings.database_url)
    try:
        n = recorder.flush_pending()
    except RegisterUnavailable as exc:
        console.print(f"[bold red]unavailable[/bold red]: {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    finally:
        recorder.close()
    console.print(f"{n} pending change(s) produced")


# --- the cascade ---------------------------------------------------------------------------------

@click.group("cascade", help="一处变更、多处联动: every register change, to every department that keeps a copy.")
def cascade() -> None:
    pass


@cascade.command("status", help="Per change: each department's state, attempts and time to apply; per "
                                "department: its backlog. KEY is a USCC or a person token.")
@click.argument("key", required=False)
@click.option("--open", "open_only", is_flag=True, help="only changes not yet applied everywhere")
@click.option("--limit", default=20, show_default=True)
@click.option("--name", "cascade_name", default="cascade", show_default=True, help="the cascade deployment")
@click.option("--json", "as_json", is_flag=True)
def status_cmd(key: str | None, open_only: bool, limit: int, cascade_name: str, as_json: bool) -> None:
    from projectors import cascade_status

    if key is not None and check_resident_id(key) is None:
        key = register_key(PERSON, key)  # a resident ID typed by mistake: look up its token, never print it
    settings = Settings.from_env()
    try:
        with psycopg.connect(settings.database_url) as conn:
            changes = cascade_status.changes(conn, cascade=cascade_name, key=key, open_only=open_only, limit=limit)
            backlog = cascade_status.backlog(conn, cascade=cascade_name)
            summary = cascade_status.summary(conn, cascade=cascade_name)
    except psycopg.OperationalError:
        console.print("[bold red]unavailable[/bold red]: PostgreSQL cannot be reached")
        sys.exit(EXIT_UNAVAILABLE)
    if as_json:
        click.echo(json.dumps({"summary": summary, "changes": changes, "backlog": backlog}, ensure_ascii=False,
                              indent=2))
        return
    console.print(f"{summary['changes']} changes, {summary['open']} open; fan-out p50 "
                  f"{summary['fanout_p50_seconds']}s p95 {summary['fanout_p95_seconds']}s")
    for ch in changes:
        state = "[green]complete[/green]" if ch["complete"] else f"[yellow]{ch['applied']}/{ch['targets']}[/yellow]"
        table = Table("department", "state", "fields", "attempts", "to apply (s)", "note",
                      title=f"{ch['register']} {ch['key']} #{ch['sequence']} {ch['change_kind']}  {state}"
                            + (f"  {ch['fanout_seconds']}s" if ch["fanout_seconds"] is not None else ""))
        for t in ch["target_states"]:
            note = " ".join(filter(None, ["ESCALATED" if t["escalated"] else "", t["last_reason"] or ""]))
            table.add_row(t["department"], t["state"], ",".join(t["fields"]), str(t["attempts"]),
                          "" if t["seconds_to_apply"] is None else f"{t['seconds_to_apply']:.2f}", note)
        console.print(table)
    table = Table("department", "held", "sent", "failed", "escalated", "oldest pending (s)", "applied",
                  title="backlog per department")
    for b in backlog:
        table.add_row(b["department"], str(b["held"]), str(b["sent"]), str(b["failed"]), str(b["escalated"]),
                      "" if b["oldest_pending_seconds"] is None else str(b["oldest_pending_seconds"]), str(b["applied"]))
    console.print(table)


@cascade.command("outage", help="Simulate a department's register system down (unavailable) or refusing "
                                "updates (failing), for the reference adapters.")
@click.argument("department")
@click.option("--for", "seconds", type=float, default=60.0, show_default=True)
@click.option("--mode", type=click.Choice(["unavailable", "failing"]), default="unavailable", show_default=True)
@click.option("--reason", default=None)
@click.option("--clear", is_flag=True, help="end the outage now")
def outage_cmd(department: str, seconds: float, mode: str, reason: str | None, clear: bool) -> None:
    from catalog.subscriptions import load_subscriptions
    from department_adapters.reference.register_copy import clear_outage, set_outage

    if department not in load_subscriptions().departments():
        raise click.BadParameter("not a department that keeps a register copy", param_hint="DEPARTMENT")
    with psycopg.connect(Settings.from_env().database_url, autocommit=True) as conn:
        if clear:
            clear_outage(conn, department)
            console.print(f"{department}: outage cleared")
        else:
            set_outage(conn, department, seconds, mode, reason)
            console.print(f"{department}: {mode} for {seconds:g}s")
