"""Hosts taken away for good (``cluster down``) leave no DOWN ghosts in MongoDB, on the real system:
a node without claims is forgotten at once, one with claims once the running Discovery sees them gone."""

from __future__ import annotations

import uuid

import pytest

from Common.store import Store
from Common.store.workers import DOWN, Alloc
from tests.helpers import sleeper, task_job, wait_for

pytestmark = pytest.mark.system


def _register(store: Store) -> str:
    name = f"ghost-{uuid.uuid4().hex[:6]}"
    store.workers.register(name, [0, 1], 2**30, {"engine": "none (a record only)"})
    return name


def test_a_forgotten_node_without_claims_is_deleted_at_once(store: Store) -> None:
    name = _register(store)
    assert store.workers.forget(name) is True
    assert store.workers.get(name) is None
    assert store.events.col.find_one({"kind": "node_forgotten", "node": name}) is not None


def test_a_forgotten_node_with_a_claim_is_deleted_by_discovery_once_the_claim_is_released(store: Store) -> None:
    name = _register(store)
    alloc = Alloc("job-ghost", "t", (0,), 2**20, uuid.uuid4().hex)
    assert store.workers.claim(name, [alloc]) is not None
    assert store.workers.forget(name) is False
    doc = store.workers.get(name)
    assert doc["state"] == DOWN and doc["forget_requested"] is True  # still holds its claim: kept for now
    assert store.workers.release(name, alloc.key, alloc.token)
    wait_for("Discovery's sweep to delete the forgotten node", lambda: store.workers.get(name) is None, 60)


def test_a_worker_registering_again_cancels_the_forgetting(store: Store) -> None:
    name = _register(store)
    alloc = Alloc("job-ghost", "t", (1,), 2**20, uuid.uuid4().hex)
    assert store.workers.claim(name, [alloc]) is not None
    store.workers.forget(name)
    doc = store.workers.register(name, [0, 1], 2**30, {"engine": "none (a record only)"})
    assert "forget_requested" not in doc and doc["state"] == "READY"
    store.workers.release(name, alloc.key, alloc.token)
    assert store.workers.purge_forgotten() == []
    store.workers.col.delete_one({"_id": name})


def test_cluster_down_ends_the_jobs_on_its_nodes_and_a_cancelled_one_ends_cancelled(api, store: Store, system) -> None:
    """What `cluster down` does before it removes the hosts (Management.forget_workers with end_jobs): the
    jobs placed on them end now, with a reason, and give their claims back; one whose cancellation a user
    had asked for (left CANCELLING: no Worker runs for this record-only node) ends CANCELLED, not FAILED."""
    import Management

    name = _register(store)
    jobs = []
    try:
        for i in range(2):
            jobs.append(api.submit(task_job({"t": sleeper(600, mem="16m", node=name)}, name=f"on-{name}-{i}")))

        def placed() -> bool:
            store.workers.heartbeat(name)  # a live node, as far as Discovery can tell
            return all((store.jobs.get(j) or {}).get("tasks", {}).get("t", {}).get("node") == name for j in jobs)

        wait_for(f"both jobs placed on {name}", placed, 60)
        running, cancelling = jobs
        assert api.delete(f"/jobs/{cancelling}").status_code == 202
        assert store.jobs.get(cancelling)["state"] == "CANCELLING"
        assert len(store.workers.get(name)["allocations"]) == 2
        Management.forget_workers(system, [name], end_jobs=True)
        failed, cancelled = store.jobs.get(running), store.jobs.get(cancelling)
        assert failed["state"] == "FAILED" and f"node {name} was taken away (cluster down)" in failed["reason"], failed
        assert failed["tasks"]["t"]["state"] == "LOST" and failed["tasks"]["t"]["attempt"] == 0
        assert cancelled["state"] == "CANCELLED" and cancelled["tasks"]["t"]["state"] == "LOST", cancelled
        # No claim was left, so the record went at once (nothing for Discovery to move or purge later).
        assert store.workers.get(name) is None
        for j in jobs:
            assert store.events.col.find_one({"kind": "release", "job_id": j, "node": name}) is not None
    finally:
        for j in jobs:
            api.delete(f"/jobs/{j}")
        store.workers.col.delete_one({"_id": name})
