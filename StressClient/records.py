"""What is recorded per job and per utilisation sample, and how a job view fills a record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


@dataclass
class JobRecord:
    """One arrival of the schedule and what became of it.

    Client timestamps (``submit_at`` = the scheduled arrival, ``sent_at``, ``response_at``) are this
    machine's wall clock; the others are the system's own timestamps from the job document
    (``created_at`` and ``state_times``), so polling frequency never changes a measured latency.
    """

    seq: int
    offset: float  # scheduled arrival, seconds from the start of the run
    submit_at: float  # wall time of the scheduled arrival (open loop: latencies start here)
    template: str
    tasks: int = 0
    cores: int = 0
    sent_at: float | None = None
    response_at: float | None = None
    status: int | None = None
    error: str | None = None  # why it was not accepted: "HTTP 422 unschedulable", "timeout", "client backlog"
    message: str | None = None
    # Refused attempts before the answer above (RunOptions.retry_refused_seconds): no answer, or a 503 while
    # the FrontEnd or MongoDB was away. Never accepted, so never jobs; the last reason is kept.
    refusals: int = 0
    last_refusal: str | None = None
    job_id: str | None = None
    state: str | None = None
    accepted_at: float | None = None  # the FrontEnd stored it (job created_at)
    scheduled_at: float | None = None  # the JobManager committed its placement
    running_at: float | None = None  # the last of its tasks started (all EPMs running)
    finished_at: float | None = None  # terminal state reached
    reason: str | None = None
    nodes: list[str] = field(default_factory=list)
    task_running: list[float] = field(default_factory=list)  # every task's RUNNING time
    cancelled_by_client: bool = False
    # EVM jobs (a job with an evms section; docs/stressclient.md "EVM workloads"), from the system's records:
    evms_requested: int = 0
    evms_ready: int | None = None  # READY when its EVMs settled (every one READY or ERROR)
    evms_errors: int | None = None
    evms_ready_at: float | None = None  # the last EVM's times.READY (system clock): all ready
    evm_create_ms: list[float] = field(default_factory=list)  # each READY EVM's creation time (create_ms)
    evms_released: bool = False  # deleted by the client --evm-hold seconds after its EVMs settled

    @property
    def accepted(self) -> bool:
        return self.job_id is not None

    @property
    def final(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def apply_view(self, view: dict[str, Any]) -> None:
        """Copy the system's timestamps from a GET /api/v1/jobs/{id} view."""
        self.state = view.get("state", self.state)
        self.accepted_at = view.get("created_at", self.accepted_at)
        st = view.get("state_times") or {}
        self.scheduled_at = st.get("SCHEDULED", self.scheduled_at)
        tasks = list((view.get("tasks") or {}).values())
        running = [t.get("state_times", {}).get("RUNNING") for t in tasks]
        self.task_running = sorted(r for r in running if r is not None)
        if tasks and all(r is not None for r in running):
            self.running_at = max(running)  # type: ignore[type-var]
        self.nodes = sorted({t["node"] for t in tasks if t.get("node")})
        if self.state in TERMINAL:
            self.finished_at = st.get(self.state, self.finished_at)
            reasons = [t.get("reason") for t in tasks if t.get("state") in ("FAILED", "LOST") and t.get("reason")]
            self.reason = view.get("reason") or (reasons[0] if reasons else None)
            if self.state == "CANCELLED" and not self.reason:
                self.reason = next((t.get("reason") for t in tasks if t.get("reason")), None)


@dataclass
class Sample:
    """One worker's use at one instant (from GET /api/v1/workers)."""

    t: float
    worker: str
    state: str
    cores: int
    used: int
    mem_total: int
    mem_used: int
    tasks: int
    hollow: bool = False  # an emulated node (no containers): labelled in every report
    free_block: int = -1  # longest run of consecutive free core ids (-1: not recorded)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
