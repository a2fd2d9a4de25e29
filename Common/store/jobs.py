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
from pymongo.errors import DuplicateKeyError

from Common.jobspec import JobSpec
from Common.resources import format_cpuset
from Common.states import (
    JOB_RANK,
    JOB_TERMINAL,
    TASK_RANK,
    TASK_TERMINAL,
    JobState,
    TaskState,
    derive_job_state,
    job_states_before,
    task_states_before,
)
from Common.store.events import EventLog
from Common.store.evms import EvmStore


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
        self.col.create_index([("idempotency_key", ASCENDING)], unique=True, sparse=True)

    # ---- creation and reading -----------------------------------------------------------------
    def insert(self, spec: JobSpec, idempotency: tuple[str, str] | None = None) -> dict[str, Any]:
        """Store a new job (QUEUED). ``idempotency`` is (key, request hash): a second insert with the same
        key raises DuplicateKeyError, and ``by_idempotency_key`` finds the first."""
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
                "volumes": [{"path": p, **v} for p, v in d["volumes"].items()],  # relative to the job's dir
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
            if t.evms is not None:
                tasks[t.name]["evms"] = t.evms
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
        if idempotency is not None:
            doc["idempotency_key"], doc["request_hash"] = idempotency
        evms = EvmStore(self.col.database, self.events) if spec.evms is not None else None
        if evms is not None:
            doc["evms"] = spec.evms
            evms.insert_initial(doc)  # first: a job never lacks its EVMs
        try:
            self.col.insert_one(doc)
        except DuplicateKeyError:
            if evms is not None:
                evms.forget_job(job_id)  # the same idempotency key won a race: this job never existed
            raise
        self.events.record("job_state", job_id, state=JobState.QUEUED.value)
        return doc

    def by_idempotency_key(self, key: str) -> dict[str, Any] | None:
        return self.col.find_one({"idempotency_key": key})

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.col.find_one({"_id": job_id})

    def many(self, job_ids: set[str] | list[str], fields: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
        """The jobs that exist among ``job_ids``, by id, in one query (only ``fields``, if given)."""
        return {d["_id"]: d for d in self.col.find({"_id": {"$in": sorted(job_ids)}}, fields)} if job_ids else {}

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

    def placed_networks(self) -> list[dict[str, Any]]:
        """``_id`` and ``network`` of every placed, unfinished job (for subnet accounting)."""
        placed = [JobState.SCHEDULED.value, JobState.RUNNING.value, JobState.CANCELLING.value]
        return list(self.col.find({"state": {"$in": placed}}, {"network": 1}))

    def count_by_state(self) -> dict[str, int]:
        return {d["_id"]: d["n"] for d in self.col.aggregate([{"$group": {"_id": "$state", "n": {"$sum": 1}}}])}

    def queue_stats(self) -> tuple[int, float | None]:
        """(waiting jobs, when the longest-waiting one entered the queue) for metrics and the status page."""
        docs = list(self.col.aggregate([
            {"$match": {"state": JobState.QUEUED.value, "cancel_requested": False}},
            {"$group": {"_id": None, "n": {"$sum": 1}, "oldest": {"$min": f"$state_times.{JobState.QUEUED.value}"}}},
        ]))
        return (docs[0]["n"], docs[0].get("oldest")) if docs else (0, None)

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
        """Record an accepted deploy: when, and how many so far for this placement (``dispatches``, which
        spaces the JobManager's re-sends of a deploy whose tasks are still waiting for their engine)."""
        self.col.update_one({"_id": job_id}, {"$set": {"dispatched_at": time.time(), "deploy_retry": None},
                                              "$inc": {"dispatches": 1}})

    def deploy_failed(self, job_id: str, error: str, backoff: tuple[float, float]) -> int | None:
        """Count a transient deploy failure of a placed job and set when to retry (exponential backoff
        between ``backoff`` = (first, cap) seconds). Returns the failures so far, or None if not placed."""
        doc = self.col.find_one_and_update(
            {"_id": job_id, "state": {"$in": [JobState.SCHEDULED.value, JobState.RUNNING.value]}},
            {"$inc": {"deploy_failures": 1}, "$set": {"deploy_error": error}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None
        n = doc["deploy_failures"]
        delay = min(backoff[0] * 2 ** (n - 1), backoff[1])
        self.col.update_one({"_id": job_id}, {"$set": {"deploy_retry": {"at": time.time() + delay, "n": n}}})
        return n

    def requeue_preempted(self, job_id: str, by: str, reason: str) -> dict[str, Any] | None:
        """Send a placed job back to the queue because ``by`` evicts it (preemption).

        Not a backward transition: every task starts a new *attempt* (PENDING, attempt + 1, no node),
        so late reports about the old attempt are ignored and its containers become orphans that the
        Workers remove (the old attempts are kept in ``history``, which tells the GlobalManager whose
        Workers to hint). Conditional on nothing having moved since the read. Returns the job as it was
        (its tasks' nodes and claim tokens: the caller releases those claims), or None if it changed.
        """
        doc = self.get(job_id)
        placed = (JobState.SCHEDULED.value, JobState.RUNNING.value)
        if doc is None or doc["state"] not in placed or doc.get("cancel_requested"):
            return None
        now = time.time()
        guard: dict[str, Any] = {"_id": job_id, "state": doc["state"], "cancel_requested": False}
        update: dict[str, Any] = {"state": JobState.QUEUED.value, "state_times": {JobState.QUEUED.value: now},
                                  "nodes": [], "lease": None, "reason": reason, "dispatched_at": None,
                                  "dispatches": 0, "deploy_failures": 0, "deploy_retry": None,
                                  "last_preempted": {"by": by, "at": now}}
        history = []
        for name, t in doc["tasks"].items():
            guard[f"tasks.{name}.attempt"] = t["attempt"]
            guard[f"tasks.{name}.state"] = t["state"]
            history.append({"task": name, "attempt": t["attempt"], "state": TaskState.CANCELLED.value,
                            "node": t.get("node"), "cpuset": t.get("cpuset"), "at": now,
                            "reason": f"preempted by {by}"})
            update[f"tasks.{name}"] = {**t, "state": TaskState.PENDING.value, "attempt": t["attempt"] + 1,
                                       "node": None, "cpuset": None, "claim_token": None, "container_id": None,
                                       "addresses": {}, "exit_code": None, "log_tail": None,
                                       "reason": f"preempted by {by}",
                                       "state_times": {TaskState.PENDING.value: now}}
        res = self.col.update_one(guard, {"$set": update, "$inc": {"preemptions": 1},
                                          "$push": {"history": {"$each": history, "$slice": -200}}})
        if res.modified_count != 1:
            return None
        self.events.record("preempted", job_id, by=by, nodes=doc.get("nodes", []))
        self.events.record("job_state", job_id, state=JobState.QUEUED.value, reason=reason)
        return doc

    def requeue_lost(self, job_id: str, node: str, reason: str, max_requeues: int) -> dict[str, Any] | None:
        """Restart a placed job whose tasks on ``node`` are lost (node down or drained).

        A job runs whole, so the whole job goes back to the queue as a new attempt of every task (the
        lost ones recorded LOST in ``history``, their siblings stopped); late reports of the old attempt
        are ignored and its containers become orphans that their Workers remove. After ``max_requeues``
        restarts the lost tasks end LOST instead and the job fails. Conditional on nothing having moved
        since the read. Returns the job as it was (the caller releases its claims), or None.
        """
        doc = self.get(job_id)
        placed = (JobState.SCHEDULED.value, JobState.RUNNING.value)
        if doc is None or doc["state"] not in placed or doc.get("cancel_requested"):
            return None
        lost = [n for n, t in doc["tasks"].items() if t.get("node") == node and t["state"] not in
                {s.value for s in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.LOST)}]
        if not lost:
            return None
        if doc.get("requeues", 0) >= max_requeues:
            for name in lost:
                self.transition_task(job_id, name, doc["tasks"][name]["attempt"], TaskState.LOST,
                                     reason=f"{reason}; given up after {max_requeues} restarts")
            return doc
        now = time.time()
        guard: dict[str, Any] = {"_id": job_id, "state": doc["state"], "cancel_requested": False}
        update: dict[str, Any] = {"state": JobState.QUEUED.value, "state_times": {JobState.QUEUED.value: now},
                                  "nodes": [], "lease": None, "reason": reason, "dispatched_at": None,
                                  "dispatches": 0, "deploy_failures": 0, "deploy_retry": None}
        history = []
        for name, t in doc["tasks"].items():
            guard[f"tasks.{name}.attempt"] = t["attempt"]
            guard[f"tasks.{name}.state"] = t["state"]
            ended = TaskState.LOST.value if name in lost else TaskState.CANCELLED.value
            history.append({"task": name, "attempt": t["attempt"], "state": ended, "node": t.get("node"),
                            "cpuset": t.get("cpuset"), "at": now})
            update[f"tasks.{name}"] = {**t, "state": TaskState.PENDING.value, "attempt": t["attempt"] + 1,
                                       "node": None, "cpuset": None, "claim_token": None, "container_id": None,
                                       "addresses": {}, "exit_code": None, "log_tail": None,
                                       "reason": f"attempt {t['attempt']} {ended.lower()}: {reason}",
                                       "state_times": {TaskState.PENDING.value: now}}
        res = self.col.update_one(guard, {"$set": update, "$inc": {"requeues": 1},
                                          "$push": {"history": {"$each": history, "$slice": -200}}})
        if res.modified_count != 1:
            return None
        self.events.record("job_requeued", job_id, node=node, reason=reason, lost=lost)
        self.events.record("job_state", job_id, state=JobState.QUEUED.value, reason=reason)
        return doc

    # ---- task lifecycle: update and migration ------------------------------------------------
    def update_resources(self, job_id: str, task: str, attempt: int, token: str, cores: list[int], mem: int,
                         mem_limit: str) -> int | None:
        """Record a running task's new cores and memory (already claimed); the Worker applies them.
        Returns the new resources generation, or None if the task is no longer that running attempt."""
        res = self.col.find_one_and_update(
            {"_id": job_id, f"tasks.{task}.attempt": attempt, f"tasks.{task}.claim_token": token,
             f"tasks.{task}.state": TaskState.RUNNING.value},
            {"$set": {f"tasks.{task}.cpuset": format_cpuset(cores), f"tasks.{task}.req_cores": len(cores),
                      f"tasks.{task}.mem_bytes": mem, f"tasks.{task}.mem_limit": mem_limit},
             "$inc": {f"tasks.{task}.resources_generation": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if res is None:
            return None
        gen = res["tasks"][task]["resources_generation"]
        self.events.record("task_update", job_id, task=task, cores=cores, mem=mem, generation=gen)
        return gen

    def set_applied(self, job_id: str, task: str, attempt: int, generation: int, ok: bool, reason: str | None) -> bool:
        res = self.col.update_one(
            {"_id": job_id, f"tasks.{task}.attempt": attempt,
             "$or": [{f"tasks.{task}.applied.generation": {"$lt": generation}}, {f"tasks.{task}.applied": None}]},
            {"$set": {f"tasks.{task}.applied": {"generation": generation, "ok": ok, "reason": reason,
                                                "at": time.time()}}},
        )
        return res.modified_count == 1

    def set_migration(self, job_id: str, task: str, attempt: int, mig_id: str) -> bool:
        """Mark a running task as migrating (at most one migration per task at a time)."""
        res = self.col.update_one(
            {"_id": job_id, "cancel_requested": False, f"tasks.{task}.attempt": attempt,
             f"tasks.{task}.state": TaskState.RUNNING.value,
             "$or": [{f"tasks.{task}.migration_id": None}, {f"tasks.{task}.migration_id": {"$exists": False}}]},
            {"$set": {f"tasks.{task}.migration_id": mig_id}},
        )
        return res.modified_count == 1

    def clear_migration(self, job_id: str, task: str, mig_id: str) -> None:
        self.col.update_one({"_id": job_id, f"tasks.{task}.migration_id": mig_id},
                            {"$set": {f"tasks.{task}.migration_id": None}})

    def apply_migration(self, m: dict[str, Any], container_id: str, addresses: dict[str, str] | None = None) -> bool:
        """The task now runs on the target as its next attempt (its source container becomes an orphan)."""
        job = self.get(m["job_id"])
        if job is None:
            return False
        t = job["tasks"][m["task"]]
        if t["attempt"] == m["attempt"] + 1 and t.get("claim_token") == m["token"]:
            return True  # applied already (a replayed report)
        now = time.time()
        nodes = sorted({x.get("node") for n, x in job["tasks"].items() if n != m["task"] and x.get("node")}
                       | {m["target"]})
        task = m["task"]
        res = self.col.update_one(
            {"_id": m["job_id"], f"tasks.{task}.attempt": m["attempt"], f"tasks.{task}.migration_id": m["_id"],
             f"tasks.{task}.state": TaskState.RUNNING.value},
            {"$set": {f"tasks.{task}.attempt": m["attempt"] + 1, f"tasks.{task}.node": m["target"],
                      f"tasks.{task}.cpuset": format_cpuset(m["cpuset"]), f"tasks.{task}.claim_token": m["token"],
                      f"tasks.{task}.container_id": container_id, f"tasks.{task}.migration_id": None,
                      f"tasks.{task}.addresses": addresses or {},
                      f"tasks.{task}.migrated_at": now, f"tasks.{task}.state_times.MIGRATED": now, "nodes": nodes},
             "$push": {"history": {"$each": [{"task": task, "attempt": m["attempt"], "state": "MIGRATED",
                                              "node": m["source"], "cpuset": t.get("cpuset"), "at": now,
                                              "migration": m["_id"]}], "$slice": -200}}},
        )
        if res.modified_count == 1:
            self.events.record("task_migrated", m["job_id"], task=task, source=m["source"], target=m["target"],
                               migration=m["_id"])
            return True
        return False

    # ---- transitions (Discovery, FrontEnd) ----------------------------------------------------
    def transition_task(
        self, job_id: str, task: str, attempt: int, state: TaskState, at: float | None = None,
        node: str | None = None, **fields: Any
    ) -> bool:
        """Move one task forward; False if it is already there or beyond, the attempt is stale, or (given
        ``node``, the reporting node) the task is placed on another node."""
        now = at or time.time()
        update = {f"tasks.{task}.state": state.value, f"tasks.{task}.state_times.{state.value}": now}
        for key, value in fields.items():
            if value is not None:
                update[f"tasks.{task}.{key}"] = value
        guard = {"_id": job_id, f"tasks.{task}.attempt": attempt,
                 f"tasks.{task}.state": {"$in": task_states_before(state)}}
        if node is not None:
            guard[f"tasks.{task}.node"] = node
        res = self.col.update_one(guard, {"$set": update})
        if res.modified_count == 1:
            self.events.record("task_state", job_id, task=task, attempt=attempt, state=state.value,
                               **{k: v for k, v in fields.items() if v is not None and k != "log_tail"})
            return True
        return False

    def apply_reports(self, job_id: str, reports: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Several task reports of one job in one conditional update (Discovery's batched path).

        Each report moves its task forward only (within its attempt, and only from the node the task is
        placed on when the report names one), exactly as ``transition_task`` would, and the job's state
        advances to what its tasks then imply, in the same write. The write is guarded on every task's
        attempt and state as read, so it applies whole or not at all: None means the job changed
        meanwhile (or is gone) and the caller applies the reports one by one instead.
        Returns {"doc": job as read, "moved": [(task, attempt, state, fields)], "job": (before, after)}.
        """
        doc = self.col.find_one({"_id": job_id})
        if doc is None:
            return None
        current = {name: TaskState(t["state"]) for name, t in doc["tasks"].items()}
        update: dict[str, Any] = {}
        moved: list[tuple[str, int, TaskState, dict[str, Any]]] = []
        for r in reports:
            t = doc["tasks"].get(r["task"])
            state = TaskState(r["state"])
            if t is None or t["attempt"] != r["attempt"] or TASK_RANK[state] <= TASK_RANK[current[r["task"]]]:
                continue
            if r.get("node") is not None and t.get("node") != r["node"]:
                continue  # a node speaks only about the tasks placed on it
            current[r["task"]] = state
            prefix = f"tasks.{r['task']}"
            update[f"{prefix}.state"] = state.value
            update[f"{prefix}.state_times.{state.value}"] = r.get("at") or time.time()
            fields = {k: v for k, v in (r.get("fields") or {}).items() if v is not None}
            for key, value in fields.items():
                update[f"{prefix}.{key}"] = value
            moved.append((r["task"], r["attempt"], state, fields))
        before = JobState(doc["state"])
        after = derive_job_state(list(current.values()), bool(doc.get("user_cancelled")))
        if JOB_RANK[after] <= JOB_RANK[before]:
            after = before
        if not moved:
            return {"doc": doc, "moved": [], "job": (before.value, before.value)}
        guard: dict[str, Any] = {"_id": job_id, "state": doc["state"]}
        for name, t in doc["tasks"].items():
            guard[f"tasks.{name}.attempt"] = t["attempt"]
            guard[f"tasks.{name}.state"] = t["state"]
        if after != before:
            update["state"] = after.value
            update[f"state_times.{after.value}"] = time.time()
        if self.col.update_one(guard, {"$set": update}).modified_count != 1:
            return None
        events: list[tuple[str, str | None, dict[str, Any]]] = [
            ("task_state", job_id, {"task": task, "attempt": attempt, "state": state.value,
                                    **{k: v for k, v in fields.items() if k != "log_tail"}})
            for task, attempt, state, fields in moved]
        if after != before:
            events.append(("job_state", job_id, {"state": after.value}))
        self.events.record_many(events)
        return {"doc": doc, "moved": moved, "job": (before.value, after.value)}

    def refresh_state(self, job_id: str) -> tuple[str | None, str | None]:
        """Advance the job's state to what its tasks imply. Returns (before, after); equal if unchanged."""
        doc = self.col.find_one({"_id": job_id}, {"state": 1, "tasks": 1, "user_cancelled": 1})
        if doc is None:
            return None, None
        before = JobState(doc["state"])
        after = derive_job_state([TaskState(t["state"]) for t in doc["tasks"].values()],
                                 bool(doc.get("user_cancelled")))
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

    def request_cancel(self, job_id: str, reason: str, by_user: bool = False) -> dict[str, Any] | None:
        """Ask for a job to stop. The caller cancels unplaced tasks; Workers stop placed ones.

        ``by_user`` (DELETE /jobs/{id}): the job moves to CANCELLING and will end CANCELLED whatever
        happens to its containers meanwhile, unless it was already being stopped because a task failed
        (then it ends FAILED, as it would have). Otherwise (a failed sibling, too many restarts) only
        ``cancel_requested`` is set and the job ends as its tasks do.
        """
        if by_user:
            now = time.time()
            doc = self.col.find_one_and_update(
                {"_id": job_id, "cancel_requested": False,
                 "state": {"$in": job_states_before(JobState.CANCELLING)}},
                {"$set": {"cancel_requested": True, "user_cancelled": True, "cancel_reason": reason,
                          "reason": reason, "state": JobState.CANCELLING.value,
                          f"state_times.{JobState.CANCELLING.value}": now}},
                return_document=ReturnDocument.AFTER,
            )
            if doc is not None:
                self.events.record("job_state", job_id, state=JobState.CANCELLING.value, reason=reason)
                return doc
        return self.col.find_one_and_update(
            {"_id": job_id, "state": {"$nin": [s.value for s in JOB_TERMINAL]}},
            {"$set": {"cancel_requested": True, "cancel_reason": reason, "reason": reason}},
            return_document=ReturnDocument.AFTER,
        )

    def lose_tasks_on(self, job_id: str, node: str, reason: str) -> list[tuple[str, int]]:
        """Record LOST every unfinished task of ``job_id`` on ``node`` (a dead node that will never report
        them). Returns the (task, attempt) pairs that moved, whose claims the caller releases."""
        doc = self.get(job_id)
        moved: list[tuple[str, int]] = []
        for name, t in (doc or {}).get("tasks", {}).items():
            if (t.get("node") == node and t["state"] not in {s.value for s in TASK_TERMINAL}
                    and self.transition_task(job_id, name, t["attempt"], TaskState.LOST, reason=reason)):
                moved.append((name, t["attempt"]))
        return moved

    def cancel_unplaced(self, job_id: str, reason: str) -> None:
        """Cancel every task that has no node yet (placed tasks are the Workers' to stop)."""
        doc = self.get(job_id)
        if doc is None:
            return
        for name, t in doc["tasks"].items():
            if t["state"] == TaskState.PENDING.value:
                self.transition_task(job_id, name, t["attempt"], TaskState.CANCELLED, reason=reason)
        self.refresh_state(job_id)
