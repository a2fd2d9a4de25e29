"""JSON schemas of the FrontEnd's bodies, as published in the OpenAPI document.

They describe the shape; ``Common.jobspec`` checks the meaning as well (cpuset against req_cores,
volumes under the allowed root, ...), and answers 400 naming the field either way.
"""

from __future__ import annotations

from Common.jobspec import CONTAINER_NAME, IMAGE_REF, JOB_NAME, MAX_CORES_PER_TASK, MAX_PRIORITY, NODE_NAME, TASK_NAME

SAMPLE_JOB = {
    "job_name": "demo-job",
    "priority": 0,
    "job_info": {
        "network": {"name": "demo-net", "driver": "overlay"},
        "tasks": {
            "t1": {"image": "rswarm/task:1", "command": "sleep 2", "req_cores": 1, "mem_limit": "64m"},
            "t2": {"image": "rswarm/task:1", "command": "sleep 2", "req_cores": 1, "mem_limit": "64m"},
        },
    },
}

EVMS_SCHEMA = {
    "type": "object",
    "description": "EVMs (network namespaces) in the job's EPMs; see docs/evms.md. At job level (job_info.evms) "
                   "every task is an EPM and the EVMs are spread by `distribution`; on a task, that task is an "
                   "EPM holding `count` EVMs. EPM tasks run the image and command they name (default: "
                   "rswarm/task:1 sleeping; the node's EVM agent makes the EVMs from outside, the EPM holds no "
                   "privilege) and get memory "
                   "sized from their EVMs (about 40 MiB + 320 KiB per EVM of the full set) unless mem_limit is "
                   "given, which must then be large enough.",
    "example": {"count": 100, "subnet": "10.60.0.0/24", "devices": "full", "distribution": "uniform",
                "rate": {"kind": "rps", "rps": 50}},
    "properties": {
        "count": {"type": "integer", "minimum": 0, "description": "how many EVMs"},
        "subnet": {"type": "string", "example": "10.60.0.0/24", "description": "the EVMs' IPv4 CIDR (/8-/29)"},
        "gateway": {"type": "string", "description": "in the subnet; default its first address"},
        "devices": {"type": "string", "enum": ["full", "lean"],
                    "description": "full: veth pair + tap + bridge per EVM (Merak v0.2); lean: one veth into a "
                                   "shared bridge per EPM (at most 1,023 EVMs per EPM)"},
        "distribution": {"description": "job level only: 'uniform', {kind: manual, counts: {task: n}}, "
                                        "{kind: random, seed?} or {kind: skew, s?, seed?}"},
        "rate": {"description": "'sequential', {kind: rps, rps, burst?} or {kind: random, mean_interval, seed?}"},
        "vpc": {"type": "string"}, "tenant": {"type": "string"}, "security_group": {"type": "string"},
    },
}

TASK_SCHEMA = {
    "type": "object",
    "required": ["image", "req_cores"],
    "additionalProperties": False,
    "properties": {
        "image": {"type": "string", "pattern": IMAGE_REF.pattern, "example": "rswarm/task:1",
                  "description": "a locally present image (EPM tasks, those with EVMs, may leave it out)"},
        "command": {"description": "string (split like a shell would, never run by one) or list of strings",
                    "example": "sleep 2"},
        "req_cores": {"type": "integer", "minimum": 1, "maximum": MAX_CORES_PER_TASK, "example": 1},
        "mem_limit": {"type": "string", "pattern": r"^\d{1,6}[mMgG]$", "example": "64m",
                      "description": "'64m', '1g' (or a number of bytes); at least 6m"},
        "container_name": {"type": "string", "pattern": CONTAINER_NAME.pattern,
                           "description": "extra DNS name on the job network"},
        "ports": {"type": "object", "additionalProperties": {"type": "integer"},
                  "example": {"8080/tcp": 18080}},
        "volumes": {"type": "object", "description": "host path <volume_root>/<rel> -> {bind, mode}; the node binds "
                    "<volume_root>/<job id>/<rel>, never through a symlink (not for EPM tasks)",
                    "additionalProperties": {"type": "object"}},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "node": {"type": "string", "pattern": NODE_NAME.pattern, "description": "manual placement: this worker"},
        "cpuset_cpus": {"type": "string", "maxLength": 256,
                        "description": "manual placement: these cores, e.g. '0-1' (at most 1,024 cores)"},
        "detach": {"type": "boolean", "description": "accepted for compatibility; always true"},
        "status": {"type": "string", "description": "accepted for compatibility; ignored"},
        "evms": EVMS_SCHEMA,
    },
}

JOB_SCHEMA = {
    "type": "object",
    "required": ["job_info"],
    "additionalProperties": False,
    "example": SAMPLE_JOB,
    "properties": {
        "job_name": {"type": "string", "pattern": JOB_NAME.pattern, "example": "demo-job"},
        "priority": {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY, "example": 0},
        "job_info": {
            "type": "object",
            "required": ["tasks"],
            "additionalProperties": False,
            "properties": {
                "network": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "example": "demo-net"},
                        "driver": {"type": "string", "enum": ["overlay", ""], "example": "overlay"},
                        "subnet": {"type": "string", "example": "10.30.0.0/24"},
                    },
                },
                "evms": EVMS_SCHEMA,
                "tasks": {
                    "type": "object",
                    "minProperties": 1,
                    "description": f"task name ({TASK_NAME.pattern}) -> task",
                    "additionalProperties": TASK_SCHEMA,
                },
            },
        },
        "status": {"type": "string", "description": "accepted for compatibility; ignored"},
        "start_time": {"description": "accepted for compatibility; ignored"},
        "end_time": {"description": "accepted for compatibility; ignored"},
    },
}

TASK_VIEW_SCHEMA = {
    "type": "object",
    "required": ["state", "attempt", "req_cores", "mem_limit", "image", "state_times"],
    "properties": {
        "state": {"type": "string", "example": "RUNNING"},
        "attempt": {"type": "integer"},
        "image": {"type": "string"},
        "req_cores": {"type": "integer"},
        "mem_limit": {"type": "string"},
        "node": {"description": "worker it was placed on (null until placed)"},
        "cpuset": {"description": "cores it holds, e.g. '0-1' (null until placed)"},
        "container_id": {"description": "null until created"},
        "container_name": {"description": "docker name of its container"},
        "ip": {"description": "its container's address on the job's network (null until it runs)"},
        "addresses": {"type": "object", "additionalProperties": {"type": "string"},
                      "description": "network name -> its container's IPv4 address, read from the engine "
                                     "once it started ({} until then)"},
        "exit_code": {"description": "null until it exits"},
        "reason": {"description": "why it failed, was cancelled or lost"},
        "log_tail": {"description": "the last 2 KB of its output, once it has exited; only with the bearer token "
                                    "(without it the key is left out)"},
        "state_times": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}

SAMPLE_JOB_VIEW = {
    "id": "job-0193f2a1b2c3-7f3a2b", "name": "demo-job", "state": "RUNNING", "priority": 0,
    "created_at": 1795364130.1, "state_times": {"QUEUED": 1795364130.1, "SCHEDULED": 1795364130.2,
                                                "RUNNING": 1795364131.0},
    "reason": None, "cancel_requested": False,
    "network": {"name": "demo-net", "driver": "overlay", "subnet": "10.201.3.0/24",
                "docker_name": "rsw-job-0193f2a1b2c3-7f3a2b"},
    "tasks": {"t1": {"state": "RUNNING", "attempt": 0, "image": "rswarm/task:1", "req_cores": 1, "mem_limit": "64m",
                     "node": "w1", "cpuset": "0", "container_id": "4f1c2d3e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b",
                     "container_name": "rsw-job-0193f2a1b2c3-7f3a2b-t1-0", "ip": "10.201.3.2",
                     "addresses": {"rsw-job-0193f2a1b2c3-7f3a2b": "10.201.3.2"}, "exit_code": None, "reason": None,
                     "log_tail": None, "state_times": {"PENDING": 1795364130.1, "SCHEDULED": 1795364130.2,
                                                       "STARTING": 1795364130.6, "RUNNING": 1795364131.0}}},
    "url": "/api/v1/jobs/job-0193f2a1b2c3-7f3a2b",
}

JOB_VIEW_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "state", "priority", "created_at", "state_times", "tasks", "url"],
    "example": SAMPLE_JOB_VIEW,
    "properties": {
        "id": {"type": "string", "example": "job-0193f2a1b2c3-7f3a2b"},
        "name": {"type": "string"},
        "state": {"type": "string", "example": "QUEUED"},
        "priority": {"type": "integer"},
        "created_at": {"type": "number"},
        "state_times": {"type": "object", "additionalProperties": {"type": "number"}},
        "reason": {"description": "why it waits or failed (null otherwise)"},
        "cancel_requested": {"type": "boolean"},
        "network": {"type": "object"},
        "tasks": {"type": "object", "additionalProperties": TASK_VIEW_SCHEMA},
        "url": {"type": "string"},
    },
}

JOB_CREATED_SCHEMA = {
    "type": "object",
    "required": ["id", "url", "state"],
    "properties": {
        "id": {"type": "string", "example": "job-0193f2a1b2c3-7f3a2b"},
        "url": {"type": "string", "example": "/api/v1/jobs/job-0193f2a1b2c3-7f3a2b"},
        "state": {"type": "string", "example": "QUEUED"},
    },
}

JOB_PAGE_SCHEMA = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {"type": "array", "items": JOB_VIEW_SCHEMA},
        "next": {"description": "pass as ?after= for the next page; null on the last page"},
    },
}

WORKER_VIEW_SCHEMA = {
    "type": "object",
    "required": ["id", "state", "cores", "free_cores", "mem_total", "mem_free"],
    "example": {"id": "w1", "state": "READY", "cores": "0-3", "free_cores": "2-3", "capacity_cores": 4,
                "free_core_count": 2, "mem_total": 8589934592, "mem_free": 8455716864, "tasks": 2,
                "heartbeat_at": 1795364131.2, "heartbeat_age_seconds": 0.8, "hollow": False},
    "properties": {
        "id": {"type": "string"},
        "state": {"type": "string", "example": "READY"},
        "cores": {"type": "string", "example": "0-1"},
        "free_cores": {"type": "string", "example": "1"},
        "capacity_cores": {"type": "integer"},
        "free_core_count": {"type": "integer"},
        "mem_total": {"type": "integer"},
        "mem_free": {"type": "integer"},
        "tasks": {"type": "integer"},
        "heartbeat_at": {"type": "number"},
        "heartbeat_age_seconds": {"type": "number"},
        "hollow": {"type": "boolean", "description": "an emulated node that runs no container (hollow worker)"},
    },
}

WORKER_LIST_SCHEMA = {
    "type": "object",
    "required": ["items"],
    "properties": {"items": {"type": "array", "items": WORKER_VIEW_SCHEMA}},
}


# ---- example error bodies, so that Swagger UI shows what each error really looks like ----------------
# (first match wins: (path fragment, method or "*", status) -> (message, field); "" matches every path)
_SAMPLE_JOB_ID = "job-0193f2a1b2c3-7f3a2b"
ERROR_EXAMPLES: list[tuple[str, str, int, str, str | None]] = [
    ("/jobs/{job_id}/evms/{evm_id}", "*", 404, f"no EVM '{_SAMPLE_JOB_ID}.v7' in job '{_SAMPLE_JOB_ID}'", "evm_id"),
    ("/jobs/{job_id}/evms/{evm_id}", "*", 409, f"EVM {_SAMPLE_JOB_ID}.v7 is deleted", "evm_id"),
    ("/jobs/{job_id}/evms/{evm_id}", "*", 400, "give at least one of vpc, tenant, security_group", "body"),
    ("/jobs/{job_id}/epms/{name}", "*", 404, f"no EPM 'e9' in job {_SAMPLE_JOB_ID} (EPMs: e0, e1)", "name"),
    ("/jobs/{job_id}/epms", "*", 400, "vm_limit must be between 1 and 100", "vm_limit"),
    ("/jobs/{job_id}/evms", "patch", 409, f"the EVM set of job {_SAMPLE_JOB_ID} changed meanwhile (another update, "
                                          "addition or deletion); read it again and retry", "job_id"),
    ("/jobs/{job_id}/evms", "patch", 400, "count must be between 0 and 100000", "count"),
    ("/jobs/{job_id}/evms", "post", 409, f"job {_SAMPLE_JOB_ID} is COMPLETED; EVMs are added to waiting or running "
                                         "jobs only", "job_id"),
    ("/jobs/{job_id}/evms", "post", 400, "count is required (how many EVMs to add)", "count"),
    ("/jobs/{job_id}/evms", "post", 413, "The data value transmitted exceeds the capacity limit.", None),
    ("/jobs/{job_id}/evms", "patch", 413, "The data value transmitted exceeds the capacity limit.", None),
    ("/jobs/{job_id}/evms", "get", 400, "state must be one of ['PENDING', 'DEPLOYING', 'READY', 'ERROR', 'DELETED']",
     "state"),
    ("/jobs/{job_id}/evms", "delete", 400, f"ids: 'vm1' is not an EVM id of job {_SAMPLE_JOB_ID}", "ids"),
    ("/jobs/{job_id}/events", "*", 400, "since must be ISO-8601 (e.g. 2026-11-22T10:00:00Z) or epoch seconds",
     "since"),
    ("/events", "*", 400, "type 'Job State' is not an event type (known: claim, job_requeued, job_state, ...)",
     "type"),
    ("/jobs/{job_id}/tasks/{task}/checkpoints", "post", 422, "an EPM holding EVMs cannot be checkpointed by CRIU "
     "(network namespaces); migrate it instead: its EVMs are re-created from their records", "task"),
    ("/jobs/{job_id}/tasks/{task}/migrate", "post", 409, "task t1 is already being migrated", "task"),
    ("/jobs/{job_id}/tasks/{task}", "patch", 409, "needs 2 more cores on w1, which has 1 free (the task holds 1)",
     "req_cores"),
    ("/jobs/{job_id}/tasks/{task}", "patch", 422, "w1 has 2 cores and 25276502016 bytes in all", "req_cores"),
    ("/jobs/{job_id}/tasks/{task}", "*", 400, "mem_limit: 'lots' is not a size such as '64m', '1g' or a number "
     "of bytes", "mem_limit"),
    ("/jobs/{job_id}/tasks/{task}", "*", 404, "job job-0193f2a1b2c3-7f3a2b has no task 'nope'", "task"),
    ("/jobs/{job_id}/tasks/{task}", "*", 409, "task t1 is COMPLETED; only a running task can be changed", "task"),
    ("/checkpoints/{ckpt_id}", "*", 404, "no checkpoint 'ck-0193f2a1b2c3-7f3a2b'", "ckpt_id"),
    ("/migrations", "*", 400, "items must be a list of 1..100 objects", "items"),
    ("/migrations/{mig_id}", "*", 404, "no migration 'mg-0193f2a1b2c3-7f3a2b'", "mig_id"),
    ("/jobs/{job_id}", "*", 404, f"no job '{_SAMPLE_JOB_ID}'", "job_id"),
    ("/jobs", "get", 400, "state must be one of ['QUEUED', 'SCHEDULED', 'RUNNING', 'COMPLETED', 'FAILED', "
                          "'CANCELLED']", "state"),
    ("/jobs", "post", 400, "job_info.tasks.t1.req_cores must be between 1 and 1024, got 0",
     "job_info.tasks.t1.req_cores"),
    ("/jobs", "post", 413, "The data value transmitted exceeds the capacity limit.", None),
    ("/jobs", "post", 422, "this job can never run on the current cluster: task t1 needs 8 cores on one node; the "
                           "largest worker has 2", "job_info.tasks"),
    ("/workers/{worker_id}/undrain", "*", 409, "worker w2 is being removed", "worker_id"),
    ("/workers/{worker_id}", "*", 409, "worker w2 is DOWN; only a live worker can be drained", "worker_id"),
    ("/workers/{worker_id}", "*", 404, "no worker 'w9'", "worker_id"),
    ("/queue", "*", 400, "limit must be between 1 and 1000", "limit"),
    ("/scheduler", "put", 400, "strategy must be one of ['best-fit', 'best-fit-decreasing', 'first-fit', ...]",
     "strategy"),
    ("/health", "*", 503, "MongoDB does not answer", None),
    ("", "*", 401, "send Authorization: Bearer <token> (see the api_token file in the run directory)", None),
    ("", "*", 503, "MongoDB is unavailable; retry later", None),
    ("", "*", 404, "not found", None),
    ("", "*", 409, "the resource changed meanwhile; read it again", None),
    ("", "*", 400, "the body is not valid JSON", "body"),
    ("", "*", 422, "it can never hold on the current cluster", None),
]
_CODES = {400: "invalid", 401: "unauthorized", 404: "not_found", 409: "conflict", 413: "too_large",
          422: "unschedulable", 503: "unavailable"}


def error_example(path: str, method: str, status: int) -> dict | None:
    for fragment, m, code, message, field in ERROR_EXAMPLES:
        if code == status and m in ("*", method) and path.startswith(fragment):
            err: dict = {"code": _CODES.get(status, "error"), "message": message}
            if field:
                err["field"] = field
            return {"error": err}
    return None


def with_error_examples(doc: dict) -> dict:
    """Give every error response of an OpenAPI (Swagger 2.0) document an example body (Swagger UI shows it)."""
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            for code, resp in op["responses"].items():
                if code.isdigit() and int(code) >= 400 and "examples" not in resp:
                    example = error_example(path, method, int(code))
                    if example is not None:
                        resp["examples"] = {"application/json": example}
    return doc
