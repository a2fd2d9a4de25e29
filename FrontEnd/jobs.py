"""/api/v1/jobs: submit, list, inspect and cancel jobs."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from flask import request
from flask_restx import Namespace, Resource
from pymongo.errors import DuplicateKeyError

from Common.api import ERROR_SCHEMA, int_arg, json_body, reader_has_token, require_token
from Common.errors import Conflict, Invalid, NotFound, Unschedulable
from Common.jobspec import JobSpec, Limits, validate_job
from Common.placement import never_fits
from Common.placement.snapshot import job_request, node_from_worker
from Common.resources import format_cpuset
from Common.states import JOB_TERMINAL, JobState
from FrontEnd.context import CLUSTER_SNAPSHOT, ctx
from FrontEnd.scheduler import active
from FrontEnd.schemas import JOB_CREATED_SCHEMA, JOB_PAGE_SCHEMA, JOB_SCHEMA, JOB_VIEW_SCHEMA
from FrontEnd.views import job_url, job_view

ns = Namespace("jobs", description="Submit, list, inspect and cancel jobs")
job_body = ns.schema_model("JobDefinition", JOB_SCHEMA)
job_created = ns.schema_model("JobCreated", JOB_CREATED_SCHEMA)
job_model = ns.schema_model("Job", JOB_VIEW_SCHEMA)
job_page = ns.schema_model("JobPage", JOB_PAGE_SCHEMA)
error = ns.schema_model("Error", ERROR_SCHEMA)

JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def _limits() -> Limits:
    cfg = ctx().cfg
    return Limits(max_tasks=cfg.frontend.max_tasks_per_job, default_mem_limit=cfg.frontend.default_mem_limit,
                  volume_root=cfg.volume_root)


SNAPSHOT_MAX_AGE = 1.0  # seconds a process reuses the workers and strategy it read for the submission check


def _cluster(max_age: float) -> tuple[float, dict[str, dict[str, Any]], str]:
    """(when read, workers by id, active strategy), re-read from MongoDB when older than ``max_age``."""
    c = ctx()
    now = time.monotonic()
    snap = c.cache.get(CLUSTER_SNAPSHOT)
    if snap is None or now - snap[0] > max_age:
        snap = (now, {w["_id"]: w for w in c.store.workers.all()}, active()[0])
        c.cache[CLUSTER_SNAPSHOT] = snap
    return snap


def check_against_cluster(spec: JobSpec) -> None:
    """Refuse what the registered cluster can never run: 400 for impossible cores, 422 otherwise.

    Under load the check reads the cluster at most once a second per process; a refusal is only ever given
    after checking again against what MongoDB holds now, so a worker that just joined is never missed.
    """
    started = time.monotonic()
    read_at, workers, strategy = _cluster(SNAPSHOT_MAX_AGE)
    try:
        _check_against(spec, workers, strategy)
    except (Invalid, Unschedulable):
        if read_at >= started:
            raise  # read just now: already what MongoDB holds
        _check_against(spec, *_cluster(0.0)[1:])


def _check_against(spec: JobSpec, workers: dict[str, dict[str, Any]], strategy: str) -> None:
    for t in spec.tasks:
        if t.node is None:
            continue
        where = f"job_info.tasks.{t.name}"
        if t.node not in workers:
            raise Unschedulable(f"{where}.node: {t.node!r} is not a registered worker", field=f"{where}.node")
        if t.cpuset is not None:
            missing = sorted(set(t.cpuset) - set(workers[t.node]["cores"]))
            if missing:
                raise Invalid(f"{where}.cpuset_cpus: cores {format_cpuset(missing)} do not exist on {t.node} "
                              f"(it has {format_cpuset(workers[t.node]['cores'])})", field=f"{where}.cpuset_cpus")
    # "Ever" means on the registered cluster, including nodes that are down or drained for now.
    capacity = [node_from_worker(w, empty=True) for w in workers.values() if w.get("state") != "REMOVED"]
    tasks = {t.name: {"req_cores": t.req_cores, "mem_bytes": t.mem_bytes, "node_request": t.node,
                      "cpuset_request": t.cpuset} for t in spec.tasks}
    reason = never_fits(job_request("new", spec.priority, tasks), capacity, strategy)
    if reason is not None:
        raise Unschedulable(f"this job can never run on the current cluster: {reason}", field="job_info.tasks")


def _job_or_404(job_id: str) -> dict[str, Any]:
    if not JOB_ID.match(job_id):
        raise NotFound(f"no job {job_id!r}", field="job_id")
    doc = ctx().store.jobs.get(job_id)
    if doc is None:
        raise NotFound(f"no job {job_id!r}", field="job_id")
    return doc


@ns.route("")
class Jobs(Resource):
    @ns.doc(security="bearer", params={"state": {"description": "only jobs in this state",
                                                 "enum": [s.value for s in JobState], "in": "query"},
                                       "limit": {"description": "page size (1-500, default 50)",
                                                 "type": "integer", "in": "query"},
                                       "after": {"description": "the `next` value of the previous page",
                                                 "in": "query"}})
    @ns.response(200, "A page of jobs, newest first (task log tails only with the bearer token)", job_page)
    @ns.response(400, "Invalid query parameter", error)
    @ns.response(401, "A wrong bearer token (none at all is fine: the log tails are left out)", error)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self):
        """List jobs, newest first, optionally by state (log tails with the bearer token only). 200; 400; 401."""
        state = request.args.get("state") or None
        if state is not None and state not in JobState.__members__:
            raise Invalid(f"state must be one of {[s.value for s in JobState]}", field="state")
        limit = int_arg("limit", 50, 1, 500)
        after = request.args.get("after") or None
        if after is not None and not JOB_ID.match(after):
            raise Invalid("after must be a job id", field="after")
        docs = ctx().store.jobs.page(state, limit, after)
        nxt = docs[-1]["_id"] if len(docs) == limit else None
        logs = reader_has_token()
        return {"items": [job_view(d, logs) for d in docs], "next": nxt}

    @ns.doc(security="bearer", body=job_body, params={"Idempotency-Key": {
        "in": "header", "type": "string", "description": "optional, 1-128 of A-Z a-z 0-9 . _ : - ; a retry with the "
        "same key and body returns the job the first request created (200) instead of submitting it again"}})
    @ns.response(200, "Replayed: this Idempotency-Key already created this job; nothing new was stored", job_created)
    @ns.response(201, "Accepted and stored; placement follows", job_created)
    @ns.response(400, "Invalid job definition or Idempotency-Key (the field is named)", error)
    @ns.response(401, "Missing or wrong bearer token", error)
    @ns.response(409, "The Idempotency-Key was used before with a different job definition", error)
    @ns.response(413, "Body too large", error)
    @ns.response(422, "The cluster can never run this job", error)
    @ns.response(503, "MongoDB unavailable", error)
    @require_token
    def post(self):
        """Submit a job. 201 once it is stored; 200 replay of the same Idempotency-Key; 400 invalid; 401;
        409 key reused for another body; 413; 422 can never fit; 503."""
        body = json_body()
        spec = validate_job(body, _limits())
        idempotency = _idempotency(body)
        if idempotency is not None and (replay := _replay(*idempotency)) is not None:
            return replay
        check_against_cluster(spec)
        c = ctx()
        try:
            doc = c.store.jobs.insert(spec, idempotency)
        except DuplicateKeyError:
            if idempotency is None or (replay := _replay(*idempotency)) is None:
                raise
            return replay  # a concurrent request with the same key stored it first
        c.hint_jm("job_submitted", doc["_id"])
        url = job_url(doc["_id"])
        return {"id": doc["_id"], "url": url, "state": doc["state"]}, 201, {"Location": url}


def _idempotency(body: Any) -> tuple[str, str] | None:
    """(key, hash of the body) when the request carries an Idempotency-Key."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise Invalid("Idempotency-Key must be 1-128 characters among A-Z a-z 0-9 . _ : -", field="Idempotency-Key")
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return key, hashlib.sha256(canonical.encode()).hexdigest()


def _replay(key: str, request_hash: str) -> tuple[dict[str, Any], int, dict[str, str]] | None:
    job = ctx().store.jobs.by_idempotency_key(key)
    if job is None:
        return None
    if job.get("request_hash") != request_hash:
        raise Conflict(f"Idempotency-Key {key!r} was used for a different job definition (job {job['_id']})",
                       field="Idempotency-Key")
    url = job_url(job["_id"])
    return {"id": job["_id"], "url": url, "state": job["state"]}, 200, {"Location": url, "Idempotent-Replayed": "true"}


@ns.route("/<string:job_id>")
@ns.param("job_id", "the job's id")
class Job(Resource):
    @ns.doc(security="bearer")
    @ns.response(200, "The job, with each task's state, node, cpuset, container and timestamps (log tails only "
                      "with the bearer token)", job_model)
    @ns.response(401, "A wrong bearer token (none at all is fine: the log tails are left out)", error)
    @ns.response(404, "No such job", error)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self, job_id: str):
        """One job (its tasks' log tails with the bearer token only). 200; 401 wrong token; 404."""
        return job_view(_job_or_404(job_id), reader_has_token())

    @ns.doc(security="bearer")
    @ns.response(200, "Already finished; nothing to do", job_model)
    @ns.response(202, "CANCELLING: containers are being stopped and resources released; it ends CANCELLED", job_model)
    @ns.response(401, "Missing or wrong bearer token", error)
    @ns.response(404, "No such job", error)
    @ns.response(503, "MongoDB unavailable", error)
    @require_token
    def delete(self, job_id: str):
        """Cancel a job: stop and remove its containers, release its resources. 202; 200 if finished; 404."""
        doc = _job_or_404(job_id)
        if doc["state"] in JOB_TERMINAL:
            return job_view(doc, logs=True), 200
        c = ctx()
        reason = "cancelled by request"
        doc = c.store.jobs.request_cancel(job_id, reason, by_user=True)
        if doc is None:  # finished meanwhile
            return job_view(_job_or_404(job_id), logs=True), 200
        c.store.jobs.cancel_unplaced(job_id, reason)
        c.hint_jm("job_cancelled", job_id)
        return job_view(_job_or_404(job_id), logs=True), 202
