"""From MongoDB documents to the placement engine's plain values."""

from __future__ import annotations

from typing import Any

from Common.placement.model import JobRequest, Node, RunningJob, RunningTask, TaskRequest
from Common.resources import parse_cpuset
from Common.states import TASK_TERMINAL


def node_from_worker(doc: dict[str, Any], empty: bool = False) -> Node:
    """A worker document as a Node; ``empty`` gives its whole capacity (for "could it ever fit")."""
    cores = sorted(doc["cores"])
    if empty:
        return Node(doc["_id"], cores, doc["mem_total"], len(cores), doc["mem_total"], cores)
    allocs = doc.get("allocations") or {}
    held = {c: key for key, a in allocs.items() for c in a.get("cores", [])}
    ports = {p: key for key, a in allocs.items() for p in a.get("ports", [])}
    return Node(doc["_id"], sorted(doc["free_cores"]), doc["mem_free"], len(cores), doc["mem_total"], cores, held,
                ports)


def host_ports(task: dict[str, Any]) -> frozenset[str]:
    """The host ports a task publishes, as "3000/tcp" (a port left to Docker to choose is no constraint)."""
    out = set()
    for container_port, host in (task.get("ports") or {}).items():
        if host is not None:
            proto = container_port.partition("/")[2] or "tcp"
            out.add(f"{int(host)}/{proto}")
    return frozenset(out)


def job_request(job_id: str, priority: int, tasks: dict[str, dict[str, Any]], submitted: float = 0.0) -> JobRequest:
    reqs = []
    for name, t in tasks.items():
        cpuset = t.get("cpuset_request")
        reqs.append(TaskRequest(name=name, cores=t["req_cores"], mem=t["mem_bytes"],
                                node=t.get("node_request"), cpuset=tuple(cpuset) if cpuset else None,
                                ports=host_ports(t)))
    return JobRequest(job_id=job_id, tasks=reqs, priority=priority, submitted=submitted)


def job_request_from_doc(doc: dict[str, Any]) -> JobRequest:
    return job_request(doc["_id"], doc.get("priority", 0), doc["tasks"], doc.get("created_at", 0.0))


def running_from_doc(doc: dict[str, Any]) -> RunningJob:
    """A placed job (SCHEDULED or RUNNING) as a preemption candidate."""
    tasks = [RunningTask(t["node"], tuple(parse_cpuset(t["cpuset"])), t["mem_bytes"])
             for t in doc["tasks"].values()
             if t.get("node") and t.get("cpuset") and t["state"] not in TASK_TERMINAL]  # finished: released
    started = doc.get("state_times", {}).get("SCHEDULED", doc.get("created_at", 0.0))
    return RunningJob(doc["_id"], doc.get("priority", 0), started, tasks)
