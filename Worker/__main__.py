"""python -m Worker: run this node's tasks on its Docker engine."""

from __future__ import annotations

import logging
import sys

import docker

from Common import actor
from Common.config import Config
from Common.jobspec import NODE_NAME
from Common.keys import worker_keyring
from Common.messaging import Receiver, Sender
from Common.resources import parse_cpuset, parse_memory
from Common.store import Store


def check(cfg: Config) -> None:
    if not NODE_NAME.match(cfg.worker_name):
        raise ValueError(f"worker.name: {cfg.worker_name!r} is not a node name")
    # The Worker's only ZeroMQ credential is its node key (docs/security.md), not the API token.
    worker_keyring(cfg.run_path, cfg.worker_name, cfg.token())
    if cfg.worker.cores:
        parse_cpuset(cfg.worker.cores)
    if cfg.worker.memory:
        parse_memory(cfg.worker.memory)


def body(cfg: Config, log: logging.Logger) -> int:
    from Worker.engine import Engine
    from Worker.worker import Worker

    keys = worker_keyring(cfg.run_path, cfg.worker_name, cfg.token())
    try:
        engine = Engine(cfg.worker.docker_url, cfg.cluster(), cfg.volume_root, cfg.worker.pids_limit)
        engine.capacity()
    except docker.errors.DockerException as exc:
        print(f"worker: no Docker engine at {cfg.worker.docker_url}: {exc}", file=sys.stderr)
        return 1
    store = Store.connect(cfg, f"worker-{cfg.worker_name}")
    reports = Sender(cfg.discovery_endpoint, f"worker-{cfg.worker_name}", keys, to="discovery", limits=cfg.zmq)
    receiver = Receiver(cfg.globalmanager_pub_endpoint, keys, subscribe=cfg.worker_name, limits=cfg.zmq)
    worker = Worker(cfg, store, engine, reports)
    log.info("Worker %s on %s", cfg.worker_name, cfg.worker.docker_url)
    actor.run_loop(lambda: worker.run(receiver), worker.stop, "worker", cfg, cfg.worker.metrics_host,
                   cfg.worker.metrics_port, cfg.worker_name)
    reports.close()
    return 0


def main() -> int:
    return actor.main("worker", body, check, needs_token=False)


if __name__ == "__main__":
    sys.exit(main())
