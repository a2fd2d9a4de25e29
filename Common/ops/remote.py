"""Worker hosts over SSH (paramiko): an inventory, verified host keys, and Worker processes started,
stopped, queried and their logs collected.

Security: host keys are checked against a known_hosts file and an unknown or changed key is refused
(paramiko's RejectPolicy) unless the operator explicitly trusts it once (``trust_host_key``, which
records it); only key authentication, no password anywhere; every remote command is an argument list
quoted with shlex, and the only shell code sent is constant.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import shlex
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import paramiko

from Common.jobspec import NODE_NAME
from Common.keys import key_file_name
from Common.ops.supervise import ALIVE_STATES, Program, SuperviseError, Supervisor
from Common.resources import parse_cpuset, parse_memory

T = TypeVar("T")


class RemoteError(RuntimeError):
    pass


@dataclass
class RemoteHost:
    name: str
    address: str
    user: str
    key: str
    repo: str  # where the code and its .venv are on that host
    run_dir: str  # the Worker's run directory there (node key, pid, log)
    docker_url: str = "unix:///var/run/docker.sock"
    port: int = 22
    role: str = "worker"
    cores: str = ""
    memory: str = ""
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Inventory:
    known_hosts: str
    hosts: list[RemoteHost]
    # The Swarm manager's address as the hosts reach it (top-level ``manager_address``); empty: the
    # config's globalmanager.advertise_addr. See Common/ops/inventory.py.
    manager_address: str = ""
    swarm_pool: str = ""  # the Swarm's default address pool when `up` initialises it; empty: 10.90.0.0/16

    def get(self, name: str) -> RemoteHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise RemoteError(f"no host {name!r} in the inventory")


_HOST_KEYS = {"name", "address", "port", "user", "key", "repo", "run_dir", "docker_url", "role", "cores",
              "memory", "env"}


def load_inventory(path: Path) -> Inventory:
    """Parse and validate an inventory file; RemoteError names the offending entry and key."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RemoteError(f"{path}: {exc}") from None
    known = raw.get("known_hosts")
    if not isinstance(known, str) or not known:
        raise RemoteError(f"{path}: known_hosts (a file path) is required")
    for k in raw:
        if k not in ("known_hosts", "manager_address", "swarm_pool", "host"):
            raise RemoteError(f"{path}: unknown top-level key {k!r}")
    manager_address = raw.get("manager_address", "")
    swarm_pool = raw.get("swarm_pool", "")
    try:
        if manager_address:
            ipaddress.ip_address(manager_address)
        if swarm_pool:
            ipaddress.IPv4Network(swarm_pool)
    except (TypeError, ValueError) as exc:
        raise RemoteError(f"{path}: manager_address/swarm_pool: {exc}") from None
    hosts = []
    for i, h in enumerate(raw.get("host", [])):
        where = f"{path}: host[{i}]"
        if not isinstance(h, dict):
            raise RemoteError(f"{where} must be a table")
        for k in h:
            if k not in _HOST_KEYS:
                raise RemoteError(f"{where}: unknown key {k!r}")
        for k in ("name", "address", "user", "key", "repo", "run_dir"):
            if not isinstance(h.get(k), str) or not h[k]:
                raise RemoteError(f"{where}: {k} is required (a string)")
        if not NODE_NAME.match(h["name"]):
            raise RemoteError(f"{where}: name {h['name']!r} is not a valid node name")
        port = h.get("port", 22)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise RemoteError(f"{where}: port must be 1..65535")
        if h.get("role", "worker") != "worker":
            raise RemoteError(f"{where}: role must be 'worker'")
        for k in ("repo", "run_dir"):
            if not h[k].startswith("/"):
                raise RemoteError(f"{where}: {k} must be an absolute path")
        try:
            if h.get("cores"):
                parse_cpuset(h["cores"])
            if h.get("memory"):
                parse_memory(h["memory"])
        except ValueError as exc:
            raise RemoteError(f"{where}: {exc}") from None
        env = h.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(k, str) and k.startswith("RSWARM_")
                                                and isinstance(v, str) for k, v in env.items()):
            raise RemoteError(f"{where}: env must map RSWARM_* names to strings")
        hosts.append(RemoteHost(port=port, **{k: v for k, v in h.items() if k != "port"}))
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise RemoteError(f"{path}: host names must be unique")
    return Inventory(known_hosts=known, hosts=hosts, manager_address=manager_address, swarm_pool=swarm_pool)


def write_inventory(path: Path, inv: Inventory) -> None:
    lines = [f"known_hosts = {_toml(inv.known_hosts)}"]
    lines += [f"{k} = {_toml(getattr(inv, k))}" for k in ("manager_address", "swarm_pool") if getattr(inv, k)]
    lines.append("")
    for h in inv.hosts:
        lines.append("[[host]]")
        for k in ("name", "address", "port", "user", "key", "repo", "run_dir", "docker_url", "role", "cores",
                  "memory"):
            lines.append(f"{k} = {_toml(getattr(h, k))}")
        if h.env:
            lines.append("env = { " + ", ".join(f"{k} = {_toml(v)}" for k, v in sorted(h.env.items())) + " }")
        lines.append("")
    path.write_text("\n".join(lines))


def _toml(v: Any) -> str:
    if isinstance(v, int):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _host_id(h: RemoteHost) -> str:
    return h.address if h.port == 22 else f"[{h.address}]:{h.port}"


def trust_host_key(h: RemoteHost, known_hosts: Path) -> str:
    """Fetch the host's key and record it as trusted (the operator asked for exactly this). Returns it."""
    sock = paramiko.Transport((h.address, h.port))
    try:
        sock.start_client(timeout=10)
        key = sock.get_remote_server_key()
    finally:
        sock.close()
    keys = paramiko.HostKeys()
    if known_hosts.exists():
        keys.load(str(known_hosts))
    keys.add(_host_id(h), key.get_name(), key)
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    keys.save(str(known_hosts))
    return f"{key.get_name()} {key.get_base64()}"


def _transport_errors(method: Callable[..., T]) -> Callable[..., T]:
    """A connection that drops mid-command (sshd stopped, host gone) is a RemoteError naming the host."""

    @functools.wraps(method)
    def wrapper(self: Session, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise RemoteError(f"{self.h.name}: connection lost: {exc or type(exc).__name__}") from None

    return wrapper


class Session:
    """One verified SSH connection to one host."""

    def __init__(self, h: RemoteHost, known_hosts: Path, timeout: float = 10.0) -> None:
        self.h = h
        self.client = paramiko.SSHClient()
        if not known_hosts.exists():
            raise RemoteError(f"{known_hosts} does not exist: no host key can be verified")
        self.client.load_host_keys(str(known_hosts))
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            self.client.connect(h.address, port=h.port, username=h.user, key_filename=h.key, timeout=timeout,
                                allow_agent=False, look_for_keys=False, auth_timeout=timeout, banner_timeout=timeout)
        except paramiko.BadHostKeyException:
            raise RemoteError(f"{h.name}: its host key CHANGED since it was trusted; refusing (if this is "
                              f"expected, remove the old key from {known_hosts})") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise RemoteError(f"{h.name}: unknown host key; refusing (verify it, then trust it once with "
                                  f"--trust-host-key)") from None
            raise RemoteError(f"{h.name}: {exc}") from None
        except OSError as exc:
            raise RemoteError(f"{h.name}: cannot connect to {h.address}:{h.port}: {exc}") from None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: Any) -> None:
        self.client.close()

    @_transport_errors
    def run(self, argv: list[str], timeout: float = 60.0) -> tuple[int, str, str]:
        _stdin, out, err = self.client.exec_command(shlex.join(argv), timeout=timeout)
        rc = out.channel.recv_exit_status()
        return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")

    def check(self, argv: list[str], timeout: float = 60.0) -> str:
        rc, out, err = self.run(argv, timeout)
        if rc != 0:
            raise RemoteError(f"{self.h.name}: {argv[0]} exited {rc}: {err.strip() or out.strip()}")
        return out

    @_transport_errors
    def put_text(self, path: str, text: str, mode: int) -> None:
        sftp = self.client.open_sftp()
        try:
            with sftp.open(path, "w") as f:
                f.chmod(mode)  # before the secret is written, not after
                f.write(text)
            sftp.chmod(path, mode)
        finally:
            sftp.close()

    @_transport_errors
    def get_text(self, path: str, limit: int = 1 << 20) -> str:
        sftp = self.client.open_sftp()
        try:
            size = sftp.stat(path).st_size or 0
            with sftp.open(path, "r") as f:
                if size > limit:
                    f.seek(size - limit)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        finally:
            sftp.close()

    @_transport_errors
    def ship(self, root: Path, files: list[str], dest: str) -> int:
        """Copy ``files`` (paths relative to ``root``) to ``dest`` file by file, never via an archive."""
        sftp = self.client.open_sftp()
        made: set[str] = set()
        try:
            for rel in files:
                if rel.startswith("/") or ".." in PurePosixPath(rel).parts:
                    raise RemoteError(f"refusing to ship {rel!r}: not a plain relative path")
                target = PurePosixPath(dest) / rel
                make_parents(sftp, target, made)
                sftp.put(str(root / rel), str(target))
                sftp.chmod(str(target), stat.S_IMODE((root / rel).stat().st_mode))
        finally:
            sftp.close()
        return len(files)


def make_parents(sftp: Any, target: PurePosixPath, made: set[str]) -> None:
    """``mkdir -p`` of ``target``'s parents over SFTP; ``made`` remembers what exists across calls."""
    for parent in reversed(target.parents):
        p = str(parent)
        if p in made or p in ("/", "."):
            continue
        try:
            sftp.stat(p)
        except FileNotFoundError:
            sftp.mkdir(p)
        made.add(p)


# ---- the Worker process on a host ----------------------------------------------------------------
# The Worker runs under a supervisord of its own on its host, in <run_dir>/supervisor (Common/ops/supervise.py):
# the config is written here and shipped over SFTP (0600, in a 0700 directory), then
# ``python -m Common.ops.supervise up|info|shutdown RUN_DIR`` runs there and answers JSON.


def worker_env(h: RemoteHost, control: dict[str, str]) -> dict[str, str]:
    env = {**control, **h.env, "RSWARM_RUN_DIR": h.run_dir, "RSWARM_WORKER_NAME": h.name,
           "RSWARM_WORKER_DOCKER_URL": h.docker_url}
    if h.cores:
        env["RSWARM_WORKER_CORES"] = h.cores
    if h.memory:
        env["RSWARM_WORKER_MEMORY"] = h.memory
    return env


def _python(h: RemoteHost) -> str:
    return f"{h.repo}/.venv/bin/python"


def _supervise(s: Session, command: str, *programs: str, timeout: float = 120.0) -> dict[str, Any]:
    """Run ``python -m Common.ops.supervise COMMAND RUN_DIR …`` on the host and parse its JSON answer."""
    argv = ["env", f"PYTHONPATH={s.h.repo}", _python(s.h), "-m", "Common.ops.supervise", command, s.h.run_dir,
            *programs]
    rc, out, err = s.run(argv, timeout)
    try:
        answer = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RemoteError(f"{s.h.name}: supervise {command} exited {rc}: {err.strip() or out.strip()}") from None
    if rc != 0 or "error" in answer:
        raise RemoteError(f"{s.h.name}: supervise {command}: {answer.get('error', err.strip())}")
    return answer


def supervision_status(s: Session) -> dict[str, Any]:
    """The host's supervisord and its programs (state, pid, uptime, restarts)."""
    return _supervise(s, "info")


def worker_status(s: Session) -> dict[str, Any] | None:
    """This host's Worker as its supervisord sees it (state, pid, uptime, restarts), or None."""
    if s.run(["test", "-S", f"{s.h.run_dir}/supervisor/supervisor.sock"])[0] != 0:
        return None
    try:
        return supervision_status(s)["processes"].get("worker")
    except RemoteError:
        return None


def worker_pid(s: Session) -> int | None:
    """The pid of this host's Worker if supervisord runs it, else None (no supervisord, or none there)."""
    w = worker_status(s)
    return w["pid"] if w and w["state"] in ALIVE_STATES else None


def start_worker(s: Session, node_key: str, control: dict[str, str],
                 mongo_credentials: dict[str, str] | None = None) -> int:
    """Start the host's Worker unless it runs. ``node_key`` (Common.keys.key_file_text) is this node's ZeroMQ
    key (the API token never leaves the control plane); ``mongo_credentials`` its MongoDB user, if any."""
    h = s.h
    python = _python(h)
    if s.run(["test", "-x", python])[0] != 0:
        raise RemoteError(f"{h.name}: {python} is missing: ship the code (Management.py hosts ship) and run "
                          f"`bash dependences.sh Worker` there")
    s.check(["mkdir", "-p", "-m", "700", h.run_dir, f"{h.run_dir}/supervisor"])
    s.check(["chmod", "700", h.run_dir, f"{h.run_dir}/supervisor"])
    s.check(["mkdir", "-p", f"{h.run_dir}/logs"])
    s.put_text(f"{h.run_dir}/{key_file_name(h.name)}", node_key, 0o600)
    if mongo_credentials:  # read by Store.connect (Common/store/credentials.py); the directory is 0700
        s.check(["mkdir", "-p", "-m", "700", f"{h.run_dir}/secrets"])
        s.put_text(f"{h.run_dir}/secrets/mongo-worker.json", json.dumps(mongo_credentials), 0o600)
    env = {**worker_env(h, control), "PYTHONPATH": h.repo, "RSWARM_SUPERVISION_METRICS": "1"}
    sup = Supervisor(Path(h.run_dir), python=python)  # paths only: nothing is touched on this side
    try:
        conf = sup.render([Program("worker", [python, "-m", "Worker"], env, directory=h.repo)], f"rswarm-{h.name}",
                          h.repo)
    except SuperviseError as exc:
        raise RemoteError(f"{h.name}: {exc}") from None
    s.put_text(str(sup.conf), conf, 0o600)
    answer = _supervise(s, "up", "worker")
    w = answer["processes"].get("worker")
    if not w or w["state"] not in ALIVE_STATES or not w["pid"]:
        raise RemoteError(f"{h.name}: the Worker is not running ({w and w['state']}):\n"
                          f"{s.get_text(f'{h.run_dir}/logs/worker.log')[-1500:]}")
    return int(w["pid"])


def stop_worker(s: Session, timeout: float = 15.0) -> bool:
    """Stop the host's supervisord and its Worker (and sweep anything left of that run dir)."""
    if s.run(["test", "-e", f"{s.h.run_dir}/supervisor/supervisord.conf"])[0] != 0:
        return False
    was = worker_pid(s) is not None
    _supervise(s, "shutdown", timeout=timeout + 60)
    return was
