"""Decision throughput of the placement engine: in-memory snapshots, no MongoDB, no Docker.

    python -m bench.placement [--sizes 100 1000 10000] [--strategy NAME ...] [--seed S] [--quick]

Per cluster size: workers of 32 cores and 128g already running work (0-28 cores each taken, scattered
ids, 1-4g per taken core); a queue of jobs of 1-4 tasks, each of 1, 2, 4 or 8 cores (weights 4:3:2:1)
and 1-4g per core, until it asks for 85% of the free cores (at most 20,000 tasks). ``manual`` gets the
same queue with every task pinned to a node and cpuset. Each strategy plans the whole queue in one
``place()`` call (snapshot copy and index building included); tasks/s = tasks placed / seconds, median
of the repeats. The baseline, measured in the same run on the same queue, is the spine's pipeline
before this engine: per task, the feasibility and fit of every worker, then the first candidate (timed
on the first 2,000 tasks, 200 at 10,000 workers: it is O(workers x cores) per task).

Then the drain: a 10,000-task queue onto 1,000 workers of 16 cores, pass after pass (each pass places
what fits, then those jobs finish and free their workers) until the queue is empty.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from Common.placement import STRATEGIES, JobRequest, Node, TaskRequest, pipeline, place
from Common.placement.cores import pick_cores

GIB = 1024**3
CORES = 32
MEM = 128 * GIB
ALL = ["first-fit", "best-fit", "first-fit-decreasing", "best-fit-decreasing", "manual", "priority", "min-slack"]


def cluster(n: int, cores: int = CORES, mem: int = MEM) -> list[Node]:
    return [Node(f"w{k:05d}", list(range(cores)), mem) for k in range(n)]


def busy_cluster(n: int, rng: random.Random) -> list[Node]:
    """Workers already running work: 0-28 of their 32 cores taken (scattered ids), 1-4g per taken core."""
    nodes = []
    for k in range(n):
        taken = set(rng.sample(range(CORES), rng.randint(0, 28)))
        used_mem = min(MEM, sum(rng.randint(1, 4) * GIB for _ in taken))
        nodes.append(Node(f"w{k:05d}", [c for c in range(CORES) if c not in taken], MEM - used_mem, CORES, MEM,
                          list(range(CORES)), {c: "running:t" for c in taken}))
    return nodes


def queue(free_cores: int, rng: random.Random, fill: float = 0.85, cap: int = 20_000) -> list[JobRequest]:
    budget = int(free_cores * fill)
    jobs: list[JobRequest] = []
    asked = ntasks = 0
    while asked < budget and ntasks < cap:
        tasks = []
        for t in range(rng.randint(1, 4)):
            c = rng.choices([1, 2, 4, 8], weights=[4, 3, 2, 1])[0]
            tasks.append(TaskRequest(f"t{t}", c, c * rng.randint(1, 4) * GIB))
            asked += c
            ntasks += 1
        jobs.append(JobRequest(f"job-{len(jobs):06d}", tasks, priority=rng.randint(0, 3), submitted=float(len(jobs))))
    return jobs


def pinned(jobs: list[JobRequest], nodes: list[Node]) -> list[JobRequest]:
    """The same demand, every task naming a node and cpuset (first-fit done ahead, like an operator would)."""
    n_workers = len(nodes)
    free = [list(n.free) for n in nodes]
    mem = [n.mem_free for n in nodes]
    out, w = [], 0
    for job in jobs:
        tasks = []
        for t in job.tasks:
            start = w
            while len(free[w]) < t.cores or mem[w] < t.mem:
                w = (w + 1) % n_workers
                if w == start:
                    break
            chosen = pick_cores(free[w], t.cores) or []
            free[w] = [c for c in free[w] if c not in chosen]
            mem[w] -= t.mem
            tasks.append(TaskRequest(t.name, t.cores, t.mem, f"w{w:05d}", tuple(chosen)))
        out.append(JobRequest(job.job_id, tasks, job.priority, job.submitted))
    return out


def spine_first_fit(jobs: list[JobRequest], nodes: list[Node], limit: int) -> tuple[int, float]:
    """The spine's pipeline before this engine: per task, every worker's feasibility and fit, then the
    first candidate. Returns (tasks placed, seconds) over the first ``limit`` tasks."""
    free = [list(n.free) for n in nodes]
    mem = [n.mem_free for n in nodes]
    placed = 0
    started = time.perf_counter()
    for job in jobs:
        for t in job.tasks:
            candidates = []
            for i in range(len(free)):
                if mem[i] >= t.mem and len(free[i]) >= t.cores:
                    chosen = pick_cores(free[i], t.cores)
                    if chosen is not None:
                        candidates.append((i, chosen))
            if candidates:
                i, chosen = candidates[0]
                free[i] = [c for c in free[i] if c not in set(chosen)]
                mem[i] -= t.mem
            placed += 1
            if placed >= limit:
                return placed, time.perf_counter() - started
    return placed, time.perf_counter() - started


def timed(jobs: list[JobRequest], nodes: list[Node], strategy: str) -> tuple[int, float]:
    started = time.perf_counter()
    plan = place(jobs, nodes, strategy, now=0.0)
    seconds = time.perf_counter() - started
    return sum(len(p) for p in plan.placed.values()), seconds


def throughput(sizes: list[int], strategies: list[str], seed: int, quick: bool) -> None:
    print("## Decision throughput (tasks placed per second, one place() call per repeat)\n")
    print(f"{'workers':>8} {'strategy':<22}{'tasks':>7}{'placed':>8}{'median s':>10}{'min s':>8}{'max s':>8}"
          f"{'tasks/s':>10}{'x baseline':>11}")
    for n in sizes:
        rng = random.Random(seed + n)
        nodes = busy_cluster(n, rng)
        jobs = queue(sum(len(x.free) for x in nodes), rng)
        ntasks = sum(len(j.tasks) for j in jobs)
        base_placed, base_s = spine_first_fit(jobs, nodes, 2000 if n <= 1000 else 200)
        base_rate = base_placed / base_s
        print(f"{n:>8} {'baseline (spine)':<22}{ntasks:>7}{base_placed:>8}{base_s:>10.3f}{'':>8}{'':>8}"
              f"{base_rate:>10,.0f}{1.0:>11.1f}")
        repeats = 1 if quick else 3 if n >= 1000 else 5
        for s in strategies:
            q = pinned(jobs, nodes) if s == "manual" else jobs
            runs = [timed(q, nodes, s) for _ in range(repeats)]
            secs = [r[1] for r in runs]
            med = statistics.median(secs)
            rate = runs[0][0] / med
            print(f"{n:>8} {s:<22}{ntasks:>7}{runs[0][0]:>8}{med:>10.3f}{min(secs):>8.3f}{max(secs):>8.3f}"
                  f"{rate:>10,.0f}{rate / base_rate:>11.1f}", flush=True)


def _timing(real: Callable[..., Any], samples: list[float]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = real(*args, **kwargs)
        samples.append((time.perf_counter() - started) * 1e6)
        return out

    return timed


def latency(strategies: list[str], seed: int, n: int = 1000) -> None:
    """Per-task decision time (index query, core choice, take) inside one place() call, in microseconds."""
    print(f"\n## Per-task decision latency at {n:,} workers (microseconds)\n")
    print(f"{'strategy':<22}{'tasks':>7}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>9}")
    rng = random.Random(seed + n)
    nodes = busy_cluster(n, rng)
    jobs = queue(sum(len(x.free) for x in nodes), rng)
    real = pipeline.place_task
    for s in strategies:
        if s == "min-slack":
            continue  # it decides per batch, not per task
        samples: list[float] = []
        timed_task = _timing(real, samples)
        pipeline.place_task = timed_task  # type: ignore[assignment]
        try:
            place(pinned(jobs, nodes) if s == "manual" else jobs, nodes, s, now=0.0)
        finally:
            pipeline.place_task = real
        q = statistics.quantiles(samples, n=100)
        print(f"{s:<22}{len(samples):>7}{q[49]:>8.1f}{q[89]:>8.1f}{q[98]:>8.1f}{max(samples):>9.1f}", flush=True)


def drain(strategies: list[str], seed: int, tasks: int = 10_000, workers: int = 1000, cores: int = 16) -> None:
    print(f"\n## Drain: a {tasks:,}-task queue onto {workers:,} workers of {cores} cores, pass after pass\n")
    print(f"{'strategy':<22}{'passes':>7}{'seconds':>9}{'tasks/s':>10}{'slowest pass s':>16}")
    rng = random.Random(seed)
    jobs = queue(workers * cores * 100, rng, cap=tasks)
    jobs = [JobRequest(j.job_id, [TaskRequest(t.name, t.cores, t.mem // 4) for t in j.tasks], j.priority, j.submitted)
            for j in jobs]
    for s in strategies:
        if s == "manual":
            continue
        pending = list(jobs)
        passes, total, slowest, placed = 0, 0.0, 0.0, 0
        while pending and passes < 100:
            started = time.perf_counter()
            plan = place(pending, cluster(workers, cores, 32 * GIB), s, now=0.0)
            took = time.perf_counter() - started
            passes += 1
            total += took
            slowest = max(slowest, took)
            placed += sum(len(p) for p in plan.placed.values())
            pending = [j for j in pending if j.job_id not in plan.placed]
        print(f"{s:<22}{passes:>7}{total:>9.2f}{placed / total:>10,.0f}{slowest:>16.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    ap.add_argument("--strategy", action="append", choices=sorted(STRATEGIES), help="repeatable; default: all")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="one repeat per size")
    args = ap.parse_args(argv)
    strategies = args.strategy or ALL
    throughput(args.sizes, strategies, args.seed, args.quick)
    latency(strategies, args.seed)
    drain(strategies, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
