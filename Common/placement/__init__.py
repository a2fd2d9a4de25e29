"""The placement engine: a pure function from a queue snapshot and a cluster snapshot to a plan.

Read docs/placement.md first. Entry points: ``place(jobs, cluster, strategy_name, options, now, running)``
and ``never_fits(job, capacity, strategy_name)``; ``STRATEGIES`` names every strategy.
"""

from Common.placement.engine import never_fits, place
from Common.placement.model import JobRequest, Node, Plan, Preemption, RunningJob, RunningTask, TaskRequest
from Common.placement.options import OptionError, SchedulerOptions, parse_options, stored_options
from Common.placement.registry import STRATEGIES, get_strategy

__all__ = [
    "STRATEGIES",
    "JobRequest",
    "Node",
    "OptionError",
    "Plan",
    "Preemption",
    "RunningJob",
    "RunningTask",
    "SchedulerOptions",
    "TaskRequest",
    "get_strategy",
    "never_fits",
    "parse_options",
    "place",
    "stored_options",
]
