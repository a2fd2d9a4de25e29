"""Logging set-up shared by the actors: one line per record, to stderr (Management.py files it)."""

from __future__ import annotations

import logging
import os


def setup(actor: str) -> logging.Logger:
    level = os.environ.get("RSWARM_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s {actor} %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("docker").setLevel(logging.WARNING)
    return logging.getLogger(actor)
