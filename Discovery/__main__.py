"""python -m Discovery: apply Workers' reports to MongoDB."""

from __future__ import annotations

import logging
import sys

from Common import actor
from Common.config import Config
from Common.keys import Keyring
from Common.messaging import Receiver, Sender
from Common.store import Store


def body(cfg: Config, log: logging.Logger) -> int:
    from Discovery.discovery import Discovery

    keys = Keyring.control_plane(cfg.token())
    store = Store.connect(cfg, "discovery")
    store.ensure_indexes_retrying(log)
    receiver = Receiver(f"tcp://{cfg.discovery.host}:{cfg.discovery.port}", keys, "discovery", limits=cfg.zmq)
    hints = Sender(cfg.jobmanager_hint_endpoint, "discovery", keys, to="jobmanager", limits=cfg.zmq)
    disc = Discovery(store, receiver, hints, cfg.discovery.sweep_seconds, cfg.discovery.heartbeat_timeout_seconds,
                     cfg.discovery.max_requeues)
    log.info("Discovery listening on %s", cfg.discovery_endpoint)
    actor.run_loop(disc.run, disc.stop, "discovery", cfg, cfg.discovery.metrics_host, cfg.discovery.metrics_port)
    hints.close()
    return 0


def main() -> int:
    return actor.main("discovery", body)


if __name__ == "__main__":
    sys.exit(main())
