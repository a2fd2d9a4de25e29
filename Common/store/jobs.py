"""Job documents: one per job, tasks embedded (bounded by the per-job task limit).

Every state write is conditional on the stored state being earlier (see ``Common.states``), and a
task write is also conditional on the task's ``attempt``, so reports about an older attempt are
ignored.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.database import Database

from Common.jobspec import JobSpec
from Common.resources import format_cpuset
from Common.states import (
    JOB_RANK,
    JOB_TERMINAL,
    JobState,
    TaskState,
    derive_job_state,
    job_states_before,
    task_states_before,
)
from Common.store.events import EventLog


def new_job_id() -> str:
    """Time-ordered, so sorting by id is sorting by submission."""
    return f"job-{int(time.time() * 1000):012x}-{secrets.token_hex(3)}"


def container_name(job_id: str, task: str, attempt: int) -> str:
    return f"rsw-{job_id}-{task}-{attempt}"


def network_name(job_id: str) -> str:
    return f"rsw-{job_id}"


class JobStore:
    def __init__(self, db: Database, events: EventLog) -> None:
        self.col = db["jobs"]
        self.events = events

    def ensure_indexes(self) -> None:
        self.col.create_index([("state", ASCENDING), ("priority", DESCENDING), ("_id", ASCENDING)])
        self.col.create_index([("nodes", ASCENDING), ("state", ASCENDING)])
        self.col.create_index([("name", ASCENDING)])

    # ---- creation and reading -----------------------------------------------------------------
    def insert(self, spec: JobSpec) -> dict[str, Any]:
        now = time.time()
        job_id = new_job_id()
        tasks = {}
        for t in spec.tasks:
            d = asdict(t)
            tasks[t.name] = {
                "image": d["image"],
                "command": d["command"],
                "req_cores": d["req_cores"],
                "mem_bytes": d["mem_bytes"],
                "mem_limit": d["mem_limit"],
                "container_name": d["container_name"],
                "ports": d["ports"],
                "volumes": [{"host": h, **v} for h, v in d["volumes"].items()],
                "environment": d["environment"],
                "node_request": d["node"],
                "cpuset_request": d["cpuset"],
                "state": TaskState.PENDING.value,
                "attempt": 0,
                "node": None,
                "cpuset": None,
                "claim_token": None,
                "container_id": None,
                "exit_code": None,
                "reason": None,
                "state_times": {TaskState.PENDING.value: now},
            }
        doc = {
            "_id": job_id,
            "name": spec.name or f"job{int(now * 1000)}-{job_id[-6:]}",
            "priority": spec.priority,
            "state": JobState.QUEUED.value,
            "state_times": {JobState.QUEUED.value: now},
            "created_at": now,
            "cancel_requested": False,
            "reason": None,
            "network": {"name": spec.network_name, "driver": "overlay", "subnet": spec.network_subnet,
                        "docker_name": network_name(job_id)},
            "nodes": [],
            "tasks": tasks,
        }
        self.col.insert_one(doc)
        self.events.record("job_state", job_id, state=JobState.QUEUED.value)
        return doc

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.col.find_one({"_id": job_id})

    def page(self, state: str | None, limit: int, after: str | None) -> list[dict[str, Any]]:
        """Newest first; ``after`` is the last id of the previous page."""
        query: dict[str, Any] = {}
        if state:
            query["state"] = state
        if after:
            query["_id"] = {"$lt": after}
        return list(self.col.find(query).sort("_id", DESCENDING).limit(limit))

    def queued(self) -> list[dict[str, Any]]:
        """The waiting jobs in placement order: higher priority first, then first come first served."""
        return list(
            self.col.find({"state": JobState.QUEUED.value, "cancel_requested": False})
            .sort([("priority", DESCENDING), ("_id", ASCENDING)])
        )

    def active_on(self, node: str) -> list[dict[str, Any]]:
        active = [s.value for s in JobState if s not in JOB_TERMINAL]
        return list(self.col.find({"nodes": node, "state": {"$in": active}}))

    def in_states(self, states: list[str]) -> list[dict[str, Any]]:
        return list(self.col.find({"state": {"$in": states}}))

    def count_by_state(self) -> dict[str, int]:
        return {d["_id"]: d["n"] for d in self.col.aggregate([{"$group": {"_id": "$state", "n": {"$sum": 1}}}])}

    def set_reason(self, job_id: str, reason: str | None) -> None:
        self.col.update_one({"_id": job_id, "state": JobState.QUEUED.value}, {"$set": {"reason": reason}})

    # ---- placement commit (JobManager) --------------------------------------------------------
    def acquire_lease(self, job_id: str, token: str, seconds: float) -> bool:
        """Only one placer works on a job at a time; an expired lease can be taken over."""
        now = time.time()
        res = self.col.update_one(
            {"_id": job_id, "state": JobState.QUEUED.value, "cancel_requested": False,
             "$or": [{"lease": None}, {"lease.until": {"$lt": now}}]},
            {"$set": {"lease": {"token": token, "until": now + seconds}}},
        )
        return res.modified_count == 1

    def drop_lease(self, job_id: str, token: str) -> None:
        self.col.update_one({"_id": job_id, "lease.token": token}, {"$set": {"lease": None}})

    def commit_placement(self, job_id: str, token: str, placement: dict[str, tuple[str, list[int]]]) -> bool:
        """QUEUED -> SCHEDULED with each task's node and cores, only while this placer holds the lease."""
        now = time.time()
        update: dict[str, Any] = {
            "state": JobState.SCHEDULED.value,
            f"state_times.{JobState.SCHEDULED.value}": now,
            "nodes": sorted({node for node, _ in placement.values()}),
            "lease": None,
            "reason": None,
        }
        for task, (node, cores) in placement.items():
            update[f"tasks.{task}.state"] = TaskState.SCHEDULED.value
            update[f"tasks.{task}.node"] = node
            update[f"tasks.{task}.cpuset"] = format_cpuset(cores)
            update[f"tasks.{task}.claim_token"] = token
            update[f"tasks.{task}.state_times.{TaskState.SCHEDULED.value}"] = now
        res = self.col.update_one(
            {"_id": job_id, "state": JobState.QUEUED.value, "cancel_requested": False,
             "lease.token": token, "lease.until": {"$gt": now}},
            {"$set": update},
        )
        if res.modified_count == 1:
            self.events.record("job_state", job_id, state=JobState.SCHEDULED.value,
                               placement={t: [n, c] for t, (n, c) in placement.items()})
            return True
        return False

    def mark_dispatched(self, job_id: str) -> None:
        self.col.update_one({"_id": job_id}, {"$set": {"dispatched_at": time.time()}})

    # ---- transitions (Discovery, FrontEnd) ----------------------------------------------------
    def transition_task(
        self, job_id: str, task: str, attempt: int, state: TaskState, at: float | None = None, **fields: Any
    ) -> bool:
        """Move one task forward; False if it is already there or beyond, or the attempt is stale."""
        now = at or time.time()
        update = {f"tasks.{task}.state": state.value, f"tasks.{task}.state_times.{state.value}": now}
        for key, value in fields.items():
            if value is not None:
                update[f"tasks.{task}.{key}"] = value
        res = self.col.update_one(
            {"_id": job_id, f"tasks.{task}.attempt": attempt,
             f"tasks.{task}.state": {"$in": task_states_before(state)}},
            {"$set": update},
        )
        if res.modified_count == 1:
            self.events.record("task_state", job_id, task=task, attempt=attempt, state=state.value,
                               **{k: v for k, v in fields.items() if v is not None})
            return True
        return False

    def refresh_state(self, job_id: str) -> tuple[str | None, str | None]:
        """Advance the job's state to what its tasks imply. Returns (before, after); equal if unchanged."""
        doc = self.col.find_one({"_id": job_id}, {"state": 1, "tasks": 1})
        if doc is None:
            return None, None
        before = JobState(doc["state"])
        after = derive_job_state([TaskState(t["state"]) for t in doc["tasks"].values()])
        if JOB_RANK[after] <= JOB_RANK[before]:
            return before.value, before.value
        now = time.time()
        res = self.col.update_one(
            {"_id": job_id, "state": {"$in": job_states_before(after)}},
            {"$set": {"state": after.value, f"state_times.{after.value}": now}},
        )
        if res.modified_count == 1:
            self.events.record("job_state", job_id, state=after.value)
            return before.value, after.value
        return before.value, before.value

    def request_cancel(self, job_id: str, reason: str) -> dict[str, Any] | None:
        """Ask for a job to stop. The caller cancels unplaced tasks; Workers stop placed ones."""
        return self.col.find_one_and_update(
            {"_id": job_id, "state": {"$nin": [s.value for s in JOB_TERMINAL]}},
            {"$set": {"cancel_requested": True, "cancel_reason": reason}},
            return_document=ReturnDocument.AFTER,
        )

    def cancel_unplaced(self, job_id: str, reason: str) -> None:
        """Cancel every task that has no node yet (placed tasks are the Workers' to stop)."""
        doc = self.get(job_id)
        if doc is None:
            return
        for name, t in doc["tasks"].items():
            if t["state"] == TaskState.PENDING.value:
                self.transition_task(job_id, name, t["attempt"], TaskState.CANCELLED, reason=reason)
        self.refresh_state(job_id)
