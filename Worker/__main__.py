"""python -m Worker: run this node's tasks on its Docker engine.

    python -m Worker                                   # the real Worker of this node
    python -m Worker --hollow N[:cores[:memory]] [--prefix P]   # N hollow nodes P00000.. (Worker/hollow.py)
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

import docker

from Common import actor
from Common.config import Config
from Common.jobspec import NODE_NAME
from Common.keys import Keyring, worker_keyring
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


def hollow_body(n: int, cores: int, memory: str, prefix: str):
    def run(cfg: Config, log: logging.Logger) -> int:
        from Worker.hollow import DispatchListener, HollowHost

        keys = Keyring.control_plane(cfg.token())  # a hollow host runs beside the control plane (docs/security.md)
        names = [f"{prefix}{i:05d}" for i in range(n)]
        store = Store.connect(cfg, f"hollow-{prefix}")
        reports = Sender(cfg.discovery_endpoint, f"hollow-{prefix}", keys, to="discovery", limits=cfg.zmq)
        beats = Sender(cfg.discovery_endpoint, f"hollow-{prefix}", keys, to="discovery", limits=cfg.zmq)
        listener = DispatchListener(cfg.globalmanager_pub_endpoint, keys, prefix, set(names), cfg.zmq.max_frame_bytes)
        host = HollowHost(cfg, store, reports, names, cores, parse_memory(memory), prefix, beats)
        log.info("hollow host %s: %d nodes of %d cores, %s", prefix, n, cores, memory)
        actor.run_loop(lambda: host.run(listener), host.stop, "worker", cfg, cfg.worker.metrics_host,
                       cfg.worker.metrics_port, prefix)
        listener.close()
        reports.close()
        beats.close()
        return 0

    return run


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if not args_in:
        return actor.main("worker", body, check, needs_token=False)
    from Worker.hollow import parse_spec

    p = argparse.ArgumentParser(prog="python -m Worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hollow", required=True, metavar="N[:cores[:memory]]",
                   help="run N hollow nodes in this process (default 4 cores, 8g each)")
    p.add_argument("--prefix", default="hollow-", metavar="P",
                   help="node names are P00000, P00001, ... (letters, digits, '.', '_', '-'; default hollow-)")
    args = p.parse_args(args_in)
    try:
        n, cores, memory = parse_spec(args.hollow)
    except ValueError as exc:
        p.error(str(exc))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}", args.prefix):
        p.error(f"argument --prefix: letters, digits, '.', '_' or '-', got {args.prefix!r}")
    return actor.main("worker", hollow_body(n, cores, memory, args.prefix))


if __name__ == "__main__":
    sys.exit(main())
