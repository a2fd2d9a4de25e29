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

TASK_SCHEMA = {
    "type": "object",
    "required": ["image", "req_cores"],
    "additionalProperties": False,
    "properties": {
        "image": {"type": "string", "pattern": IMAGE_REF.pattern, "example": "rswarm/task:1",
                  "description": "a locally present image"},
        "command": {"description": "string (split like a shell would, never run by one) or list of strings",
                    "example": "sleep 2"},
        "req_cores": {"type": "integer", "minimum": 1, "maximum": MAX_CORES_PER_TASK, "example": 1},
        "mem_limit": {"type": "string", "pattern": r"^\d{1,6}[mMgG]$", "example": "64m",
                      "description": "'64m', '1g' (or a number of bytes); at least 6m"},
        "container_name": {"type": "string", "pattern": CONTAINER_NAME.pattern,
                           "description": "extra DNS name on the job network"},
        "ports": {"type": "object", "additionalProperties": {"type": "integer"},
                  "example": {"8080/tcp": 18080}},
        "volumes": {"type": "object", "description": "host path (under the allowed root) -> {bind, mode}",
                    "additionalProperties": {"type": "object"}},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "node": {"type": "string", "pattern": NODE_NAME.pattern, "description": "manual placement: this worker"},
        "cpuset_cpus": {"type": "string", "description": "manual placement: these cores, e.g. '0-1'"},
        "detach": {"type": "boolean", "description": "accepted for compatibility; always true"},
        "status": {"type": "string", "description": "accepted for compatibility; ignored"},
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
        "exit_code": {"description": "null until it exits"},
        "reason": {"description": "why it failed, was cancelled or lost"},
        "state_times": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}

JOB_VIEW_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "state", "priority", "created_at", "state_times", "tasks", "url"],
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
    },
}

WORKER_LIST_SCHEMA = {
    "type": "object",
    "required": ["items"],
    "properties": {"items": {"type": "array", "items": WORKER_VIEW_SCHEMA}},
}
