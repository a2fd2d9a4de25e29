"""Bad input is refused with a 4xx naming the field, and nothing is written."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from tests.helpers import Api

pytestmark = pytest.mark.system

GOOD: dict[str, Any] = {
    "job_name": "valid",
    "job_info": {
        "network": {"name": "net", "driver": "overlay"},
        "tasks": {"t1": {"image": "rswarm/task:1", "command": "true", "req_cores": 1, "mem_limit": "64m"}},
    },
}


def variant(path: str, value: Any, delete: bool = False) -> dict[str, Any]:
    body = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = body
    for p in parents:
        node = node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return body


T = "job_info.tasks.t1"
INVALID = [
    # (case id, body, field named in the error)
    ("no job_info", variant("job_info", None, delete=True), "job_info"),
    ("job_info not an object", variant("job_info", [1, 2]), "job_info"),
    ("no tasks", variant("job_info.tasks", None, delete=True), "job_info.tasks"),
    ("empty tasks", variant("job_info.tasks", {}), "job_info.tasks"),
    ("unknown top-level field", variant("jobname", "typo"), "jobname"),
    ("unknown task field", variant(f"{T}.cpus", 2), f"{T}.cpus"),
    ("zero cores", variant(f"{T}.req_cores", 0), f"{T}.req_cores"),
    ("negative cores", variant(f"{T}.req_cores", -2), f"{T}.req_cores"),
    ("cores as string", variant(f"{T}.req_cores", "2"), f"{T}.req_cores"),
    ("cores as bool", variant(f"{T}.req_cores", True), f"{T}.req_cores"),
    ("memory unparseable", variant(f"{T}.mem_limit", "lots"), f"{T}.mem_limit"),
    ("memory zero", variant(f"{T}.mem_limit", "0m"), f"{T}.mem_limit"),
    ("memory under docker minimum", variant(f"{T}.mem_limit", "1m"), f"{T}.mem_limit"),
    ("image missing", variant(f"{T}.image", None, delete=True), f"{T}.image"),
    ("image with shell metacharacters", variant(f"{T}.image", "busybox;rm -rf /"), f"{T}.image"),
    ("cpuset bad syntax", variant(f"{T}.cpuset_cpus", "0-"), f"{T}.cpuset_cpus"),
    ("cpuset without node", variant(f"{T}.cpuset_cpus", "0"), f"{T}.cpuset_cpus"),
    ("cpuset backwards range", variant(f"{T}.cpuset_cpus", "3-1"), f"{T}.cpuset_cpus"),
    ("task name with a dot", variant("job_info.tasks", {"a.b": GOOD["job_info"]["tasks"]["t1"]}),
     "job_info.tasks.a.b"),
    ("task name unsafe for docker", variant("job_info.tasks", {"-x": GOOD["job_info"]["tasks"]["t1"]}),
     "job_info.tasks.-x"),
    ("container name invalid", variant(f"{T}.container_name", "bad name"), f"{T}.container_name"),
    ("duplicate container names", variant("job_info.tasks", {
        "a": {"image": "rswarm/task:1", "req_cores": 1, "container_name": "same"},
        "b": {"image": "rswarm/task:1", "req_cores": 1, "container_name": "same"}}),
     "job_info.tasks.b.container_name"),
    ("port out of range", variant(f"{T}.ports", {"70000/tcp": 8080}), f"{T}.ports.70000/tcp"),
    ("host port out of range", variant(f"{T}.ports", {"80/tcp": 0}), f"{T}.ports.80/tcp"),
    ("port protocol unknown", variant(f"{T}.ports", {"80/icmp": 8080}), f"{T}.ports.80/icmp"),
    ("volume outside the allowed root", variant(f"{T}.volumes", {"/etc": {"bind": "/x", "mode": "ro"}}),
     f"{T}.volumes./etc"),
    ("volume path traversal", variant(f"{T}.volumes", {"/tmp/../etc": {"bind": "/x"}}),
     f"{T}.volumes./tmp/../etc"),
    ("volume bad mode", variant(f"{T}.volumes", {"/x": {"bind": "/x", "mode": "rwx"}}), f"{T}.volumes./x"),
    ("environment key invalid", variant(f"{T}.environment", {"1BAD": "x"}), f"{T}.environment.1BAD"),
    ("environment value not string", variant(f"{T}.environment", {"GOOD": 5}), f"{T}.environment.GOOD"),
    ("command of mixed types", variant(f"{T}.command", ["sleep", 5]), f"{T}.command"),
    ("network driver unsupported", variant("job_info.network.driver", "bridge"), "job_info.network.driver"),
    ("subnet not a CIDR", variant("job_info.network.subnet", "10.0.0.300/24"), "job_info.network.subnet"),
    ("subnet with host bits", variant("job_info.network.subnet", "10.30.0.1/24"), "job_info.network.subnet"),
    ("subnet in loopback", variant("job_info.network.subnet", "127.1.0.0/24"), "job_info.network.subnet"),
    ("subnet too small for the tasks", variant("job_info.network.subnet", "10.30.0.0/30"), "job_info.network.subnet"),
    ("priority out of range", variant("priority", 5000), "priority"),
    ("job name unsafe", variant("job_name", "a b/c"), "job_name"),
    ("detach false", variant(f"{T}.detach", False), f"{T}.detach"),
]


@pytest.mark.parametrize(("case", "body", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_body_is_400_naming_the_field_and_writes_nothing(api: Api, store, case, body, field) -> None:
    before = store.jobs.col.count_documents({})
    r = api.post("/jobs", json=body)
    assert r.status_code == 400, (case, r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == "invalid"
    assert err["field"] == field, (case, err)
    assert err["message"]
    assert store.jobs.col.count_documents({}) == before


def test_at_least_fifteen_invalid_cases() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2", b"\xff\xfe"])
def test_malformed_json_is_400(api: Api, store, raw: bytes) -> None:
    before = store.jobs.col.count_documents({})
    r = api.s.post(api.base + "/jobs", data=raw, headers={**api.headers(), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    assert store.jobs.col.count_documents({}) == before


def test_non_json_content_type_is_400(api: Api) -> None:
    r = api.s.post(api.base + "/jobs", data=b"job_info=1", headers={**api.headers(), "Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"


def test_body_over_the_limit_is_413(api: Api, store, system) -> None:
    before = store.jobs.col.count_documents({})
    big = variant(f"{T}.environment", {"PAD": "x" * 4000})
    big["job_info"]["tasks"] = {f"t{i}": copy.deepcopy(big["job_info"]["tasks"]["t1"]) for i in range(300)}
    r = api.post("/jobs", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"
    assert store.jobs.col.count_documents({}) == before


def test_job_that_can_never_fit_is_422_with_the_reason(api: Api, store) -> None:
    before = store.jobs.col.count_documents({})
    r = api.post("/jobs", json=variant(f"{T}.req_cores", 512))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "unschedulable"
    assert "needs 512 cores" in err["message"]
    assert store.jobs.col.count_documents({}) == before


def test_unknown_node_is_422_and_foreign_cores_are_400(api: Api, store) -> None:
    r = api.post("/jobs", json=variant(f"{T}.node", "no-such-node"))
    assert r.status_code == 422 and r.json()["error"]["field"] == f"{T}.node"
    node = store.workers.all()[0]["_id"]
    body = variant(f"{T}.node", node)
    body["job_info"]["tasks"]["t1"]["cpuset_cpus"] = "999"
    r = api.post("/jobs", json=body)
    assert r.status_code == 400 and r.json()["error"]["field"] == f"{T}.cpuset_cpus"


def test_a_worker_registered_a_moment_ago_is_never_refused_from_a_stale_view(api: Api, store) -> None:
    """The FrontEnd reuses its view of the cluster for up to a second, but checks again before refusing."""
    late = f"w-late-{time.time_ns()}"
    body = variant(f"{T}.node", late)
    for _ in range(3):  # one keep-alive connection, so one server process, now holding a view without `late`
        r = api.post("/jobs", json=body)
        assert r.status_code == 422 and r.json()["error"]["field"] == f"{T}.node"
    # Registered DOWN so that no JobManager ever places anything on this node, which has no engine.
    fake = {**store.workers.all()[0], "_id": late, "state": "DOWN", "allocations": {}}
    store.workers.col.insert_one(fake)
    try:
        r = api.post("/jobs", json=body)
        assert r.status_code == 201, r.text
        assert store.jobs.get(r.json()["id"])["tasks"]["t1"]["node_request"] == late
        assert api.delete(f"/jobs/{r.json()['id']}").status_code in (200, 202)
        api.wait_state(r.json()["id"], "CANCELLED", timeout=60)
    finally:
        store.workers.col.delete_one({"_id": late})


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer"])
def test_mutations_without_the_token_are_401_and_write_nothing(api: Api, store, header) -> None:
    before = store.jobs.col.count_documents({})
    headers = {"Authorization": header} if header else {}
    r = api.s.post(api.base + "/jobs", json=GOOD, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert store.jobs.col.count_documents({}) == before
    job_id = api.submit({**GOOD, "job_info": {"tasks": {"t": {"image": "rswarm/task:1", "command": "true",
                                                               "req_cores": 1, "mem_limit": "32m"}}}})
    r = api.s.delete(f"{api.base}/jobs/{job_id}", headers=headers)
    assert r.status_code == 401
    assert store.jobs.get(job_id)["cancel_requested"] is False


def test_globalmanager_mutations_need_the_token(system) -> None:
    import requests

    base = f"{system.globalmanager_url}/api/v1"
    for path in ("/jobs/anything/deploy", "/jobs/anything/stop", "/jobs/anything/cleanup"):
        r = requests.post(base + path, timeout=10)
        assert r.status_code == 401, path
    r = requests.get(base + "/swarm", timeout=10).json()
    assert "JoinTokens" not in str(r) and "SWMTKN" not in str(r)


@pytest.mark.parametrize(("params", "field"), [({"state": "BOGUS"}, "state"), ({"limit": "0"}, "limit"),
                                               ({"limit": "x"}, "limit"), ({"after": "../x"}, "after")])
def test_bad_query_strings_are_400(api: Api, params, field) -> None:
    r = api.get("/jobs", params=params)
    assert r.status_code == 400 and r.json()["error"]["field"] == field


def test_unknown_job_is_404_json(api: Api) -> None:
    r = api.get("/jobs/job-000000000000-000000")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = api.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_an_idempotency_key_makes_a_retried_submission_safe(api: Api, store) -> None:
    key = f"retry-{time.time_ns()}"
    body = variant("job_name", f"idem-{time.time_ns()}")
    headers = {"Idempotency-Key": key}
    first = api.post("/jobs", json=body, headers=headers)
    assert first.status_code == 201, first.text
    job_id = first.json()["id"]
    try:
        again = api.post("/jobs", json=body, headers=headers)
        assert again.status_code == 200 and again.json()["id"] == job_id
        assert again.headers["Idempotent-Replayed"] == "true"
        assert store.jobs.col.count_documents({"idempotency_key": key}) == 1
        other = api.post("/jobs", json=variant("job_name", "something-else"), headers=headers)
        assert other.status_code == 409 and other.json()["error"]["field"] == "Idempotency-Key"
        before = store.jobs.col.count_documents({})
        bad = api.post("/jobs", json=body, headers={"Idempotency-Key": "no spaces allowed"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "Idempotency-Key"
        assert store.jobs.col.count_documents({}) == before
    finally:
        api.delete(f"/jobs/{job_id}")
        api.wait_state(job_id, {"CANCELLED", "COMPLETED"}, timeout=120)


def test_concurrent_submissions_with_one_idempotency_key_store_one_job(api: Api, store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers import Api as Client

    key = f"race-{time.time_ns()}"
    body = variant("job_name", key)

    def submit(_: int) -> tuple[int, str]:
        client = Client(api.base.removesuffix("/api/v1"), api.token)  # own connection: really concurrent
        r = client.post("/jobs", json=body, headers={"Idempotency-Key": key})
        return r.status_code, r.json().get("id", r.text)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(submit, range(8)))
    ids = {job_id for _, job_id in results}
    try:
        assert sorted(code for code, _ in results) == [200] * 7 + [201], results
        assert len(ids) == 1 and store.jobs.col.count_documents({"idempotency_key": key}) == 1
    finally:
        for job_id in ids:
            api.delete(f"/jobs/{job_id}")
            api.wait_state(job_id, {"CANCELLED", "COMPLETED"}, timeout=120)
