"""The placement engine's inputs and output: plain values, no MongoDB, no Docker."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Node:
    """One worker as placement sees it: its free core ids (sorted) and free memory.

    ``cores`` is every core id the worker has (empty: the free ones, i.e. an idle worker) and
    ``held`` says which task holds a busy core (``"job:task"``), for the reasons given to people.
    """

    name: str
    free: list[int]
    mem_free: int
    capacity_cores: int = 0
    mem_total: int = 0
    cores: list[int] = field(default_factory=list)
    held: dict[int, str] = field(default_factory=dict)
    ports: dict[str, str] = field(default_factory=dict)  # host port in use ("3000/tcp") -> "job:task"

    def __post_init__(self) -> None:
        if not self.cores:
            self.cores = sorted(self.free)
        if not self.capacity_cores:
            self.capacity_cores = len(self.cores)
        if not self.mem_total:
            self.mem_total = self.mem_free

    def copy(self) -> Node:
        return Node(self.name, list(self.free), self.mem_free, self.capacity_cores, self.mem_total,
                    list(self.cores), dict(self.held), dict(self.ports))

    def empty(self) -> Node:
        """The same worker with nothing running on it (for "could this job ever fit")."""
        return Node(self.name, list(self.cores), self.mem_total, self.capacity_cores, self.mem_total, list(self.cores))


@dataclass(frozen=True)
class TaskRequest:
    name: str
    cores: int
    mem: int
    node: str | None = None  # manual placement: this node ...
    cpuset: tuple[int, ...] | None = None  # ... and exactly these cores
    ports: frozenset[str] = frozenset()  # host ports it publishes ("3000/tcp"): a per-node resource

    @property
    def pinned(self) -> bool:
        return self.node is not None


@dataclass
class JobRequest:
    job_id: str
    tasks: list[TaskRequest]
    priority: int = 0
    submitted: float = 0.0  # seconds since the epoch; FIFO order and aging

    @property
    def total_cores(self) -> int:
        return sum(t.cores for t in self.tasks)

    @property
    def pinned(self) -> bool:
        return any(t.pinned for t in self.tasks)

    @property
    def publishes(self) -> bool:
        """Some task publishes host ports (placed whole by feasibility, never re-packed by count)."""
        return any(t.ports for t in self.tasks)


@dataclass(frozen=True)
class RunningTask:
    node: str
    cores: tuple[int, ...]
    mem: int


@dataclass
class RunningJob:
    """A placed job, as preemption sees it: what it holds and how much it matters."""

    job_id: str
    priority: int
    started: float
    tasks: list[RunningTask]


@dataclass
class Preemption:
    """Evict ``victims`` (whole jobs) so that ``job_id`` can be placed as ``placement``."""

    job_id: str
    victims: list[str]
    placement: dict[str, tuple[str, list[int]]]


@dataclass
class Plan:
    """Which jobs are placed (task -> node and cores) and, for the rest, why they wait.

    ``order`` is every job of the queue in the order the strategy considered them; ``never`` holds the
    waiting jobs that could not run even on the idle cluster; ``reserved`` maps a head job to the nodes
    held back for it; ``effective_priority`` is the priority strategy's aged priority.
    """

    placed: dict[str, dict[str, tuple[str, list[int]]]] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    never: set[str] = field(default_factory=set)
    reserved: dict[str, list[str]] = field(default_factory=dict)
    effective_priority: dict[str, int] = field(default_factory=dict)
    preemptions: list[Preemption] = field(default_factory=list)
