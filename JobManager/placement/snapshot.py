"""From MongoDB documents to the placement engine's plain values."""

from __future__ import annotations

from typing import Any

from JobManager.placement.model import JobRequest, Node, TaskRequest


def node_from_worker(doc: dict[str, Any], empty: bool = False) -> Node:
    """A worker document as a Node; ``empty`` gives its whole capacity (for "could it ever fit")."""
    if empty:
        return Node(doc["_id"], sorted(doc["cores"]), doc["mem_total"], len(doc["cores"]), doc["mem_total"])
    return Node(doc["_id"], sorted(doc["free_cores"]), doc["mem_free"], len(doc["cores"]), doc["mem_total"])


def job_request(job_id: str, priority: int, tasks: dict[str, dict[str, Any]]) -> JobRequest:
    reqs = []
    for name, t in tasks.items():
        cpuset = t.get("cpuset_request")
        reqs.append(TaskRequest(name=name, cores=t["req_cores"], mem=t["mem_bytes"],
                                node=t.get("node_request"), cpuset=tuple(cpuset) if cpuset else None))
    return JobRequest(job_id=job_id, tasks=reqs, priority=priority)


def job_request_from_doc(doc: dict[str, Any]) -> JobRequest:
    return job_request(doc["_id"], doc.get("priority", 0), doc["tasks"])
