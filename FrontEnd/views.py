"""How jobs and workers look in API responses."""

from __future__ import annotations

import time
from typing import Any

from Common.resources import format_cpuset
from Common.store.jobs import container_name, network_name

API = "/api/v1"


def job_url(job_id: str) -> str:
    return f"{API}/jobs/{job_id}"


def task_view(name: str, t: dict[str, Any], job_id: str, logs: bool = False) -> dict[str, Any]:
    """A task as the API shows it; its log tail (the container's output, which may hold anything the job
    printed) only to a caller holding the token (``logs``), else the key is left out."""
    view = {
        "state": t["state"],
        "attempt": t["attempt"],
        "image": t["image"],
        "req_cores": t["req_cores"],
        "mem_limit": t["mem_limit"],
        "node": t.get("node"),
        "cpuset": t.get("cpuset"),
        "container_id": t.get("container_id"),
        "container_name": container_name(job_id, name, t["attempt"]),
        "ip": (t.get("addresses") or {}).get(network_name(job_id)),
        "addresses": t.get("addresses") or {},
        "exit_code": t.get("exit_code"),
        "reason": t.get("reason"),
        "resources_generation": t.get("resources_generation", 0),
        "applied": t.get("applied"),
        "migration_id": t.get("migration_id"),
        "state_times": t.get("state_times", {}),
    }
    if logs:
        view["log_tail"] = t.get("log_tail")
    return view


def job_view(doc: dict[str, Any], logs: bool = False) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "name": doc["name"],
        "state": doc["state"],
        "priority": doc.get("priority", 0),
        "created_at": doc["created_at"],
        "state_times": doc.get("state_times", {}),
        "reason": doc.get("reason"),
        "cancel_requested": bool(doc.get("cancel_requested")),
        "network": {k: doc["network"].get(k) for k in ("name", "driver", "subnet", "docker_name")},
        "tasks": {name: task_view(name, t, doc["_id"], logs) for name, t in doc["tasks"].items()},
        "url": job_url(doc["_id"]),
    }


def worker_view(doc: dict[str, Any]) -> dict[str, Any]:
    hb = doc.get("heartbeat_at") or 0.0
    return {
        "id": doc["_id"],
        "state": doc.get("state", "UNKNOWN"),
        "cores": format_cpuset(doc["cores"]),
        "free_cores": format_cpuset(doc["free_cores"]),
        "capacity_cores": len(doc["cores"]),
        "free_core_count": len(doc["free_cores"]),
        "mem_total": doc["mem_total"],
        "mem_free": doc["mem_free"],
        "tasks": len(doc.get("allocations", {})),
        "heartbeat_at": hb,
        "heartbeat_age_seconds": round(max(0.0, time.time() - hb), 3),
        "hollow": bool(doc.get("hollow")),
    }
