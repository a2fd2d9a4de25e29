"""/api/v1/workers: the cluster as the system sees it, and node maintenance (drain, undrain, remove)."""

from __future__ import annotations

import re

from flask_restx import Namespace, Resource

from Common.api import ERROR_SCHEMA, require_token
from Common.errors import Conflict, NotFound
from Common.store.workers import REMOVED
from FrontEnd.context import CLUSTER_SNAPSHOT, ctx
from FrontEnd.schemas import WORKER_LIST_SCHEMA, WORKER_VIEW_SCHEMA
from FrontEnd.views import worker_view

ns = Namespace("workers", description="Workers: capacity, free cores and memory, state, heartbeat; maintenance")
worker_list = ns.schema_model("WorkerList", WORKER_LIST_SCHEMA)
worker_model = ns.schema_model("Worker", WORKER_VIEW_SCHEMA)
error = ns.schema_model("Error", ERROR_SCHEMA)

WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")


def _worker_or_404(worker_id: str) -> dict:
    doc = ctx().store.workers.get(worker_id) if WORKER_ID.match(worker_id) else None
    if doc is None:
        raise NotFound(f"no worker {worker_id!r}", field="worker_id")
    return doc


@ns.route("")
class Workers(Resource):
    @ns.response(200, "Every registered worker", worker_list)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self):
        """Workers with capacity, free cores, free memory, state and last heartbeat. 200."""
        return {"items": [worker_view(w) for w in ctx().store.workers.all()]}


@ns.route("/<string:worker_id>")
@ns.param("worker_id", "the worker's name")
class Worker(Resource):
    @ns.response(200, "The worker", worker_model)
    @ns.response(404, "No such worker", error)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self, worker_id: str):
        """One worker. 200; 404."""
        return worker_view(_worker_or_404(worker_id))

    @ns.doc(security="bearer")
    @ns.response(202, "Draining, then leaving the Swarm (the GlobalManager does it)", worker_model)
    @ns.response(401, "Missing or wrong bearer token", error)
    @ns.response(404, "No such worker", error)
    @ns.response(503, "MongoDB unavailable", error)
    @require_token
    def delete(self, worker_id: str):
        """Move the worker's work away, then make its node leave the Swarm. 202; 401; 404."""
        _worker_or_404(worker_id)
        c = ctx()
        doc = c.store.workers.request_removal(worker_id)
        c.cache.pop(CLUSTER_SNAPSHOT, None)
        if doc is None:
            doc = _worker_or_404(worker_id)
        else:
            c.hint_discovery("worker_drained", node=worker_id)
            c.hint_jm("worker_remove", node=worker_id)
        return worker_view(doc), 202


@ns.route("/<string:worker_id>/drain")
@ns.param("worker_id", "the worker's name")
class Drain(Resource):
    @ns.doc(security="bearer")
    @ns.response(200, "Draining: no new work; its jobs are restarted on other workers", worker_model)
    @ns.response(401, "Missing or wrong bearer token", error)
    @ns.response(404, "No such worker", error)
    @ns.response(409, "The worker is down or removed", error)
    @ns.response(503, "MongoDB unavailable", error)
    @require_token
    def post(self, worker_id: str):
        """Keep new work away from a worker and move its work elsewhere. 200; 401; 404; 409."""
        current = _worker_or_404(worker_id)
        c = ctx()
        doc = c.store.workers.set_drain(worker_id, True)
        if doc is None:
            raise Conflict(f"worker {worker_id} is {current.get('state')}; only a live worker can be drained",
                           field="worker_id")
        c.store.events.record("node_drain", node=worker_id)
        c.hint_discovery("worker_drained", node=worker_id)
        return worker_view(doc)


@ns.route("/<string:worker_id>/undrain")
@ns.param("worker_id", "the worker's name")
class Undrain(Resource):
    @ns.doc(security="bearer")
    @ns.response(200, "Taking new work again", worker_model)
    @ns.response(401, "Missing or wrong bearer token", error)
    @ns.response(404, "No such worker", error)
    @ns.response(409, "The worker is down, removed or being removed", error)
    @ns.response(503, "MongoDB unavailable", error)
    @require_token
    def post(self, worker_id: str):
        """Let a drained worker take new work again. 200; 401; 404; 409."""
        current = _worker_or_404(worker_id)
        if current.get("remove_requested") or current.get("state") == REMOVED:
            raise Conflict(f"worker {worker_id} is being removed", field="worker_id")
        c = ctx()
        doc = c.store.workers.set_drain(worker_id, False)
        if doc is None:
            raise Conflict(f"worker {worker_id} is {current.get('state')}", field="worker_id")
        c.store.events.record("node_undrain", node=worker_id)
        c.hint_jm("worker_ready")
        return worker_view(doc)
