"""Issue 12 on the real system: each attack tried through the real API, Worker, dockerd and MongoDB, and shown
to fail (items 1, 2, 5 and 7; the pure checks are in tests/test_hostile_input.py and tests/test_volume_walk.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

import Management
from Common.config import Config
from Common.store import Store
from tests.conftest import TEST_CLUSTER
from tests.helpers import Api, containers_of, docker_client, sleeper, task_job, wait_for

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]

NON_ASCII_TOKENS = ["t\u00f6ken", "\u20ac".encode()]  # latin-1 text; UTF-8 bytes of a non-latin-1 character


def inspect(cid: str) -> dict[str, Any]:
    return docker_client().api.inspect_container(cid)


def hold_node(api: Api, store: Store) -> str:
    """A job holding every core of the node, so that the next job waits QUEUED until it is cancelled."""
    w = store.workers.all()[0]
    blocker = api.submit(task_job({"b": sleeper(3600, cores=len(w["cores"]))}, name="blocker"))
    api.wait_tasks(blocker, "RUNNING", timeout=60)
    return blocker


def release(api: Api, job_id: str) -> None:
    assert api.delete(f"/jobs/{job_id}").status_code in (200, 202)


def mounts_outside(attrs: dict[str, Any], root: str) -> list[str]:
    return [m["Source"] for m in attrs.get("Mounts", []) if m.get("Type") == "bind"
            and not os.path.realpath(m["Source"]).startswith(root.rstrip("/") + "/")]


# ---- item 1: an EPM gets nothing of the user's but its image and command ---------------------------------
def epm_job(name: str, **task: Any) -> dict[str, Any]:
    return {"job_name": name, "job_info": {"evms": {"count": 1, "subnet": "10.86.0.0/24"},
                                           "tasks": {"e0": {"req_cores": 1, **task}}}}


@pytest.mark.parametrize(("task", "field"), [
    ({"volumes": {"VOLROOT/agent": {"bind": "/opt/rswarm/epm", "mode": "rw"}}}, "job_info.tasks.e0.volumes"),
    ({"environment": {"PYTHONPATH": "/run/rswarm"}}, "job_info.tasks.e0.environment"),
    ({"ports": {"8080/tcp": 18080}}, "job_info.tasks.e0.ports"),
], ids=["volume-over-agent-dir", "pythonpath", "ports"])
def test_epm_job_with_a_volume_over_the_agent_or_pythonpath_is_refused_at_the_api_and_nothing_stored(
        api: Api, store: Store, system: Config, task: dict[str, Any], field: str) -> None:
    if "volumes" in task:
        task = {"volumes": {f"{system.volume_root}/agent": task["volumes"]["VOLROOT/agent"]}}
    name = f"epm-hostile-{field.rsplit('.', 1)[1]}"
    r = api.post("/jobs", json=epm_job(name, **task))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == field
    assert store.jobs.col.count_documents({"name": name}) == 0


def test_epm_whose_stored_document_was_altered_starts_without_the_volume_env_or_port(
        api: Api, store: Store, system: Config) -> None:
    blocker = hold_node(api, store)
    job_id = api.submit(epm_job("epm-altered"))
    assert api.job(job_id)["state"] == "QUEUED"
    # What a job container could write into an unauthenticated MongoDB (issue 12): the task's volumes,
    # environment and ports, to replace the agent's code and run it with the EPM's privileges.
    store.jobs.col.update_one({"_id": job_id}, {"$set": {
        "tasks.e0.volumes": [{"path": "agent", "bind": "/opt/rswarm/epm", "mode": "rw"},
                             {"host": "/", "bind": "/host", "mode": "rw"}],
        "tasks.e0.environment": {"PYTHONPATH": "/run/rswarm/evil", "EVIL": "1"},
        "tasks.e0.ports": {"8080/tcp": 18086}}})
    release(api, blocker)
    job = api.wait_tasks(job_id, "RUNNING", timeout=120)
    attrs = inspect(job["tasks"]["e0"]["container_id"])
    destinations = {m["Destination"] for m in attrs["Mounts"]}
    assert destinations == set(), destinations  # nothing: the node's EVM agent works from outside
    env = attrs["Config"]["Env"]
    assert not [e for e in env if e.startswith("EVIL=") or e == "PYTHONPATH=/run/rswarm/evil"], env
    assert not attrs["HostConfig"].get("PortBindings"), attrs["HostConfig"]["PortBindings"]
    assert "no-new-privileges" in attrs["HostConfig"]["SecurityOpt"]
    assert attrs["HostConfig"]["PidsLimit"] == system.worker.pids_limit
    release(api, job_id)
    api.wait_state(job_id, "CANCELLED", timeout=120)


# ---- item 2: volumes are checked where they are mounted -------------------------------------------------
def test_symlink_planted_by_one_job_does_not_reach_the_next_jobs_bind(api: Api, system: Config) -> None:
    root = os.path.realpath(system.volume_root)
    planter = api.submit(task_job({"p": {
        "image": "rswarm/task:1", "req_cores": 1, "mem_limit": "64m",
        "command": ["sh", "-c", "ln -s / /data/escape && ln -s .. /data/up"],
        "volumes": {f"{system.volume_root}/data": {"bind": "/data"}}}}, name="planter"))
    assert api.wait_state(planter, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    planted = Path(root, planter, "data", "escape")
    assert planted.is_symlink() and os.readlink(planted) == "/"  # the attack was really made

    # The next job names the very host path the symlink sits at: it gets a directory of its own.
    victim = api.submit(task_job({"v": {
        "image": "rswarm/task:1", "req_cores": 1, "mem_limit": "64m", "command": ["sleep", "300"],
        "volumes": {f"{system.volume_root}/data/escape": {"bind": "/mnt"},
                    f"{system.volume_root}/data/up": {"bind": "/up"}}}}, name="victim"))
    job = api.wait_tasks(victim, "RUNNING", timeout=60)
    attrs = inspect(job["tasks"]["v"]["container_id"])
    sources = sorted(m["Source"] for m in attrs["Mounts"])
    assert sources == [f"{root}/{victim}/data/escape", f"{root}/{victim}/data/up"]
    assert not any(Path(s).is_symlink() for s in sources)
    assert mounts_outside(attrs, root) == []
    seen = subprocess.run(["docker", "exec", attrs["Id"], "ls", "-A", "/mnt", "/up"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert seen == ["/mnt:", "/up:"], seen  # two empty directories, not / and not the root
    release(api, victim)


def test_symlink_in_the_jobs_own_volume_path_fails_the_task_with_the_reason_and_mounts_nothing(
        api: Api, store: Store, system: Config) -> None:
    root = os.path.realpath(system.volume_root)
    blocker = hold_node(api, store)
    job_id = api.submit(task_job({"v": {
        "image": "rswarm/task:1", "req_cores": 1, "mem_limit": "64m", "command": ["sleep", "300"],
        "volumes": {f"{system.volume_root}/data/escape/etc": {"bind": "/mnt"}}}}, name="symlinked"))
    assert api.job(job_id)["state"] == "QUEUED"
    # A container writing in this job's directory (what an earlier container of the job can do) plants the
    # link before the Worker creates the task's container. Planted by a plain `docker run`, named and removed
    # here, because no RESTfulSwarm container of a job runs before that job's own first container.
    job_dir = Path(root, job_id, "data")
    job_dir.mkdir(parents=True)
    planter = f"{TEST_CLUSTER}-planter-{job_id[-8:]}"
    subprocess.run(["docker", "run", "--rm", "--name", planter, "-v", f"{job_dir}:/data", "rswarm/task:1",
                    "ln", "-s", "/", "/data/escape"], check=True, capture_output=True)
    assert os.readlink(job_dir / "escape") == "/"
    release(api, blocker)
    job = api.wait_state(job_id, "FAILED", timeout=120)
    reason = job["tasks"]["v"]["reason"]
    assert "volume refused" in reason and f"{job_dir}/escape is a symbolic link (to '/')" in reason, reason
    for c in containers_of(TEST_CLUSTER, job_id):  # none was started; any created holds nothing outside
        assert mounts_outside(inspect(c["Id"]), root) == []
    assert not (job_dir / "escape" / "etc").is_symlink()


def test_volume_nested_inside_another_by_an_altered_document_fails_the_task_with_the_reason(
        api: Api, store: Store, system: Config) -> None:
    root = os.path.realpath(system.volume_root)
    blocker = hold_node(api, store)
    vol = {"image": "rswarm/task:1", "req_cores": 1, "mem_limit": "64m", "command": ["sleep", "300"]}
    job_id = api.submit(task_job({
        "writer": {**vol, "volumes": {f"{system.volume_root}/data": {"bind": "/data"}}},
        "reader": {**vol, "volumes": {f"{system.volume_root}/other": {"bind": "/mnt"}}}}, name="nested"))
    assert api.job(job_id)["state"] == "QUEUED"
    # The FrontEnd refuses a volume inside another of the job's (tests/test_hostile_input.py); an altered
    # document puts one there, where the writer could swap data/sub for a symlink while it is mounted.
    store.jobs.col.update_one({"_id": job_id}, {"$set": {
        "tasks.reader.volumes": [{"path": "data/sub", "bind": "/mnt", "mode": "rw"}]}})
    release(api, blocker)
    job = api.wait_state(job_id, "FAILED", timeout=120)
    reason = job["tasks"]["reader"]["reason"]
    assert f"{root}/{job_id}/data/sub lies inside {root}/{job_id}/data" in reason, reason
    for c in containers_of(TEST_CLUSTER, job_id):
        assert not [m for m in inspect(c["Id"])["Mounts"] if m["Source"].endswith("/data/sub")]


# ---- item 5: containers are bounded ---------------------------------------------------------------------
def _cgroup_file(pid: int, name: str) -> Path:
    """The file ``name`` of the pids cgroup holding ``pid`` (cgroup v1 pids controller, or v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            return Path("/sys/fs/cgroup/pids") / path.lstrip("/") / name
    unified = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if line.startswith("0::"))
    return Path("/sys/fs/cgroup") / unified.split("::", 1)[1].lstrip("/") / name


def test_fork_bomb_is_held_at_the_pids_limit_while_the_nodes_other_task_runs_on(
        api: Api, system: Config) -> None:
    procs = Management.Processes(system)
    worker_pid = procs.alive("worker")
    other = api.submit(task_job({"o": sleeper(600)}, name="neighbour"))
    api.wait_tasks(other, "RUNNING", timeout=60)
    bomb = api.submit(task_job({"b": {
        "image": "rswarm/task:1", "req_cores": 1, "mem_limit": "512m",
        "command": ["sh", "-c", "f() { f | f & }; f; exec sleep 600"]}}, name="forkbomb"))
    try:
        job = api.wait_tasks(bomb, "RUNNING", timeout=60)
        attrs = inspect(job["tasks"]["b"]["container_id"])
        assert attrs["HostConfig"]["PidsLimit"] == system.worker.pids_limit
        assert "no-new-privileges" in attrs["HostConfig"]["SecurityOpt"]
        pid = attrs["State"]["Pid"]
        assert _cgroup_file(pid, "pids.max").read_text().strip() == str(system.worker.pids_limit)

        def refused_forks() -> int:
            for line in _cgroup_file(pid, "pids.events").read_text().splitlines():
                key, _, n = line.partition(" ")
                if key == "max":
                    return int(n)
            return 0

        wait_for("the bomb to run into the pids limit", refused_forks, timeout=60)
        assert int(_cgroup_file(pid, "pids.current").read_text()) <= system.worker.pids_limit
        # Contained: the neighbour, the Worker and dockerd go on.
        assert inspect(api.job(other)["tasks"]["o"]["container_id"])["State"]["Running"]
        assert api.job(other)["tasks"]["o"]["state"] == "RUNNING"
        assert procs.alive("worker") == worker_pid
        assert subprocess.run(["docker", "version"], capture_output=True).returncode == 0
    finally:
        release(api, bomb)
    api.wait_state(bomb, "CANCELLED", timeout=120)
    assert api.job(other)["tasks"]["o"]["state"] == "RUNNING"
    assert procs.alive("worker") == worker_pid
    release(api, other)


def _mutating_routes(base: str) -> list[tuple[str, str]]:
    doc = requests.get(f"{base}/api/v1/swagger.json", timeout=30).json()
    out = []
    for path, ops in doc["paths"].items():
        for method in ops:
            if method in ("post", "put", "patch", "delete"):
                concrete = path.replace("{", "").replace("}", "")  # every parameter named after itself
                out.append((method.upper(), f"{base}/api/v1{concrete}"))
    return out


@pytest.mark.parametrize("actor", ["frontend", "globalmanager"])
def test_non_ascii_bearer_token_is_answered_401_on_every_mutating_route_without_a_traceback(
        system: Config, actor: str) -> None:
    base = system.frontend_url if actor == "frontend" else system.globalmanager_url
    log = system.run_path / "logs" / f"{actor}.log"
    before = log.read_text(errors="replace").count("Traceback")
    routes = _mutating_routes(base)
    assert len(routes) >= (10 if actor == "frontend" else 2), routes
    for token in NON_ASCII_TOKENS:
        prefix = b"Bearer " if isinstance(token, bytes) else "Bearer "
        for method, url in routes:
            r = requests.request(method, url, headers={"Authorization": prefix + token}, json={}, timeout=30)
            assert r.status_code == 401, (method, url, r.status_code, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
    assert log.read_text(errors="replace").count("Traceback") == before


def test_non_ascii_token_on_a_read_that_shows_more_with_the_token_is_401(system: Config) -> None:
    r = requests.get(f"{system.frontend_url}/api/v1/jobs", headers={"Authorization": "Bearer t\u00f6ken"},
                     timeout=30)
    assert r.status_code == 401, r.text


def test_oversized_cpuset_is_refused_naming_the_field_on_submit_and_on_update(api: Api, store: Store) -> None:
    node = store.workers.all()[0]["_id"]
    long_text = ",".join(["0"] * 200)
    for cpuset, req in ((long_text, 1), ("0-2047", None)):
        r = api.post("/jobs", json=task_job({"t": {**sleeper(5), "req_cores": req, "node": node,
                                                   "cpuset_cpus": cpuset}}, name="big-cpuset"))
        assert r.status_code == 400, r.text
        assert r.json()["error"]["field"] == "job_info.tasks.t.cpuset_cpus"
    assert store.jobs.col.count_documents({"name": "big-cpuset"}) == 0
    job_id = api.submit(task_job({"t": sleeper(300)}, name="resize-me"))
    api.wait_tasks(job_id, "RUNNING", timeout=60)
    r = api.s.patch(f"{api.base}/jobs/{job_id}/tasks/t", json={"cpuset_cpus": long_text}, headers=api.headers(),
                    timeout=30)
    assert r.status_code == 400 and r.json()["error"]["field"] == "cpuset_cpus", r.text
    release(api, job_id)


# ---- item 7: reads expose nothing secret without a token --------------------------------------------------
def test_log_tails_are_shown_only_with_the_token(api: Api) -> None:
    secret = "s3cret-" + os.urandom(6).hex()
    job_id = api.submit(task_job({"t": {**sleeper(1), "command": ["sh", "-c", f"echo {secret}"]}}, name="chatty"))
    assert api.wait_state(job_id, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"

    with_token = api.s.get(f"{api.base}/jobs/{job_id}", headers=api.headers(), timeout=30).json()
    assert secret in with_token["tasks"]["t"]["log_tail"]  # the tail exists, so its absence below means something
    listed = api.s.get(f"{api.base}/jobs", headers=api.headers(), timeout=30).json()["items"]
    assert secret in next(j for j in listed if j["id"] == job_id)["tasks"]["t"]["log_tail"]

    for url in (f"{api.base}/jobs/{job_id}", f"{api.base}/jobs"):
        r = api.s.get(url, timeout=30)
        assert r.status_code == 200 and secret not in r.text and "log_tail" not in r.text, url
        wrong = api.s.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert wrong.status_code == 401 and secret not in wrong.text, url


@pytest.mark.parametrize("actor", ["frontend", "globalmanager"])
def test_foreign_host_header_is_refused_with_a_json_error_and_loopback_names_pass(system: Config,
                                                                                  actor: str) -> None:
    port = system.frontend.port if actor == "frontend" else system.globalmanager.port
    url = f"http://127.0.0.1:{port}/api/v1/swagger.json"
    for host in ("evil.example", f"evil.example:{port}", f"rebind.127.0.0.1.nip.io:{port}", f"127.0.0.1:{port + 1}"):
        r = requests.get(url, headers={"Host": host}, timeout=30)
        assert r.status_code == 400, (host, r.status_code)
        assert r.json()["error"]["field"] == "Host", r.text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert requests.get(url, headers={"Host": host}, timeout=30).status_code == 200, host
    # A refused request is refused before it acts: a foreign-host POST with the right token stores nothing.
    if actor == "frontend":
        r = requests.post(f"http://127.0.0.1:{port}/api/v1/jobs", json=task_job({"t": sleeper(1)}, name="rebound"),
                          headers={"Host": "evil.example", "Authorization": f"Bearer {system.token()}"}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["field"] == "Host"
        store = Store.connect(system)
        try:
            assert store.jobs.col.count_documents({"name": "rebound"}) == 0
        finally:
            store.close()
