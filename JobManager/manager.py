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

from pymongo.errors import PyMongoError

from Common.config import Config
from Common.logs import Throttled
from Common.messaging import Receiver
from Common.metrics import JOB_WAIT_SECONDS, PLACEMENT_DECISIONS, PLACEMENT_SECONDS, SCHEDULE_SECONDS
from Common.placement import STRATEGIES, Preemption, SchedulerOptions, place, stored_options
from Common.placement.snapshot import host_ports, job_request_from_doc, node_from_worker, running_from_doc
from Common.placement.subnets import SubnetGate, held_subnets
from Common.states import TASK_TERMINAL, JobState, TaskState
from Common.store import Store
from Common.store.workers import Alloc, alloc_key
from JobManager.gm_client import GMClient
from JobManager.migrations import MigrationPlacer

log = logging.getLogger(__name__)

MAX_REPLANS = 5
LEASE_GRACE_SECONDS = 10.0
MIN_BACKOFF_SECONDS = 0.5
# A deploy the GM could not do for a transient reason is re-sent after 2, 4, 8 ... 60 s, at most this many
# times (about 5 minutes in all), then the job fails with the last error (docs/operations.md).
DEPLOY_MAX_ATTEMPTS = 8
SUBNET_RECHECK_SECONDS = 2.0  # while a job waits for a subnet, the queue is looked at again this often
DEPLOY_BACKOFF_SECONDS = (2.0, 60.0)
# An accepted deploy whose tasks are still SCHEDULED is re-sent by the sweep after redeploy_after_seconds,
# doubling with each accepted re-send at most this many times (see resend_due)
REDEPLOY_BACKOFF_DOUBLINGS = 3
MAX_BACKOFF_SECONDS = 10.0


def resend_due(job: dict[str, Any], now: float, after: float) -> bool:
    """Whether the sweep should re-send the deploy of a job whose tasks have been SCHEDULED longer than
    ``after`` (jobmanager.redeploy_after_seconds). Never accepted: yes. Accepted n times: its tasks are most
    likely queued behind a busy engine (at 1,000 EPMs they wait minutes) and re-sending every sweep only
    adds work there, so only once ``after`` * 2^(n-1) (at most * 8) has passed since the last acceptance:
    10, 20, 40, 80, 80 ... s by default."""
    if not job.get("dispatched_at"):
        return True
    n = max(1, int(job.get("dispatches") or 1))
    return now - job["dispatched_at"] > after * 2 ** min(n - 1, REDEPLOY_BACKOFF_DOUBLINGS)


class JobManager:
    def __init__(self, cfg: Config, store: Store, receiver: Receiver | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.receiver = receiver
        self.gm = GMClient(cfg.globalmanager_url, cfg.token())
        self.calls = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gm-call")
        self.stopping = threading.Event()
        self.migrations = MigrationPlacer(self.store, self.strategy, self.options,
                                          lambda job_id: self.calls.submit(self.gm.stop, job_id))
        # When a job is leased by a placer that may have died, look again as soon as the lease expires
        # instead of waiting for the slow sweep.
        self.retry_at = float("inf")
        self.backoff = MIN_BACKOFF_SECONDS
        # MongoDB away: one line per 30 s per loop, not a traceback per pass
        self.schedule_failures, self.sweep_failures = Throttled(log, level=logging.WARNING), Throttled(log)
        self.subnets = SubnetGate(cfg.globalmanager.network_pool, cfg.globalmanager.network_prefix)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        self.sweep()
        self.guarded_schedule()
        next_sweep = time.monotonic() + self.cfg.jobmanager.sweep_seconds
        while not self.stopping.is_set():
            wake_at = min(next_sweep, self._retry_monotonic())
            wait = max(0.0, wake_at - time.monotonic())
            try:
                msgs = self.receiver.drain(min(wait, 1.0)) if self.receiver else []
            except Exception:  # whatever a peer sent, the loop goes on (the sweep finds any lost work)
                log.exception("receiving hints failed; going on")
                msgs = []
            if self.stopping.is_set():
                break
            for _kind, body, _sender in msgs:
                try:
                    self.on_hint(body)
                except Exception:
                    log.exception("could not act on hint %s", body)
            now = time.monotonic()
            if now >= next_sweep or now >= self._retry_monotonic():
                self.retry_at = float("inf")
                self.sweep()
                next_sweep = time.monotonic() + self.cfg.jobmanager.sweep_seconds
                self.guarded_schedule()
            elif msgs:
                self.guarded_schedule()

    def guarded_schedule(self) -> None:
        """``schedule()``, surviving any failure: MongoDB away (stopped, frozen) or a bug. The pass is
        retried with exponential backoff (0.5 s doubling to 10 s) until it succeeds; placement is
        level-triggered, so a pass that failed half-way loses nothing (docs/operations.md)."""
        try:
            self.schedule()
        except Exception as exc:
            if isinstance(exc, PyMongoError):
                self.schedule_failures.failed(exc, "MongoDB unavailable during a placement pass; retrying with "
                                              "backoff (now %.1fs)", self.backoff)
            else:
                self.schedule_failures.failed(exc, "placement pass failed; retrying with backoff (now %.1fs)",
                                              self.backoff)
            self.retry_at = min(self.retry_at, time.time() + self.backoff)
            self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)
        else:
            self.backoff = MIN_BACKOFF_SECONDS
            self.schedule_failures.ok()

    def _retry_monotonic(self) -> float:
        return time.monotonic() + (self.retry_at - time.time()) if self.retry_at != float("inf") else float("inf")

    def on_hint(self, body: dict[str, Any]) -> None:
        reason, job_id = body["reason"], body.get("job_id")
        if job_id and reason in ("job_cancelled", "job_requeued", "job_changed", "migration"):
            self.calls.submit(self.gm.stop, job_id)  # hints every node that holds or held its tasks
        elif reason == "worker_remove" and body.get("node"):
            self.calls.submit(self.remove_node, body["node"])
        elif job_id and reason == "job_finished":
            self.calls.submit(self.gm.cleanup, job_id)

    def strategy(self) -> str:
        name = self.store.settings.get("strategy", self.cfg.jobmanager.strategy)
        if name in STRATEGIES:
            return name
        return self.cfg.jobmanager.strategy if self.cfg.jobmanager.strategy in STRATEGIES else "first-fit"

    def options(self) -> SchedulerOptions:
        return stored_options(self.store.settings.get("scheduler_options"))

    # ---- placing ------------------------------------------------------------------------------
    @SCHEDULE_SECONDS.time()
    def schedule(self) -> int:
        """Place as much of the queue as fits, and the targets of requested migrations. Returns the
        number of jobs placed. The pass's events (decisions, claims, transitions) are written together
        at its end, in one insert (BENCHMARKS.md, control plane)."""
        with self.store.events.batch():
            return self._schedule()

    def _schedule(self) -> int:
        try:
            self.migrations.place_requested()
        except Exception:
            log.exception("placing migration targets failed; will retry")
        placed_total = 0
        for _ in range(MAX_REPLANS):
            queue = self.store.jobs.queued()
            if not queue:
                return placed_total
            no_subnet = self.subnet_waits(queue)
            if no_subnet:
                # Nothing hints the JobManager when the GM removes a network: look again soon.
                self.retry_at = min(self.retry_at, time.time() + SUBNET_RECHECK_SECONDS)
            workers = {w["_id"]: w for w in self.store.workers.ready()}
            options = self.options()
            running = None
            if options.preemption:
                running = [running_from_doc(j) for j in self.store.jobs.in_states(
                    [JobState.SCHEDULED.value, JobState.RUNNING.value]) if not j.get("cancel_requested")]
            strategy = self.strategy()
            with PLACEMENT_SECONDS.labels(strategy).time():
                plan = place([job_request_from_doc(j) for j in queue if j["_id"] not in no_subnet],
                             [node_from_worker(w) for w in workers.values()], strategy, options,
                             time.time(), running)
            plan.waiting.update(no_subnet)
            jobs = {j["_id"]: j for j in queue}
            lost_race = False
            for job_id, placement in plan.placed.items():
                self.decided(jobs[job_id], strategy, "placed", nodes=sorted({n for n, _ in placement.values()}))
                if self.commit(jobs[job_id], placement, workers):
                    placed_total += 1
                    self.calls.submit(self.deploy, job_id)
                else:
                    lost_race = True
                    self.decided(jobs[job_id], strategy, "lost_race")
            for job_id, reason in plan.waiting.items():
                PLACEMENT_DECISIONS.labels(strategy, "waiting").inc()
                if last := jobs[job_id].get("last_preempted"):
                    reason = f"preempted by {last['by']}, waiting to run again: {reason}"
                if jobs[job_id].get("reason") != reason:
                    self.store.jobs.set_reason(job_id, reason)
                    # Only a changed reason is an event: the timeline says why, not how often we looked.
                    self.store.events.record("placement", job_id, decision="waiting", strategy=strategy,
                                             reason=reason)
            for preemption in plan.preemptions:
                self.decided(jobs[preemption.job_id], strategy, "preempting", victims=list(preemption.victims))
                if self.preempt(preemption, jobs, workers):
                    placed_total += 1
            if not lost_race and not plan.preemptions:
                break
        return placed_total

    def subnet_waits(self, queue: list[dict[str, Any]]) -> dict[str, str]:
        """Queued jobs whose overlay subnet cannot be had now (JobManager/subnets.py), with the reason."""
        held, pending_auto = held_subnets(self.store.networks.active(), self.store.jobs.placed_networks())
        return self.subnets.check(queue, held, pending_auto)

    def decided(self, job: dict[str, Any], strategy: str, decision: str, **data: Any) -> None:
        """Count a placement decision and put it on the job's timeline (before its claims)."""
        PLACEMENT_DECISIONS.labels(strategy, decision).inc()
        if decision in ("placed", "preempting"):
            queued_at = (job.get("state_times") or {}).get(JobState.QUEUED.value)
            if queued_at:
                JOB_WAIT_SECONDS.labels(strategy).observe(max(0.0, time.time() - queued_at))
        self.store.events.record("placement", job["_id"], decision=decision, strategy=strategy, **data)

    def preempt(self, p: Preemption, jobs: dict[str, dict[str, Any]], workers: dict[str, dict[str, Any]]) -> bool:
        """Send the victims back to the queue (new attempts; their claims released), then place the job."""
        job = jobs[p.job_id]
        for victim in p.victims:
            reason = f"preempted by {p.job_id} (priority {job.get('priority', 0)}); waiting to run again"
            before = self.store.jobs.requeue_preempted(victim, p.job_id, reason)
            if before is None:
                log.info("preemption of %s for %s: it changed meanwhile; re-planning", victim, p.job_id)
                return False
            for task, t in before["tasks"].items():
                if t.get("node") and t.get("claim_token"):
                    self.store.workers.release(t["node"], alloc_key(victim, task), t["claim_token"])
                    workers.pop(t["node"], None)
            self.calls.submit(self.gm.stop, victim)  # its old nodes' Workers remove the old attempt now
            log.info("preempted %s (priority %s) for %s", victim, before.get("priority", 0), p.job_id)
        if self.commit(job, p.placement, workers):
            self.calls.submit(self.deploy, p.job_id)
            return True
        return False

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
            ports = tuple(sorted(host_ports(job["tasks"][task])))
            by_node.setdefault(node, []).append(Alloc(job_id, task, tuple(cores), mem, token, ports))
        claimed: list[tuple[str, list[Alloc]]] = []
        ok = True
        if len(by_node) > 1 and all(n in workers for n in by_node):
            # Every node's claim in one round trip, each guarded by its snapshot's generation.
            new_docs = self.store.workers.claim_many({n: (a, workers[n]) for n, a in by_node.items()})
            if new_docs is not None and self.store.jobs.commit_placement(job_id, token, placement):
                workers.update(new_docs)
                log.info("placed %s: %s", job_id, {t: f"{n}/{c}" for t, (n, c) in placement.items()})
                return True
            if new_docs is not None:
                claimed = list(by_node.items())
            for node in by_node:
                workers.pop(node, None)
            by_node, ok = {}, False
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

    def remove_node(self, name: str) -> None:
        """Ask the GM to take a drained worker out of the Swarm; until its work is gone, look again soon."""
        if not self.gm.remove_node(name):
            self.retry_at = min(self.retry_at, time.time() + 2.0)

    def deploy(self, job_id: str) -> None:
        """Ask the GM to deploy. A refusal for good (409) has already failed the job's tasks; a transient
        failure (503: the engine did not answer; no answer at all) is retried with backoff, and after
        ``DEPLOY_MAX_ATTEMPTS`` the job ends FAILED with the last error and its claims are released."""
        status, message = self.gm.deploy(job_id)
        if status is not None and status < 300:
            self.store.jobs.mark_dispatched(job_id)
            return
        if status == 409:
            return
        failures = self.store.jobs.deploy_failed(job_id, message, DEPLOY_BACKOFF_SECONDS)
        if failures is None:
            return
        if failures >= DEPLOY_MAX_ATTEMPTS:
            self.fail_job(job_id, f"deploy failed {failures} times; last error: {message}")
            return
        # Wake the loop for the re-send (resend() waits for both the backoff and redeploy_after_seconds).
        delay = min(DEPLOY_BACKOFF_SECONDS[0] * 2 ** (failures - 1), DEPLOY_BACKOFF_SECONDS[1])
        self.retry_at = min(self.retry_at, time.time() + max(delay, self.cfg.jobmanager.redeploy_after_seconds) + 0.1)

    def fail_job(self, job_id: str, reason: str) -> None:
        """End a placed job FAILED here (its not-started tasks never will be reported by anyone), release
        their claims and stop whatever did start."""
        job = self.store.jobs.get(job_id)
        if job is None:
            return
        for task, t in job["tasks"].items():
            if t["state"] in (TaskState.SCHEDULED.value, TaskState.PENDING.value) and self.store.jobs.transition_task(
                    job_id, task, t["attempt"], TaskState.FAILED, reason=reason) and t.get("node"):
                self.store.workers.release(t["node"], alloc_key(job_id, task), t.get("claim_token") or "")
        self.store.jobs.request_cancel(job_id, reason)
        self.store.jobs.refresh_state(job_id)
        log.warning("%s FAILED: %s", job_id, reason)
        self.calls.submit(self.gm.stop, job_id)
        self.calls.submit(self.gm.cleanup, job_id)

    # ---- the sweep: level-triggered repair ----------------------------------------------------
    def sweep(self) -> None:
        try:
            self.release_leaks()
            self.resend()
        except Exception as exc:
            self.sweep_failures.failed(exc, "sweep failed; will retry at the next one")
        else:
            self.sweep_failures.ok()

    def release_leaks(self) -> int:
        """Release every allocation no live task or in-flight placement owns. Returns how many."""
        released = 0
        now = time.time()
        workers = self.store.workers.all()  # read workers before jobs: see docs/claims.md
        migrating = {(m["job_id"], m["task"], m.get("target"), m.get("token")) for m in self.store.migrations.active()}
        # Every job holding a claim, in one query (not one per job: a sweep runs every few seconds)
        jobs = self.store.jobs.many({key.partition(":")[0] for w in workers for key in w.get("allocations", {})})
        for w in workers:
            for key, alloc in w.get("allocations", {}).items():
                job_id, _, task = key.partition(":")
                if self._owned(jobs.get(job_id), task, alloc["token"], w["_id"], now):
                    lease = jobs[job_id].get("lease") or {}
                    if lease.get("token") == alloc["token"]:
                        # Owned by an in-flight placement only, whose placer may have died: look again
                        # when its lease runs out, not at the next sweep (jobmanager.sweep_seconds).
                        self.retry_at = min(self.retry_at, lease.get("until", now) + LEASE_GRACE_SECONDS + 0.1)
                    continue
                if (job_id, task, w["_id"], alloc["token"]) in migrating:
                    continue  # the target's claim of a migration in flight
                if self.store.workers.release(w["_id"], key, alloc["token"]):
                    released += 1
                    log.info("released leaked claim %s on %s", key, w["_id"])
        if released:
            self.guarded_schedule()
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
        """Re-send deploys that made no progress, stops that did not finish and node removals that did
        not complete (hints may be lost, and a removal waits for the node's work to move away)."""
        now = time.time()
        for w in self.store.workers.all():
            if w.get("remove_requested") and w.get("state") != "REMOVED":
                self.calls.submit(self.remove_node, w["_id"])
        for job in self.store.jobs.in_states([JobState.SCHEDULED.value, JobState.RUNNING.value,
                                              JobState.CANCELLING.value]):
            if job.get("cancel_requested"):
                self.calls.submit(self.gm.stop, job["_id"])
                continue
            after = self.cfg.jobmanager.redeploy_after_seconds
            scheduled_at = [t["state_times"].get(TaskState.SCHEDULED.value, now) for t in job["tasks"].values()
                            if t["state"] == TaskState.SCHEDULED.value]
            if any(now - at > after for at in scheduled_at):
                if (job.get("deploy_retry") or {}).get("at", 0) <= now and resend_due(job, now, after):
                    self.calls.submit(self.deploy, job["_id"])
            elif scheduled_at and not job.get("dispatched_at"):
                # Placed but not yet deployed: a deploy in flight, or one lost with a JobManager killed between
                # the placement and the GlobalManager's answer. Look again when it would count as stuck, so
                # the re-send does not wait for the next sweep (which may be long: jobmanager.sweep_seconds).
                self.retry_at = min(self.retry_at, min(scheduled_at) + after + 0.1)

    def stop(self) -> None:
        self.stopping.set()
        self.calls.shutdown(wait=False, cancel_futures=True)
