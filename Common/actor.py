"""The one start-up every actor's ``python -m ACTOR`` shares: logging, config, the token check, signals.

    def main() -> int:
        return actor.main("jobmanager", body)     # body(cfg, log) -> exit code

A config error or a missing API token exits 2 with one line on stderr naming the actor (Management.py
and a supervisor show it); ``body`` runs only with a valid config. Loop actors (JobManager, Discovery,
Worker) hand their loop to ``run_loop``, which serves /metrics and turns SIGTERM/SIGINT into ``stop()``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from Common.config import Config, ConfigError
from Common.config import load as load_config
from Common.logs import setup

Body = Callable[[Config, logging.Logger], int]


def main(role: str, body: Body, check: Callable[[Config], None] | None = None,
         multiprocess_metrics: bool = False, needs_token: bool = True) -> int:
    """Start actor ``role``: ``check(cfg)`` may raise ConfigError or ValueError for settings only this actor
    reads. ``multiprocess_metrics`` is for the gunicorn-served actors (see Common/metrics.py). A Worker
    (``needs_token=False``) holds its node key instead of the API token; its ``check`` looks for it."""
    log = setup(role)
    try:
        cfg = load_config()
        if check is not None:
            check(cfg)
    except (ConfigError, ValueError) as exc:
        print(f"{role}: config error: {exc}", file=sys.stderr)
        return 2
    if needs_token and not cfg.token():
        print(f"{role}: no API token (set RSWARM_API_TOKEN or run Management.py up)", file=sys.stderr)
        return 2
    if multiprocess_metrics:
        _multiprocess_metrics(cfg.run_path / "metrics" / role)
    return body(cfg, log)


def run_loop(run: Callable[[], None], stop: Callable[[], None], role: str, cfg: Config, metrics_host: str,
             metrics_port: int, node: str | None = None) -> None:
    """Serve /metrics, turn SIGTERM/SIGINT into ``stop()``, and block in ``run()``."""
    from Common.metrics import SupervisionCollector, start_metrics_server

    # On a Worker host the supervisord config sets this, so that host's restart counts are served.
    extra = [SupervisionCollector(cfg.run_path, node)] if os.environ.get("RSWARM_SUPERVISION_METRICS") == "1" else []
    start_metrics_server(role, metrics_host, metrics_port, cfg.cluster(), node, extra)
    signal.signal(signal.SIGTERM, lambda *_: stop())
    signal.signal(signal.SIGINT, lambda *_: stop())
    run()


def _multiprocess_metrics(path: Path) -> None:
    """prometheus_client's multiprocess mode: it is chosen by this variable before prometheus_client is
    first imported, so this runs before any actor module is; the directory starts empty."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
