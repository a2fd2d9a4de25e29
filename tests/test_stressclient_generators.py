"""The StressClient's arrival processes: exact, seeded, statistically what they claim (no clock involved)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from StressClient import generators as g


def _counts(offsets: list[float], edges: np.ndarray) -> np.ndarray:
    return np.histogram(np.asarray(offsets), bins=edges)[0]


# ---- steady ---------------------------------------------------------------------------------------
def test_steady_is_exactly_k_over_rate() -> None:
    offs = g.schedule("steady", {"rate": 4.0}, duration=10)
    assert len(offs) == 40
    assert offs == pytest.approx([k / 4.0 for k in range(40)], abs=1e-12)


@pytest.mark.parametrize("rate", [0.3, 1.0, 7.0, 123.4])
def test_steady_does_not_drift_over_a_long_schedule(rate: float) -> None:
    offs = np.asarray(g.schedule("steady", {"rate": rate}, count=200_000))
    k = np.arange(offs.size)
    # Each arrival is placed at k/rate, not at a running sum of intervals: the error stays at rounding level.
    assert np.max(np.abs(offs - k / rate)) < 1e-9 * max(1.0, offs[-1])
    assert np.all(np.diff(offs) > 0)


def test_steady_count_and_duration_limits() -> None:
    assert len(g.schedule("steady", {"rate": 10.0}, count=25)) == 25
    assert len(g.schedule("steady", {"rate": 10.0}, duration=2.5, count=1000)) == 25
    assert len(g.schedule("steady", {"rate": 10.0}, duration=2.5, count=3)) == 3
    with pytest.raises(g.ScheduleError, match="duration or a count"):
        g.schedule("steady", {"rate": 1.0})
    with pytest.raises(g.ScheduleError, match="rate must be > 0"):
        g.schedule("steady", {"rate": 0.0}, duration=1)


def test_steady_poisson_has_the_mean_rate() -> None:
    offs = g.schedule("steady", {"rate": 5.0}, seed=3, duration=4000, process="poisson")
    rate = len(offs) / 4000
    assert rate == pytest.approx(5.0, rel=0.03)  # ±3% is > 6 standard deviations at n≈20000


# ---- bursty (Poisson) -----------------------------------------------------------------------------
def test_bursty_inter_arrivals_are_exponential_ks() -> None:
    lam = 8.0
    offs = np.asarray(g.schedule("bursty", {"rate": lam}, seed=11, count=20_000))
    gaps = np.diff(offs)
    assert gaps.mean() == pytest.approx(1 / lam, rel=0.03)
    assert stats.kstest(gaps, "expon", args=(0, 1 / lam)).pvalue > 0.01
    # The test has power: evenly spaced arrivals at the same rate fail it outright.
    even = np.diff(g.schedule("steady", {"rate": lam}, count=2000))
    assert stats.kstest(even, "expon", args=(0, 1 / lam)).pvalue < 1e-6


def test_bursty_ks_p_values_are_uniform_across_seeds() -> None:
    """Over many seeds the KS p-values are themselves uniform: no systematic departure hides in one seed."""
    pvals = []
    for seed in range(40):
        gaps = np.diff(g.schedule("bursty", {"rate": 3.0}, seed=seed, count=1500))
        pvals.append(stats.kstest(gaps, "expon", args=(0, 1 / 3.0)).pvalue)
    assert stats.kstest(pvals, "uniform").pvalue > 0.001
    assert sum(p < 0.05 for p in pvals) <= 8  # expected 2; binomial(40, 0.05) > 8 has probability < 1e-4


def test_bursty_counts_per_window_are_poisson() -> None:
    offs = g.schedule("bursty", {"rate": 4.0}, seed=5, duration=5000)
    counts = _counts(offs, np.arange(0, 5001, 1.0))
    assert counts.mean() == pytest.approx(4.0, rel=0.03)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.1)  # index of dispersion of a Poisson


def test_bursty_on_off_is_silent_when_off_and_poisson_when_on() -> None:
    on, off, lam = 2.0, 3.0, 10.0
    offs = np.asarray(g.schedule("bursty", {"rate": lam, "on": on, "off": off}, seed=2, duration=5000))
    phase = np.mod(offs, on + off)
    assert np.all(phase < on)  # nothing in the off periods
    per_burst = _counts(offs, np.arange(0, 5001, on + off))
    assert per_burst.mean() == pytest.approx(lam * on, rel=0.03)
    assert per_burst.var() / per_burst.mean() == pytest.approx(1.0, abs=0.15)


def test_bursty_off_rate_between_bursts() -> None:
    offs = np.asarray(g.schedule("bursty", {"rate": 10.0, "on": 1.0, "off": 1.0, "off_rate": 2.0}, seed=9,
                                 duration=4000))
    on_part = np.mod(offs, 2.0) < 1.0
    assert on_part.sum() / 2000 == pytest.approx(10.0, rel=0.04)
    assert (~on_part).sum() / 2000 == pytest.approx(2.0, rel=0.08)


# ---- incremental --------------------------------------------------------------------------------
def test_incremental_follows_the_integral_of_a_t_plus_b() -> None:
    a, b = 0.5, 1.0
    offs = np.asarray(g.schedule("incremental", {"slope": a, "rate": b}, duration=60))
    expected = a * 60**2 / 2 + b * 60
    assert abs(len(offs) - expected) <= 1
    # The count offered by any time t is Λ(t) rounded up: never more than one arrival off.
    t = np.linspace(0, 60, 601)
    n_by_t = np.searchsorted(offs, t, side="right")
    assert np.max(np.abs(n_by_t - (a * t**2 / 2 + b * t))) <= 1.0 + 1e-9
    # The rate grows as a*t + b: the gaps shrink.
    assert np.all(np.diff(offs, 2) <= 1e-9)


def test_incremental_ramp_down_stops_at_zero() -> None:
    offs = g.schedule("incremental", {"slope": -1.0, "rate": 10.0})  # ends by itself at t = 10 s
    assert abs(len(offs) - 50) <= 1  # ∫0..10 (10 - t) dt = 50
    assert max(offs) < 10.0


def test_incremental_negative_base_starts_when_the_ramp_crosses_zero() -> None:
    offs = g.schedule("incremental", {"slope": 2.0, "rate": -4.0}, duration=10)
    assert min(offs) == pytest.approx(2.0)
    assert abs(len(offs) - 64) <= 1  # ∫2..10 2(t-2) dt = 64


def test_incremental_poisson_matches_the_intensity() -> None:
    a, b = 0.02, 1.0
    offs = np.asarray(g.schedule("incremental", {"slope": a, "rate": b}, seed=4, duration=1000, process="poisson"))
    # Time-rescaling: Λ(t_k) are a unit-rate Poisson process, so their gaps are Exp(1).
    lam = a * offs**2 / 2 + b * offs
    assert stats.kstest(np.diff(lam), "expon").pvalue > 0.01
    assert len(offs) == pytest.approx(a * 1000**2 / 2 + b * 1000, rel=0.03)


# ---- random -------------------------------------------------------------------------------------
def test_random_rates_are_uniform_in_range_and_followed() -> None:
    lo, hi, interval = 2.0, 6.0, 1.0
    rng = g._rng(7, "rates")
    segs = [s for _, s in zip(range(3000), g.random_rates(lo, hi, interval, rng), strict=False)]
    rates = np.array([s.r0 for s in segs])
    assert rates.min() >= lo and rates.max() <= hi
    assert stats.kstest((rates - lo) / (hi - lo), "uniform").pvalue > 0.01
    offs = g.schedule("random", {"low": lo, "high": hi, "interval": interval}, seed=7, duration=3000)
    counts = _counts(offs, np.arange(0, 3001, interval))
    # Even arrivals on each interval's rate: each interval's count is within one of its rate (carry-over).
    assert np.max(np.abs(np.cumsum(counts) - np.cumsum(rates))) <= 1.0 + 1e-9
    assert len(offs) / 3000 == pytest.approx((lo + hi) / 2, rel=0.03)


def test_random_validation() -> None:
    with pytest.raises(g.ScheduleError, match="low <= high"):
        g.schedule("random", {"low": 5, "high": 1}, duration=1)
    with pytest.raises(g.ScheduleError, match="interval"):
        g.schedule("random", {"low": 1, "high": 2, "interval": 0}, duration=1)


# ---- seeding -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "params", "process"), [
    ("bursty", {"rate": 3.0, "on": 1.0, "off": 2.0}, "poisson"),
    ("random", {"low": 0.5, "high": 5.0, "interval": 2.0}, "even"),
    ("random", {"low": 0.5, "high": 5.0}, "poisson"),
    ("steady", {"rate": 2.0}, "poisson"),
])
def test_same_seed_same_schedule_other_seed_other_schedule(mode: str, params: dict, process: str) -> None:
    a = g.schedule(mode, params, seed=42, duration=120, process=process)
    b = g.schedule(mode, params, seed=42, duration=120, process=process)
    c = g.schedule(mode, params, seed=43, duration=120, process=process)
    assert a == b
    assert a != c


def test_schedules_are_sorted_and_within_the_duration() -> None:
    for mode, params in [("steady", {"rate": 3.3}), ("bursty", {"rate": 5.0, "on": 0.7, "off": 0.4}),
                         ("incremental", {"slope": 0.3, "rate": 0.1}), ("random", {"low": 0, "high": 9})]:
        offs = g.schedule(mode, params, seed=1, duration=50)
        assert offs == sorted(offs)
        assert all(0 <= t < 50 for t in offs)


def test_segment_inverse_is_exact() -> None:
    seg = g.Segment(0.0, 10.0, 1.0, 0.4)
    for y in np.linspace(0, seg.mass(), 57):
        tau = seg.offset(float(y))
        assert seg.r0 * tau + seg.slope * tau**2 / 2 == pytest.approx(y, abs=1e-9)
    assert g.expected_arrivals([seg], 10.0) == pytest.approx(seg.mass())
    assert math.isinf(g.Segment(0.0, math.inf, 1.0).mass())
