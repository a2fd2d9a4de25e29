"""Task migrations: one document per migration, a small forward-only state machine.

    REQUESTED ──JobManager claims the target──▶ PLACED ──source Worker checkpoints (CRIU, leave running)──▶
    CHECKPOINTED ──target Worker restores (new attempt, target cpuset/memory)──▶ DONE      (or FAILED, any time)

Each step is a conditional update from the state before it, so a step replayed after a crash, or
reported twice, changes nothing. The source keeps running until the target has restored; on failure
it simply keeps running, and the target's claim is released.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.database import Database

REQUESTED, PLACED, CHECKPOINTED, DONE, FAILED = "REQUESTED", "PLACED", "CHECKPOINTED", "DONE", "FAILED"
ORDER = {REQUESTED: 0, PLACED: 1, CHECKPOINTED: 2, DONE: 3, FAILED: 3}
ACTIVE = [REQUESTED, PLACED, CHECKPOINTED]


def new_migration_id() -> str:
    return f"mg-{int(time.time() * 1000):012x}-{secrets.token_hex(3)}"


class MigrationStore:
    def __init__(self, db: Database) -> None:
        self.col = db["migrations"]

    def ensure_indexes(self) -> None:
        self.col.create_index([("state", ASCENDING), ("source", ASCENDING)])
        self.col.create_index([("state", ASCENDING), ("target", ASCENDING)])
        self.col.create_index([("job_id", ASCENDING), ("task", ASCENDING)])
        self.col.create_index([("group", ASCENDING)])

    def create(self, job_id: str, task: str, attempt: int, source: str, source_token: str, request: str,
               mode: str, group: str | None = None) -> dict[str, Any]:
        now = time.time()
        doc = {"_id": new_migration_id(), "job_id": job_id, "task": task, "attempt": attempt, "source": source,
               "source_token": source_token, "request": request, "mode": mode, "group": group, "state": REQUESTED,
               "target": None, "cpuset": None, "mem": None, "token": None, "checkpoint_id": None,
               "container_id": None, "reason": None, "times": {REQUESTED: now}, "timings": {}}
        self.col.insert_one(doc)
        return doc

    def get(self, mig_id: str) -> dict[str, Any] | None:
        return self.col.find_one({"_id": mig_id})

    def in_state(self, state: str, **match: Any) -> list[dict[str, Any]]:
        return list(self.col.find({"state": state, **match}).sort("_id", ASCENDING))

    def active(self) -> list[dict[str, Any]]:
        return list(self.col.find({"state": {"$in": ACTIVE}}))

    def query(self, job_id: str | None = None, group: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q: dict[str, Any] = {}
        if job_id:
            q["job_id"] = job_id
        if group:
            q["group"] = group
        return list(self.col.find(q).sort("_id", -1).limit(limit))

    def advance(self, mig_id: str, state: str, timings: dict[str, float] | None = None,
                **fields: Any) -> dict[str, Any] | None:
        """Move forward to ``state`` only from an earlier state; returns the new document or None."""
        earlier = [s for s, r in ORDER.items() if r < ORDER[state]]
        update = {"state": state, f"times.{state}": time.time(), **fields}
        update.update({f"timings.{k}": v for k, v in (timings or {}).items()})
        return self.col.find_one_and_update({"_id": mig_id, "state": {"$in": earlier}}, {"$set": update},
                                            return_document=ReturnDocument.AFTER)
