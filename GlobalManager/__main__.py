"""python -m GlobalManager: make sure the Swarm exists, then serve the GM's REST API."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import docker

from Common.config import ConfigError
from Common.config import load as load_config
from Common.logs import setup
from Common.serve import serve


def _multiprocess_metrics(path: Path) -> None:
    """prometheus_client's multiprocess mode for this gunicorn-served actor (see Common/metrics.py): it is
    chosen by this variable before prometheus_client is first imported; the directory starts empty."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def main() -> int:
    log = setup("globalmanager")
    try:
        cfg = load_config()
    except ConfigError as exc:
        print(f"globalmanager: config error: {exc}", file=sys.stderr)
        return 2
    if not cfg.token():
        print("globalmanager: no API token (set RSWARM_API_TOKEN or run Management.py up)", file=sys.stderr)
        return 2
    _multiprocess_metrics(cfg.run_path / "metrics" / "globalmanager")
    from Common.metrics import start_metrics_server
    from Common.store import Store
    from GlobalManager.app import create_app
    from GlobalManager.swarm import Swarm

    store = Store.connect(cfg, "globalmanager")
    store.ensure_indexes()
    try:
        info = Swarm(cfg.globalmanager.docker_url, store, cfg.cluster(), cfg.globalmanager.network_pool,
                     cfg.globalmanager.network_prefix).ensure(cfg.globalmanager.advertise_addr)
    except (docker.errors.DockerException, RuntimeError) as exc:
        print(f"globalmanager: cannot manage a Swarm through {cfg.globalmanager.docker_url}: {exc}", file=sys.stderr)
        return 1
    store.close()
    # Served by this (gunicorn master) process; the multiprocess files carry the worker's counters.
    start_metrics_server("globalmanager", cfg.globalmanager.metrics_host, cfg.globalmanager.metrics_port,
                         cfg.cluster())
    log.info("Swarm %s, node %s; GlobalManager on %s", info["state"], info["node_id"], cfg.globalmanager_url)
    # One process: it owns the PUB socket and the subnet allocation lock.
    serve(lambda: create_app(cfg), cfg.globalmanager.host, cfg.globalmanager.port, 1, 8, "rswarm-globalmanager")
    return 0


if __name__ == "__main__":
    sys.exit(main())
