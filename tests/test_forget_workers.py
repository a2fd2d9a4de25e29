"""Hosts taken away for good (``cluster down``) leave no DOWN ghosts in MongoDB, on the real system:
a node without claims is forgotten at once, one with claims once the running Discovery sees them gone."""

from __future__ import annotations

import uuid

import pytest

from Common.store import Store
from Common.store.workers import DOWN, Alloc
from tests.helpers import wait_for

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
