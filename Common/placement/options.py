"""The scheduler's options (stored with the active strategy, set through PUT /api/v1/scheduler)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


class OptionError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SchedulerOptions:
    # Any strategy: a waiting job may evict running jobs of strictly lower priority.
    preemption: bool = False
    # priority: a job's effective priority grows by 1 for each this many seconds it has waited (0: never).
    aging_seconds: float = 60.0
    # priority: the first job in line that does not fit holds back the nodes it will run on.
    reservation: bool = True
    # min-slack: at most this many exchange steps per pass (deterministic; no wall-clock limit).
    search_iterations: int = 100_000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DESCRIPTIONS = {
    "preemption": "a waiting job may evict running jobs of strictly lower priority (they return to the queue)",
    "aging_seconds": "priority strategy: +1 effective priority per this many seconds waited; 0 disables aging",
    "reservation": "priority strategy: the first job in line that does not fit reserves the nodes it needs",
    "search_iterations": "min-slack strategy: the most exchange steps its search takes per pass",
}

_LIMITS: dict[str, tuple[float, float]] = {"aging_seconds": (0, 31_536_000), "search_iterations": (0, 10_000_000)}


def _check(name: str, kind: type, value: Any) -> Any:
    where = f"options.{name}"
    if kind is bool:
        if not isinstance(value, bool):
            raise OptionError(f"{where} must be true or false", where)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise OptionError(f"{where} must be {'an integer' if kind is int else 'a number'}", where)
    lo, hi = _LIMITS[name]
    if not lo <= value <= hi:
        raise OptionError(f"{where} must be between {lo:g} and {hi:g}, got {value}", where)
    return kind(value)


def parse_options(raw: Any, base: SchedulerOptions | None = None) -> SchedulerOptions:
    """``base`` with the keys of ``raw`` changed; OptionError naming the field on anything invalid."""
    base = base or SchedulerOptions()
    if not isinstance(raw, dict):
        raise OptionError("options must be an object", "options")
    kinds = {f.name: {"bool": bool, "int": int, "float": float}[str(f.type)] for f in fields(SchedulerOptions)}
    changes = {}
    for key, value in raw.items():
        if key not in kinds:
            raise OptionError(f"unknown option {key!r}; known: {sorted(kinds)}", f"options.{key}")
        changes[key] = _check(key, kinds[key], value)
    return replace(base, **changes)


def stored_options(raw: Any) -> SchedulerOptions:
    """The options as stored in MongoDB; whatever does not parse (an older version's keys) is ignored."""
    opts = SchedulerOptions()
    if isinstance(raw, dict):
        for key, value in raw.items():
            try:
                opts = parse_options({key: value}, opts)
            except OptionError:
                continue
    return opts
