"""The FrontEnd's Flask application: /api/v1 with Swagger UI at /api/v1/docs."""

from __future__ import annotations

from functools import cached_property

from flask import Flask, Response
from flask_restx import Namespace, Resource

from Common.api import AUTHORIZATIONS, ERROR_SCHEMA, JsonApi, allowed_hosts, install_app_errors, install_host_check
from Common.config import Config
from Common.config import load as load_config
from Common.metrics import (
    CONTENT_TYPE,
    ClusterCollector,
    InfoCollector,
    SupervisionCollector,
    exposition,
    instrument_flask,
)
from Common.store import Store
from FrontEnd import epms, events, evms, jobs, lifecycle, scheduler, status, workers
from FrontEnd.context import Context, ctx
from FrontEnd.schemas import with_error_examples

health = Namespace("health", description="Liveness of the FrontEnd and its MongoDB")
health_error = health.schema_model("Error", ERROR_SCHEMA)


@health.route("")
class Health(Resource):
    @health.response(200, "FrontEnd and MongoDB answer")
    @health.response(503, "MongoDB unavailable", health_error)
    def get(self):
        """200 when MongoDB answers, else 503."""
        if not ctx().store.ping():
            return {"error": {"code": "unavailable", "message": "MongoDB does not answer"}}, 503
        return {"status": "ok"}


class FrontEndApi(JsonApi):
    """The OpenAPI document with an example body on every error response (FrontEnd.schemas)."""

    @cached_property
    def __schema__(self):  # type: ignore[override]
        doc = super().__schema__
        return with_error_examples(doc) if "paths" in doc else doc


def create_app(cfg: Config | None = None) -> Flask:
    cfg = cfg or load_config()
    app = Flask("rswarm-frontend")
    app.config["MAX_CONTENT_LENGTH"] = cfg.frontend.max_body_bytes
    app.config["RSWARM_TOKEN"] = cfg.token()
    fec = cfg.frontend
    install_host_check(app, allowed_hosts(fec.allowed_hosts, fec.port, fec.host))
    app.config["SWAGGER_UI_DOC_EXPANSION"] = "list"
    app.config["RESTX_MASK_SWAGGER"] = False
    app.config["ERROR_404_HELP"] = False
    app.extensions["rswarm"] = Context(cfg, Store.connect(cfg, "frontend"))
    api = FrontEndApi(
        app,
        version="1.0",
        title="RESTfulSwarm FrontEnd",
        description="Submit jobs of CPU-pinned containers and follow them to a terminal state.",
        prefix="/api/v1",
        doc="/api/v1/docs",
        authorizations=AUTHORIZATIONS,
    )
    api.add_namespace(jobs.ns, path="/jobs")
    api.add_namespace(evms.ns, path="/jobs")
    api.add_namespace(epms.ns, path="/jobs")
    api.add_namespace(lifecycle.tasks_ns, path="/jobs")
    api.add_namespace(lifecycle.checkpoints_ns, path="/checkpoints")
    api.add_namespace(lifecycle.migrations_ns, path="/migrations")
    api.add_namespace(workers.ns, path="/workers")
    api.add_namespace(scheduler.ns, path="/scheduler")
    api.add_namespace(scheduler.queue_ns, path="/queue")
    api.add_namespace(health, path="/health")
    api.add_namespace(events.ns)  # /events and /jobs/{id}/events
    app.register_blueprint(status.bp)  # /status, read-only HTML
    instrument_flask(app)
    info = InfoCollector("frontend", cfg.cluster())
    cluster = ClusterCollector(lambda: ctx().store)
    restarts = SupervisionCollector(cfg.run_path)  # this host's supervised processes (Management.py up)
    # Outside the API (not in Swagger): each gunicorn worker answers for all of them (multiprocess mode).
    app.add_url_rule("/metrics", "metrics",
                     lambda: Response(exposition([info, cluster, restarts]), mimetype=CONTENT_TYPE))
    install_app_errors(app)
    return app
