"""Every actor's /metrics parses with the Prometheus text parser, belongs to this deployment, and its
counters move when a job runs."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from Common.config import Config
from tests.conftest import TEST_CLUSTER
from tests.helpers import Api, sleeper, task_job, wait_for

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]

ACTORS = ("frontend", "globalmanager", "jobmanager", "discovery", "worker")
NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def endpoints(cfg: Config) -> dict[str, str]:
    out = {"frontend": f"{cfg.frontend_url}/metrics"}
    for actor in ACTORS[1:]:
        sub = getattr(cfg, actor)
        out[actor] = f"http://{sub.metrics_host}:{sub.metrics_port}/metrics"
    return out


Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> tuple[list[Any], Samples]:
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, (url, r.status_code, r.text[:500])
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    families = list(text_string_to_metric_families(r.text))
    return families, [(s.name, s.labels, s.value) for f in families for s in f.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample called ``name`` whose labels include ``labels``."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items()))


def scrape_all(cfg: Config) -> dict[str, Samples]:
    return {actor: scrape(url)[1] for actor, url in endpoints(cfg).items()}


def test_every_actor_serves_parseable_metrics_of_this_deployment(system: Config, store) -> None:
    node = store.workers.all()[0]["_id"]
    for actor, url in endpoints(system).items():
        families, samples = scrape(url)
        assert families, f"{actor}: no metrics"
        info = [lab for n, lab, _ in samples if n == "rswarm_actor_info"]
        # The right deployment's process answers (ports are per test slot).
        assert info == [{"actor": actor, "cluster": TEST_CLUSTER, "node": info[0]["node"]}], (actor, info)
        for f in families:
            assert NAME.match(f.name) and f.documentation, (actor, f.name)
            # A host or node is a label, never part of a metric's name.
            assert node.replace("-", "_") not in f.name.split("_"), (actor, f.name)
        names = {f.name for f in families}
        assert "rswarm_mongo_operation_seconds" in names, (actor, sorted(names))
        if actor in ("worker", "discovery"):  # heartbeats flow from the start
            assert value(samples, "rswarm_zmq_messages_total", kind="heartbeat") > 0, actor
    worker_info = [lab for n, lab, _ in scrape(endpoints(system)["worker"])[1] if n == "rswarm_actor_info"]
    assert worker_info[0]["node"] == node


def test_cluster_gauges_and_histogram_buckets(system: Config, store) -> None:
    scrape(endpoints(system)["frontend"])  # a scrape reads MongoDB: the next one shows those round trips
    _, fe = scrape(endpoints(system)["frontend"])
    w = store.workers.all()[0]
    assert value(fe, "rswarm_cluster_scrape_ok") == 1
    assert value(fe, "rswarm_worker_cores", node=w["_id"]) == len(w["cores"])
    assert value(fe, "rswarm_workers", state="READY") >= 1
    assert {lab["state"] for n, lab, _ in fe if n == "rswarm_jobs"} == {
        "QUEUED", "SCHEDULED", "RUNNING", "CANCELLING", "COMPLETED", "FAILED", "CANCELLED"}
    assert {lab["state"] for n, lab, _ in fe if n == "rswarm_evms"} >= {"PENDING", "READY"}
    buckets = sorted({float(lab["le"]) for n, lab, _ in fe if n == "rswarm_mongo_operation_seconds_bucket"})
    # Seconds, fitted to the real range: sub-millisecond to a few seconds.
    assert buckets[0] <= 0.001 and 1.0 <= buckets[-2] <= 10.0 and buckets[-1] == float("inf"), buckets


def test_counters_move_when_a_job_runs(api: Api, system: Config, store) -> None:
    node = store.workers.all()[0]["_id"]
    before = scrape_all(system)
    job_id = api.submit(task_job({"t1": sleeper(1), "t2": sleeper(1)}, name="metrics"))
    api.wait_state(job_id, "COMPLETED", timeout=90)
    wait_for("the claims to be released", lambda: not store.workers.get(node)["allocations"], 60)
    after = scrape_all(system)

    def moved(actor: str, name: str, at_least: float = 1, **labels: str) -> None:
        delta = value(after[actor], name, **labels) - value(before[actor], name, **labels)
        assert delta >= at_least, f"{actor} {name}{labels}: moved by {delta}, expected >= {at_least}"

    # FrontEnd: the request, its MongoDB writes, the hint to the JobManager; the cluster gauges.
    moved("frontend", "rswarm_http_requests_total", method="POST", route="/api/v1/jobs", status="201")
    moved("frontend", "rswarm_mongo_operation_seconds_count", command="insert", outcome="ok")
    moved("frontend", "rswarm_zmq_messages_total", direction="out", kind="hint", outcome="sent")
    moved("frontend", "rswarm_jobs", state="COMPLETED")
    # JobManager: a placement decision, its latency, the claim, the wait, the hints it was woken by.
    moved("jobmanager", "rswarm_placement_decisions_total", decision="placed")
    moved("jobmanager", "rswarm_placement_plan_seconds_count")
    moved("jobmanager", "rswarm_schedule_pass_seconds_count")
    moved("jobmanager", "rswarm_job_wait_seconds_count")
    moved("jobmanager", "rswarm_claims_total", node=node, outcome="committed")
    moved("jobmanager", "rswarm_zmq_messages_total", direction="in", kind="hint", outcome="accepted")
    moved("jobmanager", "rswarm_events_total", type="placement")
    # GlobalManager: the deploy request and the dispatch hint to the node.
    moved("globalmanager", "rswarm_http_requests_total", method="POST", route="/api/v1/jobs/<string:job_id>/deploy",
          status="202")
    moved("globalmanager", "rswarm_zmq_messages_total", direction="out", kind="dispatch", outcome="sent")
    # Worker: two containers started and exited on this node, reported to Discovery.
    moved("worker", "rswarm_container_starts_total", 2, node=node, outcome="started")
    moved("worker", "rswarm_container_start_seconds_count", 2, node=node)
    moved("worker", "rswarm_container_exits_total", 2, node=node, outcome="completed")
    moved("worker", "rswarm_zmq_messages_total", 6, direction="out", kind="task_status", outcome="sent")
    moved("worker", "rswarm_reconcile_seconds_count", node=node)
    # Discovery: the reports applied, the transitions, the releases.
    moved("discovery", "rswarm_task_reports_total", 2, state="COMPLETED", outcome="applied")
    moved("discovery", "rswarm_state_transitions_total", object="job", state="COMPLETED")
    moved("discovery", "rswarm_releases_total", 2, node=node)
    moved("discovery", "rswarm_zmq_messages_total", 6, direction="in", kind="task_status", outcome="accepted")
    for actor in ACTORS:
        moved(actor, "rswarm_mongo_operation_seconds_count")
    # Nothing failed along the way.
    for actor in ACTORS:
        assert value(after[actor], "rswarm_zmq_messages_total", outcome="rejected") == value(
            before[actor], "rswarm_zmq_messages_total", outcome="rejected"), actor


def test_queue_gauges_see_a_waiting_job(api: Api, system: Config, store) -> None:
    ncores = len(store.workers.all()[0]["cores"])
    big = api.submit(task_job({f"t{i}": sleeper(300) for i in range(ncores)}, name="fills-the-node"))
    api.wait_tasks(big, "RUNNING", timeout=90)
    small = api.submit(task_job({"t": sleeper(0.5)}, name="waits"))
    wait_for("a reason on the waiting job", lambda: api.job(small)["reason"], 60)

    def waiting() -> Samples | None:
        _, fe = scrape(endpoints(system)["frontend"])
        ok = value(fe, "rswarm_queue_length") == 1 and value(fe, "rswarm_queue_oldest_wait_seconds") > 0
        return fe if ok else None

    fe = wait_for("the queue gauges to show the waiting job", waiting, 30)
    assert value(fe, "rswarm_worker_cores_free", node=store.workers.all()[0]["_id"]) == 0
    _, jm = scrape(endpoints(system)["jobmanager"])
    assert value(jm, "rswarm_placement_decisions_total", decision="waiting") >= 1
    api.delete(f"/jobs/{big}")
    api.wait_state(small, "COMPLETED", timeout=90)
    _, fe = scrape(endpoints(system)["frontend"])
    assert value(fe, "rswarm_queue_length") == 0 and value(fe, "rswarm_queue_oldest_wait_seconds") == 0
