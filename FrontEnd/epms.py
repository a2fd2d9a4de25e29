"""/api/v1/jobs/{id}/epms: a job's EPMs as Merak's pods (id, name, ip, node, and their VMs).

An EPM can hold thousands of EVMs, so a pod carries a page of them, never all: the list gives each EPM
its first ``vm_limit`` (default 10, at most 100) live EVMs, one EPM gives ``vm_limit`` (default 100,
at most 1,000) from ``vm_after``; ``vms_next`` continues (null on the last page), and ``vm_counts``
always holds the EPM's counts per state.
"""

from __future__ import annotations

from typing import Any

from flask import request
from flask_restx import Namespace, Resource

from Common.api import ERROR_SCHEMA, int_arg
from Common.errors import Invalid, NotFound
from Common.evmstates import EvmState
from Common.store.jobs import container_name, network_name
from FrontEnd.context import ctx
from FrontEnd.evms import EPM_NAME, _epms, _job, evms_url
from FrontEnd.views import job_url

ns = Namespace("epms", description="A job's EPMs as pods (Merak's data model): id, name, ip, node and their VMs")
error = ns.schema_model("EpmError", ERROR_SCHEMA)

_STATES = [s.value for s in EvmState]
LIST_VMS = (10, 100)  # (default, most) EVMs per EPM in the list
ONE_VMS = (100, 1000)  # (default, most) EVMs per page of one EPM

VM_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "ip", "mac", "state"],
    "properties": {
        "id": {"type": "string", "example": "job-0193f2a1b2c3-7f3a2b.v1"},
        "name": {"type": "string", "example": "vm1"},
        "ip": {"type": "string", "example": "10.60.0.2"},
        "mac": {"type": "string", "example": "02:5e:0a:3c:00:02"},
        "state": {"type": "string", "enum": _STATES},
        "vpc": {"type": "string"}, "tenant": {"type": "string"}, "security_group": {"type": "string"},
        "subnet": {"type": "string"}, "gateway": {"type": "string"},
        "url": {"type": "string", "description": "the full EVM record"},
    },
}
SAMPLE_POD = {
    "id": "rsw-job-0193f2a1b2c3-7f3a2b-e0-0", "name": "e0", "job_id": "job-0193f2a1b2c3-7f3a2b",
    "ip": "10.201.3.2", "mac": "02:42:0a:c9:03:02", "node": "w1", "state": "RUNNING", "attempt": 0,
    "container_id": "4f1c2d3e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b", "devices": "full", "subnet": "10.60.0.0/24",
    "vm_counts": {"PENDING": 0, "DEPLOYING": 0, "READY": 2, "ERROR": 0, "DELETED": 0},
    "vms": [{"id": "job-0193f2a1b2c3-7f3a2b.v1", "name": "vm1", "ip": "10.60.0.2", "mac": "02:5e:0a:3c:00:02",
             "state": "READY", "vpc": "vpc-1", "tenant": "default", "security_group": "default",
             "subnet": "10.60.0.0/24", "gateway": "10.60.0.1",
             "url": "/api/v1/jobs/job-0193f2a1b2c3-7f3a2b/evms/job-0193f2a1b2c3-7f3a2b.v1"}],
    "vms_next": 1, "url": "/api/v1/jobs/job-0193f2a1b2c3-7f3a2b/epms/e0",
}
POD_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "job_id", "ip", "node", "state", "vm_counts", "vms", "url"],
    "example": SAMPLE_POD,
    "properties": {
        "id": {"type": "string", "description": "its container's name (unique: job, task and attempt)"},
        "name": {"type": "string", "description": "the EPM task's name"},
        "job_id": {"type": "string"},
        "ip": {"description": "its address on the job's overlay network (null until it runs)"},
        "mac": {"description": "its MAC on the job network, as its agent reported it (null before)"},
        "node": {"description": "the worker it runs on (null until placed)"},
        "state": {"type": "string", "description": "the task's state"},
        "attempt": {"type": "integer"},
        "container_id": {"description": "null until created"},
        "devices": {"type": "string"}, "subnet": {"type": "string"},
        "vm_counts": {"type": "object", "additionalProperties": {"type": "integer"},
                      "description": "its EVMs per state, all of them"},
        "vms": {"type": "array", "items": VM_SCHEMA,
                "description": "a page of its live EVMs (or those in vm_state), by number"},
        "vms_next": {"description": "pass as vm_after to .../epms/{name} for the next page; null on the last"},
        "url": {"type": "string"},
    },
}
POD_LIST_SCHEMA = {"type": "object", "required": ["job_id", "items"], "properties": {
    "job_id": {"type": "string"}, "items": {"type": "array", "items": POD_SCHEMA}}}

pod_model = ns.schema_model("Epm", POD_SCHEMA)
pod_list = ns.schema_model("EpmList", POD_LIST_SCHEMA)


def vm_view(d: dict[str, Any]) -> dict[str, Any]:
    return {"id": d["_id"], "name": d["name"], "ip": d["ip"], "mac": d["mac"], "state": d["state"],
            "vpc": d["vpc"], "tenant": d["tenant"], "security_group": d["security_group"], "subnet": d["subnet"],
            "gateway": d["gateway"], "url": f"{evms_url(d['job_id'])}/{d['_id']}"}


def _vm_state() -> str | None:
    state = request.args.get("vm_state") or None
    if state is not None and state not in _STATES:
        raise Invalid(f"vm_state must be one of {_STATES}", field="vm_state")
    return state


def pod_view(job: dict[str, Any], name: str, counts: dict[str, int], limit: int, after: int | None,
             state: str | None) -> dict[str, Any]:
    store = ctx().store
    t = job["tasks"][name]
    docs = store.evms.epm_vms(job["_id"], name, limit, after, state)
    host = store.evms.epm_host(job["_id"], name)
    ip = (t.get("addresses") or {}).get(network_name(job["_id"])) or host["ip"]
    return {
        "id": container_name(job["_id"], name, t["attempt"]), "name": name, "job_id": job["_id"], "ip": ip,
        "mac": host["mac"], "node": t.get("node"), "state": t["state"], "attempt": t["attempt"],
        "container_id": t.get("container_id"), "devices": t["evms"].get("devices"), "subnet": t["evms"].get("subnet"),
        "vm_counts": {s: counts.get(s, 0) for s in _STATES},
        "vms": [vm_view(d) for d in docs], "vms_next": docs[-1]["seq"] if len(docs) == limit else None,
        "url": f"{job_url(job['_id'])}/epms/{name}",
    }


_PARAMS = {"vm_state": {"description": "EVMs in this state (default: every live one, i.e. not DELETED)",
                        "enum": _STATES, "in": "query"}}


@ns.route("/<string:job_id>/epms")
@ns.param("job_id", "the job's id")
class Epms(Resource):
    @ns.doc(params={**_PARAMS, "vm_limit": {"description": f"EVMs per EPM (1-{LIST_VMS[1]}, default {LIST_VMS[0]})",
                                            "type": "integer", "in": "query"}})
    @ns.response(200, "The job's EPMs (none for a job without EVMs), each with its first EVMs", pod_list)
    @ns.response(400, "Invalid query parameter", error)
    @ns.response(404, "No such job", error)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self, job_id: str):
        """INFO: a job's EPMs as pods: id, name, ip, node and a page of their VMs. 200; 400; 404."""
        job = _job(job_id)
        state = _vm_state()
        limit = int_arg("vm_limit", LIST_VMS[0], 1, LIST_VMS[1])
        by_epm = ctx().store.evms.summary(job_id)["by_epm"] if _epms(job) else {}
        return {"job_id": job_id, "items": [pod_view(job, name, by_epm.get(name, {}), limit, None, state)
                                            for name in _epms(job)]}


@ns.route("/<string:job_id>/epms/<string:name>")
@ns.param("job_id", "the job's id")
@ns.param("name", "the EPM task's name")
class Epm(Resource):
    @ns.doc(params={**_PARAMS,
                    "vm_limit": {"description": f"EVMs per page (1-{ONE_VMS[1]}, default {ONE_VMS[0]})",
                                 "type": "integer", "in": "query"},
                    "vm_after": {"description": "the `vms_next` value of the previous page", "type": "integer",
                                 "in": "query"}})
    @ns.response(200, "One EPM with a page of its VMs", pod_model)
    @ns.response(400, "Invalid query parameter", error)
    @ns.response(404, "No such job, or no EPM of that name in it", error)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self, job_id: str, name: str):
        """INFO: one EPM as a pod, its VMs paginated. 200; 400; 404."""
        job = _job(job_id)
        if not EPM_NAME.match(name) or name not in _epms(job):
            raise NotFound(f"no EPM {name!r} in job {job_id} (EPMs: {', '.join(_epms(job)) or 'none'})", field="name")
        state = _vm_state()
        limit = int_arg("vm_limit", ONE_VMS[0], 1, ONE_VMS[1])
        after = int_arg("vm_after", -1, 0, 2**62)
        counts = ctx().store.evms.summary(job_id)["by_epm"].get(name, {})
        return pod_view(job, name, counts, limit, after if after >= 0 else None, state)
