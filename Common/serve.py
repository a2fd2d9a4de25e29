"""Serve a Flask app with gunicorn (threads, bounded workers) from inside our own process."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

# Longer than any client of ours keeps a connection idle (Common.http.DEFAULT_MAX_IDLE).
KEEPALIVE_SECONDS = 15


class _App(BaseApplication):
    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.factory()


_PR_SET_PDEATHSIG = 1


def _die_with_master(_server: Any, _worker: Any) -> None:
    """gunicorn ``post_fork``: a worker gets SIGKILL the moment its master dies (a crash, a SIGKILL). Without
    this an orphaned worker serves on, holding the port, until it notices (a second or more), and the
    master the supervisor restarts cannot bind meanwhile."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the worker's own parent check still ends it
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def serve(factory: Callable[[], Flask], host: str, port: int, workers: int, threads: int, name: str) -> None:
    """Block serving ``factory()`` on host:port. The app is built in each worker, after the fork."""
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "proc_name": name,
        "timeout": 60,
        "graceful_timeout": 5,
        "keepalive": KEEPALIVE_SECONDS,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "post_fork": _die_with_master,
    }
    logging.getLogger(__name__).info("%s serving on %s:%s", name, host, port)
    _App(factory, options).run()
