"""EVMs through the real system: REST -> MongoDB -> JM -> GM -> Worker -> EPM container -> agent -> Discovery."""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import Management
from Common import evmspec
from tests.conftest import TEST_CLUSTER
from tests.evm_harness import PING, nsfs_mounts, py_in_netns
from tests.helpers import Api, containers_of, docker_client, wait_for

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]


def evm_job(evms: dict[str, Any], tasks: int = 2, name: str | None = None, **task_extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"job_info": {"evms": evms, "tasks": {f"e{i}": {"req_cores": 1, **task_extra}
                                                                    for i in range(tasks)}}}
    if name:
        body["job_name"] = name
    return body


def summary(api: Api, job_id: str) -> dict[str, Any]:
    r = api.get(f"/jobs/{job_id}/evms/summary")
    assert r.status_code == 200, r.text
    return r.json()


def wait_ready(api: Api, job_id: str, n: int, timeout: float = 180) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        s = summary(api, job_id)
        assert not s["errors"], s["errors"]
        return s if s["ready"] == n and s["wanted"] == n else None

    return wait_for(f"{n} EVMs of {job_id} READY", check, timeout)


def all_evms(api: Api, job_id: str, **params: Any) -> list[dict[str, Any]]:
    items, after = [], None
    while True:
        q = {"limit": 7, **params, **({"after": after} if after is not None else {})}
        r = api.get(f"/jobs/{job_id}/evms", params=q)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        after = page["next"]
        if after is None:
            return items


def netns_dir(container: str) -> Path:
    """Where the local Worker's node agent mounts this EPM's EVM namespaces (Worker/epm/node.py)."""
    return Path(os.environ["RSWARM_RUN_DIR"]) / "epm" / container / "netns"


def netns_in(container: str) -> list[str]:
    """The EVM namespaces of an EPM, from the kernel's mount table."""
    return nsfs_mounts(netns_dir(container))


def py_in_epm(container: str, code: str, *args: str) -> str:
    """Run Python on the host inside the EPM container's network namespace."""
    pid = docker_client().api.inspect_container(container)["State"]["Pid"]
    return py_in_netns(pid, netns_dir(container), code, *args)


def node_agents() -> list[int]:
    """The pids of the node EVM agents serving this test run's Worker."""
    root = str(Path(os.environ["RSWARM_RUN_DIR"]) / "epm")
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"Worker.epm.node" in argv and root.encode() in argv:
                out.append(int(p.name))
    return out


def test_evms_become_real_namespaces_and_follow_create_update_delete(api: Api, store, system) -> None:
    job_id = api.submit(evm_job({"count": 12, "subnet": "10.81.0.0/24", "devices": "lean", "vpc": "vpc-1",
                                 "rate": {"kind": "rps", "rps": 40}}, name="evm-crud"))
    s = wait_ready(api, job_id, 12)
    assert s["text"] == "12 of 12 ready" and {e: c["READY"] for e, c in s["by_epm"].items()} == {"e0": 6, "e1": 6}

    evms = all_evms(api, job_id)
    assert [e["name"] for e in evms] == [f"vm{i}" for i in range(1, 13)]
    assert len({e["ip"] for e in evms}) == len({e["mac"] for e in evms}) == 12
    job = api.job(job_id)
    for e in evms:
        t = job["tasks"][e["epm"]]
        assert e["state"] == "READY" and e["vpc"] == "vpc-1" and e["gateway"] == "10.81.0.1"
        assert e["node"] == t["node"] and e["container"] == t["container_name"]
        assert e["host"]["ip"] and e["host"]["mac"] and e["host"]["name"]
        assert {"PENDING", "DEPLOYING", "READY"} <= set(e["times"]) and e["create_ms"] > 0
        assert e["mac"] == evmspec.mac_for(job_id, e["ip"])
    only_e1 = all_evms(api, job_id, epm="e1", state="READY")
    assert {e["epm"] for e in only_e1} == {"e1"} and len(only_e1) == 6

    # Two EVMs of one EPM reach each other.
    a, b = [e for e in evms if e["epm"] == "e0"][:2]
    seq_a = int(a["id"].rsplit(".v", 1)[1])
    assert py_in_epm(a["container"], PING, f"rswevm-{seq_a}", b["ip"]).strip() == "3"

    # UPDATE: labels.
    r = api.s.patch(f"{api.base}/jobs/{job_id}/evms/{a['id']}", json={"security_group": "sg-web"},
                    headers=api.headers(), timeout=30)
    assert r.status_code == 200 and r.json()["security_group"] == "sg-web", r.text
    assert api.s.patch(f"{api.base}/jobs/{job_id}/evms/{a['id']}", json={"ip": "1.2.3.4"}, headers=api.headers(),
                       timeout=30).json()["error"]["field"] == "ip"
    assert api.s.patch(f"{api.base}/jobs/{job_id}/evms/{a['id']}", json={"vpc": "x"}, timeout=30).status_code == 401

    # CREATE more, on one EPM, with their own label.
    r = api.post(f"/jobs/{job_id}/evms", json={"distribution": {"kind": "manual", "counts": {"e1": 4}},
                                               "tenant": "t-2", "rate": "sequential"})
    assert r.status_code == 202, r.text
    assert r.json()["counts"] == {"e1": 4} and r.json()["batch"] == "b1"
    wait_ready(api, job_id, 16)
    added = all_evms(api, job_id, epm="e1")
    assert sum(1 for e in added if e["tenant"] == "t-2") == 4

    # DELETE some: the newest three of e1.
    r = api.delete(f"/jobs/{job_id}/evms?count=3&epm=e1")
    assert r.status_code == 202 and r.json()["requested"] == 3, r.text
    wait_ready(api, job_id, 13)
    e1 = job["tasks"]["e1"]["container_name"]
    wait_for("e1 to hold 7 namespaces", lambda: len(netns_in(e1)) == 7, 60)
    # The kernel first, then the agent's reports through the Worker and Discovery into the records
    gone = wait_for("the 3 records DELETED", lambda: len(g := all_evms(api, job_id, state="DELETED")) == 3 and g, 60)
    assert sorted(int(e["id"].rsplit(".v", 1)[1]) for e in gone) == [14, 15, 16]
    assert api.s.patch(f"{api.base}/jobs/{job_id}/evms/{gone[0]['id']}", json={"vpc": "x"}, headers=api.headers(),
                       timeout=30).status_code == 409

    # Deleting the job leaves nothing: containers (and their namespaces) gone, records closed, directories gone.
    assert api.delete(f"/jobs/{job_id}").status_code == 202
    api.wait_state(job_id, "CANCELLED", timeout=90)
    wait_for("the EPM containers to be removed", lambda: not containers_of(TEST_CLUSTER, job_id), 60)
    wait_for("every EVM record DELETED", lambda: summary(api, job_id)["by_state"]["DELETED"] == 16, 60)
    epm_dirs = list((system.run_path / "epm").glob(f"rsw-{job_id}-*"))
    assert epm_dirs == []


def test_an_epms_desired_file_follows_its_recorded_states_through_its_report_count(api: Api, store, system) -> None:
    """The Worker rewrites an EPM's desired file when Discovery applies its agent's reports (``evm_jobs.seen``
    moves), not on a timer: the test system's periodic refresh (``worker.evm_refresh_seconds``) is an hour.
    Deleted EVMs are the case that shows it: the deletion request rewrites the file (the set's generation),
    but only the agent's DELETED reports, once applied, can take those EVMs out of it. The file's VPC part
    (the EPM's overlay address, re-read every few seconds) is waited for first, so that no change of it can
    rewrite the file meanwhile."""
    job_id = api.submit(evm_job({"count": 4, "subnet": "10.84.0.0/24", "devices": "lean"}, tasks=1, name="evm-seen"))
    wait_ready(api, job_id, 4)
    desired = system.run_path / "epm" / api.job(job_id)["tasks"]["e0"]["container_name"] / "desired.json"
    ip = api.job(job_id)["tasks"]["e0"]["ip"]
    wait_for("the file to carry the EPM's overlay address", lambda: json.loads(desired.read_text())["local_ip"] == ip,
             60)
    r = api.delete(f"/jobs/{job_id}/evms?count=2")
    assert r.status_code == 202 and r.json()["requested"] == 2, r.text
    wait_for("2 records DELETED", lambda: len(all_evms(api, job_id, state="DELETED")) == 2, 60)
    live = sorted(int(e["id"].rsplit(".v", 1)[1]) for e in all_evms(api, job_id, state="READY"))

    def rows() -> list[tuple[int, str, bool]]:  # (EVM number, recorded state, delete requested)
        return sorted((row[0], row[4], row[5]) for row in json.loads(desired.read_text())["evms"])

    wait_for("the desired file to hold only the 2 live EVMs", lambda: rows() == [(n, "READY", False) for n in live],
             120)
    assert store.evms.meta.find_one({"_id": job_id})["seen"]["e0"] >= 2
    assert api.delete(f"/jobs/{job_id}").status_code == 202
    api.wait_state(job_id, "CANCELLED", timeout=90)


EVM_VIEW = r"""
import ctypes, json, os
from pyroute2 import IPRoute
libc = ctypes.CDLL(None, use_errno=True)
home = os.open('/proc/self/ns/net', os.O_RDONLY)
NS = os.environ['RSWARM_NETNS']
out = {}
with IPRoute() as ipr:
    out['epm'] = sorted(l.get_attr('IFLA_IFNAME') for l in ipr.get_links())
for name in sorted(os.listdir(NS)):
    fd = os.open(os.path.join(NS, name), os.O_RDONLY)
    assert libc.setns(fd, 0x40000000) == 0
    os.close(fd)
    with IPRoute() as ipr:
        eth0 = ipr.link('get', ifname='eth0')[0]
        out[name] = [eth0.get_attr('IFLA_ADDRESS'), [a.get_attr('IFA_ADDRESS') for a in ipr.get_addr(family=2)
                                                    if a['index'] == eth0['index']]]
    assert libc.setns(home, 0x40000000) == 0
print(json.dumps(out))
"""
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21


def test_an_epm_naming_its_own_image_gets_its_evms_in_the_kernel_and_holds_no_network_privilege(api: Api) -> None:
    command = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
    job_id = api.submit(evm_job({"count": 5, "subnet": "10.89.0.0/24", "devices": "full"}, tasks=1,
                                image="rswarm/task:1", command=command))
    wait_ready(api, job_id, 5)
    container = api.job(job_id)["tasks"]["e0"]["container_name"]
    attrs = docker_client().api.inspect_container(container)
    assert attrs["Config"]["Image"] == "rswarm/task:1" and attrs["Config"]["Cmd"] == command
    host = attrs["HostConfig"]
    assert not host.get("CapAdd") and not host.get("Devices") and not host.get("Binds") and not host["Privileged"]
    status = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{attrs['State']['Pid']}/status").read_text().splitlines() if ":\t" in line)
    caps = int(status["CapEff"], 16)
    assert not caps & (1 << CAP_NET_ADMIN) and not caps & (1 << CAP_SYS_ADMIN)

    # Its EVMs, read from the kernel: namespaces mounted by the node agent, each with the recorded MAC and
    # address on eth0, and their devices in the container's own network namespace.
    evms = {f"rswevm-{int(e['id'].rsplit('.v', 1)[1])}": e for e in all_evms(api, job_id)}
    assert netns_in(container) == sorted(evms)
    view = json.loads(py_in_epm(container, EVM_VIEW))
    for name, e in evms.items():
        assert view[name] == [e["mac"], [e["ip"]]]
        seq = name.removeprefix("rswevm-")
        assert {f"rswv{seq}", f"rswt{seq}", f"rswb{seq}"} <= set(view["epm"])
    api.delete(f"/jobs/{job_id}")
    wait_for("the EPM to be removed", lambda: not containers_of(TEST_CLUSTER, job_id), 60)
    wait_for("its EVM namespaces unmounted", lambda: netns_in(container) == [], 30)


def test_distributions_match_their_definition(api: Api, store) -> None:
    cases = [
        ({"kind": "manual", "counts": {"e0": 1, "e1": 6}}, None),
        ({"kind": "uniform"}, None),
        ({"kind": "random", "seed": 11}, evmspec.Distribution("random", seed=11)),
        ({"kind": "skew", "s": 1.5, "seed": 4}, evmspec.Distribution("skew", seed=4, s=1.5)),
    ]
    for dist, definition in cases:
        body = evm_job({"count": 7, "subnet": "10.82.0.0/24", "distribution": dist}, name=f"dist-{dist['kind']}")
        job_id = api.submit(body)
        counts = {e: c["PENDING"] + c["DEPLOYING"] + c["READY"] for e, c in summary(api, job_id)["by_epm"].items()}
        if dist["kind"] == "manual":
            assert counts == {"e0": 1, "e1": 6}
        elif dist["kind"] == "uniform":
            assert sorted(counts.values()) == [3, 4]
        else:
            assert definition is not None
            assert {e: n for e, n in counts.items() if n} == {
                e: n for e, n in evmspec.distribute(7, ["e0", "e1"], definition).items() if n}
        stored = store.jobs.get(job_id)["evms"]
        assert stored["distribution"]["kind"] == dist["kind"] and sum(stored["counts"].values()) == 7
        api.delete(f"/jobs/{job_id}")
        api.wait_state(job_id, {"CANCELLED", "COMPLETED", "FAILED"}, timeout=90)


INVALID = [
    ({"count": 300, "subnet": "10.83.0.0/24"}, "job_info.evms.count"),
    ({"count": 3, "subnet": "10.83.0.0/24", "gateway": "10.84.0.1"}, "job_info.evms.gateway"),
    ({"count": 3, "subnet": "10.83.0.0/24", "rate": {"kind": "rps", "rps": 0}}, "job_info.evms.rate.rps"),
    ({"count": 3, "subnet": "10.83.0.0/24", "distribution": {"kind": "manual", "counts": {"e0": 1}}},
     "job_info.evms.distribution.counts"),
    ({"count": 2000, "subnet": "10.83.0.0/16", "devices": "lean", "distribution": {"kind": "manual",
                                                                                   "counts": {"e0": 2000}}},
     "job_info.evms.devices"),
]


@pytest.mark.parametrize(("evms", "field"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_specs_are_refused_with_nothing_created(api: Api, store, evms: dict[str, Any], field: str) -> None:
    jobs_before = store.db["jobs"].count_documents({})
    evms_before = store.db["evms"].count_documents({})
    r = api.post("/jobs", json=evm_job(evms))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == field
    assert store.db["jobs"].count_documents({}) == jobs_before
    assert store.db["evms"].count_documents({}) == evms_before


def test_memory_too_small_for_the_evms_is_refused_with_the_reason(api: Api) -> None:
    r = api.post("/jobs", json=evm_job({"count": 1000, "subnet": "10.83.0.0/16"}, tasks=1, mem_limit="64m"))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["field"] == "job_info.tasks.e0.mem_limit" and "too small for 1000 EVMs" in err["message"]


def test_adding_evms_is_refused_when_there_is_no_room(api: Api, store) -> None:
    assert api.post("/jobs/job-nope/evms", json={"count": 1}).status_code == 404
    plain = api.submit({"job_info": {"tasks": {"t": {"image": "rswarm/task:1", "command": ["sleep", "30"],
                                                      "req_cores": 1, "mem_limit": "16m"}}}})
    r = api.post(f"/jobs/{plain}/evms", json={"count": 1})
    assert r.status_code == 409 and "no EPMs" in r.json()["error"]["message"]
    api.delete(f"/jobs/{plain}")

    job_id = api.submit(evm_job({"count": 5, "subnet": "10.85.0.0/29"}, tasks=1))  # a /29 holds 5 EVMs
    assert api.post(f"/jobs/{job_id}/evms", json={"count": 1}, auth=False).status_code == 401
    r = api.post(f"/jobs/{job_id}/evms", json={"count": 1})
    assert r.status_code == 409 and r.json()["error"]["field"] == "count" and "free addresses" in r.text
    r = api.post(f"/jobs/{job_id}/evms", json={"count": 1, "rate": {"kind": "rps", "rps": -1}})
    assert r.status_code == 400 and r.json()["error"]["field"] == "rate.rps"
    assert api.delete(f"/jobs/{job_id}/evms?count=2").status_code == 202
    r = api.post(f"/jobs/{job_id}/evms", json={"count": 2})  # their addresses are free again
    assert r.status_code == 202, r.text
    assert summary(api, job_id)["wanted"] == 5
    api.delete(f"/jobs/{job_id}")


def test_rps_rate_is_never_exceeded_through_the_system(api: Api) -> None:
    rps = 20.0
    job_id = api.submit(evm_job({"count": 50, "subnet": "10.86.0.0/24", "devices": "lean",
                                 "rate": {"kind": "rps", "rps": rps}}, tasks=1))
    wait_ready(api, job_id, 50)
    starts = sorted(e["times"]["READY"] - e["create_ms"] / 1000 for e in all_evms(api, job_id))  # creation starts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.9 / rps
    achieved = (len(starts) - 1) / (starts[-1] - starts[0])
    # The pacer's promise is a ceiling: never faster than the rate. How close a loaded machine gets to it is
    # a speed, measured by bench/evms.py, not asserted here.
    assert achieved <= rps * 1.1
    api.delete(f"/jobs/{job_id}")


def test_an_agent_killed_mid_creation_converges_through_the_system(api: Api) -> None:
    n = 200
    job_id = api.submit(evm_job({"count": n, "subnet": "10.87.0.0/22", "rate": {"kind": "rps", "rps": 60}}, tasks=1))
    wait_for("30 EVMs READY", lambda: summary(api, job_id)["ready"] >= 30, 120)
    container = api.job(job_id)["tasks"]["e0"]["container_name"]
    pids = node_agents()
    assert len(pids) == 1
    os.kill(pids[0], 9)
    s = wait_ready(api, job_id, n)
    assert s["by_state"]["ERROR"] == 0
    assert len(netns_in(container)) == n
    assert api.job(job_id)["state"] == "RUNNING"
    api.delete(f"/jobs/{job_id}")


def test_worker_and_discovery_killed_during_creation_lose_nothing(api: Api, system) -> None:
    job_id = api.submit(evm_job({"count": 120, "subnet": "10.88.0.0/24", "devices": "lean",
                                 "rate": {"kind": "rps", "rps": 40}}, tasks=1))
    wait_for("20 EVMs READY", lambda: summary(api, job_id)["ready"] >= 20, 120)
    procs = Management.Processes(system)
    for actor in ("worker", "discovery"):
        pid = procs.alive(actor)
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        wait_for(f"{actor} to be restarted by its supervisor", lambda a=actor, p=pid: procs.alive(a) not in (None, p),
                 60)
    wait_for("the agent to go on without them", lambda: len(netns_in(api.job(job_id)["tasks"]["e0"]["container_name"]))
             >= 60, 60)
    wait_ready(api, job_id, 120)  # reports lost meanwhile are repeated once the records show the lag
    r = api.post(f"/jobs/{job_id}/evms", json={"count": 5})
    assert r.status_code == 202, r.text
    wait_ready(api, job_id, 125)
    api.delete(f"/jobs/{job_id}")
    wait_for("the EPM to be removed", lambda: not containers_of(TEST_CLUSTER, job_id), 60)
    wait_for("every EVM record DELETED", lambda: summary(api, job_id)["by_state"]["DELETED"] == 125, 60)
