"""Faults converge by themselves (issue 11, items 2-4), against the real system with real faults.

Processes are found through tests.helpers.actor_pid (the deployment's own records) and hit with real
signals: MongoDB, Discovery and the Worker are frozen with SIGSTOP, the Worker is SIGKILLed, a task's
image does not exist, a mount is refused by the engine, a node's engine address answers nothing.
Every wait is a liveness bound, never a speed claim. Every frozen process is resumed in a ``finally``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import Management
from Common.store.workers import READY, Alloc
from tests.conftest import SLOT, TEST_CLUSTER
from tests.helpers import Api, actor_pid, containers_of, signal_actor, sleeper, task_job, wait_for

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]

ACTORS = ("frontend", "jobmanager", "globalmanager", "discovery", "worker", "mongo")


@contextmanager
def frozen(cfg, name: str) -> Iterator[int]:
    """SIGSTOP the process (a hung process: alive, holding its sockets, answering nothing), SIGCONT after."""
    pid = signal_actor(cfg, name, signal.SIGSTOP)
    try:
        yield pid
    finally:
        signal_actor(cfg, name, signal.SIGCONT)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def node_downs(store, since: dt.datetime) -> list[dict]:
    return store.events.query(kinds=["node_down"], since=since)


def worker(store, cfg) -> dict:
    doc = store.workers.get(cfg.worker_name)
    assert doc is not None
    return doc


def idle(store, cfg) -> bool:
    w = worker(store, cfg)
    return w["allocations"] == {} and sorted(w["free_cores"]) == sorted(w["cores"])


def wait_worker_ready(store, cfg) -> None:
    wait_for("the worker to be READY", lambda: worker(store, cfg).get("state") == READY, 120)


# ---- item 2: MongoDB away --------------------------------------------------------------------------
def test_mongodb_frozen_longer_than_the_heartbeat_timeout_kills_no_actor_marks_no_node_down_and_work_resumes(
        api: Api, store, system) -> None:
    pids = {a: actor_pid(system, a) for a in ACTORS}
    before = api.submit(task_job({"t": sleeper(3)}, name="before-the-outage"))
    api.wait_state(before, {"RUNNING", "COMPLETED"}, timeout=120)
    since = now()
    outage = system.discovery.heartbeat_timeout_seconds + 10
    with frozen(system, "mongo"):
        t0 = time.monotonic()
        r = api.get("/jobs")
        assert r.status_code == 503, r.text
        assert r.headers.get("Retry-After"), r.headers
        assert r.json()["error"]["code"] == "unavailable"
        r = api.post("/jobs", json=task_job({"t": sleeper(1)}))
        assert r.status_code == 503 and r.headers.get("Retry-After"), r.text
        time.sleep(max(0.0, outage - (time.monotonic() - t0)))
    # Every actor is the same process as before: none died (nothing restarted them either way).
    assert {a: actor_pid(system, a) for a in ACTORS} == pids
    after = api.submit(task_job({"t": sleeper(1)}, name="after-the-outage"))
    assert api.wait_state(before, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)["state"] == "COMPLETED"
    assert api.wait_state(after, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)["state"] == "COMPLETED"
    assert node_downs(store, since) == []
    assert worker(store, system)["state"] == READY
    assert {a: actor_pid(system, a) for a in ACTORS} == pids


# ---- item 3 ----------------------------------------------------------------------------------------
def test_permanent_deploy_errors_end_failed_with_the_engines_message_and_release_the_claims(
        api: Api, store, system) -> None:
    vol = system.volume_root / f"proc-mount-{SLOT}"
    vol.mkdir(parents=True, exist_ok=True)
    no_image = api.submit(task_job({"t": {"image": "rswarm/never-built:1", "req_cores": 1, "mem_limit": "32m"}},
                                   name="no-such-image"))
    bad_mount = api.submit(task_job({"t": sleeper(30, volumes={str(vol): {"bind": "/proc/rswarm", "mode": "rw"}})},
                                    name="mount-refused"))
    job = api.wait_state(no_image, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    assert job["state"] == "FAILED" and "rswarm/never-built:1" in job["tasks"]["t"]["reason"], job
    job = api.wait_state(bad_mount, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    assert job["state"] == "FAILED", job
    assert "/proc/rswarm" in job["tasks"]["t"]["reason"], job  # the engine's own words
    wait_for("their claims to be released", lambda: idle(store, system), 60)
    wait_for("their containers to be removed", lambda: not containers_of(TEST_CLUSTER, bad_mount), 60)


def test_a_transient_deploy_error_is_retried_with_backoff_and_the_job_runs_once_the_globalmanager_answers(
        api: Api, store, system) -> None:
    with frozen(system, "globalmanager"):  # it accepts connections and answers nothing: the deploy times out
        job_id = api.submit(task_job({"t": sleeper(1)}, name="deploy-while-the-gm-is-frozen"))
        wait_for("a transient deploy failure to be recorded",
                 lambda: (store.jobs.get(job_id) or {}).get("deploy_failures", 0) >= 2, 120)
        job = store.jobs.get(job_id)
        assert job["state"] == "SCHEDULED" and "did not answer" in job["deploy_error"], job
    job = api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)
    assert job["state"] == "COMPLETED", job
    wait_for("the claim to be released", lambda: idle(store, system), 60)


def test_a_deploy_lost_with_the_jobmanager_and_globalmanager_sigkilled_mid_call_is_resent_without_a_sweep(
        api: Api, store, system) -> None:
    """The JobManager placed the job (SCHEDULED) and its deploy call waits on a frozen GlobalManager; both
    are SIGKILLed, so the call is lost on both ends. The test system's JobManager sweeps once an hour
    (conftest), so only the restarted JobManager's own wake-up at ``redeploy_after_seconds`` re-sends it."""
    procs = Management.Processes(system)
    gm_pid = signal_actor(system, "globalmanager", signal.SIGSTOP)
    try:
        job_id = api.submit(task_job({"t": sleeper(1)}, name="deploy-lost-with-both-ends"))
        wait_for("the job to be placed", lambda: (store.jobs.get(job_id) or {}).get("state") == "SCHEDULED", 60)
        jm_pid = signal_actor(system, "jobmanager", signal.SIGKILL)
        os.killpg(gm_pid, signal.SIGKILL)
        killed_at = time.time()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gm_pid, signal.SIGCONT)
    job = store.jobs.get(job_id)
    assert job["state"] == "SCHEDULED" and not job.get("dispatched_at") and not job.get("deploy_failures"), job
    for name, pid in (("jobmanager", jm_pid), ("globalmanager", gm_pid)):
        wait_for(f"{name} to be restarted", lambda n=name, p=pid: procs.alive(n) not in (None, p), 60)
    job = api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)
    assert job["state"] == "COMPLETED", job
    assert store.jobs.get(job_id)["dispatched_at"] > killed_at
    wait_for("the claim to be released", lambda: idle(store, system), 60)


def test_a_claim_left_by_a_jobmanager_killed_mid_placement_is_released_when_its_lease_ends_without_a_sweep(
        api: Api, store, system) -> None:
    """A placer that claimed a job's cores, then died before committing the placement, leaves a claim owned
    only by its lease. The gap between the claim and the commit is a few milliseconds of one process, too
    short to hit with a signal, so this test WRITES that state into MongoDB (the claim and the lease, as the
    JobManager writes them: JobStore.acquire_lease, WorkerStore.claim) while the JobManager is frozen, then
    SIGKILLs it for real. The job needs every core of the node, so while the claim holds them it cannot be
    placed again; the test system sweeps once an hour (conftest), so only the restarted JobManager's own
    wake-up when the lease (plus its grace) runs out releases the claim and lets the job run."""
    node = worker(store, system)
    cores = sorted(node["cores"])
    token = "died-mid-placement-" + os.urandom(4).hex()
    jm_pid = signal_actor(system, "jobmanager", signal.SIGSTOP)
    try:
        job_id = api.submit(task_job({"t": sleeper(1, cores=len(cores))}, name="claimed-by-a-dead-placer"))
        assert store.jobs.acquire_lease(job_id, token, 3.0)
        assert store.workers.claim(node["_id"], [Alloc(job_id, "t", tuple(cores), 64 * 2**20, token)]) is not None
        os.killpg(jm_pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(jm_pid, signal.SIGCONT)
    procs = Management.Processes(system)
    wait_for("the jobmanager to be restarted", lambda: procs.alive("jobmanager") not in (None, jm_pid), 60)
    job = api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)
    assert job["state"] == "COMPLETED", job
    assert store.jobs.get(job_id)["tasks"]["t"]["claim_token"] != token  # placed again, by the new JobManager
    wait_for("every claim to be released", lambda: idle(store, system), 60)


def test_a_sigstopped_worker_is_declared_down_and_its_job_restarted_when_it_comes_back(
        api: Api, store, system) -> None:
    job_id = api.submit(task_job({"t": sleeper(6)}, name="on-a-hung-node"))
    api.wait_tasks(job_id, "RUNNING", timeout=120)
    assert store.jobs.get(job_id)["dispatches"] == 1  # accepted deploys of this placement
    since = now()
    with frozen(system, "worker"):
        wait_for("the hung worker to be DOWN", lambda: worker(store, system)["state"] == "DOWN", 120)
        wait_for("its job to go back to the queue", lambda: (store.jobs.get(job_id) or {}).get("requeues") == 1, 60)
    assert [e["node"] for e in node_downs(store, since)] == [system.worker_name]
    job = store.jobs.get(job_id)
    assert job["history"][-1]["state"] == "LOST" and "node down" in job["tasks"]["t"]["reason"], job
    wait_worker_ready(store, system)
    job = api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)
    assert job["state"] == "COMPLETED" and job["tasks"]["t"]["attempt"] == 1, job
    # counted afresh for the new placement (the count spaces the sweep's re-sends)
    assert store.jobs.get(job_id)["dispatches"] == 1
    wait_for("the claims to be released", lambda: idle(store, system), 60)


def test_cancelling_a_job_whose_node_is_down_ends_cancelled_with_its_tasks_lost_without_waiting_for_the_node(
        api: Api, store, system) -> None:
    job_id = api.submit(task_job({"a": sleeper(120), "b": sleeper(120)}, name="cancel-on-a-dead-node"))
    api.wait_tasks(job_id, "RUNNING", timeout=120)
    with frozen(system, "worker"):
        r = api.delete(f"/jobs/{job_id}")
        assert r.status_code == 202, r.text
        assert r.json()["state"] == "CANCELLING", r.json()
        # The node is frozen: nobody stops or reports its tasks. The job ends anyway, while it is still frozen.
        job = api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
        assert worker(store, system)["state"] == "DOWN"
        assert job["state"] == "CANCELLED", job
        assert {t["state"] for t in job["tasks"].values()} == {"LOST"}, job
        assert all("node down" in t["reason"] for t in job["tasks"].values()), job
        assert list(job["state_times"])[-2:] == ["CANCELLING", "CANCELLED"], job["state_times"]
        assert worker(store, system)["allocations"] == {}
    wait_worker_ready(store, system)
    # Back, the node removes the containers of the job that ended without it.
    wait_for("the orphan containers to be removed", lambda: not containers_of(TEST_CLUSTER, job_id), 120)
    assert store.jobs.get(job_id)["state"] == "CANCELLED"


def test_delete_of_a_worker_whose_engine_is_dead_completes_and_requeues_its_jobs(api: Api, store, system) -> None:
    name = f"rswtest{SLOT}-dead-engine"
    dead = system.run_path / "dead-engine.sock"  # nothing listens here: an engine that is gone
    since = now()
    store.workers.register(name, [0, 1], 2**30, {"engine": name, "docker_url": f"unix://{dead}"})
    try:
        job_id = api.submit(task_job({"t": sleeper(5, node=name)}, name="on-the-dead-node"))
        # Its registration stays fresh until the job is placed there (only its engine is dead), however
        # slow this machine is today.
        wait_for("the job to be placed on the dead node", lambda: store.workers.heartbeat(name) and (
            store.jobs.get(job_id) or {}).get("state") == "SCHEDULED", 60)
        r = api.delete(f"/workers/{name}")
        assert r.status_code == 202, r.text
        wait_for("the node to be removed", lambda: store.workers.get(name)["state"] == "REMOVED", 120)
        wait_for("the forced removal on the timeline", lambda: any(
            e["node"] == name and e["forced"] for e in store.events.query(kinds=["node_removed"], since=since)), 30)
        job = store.jobs.get(job_id)
        assert job["requeues"] >= 1 and job["history"][-1]["state"] == "LOST", job
        assert job["state"] == "QUEUED" and store.workers.get(name)["allocations"] == {}
        api.delete(f"/jobs/{job_id}")
        api.wait_state(job_id, "CANCELLED", timeout=60)
    finally:
        store.workers.col.delete_one({"_id": name})


def test_a_frozen_discovery_does_not_declare_live_workers_down_when_it_resumes(api: Api, store, system) -> None:
    job_id = api.submit(task_job({"t": sleeper(4)}, name="while-discovery-is-frozen"))
    api.wait_tasks(job_id, "RUNNING", timeout=120)
    since = now()
    with frozen(system, "discovery"):
        time.sleep(system.discovery.heartbeat_timeout_seconds + 8)
    job = api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    time.sleep(system.discovery.sweep_seconds * 2)  # a few sweeps after it resumed
    assert node_downs(store, since) == []
    assert job["state"] == "COMPLETED" and job["tasks"]["t"]["attempt"] == 0, job


def test_tasks_whose_containers_vanished_while_their_worker_was_away_end_on_its_first_pass(
        api: Api, store, system) -> None:
    plain = api.submit(task_job({"t": sleeper(120)}, name="ghost"))
    cancelled = api.submit(task_job({"t": sleeper(120)}, name="ghost-cancelled"))
    api.wait_tasks(plain, "RUNNING", timeout=120)
    api.wait_tasks(cancelled, "RUNNING", timeout=120)
    # The node goes away (its Worker stopped through supervisord, which then leaves it stopped) and is
    # rebuilt under the same name: none of its containers exist any more.
    assert Management.Processes(system).stop("worker")
    wait_for("the worker to be gone", lambda: Management.Processes(system).alive("worker") is None, 30)
    ids = [c["Id"] for c in containers_of(TEST_CLUSTER)]
    subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=True)
    r = api.delete(f"/jobs/{cancelled}")
    assert r.status_code == 202 and r.json()["state"] == "CANCELLING", r.text
    Management.up(system, quiet=True)
    job = api.wait_state(plain, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    assert job["state"] == "FAILED" and "disappeared" in job["tasks"]["t"]["reason"], job
    job = api.wait_state(cancelled, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    assert job["state"] == "CANCELLED", job
    wait_for("no claim to outlive its container", lambda: idle(store, system), 60)


# ---- item 4 ----------------------------------------------------------------------------------------
def test_two_jobs_publishing_one_host_port_on_one_node_the_second_waits_with_the_reason_then_runs(
        api: Api, store, system) -> None:
    port = 15000 + 100 * SLOT + 80
    web = {"t": sleeper(6, ports={"80/tcp": port})}
    first = api.submit(task_job(web, name="port-first"))
    api.wait_tasks(first, "RUNNING", timeout=120)
    second = api.submit(task_job(web, name="port-second"))
    waiting = wait_for("a reason on the second job", lambda: (j := api.job(second))["reason"] and j, 60)
    assert waiting["state"] == "QUEUED" and f"{port}/tcp" in waiting["reason"] and first in waiting["reason"], waiting
    assert sorted(worker(store, system)["free_cores"]) != []  # it waits for the port, not for cores
    assert api.wait_state(first, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)["state"] == "COMPLETED"
    assert api.wait_state(second, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)["state"] == "COMPLETED"


def test_an_explicit_subnet_in_use_makes_the_new_job_wait_and_an_impossible_one_is_refused(
        api: Api, store, system) -> None:
    for bad in ("129.59.0.0/33", "129.59.1.0/16", "127.0.0.0/16"):
        r = api.post("/jobs", json={"job_info": {"network": {"subnet": bad}, "tasks": {"t": sleeper(1)}}})
        assert r.status_code == 400 and r.json()["error"]["field"] == "job_info.network.subnet", (bad, r.text)
    body = {"job_info": {"network": {"name": "sample", "subnet": "129.59.0.0/16"}, "tasks": {"t": sleeper(6)}}}
    first = api.submit(body)
    api.wait_tasks(first, "RUNNING", timeout=120)
    second = api.submit(body)
    waiting = wait_for("a reason on the second job", lambda: (j := api.job(second))["reason"] and j, 60)
    assert waiting["state"] == "QUEUED" and "129.59.0.0/16" in waiting["reason"] and first in waiting["reason"]
    queue = {i["id"]: i for i in api.get("/queue").json()["items"]}
    assert "129.59.0.0/16" in queue[second]["reason"], queue  # the queue says the same
    assert api.wait_state(first, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)["state"] == "COMPLETED"
    assert api.wait_state(second, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)["state"] == "COMPLETED"


def test_when_the_subnet_pool_is_exhausted_a_job_waits_with_the_reason_then_runs(api: Api, store, system) -> None:
    pool = system.globalmanager.network_pool  # this test deployment's pool: a /16
    halves = list(ipaddress.IPv4Network(pool).subnets(prefixlen_diff=1))
    holders = [api.submit({"job_info": {"network": {"subnet": str(h)}, "tasks": {"t": sleeper(6)}}}) for h in halves]
    for h in holders:
        api.wait_tasks(h, "RUNNING", timeout=120)
    starved = api.submit(task_job({"t": sleeper(1)}, name="no-subnet-left"))
    waiting = wait_for("a reason on the starved job", lambda: (j := api.job(starved))["reason"] and j, 60)
    assert waiting["state"] == "QUEUED" and pool in waiting["reason"] and "none free" in waiting["reason"], waiting
    for h in holders:
        assert api.wait_state(h, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)["state"] == "COMPLETED"
    assert api.wait_state(starved, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)["state"] == "COMPLETED"



def test_the_seed_sample_job_submitted_three_times_at_once_completes_three_times_on_one_node(
        api: Api, store, system) -> None:
    # The RESTfulSwarm README's job: its subnet and a published host port (moved off 3000 so that parallel
    # test sessions on this machine do not share it), with a runnable image and command.
    port = 15000 + 100 * SLOT + 81
    sample = {"job_name": "sample", "job_info": {
        "network": {"name": "RESTfulSwarmNet", "driver": "overlay", "subnet": "129.59.0.0/16"},
        "tasks": {"task1": {"container_name": "task1", "image": "rswarm/task:1", "command": "sleep 3",
                            "req_cores": 1, "mem_limit": "32m", "ports": {"3000/tcp": port},
                            "detach": True, "status": "Ready"}}}}
    jobs = [api.submit(sample) for _ in range(3)]
    for job_id in jobs:
        job = api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=240)
        assert job["state"] == "COMPLETED", job
    wait_for("the claims to be released", lambda: idle(store, system), 60)
