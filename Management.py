#!/usr/bin/env python3
"""Management.py: start, stop and inspect a RESTfulSwarm deployment.

    python Management.py up            # dockerd + Swarm if needed, embedded MongoDB, GM, Discovery, JM, FE, Worker
    python Management.py status [--json]
    python Management.py demo          # up, submit a sample workload, follow it to the end
    python Management.py down [--keep-workloads]
    python Management.py stress MODE ...  # the StressClient against this deployment (python -m StressClient)

Every process it starts (the embedded MongoDB and the actors) runs under supervisord, one per run dir
(Common/ops/supervise.py): a crashed process is restarted at once, a crash loop backs off, restarts are
counted (``status``). Logs go to <run_dir>/logs. ``up`` is idempotent: it starts only what is not
running. ``down`` stops supervisord and everything under it, and sweeps up anything left of this run dir.
A dockerd started here (only when none answers) is not supervised; it is recorded in <run_dir>/pids.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from Common.config import REPO_ROOT, Config, ConfigError
from Common.config import load as load_config
from Common.keys import write_key_file
from Common.ops import supervise

ACTORS = ("globalmanager", "discovery", "jobmanager", "frontend", "worker")
MODULES = {"globalmanager": "GlobalManager", "discovery": "Discovery", "jobmanager": "JobManager",
           "frontend": "FrontEnd", "worker": "Worker"}
SUPERVISED = ("mongo", *ACTORS)
DOCKER_SOCK = "/var/run/docker.sock"
# What `up --inventory` loads into every prepared host's engine (EPMs run rswarm/task:1 unless a task names
# its image).
HOST_IMAGES = "rswarm/task:1,rswarm/epm-base:1"
HOLLOW_PER_PROCESS = 2500  # hollow nodes per process (Worker/hollow.py): 10,000 run in 4 processes


class ManagementError(Exception):
    pass


# ---- process records -------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class Processes:
    """What runs: the supervised programs through supervisord, a dockerd we started through its pid record."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pid_dir = cfg.run_path / "pids"
        self.log_dir = cfg.run_path / "logs"
        self.sup = supervise.Supervisor(cfg.run_path)

    def record(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.pid_dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None

    def alive(self, name: str) -> int | None:
        """The pid of ``name`` if it runs (a supervised program being (re)started counts as running)."""
        if name in SUPERVISED:
            return self.sup.pid(name)
        rec = self.record(name)
        if rec is None:
            return None
        pid = rec["pid"]
        if _start_time(pid) != rec["start_time"]:
            return None
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return None
        except OSError:
            return None
        return pid

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        """Start an unsupervised process (dockerd) and record it."""
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        start = None
        for _ in range(100):
            start = _start_time(proc.pid)
            if start is not None:
                break
            time.sleep(0.01)
        rec = {"pid": proc.pid, "start_time": start, "argv": argv, "started_at": time.time()}
        (self.pid_dir / f"{name}.json").write_text(json.dumps(rec))
        return proc.pid

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def failed(self, name: str) -> str | None:
        """Why a supervised program cannot come up by itself (FATAL, or it exited with the actors' config
        error status 2), else None."""
        r = self.sup.info().get(name)
        if r is None:
            return None
        if r["statename"] == "FATAL":
            return f"{name} keeps exiting while starting (FATAL){': ' + r['spawnerr'] if r['spawnerr'] else ''}"
        if r["statename"] in ("BACKOFF", "EXITED") and r["exitstatus"] == 2:
            return f"{name} exited with a configuration error"
        return None

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        """Stop ``name`` and keep it stopped (supervisord does not restart what it was told to stop)."""
        stopped = self.sup.stop(name) if name in SUPERVISED else False
        rec = self.record(name)  # dockerd, or a process recorded by an earlier, unsupervised Management.py
        pid = rec["pid"] if rec and _start_time(rec["pid"]) == rec["start_time"] else None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.alive(name):
                time.sleep(0.1)
            if self.alive(name):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                while self.alive(name):
                    time.sleep(0.05)
        (self.pid_dir / f"{name}.json").unlink(missing_ok=True)
        return stopped or pid is not None


# ---- helpers -------------------------------------------------------------------------------------
def _wait(what: str, check, timeout: float, procs: Processes | None = None, actor: str = "") -> None:
    """Poll ``check`` until true; fail at once (with its log's tail) if ``actor`` has died meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: S110 - anything short of success means "not yet"
            pass
        if procs is not None and actor:
            why = procs.failed(actor) if actor in SUPERVISED else (
                None if procs.alive(actor) else f"{actor} exited while starting")
            if why:
                raise ManagementError(f"{why}:\n{procs.tail(actor)}")
        time.sleep(0.2)
    raise ManagementError(f"timed out after {timeout:.0f}s waiting for {what}")


def _docker_answers() -> bool:
    return subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                          timeout=10).returncode == 0


def _http_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def ensure_token(cfg: Config) -> None:
    if cfg.api_token or cfg.token_file.exists():
        return
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    fd = os.open(cfg.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")


def ensure_cluster_id(cfg: Config) -> None:
    if cfg.cluster_id or cfg.cluster_file.exists():
        return
    cfg.cluster_file.write_text(f"rsw{secrets.token_hex(4)}\n")


def child_env(cfg: Config) -> dict[str, str]:
    from Common.store.credentials import stash_uri_credentials

    env = dict(os.environ)
    env.update(cfg.to_env())
    if cfg.mongo.uri:  # a MONGO_URI's password reaches the children as a 0600 file, not in their environment
        env["MONGO_URI"] = env["RSWARM_MONGO_URI"] = stash_uri_credentials(cfg)
    env["RSWARM_CLUSTER_ID"] = cfg.cluster()
    env["PYTHONPATH"] = str(REPO_ROOT)
    if cfg.api_token:
        env["RSWARM_API_TOKEN"] = cfg.api_token
    return env


_SECRET_MARKS = ("TOKEN", "PASSWORD", "SECRET", "URI")


def program_env(cfg: Config) -> dict[str, str]:
    """The non-secret settings written into supervisord's config for every program (so a changed config
    is seen by ``up``). Anything that may hold a secret (the token, a MONGO_URI with credentials) is left
    out: the programs inherit it from supervisord's environment (``child_env``) instead."""
    env = {**cfg.to_env(), "RSWARM_CLUSTER_ID": cfg.cluster(), "PYTHONPATH": str(REPO_ROOT)}
    return {k: v for k, v in env.items() if not any(m in k.upper() for m in _SECRET_MARKS)}


def mongo_argv(cfg: Config) -> list[str]:
    """The embedded MongoDB's command line (SecantusDB's daemon): the one place it is built."""
    from Common.ops import mongo

    argv = mongo.server_argv(cfg)  # no secret in it: the users live in the data directory
    if not Path(argv[0]).exists():
        raise ManagementError(f"{argv[0]} not found: run ./dependences.sh")
    return argv


def programs(cfg: Config, local_worker: bool) -> list[supervise.Program]:
    """What supervisord of this run dir runs: the embedded MongoDB (unless MONGO_URI), every actor, and the
    local Worker unless the Workers run on other hosts."""
    env = program_env(cfg)
    # MongoDB takes its settings from its argv only: an actor's setting changed does not restart it.
    out = [supervise.Program("mongo", mongo_argv(cfg))] if not cfg.mongo.uri else []
    out += [supervise.Program(a, [sys.executable, "-m", MODULES[a]], env)
            for a in ACTORS if local_worker or a != "worker"]
    return out


def ensure_supervisor(cfg: Config, procs: Processes, env: dict[str, str], local_worker: bool) -> None:
    """Write the config and have supervisord run it (started, or updated if it runs already)."""
    sup = procs.sup
    sup.write_config(sup.render(programs(cfg, local_worker), f"rswarm-{cfg.cluster()}", str(REPO_ROOT)))
    try:
        if sup.answers():
            sup.update()
        else:
            sup.start_daemon(env)
    except supervise.SuperviseError as exc:
        raise ManagementError(str(exc)) from None


# ---- commands ------------------------------------------------------------------------------------
def hollow_names(procs: Processes) -> list[str]:
    """The hollow-host processes this run directory recorded (hollow-0, hollow-1, ...)."""
    return sorted((p.stem for p in procs.pid_dir.glob("hollow-*.json")), key=lambda n: int(n.split("-")[1]))


def start_hollow(cfg: Config, procs: Processes, env: dict[str, str], spec: str, say) -> list[str]:
    """N hollow nodes in ceil(N / HOLLOW_PER_PROCESS) processes; returns every node name."""
    from Worker.hollow import parse_spec

    n, cores, memory = parse_spec(spec)
    nproc = -(-n // HOLLOW_PER_PROCESS)
    names = []
    for k in range(nproc):
        share = n // nproc + (1 if k < n % nproc else 0)
        prefix = f"hollow-{k}-"
        names += [f"{prefix}{i:05d}" for i in range(share)]
        if procs.alive(f"hollow-{k}"):
            continue
        say(f"starting {share} hollow workers ({cores} cores, {memory} each) as {prefix}*")
        procs.start(f"hollow-{k}", [sys.executable, "-m", "Worker", "--hollow", f"{share}:{cores}:{memory}",
                                    "--prefix", prefix], {**env, "RSWARM_WORKER_METRICS_PORT": "0"})
    return names


def up(cfg: Config, with_worker: bool = True, quiet: bool = False, inventory: str | None = None,
       images: str = HOST_IMAGES, hollow: str | None = None) -> None:
    """Start whatever is not running. With an emulated cluster (or an inventory of remote hosts) the
    Workers run on those hosts, started over SSH, instead of one local Worker. Hosts of an inventory
    (not an emulated cluster) are provisioned and joined to the Swarm first (Common/ops/inventory.py)."""
    from Common.ops import cluster
    from Common.ops import inventory as hosts_ops

    say = (lambda *_: None) if quiet else (lambda m: print(m, flush=True))
    cluster.apply_cluster_mode(cfg)
    try:
        inv = cluster.load_inv(cfg, inventory)
    except cluster.RemoteError as exc:
        raise ManagementError(str(exc)) from None
    remote = inv is not None
    prepared = remote and cluster.load_spec(cfg) is None  # hosts the operator prepared, not `cluster up`'s
    if prepared:
        inv_path = cluster.inventory_path(cfg, inventory)
        try:
            manager, control = hosts_ops.resolve_addresses(cfg, inv, str(inv_path))
        except hosts_ops.InventoryError as exc:
            raise ManagementError(str(exc)) from None
        hosts_ops.apply_control_address(cfg, manager, control)
        record = hosts_ops.load_deployment(cfg) or {}
        record.update(inventory=str(Path(inv_path).resolve()), manager_address=manager, control_address=control)
        hosts_ops.save_deployment(cfg, record)
    procs = Processes(cfg)
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    cfg.volume_root.mkdir(parents=True, exist_ok=True)
    ensure_token(cfg)
    ensure_cluster_id(cfg)
    env = child_env(cfg)

    if not _docker_answers():
        if not shutil.which("dockerd"):
            raise ManagementError("no Docker engine answers and dockerd is not installed: run ./dependences.sh")
        say("starting dockerd")
        criu = "/usr/local/lib/rswarm-criu"  # built by dependences.sh; `docker checkpoint` needs it on the PATH
        procs.start("dockerd", ["dockerd", "--experimental", "--host", f"unix://{DOCKER_SOCK}"],
                    {**env, "PATH": f"{criu}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"})
        _wait("dockerd", _docker_answers, 120, procs, "dockerd")

    ensure_supervisor(cfg, procs, env, local_worker=not remote)
    if not cfg.mongo.uri and not procs.alive("mongo"):
        from Common.ops import mongo

        if mongo.auth_on(cfg):
            mongo.provision(cfg)  # users (SCRAM, 0600 credential files), written while the server is stopped
        say(f"starting the embedded MongoDB (SecantusDB) on {cfg.mongo.embedded_host}:{cfg.mongo.embedded_port}"
            f"{' with SCRAM-SHA-256 auth' if mongo.auth_on(cfg) else ''}")
        procs.sup.start("mongo")
    from Common.store import Store
    from Common.store.credentials import redact

    store = Store.connect(cfg, "management")
    _wait(f"MongoDB at {redact(cfg.mongo_uri)}", store.ping, 120, procs, "" if cfg.mongo.uri else "mongo")
    store.ensure_indexes()
    if prepared:
        assert inv is not None
        try:
            hosts_ops.ensure_manager(cfg, manager, inv.swarm_pool, len(inv.hosts), say)
            hosts_ops.bring_up_hosts(cfg, inv, inv.hosts, resolve_images([i for i in images.split(",") if i]), say)
        except cluster.RemoteError as exc:
            raise ManagementError(str(exc)) from None

    started = time.time()
    actors = [a for a in ACTORS if (with_worker and not remote) or a != "worker"]
    if "worker" in actors:  # the local Worker's only credential: its node key (docs/security.md)
        write_key_file(cfg.run_path, cfg.worker_name, cfg.token())
    for actor in actors:
        if procs.alive(actor):
            continue
        say(f"starting {MODULES[actor]}")
        procs.sup.start(actor)
        if actor == "globalmanager":
            _wait("the GlobalManager", lambda: _http_ok(f"{cfg.globalmanager_url}/api/v1/swarm"), 120, procs,
                  "globalmanager")
    _wait("the FrontEnd", lambda: _http_ok(f"{cfg.frontend_url}/api/v1/health"), 120, procs, "frontend")
    if hollow:
        hnames = start_hollow(cfg, procs, env, hollow, say)

        prefixes = sorted({n.rsplit("-", 1)[0] + "-" for n in hnames})

        def hollow_ready() -> bool:
            return store.workers.col.count_documents({"info.prefix": {"$in": prefixes}, "hollow": True,
                                                      "state": "READY"}) == len(hnames)

        _wait(f"{len(hnames)} hollow workers to register", hollow_ready, 120 + len(hnames) / 50, procs,
              "hollow-0")
    if with_worker:
        names = [h.name for h in inv.hosts] if inv is not None else [cfg.worker_name]
        if inv is not None:
            try:
                cluster.start_workers(cfg, inv, say=say)
            except cluster.RemoteError as exc:
                raise ManagementError(str(exc)) from None

        def registered() -> bool:
            docs = [store.workers.get(n) for n in names]
            return all(w and w.get("heartbeat_at", 0) >= started - 1 and w.get("state") in ("READY", "DRAINING")
                       for w in docs)

        _wait(f"worker(s) {', '.join(names)} to register", registered, 120, procs, "" if remote else "worker")
        if prepared:
            assert inv is not None
            hosts_ops.wait_ready(cfg, inv.hosts, lambda n: hosts_ops.registered(store, n, started), say=say)
    for actor in actors:
        if not procs.alive(actor):
            raise ManagementError(f"{actor} exited; see {procs.log_dir / (actor + '.log')}")
    store.close()
    say(f"up: FrontEnd {cfg.frontend_url}/api/v1/docs  GlobalManager {cfg.globalmanager_url}/api/v1/docs")


def remove_workloads(cfg: Config) -> None:
    """Remove this deployment's containers and job networks (found by label) from the local engine."""
    if not _docker_answers():
        return
    label = f"label=rswarm.cluster={cfg.cluster()}"
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    nets = subprocess.run(["docker", "network", "ls", "-q", "--filter", label], capture_output=True,
                          text=True).stdout.split()
    if nets:
        subprocess.run(["docker", "network", "rm", *nets], capture_output=True)


def down(cfg: Config, keep_workloads: bool = False, quiet: bool = False, inventory: str | None = None,
         leave: bool = False) -> None:
    """Stop what ``up`` started. With an inventory, its Workers too; ``leave``: the hosts also leave the Swarm,
    are removed from the manager's node list and their Worker records are forgotten."""
    from Common.ops import cluster
    from Common.ops import inventory as hosts_ops

    say = (lambda *_: None) if quiet else (lambda m: print(m, flush=True))
    cluster.apply_cluster_mode(cfg)
    procs = Processes(cfg)
    if not procs.sup.answers():
        # supervisord is not there (never started, or SIGKILLed): stop whatever it left running.
        left = procs.sup.sweep()
        if left:
            say(f"supervisord was not answering: stopped {len(left)} leftover process(es) of {cfg.run_path}")
    for actor in ("frontend", "jobmanager", "worker", *hollow_names(procs), "discovery", "globalmanager"):
        if procs.stop(actor):
            say(f"stopped {MODULES.get(actor, actor)}")
    try:
        inv = cluster.load_inv(cfg, inventory)
    except cluster.RemoteError as exc:
        say(f"inventory: {exc}")
        inv = None
    spec = cluster.load_spec(cfg)
    if inv is not None:
        cluster.stop_workers(inv, say=say)
        if spec is None:  # prepared hosts: their containers and, with --leave, their Swarm membership
            for h in inv.hosts:
                if not keep_workloads:
                    hosts_ops.clean_workloads(cfg, inv, h)
                if leave:
                    try:
                        hosts_ops.leave(cfg, inv, h, say)
                    except cluster.RemoteError as exc:
                        say(f"{h.name}: {exc}")
            if leave:
                forget_workers(cfg, [h.name for h in inv.hosts])
                hosts_ops.deployment_file(cfg).unlink(missing_ok=True)
    if not keep_workloads:
        if spec is not None:
            cluster.remove_cluster_workloads(cfg, spec)
        remove_workloads(cfg)
    if procs.stop("mongo"):
        say("stopped the embedded MongoDB")
    if procs.sup.answers():
        say("stopped supervisord")
    procs.sup.shutdown()  # supervisord exits; anything of this run dir still running is swept up
    if procs.stop("dockerd", timeout=30):
        say("stopped dockerd")


def status(cfg: Config) -> dict[str, Any]:
    from Common.ops import cluster
    from Common.store.credentials import redact

    in_cluster = cluster.apply_cluster_mode(cfg)
    procs = Processes(cfg)
    out: dict[str, Any] = {"run_dir": str(cfg.run_path), "token_file": str(cfg.token_file),
                           "frontend_url": cfg.frontend_url, "globalmanager_url": cfg.globalmanager_url,
                           "swagger_ui": f"{cfg.frontend_url}/api/v1/docs", "mongo_uri": redact(cfg.mongo_uri),
                           "processes": {}}
    ports = {"frontend": cfg.frontend.port, "globalmanager": cfg.globalmanager.port,
             "jobmanager": cfg.jobmanager.hint_port, "discovery": cfg.discovery.port,
             "mongo": cfg.mongo.embedded_port if not cfg.mongo.uri else None, "worker": None, "dockerd": None}
    sup = procs.sup.status()
    answers = procs.sup.answers()
    out["supervisor"] = {"alive": answers, "pid": procs.sup.daemon_pid(), "socket": str(procs.sup.sock),
                         "config": str(procs.sup.conf), "log": str(procs.log_dir / "supervisord.log")}
    orphans = {} if answers else procs.sup.unsupervised()  # supervisord killed under its programs
    for name in ("dockerd", "mongo", *ACTORS, *hollow_names(procs)):
        s = sup.get(name)
        if name in orphans:
            s = {"state": "UNSUPERVISED", "pid": orphans[name], "uptime": None, "restarts": 0}
        pid = (s["pid"] if s["state"] in (*supervise.ALIVE_STATES, "UNSUPERVISED") else None) if s \
            else procs.alive(name)
        if name == "dockerd" and pid is None and procs.record(name) is None:
            continue
        if name == "mongo" and cfg.mongo.uri:
            continue
        if name == "worker" and in_cluster and pid is None:
            continue  # the Workers run on the cluster's hosts: see `cluster status` / `hosts status`
        out["processes"][name] = {"alive": pid is not None, "pid": pid, "port": ports.get(name),
                                  "log": str(procs.log_dir / f"{name}.log"),
                                  "state": s["state"] if s else ("RUNNING" if pid else "STOPPED"),
                                  "supervised": s is not None and name not in orphans,
                                  "uptime": round(s["uptime"], 1) if s and s["uptime"] is not None else None,
                                  "restarts": s["restarts"] if s else 0,
                                  "held_until": s.get("held_until") if s else None,
                                  "fatal_retry_at": s.get("fatal_retry_at") if s else None}
    out["status_page"] = f"{cfg.frontend_url}/status"
    out["metrics"] = {"frontend": f"{cfg.frontend_url}/metrics", **{
        actor: f"http://{sub.metrics_host}:{sub.metrics_port}/metrics" if sub.metrics_port else None
        for actor, sub in (("globalmanager", cfg.globalmanager), ("jobmanager", cfg.jobmanager),
                           ("discovery", cfg.discovery), ("worker", cfg.worker))}}
    try:
        from Common.store import Store

        store = Store.connect(cfg, "management")
        store.db.client.admin.command("ping")
        out["cluster"] = {
            "workers": [{"id": w["_id"], "state": w.get("state"), "cores": len(w["cores"]),
                         "free_cores": len(w["free_cores"]), "mem_free": w["mem_free"],
                         "hollow": bool(w.get("hollow"))}
                        for w in store.workers.all()],
            "jobs": store.jobs.count_by_state(),
        }
        from FrontEnd.status import cluster_summary

        out["summary"] = cluster_summary(store, cfg.jobmanager.strategy)  # what the /status page shows
        store.close()
    except Exception as exc:
        out["cluster"] = {"error": f"MongoDB unavailable: {exc}"}
    return out


def table(title: str, headers: list[str], rows: list[list[Any]], empty: str) -> None:
    print(f"\n{title}")
    if not rows:
        print(f"  ({empty})")
        return
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def print_workers(sm: dict[str, Any]) -> None:
    """The WORKERS table of `status` (and of the demo's last lines), from ``cluster_summary``; hollow
    workers (thousands of them) are summed up per state."""
    real = [w for w in sm["workers"] if not w.get("hollow")]
    table("WORKERS", ["worker", "state", "cores used", "occupancy (# = claimed)", "memory free", "tasks", "heartbeat"],
          [[w["id"], w["state"], f"{w['used']}/{w['capacity']}",
            "".join("#" if c["busy"] else "." for c in w["cores"]),
            f"{w['mem_free'] // 2**20}/{w['mem_total'] // 2**20} MiB", w["tasks"],
            "-" if w["heartbeat_age"] is None else f"{w['heartbeat_age']} s ago"] for w in real],
          "no real worker has registered")
    hollow = [w for w in sm["workers"] if w.get("hollow")]
    if hollow:  # thousands of them: one line per state, not one per node
        by_state: dict[str, list[dict[str, Any]]] = {}
        for w in hollow:
            by_state.setdefault(w["state"], []).append(w)
        table(f"HOLLOW WORKERS ({len(hollow)}: emulated nodes, no containers)",
              ["state", "nodes", "cores used", "tasks"],
              [[s, len(ws), f"{sum(w['used'] for w in ws)}/{sum(w['capacity'] for w in ws)}",
                sum(w["tasks"] for w in ws)] for s, ws in sorted(by_state.items())], "none")


def print_status(st: dict[str, Any]) -> None:
    print(f"run dir       {st['run_dir']}")
    print(f"token file    {st['token_file']}")
    print(f"Swagger UI    {st['swagger_ui']}")
    print(f"status page   {st.get('status_page', '-')}")
    print(f"GlobalManager {st['globalmanager_url']}/api/v1/docs")
    print(f"MongoDB       {st['mongo_uri']}")
    metrics = st.get("metrics", {})
    sup = st.get("supervisor", {})
    print(f"supervisord   {'pid ' + str(sup['pid']) if sup.get('alive') else 'NOT RUNNING'}  ({sup.get('config')})")
    table("PROCESSES", ["process", "state", "pid", "uptime", "restarts", "port", "metrics"],
          [[name, p.get("state", "-"), p["pid"] or "-", _duration(p.get("uptime")), p.get("restarts", 0),
            p["port"] or "-", metrics.get(name) or "-"]
           for name, p in st["processes"].items()], "none recorded")
    cl = st.get("cluster", {})
    if "error" in cl:
        print(cl["error"])
        return
    sm = st.get("summary")
    if not sm:
        print("jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(cl.get("jobs", {}).items())) or "none"))
        return
    print_workers(sm)
    more = f", oldest waits {sm['oldest_wait_seconds']} s" if sm["queue_length"] else ""
    table(f"QUEUE ({sm['queue_length']} waiting{more})", ["#", "job", "name", "prio", "cores", "waiting", "why"],
          [[q["position"], q["id"], q["name"], q["priority"], q["cores"], f"{q['waiting_seconds']} s", q["reason"]]
           for q in sm["queue"]], "nothing waits")
    table("RECENT JOBS", ["job", "name", "state", "tasks", "nodes", "submitted"],
          [[j["id"], j["name"], j["state"], j["tasks"], j["nodes"] or "-", f"{j['age_seconds']} s ago"]
           for j in sm["recent_jobs"]], "no job yet")
    print("\njobs by state: " + "  ".join(f"{k} {v}" for k, v in sm["jobs_by_state"].items()))
    evms = sm.get("evms")
    print("EVMs: " + ("no EVM store" if evms is None else "  ".join(f"{k} {v}" for k, v in evms.items())))
    print(f"strategy: {sm['strategy']}")


def demo(cfg: Config) -> None:
    import requests

    up(cfg)
    token = cfg.token()
    headers = {"Authorization": f"Bearer {token}"}
    base = f"{cfg.frontend_url}/api/v1"
    jobs = []
    for i in range(3):
        body = {
            "job_name": f"demo-{i}",
            "job_info": {
                "network": {"name": f"demo-net-{i}"},
                "tasks": {f"t{k}": {"image": "rswarm/task:1", "command": ["sh", "-c", f"echo task {k}; sleep 3"],
                                    "req_cores": 1, "mem_limit": "64m"} for k in range(2)},
            },
        }
        r = requests.post(f"{base}/jobs", json=body, headers=headers, timeout=10)
        if r.status_code != 201:
            raise ManagementError(f"submitting the demo job failed: {r.status_code} {r.text}")
        jobs.append(r.json()["id"])
        print(f"submitted {r.json()['id']} ({body['job_name']}): 2 tasks x 1 core, 64m")
    print(f"\nSwagger UI: {base}/docs   (token in {cfg.token_file})")
    last: dict[str, str] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = True
        for job_id in jobs:
            j = requests.get(f"{base}/jobs/{job_id}", timeout=10).json()
            line = f"{j['state']:<10} " + "  ".join(
                f"{n}:{t['state']}@{t['node'] or '-'}[{t['cpuset'] or '-'}]" for n, t in j["tasks"].items())
            if last.get(job_id) != line:
                print(f"{time.strftime('%H:%M:%S')} {job_id} {line}")
                last[job_id] = line
            done = done and j["state"] in ("COMPLETED", "FAILED", "CANCELLED")
        if done:
            break
        time.sleep(0.5)
    summary = status(cfg).get("summary")
    if summary:
        print_workers(summary)
    print(f"The system is still up: `{sys.executable} Management.py status`; stop it with `Management.py down`.")


def stress(stress_args: list[str]) -> int:
    """Forward to the StressClient; its URL and token default to this config (same environment)."""
    from StressClient.__main__ import main as stress_main

    try:
        return stress_main(stress_args or ["--help"])
    except SystemExit as exc:  # argparse's --help and usage errors
        return exc.code if isinstance(exc.code, int) else 2


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError("must be 1..64")
    return n


def forget_workers(cfg: Config, names: list[str], end_jobs: bool = False) -> None:
    """Hosts taken away for good leave no DOWN ghosts behind: their records go (at once, or once Discovery
    has moved their work away). ``end_jobs`` (`cluster down`: their containers go too): the unfinished jobs
    with tasks there end first, with a reason, and give their claims back. Skipped quietly when the database
    is not up."""
    from pymongo.errors import PyMongoError

    from Common.ops import cluster
    from Common.store import Store

    try:
        store = Store.connect(cfg, "management")
        try:
            if end_jobs:
                ended = cluster.end_jobs_on(store, names)
                if ended:
                    print(f"ended {len(ended)} unfinished job(s) whose containers go with the cluster", flush=True)
            for name in names:
                store.workers.forget(name)
        finally:
            store.close()
    except PyMongoError as exc:
        print(f"Management.py: workers not forgotten in MongoDB ({exc.__class__.__name__})", file=sys.stderr)


def resolve_images(names: list[str]) -> list[str]:
    """Local image names to load into the hosts ("epm", the old per-EPM agent image, is no longer needed:
    EPMs run rswarm/task:1 unless a task names its image, and the node's EVM agent runs beside the Worker)."""
    return [name for name in names if name != "epm"]


def cluster_command(cfg: Config, args: argparse.Namespace) -> int:
    from Common.ops import cluster, emulated

    try:
        if args.cluster_command == "up":
            if args.cores:
                from Common.resources import parse_cpuset

                parse_cpuset(args.cores)
            if args.memory:
                from Common.resources import parse_memory

                parse_memory(args.memory)
            images = resolve_images([i for i in args.images.split(",") if i])
            cluster.cluster_up(cfg, args.workers, args.tag, args.subnet, args.cores, args.memory,
                               args.experimental, images=images)
            if not args.no_system:
                up(cfg)
        elif args.cluster_command == "down":
            spec = cluster.load_spec(cfg)
            if spec is not None:
                cluster.apply_cluster_mode(cfg)
                forget_workers(cfg, [h.name for h in spec.workers], end_jobs=True)
                down(cfg)
            cluster.cluster_down(cfg)
        else:
            st = cluster.cluster_status(cfg)
            if args.json:
                print(json.dumps(st, indent=2))
            elif st["cluster"] is None:
                print("no emulated cluster in this run directory")
            else:
                print(f"cluster {st['cluster']} on {st['bridge']} ({st['subnet']})")
                for h in st["hosts"]:
                    print(f"  {h['name']:<16}{h['role']:<9}{h['address']:<14}docker={'up' if h['docker'] else 'DOWN'}"
                          f"  swarm={h['swarm'] or '-'}  sshd={h['sshd']}  worker pid={h['worker_pid'] or '-'}")
    except ValueError as exc:
        print(f"Management.py: invalid value: {exc}", file=sys.stderr)
        return 2
    except (emulated.ClusterError, cluster.RemoteError) as exc:
        print(f"Management.py: {exc}", file=sys.stderr)
        return 1
    return 0


def hosts_command(cfg: Config, args: argparse.Namespace) -> int:
    from pymongo.errors import PyMongoError

    from Common.ops import cluster
    from Common.ops.remote import trust_host_key

    cluster.apply_cluster_mode(cfg)
    try:
        inv = cluster.load_inv(cfg, args.inventory)
        if inv is None:
            print("Management.py: no inventory (give --inventory FILE, or run `cluster up`)", file=sys.stderr)
            return 2
        names = args.names or None
        if args.action == "status":
            st = cluster.workers_status(inv, names)
            print(json.dumps(st, indent=2) if args.json else "\n".join(
                f"{h['name']:<16}{h['address']:<16}" + (f"worker {h.get('worker_state') or 'not supervised'} pid "
                                                        f"{h['worker_pid'] or '-'} restarts {h.get('worker_restarts')}"
                                                        if h["reachable"]
                                                        else f"UNREACHABLE: {h['error']}") for h in st))
        elif args.action == "start":
            cluster.start_workers(cfg, inv, names)
        elif args.action == "stop":
            cluster.stop_workers(inv, names)
        elif args.action == "logs":
            if not names or len(names) != 1:
                print("Management.py: hosts logs takes exactly one host name", file=sys.stderr)
                return 2
            print(cluster.worker_logs(inv, names[0]))
        elif args.action == "ship":
            cluster.ship(inv, names)
        elif args.action == "trust":
            for h in cluster.sessions(inv, names):
                print(f"{h.name}: trusted {trust_host_key(h, Path(inv.known_hosts))}")
        elif args.action in ("add", "remove"):
            if not names or len(names) != 1:
                print(f"Management.py: hosts {args.action} takes exactly one host name", file=sys.stderr)
                return 2
            path = cluster.inventory_path(cfg, args.inventory)
            assert path is not None
            if args.action == "add":
                return hosts_add(cfg, path, inv, names[0], args)
            hosts_remove(cfg, path, inv, names[0])
    except cluster.RemoteError as exc:
        print(f"Management.py: {exc}", file=sys.stderr)
        return 1
    except PyMongoError as exc:
        print(f"Management.py: MongoDB at {cfg.mongo_uri} unavailable (is the control plane up?): "
              f"{exc.__class__.__name__}", file=sys.stderr)
        return 1
    return 0


def hosts_add(cfg: Config, path: Path, inv: Any, name: str, args: argparse.Namespace) -> int:
    """Grow a running cluster by one prepared host (Common/ops/inventory.py does the work)."""
    from Common.ops import cluster
    from Common.ops import inventory as hosts_ops

    if not args.host_address:
        print("Management.py: hosts add needs --address", file=sys.stderr)
        return 2
    if cluster.load_spec(cfg) is not None:
        print("Management.py: an emulated cluster grows with `cluster up --workers N`", file=sys.stderr)
        return 2
    given = {k: getattr(args, f"host_{k}") for k in ("address", "user", "key", "repo", "run_dir", "docker_url",
                                                     "cores", "memory", "port") if getattr(args, f"host_{k}")}
    hosts_ops.grow(cfg, path, inv, name, given, resolve_images(HOST_IMAGES.split(",")),
                   start=lambda inv, names: cluster.start_workers(cfg, inv, names))
    return 0


def hosts_remove(cfg: Config, path: Path, inv: Any, name: str) -> None:
    from Common.ops import cluster
    from Common.ops import inventory as hosts_ops

    hosts_ops.shrink(cfg, path, inv, name, emulated=cluster.load_spec(cfg) is not None,
                     stop=lambda inv: cluster.stop_workers(inv))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="Management.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="config file (default: rswarm.toml at the repository root)")
    parser.add_argument("--run-dir", help="where pids, logs, the token and embedded data live")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start everything that is not running")
    p_up.add_argument("--no-worker", action="store_true", help="do not start a local Worker")
    p_up.add_argument("--hollow", metavar="N[:cores[:memory]]",
                      help=f"also run N hollow workers (emulated nodes, no containers; default 4 cores, 8g each) "
                           f"in ceil(N/{HOLLOW_PER_PROCESS}) processes; stopped by down")
    p_down = sub.add_parser("down", help="stop everything this run directory started")
    p_down.add_argument("--keep-workloads", action="store_true", help="leave job containers and networks")
    p_status = sub.add_parser("status", help="what runs, where, and a cluster summary")
    p_status.add_argument("--json", action="store_true")
    sub.add_parser("demo", help="up, then run a sample workload end to end")
    p_up.add_argument("--inventory", help="run the Workers on the hosts of this inventory file, over SSH")
    p_down.add_argument("--inventory", help="also stop the Workers on the hosts of this inventory file")
    p_down.add_argument("--leave", action="store_true", help="with an inventory: the hosts also leave the "
                        "Swarm and are removed from its node list")
    p_up.add_argument("--images", default=HOST_IMAGES, help="with --inventory: local images loaded into each "
                      f"host's engine; 'epm' is this checkout's EPM image (default {HOST_IMAGES})")
    p_cluster = sub.add_parser("cluster", help="an emulated multi-node Swarm on this machine")
    csub = p_cluster.add_subparsers(dest="cluster_command", required=True)
    c_up = csub.add_parser("up", help="N hosts (netns + dockerd + sshd) joined to a Swarm, then the system on it")
    c_up.add_argument("--workers", type=_positive_int, default=3, help="number of worker hosts (default 3)")
    c_up.add_argument("--cores", default="", help="declared cores per worker, a cpuset such as 0-3 "
                      "(default: the real ones; logical core i runs on physical core i mod ncpu)")
    c_up.add_argument("--memory", default="", help="declared memory per worker, e.g. 4g (default: the real one)")
    c_up.add_argument("--tag", default="main", help="names everything this cluster makes (1-6 letters/digits)")
    c_up.add_argument("--subnet", default="10.77.0.0/24", help="the hosts' private subnet (default 10.77.0.0/24)")
    c_up.add_argument("--experimental", action="store_true", help="dockerd --experimental (checkpoints)")
    c_up.add_argument("--no-system", action="store_true", help="only the hosts; do not run `up` on them")
    c_up.add_argument("--images", default="rswarm/task:1",
                      help="comma-separated local images to load into every worker host (default: rswarm/task:1, "
                           "what EPMs run unless a task names its image)")
    csub.add_parser("down", help="stop the system and remove every host, bridge, rule, daemon and directory")
    c_status = csub.add_parser("status", help="hosts, daemons, Swarm membership, Worker processes")
    c_status.add_argument("--json", action="store_true")
    p_hosts = sub.add_parser("hosts", help="Worker processes on remote hosts, over SSH")
    p_hosts.add_argument("action", choices=["status", "start", "stop", "logs", "ship", "trust", "add", "remove"])
    p_hosts.add_argument("names", nargs="*", help="only these hosts (default: all; `logs`, `add` and `remove` "
                                                  "take one)")
    p_hosts.add_argument("--inventory", help="inventory file (default: the one `up` used, or the emulated "
                                             "cluster's)")
    for flag in ("address", "user", "key", "repo", "run-dir", "docker-url", "cores", "memory"):
        # dest host_*: `--run-dir` must not shadow the global --run-dir
        p_hosts.add_argument(f"--{flag}", dest=f"host_{flag.replace('-', '_')}", default="",
                             help=f"`hosts add`: the new host's {flag} (default: the first host's; --address "
                                  "is required)")
    p_hosts.add_argument("--port", dest="host_port", type=int, default=0,
                         help="`hosts add`: its SSH port (default: the first host's)")
    p_hosts.add_argument("--json", action="store_true")
    p_stress = sub.add_parser("stress", help="run the StressClient against this deployment "
                                             "(same as python -m StressClient MODE ...; see stress --help)",
                              add_help=False)
    p_stress.add_argument("stress_args", nargs=argparse.REMAINDER, help="StressClient arguments")
    args, extra = parser.parse_known_args(argv)
    if args.command == "stress":
        args.stress_args = extra + args.stress_args  # e.g. `stress --help`, which REMAINDER does not take
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    if args.run_dir is not None:
        os.environ["RSWARM_RUN_DIR"] = args.run_dir
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"Management.py: config error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "up":
            if args.hollow is not None:
                from Worker.hollow import parse_spec

                try:
                    parse_spec(args.hollow)
                except ValueError as exc:
                    print(f"Management.py: {exc}", file=sys.stderr)
                    return 2
            up(cfg, with_worker=not args.no_worker, inventory=args.inventory, images=args.images,
               hollow=args.hollow)
        elif args.command == "down":
            if args.leave and not args.inventory:
                parser.error("--leave needs --inventory")
            down(cfg, keep_workloads=args.keep_workloads, inventory=args.inventory, leave=args.leave)
        elif args.command == "cluster":
            return cluster_command(cfg, args)
        elif args.command == "hosts":
            return hosts_command(cfg, args)
        elif args.command == "status":
            st = status(cfg)
            if args.json:
                print(json.dumps(st, indent=2))
            else:
                print_status(st)
        elif args.command == "demo":
            demo(cfg)
        elif args.command == "stress":
            if args.config:
                os.environ["RSWARM_CONFIG"] = args.config
            return stress(args.stress_args)
    except ManagementError as exc:
        print(f"Management.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
