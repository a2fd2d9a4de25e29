"""python -m JobManager: run the placement loop."""

from __future__ import annotations

import signal
import sys

from Common.config import ConfigError
from Common.config import load as load_config
from Common.logs import setup
from Common.messaging import Receiver
from Common.metrics import start_metrics_server
from Common.store import Store


def main() -> int:
    log = setup("jobmanager")
    try:
        cfg = load_config()
    except ConfigError as exc:
        print(f"jobmanager: config error: {exc}", file=sys.stderr)
        return 2
    if not cfg.token():
        print("jobmanager: no API token (set RSWARM_API_TOKEN or run Management.py up)", file=sys.stderr)
        return 2
    from JobManager.manager import JobManager

    store = Store.connect(cfg, "jobmanager")
    store.ensure_indexes()
    receiver = Receiver(f"tcp://{cfg.jobmanager.host}:{cfg.jobmanager.hint_port}", cfg.token().encode())
    jm = JobManager(cfg, store, receiver)
    start_metrics_server("jobmanager", cfg.jobmanager.metrics_host, cfg.jobmanager.metrics_port, cfg.cluster())
    signal.signal(signal.SIGTERM, lambda *_: jm.stop())
    signal.signal(signal.SIGINT, lambda *_: jm.stop())
    log.info("JobManager listening for hints on %s, strategy %s", cfg.jobmanager_hint_endpoint, jm.strategy())
    jm.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
