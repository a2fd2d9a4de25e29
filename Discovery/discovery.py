"""Discovery applies Workers' reports to MongoDB: monotonic task transitions, exactly-once releases.

Reports may arrive late, twice or out of order; each is a conditional update that only moves a task
forward within its attempt, so replaying them is harmless. A terminal task's claim is released by a
token-guarded update (exactly once, whoever gets there first: Discovery or the JobManager's sweep).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from Common.messaging import Receiver, Sender
from Common.states import JOB_TERMINAL, TASK_TERMINAL, JobState, TaskState
from Common.store import Store
from Common.store.workers import alloc_key

log = logging.getLogger(__name__)


class Discovery:
    def __init__(self, store: Store, receiver: Receiver | None, hints: Sender | None, sweep_seconds: float) -> None:
        self.store = store
        self.receiver = receiver
        self.hints = hints
        self.sweep_seconds = sweep_seconds
        self.stopping = threading.Event()

    def run(self) -> None:
        next_sweep = time.monotonic() + self.sweep_seconds
        while not self.stopping.is_set():
            wait = max(0.0, next_sweep - time.monotonic())
            for kind, body, _sender in self.receiver.drain(min(wait, 1.0)) if self.receiver else []:
                try:
                    self.handle(kind, body)
                except Exception:
                    # MongoDB hiccup or a bug: the Worker re-reports from its own sweep, so log and go on.
                    log.exception("could not apply %s %s", kind, body)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.sweep_seconds

    def handle(self, kind: str, body: dict[str, Any]) -> None:
        if kind == "task_status":
            self.on_task_status(body)
        elif kind == "heartbeat":
            self.store.workers.heartbeat(body["node"], body["at"])

    def hint(self, reason: str, job_id: str | None = None) -> None:
        if self.hints is not None:
            self.hints.send("hint", {"reason": reason, **({"job_id": job_id} if job_id else {})})

    def on_task_status(self, body: dict[str, Any]) -> None:
        job_id, task, attempt = body["job_id"], body["task"], body["attempt"]
        state = TaskState(body["state"])
        fields = {k: body.get(k) for k in ("container_id", "exit_code", "reason", "log_tail")}
        if state not in TASK_TERMINAL:
            fields["exit_code"] = None
        moved = self.store.jobs.transition_task(job_id, task, attempt, state, at=body["at"], **fields)
        if moved:
            log.info("%s/%s#%d -> %s%s", job_id, task, attempt, state.value,
                     f" ({body['reason']})" if body.get("reason") else "")
        if state in TASK_TERMINAL:
            self.release(job_id, task, attempt)
            # A job runs whole: when one task fails, its siblings are stopped.
            if (moved and state in (TaskState.FAILED, TaskState.LOST)
                    and self.store.jobs.request_cancel(job_id, f"task {task} {state.value.lower()}") is not None):
                self.hint("job_cancelled", job_id)
        before, after = self.store.jobs.refresh_state(job_id)
        if before != after and after in {s.value for s in JOB_TERMINAL}:
            self.hint("job_finished", job_id)
        elif before != after and after == JobState.RUNNING.value:
            log.info("%s RUNNING", job_id)

    def release(self, job_id: str, task: str, attempt: int) -> None:
        job = self.store.jobs.get(job_id)
        if job is None or task not in job["tasks"]:
            return
        t = job["tasks"][task]
        if t["attempt"] != attempt or t["state"] not in TASK_TERMINAL or not t.get("node"):
            return
        if self.store.workers.release(t["node"], alloc_key(job_id, task), t.get("claim_token") or ""):
            self.hint("resources_released", job_id)

    def stop(self) -> None:
        self.stopping.set()
