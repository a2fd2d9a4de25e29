"""The placement engine's inputs and output: plain values, no MongoDB, no Docker."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Node:
    """One worker as placement sees it: its free core ids (sorted) and free memory."""

    name: str
    free: list[int]
    mem_free: int
    capacity_cores: int = 0
    mem_total: int = 0

    def copy(self) -> Node:
        return Node(self.name, list(self.free), self.mem_free, self.capacity_cores, self.mem_total)


@dataclass(frozen=True)
class TaskRequest:
    name: str
    cores: int
    mem: int
    node: str | None = None  # manual placement: this node ...
    cpuset: tuple[int, ...] | None = None  # ... and exactly these cores


@dataclass
class JobRequest:
    job_id: str
    tasks: list[TaskRequest]
    priority: int = 0

    @property
    def total_cores(self) -> int:
        return sum(t.cores for t in self.tasks)


@dataclass
class Plan:
    """Which jobs are placed (task -> node and cores) and, for the rest, why they wait."""

    placed: dict[str, dict[str, tuple[str, list[int]]]] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)
