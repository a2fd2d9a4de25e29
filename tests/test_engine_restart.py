"""The Docker engine restarted under a Worker: the Worker stays up, its node is not declared DOWN, and it
reconciles the restarted engine (issue 11, item 2).

The machine's own dockerd is shared and must not be restarted, so this test starts a private one (its
own network namespace, data-root, exec-root and socket, as docs/cluster.md's emulated hosts do) and a
second Worker on it, drained so that no other test's job is placed there. It restarts that engine for
real (SIGTERM, then a new dockerd on the same data) and checks the Worker's behaviour through MongoDB,
the engine and its process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
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

from Common.ops import emulated
from tests.conftest import ROOT, SLOT, TEST_CLUSTER
from tests.helpers import Api, wait_for

pytestmark = [pytest.mark.system]

NAME = f"rswe{SLOT}-engine"  # worker name, netns and hostname


class PrivateEngine:
    def __init__(self) -> None:
        self.host = emulated.Host(name=NAME, address="127.0.0.1", role="worker",
                                  sock_dir=f"/run/rswe{SLOT}", data_dir=f"/var/lib/rswe{SLOT}")

    @property
    def url(self) -> str:
        return self.host.docker_url

    def start(self) -> None:
        emulated.start_dockerd(self.host, experimental=False)
        wait_for("the private dockerd to answer", self.answers, 120, 0.5)

    def answers(self) -> bool:
        try:
            return emulated.docker_answers(self.host)
        except subprocess.TimeoutExpired:
            return False

    def pid(self) -> int | None:
        try:
            return int(Path(self.host.sock_dir, "docker.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            wait_for("the private dockerd to exit", lambda: gone(pid), 60, 0.2)


def gone(pid: int) -> bool:
    """The process has exited (reaped here if it is our child: emulated.start_dockerd execs into it)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture()
def private_engine() -> Iterator[PrivateEngine]:
    eng = PrivateEngine()
    subprocess.run(["ip", "netns", "add", NAME], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", NAME, "link", "set", "lo", "up"], check=True)
        eng.start()
        # The image the orphan below is made of (no registry: copied from this machine's engine).
        save = subprocess.Popen(["docker", "save", "rswarm/task:1"], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", eng.url, "load", "-q"], stdin=save.stdout, check=True, capture_output=True)
        save.wait()
        yield eng
    finally:
        ids = subprocess.run(["docker", "-H", eng.url, "ps", "-aq"], capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "-H", eng.url, "rm", "-f", *ids], capture_output=True)
        eng.stop()
        for pid in subprocess.run(["ip", "netns", "pids", NAME], capture_output=True, text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", NAME], capture_output=True)
        shutil.rmtree(eng.host.sock_dir, ignore_errors=True)
        shutil.rmtree(eng.host.data_dir, ignore_errors=True)


@pytest.fixture()
def second_worker(system, test_env, private_engine: PrivateEngine, store, api: Api) -> Iterator[subprocess.Popen]:
    env = {**os.environ, **test_env, "RSWARM_WORKER_NAME": NAME, "RSWARM_WORKER_DOCKER_URL": private_engine.url,
           "RSWARM_WORKER_METRICS_PORT": "0", "RSWARM_WORKER_CORES": "0-1"}
    log = open(system.run_path / "logs" / f"{NAME}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "Worker"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    try:
        wait_for("the second worker to register", lambda: (store.workers.get(NAME) or {}).get("state") == "READY",
                 120)
        assert api.post(f"/workers/{NAME}/drain").status_code == 200  # no other test's job goes there
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        store.workers.col.delete_one({"_id": NAME})


def test_an_engine_restarted_under_a_worker_leaves_it_up_and_live_and_it_reconciles_the_new_engine(
        system, store, private_engine: PrivateEngine, second_worker: subprocess.Popen) -> None:
    since = dt.datetime.now(dt.UTC)
    private_engine.stop()
    time.sleep(5)  # the engine is away for a while (less than the Worker's 30 s engine grace)
    private_engine.start()
    client = docker.DockerClient(base_url=private_engine.url)
    try:
        # Something for the Worker to reconcile on the new engine: a container of this cluster whose job
        # does not exist (an orphan), created behind its back.
        orphan = client.api.create_container(
            "rswarm/task:1", command=["sleep", "60"], name=f"rsw-job-gone-{SLOT}-t-0",
            labels={"rswarm.cluster": TEST_CLUSTER, "rswarm.job": f"job-gone-{SLOT}", "rswarm.task": "t",
                    "rswarm.attempt": "0"})["Id"]

        def removed() -> bool:
            return not client.api.containers(all=True, filters={"id": orphan})

        wait_for("the Worker to remove the orphan from the restarted engine", removed, 120)
    finally:
        client.close()
    assert second_worker.poll() is None, "the Worker died with its engine"
    downs = [e for e in store.events.query(kinds=["node_down"], since=since) if e.get("node") == NAME]
    assert downs == [] and store.workers.get(NAME)["state"] == "DRAINING"
    beat = store.workers.get(NAME)["heartbeat_at"]
    wait_for("heartbeats to go on", lambda: store.workers.get(NAME)["heartbeat_at"] > beat, 30)
