"""python -m Discovery: apply Workers' reports to MongoDB."""

from __future__ import annotations

import signal
import sys

from Common.config import ConfigError
from Common.config import load as load_config
from Common.logs import setup
from Common.messaging import Receiver, Sender
from Common.metrics import start_metrics_server
from Common.store import Store


def main() -> int:
    log = setup("discovery")
    try:
        cfg = load_config()
    except ConfigError as exc:
        print(f"discovery: config error: {exc}", file=sys.stderr)
        return 2
    if not cfg.token():
        print("discovery: no API token (set RSWARM_API_TOKEN or run Management.py up)", file=sys.stderr)
        return 2
    from Discovery.discovery import Discovery

    key = cfg.token().encode()
    store = Store.connect(cfg, "discovery")
    store.ensure_indexes()
    receiver = Receiver(f"tcp://{cfg.discovery.host}:{cfg.discovery.port}", key)
    hints = Sender(cfg.jobmanager_hint_endpoint, "discovery", key)
    disc = Discovery(store, receiver, hints, cfg.discovery.sweep_seconds, cfg.discovery.heartbeat_timeout_seconds,
                     cfg.discovery.max_requeues)
    start_metrics_server("discovery", cfg.discovery.metrics_host, cfg.discovery.metrics_port, cfg.cluster())
    signal.signal(signal.SIGTERM, lambda *_: disc.stop())
    signal.signal(signal.SIGINT, lambda *_: disc.stop())
    log.info("Discovery listening on %s", cfg.discovery_endpoint)
    disc.run()
    hints.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
