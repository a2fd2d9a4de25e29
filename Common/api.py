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


def _bearer() -> str | None:
    """The request's bearer credential, or None when it sends no Authorization header at all."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, given = header.partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


def token_ok(given: str | None) -> bool:
    """Constant-time comparison with the configured token. Compared as bytes: ``hmac.compare_digest``
    raises TypeError on a str that is not ASCII (a header may carry any latin-1 text), which used to
    answer 500 with a traceback."""
    expected: str = current_app.config["RSWARM_TOKEN"]
    if not given or not expected or not given.isascii():
        return False
    return hmac.compare_digest(given.encode("ascii"), expected.encode("utf-8"))


def _unauthorized() -> Unauthorized:
    return Unauthorized("send Authorization: Bearer <token> (see the api_token file in the run directory)")


def require_token(fn: Callable[..., Any]) -> Callable[..., Any]:
    """401 unless ``Authorization: Bearer <token>`` carries the configured API token."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not token_ok(_bearer()):
            raise _unauthorized()
        return fn(*args, **kwargs)

    return wrapper


def reader_has_token() -> bool:
    """For reads open to anyone that show more to the token holder (log tails): True with the right
    token, False without an Authorization header, 401 with a wrong one (a caller who meant to
    authenticate learns that it failed instead of silently seeing less)."""
    given = _bearer()
    if given is None:
        return False
    if not token_ok(given):
        raise _unauthorized()
    return True


# ---- the Host header (DNS rebinding) --------------------------------------------------------------
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _split_host(value: str) -> tuple[str, str | None]:
    """("name", "port" or None) of a Host header or an allowed-hosts entry; IPv6 in brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, (rest[1:] if rest.startswith(":") else None)
    if value.count(":") == 1:
        name, _, port = value.partition(":")
        return name, port
    return value, None


def allowed_hosts(configured: str, port: int, *addresses: str) -> list[tuple[str, str | None]]:
    """The names a Host header may carry: the configured comma-separated list (``name`` for any port,
    ``name:port`` for one), or by default the loopback names and ``addresses`` (bind, advertise) at ``port``."""
    if configured.strip():
        return [_split_host(e) for e in configured.split(",") if e.strip()]
    # A wildcard bind address (0.0.0.0) stays in the list as a name: clients built from the config use it
    # in their URL, and no page from another site can make a browser send it as its Host.
    names = [*LOOPBACK_NAMES, *(a.strip().lower() for a in addresses if a.strip())]
    return [(n, str(port)) for n in dict.fromkeys(names)]


def install_host_check(app: Flask, allowed: list[tuple[str, str | None]]) -> None:
    """400 with a JSON error for a request whose Host header names none of ``allowed``.

    A browser page from another site can make its own name resolve to 127.0.0.1 (DNS rebinding) and then
    read this API as same-origin; its requests still carry that foreign name in Host, which this refuses.
    """

    @app.before_request
    def _check_host():  # type: ignore[no-untyped-def]
        raw = request.headers.get("Host", "")
        name, port = _split_host(raw)
        if raw.isascii() and any(name == n and (p is None or port == p) for n, p in allowed):
            return None
        shown = raw.encode("ascii", "backslashreplace").decode()[:200]
        body, status = error_response(400, f"Host {shown!r} is not a name this server answers to (allowed: "
                                           f"{', '.join(n if p is None else f'{n}:{p}' for n, p in allowed)}; "
                                           "see allowed_hosts in rswarm.toml)", field="Host")
        return jsonify(body), status


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
