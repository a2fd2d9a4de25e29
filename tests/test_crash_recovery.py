"""Any actor killed at any moment rebuilds from MongoDB on restart and loses nothing.

While jobs are in flight, SIGKILL one actor (its whole process group) and let its supervisor bring it
back, with no manual restart: every accepted job, including those submitted before the kill, still
reaches a terminal state, and at no sampled moment are cores double-booked; at the end nothing is
leaked (worker records agree with the containers actually running: none).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import Management
from Common.resources import parse_cpuset
from tests.conftest import TEST_CLUSTER
from tests.helpers import Api, containers_of, docker_client, sleeper, task_job, wait_for

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("idle_cluster")]


class InvariantChecker(threading.Thread):
    """Samples the engine and the worker records; collects every violation it sees."""

    def __init__(self, store) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.violations: list[str] = []
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        client = docker_client()
        while not self.stop.is_set():
            try:
                self.sample(client)
            except Exception as exc:  # a container vanishing mid-sample is not a violation
                if "No such container" not in str(exc):
                    self.violations.append(f"sampling error: {exc!r}")
            self.stop.wait(0.3)

    def sample(self, client) -> None:
        for w in self.store.workers.all():
            allocated = [c for a in w["allocations"].values() for c in a["cores"]]
            if len(allocated) != len(set(allocated)):
                self.violations.append(f"{w['_id']}: a core is in two allocations: {w['allocations']}")
            if set(allocated) & set(w["free_cores"]):
                self.violations.append(f"{w['_id']}: a core is both free and allocated")
            if sorted(allocated + w["free_cores"]) != sorted(w["cores"]):
                self.violations.append(f"{w['_id']}: free + allocated != capacity")
            used_mem = sum(a["mem"] for a in w["allocations"].values())
            if w["mem_free"] < 0 or w["mem_free"] + used_mem != w["mem_total"]:
                self.violations.append(f"{w['_id']}: memory books do not balance")
        running: dict[int, str] = {}
        for c in containers_of(TEST_CLUSTER, all_=False):
            cpus = client.api.inspect_container(c["Id"])["HostConfig"]["CpusetCpus"]
            for core in parse_cpuset(cpus):
                if core in running:
                    self.violations.append(f"core {core} used by {running[core]} and {c['Names'][0]}")
                running[core] = c["Names"][0]
        self.samples += 1


def _kill(cfg, actor: str) -> None:
    """SIGKILL ``actor``'s process group; supervisord restarts it (a new pid) without anyone's help."""
    procs = Management.Processes(cfg)
    pid = procs.alive(actor)
    assert pid is not None, f"{actor} is not running"
    os.killpg(pid, signal.SIGKILL)
    wait_for(f"{actor} to be restarted", lambda: procs.alive(actor) not in (None, pid), 60)


@pytest.mark.parametrize("actor", ["jobmanager", "discovery", "worker"])
def test_sigkill_and_restart_loses_nothing(api: Api, store, system, actor: str) -> None:
    checker = InvariantChecker(store)
    checker.start()
    try:
        jobs = [api.submit(task_job({"t": sleeper(1.5)}, name=f"crash-{actor}-{i}")) for i in range(5)]
        jobs.append(api.submit(task_job({"a": sleeper(1), "b": sleeper(1)}, name=f"crash-{actor}-pair")))
        time.sleep(0.5)
        _kill(system, actor)
        # Work goes on (or piles up) without it for a while, including submissions.
        jobs.append(api.submit(task_job({"t": sleeper(1)}, name=f"crash-{actor}-late")))
        time.sleep(3)
        for job_id in jobs:
            job = api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)
            assert job["state"] == "COMPLETED", (actor, job)
    finally:
        checker.stop.set()
        checker.join(5)
    assert checker.samples > 5
    assert checker.violations == []

    def idle() -> bool:
        w = store.workers.all()[0]
        return w["allocations"] == {} and sorted(w["free_cores"]) == sorted(w["cores"])

    wait_for("every claim to be released", idle, 60)
    # The records agree with the engine: nothing of ours runs.
    wait_for("containers to be removed", lambda: not containers_of(TEST_CLUSTER), 60)
