"""When the next EVM of a batch may start: the rate kinds of a job's ``evms`` section, per EPM.

Times are ``time.monotonic()`` seconds. A pacer is created when its batch's first EVM is about to start.

  sequential  no pause: the next EVM starts as soon as the previous one is done
  rps         token bucket of ``burst`` tokens refilled at ``rps`` per second, starting full; one token
              per EVM, so starts are never closer than 1/rps once the first ``burst`` are spent
  random      Poisson arrivals: the k-th EVM may start at t0 + X1 + ... + Xk, Xi exponential with mean
              ``mean_interval``, seeded; an agent that falls behind starts late EVMs at once (queueing)
"""

from __future__ import annotations

import math
import random
from typing import Any


class Pacer:
    def next_start(self, now: float) -> float:
        """The earliest time the next EVM may start (``now`` or earlier means at once)."""
        return -math.inf

    def take(self, now: float) -> None:
        """The next EVM starts now."""


class TokenBucket(Pacer):
    def __init__(self, rps: float, burst: int, now: float) -> None:
        if rps <= 0 or burst < 1:
            raise ValueError("rps must be > 0 and burst >= 1")
        self.rps, self.burst = rps, float(burst)
        self.tokens, self.last = float(burst), now

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rps)
            self.last = now

    def next_start(self, now: float) -> float:
        self._refill(now)
        if self.tokens >= 1.0:
            return now
        return now + (1.0 - self.tokens) / self.rps

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0


class Poisson(Pacer):
    def __init__(self, mean_interval: float, seed: int, now: float) -> None:
        if mean_interval <= 0:
            raise ValueError("mean_interval must be > 0")
        self.rng = random.Random(seed)  # noqa: S311 - seeded on purpose: reproducible arrivals
        self.rate = 1.0 / mean_interval
        self.due = now + self.rng.expovariate(self.rate)

    def next_start(self, now: float) -> float:
        return self.due

    def take(self, now: float) -> None:
        self.due += self.rng.expovariate(self.rate)


def pacer_for(rate: dict[str, Any] | None, now: float) -> Pacer:
    kind = (rate or {}).get("kind", "sequential")
    if kind == "rps":
        return TokenBucket(float(rate["rps"]), int(rate.get("burst") or 1), now)  # type: ignore[index]
    if kind == "random":
        return Poisson(float(rate["mean_interval"]), int(rate.get("seed") or 0), now)  # type: ignore[index]
    return Pacer()
