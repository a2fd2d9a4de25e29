"""What the FrontEnd and GlobalManager REST APIs share: JSON errors, bearer auth, body parsing."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, current_app, jsonify, request
from flask_restx import Api
from pymongo.errors import PyMongoError
from werkzeug.exceptions import HTTPException

from Common.errors import APIError, Invalid, Unauthorized

log = logging.getLogger(__name__)

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "example": "invalid"},
                "message": {"type": "string", "example": "job_info.tasks.t1.req_cores must be an integer"},
                "field": {"type": "string", "example": "job_info.tasks.t1.req_cores"},
            },
        }
    },
}

AUTHORIZATIONS = {
    "bearer": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "Type: Bearer TOKEN, where TOKEN is the content of the run directory's api_token file",
    }
}


def _http_code(status: int) -> str:
    return {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "unschedulable",
            503: "unavailable"}.get(status, "error" if status < 500 else "internal")


def error_response(status: int, message: str, field: str | None = None) -> tuple[dict[str, Any], int]:
    err: dict[str, Any] = {"code": _http_code(status), "message": message}
    if field:
        err["field"] = field
    return {"error": err}, status


class JsonApi(Api):
    """A flask-restx Api whose every error, expected or not, is our JSON error shape."""

    def handle_error(self, e: Exception):  # type: ignore[override]
        if isinstance(e, APIError):
            resp = jsonify(e.body())
            resp.status_code = e.status
            if e.status == 401:
                resp.headers["WWW-Authenticate"] = 'Bearer realm="rswarm"'
            return resp
        if isinstance(e, HTTPException):
            body, status = error_response(e.code or 500, e.description or e.name)
            resp = jsonify(body)
            resp.status_code = status
            return resp
        if isinstance(e, PyMongoError):
            log.warning("MongoDB error on %s %s: %s", request.method, request.path, e)
            resp = jsonify(error_response(503, "MongoDB is unavailable; retry later")[0])
            resp.status_code = 503
            resp.headers["Retry-After"] = "2"
            return resp
        log.exception("unhandled error on %s %s", request.method, request.path)
        body, status = error_response(500, "internal error; see the server log")
        resp = jsonify(body)
        resp.status_code = status
        return resp


def install_app_errors(app: Flask) -> None:
    """JSON errors for routes outside the Api too (unknown paths, oversize bodies)."""

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        body, status = error_response(e.code or 500, e.description or e.name)
        return jsonify(body), status


def require_token(fn: Callable[..., Any]) -> Callable[..., Any]:
    """401 unless ``Authorization: Bearer <token>`` carries the configured API token."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        expected: str = current_app.config["RSWARM_TOKEN"]
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not expected or not hmac.compare_digest(given.strip(), expected):
            raise Unauthorized("send Authorization: Bearer <token> (see the api_token file in the run directory)")
        return fn(*args, **kwargs)

    return wrapper


def json_body() -> Any:
    """The request's JSON body or a 400 that says what is wrong with it."""
    if not request.data:
        raise Invalid("a JSON body is required", field="body")
    if not request.is_json:
        raise Invalid("Content-Type must be application/json", field="body")
    data = request.get_json(silent=True)
    if data is None:
        raise Invalid("the body is not valid JSON", field="body")
    return data


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"{name} must be an integer", field=name) from None
    if not lo <= value <= hi:
        raise Invalid(f"{name} must be between {lo} and {hi}", field=name)
    return value
