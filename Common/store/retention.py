"""Bounded storage: what the GlobalManager's sweep deletes, and when (docs/security.md, "Storage and retention").

One pass, level-triggered, safe to repeat and to run after a crash (every step is a query for what
should be gone, then a delete):

1. a migration's checkpoint once the migration has ended (DONE or FAILED); Discovery deletes it at that
   moment too, this catches what a crash left;
2. a job's checkpoints once the job has ended, except those taken with ``keep: true``;
3. checkpoint files (GridFS) that belong to no checkpoint record, an hour after their upload (a Worker
   that died while uploading);
4. finished jobs ``storage.job_retention_seconds`` after their end, with their migrations and EVM records
   (kept checkpoints stay until deleted through the API);
5. records of deleted EVMs ``storage.evm_retention_seconds`` after their deletion.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from Common.config import StorageConfig
from Common.evmstates import EvmState
from Common.states import JOB_TERMINAL
from Common.store import Store
from Common.store import checkpoints as ck
from Common.store import migrations as mg

ORPHAN_FILE_GRACE_SECONDS = 3600.0
_TERMINAL = sorted(s.value for s in JOB_TERMINAL)


def _ended_before(cutoff: float) -> dict[str, Any]:
    return {"state": {"$in": _TERMINAL}, "$or": [{f"state_times.{s}": {"$lt": cutoff}} for s in _TERMINAL]}


def sweep(store: Store, cfg: StorageConfig, now: float | None = None) -> dict[str, int]:
    """One retention pass; returns how many of each kind it deleted."""
    now = time.time() if now is None else now
    out = {"migration_checkpoints": 0, "job_checkpoints": 0, "orphan_files": 0, "jobs": 0, "evms": 0}
    cks = store.checkpoints
    # 1. checkpoints of ended migrations
    for c in cks.col.find({"purpose": "migration", "state": {"$ne": ck.REQUESTED}}, {"migration_id": 1}):
        m = store.migrations.get(c.get("migration_id") or "")
        if m is None or m["state"] not in mg.ACTIVE:
            out["migration_checkpoints"] += cks.delete(c["_id"])
    # 2. checkpoints of ended (or vanished) jobs, unless kept
    job_ids = cks.col.distinct("job_id", {"keep": {"$ne": True}, "state": {"$ne": ck.REQUESTED}})
    for job_id in job_ids:
        job = store.jobs.get(job_id)
        if job is None or job["state"] in _TERMINAL:
            for c in cks.col.find({"job_id": job_id, "keep": {"$ne": True}, "state": {"$ne": ck.REQUESTED}},
                                  {"_id": 1}):
                out["job_checkpoints"] += cks.delete(c["_id"])
    # 3. files of no checkpoint
    files = store.db["checkpoint_files.files"]
    for owner in files.distinct("metadata.checkpoint"):
        if cks.get(owner) is None:
            old = datetime.fromtimestamp(now - ORPHAN_FILE_GRACE_SECONDS, UTC)
            for f in files.find({"metadata.checkpoint": owner, "uploadDate": {"$lt": old}}, {"_id": 1}):
                cks.files.delete(f["_id"])
                out["orphan_files"] += 1
    # 4. finished jobs past retention
    for job in store.jobs.col.find(_ended_before(now - cfg.job_retention_seconds), {"_id": 1}):
        job_id = job["_id"]
        store.migrations.col.delete_many({"job_id": job_id, "state": {"$nin": mg.ACTIVE}})
        store.evms.forget_job(job_id)
        out["jobs"] += store.jobs.col.delete_one({"_id": job_id, "state": {"$in": _TERMINAL}}).deleted_count
    # 5. records of deleted EVMs past retention
    out["evms"] = store.evms.col.delete_many(
        {"state": EvmState.DELETED.value, f"times.{EvmState.DELETED.value}": {"$lt": now - cfg.evm_retention_seconds}},
    ).deleted_count
    return out

