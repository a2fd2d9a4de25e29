"""Preemption (off by default; the ``preemption`` option): a waiting job may evict running jobs of
strictly lower priority, whole, when that lets it run.

Victims are tried cheapest first: lowest priority, then the most recently started (least work lost),
then by id; they are added one by one until the waiting job fits, then every victim that turns out not
to be needed is spared again. Base priorities are compared, never aged ones, so an evicted job can never
evict its evictor in return. At most one preemption per pass: the JobManager re-plans after each.
"""

from __future__ import annotations

from Common.placement.model import JobRequest, Plan, Preemption, RunningJob
from Common.placement.pipeline import Pass, decreasing, give_task, place_job
from Common.placement.state import ClusterState


def _holds(state: ClusterState, victim: RunningJob) -> bool:
    """The snapshot agrees that the victim holds its cores (else leave it alone)."""
    for t in victim.tasks:
        i = state.index.get(t.node)
        if i is None or set(t.cores) & set(state.free[i]) or not set(t.cores) <= set(state.nodes[i].cores):
            return False
    return True


def _free(state: ClusterState, victim: RunningJob) -> None:
    for t in victim.tasks:
        state.give(state.index[t.node], list(t.cores), t.mem)


def _hold(state: ClusterState, victim: RunningJob) -> None:
    for t in victim.tasks:
        state.take(state.index[t.node], list(t.cores), t.mem)


def _fits(job: JobRequest, state: ClusterState) -> dict[str, tuple[str, list[int]]] | None:
    outcome = place_job(job, state, state.best_fit, decreasing(job.tasks))
    if isinstance(outcome, str):
        return None
    for name, (node, chosen) in outcome.items():
        task = next(t for t in job.tasks if t.name == name)
        give_task(state, state.index[node], chosen, task)
    return outcome


def preempt(plan: Plan, jobs: list[JobRequest], running: list[RunningJob], p: Pass) -> None:
    state = p.state
    waiting = sorted((j for j in jobs if j.job_id in plan.waiting and j.job_id not in plan.never),
                     key=lambda j: (-j.priority, j.submitted, j.job_id))
    for job in waiting:
        candidates = sorted((r for r in running if r.priority < job.priority and _holds(state, r)),
                            key=lambda r: (r.priority, -r.started, r.job_id))
        victims: list[RunningJob] = []
        for victim in candidates:
            _free(state, victim)
            victims.append(victim)
            if _fits(job, state) is not None:
                break
        else:
            for victim in reversed(victims):
                _hold(state, victim)
            continue
        for victim in list(reversed(victims[:-1])):
            _hold(state, victim)
            if _fits(job, state) is None:
                _free(state, victim)
            else:
                victims.remove(victim)
        outcome = place_job(job, state, state.best_fit, decreasing(job.tasks))
        assert not isinstance(outcome, str)
        plan.preemptions.append(Preemption(job.job_id, [v.job_id for v in victims], outcome))
        del plan.waiting[job.job_id]
        return
