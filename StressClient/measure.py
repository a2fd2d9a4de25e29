"""From records to figures: stage latencies, rates, reasons, queue length and utilisation over time.

Pure functions of the recorded data (no I/O), so ``report DIR`` recomputes exactly what the run showed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from StressClient.records import JobRecord, Sample


@dataclass(frozen=True)
class Stage:
    key: str
    label: str
    value: Callable[[JobRecord], float | None]


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _completed(r: JobRecord, v: float | None) -> float | None:
    return v if r.state == "COMPLETED" else None


# Milestones: submit (scheduled arrival) → accepted (stored) → scheduled (placed) → running (every task
# started) → completed. Steps between consecutive milestones, then the end-to-end spans.
STAGES: tuple[Stage, ...] = (
    Stage("submit_to_accepted", "submit → accepted", lambda r: _diff(r.submit_at, r.accepted_at)),
    Stage("accepted_to_scheduled", "accepted → scheduled", lambda r: _diff(r.accepted_at, r.scheduled_at)),
    Stage("scheduled_to_running", "scheduled → all running", lambda r: _diff(r.scheduled_at, r.running_at)),
    Stage("running_to_completed", "all running → completed",
          lambda r: _completed(r, _diff(r.running_at, r.finished_at))),
    Stage("submit_to_running", "submit → all running", lambda r: _diff(r.submit_at, r.running_at)),
    Stage("submit_to_completed", "submit → completed", lambda r: _completed(r, _diff(r.submit_at, r.finished_at))),
    Stage("http_response", "HTTP round trip", lambda r: _diff(r.sent_at, r.response_at) if r.status else None),
    Stage("client_lateness", "client lateness", lambda r: _diff(r.submit_at, r.sent_at)),
)
CDF_STAGES = ("submit_to_accepted", "accepted_to_scheduled", "scheduled_to_running", "submit_to_running",
              "submit_to_completed")
PERCENTILES = (50, 90, 99)


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=float)
    out: dict[str, float | int | None] = {"n": int(a.size), "mean": float(a.mean())}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(a, p))
    out["max"] = float(a.max())
    return out


def stage_values(records: Sequence[JobRecord]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for s in STAGES:
        out[s.key] = [v for v in (s.value(r) for r in records) if v is not None]
    return out


_ID = re.compile(r"job-[0-9a-f]{12}-[0-9a-f]{6}|[0-9a-f]{12,64}|\b\d+(\.\d+)?\b")


def normalise_reason(text: str | None) -> str:
    """Group reasons that differ only by ids and numbers."""
    if not text:
        return "(no reason given)"
    return _ID.sub("#", text.strip())[:160]


def rates(records: Sequence[JobRecord], started_at: float, window: float) -> dict[str, float | int]:
    """Offered vs achieved: arrivals, accepted submissions, completions and task starts per second."""
    due = len(records)
    accepted = [r for r in records if r.accepted]
    responses = [r.response_at for r in accepted if r.response_at is not None]
    submit_span = max(window, (max(responses) - started_at) if responses else 0.0)
    completed = [r.finished_at for r in records if r.state == "COMPLETED" and r.finished_at is not None]
    task_starts = sorted(t for r in records for t in r.task_running)
    done_span = (max(completed) - started_at) if completed else 0.0
    start_span = (task_starts[-1] - started_at) if task_starts else 0.0
    return {
        "window_s": window,
        "arrivals": due,
        "offered_jobs_per_s": due / window if window > 0 else 0.0,
        "accepted": len(accepted),
        "achieved_jobs_per_s": len(accepted) / submit_span if submit_span > 0 else 0.0,
        "completed": len(completed),
        "completed_jobs_per_s": len(completed) / done_span if done_span > 0 else 0.0,
        "tasks_started": len(task_starts),
        "task_starts_per_s": len(task_starts) / start_span if start_span > 0 else 0.0,
        "offered_tasks_per_s": sum(r.tasks for r in records) / window if window > 0 else 0.0,
    }


def outcomes(records: Sequence[JobRecord]) -> dict[str, Any]:
    rejected = Counter(r.error for r in records if r.error)
    states = Counter(r.state or "unknown" for r in records if r.accepted)
    failed = Counter(normalise_reason(r.reason) for r in records
                     if r.accepted and r.state in ("FAILED", "CANCELLED") and not r.evms_released)
    examples = {}
    for r in records:
        if r.error and r.error not in examples:
            examples[r.error] = r.message
    return {"rejected_by_reason": dict(rejected.most_common()), "rejection_examples": examples,
            "final_states": dict(states.most_common()), "not_completed_by_reason": dict(failed.most_common())}


def timeline(records: Sequence[JobRecord], started_at: float, end: float, step: float = 1.0) -> dict[str, list[float]]:
    """Per ``step`` bin from the start: arrivals, accepted, rejected, completed; and, at each bin's end,
    jobs waiting for placement and jobs running."""
    n = max(1, int(np.ceil(max(end - started_at, step) / step)))
    edges = started_at + step * np.arange(n + 1)

    def hist(ts: list[float]) -> list[float]:
        return np.histogram(np.asarray(ts, dtype=float), bins=edges)[0].astype(float).tolist() if ts else [0.0] * n

    at = edges[1:]

    def count_between(starts: list[float | None], ends: list[float | None]) -> list[float]:
        s = np.array([np.nan if x is None else x for x in starts], dtype=float)
        e = np.array([np.inf if x is None else x for x in ends], dtype=float)
        if s.size == 0:
            return [0.0] * n
        ok = ~np.isnan(s)
        s, e = s[ok], e[ok]
        return [float(np.count_nonzero((s <= t) & (e > t))) for t in at]

    acc = [r for r in records if r.accepted]
    return {
        "t": (at - started_at).tolist(),
        "step_s": [step],
        "arrivals": hist([r.submit_at for r in records]),
        "accepted": hist([r.accepted_at for r in acc if r.accepted_at is not None]),
        "rejected": hist([r.response_at or r.submit_at for r in records if r.error]),
        "completed": hist([r.finished_at for r in acc if r.state == "COMPLETED" and r.finished_at is not None]),
        "failed": hist([r.finished_at for r in acc if r.state in ("FAILED", "CANCELLED") and r.finished_at]),
        "task_starts": hist([t for r in acc for t in r.task_running]),
        "waiting": count_between([r.accepted_at for r in acc],
                                 [r.scheduled_at if r.scheduled_at is not None else r.finished_at for r in acc]),
        "running": count_between([r.running_at for r in acc], [r.finished_at for r in acc]),
    }


def utilisation(samples: Sequence[Sample], started_at: float) -> dict[str, Any]:
    """Per worker: sample times (s from start), cores used, capacity, and the mean used fraction."""
    out: dict[str, Any] = {}
    for s in sorted(samples, key=lambda s: s.t):
        w = out.setdefault(s.worker, {"t": [], "used": [], "cores": s.cores, "mem_used": [], "mem_total": s.mem_total,
                                      "hollow": s.hollow})
        w["t"].append(s.t - started_at)
        w["used"].append(s.used)
        w["mem_used"].append(s.mem_used)
        w["cores"] = max(w["cores"], s.cores)
    for w in out.values():
        w["mean_used_fraction"] = float(np.mean(w["used"]) / w["cores"]) if w["cores"] and w["used"] else 0.0
    return out


def latency_trend(records: Sequence[JobRecord], started_at: float) -> float | None:
    """Least-squares slope of submit → all running against submit time (s per s); ~0 when the system
    keeps up, positive when a queue grows. Over the second half of the arrivals, to skip warm-up."""
    pts = [(r.submit_at - started_at, r.running_at - r.submit_at) for r in records
           if r.running_at is not None]
    if len(pts) < 4:
        return None
    pts.sort()
    half = pts[len(pts) // 2:]
    x = np.array([p[0] for p in half])
    y = np.array([p[1] for p in half])
    if np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def evm_summary(records: Sequence[JobRecord]) -> dict[str, Any] | None:
    """EVM jobs only (None without any): EVMs requested, READY and ERROR; per job, submit → all EVMs ready
    and all EPMs running → all EVMs ready (the last EVM's READY time, the system's clock); per EVM, the
    time its agent spent creating it."""
    jobs = [r for r in records if r.evms_requested and r.accepted]
    if not jobs:
        return None
    return {
        "jobs": len(jobs),
        "requested": sum(r.evms_requested for r in jobs),
        "ready": sum(r.evms_ready or 0 for r in jobs),
        "errors": sum(r.evms_errors or 0 for r in jobs),
        "jobs_all_ready": sum(1 for r in jobs if r.evms_ready_at is not None),
        "released": sum(1 for r in jobs if r.evms_released),
        "submit_to_all_ready": stats([v for v in (_diff(r.submit_at, r.evms_ready_at) for r in jobs)
                                      if v is not None]),
        "running_to_all_ready": stats([v for v in (_diff(r.running_at, r.evms_ready_at) for r in jobs)
                                       if v is not None]),
        "create_ms": stats([ms for r in jobs for ms in r.evm_create_ms]),
    }


def summarise(records: Sequence[JobRecord], samples: Sequence[Sample], started_at: float,
              window: float) -> dict[str, Any]:
    values = stage_values(records)
    evms = evm_summary(records)
    return {
        **({"evms": evms} if evms is not None else {}),
        "stages": {s.key: {"label": s.label, **stats(values[s.key])} for s in STAGES},
        "rates": rates(records, started_at, window),
        "outcomes": outcomes(records),
        "latency_trend_s_per_s": latency_trend(records, started_at),
        "utilisation": {k: {"cores": v["cores"], "mean_used_fraction": v["mean_used_fraction"],
                            "hollow": v["hollow"]}
                        for k, v in utilisation(samples, started_at).items()},
        "workers": {"total": len({s.worker for s in samples}), "hollow": len({s.worker for s in samples if s.hollow})},
    }
