"""The agent's reports to its Worker: JSON datagrams on the Worker's socket in the EPM directory.

Reports are hints: a datagram the Worker cannot take (it is not running, or it has not drained its
socket within ``SEND_TIMEOUT``) is dropped with the rest of that flush and counted, and the agent says it
again when the desired file shows MongoDB has not caught up. A local datagram socket queues only
net.unix.max_dgram_qlen (10) datagrams, so a burst waits for the Worker rather than being dropped.

    {"format": 1, "attempt": 0, "host": {"ip", "mac", "name"},
     "items": [[seq, state, {state: unix time}, ms, error], ...]}        # EVM outcomes
    {"format": 1, "attempt": 0, "status": {"present": n, "queued": n, "drained": bool, "pid": n}}
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from . import names

MAX_ITEMS = 500  # per datagram (what the Worker accepts: Common.evmstates.MAX_REPORT_ITEMS), and
MAX_BYTES = 120_000  # below a datagram socket's send buffer (~208 KiB)
FLUSH_SECONDS = 0.2
SEND_TIMEOUT = 0.5


class Reporter:
    def __init__(self, state_dir: str, attempt: int, host: dict[str, str]) -> None:
        self.target = os.path.join(state_dir, names.WORKER_SOCK)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(SEND_TIMEOUT)
        self.attempt, self.host = attempt, host
        self.items: list[list[Any]] = []
        self.last_flush = time.monotonic()
        self.sent = self.dropped = 0

    def add(self, seq: int, state: str, times: dict[str, float], ms: float | None = None,
            error: str | None = None) -> None:
        self.items.append([seq, state, times, None if ms is None else round(ms, 3),
                           None if error is None else error[:900]])
        if len(self.items) >= MAX_ITEMS:
            self.flush()

    def due(self) -> bool:
        return bool(self.items) and time.monotonic() - self.last_flush >= FLUSH_SECONDS

    def _send(self, doc: dict[str, Any]) -> bool:
        try:
            self.sock.sendto(json.dumps(doc, separators=(",", ":")).encode(), self.target)
            self.sent += 1
            return True
        except OSError:  # no Worker listening, or it did not take it in time: a hint lost, resent later
            self.dropped += 1
            return False

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        items, self.items = self.items, []
        chunk: list[list[Any]] = []
        size = 0
        for i, item in enumerate(items):
            chunk.append(item)
            size += len(json.dumps(item))
            if len(chunk) >= MAX_ITEMS or size >= MAX_BYTES or i == len(items) - 1:
                doc = {"format": names.FORMAT, "attempt": self.attempt, "host": self.host, "items": chunk}
                if not self._send(doc):
                    return  # the Worker is away or stuck: do not wait for it once per datagram
                chunk, size = [], 0

    def status(self, **fields: Any) -> None:
        self._send({"format": names.FORMAT, "attempt": self.attempt, "status": {**fields, "pid": os.getpid()}})

    def close(self) -> None:
        self.flush()
        self.sock.close()
