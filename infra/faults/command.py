"""The `onething faults` command (registered by infra/cli.py)."""
from __future__ import annotations

import logging
import os
import sys

import click
from rich.console import Console


@click.command(help="Fault scenarios on a 3-node cluster of their own under a steady load (infra/faults/): brokers "
                   "killed and hung, processes killed, PostgreSQL restarted, a department down, a disk full, a "
                   "rolling restart; verified at the end, one row per scenario. Exit 1 if anything was lost.")
@click.option("--short", is_flag=True, help="the suite's short form: a broker killed, PostgreSQL restarted, shorter holds")
@click.option("--only", multiple=True, help="only the scenarios whose name contains this (repeatable)")
@click.option("--rate", type=float, default=None, help="applications per second (default 2, short 1)")
@click.option("--json", "as_json", type=click.Path(dir_okay=False), default=None, help="also write the figures here")
def faults(short: bool, only: tuple[str, ...], rate: float | None, as_json: str | None) -> None:
    import signal

    from .run import main as run_faults

    os.environ.setdefault("ONETHING_ENV", "dev")   # a stack of its own, with development credentials

    def interrupted(_signo, _frame):
        for signo in (signal.SIGTERM, signal.SIGINT):   # a second signal must not cut the clean-up short
            signal.signal(signo, signal.SIG_IGN)
        raise KeyboardInterrupt   # the run's `finally` stops the stack it started
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    logging.getLogger("kafka").setLevel(logging.ERROR)   # its clients' reconnect chatter during the faults
    # into a log file or CI, 80 columns (rich's default off a terminal) squeezed the table into unreadable cells
    sys.exit(run_faults(short=short, only=list(only) or None, rate=rate, as_json=as_json, console=Console(stderr=False, width=None if sys.stdout.isatty() else 180)))
