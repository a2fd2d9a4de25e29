"""The FrontEnd's Flask application: /api/v1 with Swagger UI at /api/v1/docs."""

from __future__ import annotations

from flask import Flask
from flask_restx import Namespace, Resource

from Common.api import AUTHORIZATIONS, ERROR_SCHEMA, JsonApi, install_app_errors
from Common.config import Config
from Common.config import load as load_config
from Common.store import Store
from FrontEnd import jobs, workers
from FrontEnd.context import Context, ctx

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


def create_app(cfg: Config | None = None) -> Flask:
    cfg = cfg or load_config()
    app = Flask("rswarm-frontend")
    app.config["MAX_CONTENT_LENGTH"] = cfg.frontend.max_body_bytes
    app.config["RSWARM_TOKEN"] = cfg.token()
    app.config["SWAGGER_UI_DOC_EXPANSION"] = "list"
    app.config["RESTX_MASK_SWAGGER"] = False
    app.config["ERROR_404_HELP"] = False
    app.extensions["rswarm"] = Context(cfg, Store.connect(cfg, "frontend"))
    api = JsonApi(
        app,
        version="1.0",
        title="RESTfulSwarm FrontEnd",
        description="Submit jobs of CPU-pinned containers and follow them to a terminal state.",
        prefix="/api/v1",
        doc="/api/v1/docs",
        authorizations=AUTHORIZATIONS,
    )
    api.add_namespace(jobs.ns, path="/jobs")
    api.add_namespace(workers.ns, path="/workers")
    api.add_namespace(health, path="/health")
    install_app_errors(app)
    return app
