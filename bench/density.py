"""EPM density and start rate on the emulated cluster (issue 14, target 1 and the first half of target 2).

    python -m bench.density [--workers 4] [--jobs 100] [--per-job 10] [--parallel 8] [--no-baseline]
                            [--baseline-first] [--no-evms]

Brings up an emulated cluster (``Management.py cluster up``: W worker hosts, each declaring enough
logical cores for its share of the EPMs; logical core i runs on physical core i mod 2) with the system
on it, then:

1. **Start rate.** Submits ``jobs`` jobs of ``per-job`` EPMs (1 core and 48m each, one lean EVM per EPM) as fast
   as the API takes them, and times the first submission -> every task RUNNING (and -> every EVM READY).
2. **Density.** Once all are running and their EVMs ready, waits for the machine to settle and takes the
   drop of MemAvailable from just before the first submission, divided by the number of EPMs. That is
   everything an EPM costs: its container, the runtime shim, its share of the node agents and Workers
   (their resident memory is shown separately).
3. **Baseline, same run.** With the EPMs still there (idle), Docker alone does the same container work on the same
   engines: per job an attachable overlay on the manager, then its containers (the EPM's image and
   command, pinned, the same memory limit) created and started on the engines of the nodes the system
   chose for them, ``--parallel`` containers in flight. EPMs/s of the system / containers/s of Docker
   alone is the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cpu_by_process  # noqa: E402
from Common.config import load as load_config  # noqa: E402
from Common.ops.cluster import apply_cluster_mode  # noqa: E402
from Common.ops.emulated import SOCK_ROOT  # noqa: E402
from Common.ops.emulated import remove as remove_hosts  # noqa: E402
from Common.store import Store  # noqa: E402
from Worker.evms import DEFAULT_COMMAND, DEFAULT_IMAGE  # noqa: E402

TAG = "dens"
# Each EPM's memory claim: above the 40 MiB + 176 KiB the FrontEnd asks for one lean EVM, below the 128m a task
# gets by default (with which a 24 GB node is fully claimed at 188 EPMs).
EPM_MEMORY = "48m"
EPM_MEMORY_BYTES = 48 * 2**20
START_TRIES = 6  # Docker alone: starts of one container before giving up on a timed-out network attachment


def _env(run_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSWARM_") and k != "MONGO_URI"}
    env.update({"RSWARM_RUN_DIR": run_dir, "RSWARM_CLUSTER_ID": "rswbenchd", "RSWARM_FRONTEND_PORT": "19701",
                "RSWARM_GLOBALMANAGER_PORT": "19700", "RSWARM_GLOBALMANAGER_PUB_PORT": "19757",
                "RSWARM_JOBMANAGER_HINT_PORT": "19755", "RSWARM_DISCOVERY_PORT": "19756",
                "RSWARM_MONGO_EMBEDDED_PORT": "29701", "RSWARM_GLOBALMANAGER_NETWORK_POOL": "10.249.0.0/16",
                "RSWARM_GLOBALMANAGER_METRICS_PORT": "19710", "RSWARM_JOBMANAGER_METRICS_PORT": "19711",
                "RSWARM_DISCOVERY_METRICS_PORT": "19712", "RSWARM_WORKER_METRICS_PORT": "0"})
    return env


def _mgmt(args: list[str], env: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "Management.py"), *args], env=env, capture_output=True, text=True,
                       timeout=1200, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"Management.py {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _netns_inodes() -> set[int]:
    return {os.stat(p).st_ino for p in Path("/run/netns").glob(f"rswc-{TAG}-w*")}


def rss_in_hosts(match: bytes | None = None) -> tuple[int, int]:
    """(processes, total resident bytes) of the processes in this cluster's worker hosts' network
    namespaces (dockerd, containerd, the runtime shims, the Workers, the node agents), or only those whose
    argv holds ``match``. Other sessions' processes on the machine are not counted."""
    inodes = _netns_inodes()
    n = total = 0
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if os.stat(p / "ns" / "net").st_ino not in inodes:
                continue
            if match is not None and match not in (p / "cmdline").read_bytes():
                continue
            for line in (p / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    n += 1
        except OSError:
            continue
    return n, total


def wait(check: Any, what: str, timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


class Api:
    def __init__(self, env: dict[str, str]) -> None:
        self.base = f"http://127.0.0.1:{env['RSWARM_FRONTEND_PORT']}/api/v1"
        self.s = requests.Session()
        self.s.headers["Authorization"] = "Bearer " + (Path(env["RSWARM_RUN_DIR"]) / "api_token").read_text().strip()

    def get(self, path: str, **kw: Any) -> Any:
        r = self.s.get(self.base + path, timeout=60, **kw)
        r.raise_for_status()
        return r.json()

    def submit(self, body: dict[str, Any]) -> str:
        for _ in range(600):  # a refused submission (429/503 under load) is tried again
            r = self.s.post(self.base + "/jobs", json=body, timeout=60)
            if r.status_code in (200, 201, 202):
                return r.json()["id"]
            if r.status_code not in (429, 503):
                raise SystemExit(f"submission refused: {r.status_code} {r.text}")
            time.sleep(0.5)
        raise SystemExit("submissions kept being refused")


def rates_by_tenth(times: list[float]) -> list[float | None]:
    """Starts per second within each tenth of them, from their times since the first submission: a rate
    that falls as the count grows shows here."""
    ts, n = sorted(times), len(times)
    ends = [ts[min(n - 1, (n * k) // 10 - 1)] for k in range(1, 11)]
    return [round((n / 10) / (b - a), 2) if b > a else None for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]


def system_run(api: Api, store: Store, jobs: int, per_job: int, evms: bool = True) -> dict[str, Any]:
    """Submit the jobs, then poll until every task is RUNNING: a count of the jobs by state in
    MongoDB every 2 s (reading the whole job list every 2 s made the benchmark itself a tenth of the embedded
    MongoDB's work at 1,000 EPMs), then the job list once for the times. Times are the system's own: the
    first submission's wall clock to the latest task's RUNNING time (``state_times``)."""
    ids: list[str] = []
    t0_wall, t0 = time.time(), time.monotonic()
    for i in range(jobs):
        if evms:
            info = {"evms": {"count": per_job, "subnet": "10.70.0.0/24", "devices": "lean"},
                    "tasks": {f"e{k}": {"req_cores": 1, "mem_limit": EPM_MEMORY} for k in range(per_job)}}
        else:  # the same containers as plain tasks: no EVM agent work, to tell its cost from the rest
            info = {"tasks": {f"e{k}": {"req_cores": 1, "mem_limit": EPM_MEMORY, "image": DEFAULT_IMAGE,
                                        "command": DEFAULT_COMMAND} for k in range(per_job)}}
        ids.append(api.submit({"job_name": f"dens{i}", "job_info": info}))
    submitted = time.monotonic() - t0
    n = jobs * per_job
    views: dict[str, dict[str, Any]] = {}

    def all_running() -> bool:
        for job in api.get("/jobs", params={"limit": 500})["items"]:
            if job["id"] not in ids:
                continue
            if job["state"] in ("FAILED", "CANCELLED"):
                raise SystemExit(f"job {job['id']} ended {job['state']}")
            views[job["id"]] = job
        return len(views) == len(ids) and all(t["state"] == "RUNNING" for j in views.values()
                                               for t in j["tasks"].values())

    def all_jobs_running() -> bool:
        by_state = {d["_id"]: d["n"] for d in store.jobs.col.aggregate([
            {"$match": {"_id": {"$in": ids}}}, {"$group": {"_id": "$state", "n": {"$sum": 1}}}])}
        if by_state.get("FAILED") or by_state.get("CANCELLED"):
            raise SystemExit(f"jobs ended: {by_state}")
        return by_state.get("RUNNING", 0) == len(ids)

    wait(all_jobs_running, f"{len(ids)} jobs RUNNING", 3600, every=2.0)
    wait(all_running, f"{n} EPMs RUNNING", 3600, every=2.0)
    running_times = [t["state_times"]["RUNNING"] - t0_wall for j in views.values() for t in j["tasks"].values()]
    running = max(running_times)
    placement = [[views[j]["tasks"][f"e{k}"].get("node") or "" for k in range(per_job)] for j in ids]
    state: dict[str, Any] = {"ready": set()}

    def all_ready() -> bool:
        for j in ids:
            if j not in state["ready"]:
                s = api.get(f"/jobs/{j}/evms/summary")
                if s["errors"]:
                    raise SystemExit(f"job {j}: EVM errors {s['errors']}")
                if s["ready"] == s["wanted"] == per_job:
                    state["ready"].add(j)
        return len(state["ready"]) == len(ids)

    if evms:
        wait(all_ready, f"{n} EVMs READY", 1800, every=2.0)
    ready = time.monotonic() - t0
    return {"ids": ids, "placement": placement, "epms": n, "submit_s": submitted,
            "first_submit_to_all_running_s": running, "first_submit_to_all_evms_ready_s": ready,
            "epms_per_s": n / running, "epms_per_s_by_tenth": rates_by_tenth(running_times),
            "stages": stages([t for j in views.values() for t in j["tasks"].values()])}


STAGES = (("PENDING", "SCHEDULED"), ("SCHEDULED", "STARTING"), ("STARTING", "RUNNING"))


def stages(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Where each task's time went, from its own state times: placement (PENDING -> SCHEDULED), the node's
    Worker creating the container (-> STARTING) and starting it (-> RUNNING); p50 / p90 / max in seconds, and
    per node the RUNNING rate by tenth of its tasks (a stall on one node shows there)."""
    out: dict[str, Any] = {}
    for a, b in STAGES:
        d = sorted(t["state_times"][b] - t["state_times"][a] for t in tasks
                   if a in t["state_times"] and b in t["state_times"])
        if d:
            out[f"{a}->{b}"] = {"p50": round(d[len(d) // 2], 2), "p90": round(d[int(len(d) * 0.9)], 2),
                                "max": round(d[-1], 2)}
    first = min(t["state_times"]["PENDING"] for t in tasks if "PENDING" in t["state_times"])
    by_node: dict[str, list[float]] = {}
    for t in tasks:
        by_node.setdefault(t.get("node") or "", []).append(t["state_times"]["RUNNING"] - first)
    out["running_by_tenth_per_node"] = {node: rates_by_tenth(times) for node, times in sorted(by_node.items())}
    return out


def engines() -> tuple[docker.APIClient, list[tuple[str, docker.APIClient]]]:
    """The manager's engine and each worker host's (by host name, which is the Worker's node name)."""
    root = SOCK_ROOT / TAG
    manager = docker.APIClient(base_url=f"unix://{root}/rswc-{TAG}-m/docker.sock", timeout=300)
    workers = []
    for d in sorted(root.iterdir()):
        if d.name.startswith(f"rswc-{TAG}-w"):
            eng = docker.APIClient(base_url=f"unix://{d / 'docker.sock'}", timeout=300)
            workers.append((eng.info().get("Name", d.name), eng))
    return manager, workers


def docker_alone(placement: list[list[str]], parallel: int, mem: int, remove: bool = False) -> dict[str, Any]:
    """The same containers, started by Docker alone on the nodes the system put them on: per job an
    attachable overlay (made by the first of its containers to need it), then its containers created and
    started, ``parallel`` containers in flight."""
    manager, workers = engines()
    by_node = {name: eng for name, eng in workers}
    lock = threading.Lock()
    job_locks = [threading.Lock() for _ in placement]
    nets: dict[int, str] = {}
    made: list[tuple[docker.APIClient, str]] = []
    done: list[float] = []
    retried: list[int] = []

    def one(item: tuple[int, int]) -> None:
        i, k = item
        with job_locks[i]:
            if i not in nets:
                nets[i] = manager.create_network(f"rswdens-base-{i}", driver="overlay", attachable=True,
                                                 labels={"rswarm.bench": "density"})["Id"]
        node = placement[i][k]
        eng = by_node.get(node) or workers[i % len(workers)][1]
        host = eng.create_host_config(cpuset_cpus=str(k % 2), mem_limit=mem, memswap_limit=mem,
                                      network_mode=f"rswdens-base-{i}", security_opt=["no-new-privileges"])
        c = eng.create_container(DEFAULT_IMAGE, command=DEFAULT_COMMAND, name=f"rswdens-base-{i}-{k}",
                                 host_config=host, labels={"rswarm.bench": "density"}, detach=True)
        for attempt in range(START_TRIES):
            try:
                eng.start(c["Id"])
                break
            except docker.errors.APIError as exc:
                # The Swarm's network attachment timing out on a loaded host is transient; the system's Worker
                # starts the container again too (Worker.engine.StartTimedOut), so Docker alone does the same.
                if "context deadline exceeded" not in str(exc) or attempt == START_TRIES - 1:
                    raise
                with lock:
                    retried.append(i)
                time.sleep(min(2.0 * 2 ** attempt, 30.0))
        with lock:
            made.append((eng, c["Id"]))
            done.append(time.monotonic() - t0)

    # Interleaved across the nodes (the system's Workers start their nodes' EPMs at the same time too):
    # the i-th container of every node, then the (i+1)-th, ...
    per_node: dict[str, list[tuple[int, int]]] = {}
    for i, nodes in enumerate(placement):
        for k, node in enumerate(nodes):
            per_node.setdefault(node, []).append((i, k))
    queues = list(per_node.values())
    items = [q[r] for r in range(max(len(q) for q in queues)) for q in queues if r < len(q)]
    window = cpu_by_process.start()
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, items))
    elapsed = time.monotonic() - t0
    cpu = cpu_by_process.since(window)
    n = len(items)
    out = {"containers": n, "elapsed_s": elapsed, "containers_per_s": n / elapsed, "start_retries": len(retried),
           "containers_per_s_by_tenth": rates_by_tenth(done), "parallel": parallel,
           "placed_as_the_system": sum(1 for i, k in items if placement[i][k] in by_node),
           **cpu}
    if remove:  # run first: its containers and networks go before the system's run (not timed)
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(lambda ec: ec[0].remove_container(ec[1], force=True), made))
        for net in nets.values():
            manager.remove_network(net)
    return out  # otherwise its containers and networks go with the cluster (`cluster down`)


def round_robin(workers: list[str], jobs: int, per_job: int) -> list[list[str]]:
    """Each job on one node, the jobs dealt to the nodes in turn (the system's packing also puts each of
    these jobs on one node, as evenly as its cores allow)."""
    return [[workers[i % len(workers)]] * per_job for i in range(jobs)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--per-job", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=8, help="Docker alone: containers started at a time")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds between all READY and the memory reading")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-evms", action="store_true", help="the same containers as plain tasks, not EPMs")
    ap.add_argument("--baseline-first", action="store_true",
                    help="Docker alone first, on the fresh cluster (each job on one node, in turn), its containers "
                         "then removed; the system's run follows (by default Docker alone runs after it, beside "
                         "the system's idle EPMs, on the nodes the system chose)")
    args = ap.parse_args()
    if not (1 <= args.workers <= 8 and 1 <= args.jobs <= 200 and 1 <= args.per_job <= 20):
        ap.error("--workers 1..8, --jobs 1..200, --per-job 1..20")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the `finally` (cluster down) when stopped
    n = args.jobs * args.per_job
    cores = -(-n // args.workers) + args.per_job  # each worker's share, plus slack for an uneven spread
    with tempfile.TemporaryDirectory(prefix="rswarm-bench-density-") as tmp:
        env = _env(str(Path(tmp) / "run"))
        try:
            _mgmt(["cluster", "up", "--workers", str(args.workers), "--cores", f"0-{cores - 1}", "--tag", TAG,
                   "--subnet", "10.95.0.0/24", "--images", DEFAULT_IMAGE], env)
            api = Api(env)
            time.sleep(10)
            base = None
            if args.baseline_first and not args.no_baseline:
                names = sorted(name for name, _ in engines()[1])
                base = docker_alone(round_robin(names, args.jobs, args.per_job), args.parallel, EPM_MEMORY_BYTES,
                                    remove=True)
                print(json.dumps(base), flush=True)
                time.sleep(10)
            mem0 = mem_available()
            agents0, workers0, hosts0 = (rss_in_hosts(b"Worker.epm.node"), rss_in_hosts(b"-m\x00Worker\x00"),
                                         rss_in_hosts())
            bench_cfg = load_config(env=env)
            apply_cluster_mode(bench_cfg)  # the embedded MongoDB listens on the cluster's bridge
            store = Store.connect(bench_cfg, "bench", role="admin")  # outside the measured window
            window = cpu_by_process.start()
            try:
                res = system_run(api, store, args.jobs, args.per_job, evms=not args.no_evms)
            finally:
                store.close()
            # CPU from the first submission until every task was seen RUNNING (and its EVMs READY)
            res.update(cpu_by_process.since(window))
            print(json.dumps({k: v for k, v in res.items() if k not in ("ids", "placement")}), flush=True)
            nodes = sorted({node for job in res["placement"] for node in job})
            print(json.dumps({"nodes": {node: sum(job.count(node) for job in res["placement"]) for node in nodes},
                              "nodes_per_job_max": max(len(set(job)) for job in res["placement"])}), flush=True)
            idle = cpu_by_process.start()
            time.sleep(args.settle)
            # What the system costs while its EPMs sit idle, per second (polls, status messages, resyncs)
            idle_cpu = cpu_by_process.since(idle)["cpu_s_by_process"]
            print(json.dumps({"idle_cpu_s_per_s_by_process": {k: round(v / args.settle, 3) for k, v in idle_cpu.items()
                                                               if v > 0}}), flush=True)
            drop = mem0 - mem_available()
            agents, workers_rss, hosts = (rss_in_hosts(b"Worker.epm.node"), rss_in_hosts(b"-m\x00Worker\x00"),
                                          rss_in_hosts())
            mem = api.get(f"/jobs/{res['ids'][0]}")["tasks"]["e0"].get("mem_bytes") or EPM_MEMORY_BYTES
            density = {"epms": n, "memavailable_drop_mib": drop / 2**20, "per_epm_mib": drop / n / 2**20,
                       "node_agents": agents[0], "node_agents_rss_mib": agents[1] / 2**20,
                       "node_agents_per_epm_mib": agents[1] / n / 2**20,
                       "node_agents_rss_before_mib": agents0[1] / 2**20,
                       "workers_rss_growth_mib": (workers_rss[1] - workers0[1]) / 2**20,
                       "hosts_processes_before": hosts0[0], "hosts_processes": hosts[0],
                       "hosts_rss_growth_mib": (hosts[1] - hosts0[1]) / 2**20,
                       "hosts_rss_growth_per_epm_mib": (hosts[1] - hosts0[1]) / n / 2**20}
            print(json.dumps(density), flush=True)
            # The EPMs stay (idle) while Docker alone runs: removing 1,000 containers takes the loaded
            # engines longer than the whole measurement; `cluster down` removes everything afterwards.
            if base is None and not args.no_baseline:
                base = docker_alone(res["placement"], args.parallel, int(mem))
                print(json.dumps(base), flush=True)
        finally:
            try:
                _mgmt(["cluster", "down"], env)
            except (SystemExit, subprocess.TimeoutExpired) as exc:  # a loaded engine's `rm -f` timed out
                print(f"cluster down: {exc}; removing the hosts by name", file=sys.stderr)
                for _ in range(5):
                    try:
                        remove_hosts(TAG, None)
                        break
                    except subprocess.TimeoutExpired:
                        continue
    print(f"\nEPMs {n} on {args.workers} workers: first submission -> all RUNNING "
          f"{res['first_submit_to_all_running_s']:.1f} s = {res['epms_per_s']:.2f} EPMs/s "
          f"(-> all EVMs READY {res['first_submit_to_all_evms_ready_s']:.1f} s)")
    if base:
        print(f"Docker alone, same containers, {args.parallel} at a time: {base['containers_per_s']:.2f}/s; "
              f"system / Docker alone = {res['epms_per_s'] / base['containers_per_s']:.2f}")
    print(f"MemAvailable drop {density['memavailable_drop_mib']:.0f} MiB = {density['per_epm_mib']:.2f} MiB per EPM; "
          f"node agents {density['node_agents']} x, {density['node_agents_rss_mib']:.0f} MiB RSS "
          f"({density['node_agents_per_epm_mib']:.3f} MiB per EPM); every process of the worker hosts: "
          f"+{density['hosts_rss_growth_per_epm_mib']:.2f} MiB RSS per EPM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
