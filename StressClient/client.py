"""The few FrontEnd calls the StressClient makes, one HTTP session per thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from Common import http


@dataclass
class Reply:
    status: int | None  # None: no HTTP answer at all
    body: Any = None
    error: str | None = None  # a stable reason key when not 2xx: "HTTP 422 unschedulable", "timeout", ...
    message: str | None = None


class FrontEnd:
    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.base = url.rstrip("/") + "/api/v1"
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = http.Session()
            s.headers["Authorization"] = f"Bearer {self.token}"
            self._local.session = s
        return s

    def _call(self, method: str, path: str, **kw: Any) -> Reply:
        try:
            r = self.session.request(method, self.base + path, timeout=(5.0, self.timeout), **kw)
        except requests.Timeout:
            return Reply(None, error="timeout", message=f"no answer within {self.timeout:g} s")
        except requests.ConnectionError as exc:
            return Reply(None, error="connection error", message=str(exc)[:300])
        except requests.RequestException as exc:
            return Reply(None, error="request error", message=str(exc)[:300])
        try:
            body = r.json()
        except ValueError:
            body = None
        if 200 <= r.status_code < 300:
            return Reply(r.status_code, body)
        code, message = "error", r.text[:300]
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = str(body["error"].get("code", code))
            message = str(body["error"].get("message", message))[:300]
        return Reply(r.status_code, body, f"HTTP {r.status_code} {code}", message)

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> Reply:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call("POST", "/jobs", json=body, headers=headers)

    def job(self, job_id: str) -> Reply:
        return self._call("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: str) -> Reply:
        return self._call("DELETE", f"/jobs/{job_id}")

    def evm_summary(self, job_id: str) -> Reply:
        return self._call("GET", f"/jobs/{job_id}/evms/summary")

    def evms(self, job_id: str, state: str, max_pages: int = 100) -> list[dict[str, Any]] | None:
        """A job's EVM records in ``state``, 1,000 a page; None when a page could not be read."""
        out: list[dict[str, Any]] = []
        after: int | None = None
        for _ in range(max_pages):
            params: dict[str, Any] = {"state": state, "limit": 1000, **({"after": after} if after is not None else {})}
            r = self._call("GET", f"/jobs/{job_id}/evms", params=params)
            if r.status != 200 or not isinstance(r.body, dict):
                return None
            out += r.body.get("items", [])
            after = r.body.get("next")
            if after is None:
                return out
        return out

    def workers(self) -> Reply:
        return self._call("GET", "/workers")

    def health(self) -> Reply:
        return self._call("GET", "/health")

    def jobs_in_state(self, state: str, max_pages: int = 40) -> Iterator[dict[str, Any]]:
        """Every job in ``state`` (newest first), a page of 500 at a time; stops quietly on an error."""
        after: str | None = None
        for _ in range(max_pages):
            params: dict[str, Any] = {"state": state, "limit": 500}
            if after:
                params["after"] = after
            r = self._call("GET", "/jobs", params=params)
            if r.status != 200 or not isinstance(r.body, dict):
                return
            yield from r.body.get("items", [])
            after = r.body.get("next")
            if not after:
                return
