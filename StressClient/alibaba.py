"""Alibaba cluster trace batch_task tables (2017 and 2018 schemas) as StressClient arrivals.

The mapping (docs/stressclient.md, "Alibaba traces"):

* a job per trace job, submitted at the earliest create (2017) / start (2018) time of its rows in the
  window, as ``(t - window start) / speed`` seconds after the run starts;
* a task per instance of each row, at most ``max_instances`` per row and ``max_tasks`` per job (the
  FrontEnd takes at most 256); every instance left out is counted and reported (the cap);
* cores per task = max(1, ceil(cpu / 100 * cpu_scale)) (both schemas give CPUs in hundredths of a core);
  memory per task = max(6 MiB, normalized memory * machine_memory) (2017 normalises to [0, 1], 2018 to
  [0, 100]);
* each task runs ``sleep D`` with D = (end - start) / speed; a ``Failed`` row runs
  ``sh -c 'sleep D; exit 1'``, so it fails after its duration on a real Worker and a hollow one alike;
* a row that cannot be used (a missing or unparsable field, a negative time, an end before its start,
  no resources, no instance, an unknown status) is skipped, counted and reported with its line number.

Rows of any status other than the above are replayed with their recorded duration: a ``Running`` or
``Waiting`` row that has both times was seen running (or queued) for that long by the trace.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("alibaba-2017", "alibaba-2018")
STATUSES = {"Terminated", "Failed", "Running", "Waiting", "Ready", "Interrupted", "Cancelled"}
FRONTEND_MAX_TASKS = 256
MIN_MEMORY = 6 * 2**20
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
KEEP_BAD_ROWS = 200  # line numbers listed in the report; all of them are counted


class AlibabaError(ValueError):
    """The file cannot be read as that schema at all (not a bad row: those are counted)."""


@dataclass(frozen=True)
class Options:
    speed: float = 1.0
    window: tuple[float | None, float | None] = (None, None)
    max_instances: int = 4
    max_tasks: int = 32
    cpu_scale: float = 1.0
    machine_memory: int = 8 * 2**30
    image: str = "rswarm/task:1"


@dataclass(frozen=True)
class Row:
    line: int
    job: str
    task: str
    instances: int
    status: str
    start: float
    end: float
    cpu: float  # hundredths of a core
    mem: float  # fraction of a machine, [0, 1]


@dataclass
class Stats:
    """What was read, used, capped and refused; goes into the run's report."""

    format: str
    rows: int = 0
    used_rows: int = 0
    out_of_window: int = 0
    bad_rows: int = 0
    bad_by_reason: Counter = field(default_factory=Counter)
    bad_examples: list[tuple[int, str]] = field(default_factory=list)
    jobs: int = 0
    tasks: int = 0
    instances_in_trace: int = 0
    instances_capped: int = 0
    jobs_capped: int = 0
    cap: dict[str, int] = field(default_factory=dict)

    def bad(self, line: int, reason: str) -> None:
        self.bad_rows += 1
        self.bad_by_reason[reason] += 1
        if len(self.bad_examples) < KEEP_BAD_ROWS:
            self.bad_examples.append((line, reason))

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "rows": self.rows, "used_rows": self.used_rows,
                "out_of_window": self.out_of_window, "bad_rows": self.bad_rows,
                "bad_by_reason": dict(self.bad_by_reason.most_common()),
                "bad_lines": [list(x) for x in self.bad_examples], "jobs": self.jobs, "tasks": self.tasks,
                "instances_in_trace": self.instances_in_trace, "instances_capped": self.instances_capped,
                "jobs_capped": self.jobs_capped, "cap": self.cap}

    def lines(self) -> list[str]:
        out = [f"trace ({self.format}): {self.rows} rows, {self.used_rows} used, {self.out_of_window} outside "
               f"the window, {self.bad_rows} unusable; {self.jobs} jobs, {self.tasks} tasks"]
        if self.instances_capped:
            out.append(f"cap: {self.instances_capped} of {self.instances_in_trace} instances left out "
                       f"(at most {self.cap.get('max_instances')} per row, {self.cap.get('max_tasks')} per job; "
                       f"{self.jobs_capped} jobs capped)")
        for reason, n in self.bad_by_reason.most_common():
            lines = [str(ln) for ln, r in self.bad_examples if r == reason][:10]
            out.append(f"unusable {n}: {reason} (lines {', '.join(lines)}{', ...' if n > len(lines) else ''})")
        return out


@dataclass(frozen=True)
class TraceJob:
    """One replayed job: the same body whatever the seed (a trace is already a sample)."""

    name: str
    body: dict[str, Any]
    source: str

    def render(self, index: int, seed: int = 1, prefix: str | None = None) -> dict[str, Any]:
        import copy

        return copy.deepcopy(self.body)


# ---- parsing ------------------------------------------------------------------------------------------
def _num(value: str, what: str) -> float:
    if value is None or value.strip() == "":
        raise ValueError(f"missing {what}")
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{what} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} is not a number")
    return x


def _row_2017(line: int, cells: list[str]) -> Row:
    if len(cells) < 8:
        raise ValueError("missing field (expected 8 columns)")
    start, end = _num(cells[0], "create time"), _num(cells[1], "end time")
    job, task, status = cells[2].strip(), cells[3].strip(), cells[5].strip()
    if not job or not task:
        raise ValueError("missing job or task id")
    inst = _num(cells[4], "number of instances")
    if status == "Waiting" and (not cells[6].strip() or not cells[7].strip()):
        raise ValueError("Waiting with no resources")
    cpu, mem = _num(cells[6], "CPUs requested"), _num(cells[7], "memory requested")
    return Row(line, job, task, int(inst) if inst.is_integer() else -1, status, start, end, cpu, mem)


def _row_2018(line: int, cells: list[str]) -> Row:
    if len(cells) < 9:
        raise ValueError("missing field (expected 9 columns)")
    task, job, status = cells[0].strip(), cells[2].strip(), cells[4].strip()
    if not job or not task:
        raise ValueError("missing job or task name")
    inst = _num(cells[1], "instance_num")
    start, end = _num(cells[5], "start_time"), _num(cells[6], "end_time")
    if status == "Waiting" and (not cells[7].strip() or not cells[8].strip()):
        raise ValueError("Waiting with no resources")
    cpu, mem = _num(cells[7], "plan_cpu"), _num(cells[8], "plan_mem") / 100.0
    return Row(line, job, task, int(inst) if inst.is_integer() else -1, status, start, end, cpu, mem)


def _check(r: Row) -> None:
    if r.status not in STATUSES:
        raise ValueError("unknown status")
    if r.start < 0 or r.end < 0:
        raise ValueError("negative time")
    if r.end < r.start:
        raise ValueError("end before start")
    if r.instances < 1:
        raise ValueError("no instance")
    if r.cpu <= 0 or r.mem <= 0:
        raise ValueError("no resources")
    if r.mem > 1:
        raise ValueError("memory above a whole machine")


def read_rows(lines: Iterable[str], fmt: str, stats: Stats) -> list[Row]:
    """Every usable row; a row that cannot be used is counted in ``stats`` with its line number."""
    parse = _row_2017 if fmt == "alibaba-2017" else _row_2018
    rows = []
    for n, cells in enumerate(csv.reader(lines), start=1):
        if not cells or all(not c.strip() for c in cells):
            continue
        if n == 1 and not _looks_numeric(cells[0] if fmt == "alibaba-2017" else cells[1]):
            continue  # a header row (the published 2018 files have none)
        stats.rows += 1
        try:
            r = parse(n, cells)
            _check(r)
        except ValueError as exc:
            stats.bad(n, str(exc))
            continue
        rows.append(r)
    return rows


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---- mapping -------------------------------------------------------------------------------------------
def _safe(text: str, limit: int) -> str:
    s = _SAFE.sub("_", text).strip("_-") or "x"
    return s[:limit]


def _command(duration: float, failed: bool) -> list[str]:
    d = f"{duration:.3f}".rstrip("0").rstrip(".") or "0"
    return ["sh", "-c", f"sleep {d}; exit 1"] if failed else ["sleep", d]


def build_jobs(rows: list[Row], opts: Options, stats: Stats, source: str) -> list[tuple[float, TraceJob]]:
    """(offset, job) pairs sorted by offset: the mapping in this module's docstring."""
    lo, hi = opts.window
    per_job: dict[str, list[Row]] = {}
    order: list[str] = []
    for r in rows:
        if (lo is not None and r.start < lo) or (hi is not None and r.start >= hi):
            stats.out_of_window += 1
            continue
        stats.used_rows += 1
        if r.job not in per_job:
            per_job[r.job] = []
            order.append(r.job)
        per_job[r.job].append(r)
    origin = lo if lo is not None else min((r.start for rs in per_job.values() for r in rs), default=0.0)
    max_tasks = min(opts.max_tasks, FRONTEND_MAX_TASKS)
    stats.cap = {"max_instances": opts.max_instances, "max_tasks": max_tasks}
    prefix = "ali17" if stats.format == "alibaba-2017" else "ali18"
    out: list[tuple[float, TraceJob]] = []
    for job in order:
        jrows = sorted(per_job[job], key=lambda r: (r.start, r.line))
        tasks: dict[str, dict[str, Any]] = {}
        capped = False
        for r in jrows:
            stats.instances_in_trace += r.instances
            take = min(r.instances, opts.max_instances, max_tasks - len(tasks))
            if take < r.instances:
                stats.instances_capped += r.instances - take
                capped = True
            cores = max(1, math.ceil(r.cpu / 100.0 * opts.cpu_scale - 1e-9))
            mem = max(MIN_MEMORY, int(r.mem * opts.machine_memory))
            task = {"image": opts.image, "command": _command((r.end - r.start) / opts.speed, r.status == "Failed"),
                    "req_cores": cores, "mem_limit": f"{max(6, mem // 2**20)}m"}
            base = _safe(r.task, 50)
            for k in range(take):
                name = f"t{base}-{k}"
                while name in tasks:
                    name += "x"
                tasks[name] = dict(task)
        if not tasks:
            continue
        stats.jobs += 1
        stats.jobs_capped += capped
        stats.tasks += len(tasks)
        name = f"{prefix}-{_safe(job, 100)}"
        body = {"job_name": name[:127], "priority": 0, "job_info": {"tasks": tasks}}
        out.append(((jrows[0].start - origin) / opts.speed, TraceJob(name, body, source)))
    out.sort(key=lambda x: x[0])
    return out


def load(path: str | Path, fmt: str, opts: Options) -> tuple[list[tuple[float, TraceJob]], Stats]:
    if fmt not in FORMATS:
        raise AlibabaError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    p = Path(path)
    stats = Stats(fmt)
    try:
        with open(p, newline="", errors="replace") as f:
            rows = read_rows(f, fmt, stats)
    except OSError as exc:
        raise AlibabaError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except csv.Error as exc:
        raise AlibabaError(f"{p}: not a CSV file: {exc}") from None
    if stats.rows == 0:
        raise AlibabaError(f"{p}: no data row")
    jobs = build_jobs(rows, opts, stats, str(p))
    if not jobs:
        raise AlibabaError(f"{p}: no usable job in the window ({stats.bad_rows} unusable rows, "
                           f"{stats.out_of_window} outside the window)")
    return jobs, stats
