"""`onething bench --sealing-ab`: what sealing personal data costs, measured on one commit.

Comparing two commits' quick runs mixed the cost of sealing with everything else that changed
between them, and single quick runs vary by about ±10 %. So after its usual figures the bench runs
its saturation phase (b) four times more on the same stack — the same broker, database and load,
each time on every process freshly started and warmed up — unsealed, sealed, sealed, unsealed
(`ONETHING_SEALING=off` / on), and compares the sums of each mode. Unsealed, the API writes the
form's `pii` fields and material references in clear and grants no department a key, and the
adapters seal no outputs (infra/keystore.py `sealing_on`); everything else — the read-audit
projection, the key store's tables — is the same in both, so the difference is sealing's. The
first phase (b) is not compared: it follows the raw pipe, whose 20,000 events and deleted topic
the broker is still digesting.

Why A B B A: a phase's place costs more than sealing does. With one pair (2026-12-02, a quiet
2-core box), the first phase was the dearer whichever it was: unsealed first gave −3.8 %, sealed
first +14.0 % — every process dearer, the deadline clock too, which never touches a sealed value.
In A B B A each mode takes one early and one late place, so a drift along the run cancels out.
`ONETHING_BENCH_AB_SEALED_FIRST=1` runs B A A B instead.

Unsealed is for this measurement only: the switch is refused outside development
(`ONETHING_ENV=dev`), by `onething bench` before it starts anything and by every process at its
start (infra/safe_config.py), so a production deployment never writes personal data in clear.
"""
from __future__ import annotations

import os

from .keystore import SEALING_ENV
from .safe_config import DEV, ENV, is_dev


class SealingSwitchRefused(SystemExit):
    """`--sealing-ab` outside development (the message names the variable)."""


def refuse_outside_dev() -> None:
    if not is_dev():
        raise SealingSwitchRefused(
            f"onething bench --sealing-ab runs processes with {SEALING_ENV}=off (personal data unsealed), "
            f"which only a development machine may: set {ENV}={DEV} (it is {os.environ.get(ENV)!r})")


def ab_order() -> tuple[bool, ...]:
    """Sealing on (True) or off, phase by phase: unsealed, sealed, sealed, unsealed (or the mirror)."""
    first = bool(os.environ.get("ONETHING_BENCH_AB_SEALED_FIRST"))
    return (first, not first, not first, first)


def saturation_phase(settings, n: int, sealing: bool, progress):
    """Phase (b) on every process started afresh (sealing on or off), warmed up, stopped after."""
    from .bench import saturate, start_system, warm_up
    from .bench_cases import Watcher

    if not sealing:
        refuse_outside_dev()
    watcher = Watcher(settings.database_url, interval_s=0.1).start()
    sup, cpu, base = start_system(settings, {SEALING_ENV: "on" if sealing else "off"})
    try:
        auth, body = warm_up(base, sup, watcher)
        return saturate(base, auth, body, n, watcher, sup, cpu, progress)
    finally:
        watcher.stop()
        sup.stop()


def per_case_ms(cpu: dict[str, float], cases: int) -> dict[str, float]:
    """CPU milliseconds a case per process, and `total` (every process, the broker, PostgreSQL)."""
    out = {name: 1000 * s / max(1, cases) for name, s in cpu.items()}
    out["total"] = sum(out.values())
    return out


def difference_pct(sealed: float, unsealed: float) -> float:
    return 100 * (sealed - unsealed) / unsealed if unsealed else float("nan")


def report_sealing(f, console) -> None:
    from rich.table import Table

    sealed = per_case_ms(f.cpu_sealed, f.sealed_cases)
    unsealed = per_case_ms(f.cpu_unsealed, f.unsealed_cases)
    t = Table("process", "sealed", "unsealed", "difference",
              title=f"(g) what sealing personal data costs: CPU ms a case at saturation "
                    f"({f.sealed_cases} cases in {f.sealed_seconds:.0f} s / {f.unsealed_cases} in "
                    f"{f.unsealed_seconds:.0f} s; two phases each, {'B A A B' if ab_order()[0] else 'A B B A'})")
    for name in sealed:
        if name == "total":
            continue
        u = unsealed.get(name, 0.0)
        t.add_row(name, f"{sealed[name]:.1f}", f"{u:.1f}",
                  f"{sealed[name] - u:+.1f} ms ({difference_pct(sealed[name], u):+.0f} %)")
    total = difference_pct(sealed["total"], unsealed["total"])
    t.add_row("[bold]every process, the broker, PostgreSQL[/bold]", f"[bold]{sealed['total']:.1f}[/bold]",
              f"[bold]{unsealed['total']:.1f}[/bold]", f"[bold]{total:+.1f} %[/bold]")
    t.add_row("cases completed/s", f"{f.sealed_cases_per_s:.1f}", f"{f.unsealed_cases_per_s:.1f}",
              f"{difference_pct(f.sealed_cases_per_s, f.unsealed_cases_per_s):+.1f} %")
    console.print(t)
