"""CPU seconds by kind of process over a window, from /proc (what `bench/density.py` reports).

Each process's utime + stime + the CPU of its reaped children (cutime + cstime, so short-lived helpers such as
runc count for the process that waited for them), grouped by what it is; the machine's total from /proc/stat.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
HELPERS = "Docker's helpers (runc, setkey, resolver)"
KINDS = (  # (kind, a byte string found in its command line), first match wins
    ("node EVM agents", b"Worker.epm.node"), ("Workers", b"-m\x00Worker"), ("MongoDB (embedded)", b"secantusd"),
    ("JobManager", b"-m\x00JobManager"), ("GlobalManager", b"-m\x00GlobalManager"), ("Discovery", b"-m\x00Discovery"),
    ("FrontEnd", b"-m\x00FrontEnd"), ("supervisord", b"supervisord"), ("benchmark client", b"bench."),
    ("dockerd", b"dockerd"), ("containerd-shim", b"containerd-shim"), ("containerd", b"containerd"),
    (HELPERS, b"runc"), (HELPERS, b"libnetwork"), (HELPERS, b"setup-resolver"), ("EPM processes (sh, sleep)", b"sleep"),
    ("EPM processes (sh, sleep)", b"sh\x00-c"), ("sshd", b"sshd"),
)


def kind_of(pid: str) -> str:
    try:
        cmd = (Path("/proc") / pid / "cmdline").read_bytes()
    except OSError:
        return "gone"
    if not cmd:
        return "kernel threads"  # (or a zombie, which no longer runs)
    if pid == "1":  # its children's CPU is every orphan it reaped (shims of removed containers): their whole life
        return "init (orphans it reaped, their whole life)"
    kind = next((k for k, needle in KINDS if needle in cmd), None)
    if kind is None:  # named by its program, so that what "other" is shows in the report
        kind = "other: " + os.path.basename(cmd.split(b"\0")[0].decode(errors="replace"))[:40]
    return kind


def snapshot() -> dict[str, tuple[str, float]]:
    """pid -> (kind, CPU seconds so far including reaped children)."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK
        out[p.name] = (kind_of(p.name), cpu)
    return out


def machine() -> dict[str, float]:
    vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {n: v / TICK for n, v in zip(names, vals, strict=False)}


def delta(before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]]) -> dict[str, float]:
    by: dict[str, float] = {}
    for pid, (kind, cpu) in after.items():
        by[kind] = by.get(kind, 0.0) + cpu - (before[pid][1] if pid in before else 0.0)
    return dict(sorted(((k, round(v, 1)) for k, v in by.items()), key=lambda kv: -kv[1]))


def start() -> tuple[dict[str, tuple[str, float]], dict[str, float]]:
    """The start of a window: every process's CPU so far, and the machine's."""
    return snapshot(), machine()


def since(begin: tuple[dict[str, tuple[str, float]], dict[str, float]]) -> dict[str, dict[str, float]]:
    """CPU seconds since ``start()``, by kind of process and for the whole machine."""
    procs, mach = begin
    return {"cpu_s_by_process": delta(procs, snapshot()),
            "cpu_s_machine": {k: round(v - mach[k], 1) for k, v in machine().items()}}
