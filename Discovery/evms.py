"""Discovery's EVM side: apply agents' reports to the EVM records, forward-only, and close what ended.

  evm_status    a batch of EVM outcomes from one EPM attempt: one conditional update per EVM (only a
                later state, only for that EPM and attempt), sent to MongoDB as one bulk write
  epm_removed   an EPM container is gone: if its task is over for good (terminal, same attempt) or its
                job is, its remaining EVM records are DELETED; if the task went on to a new attempt,
                the records wait to be re-bound to it
  sweep         (at most every ``SWEEP_EVERY_SECONDS``) jobs that ended ``FINISH_GRACE_SECONDS`` ago
                with EVMs still recorded live (the Worker's report was lost) are closed; records of jobs
                that do not exist (a job insert that failed after its EVMs were written) are dropped
                after ``ORPHAN_SECONDS``
"""

from __future__ import annotations

import logging
import time
from typing import Any

from Common.states import JOB_TERMINAL, TASK_TERMINAL
from Common.store import Store

log = logging.getLogger(__name__)

FINISH_GRACE_SECONDS = 30.0
ORPHAN_SECONDS = 600.0
SWEEP_EVERY_SECONDS = 15.0  # a safety net: it reads every job with live EVMs, so not on every Discovery sweep


class EvmReports:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._next_sweep = 0.0

    def on_status(self, body: dict[str, Any]) -> int:
        moved = self.store.evms.apply_reports(body["job_id"], body["epm"], body["attempt"], body["node"],
                                              body["container"], body.get("host") or {}, body["items"])
        if moved < len(body["items"]):
            log.debug("%s/%s: %d of %d EVM reports changed nothing (late or repeated)", body["job_id"],
                      body["epm"], len(body["items"]) - moved, len(body["items"]))
        return moved

    def on_epm_removed(self, body: dict[str, Any]) -> int:
        job_id, epm, attempt = body["job_id"], body["epm"], body["attempt"]
        job = self.store.jobs.get(job_id)
        if job is None:
            return self.store.evms.finish(job_id, "its job no longer exists")
        t = job["tasks"].get(epm)
        over = job["state"] in {s.value for s in JOB_TERMINAL} or t is None or (
            t["attempt"] == attempt and t["state"] in {s.value for s in TASK_TERMINAL})
        if not over:
            return 0
        reason = body.get("reason") or "its EPM container was removed"
        return self.store.evms.finish(job_id, reason, epm=epm, attempt=attempt)

    def sweep(self) -> None:
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
        now = time.time()
        live = self.store.evms.live_jobs()
        jobs = self.store.jobs.many(live)  # one query, not one per job
        for job_id in live:
            job = jobs.get(job_id)
            if job is None:
                created = self.store.evms.first_created(job_id) or now
                if now - created > ORPHAN_SECONDS:
                    log.info("dropping the EVM records of %s, a job that does not exist", job_id)
                    self.store.evms.forget_job(job_id)
                continue
            if job["state"] in {s.value for s in JOB_TERMINAL}:
                ended = (job.get("state_times") or {}).get(job["state"], now)
                if now - ended > FINISH_GRACE_SECONDS:
                    self.store.evms.finish(job_id, f"its job is {job['state']}")
