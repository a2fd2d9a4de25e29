"""The JobManager loop: woken by hints (FrontEnd, Discovery) and by a slow sweep, never by a busy poll.

Each pass: read the queue and the cluster from MongoDB -> plan (pure) -> commit each placed job
(lease the job, claim cores and memory on each worker by conditional update, mark its tasks
SCHEDULED) -> ask the GlobalManager to deploy. A lost race releases what was claimed and re-plans.
The sweep also repairs what a crash can leave behind: leaked claims, undeployed or uncancelled jobs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from Common.config import Config
from Common.messaging import Receiver
from Common.states import TASK_TERMINAL, JobState, TaskState
from Common.store import Store
from Common.store.workers import Alloc
from JobManager.gm_client import GMClient
from JobManager.placement import place
from JobManager.placement.snapshot import job_request_from_doc, node_from_worker

log = logging.getLogger(__name__)

MAX_REPLANS = 5
LEASE_GRACE_SECONDS = 10.0


class JobManager:
    def __init__(self, cfg: Config, store: Store, receiver: Receiver | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.receiver = receiver
        self.gm = GMClient(cfg.globalmanager_url, cfg.token())
        self.calls = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gm-call")
        self.stopping = threading.Event()
        # When a job is leased by a placer that may have died, look again as soon as the lease expires
        # instead of waiting for the slow sweep.
        self.retry_at = float("inf")

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        self.sweep()
        self.schedule()
        next_sweep = time.monotonic() + self.cfg.jobmanager.sweep_seconds
        while not self.stopping.is_set():
            wake_at = min(next_sweep, self._retry_monotonic())
            wait = max(0.0, wake_at - time.monotonic())
            msgs = self.receiver.drain(min(wait, 1.0)) if self.receiver else []
            if self.stopping.is_set():
                break
            for _kind, body, _sender in msgs:
                self.on_hint(body)
            now = time.monotonic()
            if now >= next_sweep or now >= self._retry_monotonic():
                self.retry_at = float("inf")
                self.sweep()
                next_sweep = time.monotonic() + self.cfg.jobmanager.sweep_seconds
                self.schedule()
            elif msgs:
                self.schedule()

    def _retry_monotonic(self) -> float:
        return time.monotonic() + (self.retry_at - time.time()) if self.retry_at != float("inf") else float("inf")

    def on_hint(self, body: dict[str, Any]) -> None:
        reason, job_id = body["reason"], body.get("job_id")
        if job_id and reason == "job_cancelled":
            self.calls.submit(self.gm.stop, job_id)
        elif job_id and reason == "job_finished":
            self.calls.submit(self.gm.cleanup, job_id)

    def strategy(self) -> str:
        return self.store.settings.get("strategy", self.cfg.jobmanager.strategy)

    # ---- placing ------------------------------------------------------------------------------
    def schedule(self) -> int:
        """Place as much of the queue as fits. Returns the number of jobs placed."""
        placed_total = 0
        for _ in range(MAX_REPLANS):
            queue = self.store.jobs.queued()
            if not queue:
                return placed_total
            workers = {w["_id"]: w for w in self.store.workers.ready()}
            plan = place([job_request_from_doc(j) for j in queue],
                         [node_from_worker(w) for w in workers.values()], self.strategy())
            jobs = {j["_id"]: j for j in queue}
            lost_race = False
            for job_id, placement in plan.placed.items():
                if self.commit(jobs[job_id], placement, workers):
                    placed_total += 1
                    self.calls.submit(self.deploy, job_id)
                else:
                    lost_race = True
            for job_id, reason in plan.waiting.items():
                if jobs[job_id].get("reason") != reason:
                    self.store.jobs.set_reason(job_id, reason)
            if not lost_race:
                break
        return placed_total

    def commit(self, job: dict[str, Any], placement: dict[str, tuple[str, list[int]]],
               workers: dict[str, dict[str, Any]]) -> bool:
        """Lease the job, claim its resources node by node, then mark it SCHEDULED; or undo all of it."""
        job_id = job["_id"]
        token = uuid.uuid4().hex
        if not self.store.jobs.acquire_lease(job_id, token, self.cfg.jobmanager.lease_seconds):
            current = self.store.jobs.get(job_id) or {}
            until = (current.get("lease") or {}).get("until")
            if current.get("state") == JobState.QUEUED.value and until:
                self.retry_at = min(self.retry_at, until + LEASE_GRACE_SECONDS + 0.1)
            return False
        by_node: dict[str, list[Alloc]] = {}
        for task, (node, cores) in placement.items():
            mem = job["tasks"][task]["mem_bytes"]
            by_node.setdefault(node, []).append(Alloc(job_id, task, tuple(cores), mem, token))
        claimed: list[tuple[str, list[Alloc]]] = []
        ok = True
        for node, allocs in by_node.items():
            new_doc = self.store.workers.claim(node, allocs, workers.get(node))
            if new_doc is None:
                ok = False
                break
            workers[node] = new_doc
            claimed.append((node, allocs))
        if ok and self.store.jobs.commit_placement(job_id, token, placement):
            log.info("placed %s: %s", job_id, {t: f"{n}/{c}" for t, (n, c) in placement.items()})
            return True
        for node, allocs in claimed:
            for a in allocs:
                self.store.workers.release(node, a.key, token)
            workers.pop(node, None)
        self.store.jobs.drop_lease(job_id, token)
        log.info("placement of %s lost a race; re-planning", job_id)
        return False

    def deploy(self, job_id: str) -> None:
        if self.gm.deploy(job_id):
            self.store.jobs.mark_dispatched(job_id)

    # ---- the sweep: level-triggered repair ----------------------------------------------------
    def sweep(self) -> None:
        try:
            self.release_leaks()
            self.resend()
        except Exception:
            log.exception("sweep failed; will retry at the next one")

    def release_leaks(self) -> int:
        """Release every allocation no live task or in-flight placement owns. Returns how many."""
        released = 0
        now = time.time()
        workers = self.store.workers.all()  # read workers before jobs: see docs/claims.md
        jobs: dict[str, dict[str, Any] | None] = {}
        for w in workers:
            for key, alloc in w.get("allocations", {}).items():
                job_id, _, task = key.partition(":")
                if job_id not in jobs:
                    jobs[job_id] = self.store.jobs.get(job_id)
                if self._owned(jobs[job_id], task, alloc["token"], w["_id"], now):
                    continue
                if self.store.workers.release(w["_id"], key, alloc["token"]):
                    released += 1
                    log.info("released leaked claim %s on %s", key, w["_id"])
        if released:
            self.schedule()
        return released

    @staticmethod
    def _owned(job: dict[str, Any] | None, task: str, token: str, node: str, now: float) -> bool:
        if job is None or task not in job["tasks"]:
            return False
        t = job["tasks"][task]
        if t.get("claim_token") == token and t.get("node") == node:
            return t["state"] not in TASK_TERMINAL
        lease = job.get("lease") or {}
        return (job["state"] == JobState.QUEUED.value and lease.get("token") == token
                and lease.get("until", 0) + LEASE_GRACE_SECONDS > now)

    def resend(self) -> None:
        """Re-send deploys that made no progress and stops that did not finish (hints may be lost)."""
        now = time.time()
        for job in self.store.jobs.in_states([JobState.SCHEDULED.value, JobState.RUNNING.value]):
            if job.get("cancel_requested"):
                self.calls.submit(self.gm.stop, job["_id"])
                continue
            stuck = [t for t in job["tasks"].values() if t["state"] == TaskState.SCHEDULED.value
                     and now - t["state_times"].get(TaskState.SCHEDULED.value, now)
                     > self.cfg.jobmanager.redeploy_after_seconds]
            if stuck:
                self.calls.submit(self.deploy, job["_id"])

    def stop(self) -> None:
        self.stopping.set()
        self.calls.shutdown(wait=False, cancel_futures=True)
