"""A real multi-node Docker Swarm on one machine: every emulated host is a network namespace with its own
dockerd (own hostname, data-root, exec-root, socket) and its own sshd, wired to a host bridge.

    host bridge rswbr-<tag>  10.77.0.254/24  (the control plane listens here in cluster mode)
      ├─ veth ─ netns rswc-<tag>-m    10.77.0.1   dockerd = Swarm manager (advertise 10.77.0.1)
      ├─ veth ─ netns rswc-<tag>-w1   10.77.0.11  dockerd (Swarm worker) + sshd -> Worker process
      └─ …      netns rswc-<tag>-wN   10.77.0.(10+N)

Names carry the project prefix and the cluster's tag, so ``up`` can remove what a crashed earlier run
left behind and ``down`` removes exactly what was made: namespaces, bridge, iptables rule, daemons (every
process in each namespace), data and socket directories. Commands are argument lists; the one shell
script (the mount dance a dockerd in a namespace needs, see ENVIRONMENT.md) is a constant that takes
its values as positional parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker

log = logging.getLogger(__name__)

DATA_ROOT = Path("/var/lib/rswarm-emu")
SOCK_ROOT = Path("/run/rswarm-emu")  # short: a unix socket path must stay under 108 bytes
SWARM_POOL = "10.90.0.0/16"
CRIU_DIR = "/usr/local/lib/rswarm-criu"  # built by dependences.sh

# Run inside `nsenter --net=NS -- unshare --mount --uts --propagation slave`: keep the cgroup tree, give
# the namespace its own sysfs (so dockerd sees its own interfaces), set the hostname, exec dockerd.
# The engine listens on its unix socket only: an unauthenticated TCP API (the old -H tcp://ADDR:2375)
# would give root on this machine to anything that reaches the bridge, job containers included. Every
# user of an emulated host's engine (GlobalManager, the Workers started over SSH, `cluster status`,
# tests) runs on this machine and uses Host.docker_url, the socket.
NODE_SCRIPT = r"""
set -e
sock_dir="$1"; data="$2"; name="$3"; experimental="$4"
mkdir -p "$sock_dir/cg"
mount --rbind /sys/fs/cgroup "$sock_dir/cg"
mount -t sysfs sysfs /sys
mount --rbind "$sock_dir/cg" /sys/fs/cgroup
hostname "$name"
set -- --data-root "$data" --exec-root "$sock_dir/exec" --pidfile "$sock_dir/docker.pid" \
  -H "unix://$sock_dir/docker.sock" --cgroup-parent "/$name" \
  --storage-driver overlay2 --label "node=$name"
if [ "$experimental" = 1 ]; then set -- "$@" --experimental; fi
exec dockerd "$@"
"""


class ClusterError(RuntimeError):
    pass


def run(argv: list[str], check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise ClusterError(f"{' '.join(argv)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


@dataclass
class Host:
    name: str  # also its netns, hostname and Worker name
    address: str
    role: str  # manager | worker
    sock_dir: str
    data_dir: str
    cores: str = ""  # declared (emulated) capacity; empty = the real one
    memory: str = ""

    @property
    def netns(self) -> str:
        return self.name

    @property
    def docker_url(self) -> str:
        return f"unix://{self.sock_dir}/docker.sock"

    @property
    def veth(self) -> str:
        return "rswv" + self.name.removeprefix("rswc")[:11]


@dataclass
class ClusterSpec:
    tag: str
    subnet: str
    hosts: list[Host] = field(default_factory=list)
    created_at: float = 0.0
    experimental: bool = False

    @property
    def bridge(self) -> str:
        return f"rswbr-{self.tag}"

    @property
    def bridge_address(self) -> str:
        return str(list(ipaddress.IPv4Network(self.subnet).hosts())[-1])

    @property
    def manager(self) -> Host:
        return next(h for h in self.hosts if h.role == "manager")

    @property
    def workers(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "worker"]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ClusterSpec | None:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return cls(tag=raw["tag"], subnet=raw["subnet"], hosts=[Host(**h) for h in raw["hosts"]],
                   created_at=raw.get("created_at", 0.0), experimental=raw.get("experimental", False))


def plan(tag: str, subnet: str, workers: int, cores: str = "", memory: str = "") -> ClusterSpec:
    if not tag.isalnum() or len(tag) > 6:
        raise ClusterError("the cluster tag must be 1-6 letters or digits")
    net = ipaddress.IPv4Network(subnet)
    addrs = list(net.hosts())
    if workers < 1 or workers + 12 > len(addrs):
        raise ClusterError(f"--workers must be 1..{len(addrs) - 12} for subnet {subnet}")
    spec = ClusterSpec(tag=tag, subnet=str(net))

    def host(name: str, addr: str, role: str) -> Host:
        return Host(name=name, address=addr, role=role, sock_dir=str(SOCK_ROOT / tag / name),
                    data_dir=str(DATA_ROOT / tag / name), cores=cores if role == "worker" else "",
                    memory=memory if role == "worker" else "")

    spec.hosts.append(host(f"rswc-{tag}-m", str(addrs[0]), "manager"))
    for i in range(1, workers + 1):
        spec.hosts.append(host(f"rswc-{tag}-w{i}", str(addrs[9 + i]), "worker"))
    return spec


# ---- the pieces ---------------------------------------------------------------------------------
def _netns_exists(name: str) -> bool:
    return Path(f"/run/netns/{name}").exists()


def _netns_pids(name: str) -> list[int]:
    if not _netns_exists(name):
        return []
    out = run(["ip", "netns", "pids", name], check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def _forward_rule(bridge: str) -> list[str]:
    return ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]


def make_network(spec: ClusterSpec) -> None:
    prefix = ipaddress.IPv4Network(spec.subnet).prefixlen
    run(["ip", "link", "add", spec.bridge, "type", "bridge"])
    run(["ip", "addr", "add", f"{spec.bridge_address}/{prefix}", "dev", spec.bridge])
    run(["ip", "link", "set", spec.bridge, "up"])
    # Docker sets FORWARD's policy to DROP with bridge netfilter on: let our hosts talk to each other.
    if run(["iptables", "-C", *_forward_rule(spec.bridge)], check=False).returncode != 0:
        run(["iptables", "-I", _forward_rule(spec.bridge)[0], "1", *_forward_rule(spec.bridge)[1:]])
    for h in spec.hosts:
        run(["ip", "netns", "add", h.netns])
        run(["ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns])
        run(["ip", "link", "set", h.veth, "master", spec.bridge, "up"])
        run(["ip", "-n", h.netns, "addr", "add", f"{h.address}/{prefix}", "dev", "eth0"])
        run(["ip", "-n", h.netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", h.netns, "link", "set", "lo", "up"])


def start_dockerd(h: Host, experimental: bool) -> None:
    Path(h.sock_dir).mkdir(parents=True, exist_ok=True)
    Path(h.data_dir).mkdir(parents=True, exist_ok=True)
    logf = open(Path(h.data_dir) / "dockerd.log", "ab")  # noqa: SIM115 - handed to the daemon
    env = dict(os.environ)
    if experimental:  # `docker checkpoint` runs criu from the daemon's PATH (see dependences.sh)
        env["PATH"] = f"{CRIU_DIR}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{h.netns}", "--", "unshare", "--mount", "--uts", "--propagation", "slave",
         "--", "sh", "-c", NODE_SCRIPT, "node", h.sock_dir, str(Path(h.data_dir) / "docker"), h.name,
         "1" if experimental else "0"],
        stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
    )
    logf.close()


def docker_answers(h: Host) -> bool:
    return run(["docker", "-H", h.docker_url, "version", "--format", "{{.Server.Version}}"], check=False,
               timeout=10).returncode == 0


def wait_until(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_sshd(h: Host, authorized_key: str) -> None:
    d = Path(h.data_dir) / "ssh"
    d.mkdir(parents=True, exist_ok=True)
    key = d / "ssh_host_ed25519_key"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", str(key)])
    (d / "authorized_keys").write_text(authorized_key)
    os.chmod(d / "authorized_keys", 0o600)
    config = d / "sshd_config"
    config.write_text("\n".join([
        "Port 22", f"ListenAddress {h.address}", f"HostKey {key}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "X11Forwarding no",
        "Subsystem sftp /usr/lib/openssh/sftp-server", "",
    ]))
    Path("/run/sshd").mkdir(exist_ok=True)
    logf = open(d / "sshd.log", "ab")  # noqa: SIM115 - handed to the daemon
    subprocess.Popen(["ip", "netns", "exec", h.netns, "/usr/sbin/sshd", "-D", "-f", str(config), "-E",
                      str(d / "sshd.log")], stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                     start_new_session=True)
    logf.close()


def host_public_key(h: Host) -> str:
    return (Path(h.data_dir) / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[1]


def sshd_answers(h: Host) -> bool:
    """The hosts are reachable from here through the bridge."""
    try:
        with socket.create_connection((h.address, 22), timeout=2) as sock:
            return sock.recv(4).startswith(b"SSH")
    except OSError:
        return False


def load_images(hosts: list[Host], images: list[str]) -> None:
    """Copy the system's images from this machine's engine into every host's engine (no registry).

    The saved archive is kept under DATA_ROOT, named after the images' ids, so the next cluster loads
    the same images without saving them again."""
    present = [i for i in images if run(["docker", "image", "inspect", i], check=False).returncode == 0]
    if not present:
        return
    ids = run(["docker", "image", "inspect", "--format", "{{.Id}}", *present]).stdout.split()
    digest = hashlib.sha256(" ".join([*present, *ids]).encode()).hexdigest()[:16]
    archive = DATA_ROOT / f"images-{digest}.tar"
    if not archive.exists():
        for old in DATA_ROOT.glob("images-*.tar"):
            old.unlink(missing_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(".partial")
        run(["docker", "save", "-o", str(partial), *present], timeout=300)
        partial.rename(archive)

    def load(h: Host) -> None:
        res = run(["docker", "-H", h.docker_url, "load", "-q", "-i", str(archive)], check=False, timeout=300)
        if res.returncode != 0:
            raise ClusterError(f"loading images into {h.name}: {res.stderr.strip()}")

    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        list(pool.map(load, hosts))


def form_swarm(spec: ClusterSpec) -> None:
    m = spec.manager
    state = run(["docker", "-H", m.docker_url, "info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout.strip()
    if state != "active":
        run(["docker", "-H", m.docker_url, "swarm", "init", "--advertise-addr", m.address, "--listen-addr",
             f"{m.address}:2377", "--default-addr-pool", SWARM_POOL])
    # The join token is read here, by the operator's own tool on the manager host, and used at once through
    # the engines' API (docker-py, in this process): it never appears in an argv, a file, a log or an API.
    token = docker.APIClient(base_url=m.docker_url, timeout=60).inspect_swarm()["JoinTokens"]["Worker"]
    for h in spec.workers:
        api = docker.APIClient(base_url=h.docker_url, timeout=60)
        if api.info()["Swarm"].get("LocalNodeState") != "active":
            api.join_swarm([f"{m.address}:2377"], token)


def swarm_nodes(spec: ClusterSpec) -> list[dict[str, str]]:
    res = run(["docker", "-H", spec.manager.docker_url, "node", "ls", "--format", "{{json .}}"], check=False)
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


# ---- up / down -----------------------------------------------------------------------------------
def remove(tag: str, spec: ClusterSpec | None = None) -> list[str]:
    """Remove everything of cluster ``tag``, found by name (works after a crash with no state file)."""
    removed: list[str] = []
    names = sorted(p.name for p in Path("/run/netns").glob(f"rswc-{tag}-*")) if Path("/run/netns").exists() else []

    def remove_containers(name: str) -> None:  # first, so that no container shim outlives its daemon
        sock = SOCK_ROOT / tag / name / "docker.sock"
        if sock.exists():
            ids = run(["docker", "-H", f"unix://{sock}", "ps", "-aq"], check=False, timeout=20).stdout.split()
            if ids:
                run(["docker", "-H", f"unix://{sock}", "rm", "-f", *ids], check=False, timeout=60)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(remove_containers, names))
    # Every process in the hosts' namespaces (dockerd, containerd, sshd, Workers started over SSH).
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        for name in names:
            for pid in _netns_pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_netns_pids(n) for n in names):
            time.sleep(0.2)
    for name in names:
        run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    bridge = f"rswbr-{tag}"
    while run(["iptables", "-C", *_forward_rule(bridge)], check=False).returncode == 0:
        run(["iptables", "-D", *_forward_rule(bridge)], check=False)
    if Path(f"/sys/class/net/{bridge}").exists():
        run(["ip", "link", "del", bridge], check=False)
        removed.append(bridge)
    for root in (SOCK_ROOT / tag, DATA_ROOT / tag):
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
            removed.append(str(root))
    return removed


def up(spec: ClusterSpec, client_public_key: str, images: list[str], experimental: bool = False) -> None:
    make_network(spec)
    for h in spec.hosts:
        start_dockerd(h, experimental)
    for h in spec.hosts:
        wait_until(f"dockerd on {h.name}", lambda h=h: docker_answers(h), 120)
    for h in spec.workers:
        start_sshd(h, client_public_key)
    form_swarm(spec)
    load_images(spec.workers, images)  # the manager runs no tasks
    for h in spec.workers:
        wait_until(f"sshd on {h.name}", lambda h=h: sshd_answers(h), 30)
    wait_until("every node Ready", lambda: sum(n.get("Status") == "Ready" for n in swarm_nodes(spec))
               == len(spec.hosts), 120)
