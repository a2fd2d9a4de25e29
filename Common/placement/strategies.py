"""The placement strategies, each small and named (docs/placement.md defines them with examples).

Every strategy honours pinned tasks (``node``, optionally ``cpuset_cpus``) exactly and places a job
whole or not at all (gang). They differ in the order they consider work and in how they choose a node:

- ``first-fit``: jobs first come first served (jobs with pinned tasks first); each task, in the job's
  order, on the first node by name that has room.
- ``best-fit``: the same order; each task on the node it leaves with the fewest free cores (then the
  least free memory, then by name).
- ``first-fit-decreasing``: all the queued tasks as one batch, largest first (cores, then memory),
  each on the first node by name that has room; a job any of whose tasks fits nowhere is undone whole.
- ``best-fit-decreasing``: the same batch order, each task on its best-fit node.
- ``manual``: only pinned tasks, exactly where they ask; a job with an unpinned task is refused (422).
- ``priority``: higher priority first, first come first served within a priority; the priority ages
  and the first job in line that does not fit reserves its nodes (priority.py).
- ``min-slack``: ours - best-fit-decreasing decides which jobs run this pass, then a minimum-bin-slack
  construction and an exchange search use as few idle nodes as possible for them (pack.py).
"""

from __future__ import annotations

from Common.placement import reasons
from Common.placement.model import JobRequest, Plan
from Common.placement.pipeline import Pass, Score, decreasing, place_batch_decreasing, place_job, record
from Common.placement.state import ClusterState


def fifo(jobs: list[JobRequest]) -> list[JobRequest]:
    """Queue order: first come first served (job ids are time-ordered and break ties)."""
    return sorted(jobs, key=lambda j: (j.submitted, j.job_id))


def pinned_jobs_first(jobs: list[JobRequest]) -> list[JobRequest]:
    """Jobs that name their nodes have no other choice, so they go before jobs that can go anywhere."""
    return sorted(jobs, key=lambda j: not j.pinned)


class Strategy:
    name = "abstract"
    summary = ""

    def plan(self, jobs: list[JobRequest], p: Pass) -> Plan:
        raise NotImplementedError

    def refuses(self, job: JobRequest) -> str | None:
        """Why this strategy can never place ``job`` whatever the cluster (422 at submission); else None."""
        return None


class _OneJobAtATime(Strategy):
    def score(self, state: ClusterState) -> Score:
        raise NotImplementedError

    def plan(self, jobs: list[JobRequest], p: Pass) -> Plan:
        plan = Plan()
        score = self.score(p.state)
        for job in pinned_jobs_first(fifo(jobs)):
            plan.order.append(job.job_id)
            record(plan, job.job_id, place_job(job, p.state, score))
        return plan


class FirstFit(_OneJobAtATime):
    name = "first-fit"
    summary = "jobs first come first served; each task on the first node by name with room"

    def score(self, state: ClusterState) -> Score:
        return state.first_fit


class BestFit(_OneJobAtATime):
    name = "best-fit"
    summary = "jobs first come first served; each task on the node it leaves with the fewest free cores"

    def score(self, state: ClusterState) -> Score:
        return state.best_fit


class _Decreasing(Strategy):
    def score(self, state: ClusterState) -> Score:
        raise NotImplementedError

    def plan(self, jobs: list[JobRequest], p: Pass) -> Plan:
        plan = Plan()
        score = self.score(p.state)
        ordered = fifo(jobs)
        pinned = [j for j in ordered if j.pinned]
        for job in pinned:
            plan.order.append(job.job_id)
            record(plan, job.job_id, place_job(job, p.state, score, decreasing(job.tasks)))
        outcomes, order = place_batch_decreasing([j for j in ordered if not j.pinned], p.state, score)
        for job_id in order:
            plan.order.append(job_id)
            record(plan, job_id, outcomes[job_id])
        return plan


class FirstFitDecreasing(_Decreasing):
    name = "first-fit-decreasing"
    summary = "the queued tasks as one batch, largest first, each on the first node by name with room"

    def score(self, state: ClusterState) -> Score:
        return state.first_fit


class BestFitDecreasing(_Decreasing):
    name = "best-fit-decreasing"
    summary = "the queued tasks as one batch, largest first, each on the node it leaves with the fewest free cores"

    def score(self, state: ClusterState) -> Score:
        return state.best_fit


class Manual(Strategy):
    name = "manual"
    summary = "only tasks that name their node (and optionally cpuset_cpus), exactly there; first come first served"

    def refuses(self, job: JobRequest) -> str | None:
        return None if all(t.pinned for t in job.tasks) else reasons.manual_only(job)

    def plan(self, jobs: list[JobRequest], p: Pass) -> Plan:
        plan = Plan()
        for job in fifo(jobs):
            plan.order.append(job.job_id)
            refusal = self.refuses(job)
            if refusal is not None:
                plan.waiting[job.job_id] = refusal
                plan.never.add(job.job_id)
                continue
            record(plan, job.job_id, place_job(job, p.state, p.state.first_fit))
        return plan
