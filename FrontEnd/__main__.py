"""python -m FrontEnd: serve the public REST API (gunicorn, gthread workers)."""

from __future__ import annotations

import logging
import sys

from Common import actor
from Common.config import Config
from Common.serve import serve


def body(cfg: Config, log: logging.Logger) -> int:
    from FrontEnd.app import create_app

    log.info("FrontEnd on %s", cfg.frontend_url)
    serve(lambda: create_app(cfg), cfg.frontend.host, cfg.frontend.port, cfg.frontend.workers,
          cfg.frontend.threads, "rswarm-frontend")
    return 0


def main() -> int:
    return actor.main("frontend", body, multiprocess_metrics=True)


if __name__ == "__main__":
    sys.exit(main())
