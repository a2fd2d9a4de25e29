"""Build the cluster on hosts the operator prepared (Debian 12, sshd, the operator's key), from an inventory.

``up --inventory FILE`` (Management.py) calls, in order:

1. ``resolve_addresses``: the Swarm manager advertises the inventory's top-level ``manager_address``
   (else the config's ``globalmanager.advertise_addr``); the control plane (MongoDB, Discovery's PULL, the
   GM's PUB) listens on the config's ``control_address`` (else ``manager_address``). Loopback while the
   inventory lists hosts is refused: no other machine could reach it.
2. ``ensure_manager``: the manager engine (``globalmanager.docker_url``) is initialised as a Swarm manager
   advertising ``manager_address``; a Swarm that already advertises another address (127.0.0.1, as a
   single-machine ``dependences.sh`` makes it) is *refused* with the commands that fix it, never
   re-initialised behind the operator's back (that would drop its services, networks and nodes).
3. ``provision`` per host, in parallel: the tracked code and a wheelhouse of the pinned Python wheels go
   to ``repo`` over SFTP (unchanged files are skipped), ``bash dependences.sh Worker`` runs there over
   SSH with ``DOCKER_HOST`` set to the host's engine (idempotent; it builds no image), then the system's
   images go ``docker save`` -> SSH channel -> ``docker load`` on the host's engine (only when its image
   ids differ; no registry). Every step's output goes to ``<run_dir>/logs/hosts/<name>.log``; a failure
   names the host and the step.
4. ``join``: the worker join token is read from the manager engine here and written to the stdin of a
   constant Python one-liner on the host that calls the host engine's API (docker-py) — never in argv,
   never in a file, never logged.
5. the Worker is started through ``remote.start_worker`` (supervision lives there), then ``wait_ready``
   until every host is a Ready Swarm node with a READY Worker record, one line per host.

``leave`` (``down --inventory --leave``, ``hosts remove``) has the host's engine leave the Swarm and removes
its node from the manager's list. What ``up`` learnt (the inventory's path, each host's Swarm node id) is
kept in ``<run_dir>/cluster/deployment.json`` so ``down``/``status`` find the same control address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import paramiko

from Common.config import REPO_ROOT, Config
from Common.ops.remote import Inventory, RemoteError, RemoteHost, Session, load_inventory, make_parents, write_inventory
from Common.store import Store

DEFAULT_SWARM_POOL = "10.90.0.0/16"
WHEELS_DIR = ".wheels"  # under the host's repo: the pinned wheels, so the host needs no package index

# Constant code run on a host by its .venv's Python (docker-py talks to the host's own engine). The join
# token arrives on stdin only. argv: engine URL, manager address, this host's advertise address.
JOIN_SCRIPT = r"""
import json, sys, docker
url, manager, addr = sys.argv[1:4]
token = sys.stdin.readline().strip()
api = docker.APIClient(base_url=url, timeout=60)
sw = api.info()["Swarm"]
if sw.get("LocalNodeState") == "active":
    managers = [m.get("Addr", "").rsplit(":", 1)[0] for m in sw.get("RemoteManagers") or []]
    if manager not in managers:
        sys.exit("this engine is in another Swarm (managers %s): leave it first" % managers)
else:
    api.join_swarm([manager + ":2377"], token, advertise_addr=addr)
print(json.dumps({"node_id": api.info()["Swarm"]["NodeID"]}))
"""
# argv: engine URL. Prints the node id it had ("" when in no Swarm), then leaves.
LEAVE_SCRIPT = r"""
import json, sys, docker
api = docker.APIClient(base_url=sys.argv[1], timeout=60)
sw = api.info()["Swarm"]
node = sw.get("NodeID") or ""
if sw.get("LocalNodeState") != "inactive":
    api.leave_swarm(force=True)
print(json.dumps({"node_id": node}))
"""
# argv: engine URL, cluster id. Removes this deployment's containers (found by label) on the host's engine.
CLEAN_SCRIPT = r"""
import sys, docker
api = docker.APIClient(base_url=sys.argv[1], timeout=60)
for c in api.containers(all=True, filters={"label": "rswarm.cluster=" + sys.argv[2]}):
    api.remove_container(c["Id"], force=True)
"""


class InventoryError(RemoteError):
    pass


# ---- addresses and the record of this deployment --------------------------------------------------
def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def resolve_addresses(cfg: Config, inv: Inventory, source: str = "the inventory") -> tuple[str, str]:
    """(manager_address, control_address); refuses loopback while the inventory lists hosts."""
    manager = inv.manager_address or cfg.globalmanager.advertise_addr
    control = cfg.control_address or manager
    if inv.hosts:
        if is_loopback(manager):
            raise InventoryError(
                f"manager_address is {manager} (loopback) but {source} lists {len(inv.hosts)} remote host(s), "
                f"which could not reach it: set manager_address = \"<this machine's address on the hosts' "
                f"network>\" at the top of {source} (or globalmanager.advertise_addr in the config)")
        if is_loopback(control):
            raise InventoryError(f"control_address is {control} (loopback) but {source} lists remote hosts: "
                                 "set control_address in the config to an address the hosts reach (or leave it "
                                 "empty to use manager_address)")
    return manager, control


def apply_control_address(cfg: Config, manager: str, control: str) -> None:
    """One address for every listener a remote Worker needs. MongoDB authentication for a non-loopback
    listener and per-node ZeroMQ keys are added by their own changes (see docs/cluster.md)."""
    cfg.mongo.embedded_host = control
    cfg.discovery.host = control
    cfg.globalmanager.pub_host = control
    cfg.globalmanager.advertise_addr = manager


def deployment_file(cfg: Config) -> Path:
    return cfg.run_path / "cluster" / "deployment.json"


def load_deployment(cfg: Config) -> dict[str, Any] | None:
    try:
        return json.loads(deployment_file(cfg).read_text())
    except (OSError, ValueError):
        return None


def save_deployment(cfg: Config, record: dict[str, Any]) -> None:
    f = deployment_file(cfg)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(f)


def record_node(cfg: Config, name: str, node_id: str | None) -> None:
    rec = load_deployment(cfg) or {}
    nodes = rec.setdefault("nodes", {})
    if node_id:
        nodes[name] = node_id
    else:
        nodes.pop(name, None)
    save_deployment(cfg, rec)


# ---- the manager --------------------------------------------------------------------------------
def manager_api(cfg: Config) -> docker.APIClient:
    return docker.APIClient(base_url=cfg.globalmanager.docker_url, timeout=60)


def ensure_manager(cfg: Config, manager: str, pool: str, hosts: int, say: Callable[[str], None] = print) -> None:
    """The manager engine is a Swarm manager advertising ``manager``; refuse (with the fix) otherwise."""
    api = manager_api(cfg)
    try:
        sw = api.info()["Swarm"]
    except docker.errors.DockerException as exc:
        raise InventoryError(f"the manager engine {cfg.globalmanager.docker_url} does not answer: {exc}") from None
    state = sw.get("LocalNodeState")
    if state == "inactive":
        api.init_swarm(advertise_addr=manager, default_addr_pool=[pool or DEFAULT_SWARM_POOL])
        say(f"manager: initialised a Swarm advertising {manager}")
        return
    if state != "active" or not sw.get("ControlAvailable"):
        raise InventoryError(f"the engine {cfg.globalmanager.docker_url} is in a Swarm ({state}) but is not its "
                             "manager: point globalmanager.docker_url at a manager engine")
    advertised = sw.get("NodeAddr", "")
    if advertised != manager:
        nodes = sw.get("Nodes", 0)
        fix = (f"docker swarm leave --force && docker swarm init --advertise-addr {manager} "
               f"--default-addr-pool {pool or DEFAULT_SWARM_POOL}")
        why = "a loopback address no other machine can reach" if is_loopback(advertised) else "another address"
        raise InventoryError(
            f"the Swarm on {cfg.globalmanager.docker_url} advertises {advertised}, {why}, so the {hosts} host(s) "
            f"could not join it at {manager}. It has {nodes} node(s). Re-initialise it advertising "
            f"{manager} — this drops its services, networks and node list, so run `Management.py down` first "
            f"and make sure nothing else uses it:\n    {fix}")


# ---- running things on a host ---------------------------------------------------------------------
def _exec(s: Session, argv: list[str], stdin: Iterable[bytes] = (), sink: Callable[[bytes], None] | None = None,
          timeout: float = 1800.0) -> int:
    """Run ``argv`` on the host (stdout and stderr combined into ``sink``), feeding ``stdin``; its exit code."""
    try:
        chan = s.client.get_transport().open_session(timeout=30)  # type: ignore[union-attr]
        chan.set_combine_stderr(True)
        chan.settimeout(timeout)
        chan.exec_command(shlex.join(argv))

        def drain() -> None:
            while chunk := chan.recv(65536):
                if sink is not None:
                    sink(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        for chunk in stdin:
            chan.sendall(chunk)
        chan.shutdown_write()
        reader.join(timeout)
        return chan.recv_exit_status()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise RemoteError(f"{s.h.name}: connection lost: {exc or type(exc).__name__}") from None


class HostLog:
    """``<run_dir>/logs/hosts/<name>.log`` on this machine: every provisioning step's output."""

    def __init__(self, cfg: Config, name: str) -> None:
        self.path = cfg.run_path / "logs" / "hosts" / f"{name}.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("ab")

    def step(self, text: str) -> None:
        self._f.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n".encode())
        self._f.flush()

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self._f.flush()

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.path.read_text(errors="replace").splitlines()[-n:])

    def close(self) -> None:
        self._f.close()


def _fail(h: RemoteHost, step: str, log: HostLog, detail: str = "") -> InventoryError:
    return InventoryError(f"{h.name}: step '{step}' failed{': ' + detail if detail else ''} "
                          f"(log {log.path}):\n{log.tail()}")


def _python(h: RemoteHost) -> str:
    return f"{h.repo}/.venv/bin/python"


# ---- provisioning: code, wheels, dependences.sh, images --------------------------------------------
def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\n") if f and (REPO_ROOT / f).is_file()]


def wheelhouse(cfg: Config) -> Path:
    """The pinned runtime wheels (pip download, cached by the lock file's hash): hosts install from
    them with --no-index, so a host needs no package index and a re-run downloads nothing."""
    lock = REPO_ROOT / "requirements.lock"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    d = cfg.run_path / "wheels" / digest
    if not (d / ".complete").exists():
        d.mkdir(parents=True, exist_ok=True)
        res = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                              "--only-binary", ":all:", "-r", str(lock), "-d", str(d)], capture_output=True,
                             text=True, timeout=900)
        if res.returncode != 0:
            raise InventoryError(f"building the wheelhouse failed: {res.stderr.strip()[-1500:]}")
        (d / ".complete").write_text("")
    return d


def _sync(s: Session, files: list[tuple[Path, str]]) -> int:
    """Copy (local path, remote path) pairs over SFTP, skipping files of the same size and mtime."""
    sftp = s.client.open_sftp()
    made: set[str] = set()
    sent = 0
    try:
        for local, remote in files:
            st = local.stat()
            make_parents(sftp, PurePosixPath(remote), made)
            try:
                rst = sftp.stat(remote)
                if rst.st_size == st.st_size and int(rst.st_mtime or 0) == int(st.st_mtime):
                    continue
            except FileNotFoundError:
                pass
            sftp.put(str(local), remote)
            sftp.chmod(remote, st.st_mode & 0o777)
            sftp.utime(remote, (int(st.st_atime), int(st.st_mtime)))
            sent += 1
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise RemoteError(f"{s.h.name}: copying files: {exc or type(exc).__name__}") from None
    finally:
        sftp.close()
    return sent


def _local_image_ids(images: list[str]) -> dict[str, str]:
    api = docker.APIClient(base_url="unix:///var/run/docker.sock", timeout=60)
    out = {}
    for name in images:
        try:
            out[name] = api.inspect_image(name)["Id"]
        except docker.errors.ImageNotFound:
            raise InventoryError(f"image {name} is not on this machine's engine: run dependences.sh") from None
    return out


def provision(cfg: Config, s: Session, images: list[str], wheels: Path | None, log: HostLog) -> float:
    """Code, wheels, ``dependences.sh Worker``, images on one host. Idempotent. Seconds the
    dependences step took (reported; it is the part a re-run must keep short)."""
    h = s.h
    shared = Path(h.repo).resolve() == REPO_ROOT
    if not shared:
        log.step("ship code")
        files = [(REPO_ROOT / f, f"{h.repo}/{f}") for f in tracked_files()]
        if wheels is not None:
            files += [(w, f"{h.repo}/{WHEELS_DIR}/{w.name}") for w in sorted(wheels.glob("*.whl"))]
        try:
            s.check(["mkdir", "-p", h.repo])
            sent = _sync(s, files)
        except RemoteError as exc:
            raise _fail(h, "ship code", log, str(exc)) from None
        log.write(f"{sent} of {len(files)} files sent to {h.repo}\n".encode())
    log.step("dependences.sh Worker")
    t0 = time.monotonic()
    env = [f"DOCKER_HOST={h.docker_url}", f"RSWARM_RUN_DIR={h.run_dir}", "RSWARM_BUILD_IMAGES=0"]
    if not shared and wheels is not None:
        env.append(f"RSWARM_WHEELHOUSE={h.repo}/{WHEELS_DIR}")
    rc = _exec(s, ["env", *env, "bash", f"{h.repo}/dependences.sh", "Worker"], sink=log.write)
    took = time.monotonic() - t0
    log.write(f"(dependences.sh Worker: exit {rc} in {took:.1f}s)\n".encode())
    if rc != 0:
        raise _fail(h, "dependences.sh Worker", log, f"exit {rc}")
    log.step("images")
    want = _local_image_ids(images)
    rc_ids = _capture(s, ["docker", "-H", h.docker_url, "image", "inspect", "--format", "{{.Id}}", *want])
    have = set(rc_ids[1].split()) if rc_ids[0] == 0 else set()
    missing = [name for name, iid in want.items() if iid not in have]
    if missing:
        proc = subprocess.Popen(["docker", "save", *missing], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        rc = _exec(s, ["docker", "-H", h.docker_url, "load", "-q"], stdin=iter(lambda: proc.stdout.read(1 << 20), b""),
                   sink=log.write)
        proc.wait()
        if rc != 0 or proc.returncode != 0:
            raise _fail(h, "images", log, f"docker save exit {proc.returncode}, docker load exit {rc}")
    log.write(f"images on {h.docker_url}: {', '.join(images)} ({len(missing)} loaded)\n".encode())
    return took


def _capture(s: Session, argv: list[str], stdin: bytes = b"") -> tuple[int, str]:
    buf = bytearray()
    rc = _exec(s, argv, stdin=[stdin] if stdin else (), sink=buf.extend, timeout=120)
    return rc, buf.decode(errors="replace")


# ---- the Swarm ------------------------------------------------------------------------------------
def join(cfg: Config, s: Session, manager: str, log: HostLog) -> str:
    """Join the host's engine to the Swarm; its node id. The token goes over the channel's stdin only."""
    h = s.h
    log.step("join the Swarm")
    token = manager_api(cfg).inspect_swarm()["JoinTokens"]["Worker"]
    rc, out = _capture(s, [_python(h), "-c", JOIN_SCRIPT, h.docker_url, manager, h.address],
                       stdin=(token + "\n").encode())
    del token
    log.write(out.encode())
    if rc != 0:
        raise _fail(h, "join the Swarm", log, f"exit {rc}")
    try:
        return json.loads(out.strip().splitlines()[-1])["node_id"]
    except (ValueError, KeyError, IndexError):
        raise _fail(h, "join the Swarm", log, "no node id in the answer") from None


def leave(cfg: Config, inv: Inventory, h: RemoteHost, say: Callable[[str], None] = print) -> None:
    """The host's engine leaves the Swarm; its node is removed from the manager's list (also when the host
    cannot be reached any more: then by the node id recorded at join)."""
    node_id = ((load_deployment(cfg) or {}).get("nodes") or {}).get(h.name, "")
    try:
        with Session(h, Path(inv.known_hosts)) as s:
            rc, out = _capture(s, [_python(h), "-c", LEAVE_SCRIPT, h.docker_url])
            try:
                node_id = json.loads(out.strip().splitlines()[-1])["node_id"] or node_id
            except (ValueError, KeyError, IndexError):
                rc = rc or 1
            if rc != 0:
                raise RemoteError(f"{h.name}: leaving the Swarm failed: {out.strip()[-500:]}")
    except RemoteError as exc:
        say(f"{h.name}: could not leave the Swarm there ({exc}); removing its node from the manager")
    if node_id:
        api = manager_api(cfg)
        try:
            api.remove_node(node_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise InventoryError(f"{h.name}: removing node {node_id} from the manager: {exc}") from None
    record_node(cfg, h.name, None)
    say(f"{h.name}: left the Swarm" + (f" (node {node_id[:12]} removed)" if node_id else ""))


def clean_workloads(cfg: Config, inv: Inventory, h: RemoteHost) -> None:
    try:
        with Session(h, Path(inv.known_hosts)) as s:
            _capture(s, [_python(h), "-c", CLEAN_SCRIPT, h.docker_url, cfg.cluster()])
    except RemoteError:
        pass


def node_states(cfg: Config) -> dict[str, str]:
    return {n["ID"]: (n.get("Status") or {}).get("State", "") for n in manager_api(cfg).nodes()}


# ---- the whole sequence ---------------------------------------------------------------------------
def bring_up_hosts(cfg: Config, inv: Inventory, hosts: list[RemoteHost], images: list[str],
                   say: Callable[[str], None] = print) -> dict[str, str]:
    """Provision and join ``hosts`` in parallel; their Swarm node ids. The first failure is raised."""
    manager, _control = resolve_addresses(cfg, inv)
    wheels = wheelhouse(cfg) if any(Path(h.repo).resolve() != REPO_ROOT for h in hosts) else None

    def one(h: RemoteHost) -> tuple[str, str]:
        log = HostLog(cfg, h.name)
        try:
            with Session(h, Path(inv.known_hosts)) as s:
                took = provision(cfg, s, images, wheels, log)
                node_id = join(cfg, s, manager, log)
            say(f"{h.name} ({h.address}): provisioned (dependences.sh {took:.1f}s), Swarm node {node_id[:12]}")
            return h.name, node_id
        except InventoryError:
            raise
        except RemoteError as exc:
            raise InventoryError(f"{exc} (log {log.path})") from None
        finally:
            log.close()

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(hosts)))) as pool:
        results = list(pool.map(one, hosts))
    for name, node_id in results:
        record_node(cfg, name, node_id)
    return dict(results)


def wait_ready(cfg: Config, hosts: list[RemoteHost], registered: Callable[[str], bool], timeout: float = 180,
               say: Callable[[str], None] = print) -> None:
    """Until every host is a Ready Swarm node and its Worker is registered (one line per host)."""
    nodes = (load_deployment(cfg) or {}).get("nodes") or {}
    pending = {h.name for h in hosts}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        states = node_states(cfg)
        for name in sorted(pending):
            if states.get(nodes.get(name, "")) == "ready" and registered(name):
                say(f"{name}: Swarm node Ready, Worker READY")
                pending.discard(name)
        if pending:
            time.sleep(0.5)
    if pending:
        raise InventoryError(f"timed out after {timeout:.0f}s: not Ready with a registered Worker: "
                             f"{', '.join(sorted(pending))}")


def add_host(path: Path, host: RemoteHost) -> tuple[Inventory, Callable[[], None]]:
    """The inventory with ``host`` appended, validated as a whole, and the call that writes it to ``path``."""
    inv = load_inventory(path)
    if any(h.name == host.name for h in inv.hosts):
        raise InventoryError(f"{path}: a host {host.name!r} is already listed")
    inv.hosts.append(host)
    return _rewrite(path, inv)


def drop_host(path: Path, name: str) -> Inventory:
    inv = load_inventory(path)
    inv.get(name)
    inv.hosts = [h for h in inv.hosts if h.name != name]
    checked, commit = _rewrite(path, inv)
    commit()
    return checked


def _rewrite(path: Path, inv: Inventory) -> tuple[Inventory, Callable[[], None]]:
    tmp = path.with_name(path.name + ".new")
    write_inventory(tmp, inv)
    try:
        checked = load_inventory(tmp)
    except RemoteError:
        tmp.unlink(missing_ok=True)
        raise
    return checked, lambda: os.replace(tmp, path)


# ---- growing and shrinking a running cluster ------------------------------------------------------
def registered(store: Store, name: str, since: float) -> bool:
    """The host's Worker has registered (READY or DRAINING) and beaten since ``since``."""
    w = store.workers.get(name)
    return bool(w and w.get("heartbeat_at", 0) >= since - 1 and w.get("state") in ("READY", "DRAINING"))


def grow(cfg: Config, path: Path, inv: Inventory, name: str, given: dict[str, Any], images: list[str],
         start: Callable[[Inventory, list[str]], object], say: Callable[[str], None] = print) -> None:
    """``hosts add``: a new inventory entry (fields not given are the first host's), provisioned, joined,
    its Worker started, Ready. The inventory file is only rewritten when the entry is valid."""
    like = inv.hosts[0] if inv.hosts else None
    fields = {k: given.get(k) or (getattr(like, k) if like else None) for k in
              ("user", "key", "repo", "run_dir", "docker_url", "port", "cores", "memory")}
    missing = [k for k in ("user", "key", "repo", "run_dir") if not fields[k]]
    if missing:
        raise InventoryError(f"hosts add needs --{missing[0].replace('_', '-')} (no other host to copy it from)")
    host = RemoteHost(name=name, address=given["address"], **{k: v for k, v in fields.items() if v is not None})
    manager, control = resolve_addresses(cfg, Inventory(inv.known_hosts, [*inv.hosts, host], inv.manager_address),
                                         str(path))
    apply_control_address(cfg, manager, control)
    inv, commit = add_host(path, host)  # validated now; the file changes only once the host is Ready
    host = inv.get(name)
    started = time.time()
    bring_up_hosts(cfg, inv, [host], images, say)
    start(inv, [name])
    store = Store.connect(cfg, "management")
    try:
        wait_ready(cfg, [host], lambda n: registered(store, n, started), say=say)
    finally:
        store.close()
    commit()


def shrink(cfg: Config, path: Path, inv: Inventory, name: str, emulated: bool,
           stop: Callable[[Inventory], object], drain_timeout: float = 120.0,
           say: Callable[[str], None] = print) -> None:
    """``hosts remove``: drain the host (its jobs restart elsewhere) and wait until it holds no claim (bounded:
    a dead host never empties), stop its Worker, remove our containers there, leave the Swarm and the
    manager's node list, forget its Worker record, drop it from the inventory."""
    h = inv.get(name)
    single = Inventory(inv.known_hosts, [h], inv.manager_address, inv.swarm_pool)
    store = Store.connect(cfg, "management")
    try:
        if store.workers.set_drain(name, True) is not None:
            say(f"{name}: draining")
            deadline = time.monotonic() + drain_timeout
            while time.monotonic() < deadline and (store.workers.get(name) or {}).get("allocations"):
                time.sleep(0.5)
            left = (store.workers.get(name) or {}).get("allocations") or {}
            if left:
                say(f"{name}: still holds {len(left)} claim(s) after {drain_timeout:.0f}s; removing it anyway")
        stop(single)
        clean_workloads(cfg, single, h)
        if not emulated:
            leave(cfg, single, h, say)
        if not store.workers.forget(name):
            say(f"{name}: its Worker record goes once its work has moved away")
    finally:
        store.close()
    drop_host(path, name)
    say(f"{name}: removed from the cluster and from {path}")
