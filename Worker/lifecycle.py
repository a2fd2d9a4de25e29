"""The Worker's side of the task lifecycle: resource updates, checkpoints, and both ends of a migration.

All of it is level-triggered, like the rest of the Worker: each pass reads what MongoDB asks of this
node (a task whose resources generation is ahead of what was applied, a checkpoint REQUESTED here, a
migration PLACED from here or CHECKPOINTED to here) and does it, reporting through Discovery.
Checkpoint files travel through MongoDB (GridFS, per-file size and SHA-256, strict names; see
Common/store/checkpoints.py): no archive is ever unpacked.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import docker

from Common.config import Config
from Common.messaging import Sender
from Common.resources import format_cpuset
from Common.states import TaskState
from Common.store import Store
from Common.store import checkpoints as ck
from Common.store import migrations as mg
from Common.store.checkpoints import CheckpointError
from Common.store.jobs import container_name
from Worker.engine import Engine, Observed, StartFailed
from Worker.evms import EvmSync
from Worker.volumes import job_paths

log = logging.getLogger(__name__)

# A user checkpoint the engine refuses (CRIU failed, the disk was full) is tried again on a later pass, with
# backoff, before it is FAILED: such faults are often transient, and the request stays in MongoDB meanwhile.
# A refusal that cannot change (the quota, a malformed image) fails at once.
CHECKPOINT_ATTEMPTS = 3
CHECKPOINT_RETRY_SECONDS = 2.0  # before the second try; doubled before each later one


class Node(Protocol):
    """What the lifecycle needs of the Worker that owns it (the Worker satisfies it structurally, so this
    module never imports the Worker back)."""

    cfg: Config
    name: str
    store: Store
    engine: Engine
    reports: Sender
    evms: EvmSync

    def report(self, job_id: str, task: str, attempt: int, state: TaskState, **extra: Any) -> None: ...

    def wake_at(self, when: float) -> None: ...


class Lifecycle:
    def __init__(self, worker: Node) -> None:
        self.w = worker
        self.applied: dict[str, int] = {}  # container id -> resources generation applied (this process)
        self.ckpt_root = worker.cfg.run_path / "checkpoints"
        self.ckpt_not_before: dict[str, float] = {}  # checkpoint id -> monotonic time of its next try

    # ---- the pass -------------------------------------------------------------------------------
    def run(self, desired: dict[tuple[str, str, int], tuple[dict[str, Any], str, dict[str, Any]]],
            observed: dict[tuple[str, str, int], Observed]) -> None:
        for key, (job, name, t) in desired.items():
            obs = observed.get(key)
            if obs is not None and obs.status == "running" and t["state"] == TaskState.RUNNING.value:
                self.apply_update(job["_id"], name, t, obs)
        pending = self.w.store.checkpoints.pending_on(self.w.name)
        now = time.monotonic()
        self.ckpt_not_before = {c["_id"]: self.ckpt_not_before[c["_id"]] for c in pending
                                if c["_id"] in self.ckpt_not_before}
        for c in pending:
            if self.ckpt_not_before.get(c["_id"], 0.0) <= now:
                self.user_checkpoint(c, desired, observed)
        for m in self.w.store.migrations.in_state(mg.PLACED, source=self.w.name):
            self.migrate_out(m, observed)
        for m in self.w.store.migrations.in_state(mg.CHECKPOINTED, target=self.w.name):
            self.migrate_in(m, observed)

    def protected(self, obs: Observed) -> bool:
        """A container this node is restoring for a migration is not an orphan (yet)."""
        for m in self.w.store.migrations.in_state(mg.CHECKPOINTED, target=self.w.name):
            if (m["job_id"], m["task"], m["attempt"] + 1) == (obs.job_id, obs.task, obs.attempt):
                return True
        return False

    # ---- update ---------------------------------------------------------------------------------
    def apply_update(self, job_id: str, name: str, t: dict[str, Any], obs: Observed) -> None:
        gen = t.get("resources_generation", 0)
        if gen == 0 or self.applied.get(obs.id, -1) >= gen or (t.get("applied") or {}).get("generation", -1) >= gen:
            return
        reason = None
        try:
            host = self.w.engine.host_config(obs.id)
            want_cpus = self.w.engine.physical_cpuset(t["cpuset"])
            if host.get("CpusetCpus") != want_cpus or host.get("Memory") != t["mem_bytes"]:
                self.w.engine.update_resources(obs.id, t["cpuset"], t["mem_bytes"])
                log.info("updated %s/%s: cores %s, memory %d", job_id, name, t["cpuset"], t["mem_bytes"])
        except docker.errors.APIError as exc:
            reason = f"the engine refused the update: {exc.explanation or exc}"
        self.applied[obs.id] = gen
        self.w.reports.send("task_applied", {"job_id": job_id, "task": name, "attempt": t["attempt"],
                                             "generation": gen, "ok": reason is None, "node": self.w.name,
                                             **({"reason": reason} if reason else {})})

    # ---- checkpoints ----------------------------------------------------------------------------
    def _checkpoint(self, ckpt: dict[str, Any], obs: Observed) -> dict[str, float]:
        """Checkpoint the container and store the files; returns the timings."""
        work = self.ckpt_root / ckpt["_id"]
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            t0 = time.monotonic()
            self.w.engine.checkpoint(obs.id, ckpt["_id"], str(work), ckpt["leave_running"])
            t1 = time.monotonic()
            if ckpt["purpose"] == "user":  # the quota bounds what users keep; a migration's copy is transient
                self._check_quota(work / ckpt["_id"])
            files = self.w.store.checkpoints.upload(ckpt["_id"], work / ckpt["_id"])
            t2 = time.monotonic()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        timings = {"checkpoint_s": t1 - t0, "upload_s": t2 - t1}
        self.w.store.checkpoints.finish(ckpt["_id"], ck.DONE, files=files, size=sum(f["size"] for f in files),
                                        timings=timings)
        return timings

    def _check_quota(self, directory: Path) -> None:
        size = sum(e.stat().st_size for e in directory.iterdir() if e.is_file())
        used, quota = self.w.store.checkpoints.used_bytes(), self.w.cfg.storage.checkpoint_quota_bytes
        if used + size > quota:
            raise CheckpointError(f"checkpoint quota: {used} bytes stored + {size} for this one > quota {quota} bytes")

    def user_checkpoint(self, c: dict[str, Any], desired, observed) -> None:
        obs = observed.get((c["job_id"], c["task"], c["attempt"]))
        if obs is None or obs.status != "running":
            self.w.store.checkpoints.finish(c["_id"], ck.FAILED, reason="the task's container is not running here")
            return
        try:
            self._checkpoint(c, obs)
        except CheckpointError as exc:  # the quota or a malformed image: another try gives the same answer
            log.warning("checkpoint %s of %s/%s failed: %s", c["_id"], c["job_id"], c["task"], _why(exc))
            self.w.store.checkpoints.finish(c["_id"], ck.FAILED, reason=f"checkpoint failed: {_why(exc)}")
            return
        except (docker.errors.APIError, OSError) as exc:  # CRIU or the disk: a later try may pass
            self._retry_or_fail(c, _why(exc))
            return
        log.info("checkpoint %s of %s/%s done", c["_id"], c["job_id"], c["task"])
        if not c["leave_running"]:
            self.w.report(c["job_id"], c["task"], c["attempt"], TaskState.CANCELLED,
                          reason=f"checkpointed as {c['_id']} and stopped", container_id=obs.id)

    def _retry_or_fail(self, c: dict[str, Any], why: str) -> None:
        attempts = self.w.store.checkpoints.failed_attempt(c["_id"], why)
        if attempts is None:  # no longer requested: deleted, or its job ended meanwhile
            return
        if attempts >= CHECKPOINT_ATTEMPTS:
            log.warning("checkpoint %s of %s/%s failed %d times; giving up: %s", c["_id"], c["job_id"], c["task"],
                        attempts, why)
            self.w.store.checkpoints.finish(c["_id"], ck.FAILED,
                                            reason=f"checkpoint failed after {attempts} attempts: {why}")
            return
        delay = CHECKPOINT_RETRY_SECONDS * 2 ** (attempts - 1)
        log.warning("checkpoint %s of %s/%s failed (attempt %d of %d): %s; trying again in %.0f s", c["_id"],
                    c["job_id"], c["task"], attempts, CHECKPOINT_ATTEMPTS, why, delay)
        self.ckpt_not_before[c["_id"]] = at = time.monotonic() + delay
        self.w.wake_at(at)

    # ---- migration ------------------------------------------------------------------------------
    def _report(self, m: dict[str, Any], state: str, **extra: Any) -> None:
        self.w.reports.send("migration_status", {"migration_id": m["_id"], "state": state, "node": self.w.name,
                                                 "at": time.time(), **{k: v for k, v in extra.items() if v}})

    def migrate_out(self, m: dict[str, Any], observed: dict[tuple[str, str, int], Observed]) -> None:
        obs = observed.get((m["job_id"], m["task"], m["attempt"]))
        if obs is None or obs.status != "running":
            self._report(m, mg.FAILED, reason="the task's container is not running on the source")
            return
        if m["mode"] == "recreate":  # an EPM holding EVMs: CRIU cannot dump network namespaces
            self._report(m, mg.CHECKPOINTED)
            return
        ckpt = self.w.store.checkpoints.request(m["job_id"], m["task"], m["attempt"], self.w.name,
                                                leave_running=True, purpose="migration", migration_id=m["_id"])
        try:
            timings = self._checkpoint(ckpt, obs)
        except (docker.errors.APIError, CheckpointError, OSError) as exc:
            self.w.store.checkpoints.finish(ckpt["_id"], ck.FAILED, reason=_why(exc))
            self._report(m, mg.FAILED, reason=f"checkpoint on {self.w.name} failed: {_why(exc)}")
            return
        self._report(m, mg.CHECKPOINTED, checkpoint_id=ckpt["_id"], timings=timings)

    def migrate_in(self, m: dict[str, Any], observed: dict[tuple[str, str, int], Observed]) -> None:
        attempt = m["attempt"] + 1
        existing = observed.get((m["job_id"], m["task"], attempt))
        if existing is not None and existing.status == "running":
            self._report(m, mg.DONE, container_id=existing.id)  # restored by an earlier pass
            return
        job = self.w.store.jobs.get(m["job_id"])
        if job is None or m["task"] not in job["tasks"]:
            self._report(m, mg.FAILED, reason="the job is gone")
            return
        t = {**job["tasks"][m["task"]], "attempt": attempt, "cpuset": format_cpuset(m["cpuset"]),
             "mem_bytes": m["mem"]}
        cid = existing.id if existing is not None else None
        timings: dict[str, float] = {}
        try:
            if cid is None:
                epm = self.w.evms.container_options(job, m["task"], t) if m["mode"] == "recreate" else None
                cid = self.w.engine.create(m["job_id"], m["task"], t, job["network"]["docker_name"], epm=epm,
                                           job_rels=job_paths(job))
            if m["mode"] == "recreate":
                self.w.engine.start(cid)
            else:
                ckpt = self.w.store.checkpoints.get(m["checkpoint_id"] or "")
                if ckpt is None or ckpt["state"] != ck.DONE:
                    raise StartFailed(f"checkpoint {m['checkpoint_id']} is not available")
                t0 = time.monotonic()
                target = Path(self.w.engine.docker_root()) / "containers" / cid / "checkpoints" / ckpt["_id"]
                shutil.rmtree(target, ignore_errors=True)
                self.w.store.checkpoints.download(ckpt, target)
                t1 = time.monotonic()
                self.w.engine.start_from_checkpoint(cid, ckpt["_id"])
                timings = {"download_s": t1 - t0, "restore_s": time.monotonic() - t1}
        except Exception as exc:  # whatever went wrong, the source keeps running; say why
            if cid is not None:
                self.w.engine.remove(cid)
            self._report(m, mg.FAILED, reason=f"restore on {self.w.name} failed: {_why(exc)}")
            return
        log.info("migration %s: restored %s as %s", m["_id"], container_name(m["job_id"], m["task"], attempt), cid[:12])
        self._report(m, mg.DONE, container_id=cid, timings=timings, addresses=self.w.engine.addresses(cid))


def _why(exc: BaseException) -> str:
    return str(getattr(exc, "explanation", None) or exc)
