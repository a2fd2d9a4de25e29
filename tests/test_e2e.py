"""One job end to end through the real system: REST -> MongoDB -> JM -> GM -> Worker -> Docker -> Discovery."""

from __future__ import annotations

import pytest

from Common.resources import parse_cpuset, parse_memory
from tests.conftest import TEST_CLUSTER
from tests.helpers import Api, containers_of, docker_client, networks_named, sleeper, task_job, wait_for

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]


def _worker_is_idle(store) -> bool:
    w = store.workers.all()[0]
    return w["allocations"] == {} and sorted(w["free_cores"]) == sorted(w["cores"]) and w["mem_free"] == w["mem_total"]


def test_two_task_job_runs_pinned_and_limited_then_completes(api: Api, store) -> None:
    job_id = api.submit(task_job({"t1": sleeper(10), "t2": sleeper(10)}, name="pinned"))
    # The job is in MongoDB as soon as the 201 is back.
    assert store.jobs.get(job_id) is not None

    job = api.wait_tasks(job_id, "RUNNING", timeout=60)
    client = docker_client()
    seen_cores: set[int] = set()
    for name, task in job["tasks"].items():
        attrs = client.api.inspect_container(task["container_id"])
        host = attrs["HostConfig"]
        # What Docker really applied is what the JobManager recorded.
        assert parse_cpuset(host["CpusetCpus"]) == parse_cpuset(task["cpuset"])
        assert host["Memory"] == parse_memory("64m")
        assert attrs["Config"]["Labels"]["rswarm.task"] == name
        assert job["network"]["docker_name"] in attrs["NetworkSettings"]["Networks"]
        cores = set(parse_cpuset(task["cpuset"]))
        assert len(cores) == 1 and not cores & seen_cores, "two running tasks share a core"
        seen_cores |= cores
    worker = store.workers.get(job["tasks"]["t1"]["node"])
    assert set(worker["free_cores"]).isdisjoint(seen_cores)

    job = api.wait_state(job_id, "COMPLETED", timeout=60)
    for task in job["tasks"].values():
        assert task["exit_code"] == 0
        assert set(task["state_times"]) >= {"PENDING", "SCHEDULED", "STARTING", "RUNNING", "COMPLETED"}
    assert list(job["state_times"]) == ["QUEUED", "SCHEDULED", "RUNNING", "COMPLETED"]
    wait_for("the claims to be released", lambda: _worker_is_idle(store), 30)
    wait_for("the containers to be removed", lambda: not containers_of(TEST_CLUSTER, job_id), 30)
    wait_for("the network to be removed", lambda: not networks_named(job["network"]["docker_name"]), 30)


def test_nonzero_exit_ends_failed_with_its_code(api: Api, store) -> None:
    job_id = api.submit(task_job({"bad": {"image": "rswarm/task:1", "command": ["sh", "-c", "exit 3"],
                                          "req_cores": 1, "mem_limit": "32m"}}))
    job = api.wait_state(job_id, "FAILED", timeout=60)
    task = job["tasks"]["bad"]
    assert task["state"] == "FAILED"
    assert task["exit_code"] == 3
    assert "code 3" in task["reason"]
    wait_for("the claim to be released", lambda: _worker_is_idle(store), 30)


def test_failed_task_stops_its_siblings(api: Api, store) -> None:
    job_id = api.submit(task_job({"long": sleeper(300), "bad": {"image": "rswarm/task:1",
                                                               "command": ["sh", "-c", "sleep 1; exit 7"],
                                                               "req_cores": 1, "mem_limit": "32m"}}))
    job = api.wait_state(job_id, "FAILED", timeout=60)
    assert job["tasks"]["bad"]["exit_code"] == 7
    assert job["tasks"]["long"]["state"] == "CANCELLED"
    assert "bad" in job["tasks"]["long"]["reason"]
    wait_for("the containers to be removed", lambda: not containers_of(TEST_CLUSTER, job_id), 30)
    wait_for("the claims to be released", lambda: _worker_is_idle(store), 30)


def test_missing_image_ends_failed_with_the_reason(api: Api, store) -> None:
    job_id = api.submit(task_job({"ghost": {"image": "rswarm/does-not-exist:9", "req_cores": 1, "mem_limit": "32m"}}))
    job = api.wait_state(job_id, "FAILED", timeout=60)
    task = job["tasks"]["ghost"]
    assert task["exit_code"] is None
    assert "rswarm/does-not-exist:9" in task["reason"] and "not on this node" in task["reason"]
    wait_for("the claim to be released", lambda: _worker_is_idle(store), 30)


def test_waiting_job_starts_when_a_release_wakes_the_jobmanager(api: Api, store) -> None:
    ncores = len(store.workers.all()[0]["cores"])
    big = api.submit(task_job({f"t{i}": sleeper(8) for i in range(ncores)}, name="fills-the-node"))
    api.wait_tasks(big, "RUNNING", timeout=60)
    small = api.submit(task_job({"t": sleeper(0.5)}, name="waits"))

    waiting = wait_for("a reason on the waiting job", lambda: (j := api.job(small))["reason"] and j, 30)
    assert waiting["state"] == "QUEUED"
    assert "needs 1 core" in waiting["reason"] and "most free cores is 0" in waiting["reason"]

    big_done = api.wait_state(big, "COMPLETED", timeout=60)
    small_done = api.wait_state(small, "COMPLETED", timeout=60)
    # The JobManager's sweep runs once an hour in this deployment: only the release's hint can
    # have placed the waiting job, and it did so after the first of the big job's tasks ended.
    first_release = min(t["state_times"]["COMPLETED"] for t in big_done["tasks"].values())
    assert small_done["state_times"]["SCHEDULED"] >= first_release


def test_delete_running_job_removes_containers_network_and_claims(api: Api, store) -> None:
    job_id = api.submit(task_job({"a": sleeper(300), "b": sleeper(300)}))
    job = api.wait_tasks(job_id, "RUNNING", timeout=60)
    assert len(containers_of(TEST_CLUSTER, job_id)) == 2
    assert networks_named(job["network"]["docker_name"])

    r = api.delete(f"/jobs/{job_id}")
    assert r.status_code == 202, r.text
    assert r.json()["cancel_requested"] is True
    job = api.wait_state(job_id, "CANCELLED", timeout=60)
    assert all(t["state"] == "CANCELLED" for t in job["tasks"].values())
    wait_for("the containers to be removed", lambda: not containers_of(TEST_CLUSTER, job_id), 30)
    wait_for("the network to be removed", lambda: not networks_named(job["network"]["docker_name"]), 30)
    wait_for("the claims to be released", lambda: _worker_is_idle(store), 30)
    # Deleting again is harmless.
    assert api.delete(f"/jobs/{job_id}").status_code == 200


def test_delete_queued_job_cancels_it_without_a_container(api: Api, store) -> None:
    ncores = len(store.workers.all()[0]["cores"])
    big = api.submit(task_job({f"t{i}": sleeper(300) for i in range(ncores)}))
    api.wait_tasks(big, "RUNNING", timeout=60)
    queued = api.submit(task_job({"t": sleeper(1)}))
    assert api.job(queued)["state"] == "QUEUED"
    assert api.delete(f"/jobs/{queued}").status_code == 202
    job = api.wait_state(queued, "CANCELLED", timeout=30)
    assert job["tasks"]["t"]["container_id"] is None
    api.delete(f"/jobs/{big}")
    api.wait_state(big, "CANCELLED", timeout=60)
    wait_for("the claims to be released", lambda: _worker_is_idle(store), 30)


def test_list_jobs_paginates_and_filters(api: Api) -> None:
    ids = [api.submit(task_job({"t": sleeper(0.1)}, name=f"page-{i}")) for i in range(3)]
    for job_id in ids:
        api.wait_state(job_id, "COMPLETED", timeout=60)
    page1 = api.get("/jobs", params={"limit": 2}).json()
    assert len(page1["items"]) == 2 and page1["next"]
    page2 = api.get("/jobs", params={"limit": 2, "after": page1["next"]}).json()
    assert {j["id"] for j in page1["items"]}.isdisjoint({j["id"] for j in page2["items"]})
    newest_first = [j["id"] for j in page1["items"]]
    assert newest_first == sorted(newest_first, reverse=True)
    completed = api.get("/jobs", params={"state": "COMPLETED", "limit": 500}).json()["items"]
    assert set(ids) <= {j["id"] for j in completed}
    assert all(j["state"] == "COMPLETED" for j in completed)


def test_workers_endpoint_shows_capacity_and_heartbeat(api: Api) -> None:
    items = api.get("/workers").json()["items"]
    assert len(items) == 1
    w = items[0]
    assert w["state"] == "READY" and w["capacity_cores"] >= 1 and w["mem_total"] > 0
    assert w["heartbeat_age_seconds"] < 60
