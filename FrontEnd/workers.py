"""/api/v1/workers: the cluster as the system sees it."""

from __future__ import annotations

from flask_restx import Namespace, Resource

from Common.api import ERROR_SCHEMA
from FrontEnd.context import ctx
from FrontEnd.schemas import WORKER_LIST_SCHEMA
from FrontEnd.views import worker_view

ns = Namespace("workers", description="Workers: capacity, free cores and memory, state, heartbeat")
worker_list = ns.schema_model("WorkerList", WORKER_LIST_SCHEMA)
error = ns.schema_model("Error", ERROR_SCHEMA)


@ns.route("")
class Workers(Resource):
    @ns.response(200, "Every registered worker", worker_list)
    @ns.response(503, "MongoDB unavailable", error)
    def get(self):
        """Workers with capacity, free cores, free memory, state and last heartbeat. 200."""
        return {"items": [worker_view(w) for w in ctx().store.workers.all()]}
