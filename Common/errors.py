"""The small error hierarchy every REST API answers with.

Each error becomes JSON ``{"error": {"code", "message", "field"?, "retry_after"?}}`` with the HTTP
status that fits: 400 invalid, 401 unauthenticated, 404, 409 conflict, 413 too large,
422 unschedulable by construction, 503 dependency down.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        err.update(self.extra)
        return {"error": err}


class Invalid(APIError):
    status = 400
    code = "invalid"


class Unauthorized(APIError):
    status = 401
    code = "unauthorized"


class NotFound(APIError):
    status = 404
    code = "not_found"


class Conflict(APIError):
    status = 409
    code = "conflict"


class TooLarge(APIError):
    status = 413
    code = "too_large"


class Unschedulable(APIError):
    status = 422
    code = "unschedulable"


class Unavailable(APIError):
    status = 503
    code = "unavailable"
