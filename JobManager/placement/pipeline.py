"""Placement as a pipeline: feasibility -> fit -> score -> plan.

    queue snapshot ──order──▶ for each job (gang: all tasks or none)
                                 for each task
                                   feasibility: which nodes could hold it (memory, core count, manual node)
                                   fit:         which concrete cores it would get there
                                   score:       the strategy ranks the fitting nodes
                                   tentatively take the best; if any task finds none, undo the job
    cluster snapshot ─────────▶ Plan(placed = {job: {task: (node, cores)}}, waiting = {job: reason})

Pure: the same snapshots give the same plan; nothing here reads MongoDB or talks to Docker.
"""

from __future__ import annotations

from JobManager.placement.cores import largest_block, pick_cores
from JobManager.placement.model import JobRequest, Node, Plan, TaskRequest
from JobManager.placement.strategies import Strategy, get_strategy


def feasible(node: Node, task: TaskRequest) -> bool:
    if task.node is not None and task.node != node.name:
        return False
    if node.mem_free < task.mem or len(node.free) < task.cores:
        return False
    return task.cpuset is None or set(task.cpuset) <= set(node.free)


def fit(node: Node, task: TaskRequest) -> list[int] | None:
    if task.cpuset is not None:
        return list(task.cpuset)
    return pick_cores(node.free, task.cores)


def _take(node: Node, cores: list[int], mem: int) -> None:
    taken = set(cores)
    node.free = [c for c in node.free if c not in taken]
    node.mem_free -= mem


def _give_back(node: Node, cores: list[int], mem: int) -> None:
    node.free = sorted(node.free + cores)
    node.mem_free += mem


def _fmt_mem(n: int) -> str:
    for unit, size in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n >= size:
            return f"{n / size:.4g}{unit}"
    return f"{n}b"


def why_not(task: TaskRequest, nodes: list[Node]) -> str:
    """A sentence a person understands about why ``task`` fits no node right now."""
    need = f"task {task.name} needs {task.cores} core{'s' if task.cores != 1 else ''} and {_fmt_mem(task.mem)}"
    if task.node is not None:
        target = next((n for n in nodes if n.name == task.node), None)
        if target is None:
            return f"{need} on node {task.node}, which is not ready"
        if task.cpuset is not None:
            busy = sorted(set(task.cpuset) - set(target.free))
            if busy:
                return f"{need} on {task.node}; cores {busy} there are taken"
        return f"{need} on {task.node}, which has {len(target.free)} free cores and {_fmt_mem(target.mem_free)}"
    if not nodes:
        return f"{need}; no worker is ready"
    by_cores = max(nodes, key=lambda n: (len(n.free), n.mem_free))
    by_mem = max(nodes, key=lambda n: n.mem_free)
    return (
        f"{need} on one node; the most free cores is {len(by_cores.free)} on {by_cores.name} "
        f"(largest contiguous block {largest_block(by_cores.free)}), the most free memory is "
        f"{_fmt_mem(by_mem.mem_free)} on {by_mem.name}"
    )


def place_job(job: JobRequest, nodes: list[Node], strategy: Strategy) -> dict[str, tuple[str, list[int]]] | str:
    """Place every task of ``job`` onto ``nodes`` (mutating them) or none of them; else the reason."""
    taken: list[tuple[Node, list[int], int]] = []
    result: dict[str, tuple[str, list[int]]] = {}
    for task in strategy.order_tasks(job.tasks):
        candidates = []
        for node in strategy.candidates(nodes, task):
            if feasible(node, task):
                cores = fit(node, task)
                if cores is not None:
                    candidates.append((node, cores))
        if not candidates:
            for node, cores, mem in reversed(taken):
                _give_back(node, cores, mem)
            return why_not(task, nodes)
        node, cores = strategy.best(candidates, task)
        _take(node, cores, task.mem)
        taken.append((node, cores, task.mem))
        result[task.name] = (node.name, cores)
    return result


def place(jobs: list[JobRequest], cluster: list[Node], strategy_name: str) -> Plan:
    """Plan the queue onto the cluster. ``cluster`` is not modified."""
    strategy = get_strategy(strategy_name)
    nodes = [n.copy() for n in sorted(cluster, key=lambda n: n.name)]
    plan = Plan()
    for job in strategy.order_jobs(jobs):
        outcome = place_job(job, nodes, strategy)
        if isinstance(outcome, str):
            plan.waiting[job.job_id] = outcome
        else:
            plan.placed[job.job_id] = outcome
    return plan


def never_fits(job: JobRequest, capacity: list[Node], strategy_name: str) -> str | None:
    """The reason ``job`` could not be placed even on the whole, empty cluster; None if it could."""
    return place([job], capacity, strategy_name).waiting.get(job.job_id)
