"""The GlobalManager's REST API (/api/v1, Swagger UI at /api/v1/docs)."""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import docker
from flask import Flask, current_app
from flask_restx import Namespace, Resource

from Common.api import (
    AUTHORIZATIONS,
    ERROR_SCHEMA,
    JsonApi,
    allowed_hosts,
    install_app_errors,
    install_host_check,
    require_token,
)
from Common.config import Config
from Common.errors import Conflict, NotFound, Unavailable
from Common.keys import Keyring
from Common.logs import Throttled
from Common.messaging import Sender
from Common.metrics import instrument_flask
from Common.states import JOB_TERMINAL, TASK_TERMINAL, JobState, TaskState
from Common.store import Store, retention
from GlobalManager.swarm import SubnetConflict, Swarm

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass
class GMContext:
    cfg: Config
    store: Store
    swarm: Swarm
    workers_pub: Sender  # PUB: dispatch hints, topic = node name
    reports: Sender  # PUSH to Discovery: failures the GM itself observes

    def dispatch(self, job: dict[str, Any], reason: str) -> list[str]:
        """Hint every node that holds, or until the job's last restart held, one of its tasks."""
        current = {t["node"] for t in job["tasks"].values() if t.get("node")}
        previous = {h["node"] for h in job.get("history", [])[-len(job["tasks"]):] if h.get("node")}
        moving = {m["target"] for m in self.store.migrations.query(job_id=job["_id"], limit=20)
                  if m.get("target") and m["state"] in ("PLACED", "CHECKPOINTED")}
        nodes = sorted(current | previous | moving)
        for node in nodes:
            self.workers_pub.send("dispatch", {"reason": reason, "job_id": job["_id"]}, node=node)
        return nodes

    def fail_scheduled(self, job: dict[str, Any], reason: str) -> None:
        """Report the job's not-yet-started tasks FAILED (through Discovery, like any other report)."""
        for name, t in job["tasks"].items():
            if t["state"] == TaskState.SCHEDULED.value:
                self.reports.send("task_status", {"job_id": job["_id"], "task": name, "attempt": t["attempt"],
                                                  "state": TaskState.FAILED.value, "node": t["node"],
                                                  "at": time.time(), "reason": reason})


def gm() -> GMContext:
    return current_app.extensions["rswarm-gm"]


def _job(job_id: str) -> dict[str, Any]:
    doc = gm().store.jobs.get(job_id) if JOB_ID.match(job_id) else None
    if doc is None:
        raise NotFound(f"no job {job_id!r}", field="job_id")
    return doc


swarm_ns = Namespace("swarm", description="The Swarm this GlobalManager manages")
jobs_ns = Namespace("jobs", description="Deploy, stop and clean up jobs on the Swarm (used by the JobManager)")
error = swarm_ns.schema_model("Error", ERROR_SCHEMA)
jobs_error = jobs_ns.schema_model("Error", ERROR_SCHEMA)
SWARM_SCHEMA = {"type": "object", "required": ["state"], "properties": {
    "state": {"type": "string", "example": "active"}, "node_id": {"type": "string"},
    "node_addr": {"type": "string"}, "managers": {"type": "integer"}, "nodes": {"type": "integer"}}}
NODES_SCHEMA = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {
    "type": "object", "required": ["id", "hostname"], "properties": {
        "id": {"type": "string"}, "hostname": {"type": "string"}, "role": {"type": "string"},
        "availability": {"type": "string"}, "state": {"type": "string"}}}}}}
DEPLOY_SCHEMA = {"type": "object", "required": ["job_id", "nodes"], "properties": {
    "job_id": {"type": "string"}, "nodes": {"type": "array", "items": {"type": "string"}},
    "network": {"type": "object"}}}
CLEANUP_SCHEMA = {"type": "object", "required": ["job_id", "network_removed"], "properties": {
    "job_id": {"type": "string"}, "network_removed": {"type": "boolean"}}}
swarm_model = swarm_ns.schema_model("Swarm", SWARM_SCHEMA)
nodes_model = swarm_ns.schema_model("Nodes", NODES_SCHEMA)
deploy_model = jobs_ns.schema_model("Deploy", DEPLOY_SCHEMA)
cleanup_model = jobs_ns.schema_model("Cleanup", CLEANUP_SCHEMA)


def _docker_down(exc: Exception) -> Unavailable:
    log.warning("Docker engine error: %s", exc)
    return Unavailable(f"the Docker engine did not answer: {exc}")


@swarm_ns.route("")
class SwarmInfo(Resource):
    @swarm_ns.response(200, "Swarm state (never the join tokens)", swarm_model)
    @swarm_ns.response(503, "Docker engine unavailable", error)
    def get(self):
        """The Swarm's state, node id and size. 200; 503."""
        try:
            return gm().swarm.describe()
        except docker.errors.DockerException as exc:
            raise _docker_down(exc) from None


@swarm_ns.route("/nodes")
class Nodes(Resource):
    @swarm_ns.response(200, "Swarm nodes", nodes_model)
    @swarm_ns.response(503, "Docker engine unavailable", error)
    def get(self):
        """Describe the Swarm's nodes. 200; 503."""
        try:
            return {"items": gm().swarm.nodes()}
        except docker.errors.DockerException as exc:
            raise _docker_down(exc) from None


@jobs_ns.route("/<string:job_id>/deploy")
@jobs_ns.param("job_id", "the job's id")
class Deploy(Resource):
    @jobs_ns.doc(security="bearer")
    @jobs_ns.response(202, "Network ready; each node's Worker told", deploy_model)
    @jobs_ns.response(401, "Missing or wrong bearer token", jobs_error)
    @jobs_ns.response(404, "No such job", jobs_error)
    @jobs_ns.response(409, "The job is not placed, or already finished", jobs_error)
    @jobs_ns.response(503, "Docker engine unavailable", jobs_error)
    @require_token
    def post(self, job_id: str):
        """Make sure the job's overlay network exists and tell each node's Worker. 202; 404; 409; 503."""
        c = gm()
        job = _job(job_id)
        if job["state"] == JobState.QUEUED.value or job["state"] in JOB_TERMINAL:
            raise Conflict(f"job {job_id} is {job['state']}: only placed, unfinished jobs are deployed",
                           field="job_id")
        placed = sorted({t["node"] for t in job["tasks"].values() if t.get("node")})
        try:
            # Tasks placed only on hollow nodes (Worker/hollow.py) run no container: no network to make.
            hollow = bool(placed) and c.store.workers.hollow_among(placed) == set(placed)
            net: dict[str, Any] = {} if hollow else c.swarm.ensure_network(job)
        except SubnetConflict as exc:
            # The JobManager keeps jobs whose subnet is taken in the queue; this is the last line only.
            c.fail_scheduled(job, str(exc))
            raise Conflict(str(exc), field="job_info.network.subnet") from None
        except docker.errors.APIError as exc:
            if exc.status_code is not None and 400 <= exc.status_code < 500:
                # The engine refuses the network itself (invalid, conflicting): retrying cannot fix it.
                reason = f"cannot create the job's network: {exc.explanation or exc}"
                c.fail_scheduled(job, reason)
                raise Conflict(reason, field="job_info.network") from None
            raise _docker_down(exc) from None
        except docker.errors.DockerException as exc:
            raise _docker_down(exc) from None
        nodes = c.dispatch(job, "deploy")
        return {"job_id": job_id, "nodes": nodes, "network": net}, 202


@jobs_ns.route("/<string:job_id>/stop")
@jobs_ns.param("job_id", "the job's id")
class Stop(Resource):
    @jobs_ns.doc(security="bearer")
    @jobs_ns.response(202, "Each node's Worker told to stop the job's containers", deploy_model)
    @jobs_ns.response(401, "Missing or wrong bearer token", jobs_error)
    @jobs_ns.response(404, "No such job", jobs_error)
    @require_token
    def post(self, job_id: str):
        """Tell the Workers holding the job's tasks to stop them (the job must be cancelled first). 202; 404."""
        job = _job(job_id)
        return {"job_id": job_id, "nodes": gm().dispatch(job, "stop")}, 202


@jobs_ns.route("/<string:job_id>/cleanup")
@jobs_ns.param("job_id", "the job's id")
class Cleanup(Resource):
    @jobs_ns.doc(security="bearer")
    @jobs_ns.response(200, "Whether the job's network is gone", cleanup_model)
    @jobs_ns.response(401, "Missing or wrong bearer token", jobs_error)
    @jobs_ns.response(404, "No such job", jobs_error)
    @jobs_ns.response(409, "The job is still active", jobs_error)
    @jobs_ns.response(503, "Docker engine unavailable", jobs_error)
    @require_token
    def post(self, job_id: str):
        """Remove a finished job's network once its containers are gone. 200; 404; 409; 503."""
        job = _job(job_id)
        if not all(t["state"] in TASK_TERMINAL for t in job["tasks"].values()):
            raise Conflict(f"job {job_id} still has unfinished tasks", field="job_id")
        if gm().store.networks.get(job_id) is None:
            return {"job_id": job_id, "network_removed": True}  # never had one (reserved before it is made)
        try:
            removed = gm().swarm.remove_network(job_id)
        except docker.errors.DockerException as exc:
            raise _docker_down(exc) from None
        return {"job_id": job_id, "network_removed": removed}


NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
REMOVED_SCHEMA = {"type": "object", "required": ["node", "removed"], "properties": {
    "node": {"type": "string"}, "removed": {"type": "boolean"},
    "forced": {"type": "boolean", "description": "its engine did not answer: removed on the manager's side"}}}
removed_model = swarm_ns.schema_model("NodeRemoved", REMOVED_SCHEMA)


@swarm_ns.route("/nodes/<string:name>")
@swarm_ns.param("name", "the worker's name")
class Node(Resource):
    @swarm_ns.doc(security="bearer")
    @swarm_ns.response(200, "The node left the Swarm and is removed", removed_model)
    @swarm_ns.response(401, "Missing or wrong bearer token", error)
    @swarm_ns.response(404, "No such worker", error)
    @swarm_ns.response(409, "Still holds work, or is a manager, or its engine is unknown (retry later)", error)
    @swarm_ns.response(503, "A Docker engine did not answer", error)
    @require_token
    def delete(self, name: str):
        """Make a drained worker's node leave the Swarm, then remove it. 200; 401; 404; 409; 503."""
        c = gm()
        worker = c.store.workers.get(name) if NODE_NAME.match(name) else None
        if worker is None:
            raise NotFound(f"no worker {name!r}", field="name")
        if worker.get("state") == "REMOVED":
            return {"node": name, "removed": True}
        busy = [j["_id"] for j in c.store.jobs.active_on(name)
                if any(t.get("node") == name and t["state"] not in TASK_TERMINAL for t in j["tasks"].values())]
        if busy or worker.get("allocations"):
            raise Conflict(f"worker {name} still holds work ({len(busy)} jobs); drain it and retry",
                           field="name", retry_after=2)
        try:
            how = c.swarm.remove_node(worker)
        except ValueError as exc:
            raise Conflict(str(exc), field="name") from None
        except docker.errors.DockerException as exc:  # the manager's own engine did not answer
            raise _docker_down(exc) from None
        c.store.workers.mark_removed(name, forced=how == "forced")
        return {"node": name, "removed": True, "forced": how == "forced"}


def sweep_networks(c: GMContext) -> None:
    """Remove the networks of finished (or vanished) jobs; the hints for it may have been lost."""
    active = c.store.networks.active()
    jobs = c.store.jobs.many({rec["_id"] for rec in active}, {"tasks": 1})  # one query, not one per network
    for rec in active:
        job = jobs.get(rec["_id"])
        if job is None or all(t["state"] in TASK_TERMINAL for t in job["tasks"].values()):
            try:
                c.swarm.remove_network(rec["_id"])
            except docker.errors.DockerException as exc:
                log.warning("network sweep: %s", exc)


def _sweeper(c: GMContext, stop: threading.Event) -> None:
    last_retention = 0.0
    nets, kept = Throttled(log), Throttled(log)  # MongoDB away: one line per 30 s, not a traceback per pass
    while not stop.wait(c.cfg.globalmanager.sweep_seconds):
        try:
            sweep_networks(c)
        except Exception as exc:
            nets.failed(exc, "network sweep failed")
        else:
            nets.ok()
        if time.monotonic() - last_retention >= c.cfg.storage.sweep_seconds:  # checkpoints, old jobs, EVM records
            last_retention = time.monotonic()
            try:
                deleted = retention.sweep(c.store, c.cfg.storage)
                if any(deleted.values()):
                    log.info("retention sweep deleted %s", {k: v for k, v in deleted.items() if v})
            except Exception as exc:
                kept.failed(exc, "retention sweep failed")
            else:
                kept.ok()


def create_app(cfg: Config, start_sweeper: bool = True) -> Flask:
    app = Flask("rswarm-globalmanager")
    app.config["RSWARM_TOKEN"] = cfg.token()
    gmc = cfg.globalmanager
    install_host_check(app, allowed_hosts(gmc.allowed_hosts, gmc.port, gmc.host, gmc.advertise_addr))
    app.config["SWAGGER_UI_DOC_EXPANSION"] = "list"
    app.config["ERROR_404_HELP"] = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    store = Store.connect(cfg, "globalmanager")
    keys = Keyring.control_plane(cfg.token())
    c = GMContext(
        cfg=cfg,
        store=store,
        swarm=Swarm(cfg.globalmanager.docker_url, store, cfg.cluster(), cfg.globalmanager.network_pool,
                    cfg.globalmanager.network_prefix),
        workers_pub=Sender(f"tcp://{cfg.globalmanager.pub_host}:{cfg.globalmanager.pub_port}", "globalmanager",
                           keys, pub=True, bind=True, limits=cfg.zmq),
        reports=Sender(cfg.discovery_endpoint, "globalmanager", keys, to="discovery", limits=cfg.zmq),
    )
    app.extensions["rswarm-gm"] = c
    api = JsonApi(app, version="1.0", title="RESTfulSwarm GlobalManager",
                  description="Acts on the Docker Swarm on behalf of the JobManager.",
                  prefix="/api/v1", doc="/api/v1/docs", authorizations=AUTHORIZATIONS)
    api.add_namespace(swarm_ns, path="/swarm")
    api.add_namespace(jobs_ns, path="/jobs")
    install_app_errors(app)
    instrument_flask(app)  # rswarm_http_*; served by the metrics endpoint started in __main__
    if start_sweeper:
        threading.Thread(target=_sweeper, args=(c, threading.Event()), name="network-sweep", daemon=True).start()
    return app
