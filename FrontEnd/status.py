"""The read-only status page (/status) and the cluster summary it shares with ``Management.py status``.

Plain Jinja (``FrontEnd/templates/status.html``), no build step, no JavaScript: the page refreshes
itself with a meta refresh. It needs no token and shows none; everything on it is read from MongoDB.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request
from pymongo.errors import PyMongoError

from Common.errors import Invalid
from Common.metrics import evm_counts
from Common.resources import format_cpuset
from Common.states import JobState

bp = Blueprint("status", __name__, template_folder="templates")

RECENT_JOBS = 20
QUEUE_ROWS = 50
DEFAULT_REFRESH = 5


def _occupancy(w: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per core: which job's task holds it, if any."""
    holder: dict[int, str] = {}
    for key, alloc in (w.get("allocations") or {}).items():
        for c in alloc.get("cores", []):
            holder[c] = key
    return [{"core": c, "busy": c in holder, "holder": holder.get(c)} for c in w.get("cores", [])]


def cluster_summary(store: Any, strategy_default: str = "first-fit", recent: int = RECENT_JOBS,
                    queue_rows: int = QUEUE_ROWS) -> dict[str, Any]:
    """Workers with core occupancy, the queue with reasons, recent jobs, EVM counts (PyMongoError if down)."""
    now = time.time()
    workers = []
    for w in store.workers.all():
        cores = _occupancy(w)
        used = sum(1 for c in cores if c["busy"])
        hb = w.get("heartbeat_at")
        workers.append({
            "id": w["_id"], "state": w.get("state", "UNKNOWN"), "cores": cores, "capacity": len(cores),
            "used": used, "cpuset": format_cpuset(w.get("cores", [])),
            "mem_total": w.get("mem_total", 0), "mem_free": w.get("mem_free", 0),
            "tasks": len(w.get("allocations") or {}),
            "heartbeat_age": round(max(0.0, now - hb), 1) if hb else None,
            "hollow": bool(w.get("hollow")),
        })
    queued = store.jobs.queued()
    queue = []
    for position, j in enumerate(queued[:queue_rows], 1):
        since = (j.get("state_times") or {}).get(JobState.QUEUED.value, j.get("created_at", now))
        queue.append({
            "position": position, "id": j["_id"], "name": j["name"], "priority": j.get("priority", 0),
            "tasks": len(j["tasks"]), "cores": sum(t["req_cores"] for t in j["tasks"].values()),
            "waiting_seconds": round(max(0.0, now - since), 1),
            "reason": j.get("reason") or "not considered yet: the JobManager places or explains it at its next pass",
        })
    jobs = []
    for j in store.jobs.page(None, recent, None):
        states: dict[str, int] = {}
        for t in j["tasks"].values():
            states[t["state"]] = states.get(t["state"], 0) + 1
        nodes = sorted({t["node"] for t in j["tasks"].values() if t.get("node")})
        times = j.get("state_times") or {}
        jobs.append({
            "id": j["_id"], "name": j["name"], "state": j["state"], "priority": j.get("priority", 0),
            "tasks": ", ".join(f"{n} {s}" for s, n in sorted(states.items())), "nodes": ", ".join(nodes),
            "age_seconds": round(max(0.0, now - j.get("created_at", now)), 1),
            "since_seconds": round(max(0.0, now - times.get(j["state"], now)), 1),
            "reason": _note(j),
        })
    counts = store.jobs.count_by_state()
    return {
        "generated_at": now,
        "strategy": store.settings.get("strategy", strategy_default),
        "jobs_by_state": {s.value: counts.get(s.value, 0) for s in JobState},
        "queue_length": len(queued),
        "oldest_wait_seconds": max((q["waiting_seconds"] for q in queue), default=0.0),
        "workers": workers,
        "queue": queue,
        "recent_jobs": jobs,
        "evms": evm_counts(store),
    }


def _note(job: dict[str, Any]) -> str | None:
    """Why a job waits (QUEUED) or why it ended (FAILED, CANCELLED); nothing otherwise."""
    if job["state"] == JobState.QUEUED.value:
        return job.get("reason")
    if job["state"] in (JobState.FAILED.value, JobState.CANCELLED.value):
        return job.get("cancel_reason") or next((t["reason"] for t in job["tasks"].values() if t.get("reason")), None)
    return None


def _refresh() -> int:
    raw = request.args.get("refresh")
    if raw is None or raw == "":
        return DEFAULT_REFRESH
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 3600:
        raise Invalid("refresh must be a whole number of seconds, 1-3600", field="refresh")
    return int(raw)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:,.1f} GiB"


@bp.route("/status")
def status_page() -> Response | tuple[Response, int] | tuple[str, int, dict[str, str]]:
    from FrontEnd.context import ctx

    try:
        refresh = _refresh()
    except Invalid as exc:
        return jsonify(exc.body()), exc.status
    c = ctx()
    try:
        summary = cluster_summary(c.store, c.cfg.jobmanager.strategy)
        error = None
    except PyMongoError as exc:
        summary, error = None, f"MongoDB does not answer ({type(exc).__name__}); retrying"
    html = render_template("status.html", s=summary, error=error, refresh=refresh, cluster=c.cfg.cluster(),
                           mib=_mib, now=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    return html, 503 if error else 200, {"Cache-Control": "no-store"}
