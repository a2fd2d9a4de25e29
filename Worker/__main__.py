"""python -m Worker: run this node's tasks on its Docker engine."""

from __future__ import annotations

import signal
import sys

import docker

from Common.config import ConfigError
from Common.config import load as load_config
from Common.logs import setup
from Common.messaging import Receiver, Sender
from Common.metrics import start_metrics_server
from Common.resources import parse_cpuset, parse_memory
from Common.store import Store


def main() -> int:
    log = setup("worker")
    try:
        cfg = load_config()
        if cfg.worker.cores:
            parse_cpuset(cfg.worker.cores)
        if cfg.worker.memory:
            parse_memory(cfg.worker.memory)
    except (ConfigError, ValueError) as exc:
        print(f"worker: config error: {exc}", file=sys.stderr)
        return 2
    if not cfg.token():
        print("worker: no API token (set RSWARM_API_TOKEN or run Management.py up)", file=sys.stderr)
        return 2
    from Worker.engine import Engine
    from Worker.worker import Worker

    key = cfg.token().encode()
    try:
        engine = Engine(cfg.worker.docker_url, cfg.cluster())
        engine.capacity()
    except docker.errors.DockerException as exc:
        print(f"worker: no Docker engine at {cfg.worker.docker_url}: {exc}", file=sys.stderr)
        return 1
    store = Store.connect(cfg, f"worker-{cfg.worker_name}")
    reports = Sender(cfg.discovery_endpoint, f"worker-{cfg.worker_name}", key)
    receiver = Receiver(cfg.globalmanager_pub_endpoint, key, subscribe=cfg.worker_name)
    worker = Worker(cfg, store, engine, reports)
    start_metrics_server("worker", cfg.worker.metrics_host, cfg.worker.metrics_port, cfg.cluster(), cfg.worker_name)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    log.info("Worker %s on %s", cfg.worker_name, cfg.worker.docker_url)
    worker.run(receiver)
    reports.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
