"""Running tasks: update their resources, checkpoint them, migrate them (one by one or in groups).

    PATCH  /api/v1/jobs/{id}/tasks/{task}               new cores/cpuset/memory, re-claimed atomically
    POST   /api/v1/jobs/{id}/tasks/{task}/checkpoints   checkpoint (leave running, or stop)
    GET    /api/v1/jobs/{id}/tasks/{task}/checkpoints   its checkpoints
    GET    /api/v1/checkpoints/{id}, DELETE …           one checkpoint
    POST   /api/v1/jobs/{id}/tasks/{task}/migrate       to a node, or "any" (the active strategy picks)
    POST   /api/v1/migrations                           several tasks or whole jobs; a result per item
    GET    /api/v1/migrations[/{id}]                    their progress
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask import request
from flask_restx import Namespace, Resource

from Common.api import ERROR_SCHEMA, int_arg, json_body, require_token
from Common.errors import APIError, Conflict, Invalid, NotFound, Unschedulable
from Common.jobspec import NODE_NAME, cpuset_field
from Common.resources import DOCKER_MIN_MEMORY, format_cpuset, parse_memory
from Common.states import TaskState
from Common.store import migrations as mg
from Common.store.workers import READY, alloc_key
from FrontEnd.context import ctx
from FrontEnd.views import job_view

tasks_ns = Namespace("tasks", description="Running tasks: update resources, checkpoint, migrate")
checkpoints_ns = Namespace("checkpoints", description="CRIU checkpoints of tasks")
migrations_ns = Namespace("migrations", description="Task migrations, one by one or in groups")
error = tasks_ns.schema_model("Error", ERROR_SCHEMA)
ck_error = checkpoints_ns.schema_model("Error", ERROR_SCHEMA)
mg_error = migrations_ns.schema_model("Error", ERROR_SCHEMA)

ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
TASK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")

UPDATE_SCHEMA = {"type": "object", "additionalProperties": False, "minProperties": 1, "example":
                 {"req_cores": 2, "mem_limit": "128m"}, "properties": {
                     "req_cores": {"type": "integer", "minimum": 1, "maximum": 1024},
                     "cpuset_cpus": {"type": "string", "description": "exact cores on the task's node"},
                     "mem_limit": {"type": "string", "description": "'128m', '1g'; at least 6m"}}}
CHECKPOINT_BODY = {"type": "object", "additionalProperties": False, "example": {"leave_running": True},
                   "properties": {"leave_running": {"type": "boolean", "description": "default true; false "
                                                    "stops the task (CANCELLED) once checkpointed"},
                                  "keep": {"type": "boolean", "description": "default false: the checkpoint is "
                                           "deleted when its job ends; true: kept until DELETE"}}}
MIGRATE_BODY = {"type": "object", "additionalProperties": False, "example": {"target": "any"},
                "properties": {"target": {"type": "string", "description": "a worker's name, or 'any'"}}}
GROUP_BODY = {"type": "object", "required": ["items"], "additionalProperties": False, "example": {
    "items": [{"job_id": "job-0193f2a1b2c3-7f3a2b", "task": "t1", "target": "any"},
              {"job_id": "job-0193f2a1b2c4-1a2b3c"}]}, "properties": {"items": {
                  "type": "array", "minItems": 1, "maxItems": 100, "items": {
                      "type": "object", "required": ["job_id"], "additionalProperties": False, "properties": {
                          "job_id": {"type": "string"}, "task": {"type": "string", "description": "omit: every task"},
                          "target": {"type": "string", "description": "a worker or 'any' (default)"}}}}}}
CHECKPOINT_VIEW = {"type": "object", "required": ["id", "state"], "properties": {
    "id": {"type": "string"}, "state": {"type": "string", "example": "DONE"}, "job_id": {"type": "string"},
    "task": {"type": "string"}, "node": {"type": "string"}, "size": {"type": "integer"},
    "attempts": {"type": "integer", "description": "failed tries so far (the engine refused; retried with backoff)"},
    "last_error": {"type": "string", "x-nullable": True}}}
MIGRATION_VIEW = {"type": "object", "required": ["id", "state"], "properties": {
    "id": {"type": "string"}, "state": {"type": "string", "example": "PLACED"}, "job_id": {"type": "string"},
    "task": {"type": "string"}, "source": {"type": "string"}}}
GROUP_VIEW = {"type": "object", "required": ["group", "results"], "properties": {
    "group": {"type": "string"}, "results": {"type": "array", "items": {"type": "object"}}}}
LIST_VIEW = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array",
                                                                              "items": {"type": "object"}}}}

update_body = tasks_ns.schema_model("TaskUpdate", UPDATE_SCHEMA)
checkpoint_body = tasks_ns.schema_model("CheckpointRequest", CHECKPOINT_BODY)
migrate_body = tasks_ns.schema_model("MigrateRequest", MIGRATE_BODY)
group_body = migrations_ns.schema_model("GroupMigration", GROUP_BODY)
checkpoint_view = tasks_ns.schema_model("Checkpoint", CHECKPOINT_VIEW)
migration_view = tasks_ns.schema_model("Migration", MIGRATION_VIEW)
ck_view = checkpoints_ns.schema_model("Checkpoint", CHECKPOINT_VIEW)
mg_view = migrations_ns.schema_model("Migration", MIGRATION_VIEW)
group_view = migrations_ns.schema_model("GroupResult", GROUP_VIEW)
task_list = tasks_ns.schema_model("CheckpointList", LIST_VIEW)
mg_list = migrations_ns.schema_model("MigrationList", LIST_VIEW)


def _obj(body: Any, allowed: set[str], where: str = "body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid(f"{where} must be an object", field=where)
    for k in body:
        if k not in allowed:
            raise Invalid(f"unknown field {k!r}", field=k if where == "body" else f"{where}.{k}")
    return body


def _running_task(job_id: str, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    doc = ctx().store.jobs.get(job_id) if ID.match(job_id) else None
    if doc is None:
        raise NotFound(f"no job {job_id!r}", field="job_id")
    if not TASK.match(task) or task not in doc["tasks"]:
        raise NotFound(f"job {job_id} has no task {task!r}", field="task")
    t = doc["tasks"][task]
    if t["state"] != TaskState.RUNNING.value or doc.get("cancel_requested"):
        raise Conflict(f"task {task} is {t['state']}{' (cancelling)' if doc.get('cancel_requested') else ''}; "
                       "only a running task can be changed", field="task")
    return doc, t


def checkpoint_view_of(c: dict[str, Any]) -> dict[str, Any]:
    return {"id": c["_id"], "state": c["state"], "job_id": c["job_id"], "task": c["task"], "attempt": c["attempt"],
            "node": c["node"], "leave_running": c["leave_running"], "keep": bool(c.get("keep")),
            "purpose": c["purpose"],
            "files": len(c.get("files") or []), "size": c.get("size", 0), "created_at": c["created_at"],
            "done_at": c.get("done_at"), "reason": c.get("reason"), "timings": c.get("timings") or {},
            "attempts": c.get("attempts", 0), "last_error": c.get("last_error")}


def migration_view_of(m: dict[str, Any]) -> dict[str, Any]:
    return {"id": m["_id"], "state": m["state"], "job_id": m["job_id"], "task": m["task"], "attempt": m["attempt"],
            "source": m["source"], "request": m["request"], "target": m.get("target"),
            "cpuset": format_cpuset(m["cpuset"]) if m.get("cpuset") else None, "mode": m["mode"],
            "checkpoint_id": m.get("checkpoint_id"), "reason": m.get("reason"), "group": m.get("group"),
            "times": m.get("times") or {}, "timings": m.get("timings") or {}}


# ---- update -----------------------------------------------------------------------------------------
@tasks_ns.route("/<string:job_id>/tasks/<string:task>")
@tasks_ns.param("job_id", "the job's id")
@tasks_ns.param("task", "the task's name")
class Task(Resource):
    @tasks_ns.doc(security="bearer", body=update_body)
    @tasks_ns.response(202, "Re-claimed and recorded; the task's Worker applies it (see tasks.{task}.applied)")
    @tasks_ns.response(400, "Invalid body (the field is named)", error)
    @tasks_ns.response(401, "Missing or wrong bearer token", error)
    @tasks_ns.response(404, "No such job or task", error)
    @tasks_ns.response(409, "Not running, or its node lacks the resources now (the reason says which)", error)
    @tasks_ns.response(422, "More than its node has at all", error)
    @require_token
    def patch(self, job_id: str, task: str):
        """Change a running task's cores and memory. 202; 400; 401; 404; 409; 422."""
        body = _obj(json_body(), {"req_cores", "cpuset_cpus", "mem_limit"})
        if not body:
            raise Invalid("give req_cores, cpuset_cpus and/or mem_limit", field="body")
        _, t = _running_task(job_id, task)
        exact = None
        if "cpuset_cpus" in body:
            exact = cpuset_field(body["cpuset_cpus"], "cpuset_cpus")
        cores = t["req_cores"]
        if "req_cores" in body:
            if isinstance(body["req_cores"], bool) or not isinstance(body["req_cores"], int) \
                    or not 1 <= body["req_cores"] <= 1024:
                raise Invalid("req_cores must be an integer 1..1024", field="req_cores")
            cores = body["req_cores"]
        if exact is not None:
            if "req_cores" in body and len(exact) != cores:
                raise Invalid(f"cpuset_cpus names {len(exact)} cores but req_cores is {cores}", field="cpuset_cpus")
            cores = len(exact)
        mem, mem_text = t["mem_bytes"], t["mem_limit"]
        if "mem_limit" in body:
            try:
                mem = parse_memory(body["mem_limit"])
            except ValueError as exc:
                raise Invalid(f"mem_limit: {exc}", field="mem_limit") from None
            if mem < DOCKER_MIN_MEMORY:
                raise Invalid("mem_limit must be at least 6m (Docker's minimum)", field="mem_limit")
            mem_text = str(body["mem_limit"])
        c = ctx()
        node = c.store.workers.get(t["node"]) or {}
        if exact is not None and not set(exact) <= set(node.get("cores", [])):
            raise Invalid(f"cpuset_cpus: not all of those cores exist on {t['node']}", field="cpuset_cpus")
        if cores > len(node.get("cores", [])) or mem > node.get("mem_total", 0):
            raise Unschedulable(f"{t['node']} has {len(node.get('cores', []))} cores and "
                                f"{node.get('mem_total', 0)} bytes in all", field="req_cores")
        result = c.store.workers.resize(t["node"], alloc_key(job_id, task), t.get("claim_token") or "", cores, mem,
                                        exact)
        if isinstance(result, str):
            raise Conflict(result, field="req_cores", retry_after=2)
        gen = c.store.jobs.update_resources(job_id, task, t["attempt"], t["claim_token"], result["cores"], mem,
                                            mem_text)
        if gen is None:
            raise Conflict(f"task {task} changed meanwhile; retry", field="task", retry_after=1)
        c.hint_jm("job_changed", job_id)  # the JM has the GM hint the task's node
        return job_view(c.store.jobs.get(job_id), logs=True), 202


# ---- checkpoints --------------------------------------------------------------------------------------
@tasks_ns.route("/<string:job_id>/tasks/<string:task>/checkpoints")
@tasks_ns.param("job_id", "the job's id")
@tasks_ns.param("task", "the task's name")
class TaskCheckpoints(Resource):
    @tasks_ns.response(200, "The task's checkpoints, newest first", task_list)
    @tasks_ns.response(404, "No such job or task", error)
    def get(self, job_id: str, task: str):
        """A task's checkpoints. 200; 404."""
        doc = ctx().store.jobs.get(job_id) if ID.match(job_id) else None
        if doc is None or task not in doc["tasks"]:
            raise NotFound(f"no task {task!r} in job {job_id!r}", field="task")
        limit = int_arg("limit", 50, 1, 500)
        return {"items": [checkpoint_view_of(x) for x in ctx().store.checkpoints.for_task(job_id, task, limit)]}

    @tasks_ns.doc(security="bearer", body=checkpoint_body)
    @tasks_ns.response(202, "Requested; its node checkpoints it with CRIU", checkpoint_view)
    @tasks_ns.response(400, "Invalid body", error)
    @tasks_ns.response(401, "Missing or wrong bearer token", error)
    @tasks_ns.response(404, "No such job or task", error)
    @tasks_ns.response(409, "The task is not running, or the checkpoint quota would be exceeded (with the figures)",
                       error)
    @tasks_ns.response(422, "The task is an EPM holding EVMs (network namespaces cannot be checkpointed)", error)
    @require_token
    def post(self, job_id: str, task: str):
        """Checkpoint a running task (leave it running, or stop it). 202; 400; 401; 404; 409; 422."""
        body = _obj(json_body() if request.data else {}, {"leave_running", "keep"})
        leave = body.get("leave_running", True)
        if not isinstance(leave, bool):
            raise Invalid("leave_running must be true or false", field="leave_running")
        keep = body.get("keep", False)
        if not isinstance(keep, bool):
            raise Invalid("keep must be true or false", field="keep")
        _, t = _running_task(job_id, task)
        if t.get("evms"):
            raise Unschedulable("an EPM holding EVMs cannot be checkpointed by CRIU (network namespaces); "
                                "migrate it instead: its EVMs are re-created from their records", field="task")
        c = ctx()
        quota = c.cfg.storage.checkpoint_quota_bytes
        _check_quota(c.store.checkpoints.used_bytes(), int(t.get("mem_bytes") or 0), quota)
        ckpt = c.store.checkpoints.request(job_id, task, t["attempt"], t["node"], leave, keep=keep)
        c.hint_jm("job_changed", job_id)  # the JM has the GM hint the task's node
        return checkpoint_view_of(ckpt), 202


def _check_quota(used: int, estimate: int, quota: int) -> None:
    """409 when the deployment's checkpoints plus this one could exceed the quota. A CRIU image holds the
    task's memory pages, so the task's memory limit bounds it (the Worker checks the real size again)."""
    if used + estimate > quota:
        raise Conflict(f"checkpoint quota: {used} bytes stored + up to {estimate} for this task (its memory limit) "
                       f"> quota {quota} bytes; delete checkpoints (DELETE /api/v1/checkpoints/{{id}}) or raise "
                       "storage.checkpoint_quota_bytes", used_bytes=used, estimate_bytes=estimate,
                       quota_bytes=quota)


@checkpoints_ns.route("/<string:ckpt_id>")
@checkpoints_ns.param("ckpt_id", "the checkpoint's id")
class Checkpoint(Resource):
    @checkpoints_ns.response(200, "The checkpoint", ck_view)
    @checkpoints_ns.response(404, "No such checkpoint", ck_error)
    def get(self, ckpt_id: str):
        """One checkpoint. 200; 404."""
        c = ctx().store.checkpoints.get(ckpt_id) if ID.match(ckpt_id) else None
        if c is None:
            raise NotFound(f"no checkpoint {ckpt_id!r}", field="ckpt_id")
        return checkpoint_view_of(c)

    @checkpoints_ns.doc(security="bearer")
    @checkpoints_ns.response(200, "Deleted, with its files", ck_view)
    @checkpoints_ns.response(401, "Missing or wrong bearer token", ck_error)
    @checkpoints_ns.response(404, "No such checkpoint", ck_error)
    @checkpoints_ns.response(409, "Still being taken", ck_error)
    @require_token
    def delete(self, ckpt_id: str):
        """Delete a checkpoint and its files. 200; 401; 404; 409."""
        store = ctx().store.checkpoints
        c = store.get(ckpt_id) if ID.match(ckpt_id) else None
        if c is None:
            raise NotFound(f"no checkpoint {ckpt_id!r}", field="ckpt_id")
        if c["state"] == "REQUESTED":
            raise Conflict("the checkpoint is still being taken", field="ckpt_id", retry_after=2)
        store.delete(ckpt_id)
        return checkpoint_view_of(c)


# ---- migration ----------------------------------------------------------------------------------------
def request_migration(job_id: str, task: str, target: str, group: str | None = None) -> dict[str, Any]:
    """Validate and record one task's migration; APIError when it cannot be asked for."""
    if target != "any" and not NODE_NAME.match(target):
        raise Invalid("target must be a worker's name or 'any'", field="target")
    _, t = _running_task(job_id, task)
    c = ctx()
    if target != "any":
        w = c.store.workers.get(target)
        if w is None:
            raise NotFound(f"no worker {target!r}", field="target")
        if w.get("state") != READY:
            raise Conflict(f"worker {target} is {w.get('state')}", field="target")
        if target == t["node"]:
            raise Conflict(f"task {task} already runs on {target}", field="target")
    m = c.store.migrations.create(job_id, task, t["attempt"], t["node"], t.get("claim_token") or "", target,
                                  "recreate" if t.get("evms") else "criu", group)
    if not c.store.jobs.set_migration(job_id, task, t["attempt"], m["_id"]):
        c.store.migrations.advance(m["_id"], mg.FAILED, reason="another migration of this task is in progress")
        raise Conflict(f"task {task} is already being migrated", field="task", retry_after=5)
    return m


@tasks_ns.route("/<string:job_id>/tasks/<string:task>/migrate")
@tasks_ns.param("job_id", "the job's id")
@tasks_ns.param("task", "the task's name")
class Migrate(Resource):
    @tasks_ns.doc(security="bearer", body=migrate_body)
    @tasks_ns.response(202, "Requested: placed on the target, checkpointed, restored there", migration_view)
    @tasks_ns.response(400, "Invalid body", error)
    @tasks_ns.response(401, "Missing or wrong bearer token", error)
    @tasks_ns.response(404, "No such job, task or target", error)
    @tasks_ns.response(409, "Not running, already migrating, or the target is not ready", error)
    @require_token
    def post(self, job_id: str, task: str):
        """Move a running task to another node (CRIU checkpoint → restore). 202; 400; 401; 404; 409."""
        body = _obj(json_body() if request.data else {}, {"target"})
        target = body.get("target", "any")
        if not isinstance(target, str):
            raise Invalid("target must be a string", field="target")
        m = request_migration(job_id, task, target)
        ctx().hint_jm("migration_requested", job_id)
        return migration_view_of(m), 202


@migrations_ns.route("")
class Migrations(Resource):
    @migrations_ns.doc(params={"job_id": "only this job's", "group": "only this group's"})
    @migrations_ns.response(200, "Migrations, newest first", mg_list)
    @migrations_ns.response(400, "Invalid query", mg_error)
    def get(self):
        """List migrations. 200; 400."""
        job_id, group = request.args.get("job_id") or None, request.args.get("group") or None
        for name, value in (("job_id", job_id), ("group", group)):
            if value is not None and not ID.match(value):
                raise Invalid(f"{name} is not a valid id", field=name)
        limit = int_arg("limit", 100, 1, 500)
        return {"items": [migration_view_of(m) for m in ctx().store.migrations.query(job_id, group, limit)]}

    @migrations_ns.doc(security="bearer", body=group_body)
    @migrations_ns.response(202, "Each item's result (its migration, or its error)", group_view)
    @migrations_ns.response(400, "Invalid body (the field is named)", mg_error)
    @migrations_ns.response(401, "Missing or wrong bearer token", mg_error)
    @require_token
    def post(self):
        """Migrate several tasks or whole jobs at once; a result per task. 202; 400; 401."""
        body = _obj(json_body(), {"items"})
        items = body.get("items")
        if not isinstance(items, list) or not 1 <= len(items) <= 100:
            raise Invalid("items must be a list of 1..100 objects", field="items")
        for i, it in enumerate(items):
            _obj(it, {"job_id", "task", "target"}, f"items[{i}]")
            for k in ("job_id", "task", "target"):
                if k in it and not isinstance(it[k], str):
                    raise Invalid(f"items[{i}].{k} must be a string", field=f"items[{i}].{k}")
            if "job_id" not in it:
                raise Invalid(f"items[{i}].job_id is required", field=f"items[{i}].job_id")
        group = f"grp-{uuid.uuid4().hex[:12]}"
        results = []
        c = ctx()
        for i, it in enumerate(items):
            job = c.store.jobs.get(it["job_id"]) if ID.match(it["job_id"]) else None
            tasks = [it["task"]] if "task" in it else sorted((job or {}).get("tasks", {}))
            if job is None:
                results.append({"item": i, "job_id": it["job_id"], "status": 404, "error": "no such job"})
                continue
            for task in tasks:
                try:
                    m = request_migration(it["job_id"], task, it.get("target", "any"), group)
                    results.append({"item": i, "job_id": it["job_id"], "task": task, "status": 202,
                                    "migration": migration_view_of(m)})
                except APIError as exc:
                    results.append({"item": i, "job_id": it["job_id"], "task": task, "status": exc.status,
                                    "error": exc.message})
        c.hint_jm("migration_requested")
        return {"group": group, "results": results}, 202


@migrations_ns.route("/<string:mig_id>")
@migrations_ns.param("mig_id", "the migration's id")
class Migration(Resource):
    @migrations_ns.response(200, "The migration", mg_view)
    @migrations_ns.response(404, "No such migration", mg_error)
    def get(self, mig_id: str):
        """One migration and its timings. 200; 404."""
        m = ctx().store.migrations.get(mig_id) if ID.match(mig_id) else None
        if m is None:
            raise NotFound(f"no migration {mig_id!r}", field="mig_id")
        return migration_view_of(m)
