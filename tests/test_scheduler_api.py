"""GET/PUT /api/v1/scheduler, GET /api/v1/queue, and a job end to end under every strategy (real system)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from Common.placement import STRATEGIES, SchedulerOptions
from Common.resources import parse_cpuset
from FrontEnd.app import create_app
from JobManager.manager import JobManager
from tests.helpers import Api, docker_client, sleeper, task_job, wait_for

pytestmark = [pytest.mark.system]

DEFAULT = {"strategy": "first-fit", "options": SchedulerOptions().to_dict()}


@pytest.fixture()
def scheduler(api: Api) -> Iterator[Api]:
    """Leave the scheduler as the other tests expect it: first-fit, default options."""
    yield api
    r = api.put("/scheduler", json=DEFAULT)
    assert r.status_code == 200, r.text


def _worker(store) -> dict[str, Any]:
    return store.workers.all()[0]


def _idle(store) -> bool:
    w = _worker(store)
    return w["allocations"] == {} and sorted(w["free_cores"]) == sorted(w["cores"]) and w["mem_free"] == w["mem_total"]


# ---- GET / PUT /scheduler ------------------------------------------------------------------------
def test_get_shows_the_strategy_its_options_and_every_strategy(api: Api) -> None:
    body = api.get("/scheduler").json()
    assert body["strategy"] in STRATEGIES
    assert set(body["options"]) == set(SchedulerOptions().to_dict())
    assert [s["name"] for s in body["strategies"]] == list(STRATEGIES)
    assert all(s["summary"] for s in body["strategies"])


def test_put_stores_the_strategy_and_options_where_new_jobmanager_and_frontend_instances_read_them(
        scheduler: Api, store, system) -> None:
    r = scheduler.put("/scheduler", json={"strategy": "best-fit-decreasing", "options": {"aging_seconds": 5}})
    assert r.status_code == 200, r.text
    assert r.json()["strategy"] == "best-fit-decreasing" and r.json()["options"]["aging_seconds"] == 5
    r = scheduler.put("/scheduler", json={"options": {"preemption": True}})  # the others keep their value
    assert r.json()["strategy"] == "best-fit-decreasing"
    assert r.json()["options"] == {**SchedulerOptions().to_dict(), "aging_seconds": 5, "preemption": True}
    # MongoDB holds it; a JobManager and a FrontEnd started afresh read it back.
    assert store.settings.get("strategy") == "best-fit-decreasing"
    jm = JobManager(system, store)
    try:
        assert jm.strategy() == "best-fit-decreasing"
        assert jm.options() == SchedulerOptions(preemption=True, aging_seconds=5)
    finally:
        jm.stop()
    # as a client of that FrontEnd would ask (its Host header is checked against the configured names)
    fresh = create_app(system).test_client().get("/api/v1/scheduler", base_url=system.frontend_url).get_json()
    assert fresh["strategy"] == "best-fit-decreasing" and fresh["options"]["preemption"] is True


@pytest.mark.parametrize(("body", "field"), [
    ({"strategy": "worst-fit"}, "strategy"),
    ({"strategy": 3}, "strategy"),
    ({"options": {"preemption": "yes"}}, "options.preemption"),
    ({"options": {"aging_seconds": -1}}, "options.aging_seconds"),
    ({"options": {"search_iterations": 1.5}}, "options.search_iterations"),
    ({"options": {"nonsense": 1}}, "options.nonsense"),
    ({"options": [1]}, "options"),
    ({"strategy": "first-fit", "extra": 1}, "extra"),
    ({}, "body"),
    ([], "body"),
])
def test_put_rejects_invalid_input_naming_the_field(scheduler: Api, store, body: Any, field: str) -> None:
    before = (store.settings.get("strategy"), store.settings.get("scheduler_options"))
    r = scheduler.put("/scheduler", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid" and r.json()["error"]["field"] == field
    assert (store.settings.get("strategy"), store.settings.get("scheduler_options")) == before


def test_put_with_a_body_that_is_not_json_is_400(api: Api) -> None:
    r = api.s.put(api.base + "/scheduler", data=b"{strategy", headers={**api.headers(),
                                                                        "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"


def test_put_without_the_token_is_401_and_changes_nothing(api: Api, store) -> None:
    before = store.settings.get("strategy")
    r = api.put("/scheduler", json={"strategy": "best-fit"}, auth=False)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert store.settings.get("strategy") == before


# ---- why pending ---------------------------------------------------------------------------------
@pytest.mark.usefixtures("idle_cluster")
def test_queue_lists_waiting_jobs_in_order_with_reasons(scheduler: Api, store) -> None:
    scheduler.put("/scheduler", json={"strategy": "priority", "options": {"aging_seconds": 0}})
    ncores = len(_worker(store)["cores"])
    big = scheduler.submit(task_job({f"t{i}": sleeper(300) for i in range(ncores)}, name="fills"))
    scheduler.wait_tasks(big, "RUNNING", timeout=60)
    low = scheduler.submit(task_job({"t": sleeper(1)}, name="low", priority=1))
    high = scheduler.submit(task_job({"t": sleeper(1, cores=ncores)}, name="high", priority=7))
    body = scheduler.get("/queue").json()
    assert body["strategy"] == "priority" and body["count"] == 2
    assert [i["id"] for i in body["items"]] == [high, low]
    assert [i["position"] for i in body["items"]] == [1, 2]
    first, second = body["items"]
    assert first["priority"] == 7 and first["cores"] == ncores and first["never_fits"] is False
    assert f"needs {ncores} core" in first["reason"] and "the most free cores is 0" in first["reason"]
    assert first["reserved_nodes"] == [_worker(store)["_id"]]
    assert "reserved for" in second["reason"]
    # The JobManager stores the same kind of reason on the job itself.
    wait_for("the JobManager's reason on the job", lambda: (scheduler.job(low)["reason"] or "").startswith("task t"))
    assert scheduler.get("/queue", params={"limit": 1}).json()["items"][0]["id"] == high
    assert scheduler.get("/queue", params={"limit": 0}).status_code == 400


@pytest.mark.usefixtures("idle_cluster")
def test_manual_strategy_refuses_unpinned_jobs_and_queues_conflicts(scheduler: Api, store) -> None:
    scheduler.put("/scheduler", json={"strategy": "manual"})
    node = _worker(store)["_id"]
    r = scheduler.post("/jobs", json=task_job({"t": sleeper(1)}))
    assert r.status_code == 422 and "manual strategy places only tasks that name their node" in r.text
    first = scheduler.submit(task_job({"t": sleeper(300, node=node, cpuset_cpus="0")}, name="pinned-a"))
    scheduler.wait_tasks(first, "RUNNING", timeout=60)
    second = scheduler.submit(task_job({"t": sleeper(0.5, node=node, cpuset_cpus="0")}, name="pinned-b"))
    waiting = wait_for("the conflict's reason", lambda: (j := scheduler.job(second))["reason"] and j, 30)
    assert waiting["state"] == "QUEUED"
    assert f"core 0 there is held by {first}:t" in waiting["reason"]
    scheduler.delete(f"/jobs/{first}")
    done = scheduler.wait_state(second, "COMPLETED", timeout=90)
    assert done["tasks"]["t"]["node"] == node and done["tasks"]["t"]["cpuset"] == "0"


# ---- the spine's end-to-end run under every strategy ---------------------------------------------
@pytest.mark.usefixtures("idle_cluster")
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_two_task_job_end_to_end_under_each_strategy(scheduler: Api, store, strategy: str) -> None:
    r = scheduler.put("/scheduler", json={"strategy": strategy})
    assert r.status_code == 200 and r.json()["strategy"] == strategy
    worker = _worker(store)
    if len(worker["cores"]) < 2:
        pytest.skip("needs a worker with two cores")
    extra: list[dict[str, Any]] = [{}, {}]
    if strategy == "manual":
        extra = [{"node": worker["_id"], "cpuset_cpus": str(c)} for c in sorted(worker["cores"])[:2]]
    # Long enough for both tasks to be seen running together even when Docker starts them slowly.
    job_id = scheduler.submit(task_job({"t1": sleeper(10, **extra[0]), "t2": sleeper(10, **extra[1])},
                                       name=f"e2e-{strategy}"))
    job = scheduler.wait_tasks(job_id, "RUNNING", timeout=60)
    seen: set[int] = set()
    for task in job["tasks"].values():
        applied = docker_client().api.inspect_container(task["container_id"])["HostConfig"]["CpusetCpus"]
        cores = set(parse_cpuset(task["cpuset"]))
        assert parse_cpuset(applied) == sorted(cores)  # what Docker applied is what was placed
        assert len(cores) == 1 and not cores & seen, "two tasks share a core"
        seen |= cores
    if strategy == "manual":
        assert {t["cpuset"] for t in job["tasks"].values()} == {e["cpuset_cpus"] for e in extra}
    done = scheduler.wait_state(job_id, "COMPLETED", timeout=60)
    assert all(t["exit_code"] == 0 for t in done["tasks"].values())
    wait_for("the claims to be released", lambda: _idle(store), 30)


# ---- preemption ----------------------------------------------------------------------------------
@pytest.mark.usefixtures("idle_cluster")
def test_preemption_evicts_a_lower_priority_job_which_runs_again_later(scheduler: Api, store) -> None:
    scheduler.put("/scheduler", json={"strategy": "priority", "options": {"preemption": True}})
    ncores = len(_worker(store)["cores"])
    low = scheduler.submit(task_job({f"t{i}": sleeper(300) for i in range(ncores)}, name="low", priority=1))
    before = scheduler.wait_tasks(low, "RUNNING", timeout=60)
    old_containers = {t["container_id"] for t in before["tasks"].values()}
    high = scheduler.submit(task_job({"t": sleeper(3, cores=ncores)}, name="high", priority=9))
    scheduler.wait_state(high, {"SCHEDULED", "RUNNING"}, timeout=60)
    evicted = scheduler.job(low)
    assert evicted["state"] == "QUEUED" and "preempted by " + high in evicted["reason"]
    assert all(t["attempt"] == 1 and t["state"] == "PENDING" and t["node"] is None
               for t in evicted["tasks"].values())
    doc = store.jobs.get(low)
    assert doc["preemptions"] == 1 and doc["last_preempted"]["by"] == high
    assert any(e["kind"] == "preempted" and e["by"] == high for e in store.events.for_job(low))
    # The old attempt's containers go; the high job runs and completes; the low job runs again.
    wait_for("the evicted containers to be removed", lambda: not old_containers & {
        c["Id"] for c in docker_client().api.containers(all=True)}, 60)
    assert scheduler.wait_state(high, "COMPLETED", timeout=90)["tasks"]["t"]["exit_code"] == 0
    again = scheduler.wait_tasks(low, "RUNNING", timeout=90)
    assert all(t["attempt"] == 1 for t in again["tasks"].values())
    scheduler.delete(f"/jobs/{low}")
    scheduler.wait_state(low, "CANCELLED", timeout=60)
    wait_for("the claims to be released", lambda: _idle(store), 30)
