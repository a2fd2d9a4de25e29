"""/api/v1/jobs/{id}/evms: the seed's compute scenarios INFO, CREATE, UPDATE and DELETE for a job's EVMs.

INFO    GET  .../evms (paginated, by state and EPM), GET .../evms/summary, GET .../evms/{evm_id}
CREATE  POST .../evms: add EVMs to a waiting or running job, with a distribution and a rate
UPDATE  PATCH .../evms: the set's size (following the job's distribution) and the next batch's rate;
        PATCH .../evms/{evm_id}: an EVM's labels (vpc, tenant, security group)
DELETE  DELETE .../evms: remove some (count newest first, an EPM's, given ids) or all
"""

from __future__ import annotations

import re
from typing import Any

from flask import request
from flask_restx import Namespace, Resource

from Common.api import ERROR_SCHEMA, int_arg, json_body, require_token
from Common.errors import Conflict, Invalid, NotFound
from Common.evmspec import (
    LABEL_FIELDS,
    LEAN_MAX_PORTS,
    MAX_EVMS_PER_EPM,
    MAX_EVMS_PER_JOB,
    Addition,
    Pool,
    evm_capacity,
    parse_addition,
    parse_labels_patch,
    parse_rate,
    parse_set_update,
)
from Common.evmstates import EvmState
from Common.resources import format_memory
from Common.states import JOB_TERMINAL
from Common.store.evms import PoolExhausted
from FrontEnd.context import ctx
from FrontEnd.views import job_url

ns = Namespace("evms", description="A job's EVMs (network namespaces in its EPMs): list, summarise, add, "
                                   "relabel and delete")
error = ns.schema_model("EvmError", ERROR_SCHEMA)

JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
EVM_ID = re.compile(r"^[A-Za-z0-9_.-]{1,160}$")
EPM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
MAX_IDS = 1000

_STATES = [s.value for s in EvmState]
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}
_RATE = {
    "description": "'sequential' (one at a time, no pause), {kind: rps, rps, burst?} (token bucket, job-wide) or "
                   "{kind: random, mean_interval, seed?} (Poisson arrivals, job-wide); split across EPMs in "
                   "proportion to their counts",
    "example": {"kind": "rps", "rps": 50},
}
_DIST = {
    "description": "'uniform' (counts differ by at most one), {kind: manual, counts: {epm: n}}, "
                   "{kind: random, seed?} (multinomial) or {kind: skew, s?, seed?} (Zipf weights i^-s)",
    "example": "uniform",
}
EVM_VIEW_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "job_id", "epm", "state", "ip", "mac", "subnet", "gateway", "url"],
    "properties": {
        "id": {"type": "string", "example": "job-0193f2a1b2c3-7f3a2b.v1"},
        "name": {"type": "string", "example": "vm1"},
        "job_id": {"type": "string"},
        "epm": {"type": "string", "description": "the EPM task holding it"},
        "node": {"description": "worker of its EPM (null until it is created)"},
        "container": {"description": "its EPM's container (null until it is created)"},
        "host": {"type": "object", "description": "its EPM on the job network: ip, mac, name"},
        "tenant": {"type": "string"}, "vpc": {"type": "string"}, "security_group": {"type": "string"},
        "subnet": {"type": "string"}, "prefix": {"type": "integer"}, "gateway": {"type": "string"},
        "ip": {"type": "string"}, "mac": {"type": "string"}, "devices": {"type": "string"},
        "batch": {"type": "string"},
        "state": {"type": "string", "enum": _STATES},
        "delete_requested": {"type": "boolean"},
        "error": {"description": "why it is in ERROR (null otherwise)"},
        "times": {"type": "object", "additionalProperties": {"type": "number"}},
        "create_ms": {"description": "time its agent spent creating it"},
        "delete_ms": {"description": "time its agent spent deleting it"},
        "url": {"type": "string"},
    },
}
EVM_PAGE_SCHEMA = {"type": "object", "required": ["items"], "properties": {
    "items": {"type": "array", "items": EVM_VIEW_SCHEMA},
    "next": {"description": "pass as ?after= for the next page; null on the last page"}}}
SUMMARY_SCHEMA = {"type": "object", "required": ["job_id", "text", "ready", "wanted", "by_state", "by_epm"],
                  "properties": {
                      "job_id": {"type": "string"},
                      "text": {"type": "string", "example": "498 of 500 ready"},
                      "ready": {"type": "integer"}, "wanted": {"type": "integer"},
                      "deleting": {"type": "integer"},
                      "by_state": {"type": "object", "additionalProperties": {"type": "integer"}},
                      "by_epm": {"type": "object", "additionalProperties": {"type": "object"}},
                      "errors": {"type": "array", "items": {"type": "object"}},
                      "job_state": {"type": "string"}}}
ADD_SCHEMA = {"type": "object", "additionalProperties": False, "example": {"count": 10, "rate": {"kind": "rps",
                                                                                               "rps": 20}},
              "properties": {"count": {"type": "integer", "minimum": 1, "maximum": MAX_EVMS_PER_JOB},
                             "distribution": _DIST, "rate": _RATE,
                             **{k: {"type": "string", "description": "label (default: the EPM's)"}
                                for k in LABEL_FIELDS}}}
ADDED_SCHEMA = {"type": "object", "required": ["job_id", "batch", "count", "counts"], "properties": {
    "job_id": {"type": "string"}, "batch": {"type": "string", "example": "b1"}, "count": {"type": "integer"},
    "counts": _COUNTS, "first": {"type": "integer"}, "last": {"type": "integer"},
    "summary_url": {"type": "string"}, "url": {"type": "string"}}}
DELETED_SCHEMA = {"type": "object", "required": ["job_id", "requested"], "properties": {
    "job_id": {"type": "string"},
    "requested": {"type": "integer", "description": "EVMs marked for deletion"},
    "deleted_at_once": {"type": "integer", "description": "of which no agent had yet: DELETED already"},
    "summary_url": {"type": "string"}}}
PATCH_SCHEMA = {"type": "object", "additionalProperties": False, "minProperties": 1,
                "example": {"security_group": "sg-web"},
                "properties": {k: {"type": "string"} for k in LABEL_FIELDS}}

SET_SCHEMA = {"type": "object", "additionalProperties": False, "minProperties": 1,
              "example": {"count": 40, "rate": {"kind": "rps", "rps": 20}},
              "description": "the number of EVMs the job should hold: its EPMs end holding distribute(count) "
                             "under the job's distribution (or the one given, which the job follows from then "
                             "on); EVMs are added as one batch at `rate` (default: the job's last) and removed "
                             "newest first. The same request twice leaves the same set.",
              "properties": {"count": {"type": "integer", "minimum": 0, "maximum": MAX_EVMS_PER_JOB,
                                       "description": "default: the job's current count"},
                             "distribution": _DIST, "rate": _RATE}}
SET_RESULT_SCHEMA = {
    "type": "object", "required": ["job_id", "count", "counts", "added", "removed", "changed"],
    "example": {"job_id": "job-0193f2a1b2c3-7f3a2b", "count": 40, "counts": {"e0": 20, "e1": 20},
                "added": {"e0": 5, "e1": 5}, "removed": {}, "changed": True, "batch": "b2",
                "distribution": {"kind": "uniform"}, "rate": {"kind": "rps", "rps": 20.0, "burst": 1},
                "summary_url": "/api/v1/jobs/job-0193f2a1b2c3-7f3a2b/evms/summary"},
    "properties": {
        "job_id": {"type": "string"}, "count": {"type": "integer", "description": "the set's new size"},
        "counts": {**_COUNTS, "description": "the set per EPM once done"},
        "added": {**_COUNTS, "description": "EVMs recorded now, per EPM (created by the agents at the rate)"},
        "removed": {**_COUNTS, "description": "EVMs marked for deletion, per EPM (newest first)"},
        "changed": {"type": "boolean", "description": "false: the set already was that"},
        "batch": {"description": "the batch holding the added EVMs (null when none were added)"},
        "distribution": {"type": "object"}, "rate": {"type": "object", "description": "the job's rate from now on"},
        "summary_url": {"type": "string"}}}

evm_model = ns.schema_model("Evm", EVM_VIEW_SCHEMA)
set_body = ns.schema_model("EvmSetUpdate", SET_SCHEMA)
set_result = ns.schema_model("EvmSetUpdated", SET_RESULT_SCHEMA)
evm_page = ns.schema_model("EvmPage", EVM_PAGE_SCHEMA)
summary_model = ns.schema_model("EvmSummary", SUMMARY_SCHEMA)
add_body = ns.schema_model("EvmAddition", ADD_SCHEMA)
added_model = ns.schema_model("EvmsAdded", ADDED_SCHEMA)
deleted_model = ns.schema_model("EvmsDeleting", DELETED_SCHEMA)
patch_body = ns.schema_model("EvmLabels", PATCH_SCHEMA)


def evms_url(job_id: str) -> str:
    return f"{job_url(job_id)}/evms"


def evm_view(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": d["_id"], "name": d["name"], "job_id": d["job_id"], "epm": d["epm"], "node": d.get("node"),
        "container": d.get("container"),
        "host": {"ip": d.get("host_ip"), "mac": d.get("host_mac"), "name": d.get("host_name")},
        "tenant": d["tenant"], "vpc": d["vpc"], "security_group": d["security_group"],
        "subnet": d["subnet"], "prefix": d.get("prefix"), "gateway": d["gateway"], "ip": d["ip"], "mac": d["mac"],
        "devices": d.get("devices"), "batch": d.get("batch"), "state": d["state"],
        "delete_requested": bool(d.get("delete_requested")), "error": d.get("error"), "times": d.get("times", {}),
        "create_ms": d.get("create_ms"), "delete_ms": d.get("delete_ms"),
        "url": f"{evms_url(d['job_id'])}/{d['_id']}",
    }


def _job(job_id: str) -> dict[str, Any]:
    doc = ctx().store.jobs.get(job_id) if JOB_ID.match(job_id) else None
    if doc is None:
        raise NotFound(f"no job {job_id!r}", field="job_id")
    return doc


def _epms(job: dict[str, Any]) -> list[str]:
    return [name for name, t in job["tasks"].items() if t.get("evms")]


def _changeable(job_id: str, only: str) -> tuple[dict[str, Any], list[str]]:
    """The job and its EPM names, if its EVM set may change now; 404 or 409 (naming why and ``only``) if not."""
    job = _job(job_id)
    epms = _epms(job)
    if not epms:
        raise Conflict(f"job {job_id} has no EPMs (submit it with an evms section)", field="job_id")
    if job["state"] in {s.value for s in JOB_TERMINAL} or job.get("cancel_requested"):
        why = " and being cancelled" if job.get("cancel_requested") else ""
        raise Conflict(f"job {job_id} is {job['state']}{why}; {only}", field="job_id")
    return job, epms


def _epm_arg(job: dict[str, Any]) -> str | None:
    epm = request.args.get("epm") or None
    if epm is not None and (not EPM_NAME.match(epm) or epm not in _epms(job)):
        raise Invalid(f"epm: no EPM task {epm!r} in job {job['_id']} (EPMs: {', '.join(_epms(job)) or 'none'})",
                      field="epm")
    return epm


def _evm(job_id: str, evm_id: str) -> dict[str, Any]:
    doc = None
    if EVM_ID.match(evm_id) and evm_id.startswith(f"{job_id}.v"):
        doc = ctx().store.evms.get(evm_id)
    if doc is None or doc["job_id"] != job_id:
        raise NotFound(f"no EVM {evm_id!r} in job {job_id!r}", field="evm_id")
    return doc


def _check_capacity(job: dict[str, Any], counts: dict[str, int]) -> None:
    """409 when the EPMs or the subnets cannot take the new EVMs as the job stands now."""
    store = ctx().store
    live = store.evms.live_counts(job["_id"])
    need_by_pool: dict[str, tuple[Pool, int]] = {}
    for epm, n in counts.items():
        if n == 0:
            continue
        t = job["tasks"][epm]
        cfg = t["evms"]
        total = live.get(epm, 0) + n
        if cfg["devices"] == "lean" and total > LEAN_MAX_PORTS:
            raise Conflict(f"count: EPM {epm!r} would hold {total} EVMs; its lean bridge takes at most "
                           f"{LEAN_MAX_PORTS} ports", field="count")
        if total > MAX_EVMS_PER_EPM:
            raise Conflict(f"count: EPM {epm!r} would hold {total} EVMs; at most {MAX_EVMS_PER_EPM}", field="count")
        cap = evm_capacity(t["mem_bytes"], cfg["devices"])
        if total > cap:
            raise Conflict(f"count: EPM {epm!r} has memory for {cap} EVMs (mem_limit "
                           f"{format_memory(t['mem_bytes'])}) and holds {live.get(epm, 0)}; submit the job with a "
                           "larger mem_limit to leave room", field="count")
        pool, sofar = need_by_pool.get(cfg["subnet"], (Pool(cfg["subnet"], cfg["gateway"]), 0))
        need_by_pool[cfg["subnet"]] = (pool, sofar + n)
    for subnet, (pool, n) in need_by_pool.items():
        free = pool.capacity - len(store.evms.used_addresses(job["_id"], subnet))
        if n > free:
            raise Conflict(f"count: subnet {subnet} has {free} free addresses, {n} asked", field="count")


@ns.route("/<string:job_id>/evms")
@ns.param("job_id", "the job's id")
class Evms(Resource):
    @ns.doc(params={"state": {"description": "only EVMs in this state", "enum": _STATES, "in": "query"},
                    "epm": {"description": "only EVMs of this EPM task", "in": "query"},
                    "limit": {"description": "page size (1-1000, default 100)", "type": "integer", "in": "query"},
                    "after": {"description": "the `next` value of the previous page", "type": "integer",
                              "in": "query"}})
    @ns.response(200, "A page of the job's EVMs, by number", evm_page)
    @ns.response(400, "Invalid query parameter", error)
    @ns.response(404, "No such job", error)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self, job_id: str):
        """INFO: list a job's EVMs, optionally by state and EPM. 200; 400 on a bad parameter; 404."""
        job = _job(job_id)
        state = request.args.get("state") or None
        if state is not None and state not in _STATES:
            raise Invalid(f"state must be one of {_STATES}", field="state")
        epm = _epm_arg(job)
        limit = int_arg("limit", 100, 1, 1000)
        after = int_arg("after", -1, 0, 2**62)
        docs = ctx().store.evms.page(job_id, state, epm, limit, after if after >= 0 else None)
        nxt = docs[-1]["seq"] if len(docs) == limit else None
        return {"items": [evm_view(d) for d in docs], "next": nxt}

    @ns.doc(security="bearer", body=add_body)
    @ns.response(202, "Recorded; the EPMs' agents create them at the given rate", added_model)
    @ns.response(400, "Invalid body (the field is named)", error)
    @ns.response(401, "Missing or wrong bearer token", error)
    @ns.response(404, "No such job", error)
    @ns.response(409, "The job has no EPMs, is finished, or has no room for them (the reason is given)", error)
    @ns.response(413, "Body too large", error)
    @ns.response(503, "MongoDB unavailable", error)
    @require_token
    def post(self, job_id: str):
        """CREATE: add EVMs to a waiting or running job. 202; 400 invalid; 401; 404; 409 no room / finished; 503."""
        body = json_body()
        job, epms = _changeable(job_id, "EVMs are added to waiting or running jobs only")
        addition = parse_addition(body, epms)
        _check_capacity(job, addition.counts)
        try:
            added = ctx().store.evms.add(job, addition)
        except PoolExhausted as exc:
            raise Conflict(f"count: {exc}", field="count") from None
        return {"job_id": job_id, **added, "summary_url": f"{evms_url(job_id)}/summary",
                "url": evms_url(job_id)}, 202

    @ns.doc(security="bearer", body=set_body)
    @ns.response(202, "Recorded: EVMs added and/or marked for deletion; their agents do the rest", set_result)
    @ns.response(400, "Invalid body (the field is named)", error)
    @ns.response(401, "Missing or wrong bearer token", error)
    @ns.response(404, "No such job", error)
    @ns.response(409, "The job has no EPMs, is finished, has no room, or its EVM set changed meanwhile (another "
                      "update, addition or deletion): read it again and retry", error)
    @ns.response(413, "Body too large", error)
    @ns.response(503, "MongoDB unavailable", error)
    @require_token
    def patch(self, job_id: str):
        """UPDATE: resize the job's EVM set following its distribution; set the next batch's rate. Idempotent.
        202; 400; 401; 404; 409 changed meanwhile / no room / finished; 503."""
        body = json_body()
        job, epms = _changeable(job_id, "only a waiting or running job's EVMs change")
        store = ctx().store
        st = store.evms.set_state(job_id)
        plan = job.get("evms") or {}
        wanted = store.evms.wanted_counts(job_id)
        update = parse_set_update(body, epms, st["spec"].get("distribution") or plan.get("distribution"),
                                  sum(wanted.get(e, 0) for e in epms))
        rate = update.rate or parse_rate(st["spec"].get("rate") or plan.get("rate"), "rate")
        added = {e: n - wanted.get(e, 0) for e, n in update.counts.items() if n > wanted.get(e, 0)}
        removed = {e: wanted[e] - update.counts.get(e, 0) for e in wanted if wanted[e] > update.counts.get(e, 0)}
        if added:
            _check_capacity(job, added)
        if not store.evms.set_guard(job_id, st["gen"], {"distribution": update.distribution.doc(),
                                                        "rate": rate.doc()}):
            raise Conflict(f"the EVM set of job {job_id} changed meanwhile (another update, addition or deletion); "
                           "read it again and retry", field="job_id")
        batch = None
        try:
            for epm, n in removed.items():
                store.evms.request_delete(job_id, epm=epm, count=n)
            if added:
                addition = Addition(count=sum(added.values()), counts=added, distribution=update.distribution,
                                    rate=rate, labels={})
                batch = store.evms.add(job, addition)["batch"]
        except PoolExhausted as exc:
            raise Conflict(f"count: {exc}", field="count") from None
        finally:
            store.evms.set_release(job_id)
        return {"job_id": job_id, "count": update.count, "counts": update.counts, "added": added,
                "removed": removed, "changed": bool(added or removed), "batch": batch,
                "distribution": update.distribution.doc(), "rate": rate.doc(),
                "summary_url": f"{evms_url(job_id)}/summary"}, 202

    @ns.doc(security="bearer", params={
        "count": {"description": "delete this many (newest first); default all", "type": "integer", "in": "query"},
        "epm": {"description": "only EVMs of this EPM task", "in": "query"},
        "ids": {"description": f"only these EVM ids (comma-separated, at most {MAX_IDS})", "in": "query"}})
    @ns.response(202, "Marked; their agents remove them", deleted_model)
    @ns.response(400, "Invalid query parameter", error)
    @ns.response(401, "Missing or wrong bearer token", error)
    @ns.response(404, "No such job", error)
    @ns.response(503, "MongoDB unavailable", error)
    @require_token
    def delete(self, job_id: str):
        """DELETE: remove some or all of a job's EVMs (the job keeps running). 202; 400; 401; 404; 503."""
        job = _job(job_id)
        epm = _epm_arg(job)
        raw_count = request.args.get("count")
        count = int_arg("count", 0, 1, MAX_EVMS_PER_JOB) if raw_count not in (None, "") else None
        ids = None
        raw_ids = request.args.get("ids")
        if raw_ids:
            ids = [i for i in raw_ids.split(",") if i]
            if len(ids) > MAX_IDS:
                raise Invalid(f"ids: at most {MAX_IDS} per request", field="ids")
            for i in ids:
                if not EVM_ID.match(i) or not i.startswith(f"{job_id}.v"):
                    raise Invalid(f"ids: {i!r} is not an EVM id of job {job_id}", field="ids")
        if job["state"] in {s.value for s in JOB_TERMINAL}:
            return {"job_id": job_id, "requested": 0, "deleted_at_once": 0,
                    "summary_url": f"{evms_url(job_id)}/summary"}, 202
        res = ctx().store.evms.request_delete(job_id, epm=epm, count=count, ids=ids)
        return {"job_id": job_id, **res, "summary_url": f"{evms_url(job_id)}/summary"}, 202


@ns.route("/<string:job_id>/evms/summary")
@ns.param("job_id", "the job's id")
class EvmSummary(Resource):
    @ns.response(200, "'X of Y ready', counts per state and per EPM, the first errors", summary_model)
    @ns.response(404, "No such job", error)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self, job_id: str):
        """INFO: how far a job's EVMs are. 200; 404."""
        job = _job(job_id)
        s = ctx().store.evms.summary(job_id)
        return {"job_id": job_id, "text": f"{s['ready']} of {s['wanted']} ready", "job_state": job["state"], **s}


@ns.route("/<string:job_id>/evms/<string:evm_id>")
@ns.param("job_id", "the job's id")
@ns.param("evm_id", "the EVM's id")
class Evm(Resource):
    @ns.response(200, "One EVM", evm_model)
    @ns.response(404, "No such job or EVM", error)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self, job_id: str, evm_id: str):
        """INFO: one EVM. 200; 404."""
        _job(job_id)
        return evm_view(_evm(job_id, evm_id))

    @ns.doc(security="bearer", body=patch_body)
    @ns.response(200, "Labels changed", evm_model)
    @ns.response(400, "Invalid body (the field is named)", error)
    @ns.response(401, "Missing or wrong bearer token", error)
    @ns.response(404, "No such job or EVM", error)
    @ns.response(409, "The EVM is deleted", error)
    @ns.response(503, "MongoDB unavailable", error)
    @require_token
    def patch(self, job_id: str, evm_id: str):
        """UPDATE: change an EVM's vpc, tenant or security group labels. 200; 400; 401; 404; 409 deleted."""
        labels = parse_labels_patch(json_body())
        _job(job_id)
        _evm(job_id, evm_id)
        doc = ctx().store.evms.patch_labels(evm_id, labels)
        if doc is None:
            raise Conflict(f"EVM {evm_id} is deleted", field="evm_id")
        return evm_view(doc)
