"""python -m GlobalManager: make sure the Swarm exists, then serve the GM's REST API."""

from __future__ import annotations

import logging
import sys

import docker

from Common import actor
from Common.config import Config
from Common.serve import serve


def body(cfg: Config, log: logging.Logger) -> int:
    from Common.metrics import start_metrics_server
    from Common.store import Store
    from GlobalManager.app import create_app
    from GlobalManager.swarm import Swarm

    store = Store.connect(cfg, "globalmanager")
    store.ensure_indexes_retrying(log)
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


def main() -> int:
    return actor.main("globalmanager", body, multiprocess_metrics=True)


if __name__ == "__main__":
    sys.exit(main())
