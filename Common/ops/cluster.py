"""What Management.py does for an emulated cluster and for remote Worker hosts.

A deployment is in *cluster mode* when its run directory holds ``cluster/cluster.json`` (made by
``cluster up``) or when ``up --inventory FILE`` names remote hosts. Then the control plane listens on an
address the hosts can reach (the emulated cluster's bridge), the GlobalManager drives the cluster's
manager engine, and the Workers run on the hosts, started over SSH.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from Common.config import REPO_ROOT, Config
from Common.keys import key_file_text
from Common.ops import emulated, inventory
from Common.ops.remote import Inventory, RemoteError, RemoteHost, Session, load_inventory, write_inventory
from Common.ops.remote import start_worker as remote_start
from Common.ops.remote import stop_worker as remote_stop
from Common.ops.remote import worker_status as remote_status
from Common.ops.supervise import ALIVE_STATES, Supervisor
from Common.store.credentials import read_credentials, strip_credentials, uri_credentials


def cluster_dir(cfg: Config) -> Path:
    return cfg.run_path / "cluster"


def load_spec(cfg: Config) -> emulated.ClusterSpec | None:
    return emulated.ClusterSpec.load(cluster_dir(cfg) / "cluster.json")


def inventory_path(cfg: Config, given: str | None = None) -> Path | None:
    if given:
        return Path(given)
    p = cluster_dir(cfg) / "inventory.toml"
    if p.exists():
        return p
    recorded = (inventory.load_deployment(cfg) or {}).get("inventory")  # what `up --inventory` used
    return Path(recorded) if recorded and Path(recorded).exists() else None


def apply_cluster_mode(cfg: Config) -> bool:
    """Point the control plane at the emulated cluster, if there is one, or at the addresses `up --inventory`
    recorded. True when there is either."""
    spec = load_spec(cfg)
    if spec is None:
        rec = inventory.load_deployment(cfg)
        if rec and rec.get("control_address"):
            inventory.apply_control_address(cfg, rec["manager_address"], rec["control_address"])
            return True
        return False
    bridge = spec.bridge_address
    cfg.mongo.embedded_host = bridge
    cfg.discovery.host = bridge
    cfg.globalmanager.pub_host = bridge
    cfg.globalmanager.docker_url = spec.manager.docker_url
    cfg.globalmanager.advertise_addr = spec.manager.address
    return True


def control_env(cfg: Config) -> dict[str, str]:
    """What a remote Worker needs to find the control plane (its node key is shipped as a file)."""
    return {
        "MONGO_URI": strip_credentials(cfg.mongo_uri),  # the password goes as a 0600 file, never in argv
        "RSWARM_MONGO_DATABASE": cfg.mongo.database,
        "RSWARM_DISCOVERY_HOST": cfg.discovery.host,
        "RSWARM_DISCOVERY_PORT": str(cfg.discovery.port),
        "RSWARM_GLOBALMANAGER_PUB_HOST": cfg.globalmanager.pub_host,
        "RSWARM_GLOBALMANAGER_PUB_PORT": str(cfg.globalmanager.pub_port),
        "RSWARM_CLUSTER_ID": cfg.cluster(),
        "RSWARM_WORKER_HEARTBEAT_SECONDS": str(cfg.worker.heartbeat_seconds),
        "RSWARM_WORKER_SWEEP_SECONDS": str(cfg.worker.sweep_seconds),
        "RSWARM_ZMQ_MAX_FRAME_BYTES": str(cfg.zmq.max_frame_bytes),
        "RSWARM_ZMQ_REPLAY_WINDOW_SECONDS": str(cfg.zmq.replay_window_seconds),
        "RSWARM_STORAGE_CHECKPOINT_QUOTA_BYTES": str(cfg.storage.checkpoint_quota_bytes),
    }


# ---- cluster up / down / status -----------------------------------------------------------------
def cluster_up(cfg: Config, workers: int, tag: str, subnet: str, cores: str, memory: str,
               experimental: bool, images: list[str], say=print) -> emulated.ClusterSpec:
    """Build the emulated hosts and load ``images`` (local image names, already built) into each."""
    cdir = cluster_dir(cfg)
    existing = load_spec(cfg)
    if existing is not None and _healthy(existing):
        if len(existing.workers) != workers or existing.tag != tag:
            raise emulated.ClusterError(f"a cluster {existing.tag} of {len(existing.workers)} workers is up; "
                                        "run `cluster down` first")
        say(f"cluster {tag} is already up")
        return existing
    spec = emulated.plan(tag, subnet, workers, cores, memory)
    leftovers = emulated.remove(tag)
    if leftovers:
        say(f"removed leftovers of an earlier run: {', '.join(leftovers)}")
    cdir.mkdir(parents=True, exist_ok=True)
    key = cdir / "id_ed25519"
    if not key.exists():
        emulated.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"rswarm-{tag}", "-f", str(key)])
    t0 = time.monotonic()
    say(f"starting {workers + 1} emulated hosts on {spec.bridge} ({spec.subnet})")
    emulated.up(spec, (cdir / "id_ed25519.pub").read_text(), images,
                experimental)
    spec.created_at = time.time()
    spec.experimental = experimental
    spec.save(cdir / "cluster.json")
    known = cdir / "known_hosts"
    # These host keys were generated by us a moment ago, so they are trusted by construction.
    known.write_text("".join(f"{h.address} ssh-ed25519 {emulated.host_public_key(h)}\n" for h in spec.workers))
    inv = Inventory(known_hosts=str(known), hosts=[
        RemoteHost(name=h.name, address=h.address, user="root", key=str(key), repo=str(REPO_ROOT),
                   run_dir=str(Path(h.data_dir) / "worker-run"), docker_url=h.docker_url, cores=h.cores,
                   memory=h.memory) for h in spec.workers])
    write_inventory(cdir / "inventory.toml", inv)
    say(f"cluster {tag} up in {time.monotonic() - t0:.1f}s: manager {spec.manager.address}, "
        f"workers {', '.join(h.address for h in spec.workers)}")
    return spec


def _healthy(spec: emulated.ClusterSpec) -> bool:
    return all(Path(f"/run/netns/{h.netns}").exists() and emulated.docker_answers(h) for h in spec.hosts)


def end_jobs_on(store: Any, names: list[str]) -> list[str]:
    """`cluster down` takes these nodes, and every container on them, away for good: each unfinished job with
    a task there ends now, with a reason, and gives its claims back (before, a job whose containers were gone
    held its cores in the next cluster built under the same names, or was restarted or failed there
    depending on who looked first: issue 11). Its tasks there are recorded LOST; the job ends FAILED, or
    CANCELLED when a user had asked for that. Returns the ids of the jobs ended."""
    from Common.states import TASK_TERMINAL
    from Common.store.workers import alloc_key

    ended: list[str] = []
    for name in names:
        reason = f"node {name} was taken away (cluster down) with its containers"
        for job in store.jobs.active_on(name):
            job_id = job["_id"]
            if not job.get("cancel_requested"):
                store.jobs.request_cancel(job_id, reason)  # its tasks on other nodes are stopped too
            store.jobs.lose_tasks_on(job_id, name, reason)
            doc = store.jobs.get(job_id) or {"tasks": {}}
            for task, t in doc["tasks"].items():
                if t.get("node") == name and t["state"] in {s.value for s in TASK_TERMINAL} and t.get("claim_token"):
                    store.workers.release(name, alloc_key(job_id, task), t["claim_token"])
            store.jobs.cancel_unplaced(job_id, reason)
            store.jobs.refresh_state(job_id)
            ended.append(job_id)
    return ended


def cluster_down(cfg: Config, say=print) -> None:
    spec = load_spec(cfg)
    tag = spec.tag if spec else None
    if tag is None:
        say("no cluster recorded in this run directory")
        return
    removed = emulated.remove(tag, spec)
    for f in ("cluster.json", "inventory.toml", "known_hosts", "id_ed25519", "id_ed25519.pub"):
        (cluster_dir(cfg) / f).unlink(missing_ok=True)
    say(f"cluster {tag} removed: {', '.join(removed) or 'nothing was left'}")


def cluster_status(cfg: Config) -> dict[str, Any]:
    spec = load_spec(cfg)
    if spec is None:
        return {"cluster": None}
    nodes = {n.get("Hostname"): n for n in emulated.swarm_nodes(spec)}
    hosts = []
    for h in spec.hosts:
        sshd = emulated.sshd_answers(h) if h.role == "worker" else None
        hosts.append({"name": h.name, "role": h.role, "address": h.address, "netns": Path(f"/run/netns/{h.netns}")
                      .exists(), "docker": emulated.docker_answers(h), "sshd": sshd,
                      "swarm": (nodes.get(h.name) or {}).get("Status"),
                      "availability": (nodes.get(h.name) or {}).get("Availability"),
                      "worker_pid": _local_worker_pid(h) if h.role == "worker" else None})
    return {"cluster": spec.tag, "subnet": spec.subnet, "bridge": spec.bridge, "created_at": spec.created_at,
            "hosts": hosts}


def _local_worker_pid(h: emulated.Host) -> int | None:
    """The emulated hosts share this filesystem: ask the host's supervisord over its unix socket directly."""
    return Supervisor(Path(h.data_dir) / "worker-run").pid("worker")


# ---- remote Workers -----------------------------------------------------------------------------
def sessions(inv: Inventory, names: list[str] | None = None):
    for h in inv.hosts:
        if names and h.name not in names:
            continue
        yield h


def start_workers(cfg: Config, inv: Inventory, names: list[str] | None = None, say=print) -> dict[str, int]:
    pids = {}
    for h in sessions(inv, names):
        with Session(h, Path(inv.known_hosts)) as s:
            pids[h.name] = remote_start(s, key_file_text(cfg.token(), h.name), control_env(cfg),
                                        worker_credentials(cfg))
            say(f"Worker on {h.name} ({h.address}): pid {pids[h.name]}")
    return pids


def worker_credentials(cfg: Config) -> dict[str, str] | None:
    """What a remote Worker authenticates with: the worker role's (embedded server), or the user of MONGO_URI."""
    return uri_credentials(cfg.mongo_uri) or read_credentials(cfg, "worker")


def stop_workers(inv: Inventory, names: list[str] | None = None, say=print) -> None:
    for h in sessions(inv, names):
        try:
            with Session(h, Path(inv.known_hosts)) as s:
                if remote_stop(s):
                    say(f"stopped the Worker on {h.name}")
        except RemoteError as exc:
            say(f"{h.name}: {exc}")


def workers_status(inv: Inventory, names: list[str] | None = None) -> list[dict[str, Any]]:
    out = []
    for h in sessions(inv, names):
        entry: dict[str, Any] = {"name": h.name, "address": h.address}
        try:
            with Session(h, Path(inv.known_hosts)) as s:
                w = remote_status(s)  # supervisord's view on that host
                entry.update(reachable=True, worker_pid=w["pid"] if w and w["state"] in ALIVE_STATES else None,
                             worker_state=w["state"] if w else None, worker_restarts=w["restarts"] if w else None,
                             worker_uptime=w["uptime"] if w else None)
        except RemoteError as exc:
            entry.update(reachable=False, error=str(exc))
        out.append(entry)
    return out


def worker_logs(inv: Inventory, name: str, lines: int = 200) -> str:
    h = inv.get(name)
    with Session(h, Path(inv.known_hosts)) as s:
        return "\n".join(s.get_text(f"{h.run_dir}/logs/worker.log").splitlines()[-lines:])


def ship(inv: Inventory, names: list[str] | None, say=print) -> None:
    """Copy the tracked source files to each host's repo directory (file by file over SFTP)."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    files = [f for f in files if f and (REPO_ROOT / f).is_file()]
    for h in sessions(inv, names):
        if Path(h.repo).resolve() == REPO_ROOT and h.address in _local_addresses():
            say(f"{h.name}: shares this checkout; nothing to ship")
            continue
        with Session(h, Path(inv.known_hosts)) as s:
            s.check(["mkdir", "-p", h.repo])
            n = s.ship(REPO_ROOT, files, h.repo)
            say(f"{h.name}: shipped {n} files to {h.repo}; run `bash dependences.sh Worker` there once")


def _local_addresses() -> set[str]:
    return {"127.0.0.1", "localhost"}


def remove_cluster_workloads(cfg: Config, spec: emulated.ClusterSpec) -> None:
    label = f"label=rswarm.cluster={cfg.cluster()}"
    for h in spec.hosts:
        ids = emulated.run(["docker", "-H", h.docker_url, "ps", "-aq", "--filter", label], check=False).stdout.split()
        if ids:
            emulated.run(["docker", "-H", h.docker_url, "rm", "-f", *ids], check=False)
    nets = emulated.run(["docker", "-H", spec.manager.docker_url, "network", "ls", "-q", "--filter", label],
                        check=False).stdout.split()
    if nets:
        emulated.run(["docker", "-H", spec.manager.docker_url, "network", "rm", *nets], check=False)


def load_inv(cfg: Config, given: str | None) -> Inventory | None:
    path = inventory_path(cfg, given)
    return load_inventory(path) if path else None
