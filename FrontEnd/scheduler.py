"""/api/v1/scheduler (show and set the placement strategy and its options) and /api/v1/queue (why pending).

The active strategy and options live in MongoDB (settings "strategy" and "scheduler_options"), so they
survive restarts; the JobManager reads them at every pass.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from flask_restx import Namespace, Resource

from Common.api import ERROR_SCHEMA, int_arg, json_body, require_token
from Common.errors import Invalid
from Common.placement import STRATEGIES, OptionError, SchedulerOptions, parse_options, place, stored_options
from Common.placement.options import DESCRIPTIONS
from Common.placement.snapshot import job_request_from_doc, node_from_worker
from Common.placement.subnets import SubnetGate, held_subnets
from FrontEnd.context import CLUSTER_SNAPSHOT, ctx

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "preemption": {"type": "boolean", "description": DESCRIPTIONS["preemption"], "example": False},
        "aging_seconds": {"type": "number", "minimum": 0, "maximum": 31_536_000,
                          "description": DESCRIPTIONS["aging_seconds"], "example": 60},
        "reservation": {"type": "boolean", "description": DESCRIPTIONS["reservation"], "example": True},
        "search_iterations": {"type": "integer", "minimum": 0, "maximum": 10_000_000,
                              "description": DESCRIPTIONS["search_iterations"], "example": 100000},
    },
}

SCHEDULER_SCHEMA = {
    "type": "object",
    "required": ["strategy", "options", "strategies"],
    "properties": {
        "strategy": {"type": "string", "example": "first-fit"},
        "options": {**OPTIONS_SCHEMA, "required": sorted(OPTIONS_SCHEMA["properties"])},  # type: ignore[dict-item]
        "strategies": {"type": "array", "items": {"type": "object", "required": ["name", "summary"], "properties": {
            "name": {"type": "string"}, "summary": {"type": "string"}}}},
    },
}

SCHEDULER_UPDATE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "example": {"strategy": "best-fit-decreasing", "options": {"preemption": False}},
    "properties": {
        "strategy": {"type": "string", "enum": sorted(STRATEGIES), "example": "best-fit-decreasing"},
        "options": {**OPTIONS_SCHEMA, "description": "only the options given change"},
    },
}

QUEUE_ITEM_SCHEMA = {
    "type": "object",
    "required": ["position", "id", "name", "priority", "created_at", "waiting_seconds", "tasks", "cores",
                 "mem_bytes", "reason", "never_fits"],
    "properties": {
        "position": {"type": "integer", "description": "1 = considered first"},
        "id": {"type": "string"},
        "name": {"type": "string"},
        "priority": {"type": "integer"},
        "effective_priority": {"description": "priority strategy: the aged priority (null otherwise)"},
        "created_at": {"type": "number"},
        "waiting_seconds": {"type": "number"},
        "tasks": {"type": "integer"},
        "cores": {"type": "integer", "description": "cores asked for in all"},
        "mem_bytes": {"type": "integer", "description": "memory asked for in all"},
        "reason": {"type": "string", "example": "task t1 needs 4 cores and 64m on one node; the most free cores is 2 "
                                                "on w1 (largest contiguous block 2)"},
        "never_fits": {"type": "boolean", "description": "it cannot fit even the idle cluster; waits for workers"},
        "reserved_nodes": {"type": "array", "items": {"type": "string"},
                           "description": "priority strategy: nodes held back for this job"},
    },
}

QUEUE_SCHEMA = {
    "type": "object",
    "required": ["strategy", "count", "items"],
    "properties": {
        "strategy": {"type": "string"},
        "count": {"type": "integer", "description": "waiting jobs in all (items holds at most limit)"},
        "items": {"type": "array", "items": QUEUE_ITEM_SCHEMA},
    },
}

ns = Namespace("scheduler", description="The placement strategy and its options (persisted in MongoDB)")
scheduler_model = ns.schema_model("Scheduler", SCHEDULER_SCHEMA)
scheduler_update = ns.schema_model("SchedulerUpdate", SCHEDULER_UPDATE_SCHEMA)
error = ns.schema_model("Error", ERROR_SCHEMA)

queue_ns = Namespace("queue", description="Waiting jobs in the order the active strategy considers them, and why")
queue_model = queue_ns.schema_model("Queue", QUEUE_SCHEMA)
queue_error = queue_ns.schema_model("Error", ERROR_SCHEMA)


def active() -> tuple[str, SchedulerOptions]:
    c = ctx()
    stored = c.store.settings.get_many(["strategy", "scheduler_options"])
    name = stored.get("strategy", c.cfg.jobmanager.strategy)
    if name not in STRATEGIES:
        name = c.cfg.jobmanager.strategy if c.cfg.jobmanager.strategy in STRATEGIES else "first-fit"
    return name, stored_options(stored.get("scheduler_options"))


def scheduler_view() -> dict[str, Any]:
    name, options = active()
    return {"strategy": name, "options": options.to_dict(),
            "strategies": [{"name": n, "summary": s.summary} for n, s in STRATEGIES.items()]}


@ns.route("")
class Scheduler(Resource):
    @ns.response(200, "The active strategy, its options and every strategy there is", scheduler_model)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self):
        """The active placement strategy and options. 200; 503."""
        return scheduler_view()

    @ns.doc(security="bearer", body=scheduler_update)
    @ns.response(200, "Changed and stored; the JobManager uses it from its next pass", scheduler_model)
    @ns.response(400, "Unknown strategy or invalid option (the field is named)", error)
    @ns.response(401, "Missing or wrong bearer token", error)
    @ns.response(503, "MongoDB unavailable", error)
    @require_token
    def put(self):
        """Set the strategy and/or options (options not given keep their value). 200; 400; 401; 503."""
        body = json_body()
        if not isinstance(body, dict):
            raise Invalid("the body must be an object with strategy and/or options", field="body")
        for key in body:
            if key not in ("strategy", "options"):
                raise Invalid(f"unknown field {key!r}; give strategy and/or options", field=key)
        if not body:
            raise Invalid("give strategy and/or options", field="body")
        name, options = active()
        if "strategy" in body:
            name = body["strategy"]
            if not isinstance(name, str) or name not in STRATEGIES:
                raise Invalid(f"strategy must be one of {sorted(STRATEGIES)}", field="strategy")
        if "options" in body:
            try:
                options = parse_options(body["options"], options)
            except OptionError as exc:
                raise Invalid(str(exc), field=exc.field) from None
        c = ctx()
        c.store.settings.put("scheduler_options", options.to_dict())
        c.store.settings.put("strategy", name)
        c.cache.pop(CLUSTER_SNAPSHOT, None)
        c.store.events.record("scheduler", strategy=name, options=options.to_dict())
        c.hint_jm("scheduler_changed")
        return scheduler_view()


@queue_ns.route("")
class Queue(Resource):
    @queue_ns.doc(params={"limit": {"description": "at most this many jobs (1-1000, default 100)", "type": "integer",
                                    "in": "query"}})
    @queue_ns.response(200, "Waiting jobs in order, each with the reason it waits", queue_model)
    @queue_ns.response(400, "Invalid query parameter", queue_error)
    @queue_ns.response(503, "MongoDB unavailable", queue_error)
    def get(self):
        """Waiting jobs in the order the active strategy considers them, each with why it waits. 200; 400."""
        limit = int_arg("limit", 100, 1, 1000)
        c = ctx()
        name, options = active()
        docs = {d["_id"]: d for d in c.store.jobs.queued()}
        workers = [node_from_worker(w) for w in c.store.workers.ready()]
        now = time.time()
        # The same plan the JobManager would make now, without the min-slack search (it changes where
        # jobs go, never which jobs wait or why).
        plan = place([job_request_from_doc(d) for d in docs.values()], workers, name,
                     replace(options, search_iterations=0, preemption=False), now)
        held, pending_auto = held_subnets(c.store.networks.active(), c.store.jobs.placed_networks())
        no_subnet = SubnetGate(c.cfg.globalmanager.network_pool, c.cfg.globalmanager.network_prefix).check(
            [docs[j] for j in plan.order], held, pending_auto)
        items = []
        for position, job_id in enumerate(plan.order[:limit], 1):
            d = docs[job_id]
            tasks = d["tasks"].values()
            reason = (no_subnet.get(job_id) or plan.waiting.get(job_id)
                      or "fits now: the JobManager places it at its next pass")
            items.append({
                "position": position, "id": job_id, "name": d["name"], "priority": d.get("priority", 0),
                "effective_priority": plan.effective_priority.get(job_id),
                "created_at": d["created_at"], "waiting_seconds": round(max(0.0, now - d["created_at"]), 3),
                "tasks": len(d["tasks"]), "cores": sum(t["req_cores"] for t in tasks),
                "mem_bytes": sum(t["mem_bytes"] for t in tasks), "reason": reason,
                "never_fits": job_id in plan.never, "reserved_nodes": plan.reserved.get(job_id, []),
            })
        return {"strategy": name, "count": len(docs), "items": items}
