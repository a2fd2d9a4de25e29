"""Placement strategies: each decides the order of jobs and tasks and how fitting nodes are ranked.

- ``first-fit``: jobs in queue order (priority, then arrival); each task on the first node, by name,
  that fits it.
"""

from __future__ import annotations

from JobManager.placement.model import JobRequest, Node, TaskRequest


class Strategy:
    name = "abstract"

    def order_jobs(self, jobs: list[JobRequest]) -> list[JobRequest]:
        return jobs

    def order_tasks(self, tasks: list[TaskRequest]) -> list[TaskRequest]:
        return tasks

    def candidates(self, nodes: list[Node], task: TaskRequest) -> list[Node]:
        return nodes

    def best(self, fits: list[tuple[Node, list[int]]], task: TaskRequest) -> tuple[Node, list[int]]:
        raise NotImplementedError


class FirstFit(Strategy):
    name = "first-fit"

    def best(self, fits: list[tuple[Node, list[int]]], task: TaskRequest) -> tuple[Node, list[int]]:
        return fits[0]


STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (FirstFit,)}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}") from None
