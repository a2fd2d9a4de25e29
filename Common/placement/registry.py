"""Every strategy by name: the one place that lists them."""

from __future__ import annotations

from Common.placement.pack import MinSlack
from Common.placement.priority import Priority
from Common.placement.strategies import (
    BestFit,
    BestFitDecreasing,
    FirstFit,
    FirstFitDecreasing,
    Manual,
    Strategy,
)

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (FirstFit, BestFit, FirstFitDecreasing, BestFitDecreasing, Manual, Priority, MinSlack)
}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}") from None
