"""Arrival schedules: pure, seeded and exact (no clock, no I/O).

Every load mode is an *intensity* λ(t) in jobs/s, given as consecutive segments on which the rate is
linear (``rate(t) = r0 + slope·(t - start)``), plus a way to put arrivals on it. With the cumulative
intensity Λ(t) = ∫₀ᵗ λ:

* ``even``: the k-th arrival (k = 0, 1, ...) is at Λ⁻¹(k). The count offered up to any t is
  ⌊Λ(t)⌋ + 1, so the offered rate is exactly λ and nothing accumulates: arrival k of a steady
  schedule is at k/a, never at a sum of k rounded intervals (the seed's 1 s that took 1.23 s).
* ``poisson``: the k-th arrival is at Λ⁻¹(E₁ + … + E_k) with Eᵢ ~ Exp(1) independent — by the
  time-rescaling theorem a (non-homogeneous) Poisson process of intensity λ(t). On a constant rate
  its inter-arrival times are exponential with mean 1/λ.

The modes:

==============  ==========================================================  ================
mode            intensity                                                   default process
==============  ==========================================================  ================
steady          λ(t) = a                                                    even
bursty          λ(t) = λ while "on", off_rate while "off" (on/off periods)  poisson (always)
incremental     λ(t) = max(0, a·t + b)                                      even
random          λ constant on each interval, drawn uniformly in [lo, hi]    even
==============  ==========================================================  ================

Random draws come from ``random.Random`` seeded with strings derived from the run's seed, so the
same seed gives the same schedule on any machine (string seeds are hashed with SHA-512).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import count as counter

PROCESSES = ("even", "poisson")
MAX_ARRIVALS = 5_000_000


class ScheduleError(ValueError):
    """Parameters that give no usable schedule; the message names the parameter."""


@dataclass(frozen=True)
class Segment:
    """[start, end) on which the rate is r0 at ``start`` and changes by ``slope`` jobs/s per second."""

    start: float
    end: float  # math.inf for an unbounded last segment
    r0: float
    slope: float = 0.0

    def rate(self, t: float) -> float:
        return self.r0 + self.slope * (t - self.start)

    def mass(self) -> float:
        """Expected arrivals in the segment: ∫ rate."""
        length = self.end - self.start
        if math.isinf(length):
            return math.inf if (self.r0 > 0 or self.slope > 0) else 0.0
        return self.r0 * length + self.slope * length * length / 2.0

    def offset(self, y: float) -> float:
        """The τ ≥ 0 with ∫[start, start+τ] rate = y (0 ≤ y ≤ mass), in the cancellation-free form."""
        if y <= 0.0:
            return 0.0
        return 2.0 * y / (self.r0 + math.sqrt(max(0.0, self.r0 * self.r0 + 2.0 * self.slope * y)))


# ---- intensities ---------------------------------------------------------------------------------
def steady(rate: float) -> list[Segment]:
    if not rate > 0:
        raise ScheduleError(f"rate must be > 0 jobs/s, got {rate}")
    return [Segment(0.0, math.inf, rate)]


def incremental(slope: float, base: float) -> list[Segment]:
    """λ(t) = max(0, slope·t + base): a ramp up (slope > 0) or down (slope < 0, ends where it hits 0)."""
    if slope == 0:
        return steady(base)
    if slope > 0:
        if base >= 0:
            return [Segment(0.0, math.inf, base, slope)]
        t0 = -base / slope  # silent until the ramp crosses zero
        return [Segment(0.0, t0, 0.0), Segment(t0, math.inf, 0.0, slope)]
    if base <= 0:
        raise ScheduleError(f"with a negative slope ({slope}) the base rate must be > 0, got {base}")
    return [Segment(0.0, -base / slope, base, slope)]


def random_rates(low: float, high: float, interval: float, rng: random.Random) -> Iterator[Segment]:
    """A new rate, uniform in [low, high], for every ``interval`` seconds (unbounded, lazy)."""
    if low < 0 or high < low:
        raise ScheduleError(f"need 0 <= low <= high, got low={low} high={high}")
    if high <= 0:
        raise ScheduleError(f"high must be > 0 jobs/s, got {high}")
    if not interval > 0:
        raise ScheduleError(f"interval must be > 0 s, got {interval}")
    for i in counter():
        yield Segment(i * interval, (i + 1) * interval, rng.uniform(low, high))


def bursty(rate: float, on: float = 0.0, off: float = 0.0, off_rate: float = 0.0) -> Iterator[Segment]:
    """Rate ``rate`` for ``on`` seconds, then ``off_rate`` for ``off`` seconds, repeated.

    ``off == 0`` means no bursts: a constant rate (a homogeneous Poisson process once arrivals are
    drawn with the ``poisson`` process).
    """
    if not rate > 0:
        raise ScheduleError(f"rate must be > 0 jobs/s, got {rate}")
    if off < 0 or on < 0 or off_rate < 0:
        raise ScheduleError("on, off and off_rate must be >= 0")
    if off == 0:
        yield Segment(0.0, math.inf, rate)
        return
    if not on > 0:
        raise ScheduleError(f"with off={off} s the on period must be > 0 s, got {on}")
    period = on + off
    for i in counter():
        yield Segment(i * period, i * period + on, rate)
        yield Segment(i * period + on, (i + 1) * period, off_rate)


# ---- arrivals on an intensity --------------------------------------------------------------------
def arrivals(
    segments: Iterable[Segment],
    process: str = "even",
    rng: random.Random | None = None,
    duration: float | None = None,
    count: int | None = None,
) -> Iterator[float]:
    """Arrival offsets (seconds from the start, non-decreasing) on ``segments``.

    Stops at the first arrival at or after ``duration``, after ``count`` arrivals, or when the
    segments end. One of ``duration`` and ``count`` must be given unless the segments are finite.
    """
    if process not in PROCESSES:
        raise ScheduleError(f"process must be one of {PROCESSES}, got {process!r}")
    if process == "poisson" and rng is None:
        raise ScheduleError("a poisson process needs a seeded rng")
    if count is not None and count <= 0:
        return

    def step() -> float:
        return 1.0 if process == "even" else rng.expovariate(1.0)  # type: ignore[union-attr]

    target = 0.0 if process == "even" else step()
    base = 0.0  # Λ at the start of the current segment
    n = 0
    for seg in segments:
        if duration is not None and seg.start >= duration:
            return
        mass = seg.mass()
        if mass <= 0.0:
            continue
        while target - base < mass:
            t = seg.start + seg.offset(target - base)
            if duration is not None and t >= duration:
                return
            yield t
            n += 1
            if count is not None and n >= count:
                return
            target += step()
        base += mass


# ---- named schedules -----------------------------------------------------------------------------
def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"rswarm-stress:{seed}:{purpose}")


def segments_for(mode: str, params: dict[str, float], seed: int) -> Iterable[Segment]:
    if mode == "steady":
        return steady(params["rate"])
    if mode == "incremental":
        return incremental(params["slope"], params["rate"])
    if mode == "random":
        return random_rates(params["low"], params["high"], params.get("interval", 1.0), _rng(seed, "rates"))
    if mode == "bursty":
        return bursty(params["rate"], params.get("on", 0.0), params.get("off", 0.0), params.get("off_rate", 0.0))
    raise ScheduleError(f"unknown mode {mode!r}")


def default_process(mode: str) -> str:
    return "poisson" if mode == "bursty" else "even"


def schedule(
    mode: str,
    params: dict[str, float],
    seed: int = 1,
    duration: float | None = None,
    count: int | None = None,
    process: str | None = None,
) -> list[float]:
    """The whole schedule of a run, materialised (bounded by ``MAX_ARRIVALS``)."""
    if duration is None and count is None and mode != "incremental":
        raise ScheduleError("give a duration or a count: this schedule never ends by itself")
    if duration is not None and not duration > 0:
        raise ScheduleError(f"duration must be > 0 s, got {duration}")
    process = process or default_process(mode)
    if mode == "bursty" and process != "poisson":
        raise ScheduleError("bursty arrivals are always poisson")
    if duration is None and count is None and math.isinf(incremental(params["slope"], params["rate"])[-1].end):
        raise ScheduleError("give a duration or a count: this schedule never ends by itself")
    limit = MAX_ARRIVALS + 1 if count is None else min(count, MAX_ARRIVALS + 1)
    out = list(arrivals(segments_for(mode, params, seed), process, _rng(seed, "arrivals"), duration, limit))
    if len(out) > MAX_ARRIVALS:
        raise ScheduleError(f"more than {MAX_ARRIVALS} arrivals: shorten the run or lower the rate")
    return out


def expected_arrivals(segments: Iterable[Segment], duration: float) -> float:
    """Λ(duration): what the intensity offers over [0, duration)."""
    total = 0.0
    for seg in segments:
        if seg.start >= duration:
            break
        end = min(seg.end, duration)
        length = end - seg.start
        total += seg.r0 * length + seg.slope * length * length / 2.0
    return total
