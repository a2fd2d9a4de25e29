"""The JobManager's REST client for the GlobalManager (authenticated, short timeouts, no retries here:
the JobManager's sweep re-sends whatever did not get through)."""

from __future__ import annotations

import logging

import requests

from Common import http

log = logging.getLogger(__name__)


class GMClient:
    def __init__(self, base_url: str, token: str, timeout: float = 5.0) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"
        self.session = http.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def _call(self, path: str, method: str = "POST") -> tuple[int | None, str]:
        """(HTTP status, error message); status None when the GlobalManager did not answer at all."""
        try:
            resp = self.session.request(method, self.base + path, timeout=self.timeout)
        except requests.RequestException as exc:
            log.warning("GlobalManager unreachable for %s: %s", path, exc)
            return None, f"the GlobalManager did not answer: {exc}"
        if resp.status_code >= 300:
            log.warning("GlobalManager answered %s for %s: %s", resp.status_code, path, resp.text[:300])
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:300]
            return resp.status_code, str(message)
        return resp.status_code, ""

    def _post(self, path: str, method: str = "POST") -> bool:
        status, _ = self._call(path, method)
        return status is not None and status < 300

    def deploy(self, job_id: str) -> tuple[int | None, str]:
        """(status, message): 2xx deployed; 409 refused for good (the GM has failed the job's tasks);
        anything else (503, no answer) is transient and retried by the JobManager with backoff."""
        return self._call(f"/jobs/{job_id}/deploy")

    def stop(self, job_id: str) -> bool:
        return self._post(f"/jobs/{job_id}/stop")

    def cleanup(self, job_id: str) -> bool:
        return self._post(f"/jobs/{job_id}/cleanup")

    def remove_node(self, name: str) -> bool:
        return self._post(f"/swarm/nodes/{name}", method="DELETE")
