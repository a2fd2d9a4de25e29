"""A real EPM container and a real node EVM agent driven directly, playing the Worker's part: for agent
tests and benchmarks.

The container runs ``rswarm/task:1`` sleeping, with no capability, exactly as the Worker gives an EPM;
the node agent (Worker/epm/node.py) runs as a child process kept alive by ``Worker.epm.keeper`` as in
the Worker. The harness writes the desired and target files and reads the agent's reports through
``Worker.epm_link``. What the kernel holds is read from the host, inside the EPM's network namespace
(``nsenter --net=/proc/PID/ns/net``); the EVMs' namespace files are in the EPM directory's ``netns/``.
Containers are labelled ``rswarm.evmtest`` and named with a prefix, so leftovers of a crashed run are
removed by ``remove_leftovers``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

from Common import cgroups
from Common.evmspec import mac_for
from Worker.epm import names
from Worker.epm.keeper import Keeper
from Worker.epm_link import BadReport, EpmLink, desired_doc, parse_report, unmount_namespaces
from Worker.evms import DEFAULT_COMMAND, DEFAULT_IMAGE, EPM_SYSCTLS

LABEL = "rswarm.evmtest"  # its value: "<boot id>:<pid>" of the process that made the container
PREFIX = "rswevmtest-"

INSPECT = r"""
import json, os
from pyroute2 import IPRoute
ipr = IPRoute()
links = [(l.get_attr('IFLA_IFNAME'), l['flags'] & 1, l.get_attr('IFLA_MASTER') or 0) for l in ipr.get_links()]
NS = os.environ['RSWARM_NETNS']
ns = sorted(os.listdir(NS)) if os.path.isdir(NS) else []
print(json.dumps({'links': links, 'netns': ns}))
"""

# Names only (run on the host, inside the EPM's network namespace: nothing is charged to the EPM).
COUNT = r"""
import json, os
from pyroute2 import IPRoute
with IPRoute() as ipr:
    names = [l.get_attr('IFLA_IFNAME') for l in ipr.get_links()]
count = {p: sum(1 for n in names if n.startswith(p) and n[len(p):].isdigit()) for p in ('rswv', 'rswt', 'rswb')}
count['other'] = len(names) - sum(count.values())
NS = os.environ['RSWARM_NETNS']
count['netns'] = len(os.listdir(NS)) if os.path.isdir(NS) else 0
print(json.dumps(count))
"""

PING = r"""
import os, socket, struct, sys, time
src, dst = sys.argv[1], sys.argv[2]
fd = os.open(os.path.join(os.environ['RSWARM_NETNS'], src), os.O_RDONLY)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
if libc.setns(fd, 0x40000000) != 0:
    raise SystemExit('setns failed')
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(2.0)
def csum(b):
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
ok = 0
for i in range(3):
    hdr = struct.pack('!BBHHH', 8, 0, 0, 0x4242, i) + b'rswarm-ping'
    pkt = hdr[:2] + struct.pack('!H', csum(hdr)) + hdr[4:]
    s.sendto(pkt, (dst, 0))
    try:
        while True:
            data, addr = s.recvfrom(2048)
            ihl = (data[0] & 0xf) * 4
            if addr[0] == dst and data[ihl] == 0:
                ok += 1
                break
    except socket.timeout:
        pass
print(ok)
"""


def nsfs_mounts(netns_dir: Path) -> list[str]:
    """The names of the network namespaces mounted in ``netns_dir``, read from the kernel's mount table
    (a file that is not an nsfs mount there is not a namespace)."""
    out = []
    prefix = str(netns_dir).rstrip("/") + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_point = fields[4].replace("\\040", " ")
        fstype = fields[fields.index("-") + 1]
        if fstype == "nsfs" and mount_point.startswith(prefix) and "/" not in mount_point[len(prefix):]:
            out.append(mount_point[len(prefix):])
    return sorted(out)


def py_in_netns(pid: int, netns_dir: Path, code: str, *args: str, private_mounts: bool = False,
                timeout: float = 300) -> str:
    """Run Python on the host inside process ``pid``'s network namespace (RSWARM_NETNS: the EVMs' files).
    ``private_mounts``: in a mount namespace of its own too (what it mounts, e.g. `ip netns add`'s
    /run/netns, stays there and goes with it)."""
    env = {**os.environ, "RSWARM_NETNS": str(netns_dir)}
    private = ["unshare", "--mount", "--propagation", "private", "--"] if private_mounts else []
    res = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", *private, sys.executable, "-c", code,
                          *args], capture_output=True, env=env, timeout=timeout)
    out = res.stdout.decode(errors="replace")
    if res.returncode != 0:
        raise AssertionError(f"python in the EPM's namespace exited {res.returncode}: {out}"
                             f"{res.stderr.decode(errors='replace')[-2000:]}")
    return out


def client() -> docker.DockerClient:
    return docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)


def _owner() -> str:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot}:{os.getpid()}"


def _alive(owner: str) -> bool:
    boot, _, pid = owner.partition(":")
    if boot != _owner().partition(":")[0] or not pid.isdigit():
        return False
    return Path(f"/proc/{pid}").exists()


def remove_leftovers() -> None:
    """Containers (and directories, their namespace files unmounted) of harness runs whose process is
    gone; never a live run's."""
    c = client()
    dead: set[str] = set()
    for cont in c.containers.list(all=True, filters={"label": LABEL}):
        if not _alive(cont.labels.get(LABEL, "")):
            dead.add(cont.name)
            with contextlib.suppress(docker.errors.APIError):
                cont.remove(force=True)
    live = {cont.name for cont in c.containers.list(all=True, filters={"label": LABEL})}
    for d in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        if not any(d.name.startswith(name) for name in live):
            for epm_dir in d.iterdir() if d.is_dir() else []:
                if epm_dir.is_dir():
                    unmount_namespaces(epm_dir)
            shutil.rmtree(d, ignore_errors=True)


def addresses(n: int, subnet: str = "10.77.0.0/16", first: int = 1) -> list[tuple[int, str, str]]:
    """EVM number, address and MAC for ``n`` EVMs of a test subnet (gateway = .1)."""
    net = ipaddress.IPv4Network(subnet)
    out = []
    for i in range(n):
        seq = first + i
        ip = str(net.network_address + 1 + seq)
        out.append((seq, ip, mac_for("harness", ip)))
    return out


class EpmContainer:
    def __init__(self, devices: str = "full", mem: str = "256m", cpuset: str | None = None,
                 subnet: str = "10.77.0.0/16", op_timeout: float = 20.0, image: str = DEFAULT_IMAGE,
                 command: list[str] | None = None, network: str | None = None) -> None:
        self.devices, self.subnet, self.op_timeout = devices, ipaddress.IPv4Network(subnet), op_timeout
        self.name = PREFIX + secrets.token_hex(4)
        self.root = Path(tempfile.mkdtemp(prefix=self.name + "-"))
        self.link = EpmLink(self.root, self.name)
        self.link.open({"container": self.name, "test": True})
        self.evms: dict[int, tuple[str, str]] = {}
        self.delete: set[int] = set()
        self.rates: dict[str, dict[str, Any]] = {}
        self.batch_of: dict[int, str] = {}
        self.recorded: dict[int, str] = {}
        self.drain = False
        self.vpc_of: dict[int, str] = {}  # EVM number -> its VPC
        self.vpc: dict[str, Any] | None = None  # the desired file's local_ip and vpcs (Worker/vpcs.py's plan)
        self.written_at = 0.0
        self.reports: list[dict[str, Any]] = []
        self.bad: list[str] = []
        self.write()
        self.keeper = Keeper(str(self.root))
        self.keeper.start()
        self.docker = client()
        kwargs: dict[str, Any] = {}
        if cpuset:
            kwargs["cpuset_cpus"] = cpuset
        self.container = self.docker.containers.run(
            image, command if command is not None else (DEFAULT_COMMAND if image == DEFAULT_IMAGE else None),
            name=self.name, detach=True, labels={LABEL: _owner()},
            mem_limit=mem, memswap_limit=mem, network_mode="none" if network is None else None, network=network,
            sysctls=EPM_SYSCTLS, **kwargs)
        self.container.reload()
        self.pid = int(self.container.attrs["State"]["Pid"])
        self.link.write_target(self.pid, self.container.id, self.container.attrs["Config"]["Hostname"])

    @property
    def netns_dir(self) -> Path:
        return self.link.dir / names.NETNS_SUBDIR

    # ---- the Worker's part --------------------------------------------------------------------
    def write(self) -> None:
        # Like the Worker: only live records (a DELETED one is gone from the desired set).
        records = [{"seq": s, "ip": ip, "mac": mac, "batch": self.batch_of.get(s, "b0"),
                    "state": self.recorded.get(s, "PENDING"), "delete_requested": s in self.delete,
                    "vpc": self.vpc_of.get(s)}
                   for s, (ip, mac) in sorted(self.evms.items()) if self.recorded.get(s) != "DELETED"]
        cfg = {"devices": self.devices, "prefix": self.subnet.prefixlen,
               "gateway": str(self.subnet.network_address + 1)}
        self.link.write_desired(desired_doc("harness", "epm", 0, self.name, cfg, records, self.rates, self.drain,
                                            self.op_timeout, self.vpc))
        self.written_at = time.monotonic()

    def want(self, evms: list[tuple[int, str, str]], batch: str = "b0", rate: dict[str, Any] | None = None) -> None:
        if rate is not None:
            self.rates[batch] = rate
        for seq, ip, mac in evms:
            self.evms[seq] = (ip, mac)
            self.batch_of[seq] = batch
        self.write()

    def remove(self, seqs: list[int]) -> None:
        self.delete |= set(seqs)
        self.write()

    def forget(self, seqs: list[int]) -> None:
        """Drop from the desired file altogether (as once their records are DELETED)."""
        for s in seqs:
            self.evms.pop(s, None)
            self.delete.discard(s)
        self.write()

    def pump(self) -> list[dict[str, Any]]:
        new = []
        for data in self.link.receive():
            try:
                doc = parse_report(data)
            except BadReport as exc:
                self.bad.append(str(exc))
                continue
            new.append(doc)
            for seq, state, *_ in doc.get("items", []):
                self.recorded[seq] = state
        self.reports.extend(new)
        if time.monotonic() - self.written_at >= 2.0:  # as the Worker refreshes the recorded states
            self.write()
        return new

    def items(self) -> list[list[Any]]:
        return [it for r in self.reports for it in r.get("items", [])]

    def last_state(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for seq, state, *_ in self.items():
            out[seq] = state
        return out

    def status(self) -> dict[str, Any] | None:
        for r in reversed(self.reports):
            if "status" in r:
                return r["status"]
        return None

    def wait(self, what: str, check: Any, timeout: float = 120.0) -> Any:
        deadline = time.monotonic() + timeout
        next_look = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            self.pump()
            result = check()
            if result:
                return result
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + 2.0
                self.container.reload()
                if self.container.status != "running":
                    raise AssertionError(f"the EPM container is {self.container.status} while waiting for {what}; "
                                         f"logs:\n{self.logs()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; logs:\n{self.logs()}")

    def wait_states(self, seqs: list[int], state: str, timeout: float = 120.0) -> dict[int, str]:
        want = set(seqs)

        def check() -> dict[int, str] | None:
            states = self.last_state()
            return states if all(states.get(q) == state for q in want) else None

        return self.wait(f"{len(want)} EVMs {state}", check, timeout)

    # ---- looking inside -----------------------------------------------------------------------
    def py(self, code: str, *args: str, private_mounts: bool = False, timeout: float = 300) -> str:
        """Run Python on the host inside the EPM's network namespace (RSWARM_NETNS: the EVMs' files)."""
        return py_in_netns(self.pid, self.netns_dir, code, *args, private_mounts=private_mounts, timeout=timeout)

    def inspect(self) -> dict[str, Any]:
        return json.loads(self.py(INSPECT))

    def counts(self) -> dict[str, int]:
        return json.loads(self.py(COUNT))

    def ip(self, network: str) -> str:
        """The container's address on a Docker network."""
        self.container.reload()
        return self.container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]

    def ping(self, src_seq: int, dst_ip: str) -> int:
        return int(self.py(PING, f"rswevm-{src_seq}", dst_ip).strip())

    def in_evm(self, seq: int, code: str) -> str:
        """Run Python inside EVM ``seq``'s namespace (after setns) and return its output."""
        prologue = ("import ctypes, os; fd = os.open(os.path.join(os.environ['RSWARM_NETNS'], "
                    f"'rswevm-{seq}'), os.O_RDONLY); assert ctypes.CDLL(None).setns(fd, 0x40000000) == 0\n")
        return self.py(prologue + code)

    def agent_pid(self) -> int | None:
        """The host pid of the node agent."""
        return self.keeper.pid()

    def kill_agent(self) -> int:
        pid = self.agent_pid()
        assert pid is not None, "no agent process"
        os.kill(pid, 9)
        return pid

    def memory_usage(self) -> int:
        """Bytes charged to the container's memory cgroup (either cgroup layout)."""
        self.container.reload()
        return int(cgroups.read(self.container.attrs["State"]["Pid"], "memory_usage"))

    def logs(self) -> str:
        """The node agent's log (and its keeper's exit lines)."""
        try:
            return Path(self.keeper.log_path).read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def close(self, drain_timeout: float = 1800.0) -> None:
        """Remove the container; first let the agent drain its EVMs, as the Worker does (Worker/evms.py):
        removing an EPM with thousands of per-EVM bridges at once holds the kernel's RTNL lock for minutes."""
        with contextlib.suppress(Exception):
            self.container.reload()
            status = self.status() or {}
            if self.container.status == "running" and int(status.get("present") or 0) >= 16:
                self.drain = True
                self.write()
                self.wait("the agent to drain", lambda: (self.status() or {}).get("drained"), drain_timeout)
        with contextlib.suppress(docker.errors.APIError):
            self.container.remove(force=True)
        self.keeper.stop()
        self.link.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EpmContainer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
