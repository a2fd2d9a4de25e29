"""Placing migration targets: the JobManager's step of a task migration (see Common/store/migrations.py).

For each REQUESTED migration: check the task still runs as that attempt, place that one task with the
active strategy on the requested node (or on any other node), record the claim's token on the migration,
claim the cores and memory on the target, then mark it PLACED and hint the nodes. A migration that
cannot be placed fails at once with the reason; the task keeps running where it is.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from Common.placement import JobRequest, SchedulerOptions, TaskRequest, place
from Common.placement.snapshot import host_ports, node_from_worker
from Common.states import TaskState
from Common.store import Store
from Common.store import migrations as mg
from Common.store.workers import Alloc, alloc_key

log = logging.getLogger(__name__)


class MigrationPlacer:
    """The JobManager's collaborator for migrations. It is handed what it needs (the store, the active
    strategy and options, a way to hint nodes) and never imports the manager back."""

    def __init__(self, store: Store, strategy: Callable[[], str], options: Callable[[], SchedulerOptions],
                 hint_nodes: Callable[[str], object]) -> None:
        self.store = store
        self.strategy = strategy
        self.options = options
        self.hint_nodes = hint_nodes

    def fail(self, m: dict[str, Any], reason: str) -> None:
        if self.store.migrations.advance(m["_id"], mg.FAILED, reason=reason):
            self.store.jobs.clear_migration(m["job_id"], m["task"], m["_id"])
            if m.get("target") and m.get("token"):
                self.store.workers.release(m["target"], alloc_key(m["job_id"], m["task"]), m["token"])
            self.store.events.record("migration_failed", m["job_id"], task=m["task"], migration=m["_id"],
                                     reason=reason)
            log.info("migration %s failed: %s", m["_id"], reason)

    def place_requested(self) -> int:
        placed = 0
        for m in self.store.migrations.in_state(mg.REQUESTED):
            job = self.store.jobs.get(m["job_id"])
            t = (job or {}).get("tasks", {}).get(m["task"])
            if (job is None or t is None or job.get("cancel_requested") or t["attempt"] != m["attempt"]
                    or t["state"] != TaskState.RUNNING.value or t.get("migration_id") != m["_id"]):
                self.fail(m, "the task is no longer running as that attempt")
                continue
            if self.place_one(m, job, t):
                placed += 1
        # Migrations whose task ended while they were in flight.
        for m in self.store.migrations.active():
            if m["state"] == mg.REQUESTED:
                continue
            job = self.store.jobs.get(m["job_id"])
            t = (job or {}).get("tasks", {}).get(m["task"])
            if job is None or t is None or t["state"] != TaskState.RUNNING.value or job.get("cancel_requested"):
                self.fail(m, "the task ended during the migration")
        return placed

    def place_one(self, m: dict[str, Any], job: dict[str, Any], t: dict[str, Any]) -> bool:
        workers = [w for w in self.store.workers.ready() if w["_id"] != m["source"]
                   and (m["request"] == "any" or w["_id"] == m["request"])]
        if not workers:
            self.fail(m, f"no ready node to move to (asked for {m['request']})")
            return False
        request = JobRequest(job_id=m["job_id"], priority=job.get("priority", 0),
                             tasks=[TaskRequest(name=m["task"], cores=t["req_cores"], mem=t["mem_bytes"],
                                                ports=host_ports(t))])
        plan = place([request], [node_from_worker(w) for w in workers], self.strategy(), self.options())
        if m["job_id"] not in plan.placed:
            self.fail(m, plan.waiting.get(m["job_id"], "it fits no node"))
            return False
        node, cores = plan.placed[m["job_id"]][m["task"]]
        token = uuid.uuid4().hex
        # Record the token before claiming, so the leak sweep recognises the claim as this migration's.
        if self.store.migrations.col.update_one({"_id": m["_id"], "state": mg.REQUESTED, "token": None},
                                                {"$set": {"token": token, "target": node}}).modified_count != 1:
            return False
        alloc = Alloc(m["job_id"], m["task"], tuple(cores), t["mem_bytes"], token, tuple(sorted(host_ports(t))))
        if self.store.workers.claim(node, [alloc]) is None:
            self.store.migrations.col.update_one({"_id": m["_id"], "state": mg.REQUESTED},
                                                 {"$set": {"token": None, "target": None}})
            return False  # lost a race: the next pass re-plans
        if self.store.migrations.advance(m["_id"], mg.PLACED, target=node, cpuset=list(cores),
                                         mem=t["mem_bytes"]) is None:
            self.store.workers.release(node, alloc.key, token)
            return False
        log.info("migration %s: %s/%s from %s to %s cores %s", m["_id"], m["job_id"], m["task"], m["source"],
                 node, cores)
        self.hint_nodes(m["job_id"])  # the GM's stop hint reaches the nodes (it only acts on cancelled jobs)
        return True
