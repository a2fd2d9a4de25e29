"""HTTP client sessions that survive the keep-alive race.

A server closes an idle keep-alive connection after ``Common.serve.KEEPALIVE_SECONDS``; a client that sends
on that connection at the same instant gets "Remote end closed connection without response" although the
server never saw the request. ``Session`` therefore drops its pooled connections once they have been idle
for ``max_idle`` seconds (well under the server's limit), so a request after a pause always opens a fresh
connection, and it retries idempotent methods (GET, PUT, DELETE, HEAD, OPTIONS) on a dropped connection.
POST is never retried here: a job submission must not be sent twice by the transport (a client that
wants to retry one sends an ``Idempotency-Key`` header, which the FrontEnd honours).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

DEFAULT_MAX_IDLE = 2.0


class Session(requests.Session):
    def __init__(self, max_idle: float = DEFAULT_MAX_IDLE, pool_maxsize: int = 10) -> None:
        super().__init__()
        retry = Retry(total=3, connect=3, read=2, status=0, other=0, backoff_factor=0.05,
                      allowed_methods=Retry.DEFAULT_ALLOWED_METHODS, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=pool_maxsize)
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        self.max_idle = max_idle
        self._last_used = time.monotonic()
        self._lock = threading.Lock()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        with self._lock:
            now = time.monotonic()
            if now - self._last_used > self.max_idle:
                for adapter in self.adapters.values():
                    adapter.close()  # drops idle pooled connections; the pool itself is rebuilt on demand
            self._last_used = now
        try:
            return super().request(method, url, *args, **kwargs)
        finally:
            self._last_used = time.monotonic()
