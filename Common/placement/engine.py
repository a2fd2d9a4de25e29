"""The placement engine's entry points, on top of every other layer: ``place`` runs a strategy's pass
over the queue (then preemption, when on) and ``never_fits`` tells a job that no idle cluster could hold.
"""

from __future__ import annotations

import time

from Common.placement.model import JobRequest, Node, Plan, RunningJob
from Common.placement.options import SchedulerOptions
from Common.placement.pipeline import Pass, capacity_reason, mark_never
from Common.placement.preempt import preempt
from Common.placement.registry import get_strategy
from Common.placement.state import ClusterState


def place(jobs: list[JobRequest], cluster: list[Node], strategy_name: str, options: SchedulerOptions | None = None,
          now: float | None = None, running: list[RunningJob] | None = None) -> Plan:
    """Plan the queue onto the cluster with the named strategy. ``cluster`` is not modified.

    ``running`` (the placed jobs) is only needed when ``options.preemption`` is on.
    """
    strategy = get_strategy(strategy_name)
    p = Pass(ClusterState(cluster), cluster, options or SchedulerOptions(), time.time() if now is None else now)
    plan = strategy.plan(jobs, p)
    mark_never(plan, jobs, p)
    if p.options.preemption and running:
        preempt(plan, jobs, running, p)
    return plan


def never_fits(job: JobRequest, capacity: list[Node], strategy_name: str) -> str | None:
    """The reason ``job`` could not be placed even on the whole, idle cluster; None if it could."""
    strategy = get_strategy(strategy_name)
    refusal = strategy.refuses(job)
    if refusal is not None:
        return refusal
    return capacity_reason(job, ClusterState([n.empty() for n in capacity]))
