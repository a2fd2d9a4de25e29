"""Prometheus metrics of every actor: the definitions, the /metrics endpoints, the scrape-time gauges.

Two kinds of numbers, two mechanisms:

* What *happens* in a process (placement decisions, claims, ZeroMQ messages, container starts, MongoDB
  round trips, HTTP requests) is counted in memory by the process that does it: counters and
  histograms defined here, incremented at the call sites.
* What the cluster *is* (jobs by state, the queue and its oldest job, workers' cores and memory, EVMs
  by state) is never kept in memory: ``ClusterCollector`` reads it from MongoDB, the truth, at scrape
  time. It is exposed by the FrontEnd only, so a PromQL ``sum`` never counts a job twice, and it is
  right whichever gunicorn worker answers and after any restart.

Processes served by gunicorn (the FrontEnd's several workers, the GlobalManager's one, which gunicorn
may replace) run prometheus_client's multiprocess mode: each process writes its counters to files in
``<run_dir>/metrics/<actor>`` and a scrape adds them up. The mode is chosen by the environment variable
``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is first imported, so those two actors'
``__main__`` set it (an emptied directory) before importing anything that imports this module.

Naming: ``rswarm_<what>_<unit>``; a node or host is always a label (``node``), never part of a name.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Bucket bounds in seconds, fitted to what was measured on this kind of machine.
MONGO_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PLAN_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
CONTAINER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
EVM_BUCKETS = (0.005, 0.01, 0.016, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 20.0)
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# ---- every actor ---------------------------------------------------------------------------------
MONGO_SECONDS = Histogram("rswarm_mongo_operation_seconds", "MongoDB command round trips, by command and outcome",
                          ["command", "outcome"], buckets=MONGO_BUCKETS)
ZMQ_MESSAGES = Counter("rswarm_zmq_messages_total",
                       "ZeroMQ messages: out (queued, sent, dropped) and in (accepted, rejected), by kind",
                       ["direction", "kind", "outcome"])
EVENTS = Counter("rswarm_events_total", "Events appended to the events timeline, by type", ["type"])
TRANSITIONS = Counter("rswarm_state_transitions_total", "Job and task state transitions written, by new state",
                      ["object", "state"])
HTTP_REQUESTS = Counter("rswarm_http_requests_total", "REST requests answered, by method, route and status",
                        ["method", "route", "status"])
HTTP_SECONDS = Histogram("rswarm_http_request_seconds", "REST request latency, by method and route",
                         ["method", "route"], buckets=HTTP_BUCKETS)

# ---- claims (Common.store.workers; the JobManager claims, Discovery and the JobManager release) -------
CLAIMS = Counter("rswarm_claims_total",
                 "Resource claims on a worker: committed, conflict (lost a generation race, retried) or "
                 "refused (the resources were gone)", ["node", "outcome"])
RELEASES = Counter("rswarm_releases_total", "Claims released (exactly once each)", ["node"])

# ---- JobManager ----------------------------------------------------------------------------------
PLACEMENT_DECISIONS = Counter("rswarm_placement_decisions_total",
                              "Per job and pass: placed, waiting, lost_race (re-planned) or preempting",
                              ["strategy", "decision"])
PLACEMENT_SECONDS = Histogram("rswarm_placement_plan_seconds", "Time to compute one plan (the pure placement)",
                              ["strategy"], buckets=PLAN_BUCKETS)
SCHEDULE_SECONDS = Histogram("rswarm_schedule_pass_seconds",
                             "One scheduling pass: read queue and cluster, plan, claim, commit",
                             buckets=PASS_BUCKETS)
JOB_WAIT_SECONDS = Histogram("rswarm_job_wait_seconds", "Time a job waited in the queue before it was placed",
                             ["strategy"], buckets=WAIT_BUCKETS)

# ---- Discovery -----------------------------------------------------------------------------------
TASK_REPORTS = Counter("rswarm_task_reports_total",
                       "Workers' task reports: applied (moved the task forward) or stale (late or repeated)",
                       ["state", "outcome"])
NODE_DOWN = Counter("rswarm_node_down_total", "Workers declared DOWN after missing heartbeats", ["node"])
EVM_CREATE_SECONDS = Histogram("rswarm_evm_create_seconds", "EVM creation time measured by its EPM agent",
                               ["outcome"], buckets=EVM_BUCKETS)

# ---- Worker --------------------------------------------------------------------------------------
CONTAINER_STARTS = Counter("rswarm_container_starts_total", "Task containers started or failed to start, per node",
                           ["node", "outcome"])
CONTAINER_START_SECONDS = Histogram("rswarm_container_start_seconds", "Docker start of a task container, per node",
                                    ["node"], buckets=CONTAINER_BUCKETS)
CONTAINER_EXITS = Counter("rswarm_container_exits_total", "Task containers that exited: completed, failed or oom",
                          ["node", "outcome"])
RECONCILE_SECONDS = Histogram("rswarm_reconcile_seconds", "One Worker reconcile pass, per node", ["node"],
                              buckets=PASS_BUCKETS)


# ---- helpers for call sites ----------------------------------------------------------------------
def mongo_listener() -> Any:
    """A pymongo CommandListener feeding ``rswarm_mongo_operation_seconds`` (register it in MongoClient)."""
    from pymongo import monitoring

    class _Listener(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            pass

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            MONGO_SECONDS.labels(event.command_name, "ok").observe(event.duration_micros / 1e6)

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            MONGO_SECONDS.labels(event.command_name, "failed").observe(event.duration_micros / 1e6)

    return _Listener()


def instrument_flask(app: Any) -> None:
    """Count and time every request of a Flask app by its route pattern (bounded), not its raw path."""
    from flask import g, request

    @app.before_request
    def _start() -> None:
        g.rswarm_t0 = time.perf_counter()

    @app.after_request
    def _count(response: Any) -> Any:
        t0 = g.get("rswarm_t0")
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        if t0 is not None:
            HTTP_SECONDS.labels(request.method, route).observe(time.perf_counter() - t0)
        return response


# ---- exposition ----------------------------------------------------------------------------------
class InfoCollector:
    """``rswarm_actor_info{actor, cluster, node} 1``: which deployment and node a target belongs to."""

    def __init__(self, actor: str, cluster: str, node: str | None = None) -> None:
        self.labels = [actor, cluster, node or socket.gethostname()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("rswarm_actor_info", "This process: its actor, deployment and node",
                              labels=["actor", "cluster", "node"])
        g.add_metric(self.labels, 1)
        yield g


class SupervisionCollector:
    """``rswarm_process_restarts_total{process, node}``: how often the supervisor of one run directory
    restarted each of its programs. Read at scrape time from ``<run_dir>/supervisor/restarts.json``,
    which supervisord's event listener (Common/ops/supervise_events.py) keeps; so the count is right
    whichever process answers and survives the restart of the process that serves it. Served by the
    FrontEnd for the control plane's host and by a Worker for its own host (``RSWARM_SUPERVISION_METRICS``)."""

    def __init__(self, run_path: Path | str, node: str | None = None) -> None:
        self.path = Path(run_path) / "supervisor" / "restarts.json"
        self.node = node or socket.gethostname()

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            procs = json.loads(self.path.read_text()).get("processes", {})
        except (OSError, ValueError):
            return  # not supervised (or not yet): no family rather than made-up zeros
        c = CounterMetricFamily("rswarm_process_restarts", "Restarts of a supervised process by its supervisor",
                                labels=["process", "node"])
        for name, p in sorted(procs.items()):
            c.add_metric([name, self.node], float(p.get("restarts", 0)))
        yield c


class _ProcessRegistry:
    """The process's default registry (counters, histograms, process_* and python_* metrics)."""

    def collect(self) -> Iterable[Any]:
        return REGISTRY.collect()


def registry(extra: Iterable[Any] = ()) -> CollectorRegistry:
    """What a scrape of this process shows: its own metrics (summed over processes in multiprocess mode)
    plus ``extra`` collectors."""
    reg = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(reg)
    else:
        reg.register(_ProcessRegistry())  # type: ignore[arg-type]
    for collector in extra:
        reg.register(collector)
    return reg


def exposition(extra: Iterable[Any] = ()) -> bytes:
    return generate_latest(registry(extra))


def start_metrics_server(actor: str, host: str, port: int, cluster: str, node: str | None = None,
                         extra: Iterable[Any] = ()) -> bool:
    """Serve /metrics on host:port in a background thread. Port 0 disables it.

    Metrics are for watching, never a reason to stop working: a port that cannot be bound is logged
    and the actor runs on without them.
    """
    if port == 0:
        log.info("%s: metrics endpoint disabled (metrics_port = 0)", actor)
        return False
    try:
        start_http_server(port, addr=host, registry=registry([InfoCollector(actor, cluster, node), *extra]))
    except OSError as exc:
        log.warning("%s: cannot serve metrics on %s:%d (%s); running without them", actor, host, port, exc)
        return False
    log.info("%s: metrics on http://%s:%d/metrics", actor, host, port)
    return True


# ---- scrape-time gauges from MongoDB -------------------------------------------------------------
class ClusterCollector:
    """Jobs by state, the queue, workers' capacity and occupancy, EVMs by state: read at each scrape."""

    def __init__(self, store_factory: Callable[[], Any]) -> None:
        self.store_factory = store_factory  # called at scrape time: the caller's per-process Store

    def describe(self) -> list[Any]:
        return []  # never query MongoDB at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from pymongo.errors import PyMongoError

        from Common.states import JobState

        up = GaugeMetricFamily("rswarm_cluster_scrape_ok", "1 when the cluster gauges could be read from MongoDB")
        try:
            store = self.store_factory()
            counts = store.jobs.count_by_state()
            queue_len, oldest = store.jobs.queue_stats()
            workers = store.workers.all()
            evms = evm_counts(store)
        except PyMongoError as exc:
            log.warning("cluster metrics: MongoDB unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        now = time.time()
        jobs = GaugeMetricFamily("rswarm_jobs", "Jobs by state", labels=["state"])
        for s in JobState:
            jobs.add_metric([s.value], counts.get(s.value, 0))
        yield jobs
        yield GaugeMetricFamily("rswarm_queue_length", "Jobs waiting to be placed", value=queue_len)
        yield GaugeMetricFamily("rswarm_queue_oldest_wait_seconds",
                                "How long the longest-waiting queued job has waited (0 when none waits)",
                                value=max(0.0, now - oldest) if oldest else 0.0)
        by_state = GaugeMetricFamily("rswarm_workers", "Workers by state", labels=["state"])
        states: dict[str, int] = {}
        for w in workers:
            states[w.get("state", "UNKNOWN")] = states.get(w.get("state", "UNKNOWN"), 0) + 1
        for state, n in sorted(states.items()):
            by_state.add_metric([state], n)
        yield by_state
        families = {
            "cores": GaugeMetricFamily("rswarm_worker_cores", "Cores a worker offers", labels=["node"]),
            "free": GaugeMetricFamily("rswarm_worker_cores_free", "Cores not claimed", labels=["node"]),
            "mem": GaugeMetricFamily("rswarm_worker_memory_bytes", "Memory a worker offers", labels=["node"]),
            "mem_free": GaugeMetricFamily("rswarm_worker_memory_free_bytes", "Memory not claimed", labels=["node"]),
            "hb": GaugeMetricFamily("rswarm_worker_heartbeat_age_seconds", "Seconds since its last heartbeat",
                                    labels=["node"]),
        }
        for w in workers:
            node = [w["_id"]]
            families["cores"].add_metric(node, len(w.get("cores", [])))
            families["free"].add_metric(node, len(w.get("free_cores", [])))
            families["mem"].add_metric(node, w.get("mem_total", 0))
            families["mem_free"].add_metric(node, w.get("mem_free", 0))
            families["hb"].add_metric(node, max(0.0, now - (w.get("heartbeat_at") or now)))
        yield from families.values()
        if evms is not None:
            g = GaugeMetricFamily("rswarm_evms", "EVMs that exist (not DELETED), by state", labels=["state"])
            for state, n in sorted(evms.items()):
                g.add_metric([state], n)
            yield g


def evm_counts(store: Any) -> dict[str, int] | None:
    """Existing EVMs by state over the jobs that hold any, through the EVM store's public methods;
    None where there is no EVM store."""
    evms = getattr(store, "evms", None)
    if evms is None or not hasattr(evms, "live_jobs") or not hasattr(evms, "summary"):
        return None
    from Common.evmstates import EVM_LIVE, EvmState

    out = {s.value: 0 for s in EvmState if s in EVM_LIVE}
    for job_id in evms.live_jobs():
        for state, n in evms.summary(job_id)["by_state"].items():
            if state in out:
                out[state] += n
    return out
