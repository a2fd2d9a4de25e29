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

from pymongo.errors import PyMongoError

from Common.messaging import Receiver, Sender
from Common.metrics import EVM_CREATE_SECONDS, NODE_DOWN, TASK_REPORTS
from Common.states import JOB_TERMINAL, TASK_TERMINAL, JobState, TaskState
from Common.store import Store
from Common.store.workers import DOWN, DRAINING, READY, REMOVED, alloc_key
from Discovery.evms import EvmReports
from Discovery.lifecycle import Lifecycle

log = logging.getLogger(__name__)


class Discovery:
    def __init__(self, store: Store, receiver: Receiver | None, hints: Sender | None, sweep_seconds: float,
                 heartbeat_timeout: float = 15.0, max_requeues: int = 3) -> None:
        self.store = store
        self.receiver = receiver
        self.hints = hints
        self.sweep_seconds = sweep_seconds
        self.heartbeat_timeout = heartbeat_timeout
        self.max_requeues = max_requeues
        self.max_batch = 500  # messages applied per pass of the loop (see _receive)
        self.lag = 0.0  # how far behind its queue Discovery is, seen on the last heartbeat (see sweep)
        self.stopping = threading.Event()
        self.lifecycle = Lifecycle(store, self.hint)
        self.evms = EvmReports(store)
        # A Discovery that was itself down saw no heartbeats: give every Worker one timeout to be heard
        # before declaring anything dead.
        self.trust_heartbeats_after = time.time() + heartbeat_timeout
        self.backoff = 0.5

    def run(self) -> None:
        next_sweep = time.monotonic() + self.sweep_seconds
        while not self.stopping.is_set():
            wait = max(0.0, next_sweep - time.monotonic())
            msgs = self._receive(min(wait, 1.0))
            # Heartbeats first: under a burst of reports they must not wait behind them. Task reports are
            # then applied together (one read and one write per job: on_task_statuses).
            msgs.sort(key=lambda m: m[0] not in ("heartbeat", "heartbeats"))
            reports: list[dict[str, Any]] = []
            for kind, body, _sender in msgs:
                if kind == "task_status":
                    reports.append(body)
                    continue
                try:
                    self.handle(kind, body)
                except PyMongoError as exc:
                    # MongoDB away: the Worker re-reports from its own sweep; heartbeats lost meanwhile
                    # must not make anyone DOWN (see blind()).
                    self.blind(f"MongoDB unavailable: {exc}")
                except Exception:
                    log.exception("could not apply %s %s", kind, body)
            if reports:
                try:
                    self.on_task_statuses(reports)
                except PyMongoError as exc:
                    self.blind(f"MongoDB unavailable: {exc}")  # the Workers re-report from their sweeps
                except Exception:
                    log.exception("could not apply %d task reports", len(reports))
            now = time.monotonic()
            if now >= next_sweep:
                if now - next_sweep > self.heartbeat_timeout / 2:
                    # This process itself was not running (frozen, starved of CPU, blocked on MongoDB):
                    # it has not been listening, so silence proves nothing yet.
                    self.blind(f"Discovery's own loop stalled for {now - next_sweep:.0f}s")
                try:
                    self.sweep()
                except PyMongoError as exc:
                    self.blind(f"MongoDB unavailable: {exc}")
                    self.stopping.wait(min(self.backoff, 5.0))
                    self.backoff = min(self.backoff * 2, 5.0)
                except Exception:
                    log.exception("sweep failed; will retry at the next one")
                else:
                    self.backoff = 0.5
                next_sweep = time.monotonic() + self.sweep_seconds

    def _receive(self, timeout: float) -> list[tuple[str, dict[str, Any], str]]:
        """The next batch of messages; a receive error (whatever a peer sent) never ends the loop."""
        if self.receiver is None:
            self.stopping.wait(timeout)
            return []
        try:
            return self.receiver.drain(timeout, self.max_batch)
        except Exception:
            log.exception("receiving failed; going on")
            self.stopping.wait(min(timeout, 0.5))
            return []

    def blind(self, why: str) -> None:
        """Discovery could not observe heartbeats for a while: give every Worker one full timeout, from
        now, to be heard again before declaring anything dead (a database outage or a frozen Discovery
        is not a dead node)."""
        until = time.time() + self.heartbeat_timeout
        if until > self.trust_heartbeats_after + 1.0:
            log.warning("%s; no worker is declared DOWN for the next %.0fs", why, self.heartbeat_timeout)
        self.trust_heartbeats_after = max(self.trust_heartbeats_after, until)

    def handle(self, kind: str, body: dict[str, Any]) -> None:
        if kind == "task_status":
            self.on_task_status(body)
        elif kind == "hint" and body.get("node") and body["reason"] == "worker_drained":
            self.evacuate(body["node"], "node drained")
        elif kind == "worker_up":
            # A Worker (re)registered, with its cores free again: waiting jobs may fit now.
            self.hint("worker_up")
        elif kind == "evm_status":
            moved = self.evms.on_status(body)
            if moved and moved == len(body["items"]):  # all new: replayed reports would count twice
                for _seq, state, _times, ms, _error in body["items"]:
                    if state in ("READY", "ERROR") and ms is not None:
                        EVM_CREATE_SECONDS.labels(state.lower()).observe(ms / 1000.0)
        elif kind == "task_applied":
            self.lifecycle.on_applied(body)
        elif kind == "migration_status":
            self.lifecycle.on_migration(body)
        elif kind == "epm_removed":
            self.evms.on_epm_removed(body)
        elif kind == "heartbeat":
            # Our clock, not the Worker's: liveness must not depend on clock skew between hosts.
            self.store.workers.heartbeat(body["node"])
            self._note_lag(body["at"])
        elif kind == "heartbeats":  # a hollow host, for all its nodes (Worker/hollow.py)
            self.store.workers.heartbeat_host(body["host"])
            self._note_lag(body["at"])

    def _note_lag(self, sent_at: float) -> None:
        """A heartbeat sent at ``sent_at`` and applied now says how far behind its queue Discovery is. Under
        a backlog of reports a heartbeat waits its turn; declaring a node dead for that would restart its
        work (and add to the backlog). Clamped to [0, 4 timeouts], so clock skew cannot hide a dead node
        for long."""
        self.lag = min(max(0.0, time.time() - sent_at), 4 * self.heartbeat_timeout)

    # ---- failure detection and evacuation ------------------------------------------------------
    def sweep(self) -> None:
        """Mark silent workers DOWN; move the work off DOWN and DRAINING workers (level-triggered). Silent
        means for longer than the timeout plus how far behind its own queue Discovery is (``_note_lag``)."""
        now = time.time()
        stale = now - self.heartbeat_timeout - self.lag
        for w in self.store.workers.all():
            state = w.get("state")
            if (state in (READY, DRAINING) and now >= self.trust_heartbeats_after
                    and w.get("heartbeat_at", 0) < stale
                    and self.store.workers.mark_down(w["_id"], stale)):
                log.warning("worker %s missed heartbeats for %.0fs: DOWN", w["_id"], self.heartbeat_timeout)
                NODE_DOWN.labels(w["_id"]).inc()
                state = DOWN
            if state in (DOWN, DRAINING, REMOVED):
                self.evacuate(w["_id"], "node drained" if state == DRAINING else f"node {state.lower()}",
                              dead=state != DRAINING)
        for name in self.store.workers.purge_forgotten():
            log.info("worker %s forgotten (its cluster was taken down)", name)
        self.evms.sweep()

    def evacuate(self, node: str, why: str, dead: bool = False) -> int:
        """Restart elsewhere every unfinished job that has a task on ``node``. Returns how many moved.

        On a ``dead`` node (DOWN, REMOVED) the tasks of a job being cancelled are recorded LOST at once:
        nobody will ever stop or report them, and a cancellation never waits for a dead node.
        """
        moved = 0
        for job in self.store.jobs.active_on(node):
            reason = f"{why}: {node}"
            if job.get("cancel_requested"):
                if dead:
                    self.lose_cancelled(job["_id"], node, reason)
                continue
            before = self.store.jobs.requeue_lost(job["_id"], node, reason, self.max_requeues)
            if before is None:
                continue
            after = self.store.jobs.get(job["_id"]) or {}
            if after.get("state") == JobState.QUEUED.value:
                for task, t in before["tasks"].items():
                    if t.get("node") and t.get("claim_token"):
                        self.store.workers.release(t["node"], alloc_key(job["_id"], task), t["claim_token"])
                log.info("%s: %s requeued (%s)", node, job["_id"], why)
                self.hint("job_requeued", job["_id"])
                moved += 1
            else:  # restarted too often: the lost tasks ended LOST, the job fails whole
                for task, t in before["tasks"].items():
                    if t.get("node") == node:
                        self.release(job["_id"], task, t["attempt"])
                if self.store.jobs.request_cancel(job["_id"], f"{reason}; too many restarts") is not None:
                    self.hint("job_cancelled", job["_id"])
                self.store.jobs.refresh_state(job["_id"])
        return moved

    def lose_cancelled(self, job_id: str, node: str, reason: str) -> None:
        """A job being stopped has tasks on a dead node: they are LOST, their claims released, and the job
        ends (CANCELLED if a user cancelled it) without waiting for the node."""
        lost = self.store.jobs.lose_tasks_on(job_id, node, f"{reason}; the job was being stopped")
        for task, attempt in lost:
            self.release(job_id, task, attempt)
        if lost:
            log.info("%s: tasks %s of %s (being stopped) recorded LOST", node, [t for t, _ in lost], job_id)
        before, after = self.store.jobs.refresh_state(job_id)
        if before != after and after in {s.value for s in JOB_TERMINAL}:
            self.hint("job_finished", job_id)

    def hint(self, reason: str, job_id: str | None = None) -> None:
        if self.hints is not None:
            self.hints.send("hint", {"reason": reason, **({"job_id": job_id} if job_id else {})})

    def on_task_status(self, body: dict[str, Any]) -> None:
        job_id, task, attempt = body["job_id"], body["task"], body["attempt"]
        state = TaskState(body["state"])
        fields = {k: body.get(k) for k in ("container_id", "exit_code", "reason", "log_tail", "addresses")}
        if state not in TASK_TERMINAL:
            fields["exit_code"] = None
        moved = self.store.jobs.transition_task(job_id, task, attempt, state, at=body["at"], node=body["node"],
                                                **fields)
        TASK_REPORTS.labels(state.value, "applied" if moved else "stale").inc()
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

    # ---- batched reports ---------------------------------------------------------------------------
    def on_task_statuses(self, reports: list[dict[str, Any]]) -> None:
        """Every task report received together: per job one read and one conditional write for all its
        tasks (and its own state), per node one release for all its finished tasks, the events in one
        insert. Whatever cannot be batched (the job changed meanwhile) goes through ``on_task_status``."""
        with self.store.events.batch():  # every event of the batch in one insert
            self._on_task_statuses(reports)

    def _on_task_statuses(self, reports: list[dict[str, Any]]) -> None:
        by_job: dict[str, list[dict[str, Any]]] = {}
        for body in reports:
            by_job.setdefault(body["job_id"], []).append(body)
        releases: dict[str, list[tuple[str, str]]] = {}
        released_jobs: set[str] = set()
        for job_id, bodies in by_job.items():
            try:
                if len(bodies) == 1 or not self._apply_job_reports(job_id, bodies, releases):
                    for body in bodies:
                        self.on_task_status(body)
            except Exception:
                log.exception("could not apply %d reports of %s", len(bodies), job_id)
        for node, items in releases.items():
            try:
                for key in self.store.workers.release_many(node, items):
                    released_jobs.add(key.partition(":")[0])
            except Exception:
                log.exception("could not release %d claims on %s (the JobManager's sweep will)", len(items), node)
        for job_id in sorted(released_jobs):
            self.hint("resources_released", job_id)

    def _apply_job_reports(self, job_id: str, bodies: list[dict[str, Any]],
                           releases: dict[str, list[tuple[str, str]]]) -> bool:
        reports = []
        for body in bodies:
            state = TaskState(body["state"])
            fields = {k: body.get(k) for k in ("container_id", "exit_code", "reason", "log_tail", "addresses")}
            if state not in TASK_TERMINAL:
                fields["exit_code"] = None
            reports.append({"task": body["task"], "attempt": body["attempt"], "state": body["state"],
                            "at": body["at"], "node": body["node"], "fields": fields})
        res = self.store.jobs.apply_reports(job_id, reports)
        if res is None:
            return False
        doc, moved = res["doc"], res["moved"]
        moved_keys = {(task, attempt, state) for task, attempt, state, _ in moved}
        for body in bodies:
            TASK_REPORTS.labels(body["state"], "applied" if (body["task"], body["attempt"], TaskState(body["state"]))
                                in moved_keys else "stale").inc()
        for task, attempt, state, fields in moved:
            log.info("%s/%s#%d -> %s%s", job_id, task, attempt, state.value,
                     f" ({fields['reason']})" if fields.get("reason") else "")
        # Finished tasks give their claim back (token-guarded: exactly once), replayed reports included.
        final: dict[str, int] = {}
        for body in bodies:
            if TaskState(body["state"]) in TASK_TERMINAL:
                final[body["task"]] = body["attempt"]
        for task, attempt in final.items():
            t = doc["tasks"].get(task)
            if t is None or t["attempt"] != attempt or not t.get("node") or not t.get("claim_token"):
                continue
            if task in {m[0] for m in moved} or t["state"] in {s.value for s in TASK_TERMINAL}:
                releases.setdefault(t["node"], []).append((alloc_key(job_id, task), t["claim_token"]))
        failed = [(task, state) for task, _a, state, _f in moved if state in (TaskState.FAILED, TaskState.LOST)]
        if failed and self.store.jobs.request_cancel(
                job_id, f"task {failed[0][0]} {failed[0][1].value.lower()}") is not None:
            self.hint("job_cancelled", job_id)
        before, after = res["job"]
        if before != after and after in {s.value for s in JOB_TERMINAL}:
            self.hint("job_finished", job_id)
        elif before != after and after == JobState.RUNNING.value:
            log.info("%s RUNNING", job_id)
        return True

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
