"""The priority strategy: higher priority first, first come first served within a priority.

Starvation-free by two rules together:

- **aging**: a job's effective priority is its priority plus one for every ``aging_seconds`` it has
  waited, so any waiting job eventually outranks every newer job and becomes first in line;
- **reservation for the head**: the first job in line that does not fit reserves the nodes it will run
  on (its pinned nodes, else the nodes that would hold it soonest: the most free first, its tasks
  first-fit on their whole capacity). No later job is placed on a reserved node, so those nodes only
  drain until the head fits; later jobs still use the other nodes (backfill).

Each job is placed whole, its tasks largest first, each on its best-fit node.
"""

from __future__ import annotations

from Common.placement.model import JobRequest, Plan
from Common.placement.pipeline import Pass, decreasing, place_job, record
from Common.placement.state import ClusterState
from Common.placement.strategies import Strategy


def effective_priority(job: JobRequest, now: float, aging_seconds: float) -> int:
    if aging_seconds <= 0:
        return job.priority
    return job.priority + max(0, int((now - job.submitted) // aging_seconds))


def reservation(job: JobRequest, state: ClusterState) -> list[int] | None:
    """The nodes ``job`` should wait for (indexes), or None if it would not fit even on drained nodes."""
    pinned = sorted({state.index[t.node] for t in job.tasks if t.node is not None and t.node in state.index})
    unpinned = [t for t in decreasing(job.tasks) if not t.pinned]
    if any(t.node is not None and t.node not in state.index for t in job.tasks):
        return None
    if not unpinned:
        return pinned
    candidates = sorted((i for i in range(len(state)) if not state.blocked[i] and i not in pinned),
                        key=lambda i: (-state.nfree[i], -state.mem[i], i))
    room = {i: [state.nodes[i].capacity_cores, state.nodes[i].mem_total] for i in candidates}
    used: set[int] = set()
    for task in unpinned:
        for i in candidates:
            if room[i][0] >= task.cores and room[i][1] >= task.mem:
                room[i][0] -= task.cores
                room[i][1] -= task.mem
                used.add(i)
                break
        else:
            return None
    return sorted(set(pinned) | used)


class Priority(Strategy):
    name = "priority"
    summary = ("higher priority first, first come first served within one; aging and a reservation for the first "
               "job in line keep big jobs from starving")

    def order(self, jobs: list[JobRequest], p: Pass) -> tuple[list[JobRequest], dict[str, int]]:
        eff = {j.job_id: effective_priority(j, p.now, p.options.aging_seconds) for j in jobs}
        return sorted(jobs, key=lambda j: (-eff[j.job_id], j.submitted, j.job_id)), eff

    def plan(self, jobs: list[JobRequest], p: Pass) -> Plan:
        plan = Plan()
        state = p.state
        ordered, plan.effective_priority = self.order(jobs, p)
        head: str | None = None
        held: list[int] = []
        for job in ordered:
            plan.order.append(job.job_id)
            outcome = place_job(job, state, state.best_fit, decreasing(job.tasks))
            if isinstance(outcome, str):
                if head is None and p.options.reservation:
                    nodes = reservation(job, state)
                    if nodes:
                        head, held = job.job_id, nodes
                        for i in nodes:
                            state.block(i)
                        plan.reserved[job.job_id] = [state.names[i] for i in nodes]
                        outcome += (f"; first in line, it reserves {', '.join(plan.reserved[job.job_id])} "
                                    "(no later job is placed there until it runs)")
                elif head is not None:
                    outcome += f"; {', '.join(plan.reserved[head])} reserved for {head}, first in line"
            record(plan, job.job_id, outcome)
        for i in held:
            state.unblock(i)
        return plan
