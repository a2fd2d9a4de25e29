"""python -m JobManager: run the placement loop."""

from __future__ import annotations

import logging
import sys

from Common import actor
from Common.config import Config
from Common.keys import Keyring
from Common.messaging import Receiver
from Common.store import Store


def body(cfg: Config, log: logging.Logger) -> int:
    from JobManager.manager import JobManager

    store = Store.connect(cfg, "jobmanager")
    store.ensure_indexes_retrying(log)
    receiver = Receiver(f"tcp://{cfg.jobmanager.host}:{cfg.jobmanager.hint_port}",
                        Keyring.control_plane(cfg.token()), "jobmanager", limits=cfg.zmq)
    jm = JobManager(cfg, store, receiver)
    log.info("JobManager listening for hints on %s, strategy %s", cfg.jobmanager_hint_endpoint, jm.strategy())
    actor.run_loop(jm.run, jm.stop, "jobmanager", cfg, cfg.jobmanager.metrics_host, cfg.jobmanager.metrics_port)
    return 0


def main() -> int:
    return actor.main("jobmanager", body)


if __name__ == "__main__":
    sys.exit(main())
