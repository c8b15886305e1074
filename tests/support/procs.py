"""Processes and listening sockets as the kernel reports them (/proc), for tests that must find every
process a command left behind and every port still open — what an operator sees with `ps` and `ss`.

A process is named by its pid *and* its start time: pids are reused, and a test that only checked
pids could mistake a newcomer for a survivor, or the other way round.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"   # the TCP state in /proc/net/tcp


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int    # clock ticks after boot
    state: str
    cmd: str


def proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = stat[stat.rindex(")") + 2:].split()   # the command name in parentheses may hold spaces
    return Proc(pid, ppid=int(rest[1]), pgid=int(rest[2]), sid=int(rest[3]), start=int(rest[19]),
                state=rest[0], cmd=cmd)


def processes() -> list[Proc]:
    return [p for p in (proc(int(d)) for d in os.listdir("/proc") if d.isdigit()) if p is not None]


def alive(p: Proc) -> bool:
    """Still running: same pid, same start, not a zombie (a zombie has ended; it holds no port)."""
    now = proc(p.pid)
    return now is not None and now.start == p.start and now.state not in ("Z", "X")


def tree(root: int) -> list[Proc]:
    """`root` and every process below it."""
    every = processes()
    found = [p for p in every if p.pid == root]
    pids = {root}
    grew = True
    while grew:
        grew = False
        for p in every:
            if p.ppid in pids and p.pid not in pids:
                pids.add(p.pid)
                found.append(p)
                grew = True
    return found


def survivors(known: list[Proc]) -> list[Proc]:
    """Of `known`, the ones still running, and any process still in one of their sessions or process
    groups (a grandchild re-parented once its parent died is found that way)."""
    groups = {p.pgid for p in known} | {p.sid for p in known}
    left = [p for p in known if alive(p)]
    seen = {p.pid for p in left}
    left += [p for p in processes() if p.pid not in seen and (p.pgid in groups or p.sid in groups)
             and p.state not in ("Z", "X") and p.pid != os.getpid()]
    return left


def _sockets(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except (FileNotFoundError, PermissionError):
        pass
    return inodes


def _listeners() -> dict[int, int]:
    """inode → port of every TCP socket listening in this network namespace."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == LISTEN:
                out[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
    return out


def listening_ports(pids) -> set[int]:
    """The TCP ports these processes listen on."""
    listeners = _listeners()
    return {listeners[i] for pid in pids for i in _sockets(pid) if i in listeners}


def listening() -> set[int]:
    """Every TCP port anything listens on here."""
    return set(_listeners().values())


def still_held(ports: set[int], since_ticks: int) -> set[int]:
    """Of `ports`, those a process that already ran at `since_ticks` (clock ticks after boot) still
    listens on. A port freed by the run and taken since by a newcomer (another lane's process,
    picking a free port) is not the run's: only a process that existed while the run held the port
    can hold it now (its own, or one it handed the socket to)."""
    return {port for p in processes() if p.start <= since_ticks
            for port in listening_ports([p.pid]) if port in ports}


def now_ticks() -> int:
    """This moment in the clock ticks after boot that `Proc.start` counts."""
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))
