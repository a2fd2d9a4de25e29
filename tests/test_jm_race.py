"""Two JobManager instances racing on one cluster never over-commit: claims are conditional updates
and the loser of a race re-plans (docs/claims.md). Real MongoDB wire server, separate database."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest

import JobManager.manager as manager_module
from Common.jobspec import JobSpec, TaskSpec
from Common.states import JobState, TaskState
from Common.store import Store
from Common.store.workers import alloc_key
from JobManager.manager import JobManager
from tests.helpers import admin_uri

pytestmark = [pytest.mark.system]

MIB = 1024**2
WORKERS = 4
CORES = 8
MEM = 2048 * MIB


class NoGM:
    """Stands in for the GlobalManager: this test is about placement and claims only."""

    def deploy(self, job_id: str) -> bool:
        return True

    def stop(self, job_id: str) -> bool:
        return True

    def cleanup(self, job_id: str) -> bool:
        return True


@pytest.fixture()
def race_db(system) -> Iterator[str]:
    name = f"race_test_{random.randrange(1 << 30):x}"
    yield name
    pymongo.MongoClient(admin_uri(system)).drop_database(name)


def store_for(system, db: str) -> Store:
    return Store(pymongo.MongoClient(admin_uri(system), tz_aware=True)[db])


def submit(store: Store, rng: random.Random, n: int) -> None:
    for j in range(n):
        tasks = [TaskSpec(name=f"t{k}", image="rswarm/task:1", command=None, req_cores=rng.randint(1, 3),
                          mem_bytes=rng.choice([64, 128, 256]) * MIB, mem_limit="64m")
                 for k in range(rng.randint(1, 3))]
        store.jobs.insert(JobSpec(name=f"race-{j}", priority=rng.randint(0, 2), network_name=None,
                                  network_subnet=None, tasks=tasks))


def finish_some(store: Store, rng: random.Random) -> None:
    """Complete about half of the placed jobs the way Discovery would: terminal task, release the claim."""
    for job in store.jobs.in_states([JobState.SCHEDULED.value]):
        if rng.random() < 0.5:
            continue
        for name, t in job["tasks"].items():
            store.jobs.transition_task(job["_id"], name, t["attempt"], TaskState.COMPLETED, exit_code=0)
            assert store.workers.release(t["node"], alloc_key(job["_id"], name), t["claim_token"])
        store.jobs.refresh_state(job["_id"])


def check_books(store: Store) -> dict[str, Any]:
    """Every core is free xor held by exactly one allocation; memory adds up; placed tasks own their claims."""
    held: dict[tuple[str, str], dict[str, Any]] = {}
    for w in store.workers.all():
        allocated = [c for a in w["allocations"].values() for c in a["cores"]]
        assert len(allocated) == len(set(allocated)), f"a core of {w['_id']} is in two allocations"
        assert not set(allocated) & set(w["free_cores"]), f"{w['_id']}: a core is both free and allocated"
        assert sorted(allocated + w["free_cores"]) == sorted(w["cores"]), f"{w['_id']}: cores leaked"
        assert w["mem_free"] + sum(a["mem"] for a in w["allocations"].values()) == w["mem_total"]
        assert w["mem_free"] >= 0
        for key, a in w["allocations"].items():
            held[(w["_id"], key)] = a
    placed = store.jobs.in_states([JobState.SCHEDULED.value])
    for job in placed:
        for name, t in job["tasks"].items():
            a = held.pop((t["node"], alloc_key(job["_id"], name)))
            assert a["token"] == t["claim_token"] and len(a["cores"]) == t["req_cores"]
    assert not held, f"allocations no placed task owns: {sorted(held)}"
    return {"placed": len(placed)}


def _run(jm: JobManager, local: threading.local, results: list[int]) -> None:
    local.planned = False
    results.append(jm.schedule())


def test_two_jobmanagers_racing_never_overcommit(system, race_db: str) -> None:
    rng = random.Random(20261122)
    admin = store_for(system, race_db)
    admin.ensure_indexes()
    for k in range(WORKERS):
        admin.workers.register(f"w{k}", list(range(CORES)), MEM, {})
    managers = []
    for strategy in ("first-fit", "best-fit-decreasing"):  # different plans, so they collide on cores
        jm = JobManager(system, store_for(system, race_db))
        jm.gm = NoGM()  # type: ignore[assignment]
        jm.strategy = lambda s=strategy: s  # type: ignore[method-assign]
        managers.append(jm)

    lost = [0]
    real_commit = JobManager.commit

    def counting_commit(self: JobManager, *args: Any) -> bool:
        ok = real_commit(self, *args)
        lost[0] += not ok
        return ok

    # Both managers plan from the same snapshot, then commit at the same time.
    gate = threading.Barrier(2, timeout=10)
    local = threading.local()
    real_place = manager_module.place

    def synchronised_place(*args: Any, **kwargs: Any) -> Any:
        plan = real_place(*args, **kwargs)
        if not getattr(local, "planned", False):
            local.planned = True
            with contextlib.suppress(threading.BrokenBarrierError):
                gate.wait()
        return plan

    placed_total = 0
    try:
        JobManager.commit = counting_commit  # type: ignore[method-assign]
        manager_module.place = synchronised_place  # type: ignore[assignment]
        for _round in range(8):
            submit(admin, rng, 12)
            gate.reset()
            results: list[int] = []

            threads = [threading.Thread(target=_run, args=(jm, local, results)) for jm in managers]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert len(results) == 2, "a JobManager pass did not finish"
            placed_total += sum(results)
            check_books(admin)
            finish_some(admin, rng)
            check_books(admin)
    finally:
        JobManager.commit = real_commit  # type: ignore[method-assign]
        manager_module.place = real_place  # type: ignore[assignment]
        for jm in managers:
            jm.stop()
            jm.store.close()
    assert lost[0] > 0, "the two managers never collided: the test proved nothing"
    assert placed_total > 0
