"""Per-process resources of the FrontEnd: the config, the MongoDB store and the hint sender."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from Common.config import Config
from Common.keys import Keyring
from Common.messaging import Sender
from Common.store import Store

CLUSTER_SNAPSHOT = "cluster"  # cache key: (monotonic time, workers by id, active strategy)


@dataclass
class Context:
    cfg: Config
    store: Store
    _sender: Sender | None = field(default=None, repr=False)
    _discovery: Sender | None = field(default=None, repr=False)
    _pid: int = 0
    _discovery_pid: int = 0
    cache: dict[str, Any] = field(default_factory=dict, repr=False)  # short-lived read caches, per process

    @property
    def hints(self) -> Sender:
        # Created lazily and per process: a ZeroMQ socket must not cross a fork.
        if self._sender is None or self._pid != os.getpid():
            keys = Keyring.control_plane(self.cfg.token())
            self._sender = Sender(self.cfg.jobmanager_hint_endpoint, "frontend", keys, to="jobmanager",
                                  limits=self.cfg.zmq)
            self._pid = os.getpid()
        return self._sender

    def hint_jm(self, reason: str, job_id: str | None = None, node: str | None = None) -> None:
        self.hints.send("hint", _hint(reason, job_id, node))

    def hint_discovery(self, reason: str, node: str) -> None:
        if self._discovery is None or self._discovery_pid != os.getpid():
            self._discovery = Sender(self.cfg.discovery_endpoint, "frontend", Keyring.control_plane(self.cfg.token()),
                                     to="discovery", limits=self.cfg.zmq)
            self._discovery_pid = os.getpid()
        self._discovery.send("hint", _hint(reason, None, node))


def _hint(reason: str, job_id: str | None, node: str | None) -> dict[str, str]:
    body = {"reason": reason}
    if job_id:
        body["job_id"] = job_id
    if node:
        body["node"] = node
    return body


def ctx() -> Context:
    return current_app.extensions["rswarm"]
