"""The GlobalManager's retention sweep on the single-node system (every 2 s here; default retentions: finished
jobs 7 days, deleted EVM records 1 day). Age is given to real records by moving their end time back, as the
passing of time would; the sweep itself is the running GlobalManager's. The 20 s retention run end to end
is in tests/test_mongo_uri.py."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.helpers import Api, sleeper, task_job, wait_for

pytestmark = pytest.mark.system

DAY = 86400.0


def _evm(job_id: str, seq: int, state: str, at: float) -> dict:
    return {"_id": f"{job_id}:{seq}", "job_id": job_id, "seq": seq, "name": f"evm-{seq}", "state": state,
            "times": {state: at}, "created_at": at, "delete_requested": state == "DELETED"}


def test_a_finished_job_past_retention_is_deleted_with_its_records_and_a_recent_one_stays(
        api: Api, store, system, idle_cluster) -> None:
    old, recent = (api.submit(task_job({"t": sleeper(0.2)})) for _ in range(2))
    for job_id in (old, recent):
        api.wait_state(job_id, "COMPLETED")
    ended = store.jobs.get(old)["state_times"]["COMPLETED"]
    store.evms.col.insert_one(_evm(old, 1, "READY", ended))
    store.db["migrations"].insert_one({"_id": f"mg-{uuid.uuid4().hex[:8]}", "job_id": old, "state": "DONE"})
    # As if the retention time (plus a day) had passed since it ended.
    store.jobs.col.update_one({"_id": old}, {"$set": {"state_times.COMPLETED":
                                                      ended - system.storage.job_retention_seconds - DAY}})
    wait_for("the old job's records to be deleted", lambda: store.jobs.get(old) is None, 60)
    assert store.evms.col.count_documents({"job_id": old}) == 0
    assert store.db["migrations"].count_documents({"job_id": old}) == 0
    assert api.get(f"/jobs/{old}").status_code == 404
    assert store.jobs.get(recent)["state"] == "COMPLETED"  # within its retention: kept
    assert api.get(f"/jobs/{recent}").status_code == 200


def test_deleted_evm_records_past_retention_are_removed_and_the_others_stay(store, system) -> None:
    job_id = f"job-retention-{uuid.uuid4().hex[:8]}"
    now = time.time()
    past = now - system.storage.evm_retention_seconds - 60
    store.evms.col.insert_many([_evm(job_id, 1, "DELETED", past), _evm(job_id, 2, "DELETED", now),
                                _evm(job_id, 3, "READY", past)])
    try:
        wait_for("the old deleted EVM record to be removed", lambda: store.evms.col.find_one({"_id": f"{job_id}:1"})
                 is None, 60)
        assert {d["_id"] for d in store.evms.col.find({"job_id": job_id})} == {f"{job_id}:2", f"{job_id}:3"}
    finally:
        store.evms.col.delete_many({"job_id": job_id})
