"""CRIU checkpoints on the single-node system: create (leaving the task running, or stopping it), list, get,
delete; a job's checkpoints go when it ends unless kept; the deployment-wide quota answers 409.

Real CRIU (dockerd --experimental with CRIU on its PATH), real GridFS over the wire. The quota here is the
test deployment's (300 MiB, tests/conftest.py); the retention sweep runs every 2 s.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import Api, task_job, wait_for

pytestmark = pytest.mark.system

COUNTER = ["sh", "-c", "i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done"]


def _counter_job(api: Api, mem: str = "64m") -> str:
    job_id = api.submit(task_job({"t": {"image": "rswarm/task:1", "command": COUNTER, "req_cores": 1,
                                        "mem_limit": mem}}))
    api.wait_tasks(job_id, "RUNNING")
    return job_id


def _checkpoint(api: Api, job_id: str, **body) -> dict:
    r = api.post(f"/jobs/{job_id}/tasks/t/checkpoints", json=body)
    assert r.status_code == 202, r.text
    ck_id = r.json()["id"]
    return wait_for(f"checkpoint {ck_id} to be taken",
                    lambda: (c := api.get(f"/checkpoints/{ck_id}").json())["state"] in ("DONE", "FAILED") and c, 120)


@contextmanager
def _full_disk(root: Path) -> Iterator[Callable[[], None]]:
    """A real full disk under the Worker's checkpoint scratch directory: a 64 KiB tmpfs mounted over it, which
    CRIU's image files do not fit in (the engine answers 500, "no space left on device"). Yields ``free``,
    which unmounts it (lazily: the engine may still hold a file in it); it is unmounted at the end otherwise."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "rswarm-test-full", str(root)], check=True)
    mounted = True

    def free() -> None:
        nonlocal mounted
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=True)
            mounted = False

    try:
        yield free
    finally:
        free()


def _files(store, ck_id: str) -> int:
    return store.db["checkpoint_files.files"].count_documents({"metadata.checkpoint": ck_id})


def _container_status(cid: str) -> str | None:
    r = subprocess.run(["docker", "inspect", cid], capture_output=True, text=True)
    return json.loads(r.stdout)[0]["State"]["Status"] if r.returncode == 0 else None


def test_checkpoint_leaving_running_stores_files_and_the_task_keeps_running(api: Api, store, idle_cluster) -> None:
    job_id = _counter_job(api)
    try:
        c = _checkpoint(api, job_id)
        assert c["state"] == "DONE", c
        assert c["leave_running"] is True and c["keep"] is False and c["size"] > 0 and c["files"] > 0
        assert _files(store, c["id"]) == c["files"]
        t = api.job(job_id)["tasks"]["t"]
        assert t["state"] == "RUNNING" and _container_status(t["container_id"]) == "running"
    finally:
        api.delete(f"/jobs/{job_id}")
        api.wait_state(job_id, "CANCELLED")


def test_checkpoint_stopping_the_task_cancels_it_and_keeps_the_files(api: Api, store, idle_cluster) -> None:
    job_id = _counter_job(api)
    c = _checkpoint(api, job_id, leave_running=False, keep=True)
    try:
        assert c["state"] == "DONE" and c["leave_running"] is False and c["keep"] is True, c
        job = api.wait_state(job_id, "CANCELLED")
        assert job["tasks"]["t"]["state"] == "CANCELLED"
        assert _files(store, c["id"]) == c["files"] > 0
    finally:
        assert api.delete(f"/checkpoints/{c['id']}").status_code == 200


def test_list_get_and_delete_a_tasks_checkpoints(api: Api, store, idle_cluster) -> None:
    job_id = _counter_job(api)
    try:
        first = _checkpoint(api, job_id)
        second = _checkpoint(api, job_id)
        assert first["state"] == second["state"] == "DONE", (first, second)
        items = api.get(f"/jobs/{job_id}/tasks/t/checkpoints").json()["items"]
        assert [i["id"] for i in items] == [second["id"], first["id"]]  # newest first
        got = api.get(f"/checkpoints/{first['id']}")
        assert got.status_code == 200 and got.json()["id"] == first["id"] and got.json()["state"] == "DONE"
        assert api.delete(f"/checkpoints/{first['id']}", auth=False).status_code == 401
        r = api.delete(f"/checkpoints/{first['id']}")
        assert r.status_code == 200 and r.json()["id"] == first["id"]
        assert api.get(f"/checkpoints/{first['id']}").status_code == 404
        assert _files(store, first["id"]) == 0 and store.checkpoints.get(first["id"]) is None
        assert [i["id"] for i in api.get(f"/jobs/{job_id}/tasks/t/checkpoints").json()["items"]] == [second["id"]]
        assert _files(store, second["id"]) == second["files"]
    finally:
        api.delete(f"/jobs/{job_id}")
        api.wait_state(job_id, "CANCELLED")


def test_a_jobs_checkpoints_are_deleted_when_it_ends_except_a_kept_one(api: Api, store, idle_cluster) -> None:
    job_id = _counter_job(api)
    plain = _checkpoint(api, job_id)
    kept = _checkpoint(api, job_id, keep=True)
    assert plain["state"] == "DONE", plain
    assert kept["state"] == "DONE", kept
    api.delete(f"/jobs/{job_id}")
    api.wait_state(job_id, "CANCELLED")
    wait_for("the job's plain checkpoint and its files to be deleted",
             lambda: store.checkpoints.get(plain["id"]) is None and _files(store, plain["id"]) == 0, 60)
    assert store.checkpoints.get(kept["id"])["keep"] is True and _files(store, kept["id"]) == kept["files"]
    assert api.delete(f"/checkpoints/{kept['id']}").status_code == 200
    assert _files(store, kept["id"]) == 0


def test_a_checkpoint_the_disk_cannot_hold_is_tried_three_times_then_failed_and_the_task_keeps_running(
        api: Api, store, system, idle_cluster) -> None:
    job_id = _counter_job(api)
    try:
        with _full_disk(system.run_path / "checkpoints"):
            c = _checkpoint(api, job_id)
        assert c["state"] == "FAILED" and c["attempts"] == 3, c
        assert "after 3 attempts" in c["reason"] and "no space left on device" in c["reason"], c
        assert "no space left on device" in c["last_error"]
        assert _files(store, c["id"]) == 0
        t = api.job(job_id)["tasks"]["t"]
        assert t["state"] == "RUNNING" and _container_status(t["container_id"]) == "running"
    finally:
        api.delete(f"/jobs/{job_id}")
        api.wait_state(job_id, "CANCELLED")


def test_a_checkpoint_refused_by_a_full_disk_is_tried_again_and_taken_once_the_disk_has_room(
        api: Api, store, system, idle_cluster) -> None:
    job_id = _counter_job(api)
    try:
        with _full_disk(system.run_path / "checkpoints") as free:
            r = api.post(f"/jobs/{job_id}/tasks/t/checkpoints", json={})
            assert r.status_code == 202, r.text
            ck_id = r.json()["id"]
            failed_once = wait_for("a first failed try", lambda: (c := api.get(f"/checkpoints/{ck_id}").json())
                                   ["attempts"] >= 1 and c, 60)
            assert failed_once["state"] == "REQUESTED", failed_once  # the next try is 2 s away, then 4 s
            assert "no space left on device" in failed_once["last_error"]
            free()
        c = wait_for(f"checkpoint {ck_id} to be taken",
                     lambda: (c := api.get(f"/checkpoints/{ck_id}").json())["state"] in ("DONE", "FAILED") and c, 60)
        assert c["state"] == "DONE" and 1 <= c["attempts"] < 3, c
        assert c["files"] > 0 and _files(store, ck_id) == c["files"]
        t = api.job(job_id)["tasks"]["t"]
        assert t["state"] == "RUNNING" and _container_status(t["container_id"]) == "running"
    finally:
        api.delete(f"/jobs/{job_id}")
        api.wait_state(job_id, "CANCELLED")


def test_checkpoint_beyond_the_quota_is_refused_409_with_the_figures(api: Api, store, system, idle_cluster) -> None:
    job_id = _counter_job(api, mem="512m")  # its checkpoint may be as large as its 512 MiB limit > 300 MiB quota
    try:
        before = store.checkpoints.col.count_documents({"job_id": job_id})
        r = api.post(f"/jobs/{job_id}/tasks/t/checkpoints", json={})
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["quota_bytes"] == system.storage.checkpoint_quota_bytes == 300 * 2**20
        assert err["estimate_bytes"] == 512 * 2**20
        assert isinstance(err["used_bytes"], int) and err["used_bytes"] + err["estimate_bytes"] > err["quota_bytes"]
        assert "quota" in err["message"]
        assert store.checkpoints.col.count_documents({"job_id": job_id}) == before == 0
        assert api.job(job_id)["tasks"]["t"]["state"] == "RUNNING"
    finally:
        api.delete(f"/jobs/{job_id}")
        api.wait_state(job_id, "CANCELLED")
