"""python -m GlobalManager: make sure the Swarm exists, then serve the GM's REST API."""

from __future__ import annotations

import sys

import docker

from Common.config import ConfigError
from Common.config import load as load_config
from Common.logs import setup
from Common.serve import serve


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
    log.info("Swarm %s, node %s; GlobalManager on %s", info["state"], info["node_id"], cfg.globalmanager_url)
    # One process: it owns the PUB socket and the subnet allocation lock.
    serve(lambda: create_app(cfg), cfg.globalmanager.host, cfg.globalmanager.port, 1, 8, "rswarm-globalmanager")
    return 0


if __name__ == "__main__":
    sys.exit(main())
