"""Logging set-up shared by the actors: one line per record, to stderr (Management.py files it).

``Throttled`` rate-limits a loop's repeated identical failures (MongoDB away for a minute used to write a full
traceback on every pass of every actor): the first failure is logged with its traceback, repeats of the same
failure then give one short line with their count per ``interval`` seconds, and the first success after
failures says how many there were. The standard library's logging has no such filter, and the packages that
offer one (e.g. for Sentry) key on the message text, which for a MongoDB error carries changing addresses
and timings; here a failure is "the same" when its message template and its exception's family are.
"""

from __future__ import annotations

import logging
import os
import time
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


class Throttled:
    """One loop's failures, logged at most once per ``interval`` seconds per kind of failure.

    A kind is the message template and the exception's family (``_kind``), not its text: MongoDB going away
    raises several pymongo errors in turn, with changing addresses and timings in them. Call
    ``failed(exc, msg, *args)`` from the loop's ``except`` and ``ok()`` after a pass that succeeded.
    """

    def __init__(self, logger: logging.Logger, interval: float = 30.0, level: int = logging.ERROR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.interval, self.level, self.clock = logger, interval, level, clock
        self.kinds: dict[tuple[str, str], list[float]] = {}  # kind -> [when last logged, repeats since]
        self.total = 0  # failures since the last success

    def failed(self, exc: BaseException, msg: str, *args: object) -> None:
        key = (msg, _kind(exc))
        now = self.clock()
        self.total += 1
        seen = self.kinds.get(key)
        if seen is None:  # a new kind of failure: in full, with its traceback
            self.kinds[key] = [now, 0]
            self.log.log(self.level, msg, *args, exc_info=(type(exc), exc, exc.__traceback__))
            return
        seen[1] += 1
        if now - seen[0] >= self.interval:
            self.log.log(self.level, msg + " (%d times in the last %.0fs; traceback logged the first time): %s: %s",
                         *args, seen[1], now - seen[0], type(exc).__name__, _short(exc))
            seen[0], seen[1] = now, 0

    def ok(self) -> None:
        """The loop succeeded again: say how many failures there were, and log the next one in full."""
        for (msg, kind), (_at, repeats) in self.kinds.items():
            if repeats:
                self.log.log(self.level, "%s: repeated %d more times since the last line",
                             msg.split("%")[0].strip(" :;(") or kind, repeats)
        if self.total > 1:
            self.log.info("recovered after %d failed passes", self.total)
        self.kinds.clear()
        self.total = 0


def _kind(exc: BaseException) -> str:
    """A library's exceptions are one kind: its root exception class (pymongo's PyMongoError, docker's
    DockerException, requests' RequestException); built-in exceptions are each their own kind."""
    cls = type(exc)
    package = cls.__module__.split(".")[0]
    if package == "builtins":
        return cls.__qualname__
    root = cls
    for base in cls.__mro__:
        if base.__module__.split(".")[0] == package:
            root = base
    return f"{root.__module__}.{root.__qualname__}"


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "…"
