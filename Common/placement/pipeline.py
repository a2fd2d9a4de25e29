"""Placement as a pipeline: feasibility -> fit -> score -> plan.

    queue snapshot ──order (the strategy)──▶ jobs, or the batch's tasks, one at a time
                                               │
    cluster snapshot ──▶ ClusterState          ▼
      (free core ids,     indexes   ┌── feasibility: nodes with enough free cores and memory
       free memory)  ─────────────▶ │   (a pinned task: its node, its exact cores)
                                    ├── score: the strategy's index picks one of them
                                    │   (first-fit: lowest name; best-fit: least left over)
                                    ├── fit: which concrete cores there (contiguous rule, cores.py)
                                    └── take them tentatively; a job is placed whole or all its
                                        takes are given back (gang) and it waits with a reason
                                               │
                                               ▼
      Plan(placed = {job: {task: (node, cores)}}, waiting = {job: reason}, order, reservations,
           preemptions)

Feasibility and score are one question to an index (state.py), so a task costs O(log n), not a scan
of every worker. Pure: the same snapshots (and ``now``) give the same plan; nothing here reads MongoDB
or talks to Docker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from Common.placement import reasons
from Common.placement.cores import pick_cores
from Common.placement.model import JobRequest, Node, Plan, TaskRequest
from Common.placement.options import SchedulerOptions
from Common.placement.state import ClusterState

Score = Callable[[int, int], "int | None"]  # (cores, memory) -> the chosen node's index, or None
Outcome = dict[str, tuple[str, list[int]]] | str  # a job's placement, or why it waits


@dataclass
class Pass:
    """One planning pass: the cluster as it fills up, the options, the clock, the idle cluster."""

    state: ClusterState
    cluster: list[Node]
    options: SchedulerOptions = field(default_factory=SchedulerOptions)
    now: float = 0.0
    _capacity: ClusterState | None = None

    @property
    def capacity(self) -> ClusterState:
        if self._capacity is None:
            self._capacity = ClusterState([n.empty() for n in self.cluster])
        return self._capacity


def decreasing(tasks: list[TaskRequest]) -> list[TaskRequest]:
    return sorted(tasks, key=lambda t: (-t.cores, -t.mem))


def pinned_first(tasks: list[TaskRequest]) -> list[TaskRequest]:
    return sorted(tasks, key=lambda t: not t.pinned)


def place_task(state: ClusterState, task: TaskRequest, score: Score, who: str) -> tuple[int, list[int]] | None:
    """Feasibility, score and fit for one task; takes its cores and memory. None if it fits nowhere."""
    if task.node is not None:
        i = state.index.get(task.node)
        if (i is None or state.blocked[i] or state.mem[i] < task.mem or state.nfree[i] < task.cores
                or not state.ports_free(i, task.ports)):
            return None
        if task.cpuset is not None:
            if not set(task.cpuset) <= set(state.free[i]):
                return None
            chosen = sorted(task.cpuset)
        else:
            chosen = pick_cores(state.free[i], task.cores)  # type: ignore[assignment]
    else:
        found = score_with_ports(state, task, score)
        if found is None:
            return None
        i = found
        chosen = pick_cores(state.free[i], task.cores)  # type: ignore[assignment]
    state.take(i, chosen, task.mem, who)
    state.take_ports(i, task.ports, who)
    return i, chosen


def score_with_ports(state: ClusterState, task: TaskRequest, score: Score) -> int | None:
    """Feasibility for host ports: the nodes where one of the task's ports is in use are kept out of the
    strategy's index for this one question (blocked, then unblocked), so its choice is unchanged among
    the rest. Costs nothing for the (usual) task that publishes no host port."""
    if not task.ports:
        return score(task.cores, task.mem)
    clash = [i for i in range(len(state)) if not state.blocked[i] and not state.ports_free(i, task.ports)]
    for i in clash:
        state.block(i)
    try:
        return score(task.cores, task.mem)
    finally:
        for i in clash:
            state.unblock(i)


def give_task(state: ClusterState, i: int, chosen: list[int], task: TaskRequest) -> None:
    """Undo ``place_task``: its cores, memory and host ports."""
    state.give(i, chosen, task.mem)
    state.give_ports(i, task.ports)


def place_job(job: JobRequest, state: ClusterState, score: Score, tasks: list[TaskRequest] | None = None) -> Outcome:
    """Place every task of ``job`` (pinned ones first, then in ``tasks`` order) or none of them."""
    taken: list[tuple[int, list[int], TaskRequest]] = []
    result: dict[str, tuple[str, list[int]]] = {}
    for task in pinned_first(tasks if tasks is not None else job.tasks):
        got = place_task(state, task, score, f"{job.job_id}:{task.name}")
        if got is None:
            reason = reasons.task_reason(job, task, state, len(taken))
            for i, chosen, t in reversed(taken):
                give_task(state, i, chosen, t)
            return reason
        taken.append((got[0], got[1], task))
        result[task.name] = (state.names[got[0]], got[1])
    return result


def place_batch_decreasing(jobs: list[JobRequest], state: ClusterState, score: Score) -> tuple[dict[str, Outcome],
                                                                                              list[str]]:
    """Every task of the batch in decreasing size (cores, then memory; ties in queue order), each on the
    node ``score`` picks; a job with a task that fits nowhere gives back what it took (gang) and gets one
    more try, whole, after the batch, if a give-back happened after it failed.

    Returns each job's outcome and the jobs in the order they were first considered.
    """
    entries = sorted((-t.cores, -t.mem, jp, tp) for jp, job in enumerate(jobs) for tp, t in enumerate(job.tasks))
    taken: list[list[tuple[int, list[int], TaskRequest]]] = [[] for _ in jobs]
    failed: dict[int, tuple[str, int]] = {}  # job position -> (reason, give-backs counted when it failed)
    order: list[int] = []
    seen = [False] * len(jobs)
    give_backs = 0
    for _, _, jp, tp in entries:
        if not seen[jp]:
            seen[jp] = True
            order.append(jp)
        if jp in failed:
            continue
        job = jobs[jp]
        task = job.tasks[tp]
        got = place_task(state, task, score, f"{job.job_id}:{task.name}")
        if got is None:
            reason = reasons.task_reason(job, task, state, len(taken[jp]))
            if taken[jp]:
                for i, chosen, t in reversed(taken[jp]):
                    give_task(state, i, chosen, t)
                taken[jp] = []
                give_backs += 1
            failed[jp] = (reason, give_backs)  # its own give-back cannot help it
            continue
        taken[jp].append((got[0], got[1], task))
    outcomes: dict[str, Outcome] = {}
    for jp in order:
        job = jobs[jp]
        if jp not in failed:
            outcomes[job.job_id] = {t.name: (state.names[i], chosen) for i, chosen, t in taken[jp]}
        elif failed[jp][1] < give_backs:
            outcomes[job.job_id] = place_job(job, state, score, decreasing(job.tasks))
        else:
            outcomes[job.job_id] = failed[jp][0]
    return outcomes, [jobs[jp].job_id for jp in order]


def record(plan: Plan, job_id: str, outcome: Outcome) -> None:
    if isinstance(outcome, str):
        plan.waiting[job_id] = outcome
    else:
        plan.placed[job_id] = outcome


def capacity_reason(job: JobRequest, capacity: ClusterState) -> str | None:
    """Why ``job`` could not run even on the idle cluster (first-fit and best-fit decreasing both
    tried), or None if it could. The idle state is left as it was."""
    reason: str | None = None
    for score in (capacity.first_fit, capacity.best_fit):
        outcome = place_job(job, capacity, score, decreasing(job.tasks))
        if not isinstance(outcome, str):
            for name, (node, chosen) in outcome.items():
                task = next(t for t in job.tasks if t.name == name)
                give_task(capacity, capacity.index[node], chosen, task)
            return None
        reason = outcome
    return reason


def mark_never(plan: Plan, jobs: list[JobRequest], p: Pass) -> None:
    """A waiting job that cannot fit the idle cluster says so: it waits for workers to join."""
    by_id = {j.job_id: j for j in jobs}
    for job_id in list(plan.waiting):
        if job_id in plan.never:
            continue
        why = capacity_reason(by_id[job_id], p.capacity)
        if why is not None:
            plan.waiting[job_id] = reasons.never(why)
            plan.never.add(job_id)
