"""Merak's data model and operations through the real system: EPMs as pods (with every task's addresses
read from the engine) and resizing a job's EVM set, verified in the EPMs' kernels."""

from __future__ import annotations

import json
from typing import Any

import pytest

from Common import evmspec
from tests.conftest import TEST_CLUSTER
from tests.helpers import Api, containers_of, docker_client, wait_for
from tests.test_evm_e2e import all_evms, evm_job, netns_in, summary, wait_ready

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]


def engine_ips(container: str) -> dict[str, str]:
    nets = docker_client().containers.get(container).attrs["NetworkSettings"]["Networks"]
    return {name: n["IPAddress"] for name, n in nets.items()}


def patch(api: Api, job_id: str, body: Any, auth: bool = True):
    return api.s.patch(f"{api.base}/jobs/{job_id}/evms", json=body, headers=api.headers(auth), timeout=30)


def test_pods_show_each_epm_with_its_overlay_ip_node_and_paginated_vms(api: Api, system) -> None:
    body = {"job_name": "pods", "job_info": {"tasks": {
        "e0": {"req_cores": 1, "evms": {"count": 6, "subnet": "10.91.0.0/24", "devices": "lean", "vpc": "vpc-p"}},
        "plain": {"image": "rswarm/task:1", "command": ["sleep", "600"], "req_cores": 1, "mem_limit": "16m"}}}}
    job_id = api.submit(body)
    wait_ready(api, job_id, 6)
    job = api.wait_tasks(job_id, "RUNNING")
    net = job["network"]["docker_name"]

    # Every task's addresses are those the engine gives its container, recorded once it ran.
    for t in job["tasks"].values():
        assert t["addresses"] == engine_ips(t["container_name"]) and t["ip"] == t["addresses"][net], t

    r = api.get(f"/jobs/{job_id}/epms")
    assert r.status_code == 200, r.text
    pods = r.json()["items"]
    assert [p["name"] for p in pods] == ["e0"]  # the ordinary task is no EPM
    pod = pods[0]
    e0 = job["tasks"]["e0"]
    assert pod["id"] == e0["container_name"] and pod["node"] == e0["node"] == system.worker_name
    assert pod["ip"] == engine_ips(e0["container_name"])[net] and pod["state"] == "RUNNING"
    evms = all_evms(api, job_id)
    assert {e["host"]["ip"] for e in evms} == {pod["ip"]}  # what the agent inside it saw as its own address
    assert pod["mac"] == evms[0]["host"]["mac"] and pod["vm_counts"]["READY"] == 6
    assert [(v["name"], v["ip"], v["mac"], v["state"], v["vpc"]) for v in pod["vms"]] == [
        (e["name"], e["ip"], e["mac"], "READY", "vpc-p") for e in evms]
    assert pod["vms_next"] is None

    # One EPM: its VMs a page at a time.
    first = api.get(f"/jobs/{job_id}/epms/e0", params={"vm_limit": 4}).json()
    assert [v["name"] for v in first["vms"]] == ["vm1", "vm2", "vm3", "vm4"] and first["vms_next"] == 4
    rest = api.get(f"/jobs/{job_id}/epms/e0", params={"vm_limit": 4, "vm_after": first["vms_next"]}).json()
    assert [v["name"] for v in rest["vms"]] == ["vm5", "vm6"] and rest["vms_next"] is None
    assert api.get(f"/jobs/{job_id}/epms", params={"vm_limit": 2}).json()["items"][0]["vms_next"] == 2

    # Unknown job or EPM: 404 naming it; bad parameters: 400 naming them.
    for path, field in (("/jobs/job-nope/epms", "job_id"), ("/jobs/job-nope/epms/e0", "job_id"),
                        (f"/jobs/{job_id}/epms/e9", "name"), (f"/jobs/{job_id}/epms/plain", "name")):
        r = api.get(path)
        assert r.status_code == 404 and r.json()["error"]["field"] == field, (path, r.text)
    for path, params, field in ((f"/jobs/{job_id}/epms", {"vm_limit": 0}, "vm_limit"),
                                (f"/jobs/{job_id}/epms", {"vm_limit": 101}, "vm_limit"),
                                (f"/jobs/{job_id}/epms/e0", {"vm_after": "x"}, "vm_after"),
                                (f"/jobs/{job_id}/epms/e0", {"vm_state": "BOGUS"}, "vm_state")):
        r = api.get(path, params=params)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, (path, r.text)
    api.delete(f"/jobs/{job_id}")
    api.wait_state(job_id, "CANCELLED", timeout=90)


def _in_kernel(api: Api, job_id: str, containers: dict[str, str], counts: dict[str, int]) -> None:
    wait_ready(api, job_id, sum(counts.values()))
    for epm, n in counts.items():
        wait_for(f"{epm} to hold {n} namespaces", lambda c=containers[epm], n=n: len(netns_in(c)) == n, 60)


def test_resizing_the_evm_set_follows_the_distribution_is_idempotent_and_guarded(api: Api, store, system) -> None:
    dist = {"kind": "skew", "s": 1.0, "seed": 5}
    job_id = api.submit(evm_job({"count": 6, "subnet": "10.92.0.0/24", "devices": "lean", "distribution": dist,
                                 "rate": {"kind": "rps", "rps": 40}}, tasks=2, mem_limit="64m", name="resize"))
    epms = ["e0", "e1"]
    definition = evmspec.Distribution("skew", seed=5, s=1.0)
    wait_ready(api, job_id, 6)
    containers = {e: t["container_name"] for e, t in api.wait_tasks(job_id, "RUNNING")["tasks"].items()}

    # Up: the EPMs end holding what the distribution gives for the new count; the new batch has the new rate.
    r = patch(api, job_id, {"count": 14, "rate": {"kind": "rps", "rps": 30}})
    assert r.status_code == 202, r.text
    want = evmspec.distribute(14, epms, definition)
    before = evmspec.distribute(6, epms, definition)
    assert r.json()["counts"] == want and r.json()["changed"]
    assert r.json()["added"] == {e: want[e] - before[e] for e in epms if want[e] > before[e]}
    assert r.json()["removed"] == {}
    batch = store.db["evm_batches"].find_one({"job_id": job_id, "batch": r.json()["batch"]})
    assert batch["rate"] == {"kind": "rps", "rps": 30.0, "burst": 1} and batch["count"] == 8
    _in_kernel(api, job_id, containers, want)
    # Each EPM given EVMs of the new batch was told the batch's rate on it (the Worker keeps the batches it
    # read, so a batch added later must make it read them again).
    for e in r.json()["added"]:
        desired = system.run_path / "epm" / containers[e] / "desired.json"
        assert json.loads(desired.read_text())["rates"].get(batch["batch"]) == batch["rates"][e], e

    # The same request again changes nothing.
    again = patch(api, job_id, {"count": 14, "rate": {"kind": "rps", "rps": 30}})
    assert again.status_code == 202 and not again.json()["changed"], again.text
    assert again.json()["added"] == {} and again.json()["removed"] == {}
    assert store.db["evm_batches"].count_documents({"job_id": job_id}) == 2

    # Down: the newest EVMs go, and the set is again what the distribution gives.
    r = patch(api, job_id, {"count": 4})
    assert r.status_code == 202, r.text
    want = evmspec.distribute(4, epms, definition)
    assert r.json()["counts"] == want and r.json()["added"] == {}
    _in_kernel(api, job_id, containers, want)

    def ready() -> list[int]:
        return sorted(int(e["id"].rsplit(".v", 1)[1]) for e in all_evms(api, job_id) if e["state"] == "READY")

    # The records follow the kernel once Discovery has applied the agents' reports of the deletions.
    wait_for("4 EVM records READY, the deleted ones no longer", lambda: len(ready()) == 4, 60)
    assert patch(api, job_id, {"count": 4}).json()["changed"] is False

    # Another update holding the set (as a second FrontEnd mid-update does): 409, nothing written.
    state = store.evms.set_state(job_id)
    assert store.evms.set_guard(job_id, state["gen"], state["spec"])
    r = patch(api, job_id, {"count": 9})
    assert r.status_code == 409 and r.json()["error"]["field"] == "job_id", r.text
    assert summary(api, job_id)["wanted"] == 4
    store.evms.set_release(job_id)
    # A plan made on a set that changed before it was committed is refused too.
    stale = store.evms.set_state(job_id)["gen"]
    assert api.post(f"/jobs/{job_id}/evms", json={"count": 1}).status_code == 202
    assert not store.evms.set_guard(job_id, stale, {})

    # Bad input: 400 naming the field, nothing written.
    gen = store.evms.set_state(job_id)["gen"]
    for bad, field in (({"count": -1}, "count"), ({"count": "3"}, "count"), ({"count": 3, "vms": 1}, "vms"),
                       ({"rate": {"kind": "rps", "rps": 0}}, "rate.rps"), ({}, "body"),
                       ({"distribution": {"kind": "manual", "counts": {"e7": 1}}}, "distribution.counts.e7"),
                       ({"count": 2, "distribution": {"kind": "manual", "counts": {"e0": 1}}},
                        "distribution.counts")):
        r = patch(api, job_id, bad)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, (bad, r.text)
    assert store.evms.set_state(job_id)["gen"] == gen and summary(api, job_id)["wanted"] == 5
    assert patch(api, job_id, {"count": 1}, auth=False).status_code == 401
    assert patch(api, "job-nope", {"count": 1}).status_code == 404

    # A manual distribution given once is the one the job follows from then on.
    r = patch(api, job_id, {"distribution": {"kind": "manual", "counts": {"e1": 3}}})
    assert r.status_code == 202 and r.json()["counts"] == {"e0": 0, "e1": 3}, r.text
    _in_kernel(api, job_id, containers, {"e0": 0, "e1": 3})
    assert patch(api, job_id, {"count": 5}).json()["error"]["field"] == "count"

    api.delete(f"/jobs/{job_id}")
    api.wait_state(job_id, "CANCELLED", timeout=90)
    wait_for("the EPM containers to be removed", lambda: not containers_of(TEST_CLUSTER, job_id), 60)
    r = patch(api, job_id, {"count": 2})
    assert r.status_code == 409 and r.json()["error"]["field"] == "job_id"
