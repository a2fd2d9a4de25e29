"""`up --inventory` on hosts prepared the way an operator prepares machines — by this test, not by `cluster up`.

Each host is a network namespace on a bridge running only sshd (key authentication, its own generated host
key, listed in a known_hosts file written here) and a dockerd that is in no Swarm. The Swarm manager is an
engine of its own in a namespace too (never this machine's root engine); the GlobalManager drives it
through its docker_url and the control plane listens on the bridge address (control_address).
Everything made here carries the prefix ``rswinv<slot>`` and is removed by those names, also what a
crashed earlier run left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import SLOT
from tests.helpers import Api, sleeper, task_job, wait_for

ROOT = Path(__file__).resolve().parent.parent
P = f"rswinv{SLOT}"  # every name this test makes starts with it
BRIDGE = f"{P}br"
NET = "10.177.0"  # the brief's private range for this test; the Swarm's pools come from 10.178.0.0/16
BRIDGE_ADDR = f"{NET}.254"
DATA = Path(f"/var/lib/{P}")
SOCKS = Path(f"/run/{P}")  # short: unix socket paths stay under 108 bytes
HEARTBEAT_TIMEOUT = 6.0
MANAGER = (f"{P}-m", f"{NET}.1")
HOSTS = [(f"{P}-h{i}", f"{NET}.{10 + i}") for i in (1, 2, 3)]
pytestmark = pytest.mark.system

# Run inside `nsenter --net=NS -- unshare --mount --uts --propagation slave` (docs: /work ENVIRONMENT):
# own sysfs for the namespace, the cgroup tree kept, own hostname; a unix socket only (no TCP listener).
DOCKERD = r"""
set -e
d="$1"; name="$2"
mkdir -p "$d/cg"
mount --rbind /sys/fs/cgroup "$d/cg"
mount -t sysfs sysfs /sys
mount --rbind "$d/cg" /sys/fs/cgroup
hostname "$name"
exec dockerd --data-root "$3" --exec-root "$d/exec" --pidfile "$d/docker.pid" -H "unix://$d/docker.sock" \
  --cgroup-parent "/$name" --storage-driver overlay2
"""


def run(argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv}: {res.stderr or res.stdout}")
    return res


def sock(name: str) -> str:
    return f"unix://{SOCKS / name / 'docker.sock'}"


def veth(name: str) -> str:
    return f"{P}v{name.rsplit('-', 1)[1]}"


def our_netns() -> list[str]:
    return sorted(p.name for p in Path("/run/netns").glob(f"{P}-*")) if Path("/run/netns").exists() else []


def worker_pids(name: str) -> list[int]:
    """The Worker processes running in host ``name``'s network namespace."""
    out = []
    for pid in netns_pids(name):
        with contextlib.suppress(OSError):
            if b"-m\x00Worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def netns_pids(name: str) -> list[int]:
    return [int(p) for p in run(["ip", "netns", "pids", name], check=False).stdout.split() if p.isdigit()]


def our_cgroups() -> list[Path]:
    found = [d for top in Path("/sys/fs/cgroup").glob(f"*/{P}-*") for d in [top, *top.rglob("*")] if d.is_dir()]
    found += [d for top in Path("/sys/fs/cgroup").glob(f"{P}-*") for d in [top, *top.rglob("*")] if d.is_dir()]
    return sorted(set(found), key=lambda d: len(d.parts), reverse=True)


FORWARD = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


def teardown_hosts() -> None:
    """Remove every host of this test by name: containers, every process in the namespaces, the namespaces,
    the bridge, the FORWARD rule, the directories."""
    names = our_netns()
    for name in names:
        if (SOCKS / name / "docker.sock").exists():
            ids = run(["docker", "-H", sock(name), "ps", "-aq"], check=False, timeout=30).stdout.split()
            if ids:
                run(["docker", "-H", sock(name), "rm", "-f", *ids], check=False, timeout=120)
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        for name in names:
            for pid in netns_pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(netns_pids(n) for n in names):
            time.sleep(0.2)
    for name in names:
        run(["ip", "netns", "del", name], check=False)
    while run(["iptables", "-C", *FORWARD], check=False).returncode == 0:
        run(["iptables", "-D", *FORWARD], check=False)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        run(["ip", "link", "del", BRIDGE], check=False)
    for cg in our_cgroups():  # the dockerds' --cgroup-parent directories, deepest first
        with contextlib.suppress(OSError):
            cg.rmdir()
    for d in (SOCKS, DATA):
        if d.exists():
            for m in sorted((line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                             if line.split()[1].startswith(str(d) + "/")), reverse=True):
                run(["umount", "-l", m], check=False)
            shutil.rmtree(d, ignore_errors=True)


def prepare_host(name: str, addr: str, client_pub: str, with_sshd: bool) -> str:
    """A namespace with a veth into the bridge, a dockerd in no Swarm, and (workers) sshd. Its host key."""
    run(["ip", "netns", "add", name])
    run(["ip", "link", "add", veth(name), "type", "veth", "peer", "name", "eth0", "netns", name])
    run(["ip", "link", "set", veth(name), "master", BRIDGE, "up"])
    run(["ip", "-n", name, "addr", "add", f"{addr}/24", "dev", "eth0"])
    run(["ip", "-n", name, "link", "set", "eth0", "up"])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    (SOCKS / name).mkdir(parents=True, exist_ok=True)
    d = DATA / name
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "dockerd.log", "ab") as log:
        subprocess.Popen(["nsenter", f"--net=/run/netns/{name}", "--", "unshare", "--mount", "--uts", "--propagation",
                          "slave", "--", "sh", "-c", DOCKERD, "node", str(SOCKS / name), name, str(d / "docker")],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    if not with_sshd:
        return ""
    ssh = d / "ssh"
    ssh.mkdir()
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(ssh / "host_key")])
    (ssh / "authorized_keys").write_text(client_pub)
    (ssh / "authorized_keys").chmod(0o600)
    (ssh / "sshd_config").write_text("\n".join([
        "Port 22", f"ListenAddress {addr}", f"HostKey {ssh / 'host_key'}", f"PidFile {ssh / 'sshd.pid'}",
        f"AuthorizedKeysFile {ssh / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "X11Forwarding no",
        "Subsystem sftp /usr/lib/openssh/sftp-server", ""]))
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.Popen(["ip", "netns", "exec", name, "/usr/sbin/sshd", "-D", "-f", str(ssh / "sshd_config"), "-E",
                      str(ssh / "sshd.log")], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    return (ssh / "host_key.pub").read_text().split()[1]


def engine(name: str) -> docker.APIClient:
    return docker.APIClient(base_url=sock(name), timeout=30)


def engine_answers(name: str) -> bool:
    try:
        return bool(engine(name).version())
    except Exception:
        return False


class Hosts:
    def __init__(self, run_dir: Path, env: dict[str, str], inventory: Path) -> None:
        self.run_dir, self.env, self.inventory = run_dir, env, inventory
        self.api = Api(f"http://127.0.0.1:{env['RSWARM_FRONTEND_PORT']}", (run_dir / "api_token").read_text().strip())

    def mgmt(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "Management.py"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)

    def nodes(self) -> list[dict]:
        return engine(MANAGER[0]).nodes()

    def workers(self) -> dict[str, dict]:
        return {w["id"]: w for w in self.api.get("/workers").json()["items"]}


def _env(run_dir: Path) -> dict[str, str]:
    base = 19050 + 100 * SLOT  # clear of conftest's 15000+ and test_cluster's 19000+ port ranges
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSWARM_") and k not in ("MONGO_URI", "DOCKER_HOST")}
    env.update({
        "RSWARM_RUN_DIR": str(run_dir), "RSWARM_CLUSTER_ID": f"rswinv{SLOT}",
        "RSWARM_CONTROL_ADDRESS": BRIDGE_ADDR, "RSWARM_GLOBALMANAGER_DOCKER_URL": sock(MANAGER[0]),
        "RSWARM_FRONTEND_PORT": str(base + 1), "RSWARM_GLOBALMANAGER_PORT": str(base),
        "RSWARM_GLOBALMANAGER_PUB_PORT": str(base + 7), "RSWARM_JOBMANAGER_HINT_PORT": str(base + 5),
        "RSWARM_DISCOVERY_PORT": str(base + 6), "RSWARM_GLOBALMANAGER_METRICS_PORT": str(base + 10),
        "RSWARM_JOBMANAGER_METRICS_PORT": str(base + 11), "RSWARM_DISCOVERY_METRICS_PORT": str(base + 12),
        "RSWARM_WORKER_METRICS_PORT": str(base + 13), "RSWARM_MONGO_EMBEDDED_PORT": str(29317 + SLOT),
        "RSWARM_GLOBALMANAGER_NETWORK_POOL": "10.178.128.0/17",
        "RSWARM_DISCOVERY_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
        "RSWARM_DISCOVERY_SWEEP_SECONDS": "1", "RSWARM_WORKER_HEARTBEAT_SECONDS": "1",
        "RSWARM_WORKER_SWEEP_SECONDS": "2", "RSWARM_GLOBALMANAGER_SWEEP_SECONDS": "2",
    })
    return env


RUN_DIR = Path(f"/tmp/rswarm-test{SLOT}-inventory")


def _stop_control_plane(env: dict[str, str]) -> None:
    if RUN_DIR.exists():
        subprocess.run([sys.executable, str(ROOT / "Management.py"), "down"], env=env, capture_output=True,
                       timeout=300, cwd=ROOT)
        shutil.rmtree(RUN_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    run_dir = RUN_DIR / "run"
    env = _env(run_dir)
    _stop_control_plane(env)  # a crashed earlier run: its processes (by their pid records), then its hosts
    teardown_hosts()
    RUN_DIR.mkdir(parents=True)
    key = RUN_DIR / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", P, "-f", str(key)])
    run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "addr", "add", f"{BRIDGE_ADDR}/24", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    run(["iptables", "-I", "FORWARD", "1", *FORWARD[1:]])
    pub = (RUN_DIR / "id_ed25519.pub").read_text()
    prepare_host(*MANAGER, pub, with_sshd=False)
    known = [f"{addr} ssh-ed25519 {prepare_host(name, addr, pub, with_sshd=True)}\n" for name, addr in HOSTS]
    (RUN_DIR / "known_hosts").write_text("".join(known))
    for name in [MANAGER[0], *(h for h, _ in HOSTS)]:
        wait_for(f"dockerd in {name}", lambda name=name: engine_answers(name), 120)
        assert engine(name).info()["Swarm"]["LocalNodeState"] == "inactive"
    inventory = RUN_DIR / "inventory.toml"
    inventory.write_text("\n".join([
        f'known_hosts = "{RUN_DIR / "known_hosts"}"', f'manager_address = "{MANAGER[1]}"',
        'swarm_pool = "10.178.0.0/17"', ""] + [line for name, addr in HOSTS for line in (
            "[[host]]", f'name = "{name}"', f'address = "{addr}"', 'user = "root"', f'key = "{key}"',
            f'repo = "{DATA / name / "repo"}"', f'run_dir = "{DATA / name / "run"}"',
            f'docker_url = "{sock(name)}"', "")]))
    env["RSWARM_RUN_DIR"] = str(run_dir)
    r = subprocess.run([sys.executable, str(ROOT / "Management.py"), "up", "--inventory", str(inventory)], env=env,
                       capture_output=True, text=True, timeout=1200, cwd=ROOT)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    h = Hosts(run_dir, env, inventory)
    h.up_output = r.stdout  # type: ignore[attr-defined]
    yield h
    _stop_control_plane(env)
    teardown_hosts()


def test_up_inventory_makes_three_ready_swarm_nodes_each_with_a_worker(hosts: Hosts) -> None:
    nodes = hosts.nodes()
    workers = [n for n in nodes if n["Spec"]["Role"] == "worker"]
    assert sorted(n["Description"]["Hostname"] for n in workers) == [h for h, _ in HOSTS]
    assert all(n["Status"]["State"] == "ready" for n in nodes)
    # The manager advertises manager_address, not loopback; each host joined at its own address.
    assert engine(MANAGER[0]).info()["Swarm"]["NodeAddr"] == MANAGER[1]
    assert sorted(n["Status"]["Addr"] for n in workers) == [a for _, a in HOSTS]
    ws = hosts.workers()
    assert sorted(ws) == [h for h, _ in HOSTS] and all(w["state"] == "READY" for w in ws.values())
    for name, _ in HOSTS:
        assert f"{name}: Swarm node Ready, Worker READY" in hosts.up_output  # type: ignore[attr-defined]
        # The code was shipped into the host's own directory and its Worker runs from there.
        (pid,) = worker_pids(name)  # one Worker, run by that host's supervisord
        assert Path(f"/proc/{pid}/cwd").resolve() == DATA / name / "repo"
        assert (DATA / name / "repo" / ".venv" / "bin" / "python").exists()
        assert "rswarm/task:1" in {t for i in engine(name).images() for t in i.get("RepoTags") or []}
        log = (hosts.run_dir / "logs" / "hosts" / f"{name}.log").read_text()
        assert "dependences.sh Worker" in log and "ready (role Worker" in log


def test_the_join_token_is_in_no_log_file_or_argv(hosts: Hosts) -> None:
    token = engine(MANAGER[0]).inspect_swarm()["JoinTokens"]["Worker"]
    for f in [*hosts.run_dir.rglob("*"), *DATA.rglob("*.log")]:
        if f.is_file() and f.stat().st_size < 50 << 20:
            assert token.encode() not in f.read_bytes(), f
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            assert token.encode() not in (proc / "cmdline").read_bytes()


def test_up_again_is_idempotent_and_quick_to_provision(hosts: Hosts) -> None:
    before = {n["ID"] for n in hosts.nodes()}
    r = hosts.mgmt("up", "--inventory", str(hosts.inventory))
    assert r.returncode == 0, r.stdout + r.stderr
    assert {n["ID"] for n in hosts.nodes()} == before
    print(r.stdout)
    logs = {name: (hosts.run_dir / "logs" / "hosts" / f"{name}.log").read_text() for name, _ in HOSTS}
    assert all(log.count("(0 loaded)") >= 1 for log in logs.values()), logs


def test_a_three_task_job_spreads_over_the_hosts_and_its_tasks_reach_each_other_by_name(hosts: Hosts) -> None:
    api = hosts.api

    def pinger(others: list[str]) -> dict:
        # Wait (bounded) until the peers' names resolve, then ping each twice over the overlay.
        script = "; ".join(f"for i in $(seq 60); do ping -c 1 -W 1 {o} >/dev/null 2>&1 && break; sleep 1; done"
                           for o in others) + "; " + " && ".join(f"ping -c 2 -W 5 {o}" for o in others)
        script += "; rc=$?; sleep 20; exit $rc"  # stay reachable while the peers ping this one
        return {"image": "rswarm/task:1", "req_cores": 2, "mem_limit": "32m", "command": ["sh", "-c", script]}

    job_id = api.submit(task_job({"a": pinger(["b", "c"]), "b": pinger(["a", "c"]), "c": pinger(["a", "b"])}))
    done = api.wait_state(job_id, {"COMPLETED", "FAILED"}, timeout=240)
    assert done["state"] == "COMPLETED", json.dumps(done, indent=1)
    assert sorted(t["node"] for t in done["tasks"].values()) == [h for h, _ in HOSTS]
    for t in done["tasks"].values():
        assert t["exit_code"] == 0 and t["log_tail"].count("bytes from") == 4, t


def test_a_host_whose_link_goes_down_loses_its_work_then_comes_back_ready(hosts: Hosts) -> None:
    api = hosts.api
    job_id = api.submit(task_job({"t": sleeper(600, cores=2, mem="32m")}))
    first = api.wait_tasks(job_id, "RUNNING", timeout=120)["tasks"]["t"]
    victim = first["node"]
    link_down_at = time.time()
    run(["ip", "link", "set", veth(victim), "down"])
    try:
        # The bound is liveness only; the measured time is printed (Discovery declares the host DOWN after
        # HEARTBEAT_TIMEOUT, then the job restarts elsewhere as a new attempt).
        moved = wait_for("the task to run on another host",
                         lambda: (t := api.job(job_id)["tasks"]["t"])["state"] == "RUNNING" and t["node"] != victim
                         and t, HEARTBEAT_TIMEOUT + 60)
        took = moved["state_times"]["RUNNING"] - link_down_at
        print(f"link down -> task RUNNING on {moved['node']} after {took:.1f}s "
              f"(heartbeat timeout {HEARTBEAT_TIMEOUT}s)", flush=True)
        assert moved["attempt"] == first["attempt"] + 1 and "node down" in moved["reason"]
        assert hosts.workers()[victim]["state"] == "DOWN"
    finally:
        run(["ip", "link", "set", veth(victim), "up"])
    wait_for("the host to be READY again", lambda: hosts.workers()[victim]["state"] == "READY", 120)
    wait_for("its Swarm node to be ready again", lambda: all(n["Status"]["State"] == "ready" for n in hosts.nodes()),
             120)
    assert api.delete(f"/jobs/{job_id}").status_code == 202
    api.wait_state(job_id, "CANCELLED", timeout=120)


def test_hosts_remove_then_add_shrinks_and_grows_the_cluster(hosts: Hosts) -> None:
    name, addr = HOSTS[2]
    r = hosts.mgmt("hosts", "remove", name, "--inventory", str(hosts.inventory))
    assert r.returncode == 0, r.stdout + r.stderr
    assert name not in {n["Description"]["Hostname"] for n in hosts.nodes()}
    assert engine(name).info()["Swarm"]["LocalNodeState"] == "inactive"
    assert f'name = "{name}"' not in hosts.inventory.read_text()
    assert name not in hosts.workers(), (r.stdout, hosts.workers().get(name))  # drained first, then forgotten
    assert worker_pids(name) == []
    # A step that fails names the host and the step, and leaves the inventory as it was.
    before = hosts.inventory.read_text()
    r = hosts.mgmt("hosts", "add", f"{P}-hx", "--address", addr, "--repo", "/proc/no-such-dir/repo", "--run-dir",
                   str(DATA / name / "run"), "--docker-url", sock(name), "--inventory", str(hosts.inventory))
    assert r.returncode == 1 and f"{P}-hx: step 'ship code' failed" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and hosts.inventory.read_text() == before
    r = hosts.mgmt("hosts", "add", name, "--address", addr, "--repo", str(DATA / name / "repo"), "--run-dir",
                   str(DATA / name / "run"), "--docker-url", sock(name), "--inventory", str(hosts.inventory))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{name}: Swarm node Ready, Worker READY" in r.stdout
    assert f'name = "{name}"' in hosts.inventory.read_text()
    assert hosts.workers()[name]["state"] == "READY"
    r = hosts.mgmt("hosts", "remove", name, "--inventory", str(hosts.inventory))
    assert r.returncode == 0, r.stdout + r.stderr


def test_down_leave_then_teardown_leaves_nothing(hosts: Hosts) -> None:
    r = hosts.mgmt("down", "--inventory", str(hosts.inventory), "--leave")
    assert r.returncode == 0, r.stdout + r.stderr
    nodes = engine(MANAGER[0]).nodes()
    assert [n["Spec"]["Role"] for n in nodes] == ["manager"], nodes  # every host left and was removed
    for name, _ in HOSTS:
        assert engine(name).info()["Swarm"]["LocalNodeState"] == "inactive"
        assert worker_pids(name) == []
    for pid_file in (hosts.run_dir / "pids").glob("*.json"):
        raise AssertionError(f"a process record is left: {pid_file}")
    teardown_hosts()
    assert our_netns() == []
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    assert run(["iptables", "-C", *FORWARD], check=False).returncode != 0
    assert not DATA.exists() and not SOCKS.exists()
    assert our_cgroups() == []
    leftover = [p for p in Path("/proc").glob("[0-9]*") if (p / "cmdline").exists()
                and str(DATA).encode() in (p / "cmdline").read_bytes()]
    assert leftover == []
