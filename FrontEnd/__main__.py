"""python -m FrontEnd: serve the public REST API (gunicorn, gthread workers)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

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
    log = setup("frontend")
    try:
        cfg = load_config()
    except ConfigError as exc:
        print(f"frontend: config error: {exc}", file=sys.stderr)
        return 2
    if not cfg.token():
        print("frontend: no API token (set RSWARM_API_TOKEN or run Management.py up)", file=sys.stderr)
        return 2
    _multiprocess_metrics(cfg.run_path / "metrics" / "frontend")
    from FrontEnd.app import create_app

    log.info("FrontEnd on %s", cfg.frontend_url)
    serve(lambda: create_app(cfg), cfg.frontend.host, cfg.frontend.port, cfg.frontend.workers,
          cfg.frontend.threads, "rswarm-frontend")
    return 0


if __name__ == "__main__":
    sys.exit(main())
