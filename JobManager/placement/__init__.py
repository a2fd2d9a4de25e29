"""The placement engine: a pure function from a queue snapshot and a cluster snapshot to a plan."""

from JobManager.placement.model import JobRequest, Node, Plan, TaskRequest
from JobManager.placement.pipeline import never_fits, place
from JobManager.placement.strategies import STRATEGIES

__all__ = ["STRATEGIES", "JobRequest", "Node", "Plan", "TaskRequest", "never_fits", "place"]
