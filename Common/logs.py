"""Logging set-up shared by the actors: one line per record, to stderr (Management.py files it).

``Throttled`` rate-limits a loop's repeated identical failures (MongoDB away for a minute used to write a full
traceback on every pass of every actor): the first failure is logged with its traceback, repeats of the same
failure then give one short line with their count per ``interval`` seconds, and the first success after
failures says how many there were. The standard library's logging has no such filter, and the packages that
offer one (e.g. for Sentry) key on the message text, which for a MongoDB error carries changing addresses
and timings; here a failure is "the same" when its message template, exception type and raising line are.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable


def setup(actor: str) -> logging.Logger:
    level = os.environ.get("RSWARM_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s {actor} %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("docker").setLevel(logging.WARNING)
    return logging.getLogger(actor)


def _origin(exc: BaseException) -> str:
    """Where the exception was raised (its innermost frame), independent of its message's details."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


class Throttled:
    """One loop's failures, logged at most once per ``interval`` seconds per kind of failure.

    Call ``failed(exc, msg, *args)`` from the loop's ``except`` and ``ok()`` after a pass that succeeded.
    """

    def __init__(self, logger: logging.Logger, interval: float = 30.0, level: int = logging.ERROR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.interval, self.level, self.clock = logger, interval, level, clock
        self.key: tuple[str, str, str] | None = None  # the failure being repeated
        self.last_logged = 0.0
        self.suppressed = 0  # repeats since the last line
        self.total = 0  # failures since the last success

    def failed(self, exc: BaseException, msg: str, *args: object) -> None:
        key = (msg, f"{type(exc).__module__}.{type(exc).__qualname__}", _origin(exc))
        now = self.clock()
        self.total += 1
        if key != self.key:  # a new kind of failure: in full, with its traceback
            self._flush()
            self.key, self.last_logged, self.suppressed = key, now, 0
            self.log.log(self.level, msg, *args, exc_info=(type(exc), exc, exc.__traceback__))
            return
        self.suppressed += 1
        if now - self.last_logged >= self.interval:
            self.log.log(self.level, msg + " (%d times in the last %.0fs; traceback logged the first time): %s: %s",
                         *args, self.suppressed, now - self.last_logged, type(exc).__name__, _short(exc))
            self.last_logged, self.suppressed = now, 0

    def ok(self) -> None:
        """The loop succeeded again: say how many failures there were, and log the next one in full."""
        if self.total:
            self._flush()
            if self.total > 1:
                self.log.info("recovered after %d failed passes", self.total)
        self.key, self.suppressed, self.total = None, 0, 0

    def _flush(self) -> None:
        if self.key is not None and self.suppressed:
            self.log.log(self.level, "%s: repeated %d more times since the last line", self.key[0].split("%")[0]
                         .strip(" :;(") or self.key[1], self.suppressed)
        self.suppressed = 0


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "…"
