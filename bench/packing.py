"""Packing quality of the placement strategies on bin-packing instances.

    python -m bench.packing FILE... [--strategy NAME ...] [--two-d N] [--seed S]

FILE is in OR-Library's bin-packing format (line 1: the number of instances; then per instance a name
line, a line "capacity n best" and n item sizes). Each item becomes a one-task job asking for that many
cores (sizes with decimals are scaled to integers, the capacity with them) and no memory; the cluster is
identical idle workers of ``capacity`` cores, 2 * ceil(sum / capacity) + 1 of them (more than any
strategy can need). ``bins`` is the number of workers a strategy uses.

``swarm-spread`` is the baseline: Docker Swarm's own scheduler, which spreads tasks over the nodes
(fewest tasks first) and does no bin packing.

``--two-d N`` adds N generated two-dimensional instances (cores and memory, seeded) whose ``best`` is
the lower bound max over dimensions of ceil(sum of demand / capacity).

Prints one JSON object per line per (instance, strategy), then a summary table per strategy.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from math import ceil
from pathlib import Path

from Common.placement import STRATEGIES, JobRequest, Node, TaskRequest, place

DEFAULT_STRATEGIES = ["swarm-spread", "first-fit", "best-fit", "first-fit-decreasing", "best-fit-decreasing",
                      "min-slack"]
SPREAD = "swarm-spread"  # the baseline, not an engine strategy: Docker Swarm's spread, no bin packing
GIB = 1024**3


@dataclass
class Instance:
    name: str
    capacity: int  # cores per worker
    best: int
    cores: list[int]
    mem: list[int]
    mem_capacity: int = 0  # 0: memory is not a dimension

    @property
    def lower_bound(self) -> int:
        lb = ceil(sum(self.cores) / self.capacity)
        if self.mem_capacity:
            lb = max(lb, ceil(sum(self.mem) / self.mem_capacity))
        return lb


def parse(path: Path) -> list[Instance]:
    """Instances of an OR-Library bin-packing file; ValueError naming the line on a malformed one."""
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    pos = 0

    def take() -> tuple[int, str]:
        nonlocal pos
        if pos >= len(lines):
            raise ValueError(f"{path}: ends early")
        pos += 1
        return lines[pos - 1]

    count = int(take()[1])
    out = []
    for _ in range(count):
        _, name = take()
        lineno, head = take()
        parts = head.split()
        if len(parts) < 3:
            raise ValueError(f"{path}:{lineno}: expected 'capacity n best', got {head!r}")
        capacity, n, best = Decimal(parts[0]), int(parts[1]), int(parts[2])
        sizes = [Decimal(take()[1].split()[0]) for _ in range(n)]
        decimals = max([-(s.as_tuple().exponent) for s in [*sizes, capacity] if s.as_tuple().exponent < 0] or [0])
        scale = Decimal(10) ** int(decimals)
        out.append(Instance(name, int(capacity * scale), best, [int(s * scale) for s in sizes], [0] * n))
    return out


def two_d(count: int, seed: int) -> list[Instance]:
    """Workers of 32 cores and 128g; tasks of 1-16 cores and 1-64g, independent, correlated or opposed."""
    rng = random.Random(seed)
    out = []
    for k in range(count):
        kind = ("independent", "correlated", "opposed")[k % 3]
        cores, mem = [], []
        for _ in range(200):
            c = rng.randint(1, 16)
            if kind == "independent":
                m = rng.randint(1, 64)
            elif kind == "correlated":
                m = max(1, min(64, 4 * c + rng.randint(-4, 4)))
            else:
                m = max(1, min(64, 68 - 4 * c + rng.randint(-4, 4)))
            cores.append(c)
            mem.append(m * GIB)
        inst = Instance(f"2d_{kind}_{k:02d}", 32, 0, cores, mem, 128 * GIB)
        inst.best = inst.lower_bound
        out.append(inst)
    return out


def spread(inst: Instance, workers: int) -> int:
    """Docker Swarm's scheduler: each task on the node with the fewest tasks (ties: by name) that
    has room. Returns the number of workers used."""
    tasks = [0] * workers
    room_c = [inst.capacity] * workers
    room_m = [inst.mem_capacity or 1 << 50] * workers
    for c, m in zip(inst.cores, inst.mem, strict=True):
        fits = [w for w in range(workers) if room_c[w] >= c and room_m[w] >= m]
        w = min(fits, key=lambda w: (tasks[w], w))
        tasks[w] += 1
        room_c[w] -= c
        room_m[w] -= m
    return sum(1 for t in tasks if t)


def run(inst: Instance, strategy: str) -> dict[str, object]:
    workers = 2 * inst.lower_bound + 1
    if strategy == SPREAD:
        started = time.perf_counter()
        bins = spread(inst, workers)
        return {"instance": inst.name, "strategy": strategy, "bins": bins, "best": inst.best,
                "lower_bound": inst.lower_bound, "items": len(inst.cores), "capacity": inst.capacity,
                "seconds": round(time.perf_counter() - started, 4)}
    mem_total = inst.mem_capacity or 1 << 50
    nodes = [Node(f"w{k:05d}", list(range(inst.capacity)), mem_total) for k in range(workers)]
    jobs = [JobRequest(f"i{k:05d}", [TaskRequest("t", c, m)], submitted=float(k))
            for k, (c, m) in enumerate(zip(inst.cores, inst.mem, strict=True))]
    started = time.perf_counter()
    plan = place(jobs, nodes, strategy, now=0.0)
    seconds = time.perf_counter() - started
    used: dict[str, list[int]] = {}
    mem_used: dict[str, int] = {}
    for job in jobs:
        node, cores = plan.placed[job.job_id]["t"]
        used.setdefault(node, []).extend(cores)
        mem_used[node] = mem_used.get(node, 0) + job.tasks[0].mem
    for node, cores in used.items():  # the plan is checked, not trusted
        assert len(cores) == len(set(cores)) <= inst.capacity, f"{node} over-committed"
        assert mem_used[node] <= mem_total, f"{node} memory over-committed"
    return {"instance": inst.name, "strategy": strategy, "bins": len(used), "best": inst.best,
            "lower_bound": inst.lower_bound, "items": len(jobs), "capacity": inst.capacity,
            "seconds": round(seconds, 4)}


def summary(rows: list[dict[str, object]], strategies: list[str]) -> str:
    head = (f"{'strategy':<22}{'instances':>10}{'<= best':>9}{'<= best+1':>11}{'mean excess':>13}"
            f"{'max excess':>12}{'median s':>10}{'max s':>8}")
    out = [head, "-" * len(head)]
    for s in strategies:
        mine = [r for r in rows if r["strategy"] == s]
        if not mine:
            continue
        excess = [int(r["bins"]) - int(r["best"]) for r in mine]  # type: ignore[call-overload]
        secs = [float(r["seconds"]) for r in mine]  # type: ignore[arg-type]
        out.append(f"{s:<22}{len(mine):>10}{sum(e <= 0 for e in excess):>9}{sum(e <= 1 for e in excess):>11}"
                   f"{statistics.mean(excess):>13.2f}{max(excess):>12}{statistics.median(secs):>10.3f}"
                   f"{max(secs):>8.3f}")
    return "\n".join(out)


def by_class(rows: list[dict[str, object]], strategies: list[str]) -> str:
    """Per instance class (the name up to its last '_': u120, 2d_opposed, ...): instances at best / mean excess."""
    classes = sorted({str(r["instance"]).rsplit("_", 1)[0] for r in rows}, key=lambda c: (len(c), c))
    head = f"{'class':<16}" + "".join(f"{s:>24}" for s in strategies)
    out = [head, "-" * len(head)]
    for c in classes:
        cells = []
        for s in strategies:
            mine = [int(r["bins"]) - int(r["best"]) for r in rows  # type: ignore[call-overload]
                    if r["strategy"] == s and str(r["instance"]).rsplit("_", 1)[0] == c]
            cells.append(f"{sum(e <= 0 for e in mine)}/{len(mine)} at best, +{statistics.mean(mine):.2f}"
                         if mine else "-")
        out.append(f"{c:<16}" + "".join(f"{cell:>24}" for cell in cells))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.packing", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="OR-Library bin-packing files")
    ap.add_argument("--strategy", action="append", choices=[SPREAD, *sorted(STRATEGIES)],
                    help=f"repeatable; default: {', '.join(DEFAULT_STRATEGIES)}")
    ap.add_argument("--two-d", type=int, default=0, metavar="N", help="add N generated cores+memory instances")
    ap.add_argument("--seed", type=int, default=1, help="seed of the --two-d instances")
    args = ap.parse_args(argv)
    if not args.files and not args.two_d:
        ap.error("give FILE... and/or --two-d N")
    strategies = args.strategy or DEFAULT_STRATEGIES
    instances: list[Instance] = []
    for f in args.files:
        try:
            instances.extend(parse(f))
        except (OSError, ValueError) as exc:
            print(f"bench.packing: {exc}", file=sys.stderr)
            return 2
    instances.extend(two_d(args.two_d, args.seed))
    rows = []
    for inst in instances:
        for s in strategies:
            row = run(inst, s)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(summary(rows, strategies))
    print()
    print(by_class(rows, strategies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
