"""Supervision (issue 11, item 1): every process Management.py starts is brought back by supervisord.

Real faults only: SIGKILL of each actor and of the embedded MongoDB, a real port conflict that makes a
program crash-loop, SIGKILL of supervisord itself. Nobody restarts anything by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import Management
from Common.ops import supervise
from Common.store import Store
from tests.conftest import SLOT
from tests.helpers import Api, sleeper, task_job, wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.system


def _status_json(cfg) -> dict:
    """What an operator sees: the CLI's ``status --json`` (same environment as the deployment)."""
    r = subprocess.run([sys.executable, str(ROOT / "Management.py"), "status", "--json"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT, env={**os.environ, **cfg.to_env()})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _restarts_metric(cfg, process: str) -> float | None:
    text = requests.get(f"{cfg.frontend_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("rswarm_process_restarts_total{") and f'process="{process}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def _mongo_answers(cfg) -> bool:
    try:
        s = Store.connect(cfg, "test-supervision")
        try:
            s.db.client.admin.command("ping")
        finally:
            s.close()
    except Exception:
        return False
    return True


def _heartbeat_after(cfg, t: float) -> bool:
    """The Worker sent a heartbeat and Discovery recorded it, after ``t``."""
    try:
        s = Store.connect(cfg, "test-supervision")
        try:
            w = s.workers.get(cfg.worker_name)
        finally:
            s.close()
    except Exception:
        return False
    return bool(w) and w.get("heartbeat_at", 0) > t and w.get("state") == "READY"


def _answers(cfg, api: Api, process: str, killed_at: float) -> None:
    """Wait until the restarted ``process`` does its job again."""
    if process == "mongo":
        wait_for("MongoDB to answer", lambda: _mongo_answers(cfg), 60)
        wait_for("the FrontEnd to read from it", lambda: api.get("/jobs").status_code == 200, 60)
    elif process == "frontend":
        wait_for("the FrontEnd's health", lambda: Management._http_ok(f"{cfg.frontend_url}/api/v1/health"), 60)
    elif process == "globalmanager":
        wait_for("the GlobalManager's API", lambda: Management._http_ok(f"{cfg.globalmanager_url}/api/v1/swarm"), 60)
    elif process in ("worker", "discovery"):
        wait_for("a heartbeat recorded after the kill", lambda: _heartbeat_after(cfg, killed_at), 60)
    if process in ("jobmanager", "worker", "discovery", "globalmanager", "mongo"):
        job = api.submit(task_job({"t": sleeper(0.5)}, name=f"after-kill-{process}"))
        assert api.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)["state"] == "COMPLETED"


@pytest.mark.usefixtures("idle_cluster")
@pytest.mark.parametrize("process", ["mongo", "globalmanager", "discovery", "jobmanager", "frontend", "worker"])
def test_sigkilled_process_is_restarted_by_supervisord_and_counted(system, api: Api, process: str) -> None:
    procs = Management.Processes(system)
    wait_for(f"{process} to be RUNNING", lambda: procs.sup.info()[process]["statename"] == "RUNNING", 60)
    before = _status_json(system)["processes"][process]
    old = before["pid"]
    assert before["alive"] and before["supervised"] and old
    old_children = _descendants(old)  # gunicorn's workers, for the FrontEnd and the GlobalManager
    killed_at = time.time()
    os.kill(old, signal.SIGKILL)  # a crash of that one process; nobody restarts it by hand
    new = wait_for(f"{process} to be back with a new pid",
                   lambda: (p := procs.alive(process)) not in (None, old) and _alive(p) and p, 60)
    wait_for("the old process's children to be gone", lambda: not any(_alive(c) for c in old_children), 60)
    _answers(system, api, process, killed_at)
    assert procs.alive(process) == new  # it stayed up while answering
    after = _status_json(system)["processes"][process]
    assert after["pid"] == new and after["alive"]
    assert after["restarts"] >= before["restarts"] + 1, after
    metric = wait_for("the restart in /metrics", lambda: _restarts_metric(system, process), 60)
    assert metric >= before["restarts"] + 1


@pytest.mark.usefixtures("idle_cluster")
def test_a_crash_looping_program_backs_off_goes_fatal_and_is_retried_after_a_cooldown(system, api: Api) -> None:
    """Discovery cannot bind its port (a real listener holds it): it dies at each start. supervisord retries
    with a growing delay (BACKOFF), then gives up (FATAL); once the port is free again, the event listener's
    cool-down retry brings it back without anyone touching it."""
    procs = Management.Processes(system)
    sup = procs.sup
    restarts0 = sup.status()["discovery"]["restarts"]
    assert procs.stop("discovery")
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        blocker.bind((system.discovery.host, system.discovery.port))
        blocker.listen(1)
        sup.start("discovery")
        seen: set[str] = set()

        def fatal() -> bool:
            seen.add(sup.info()["discovery"]["statename"])
            return "FATAL" in seen

        wait_for("Discovery to go FATAL", fatal, 180, interval=0.1)
        assert "BACKOFF" in seen, seen
        st = _status_json(system)["processes"]["discovery"]
        assert st["state"] == "FATAL" and not st["alive"]
        assert st["restarts"] == restarts0 + supervise.STARTRETRIES  # the first start is not a restart
        book = json.loads(sup.restarts_file.read_text())["processes"]["discovery"]
        assert book["fatal_retry_at"] is not None
    finally:
        blocker.close()
    # No one starts it: the listener's cool-down retry does.
    wait_for("Discovery to be RUNNING again", lambda: sup.info()["discovery"]["statename"] == "RUNNING",
             supervise.FATAL_COOLDOWN + 120)
    assert sup.status()["discovery"]["restarts"] == restarts0 + supervise.STARTRETRIES + 1
    _answers(system, api, "discovery", time.time())


@pytest.mark.usefixtures("idle_cluster")
def test_a_program_crashing_repeatedly_after_starting_is_held_then_started_again(system, api: Api) -> None:
    """Each crash comes after the program counted as started, so supervisord alone would restart it at once
    every time; after CRASH_LIMIT such crashes within CRASH_WINDOW the listener holds it for a cool-down."""
    procs = Management.Processes(system)
    sup = procs.sup
    restarts0 = sup.status()["discovery"]["restarts"]
    kills = 0
    # Earlier tests' crashes may still be inside the window: at most CRASH_LIMIT kills from here.
    while kills < supervise.CRASH_LIMIT:
        state = wait_for("Discovery to be RUNNING or HELD",
                         lambda: (s := sup.status()["discovery"]["state"]) in ("RUNNING", "HELD") and s, 120)
        if state == "HELD":
            break
        old = sup.pid("discovery")
        os.kill(old, signal.SIGKILL)
        kills += 1
        wait_for("Discovery restarted or held", lambda o=old: sup.pid("discovery") not in (None, o)
                 or sup.status()["discovery"]["state"] == "HELD", 60)
    st = wait_for("Discovery to be HELD", lambda: (p := _status_json(system)["processes"]["discovery"])["state"]
                  == "HELD" and p, 60)
    assert not st["alive"] and st["pid"] is None and st["held_until"] > time.time()
    assert st["restarts"] == restarts0 + kills - 1  # each kill but the last was followed by a restart at once
    # It stays down for its cool-down, then the listener starts it: no one else does.
    wait_for("Discovery to be RUNNING again", lambda: sup.info()["discovery"]["statename"] == "RUNNING",
             supervise.FATAL_COOLDOWN_MAX + 120)
    assert time.time() >= st["held_until"]
    assert sup.status()["discovery"]["restarts"] == restarts0 + kills
    _answers(system, api, "discovery", time.time())


# ---- a second, private deployment: down leaves nothing ------------------------------------------------
@pytest.fixture()
def private_env(tmp_path: Path, system) -> dict[str, str]:
    base = 18000 + 100 * SLOT
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSWARM_") and k != "MONGO_URI"}
    env.update({
        "RSWARM_RUN_DIR": str(tmp_path / "run"),
        "RSWARM_CLUSTER_ID": f"rswsup{SLOT}",
        "RSWARM_FRONTEND_PORT": str(base + 1), "RSWARM_GLOBALMANAGER_PORT": str(base),
        "RSWARM_GLOBALMANAGER_PUB_PORT": str(base + 57), "RSWARM_JOBMANAGER_HINT_PORT": str(base + 55),
        "RSWARM_DISCOVERY_PORT": str(base + 56), "RSWARM_GLOBALMANAGER_METRICS_PORT": str(base + 10),
        "RSWARM_JOBMANAGER_METRICS_PORT": str(base + 11), "RSWARM_DISCOVERY_METRICS_PORT": str(base + 12),
        "RSWARM_WORKER_METRICS_PORT": str(base + 13), "RSWARM_MONGO_EMBEDDED_PORT": str(29317 + SLOT),
        "RSWARM_GLOBALMANAGER_NETWORK_POOL": f"10.{220 + SLOT}.0.0/16",
    })
    return env


def _cli(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "Management.py"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def _marked(sock: Path) -> list[int]:
    """Every process carrying this deployment's supervisord socket in its environment."""
    marker = f"SUPERVISOR_SERVER_URL=unix://{sock}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0") and _alive(int(entry.name)):
                    out.append(int(entry.name))
    return out


@pytest.mark.parametrize("kill_supervisord", [False, True], ids=["supervisord-alive", "supervisord-sigkilled"])
def test_down_leaves_no_process_of_the_deployment(private_env: dict[str, str], tmp_path: Path,
                                                  kill_supervisord: bool) -> None:
    run = tmp_path / "run"
    sup = supervise.Supervisor(run)
    try:
        up = _cli(["up"], private_env)
        assert up.returncode == 0, up.stdout + up.stderr
        st = json.loads(_cli(["status", "--json"], private_env).stdout)
        daemon = st["supervisor"]["pid"]
        assert st["supervisor"]["alive"] and daemon
        assert all(p["supervised"] and p["alive"] for p in st["processes"].values()), st["processes"]
        tree = [daemon, *_descendants(daemon)]  # the listener, every program, gunicorn's workers
        assert len(tree) >= 1 + 1 + 6 + 2  # supervisord, listener, 6 programs, at least one gunicorn worker each
        assert set(_marked(sup.sock)) == set(tree) - {daemon}
        # No secret in supervisord's config nor in any process's argv (what `ps` shows).
        token = (run / "api_token").read_text().strip()
        assert token not in sup.conf.read_text()
        assert not [p for p in tree if token.encode() in Path(f"/proc/{p}/cmdline").read_bytes()]
        if kill_supervisord:
            os.kill(daemon, signal.SIGKILL)
            wait_for("supervisord to be gone", lambda: not _alive(daemon), 30)
            st = json.loads(_cli(["status", "--json"], private_env).stdout)
            assert not st["supervisor"]["alive"]
            # What it left running is shown as such, by the pids it had.
            assert {n: p["state"] for n, p in st["processes"].items()} == dict.fromkeys(st["processes"], "UNSUPERVISED")
            assert all(p["pid"] in tree and not p["supervised"] for p in st["processes"].values())
            assert any(_alive(p) for p in tree)  # its children run on, unsupervised: the case down must handle
    finally:
        down = _cli(["down"], private_env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [p for p in tree if _alive(p)] == []
    assert _marked(sup.sock) == []
    leftovers = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""
    st = json.loads(_cli(["status", "--json"], private_env).stdout)
    assert not st["supervisor"]["alive"] and not any(p["alive"] for p in st["processes"].values())
