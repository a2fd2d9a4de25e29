"""Hollow workers and strategy comparison on a deployment of its own: the real FrontEnd, JobManager,
GlobalManager, Discovery and embedded MongoDB, with 100 hollow workers (Worker/hollow.py) and no real
Worker. Nothing here claims real-container behaviour: every task in this module runs on a hollow node,
which is what these tests are about (and each checks that no container was made).

The deployment uses its own run directory, ports, database and cluster id (shifted by RSWARM_TEST_SLOT),
so it never meets the session's deployment of tests/conftest.py.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pymongo
import pytest
import requests

import Management
from Common.config import Config
from Common.config import load as load_config
from Common.resources import parse_cpuset
from Common.states import TaskState
from Common.store import Store
from tests.conftest import SLOT
from tests.helpers import admin_uri
from Worker.hollow import parse_spec, plan

ROOT = Path(__file__).resolve().parent.parent
SLICE = ROOT / "tests" / "data" / "alibaba-2017-slice.csv"
NODES = 100
_BASE = 15000 + 100 * SLOT + 60
ENV = {
    "RSWARM_RUN_DIR": f"/tmp/rswarm-test{SLOT or ''}-hollow",
    "RSWARM_CLUSTER_ID": f"rswhollow{SLOT}",
    "RSWARM_API_TOKEN": "test-token-" + os.urandom(8).hex(),
    "RSWARM_MONGO_DATABASE": "rswarm_hollow_test",
    "RSWARM_FRONTEND_PORT": str(_BASE + 1),
    "RSWARM_GLOBALMANAGER_PORT": str(_BASE),
    "RSWARM_GLOBALMANAGER_PUB_PORT": str(_BASE + 7),
    "RSWARM_JOBMANAGER_HINT_PORT": str(_BASE + 5),
    "RSWARM_DISCOVERY_PORT": str(_BASE + 6),
    "RSWARM_MONGO_EMBEDDED_PORT": str(28140 + SLOT),
    "RSWARM_GLOBALMANAGER_NETWORK_POOL": f"10.{230 + SLOT}.0.0/16",
    "RSWARM_GLOBALMANAGER_METRICS_PORT": str(_BASE + 10),
    "RSWARM_JOBMANAGER_METRICS_PORT": str(_BASE + 11),
    "RSWARM_DISCOVERY_METRICS_PORT": str(_BASE + 12),
    "RSWARM_WORKER_METRICS_PORT": "0",
    "RSWARM_WORKER_SWEEP_SECONDS": "2",
    "RSWARM_WORKER_HEARTBEAT_SECONDS": "1",
}


def _containers(cluster: str) -> list[str]:
    return subprocess.run(["docker", "ps", "-aq", "--filter", f"label=rswarm.cluster={cluster}"],
                          capture_output=True, text=True).stdout.split()


@pytest.fixture(scope="module")
def hcfg() -> Iterator[Config]:
    saved = dict(os.environ)
    os.environ.update(ENV)
    cfg = load_config()
    Management.down(cfg, quiet=True)
    shutil.rmtree(cfg.run_path, ignore_errors=True)
    try:
        Management.up(cfg, with_worker=False, quiet=True, hollow=f"{NODES}:1:1g")
        yield cfg
    finally:
        Management.down(cfg, quiet=True)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture()
def hstore(hcfg: Config) -> Iterator[Store]:
    s = Store.connect(hcfg)
    yield s
    s.close()


def _api(cfg: Config) -> tuple[str, dict[str, str]]:
    return f"{cfg.frontend_url}/api/v1", {"Authorization": f"Bearer {cfg.token()}"}


def _submit(cfg: Config, name: str, command, cores: int = 1, tasks: int = 1) -> str:
    base, auth = _api(cfg)
    body = {"job_name": name, "job_info": {"tasks": {f"t{i}": {"image": "rswarm/task:1", "command": command,
                                                               "req_cores": cores, "mem_limit": "64m"}
                                                     for i in range(tasks)}}}
    r = requests.post(f"{base}/jobs", json=body, headers=auth, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _wait_state(store: Store, job_id: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.jobs.get(job_id)
        if job and job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"{job_id} not in {states}: {store.jobs.get(job_id)}")


def _all_free(store: Store, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws = [w for w in store.workers.all() if w.get("hollow")]
        if all(not w["allocations"] and len(w["free_cores"]) == len(w["cores"]) for w in ws):
            return ws
        time.sleep(0.2)
    raise AssertionError("claims were not all released")


# ---- without the system ---------------------------------------------------------------------------
@pytest.mark.parametrize("task, want", [
    ({"command": ["sleep", "5"]}, (5.0, 0)),
    ({"command": "sleep 2.5"}, (2.5, 0)),
    ({"command": ["sh", "-c", "echo hi; sleep 2; sleep 1; exit 3"]}, (3.0, 3)),
    ({"command": ["sh", "-c", "sleep 4; exit 1"], "environment": {"RSWARM_HOLLOW_DURATION": "0.5"}}, (0.5, 1)),
    ({"command": ["true"], "environment": {"RSWARM_HOLLOW_EXIT_CODE": "7"}}, (0.0, 7)),
    ({"command": ["echo", "nosleep", "exit"]}, (0.0, 0)),
    ({"command": None}, (0.0, 0)),
    ({"command": ["sleep", "1"], "environment": {"RSWARM_HOLLOW_DURATION": "x"}}, (1.0, 0)),
])
def test_hollow_plan_reads_duration_and_exit_code_from_environment_then_command(task, want) -> None:
    assert plan(task) == want


@pytest.mark.parametrize("spec, want", [("10", (10, 4, "8g")), ("5:2", (5, 2, "8g")), ("3:1:512m", (3, 1, "512m"))])
def test_hollow_spec_parses(spec, want) -> None:
    assert parse_spec(spec) == want


@pytest.mark.parametrize("spec", ["", "0", "x", "3:0", "3:two", "3:1:lots", "1:2:3:4", "-1"])
def test_a_bad_hollow_spec_is_a_cli_error_naming_the_flag(spec: str) -> None:
    with pytest.raises(ValueError, match="--hollow"):
        parse_spec(spec)
    r = subprocess.run([sys.executable, "Management.py", "--run-dir", "/tmp/rswarm-never-made", "up",
                        "--hollow", spec], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "hollow" in r.stderr.lower() + r.stdout.lower()
    assert not Path("/tmp/rswarm-never-made").exists()


# ---- on the hollow deployment -----------------------------------------------------------------------
def test_hollow_workers_are_marked_in_the_api_the_status_page_and_management_status(
        hcfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    base, _ = _api(hcfg)
    items = requests.get(f"{base}/workers", timeout=30).json()["items"]
    assert len(items) == NODES and all(w["hollow"] is True for w in items)
    assert {w["capacity_cores"] for w in items} == {1} and {w["mem_total"] for w in items} == {2**30}
    one = requests.get(f"{base}/workers/{items[0]['id']}", timeout=10).json()
    assert one["hollow"] is True
    page = requests.get(f"{hcfg.frontend_url}/status", timeout=30).text
    assert f"{NODES} hollow" in page and page.count(">hollow</span>") == NODES
    st = Management.status(hcfg)
    assert st["processes"]["hollow-0"]["alive"]
    assert len(st["cluster"]["workers"]) == NODES and all(w["hollow"] for w in st["cluster"]["workers"])
    Management.print_status(st)
    assert f"HOLLOW WORKERS ({NODES}" in capsys.readouterr().out


def test_a_task_on_a_hollow_worker_completes_after_its_sleep_and_makes_no_container(
        hcfg: Config, hstore: Store) -> None:
    job_id = _submit(hcfg, "hollow-sleep", ["sleep", "1.5"], tasks=2)
    job = _wait_state(hstore, job_id, {"COMPLETED", "FAILED", "CANCELLED"})
    assert job["state"] == "COMPLETED"
    for t in job["tasks"].values():
        st = t["state_times"]
        assert t["state"] == "COMPLETED" and t["exit_code"] == 0 and t["node"].startswith("hollow-0-")
        assert st["PENDING"] <= st["SCHEDULED"] <= st["STARTING"] <= st["RUNNING"] <= st["COMPLETED"]
        assert st["COMPLETED"] - st["RUNNING"] >= 1.5  # the emulated duration, a lower bound by construction
        assert t["container_id"].startswith("hollow-")
    assert hstore.networks.get(job_id) is None  # hollow-only jobs get no overlay network
    assert _containers(hcfg.cluster()) == []
    kinds = [e["state"] for e in hstore.events.for_job(job_id) if e["kind"] == "task_state"]
    assert kinds.count("RUNNING") == 2 and kinds.count("COMPLETED") == 2
    _all_free(hstore)


def test_a_hollow_task_fails_with_its_exit_code_and_its_job_fails(hcfg: Config, hstore: Store) -> None:
    job_id = _submit(hcfg, "hollow-exit", ["sh", "-c", "sleep 0.2; exit 3"])
    job = _wait_state(hstore, job_id, {"COMPLETED", "FAILED", "CANCELLED"})
    t = job["tasks"]["t0"]
    assert job["state"] == "FAILED" and t["state"] == "FAILED" and t["exit_code"] == 3
    assert "code 3" in t["reason"]
    _all_free(hstore)


def test_cancelling_a_running_hollow_task_cancels_it_and_releases_its_cores(hcfg: Config, hstore: Store) -> None:
    job_id = _submit(hcfg, "hollow-cancel", ["sleep", "600"])
    _wait_state(hstore, job_id, {"RUNNING"})
    base, auth = _api(hcfg)
    assert requests.delete(f"{base}/jobs/{job_id}", headers=auth, timeout=10).status_code == 202
    job = _wait_state(hstore, job_id, {"CANCELLED", "COMPLETED", "FAILED"})
    assert job["state"] == "CANCELLED" and job["tasks"]["t0"]["state"] == "CANCELLED"
    _all_free(hstore)


def test_batched_heartbeats_keep_every_hollow_node_alive(hcfg: Config, hstore: Store) -> None:
    first = {w["_id"]: w["heartbeat_at"] for w in hstore.workers.all()}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = {w["_id"]: w["heartbeat_at"] for w in hstore.workers.all()}
        if all(now[n] > first[n] for n in first):
            break
        time.sleep(0.3)
    assert all(now[n] > first[n] for n in first)
    assert {w["state"] for w in hstore.workers.all()} == {"READY"}


@pytest.fixture()
def private_store(hcfg: Config) -> Iterator[Store]:
    """A database of its own on the deployment's MongoDB server, which no running actor reads."""
    # As the deployment's admin: the actors' own users may not create or drop databases (docs/security.md).
    s = Store(pymongo.MongoClient(admin_uri(hcfg))[hcfg.mongo.database])
    name = f"rswarm_batch_{os.getpid()}"
    s.db.client.drop_database(name)
    private = Store(s.db.client[name])
    private.ensure_indexes()
    yield private
    s.db.client.drop_database(name)
    s.close()


def _placed_job(store: Store, tasks: int) -> str:
    from Common.jobspec import JobSpec, TaskSpec
    from Common.store.workers import Alloc

    store.workers.register("n1", [0, 1, 2, 3], 2**30, {}, hollow=True)
    spec = JobSpec(None, 0, None, None, [TaskSpec(f"t{i}", "rswarm/task:1", ["sleep", "1"], 1, 2**20, "1m")
                                         for i in range(tasks)])
    job_id = store.jobs.insert(spec)["_id"]
    assert store.jobs.acquire_lease(job_id, "tok", 30)
    assert store.workers.claim("n1", [Alloc(job_id, f"t{i}", (i,), 2**20, "tok") for i in range(tasks)])
    assert store.jobs.commit_placement(job_id, "tok", {f"t{i}": ("n1", [i]) for i in range(tasks)})
    return job_id


def test_discovery_applies_a_batch_of_reports_forward_only_and_releases_each_claim_once(
        private_store: Store) -> None:
    from Discovery.discovery import Discovery

    job_id = _placed_job(private_store, 3)
    disc = Discovery(private_store, None, None, 3600)

    def rep(task: str, state: str, at: float, **kw) -> dict:
        return {"job_id": job_id, "task": task, "attempt": 0, "state": state, "node": "n1", "at": at, **kw}

    t0 = time.time()
    disc.on_task_statuses([rep("t0", "STARTING", t0), rep("t0", "RUNNING", t0 + 1), rep("t1", "RUNNING", t0 + 1),
                           rep("t0", "STARTING", t0 + 2),  # late and out of order: ignored
                           rep("t2", "RUNNING", t0 + 1), rep("t0", "COMPLETED", t0 + 3, exit_code=0),
                           rep("t1", "FAILED", t0 + 4, exit_code=3, reason="exited with code 3"),
                           rep("t1", "FAILED", t0 + 4, exit_code=3),  # duplicate
                           {**rep("t2", "COMPLETED", t0 + 5), "attempt": 7}])  # another attempt: ignored
    job = private_store.jobs.get(job_id)
    t = job["tasks"]
    assert t["t0"]["state"] == "COMPLETED" and t["t0"]["state_times"]["STARTING"] == t0
    assert t["t0"]["state_times"]["RUNNING"] == t0 + 1 and t["t0"]["exit_code"] == 0
    assert t["t1"]["state"] == "FAILED" and t["t1"]["exit_code"] == 3
    assert t["t2"]["state"] == "RUNNING" and "COMPLETED" not in t["t2"]["state_times"]
    assert job["state"] == "RUNNING" and job["cancel_requested"]  # a failed task stops its siblings
    w = private_store.workers.get("n1")
    assert sorted(w["allocations"]) == [f"{job_id}:t2"] and w["free_cores"] == [0, 1, 3]
    assert w["mem_free"] == 2**30 - 2**20
    # replaying the whole batch changes nothing and releases nothing twice
    disc.on_task_statuses([rep("t0", "COMPLETED", t0 + 9, exit_code=0), rep("t1", "FAILED", t0 + 9, exit_code=3)])
    assert private_store.workers.get("n1")["free_cores"] == [0, 1, 3]
    assert private_store.jobs.get(job_id)["tasks"]["t0"]["state_times"]["COMPLETED"] == t0 + 3
    disc.on_task_statuses([rep("t2", "CANCELLED", t0 + 6), rep("t2", "CANCELLED", t0 + 6)])
    job = private_store.jobs.get(job_id)
    assert job["state"] == "FAILED" and private_store.workers.get("n1")["free_cores"] == [0, 1, 2, 3]
    kinds = [(e["kind"], e.get("task"), e.get("state")) for e in private_store.events.for_job(job_id)]
    assert kinds.count(("release", "t0", None)) == kinds.count(("release", "t1", None)) == 1
    assert kinds.count(("release", "t2", None)) == 1
    assert [s for k, task, s in kinds if k == "task_state" and task == "t0"] == ["STARTING", "RUNNING", "COMPLETED"]
    assert [s for k, _t, s in kinds if k == "job_state"] == ["QUEUED", "SCHEDULED", "RUNNING", "FAILED"]


def test_a_batch_that_races_another_writer_falls_back_to_one_report_at_a_time(private_store: Store) -> None:
    from Discovery.discovery import Discovery

    job_id = _placed_job(private_store, 2)
    disc = Discovery(private_store, None, None, 3600)
    col = private_store.jobs.col

    class RacingCollection:
        """The real collection; right after the batch reads the job, another writer moves t1 (a real write
        to MongoDB: only its timing is forced, between the batch's read and its conditional write)."""

        def __getattr__(self, name):
            return getattr(col, name)

        def find_one(self, *a, **kw):
            doc = col.find_one(*a, **kw)
            private_store.jobs.col = col
            assert private_store.jobs.transition_task(job_id, "t1", 0, TaskState.RUNNING, at=1.0)
            return doc

    private_store.jobs.col = RacingCollection()
    now = time.time()
    disc.on_task_statuses([{"job_id": job_id, "task": n, "attempt": 0, "state": "RUNNING", "node": "n1", "at": now}
                           for n in ("t0", "t1")])
    t = private_store.jobs.get(job_id)["tasks"]
    assert t["t0"]["state"] == "RUNNING" and t["t0"]["state_times"]["RUNNING"] == now
    assert t["t1"]["state"] == "RUNNING" and t["t1"]["state_times"]["RUNNING"] == 1.0  # the first writer won
    assert private_store.jobs.get(job_id)["state"] == "RUNNING"


def test_claims_on_several_nodes_in_one_write_apply_whole_or_leave_nothing_held(private_store: Store) -> None:
    from Common.store.workers import Alloc

    ws = private_store.workers
    for n in ("a", "b"):
        ws.register(n, [0, 1], 2**30, {}, hollow=True)
    snap = {n: ws.get(n) for n in ("a", "b")}
    got = ws.claim_many({"a": ([Alloc("j1", "t0", (0,), 2**20, "k1")], snap["a"]),
                         "b": ([Alloc("j1", "t1", (1,), 2**20, "k1")], snap["b"])})
    assert got is not None
    for n, core in (("a", 0), ("b", 1)):
        stored = ws.get(n)
        assert stored["generation"] == got[n]["generation"] and stored["free_cores"] == got[n]["free_cores"]
        assert stored["allocations"] == got[n]["allocations"] and core not in stored["free_cores"]
    # b changes after the snapshot (a release bumps its generation): nothing of the second claim stays
    assert ws.release("b", "j1:t1", "k1")
    fresh_a = ws.get("a")
    assert ws.claim_many({"a": ([Alloc("j2", "t0", (1,), 2**20, "k2")], fresh_a),
                          "b": ([Alloc("j2", "t1", (0,), 2**20, "k2")], got["b"])}) is None
    assert "j2:t0" not in ws.get("a")["allocations"] and ws.get("a")["free_cores"] == [1]
    assert ws.get("b")["allocations"] == {} and ws.get("b")["free_cores"] == [0, 1]
    # a snapshot that cannot hold the claim writes nothing at all
    assert ws.claim_many({"a": ([Alloc("j3", "t0", (0,), 2**20, "k3")], ws.get("a"))}) is None


def _pcts(values: list[float]) -> list[float]:
    return [float(np.percentile(values, q)) for q in (50, 90, 99)]


def test_compare_three_strategies_on_100_hollow_workers_matches_the_events_in_mongodb(
        hcfg: Config, hstore: Store, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    strategies = ["first-fit", "best-fit", "min-slack"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "StressClient", "compare", "--strategies", ",".join(strategies),
                        "--out", str(out), "--settle", "120",
                        "replay", str(SLICE), "--format", "alibaba-2017", "--window", "40:400", "--speed", "40",
                        "--max-instances", "2", "--max-tasks", "8", "--drain", "120", "--no-progress",
                        "--sample-interval", "0.5", "--poll-interval", "0.5"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "compare.json").read_text())
    assert [m["strategy"] for m in doc["strategies"]] == strategies
    for name in ("summary.txt", "compare.html", "waiting_cdf.png", "utilisation_fragmentation.png"):
        assert (out / name).stat().st_size > 0
    assert "HOLLOW" in (out / "summary.txt").read_text()
    for m in doc["strategies"]:
        run = json.loads((out / m["strategy"] / "results.json").read_text())
        assert run["config"]["strategy"] == m["strategy"]
        assert run["config"]["trace"]["bad_rows"] == 12 and run["config"]["trace"]["instances_capped"] > 0
        assert run["config"]["trace"]["tasks"] == sum(j["tasks"] for j in run["jobs"])
        ids = [j["job_id"] for j in run["jobs"] if j["job_id"]]
        # the jobs the FrontEnd stored while this strategy ran are exactly the ones the report counts
        in_db = hstore.jobs.col.count_documents({"created_at": {"$gte": run["started_at"], "$lte": run["ended_at"]}})
        assert m["submitted"] == len(ids) == in_db == 24 and m["refused"] == 0
        queued, scheduled, ended = {}, {}, {}
        for e in hstore.events.col.find({"kind": "job_state", "job_id": {"$in": ids}}).sort("at", 1):
            t = e["at"].timestamp()
            if e["state"] == "QUEUED":
                queued.setdefault(e["job_id"], t)
            elif e["state"] == "SCHEDULED":
                scheduled.setdefault(e["job_id"], t)
            elif e["state"] in ("COMPLETED", "FAILED", "CANCELLED"):
                ended[e["job_id"]] = (e["state"], t)
        states = [s for s, _ in ended.values()]
        assert m["completed"] == states.count("COMPLETED") and m["failed"] == states.count("FAILED")
        assert m["cancelled"] == states.count("CANCELLED") == 0 and len(ended) == len(ids)
        waits = [scheduled[j] - queued[j] for j in ids if j in scheduled]
        assert m["waiting_n"] == len(waits) == len(ids)
        for got, want in zip([m["waiting_p50"], m["waiting_p90"], m["waiting_p99"]], _pcts(waits), strict=True):
            assert got == pytest.approx(want, abs=0.25)
        makespan = max(t for s, t in ended.values() if s in ("COMPLETED", "FAILED")) - min(queued.values())
        assert m["makespan"] == pytest.approx(makespan, abs=0.25)
        assert 0 < m["utilization_mean"] <= 1 and 0 < m["utilization_p99"] <= 1
        assert m["workers"] == m["hollow_workers"] == NODES
        # no over-commit: a task runs (RUNNING -> its end) inside its claim, so two tasks that ran on the
        # same core of the same node never ran at the same time
        runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for job in hstore.jobs.col.find({"_id": {"$in": ids}}):
            for t in job["tasks"].values():
                st = t["state_times"]
                if "RUNNING" in st:
                    end = st.get(t["state"], st["RUNNING"])
                    for core in parse_cpuset(t["cpuset"]):
                        runs.setdefault((t["node"], core), []).append((st["RUNNING"], end))
        for spans in runs.values():
            spans.sort()
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    _all_free(hstore)
    assert _containers(hcfg.cluster()) == []
    scheduler = requests.get(f"{_api(hcfg)[0]}/scheduler", timeout=10).json()
    assert scheduler["strategy"] == "first-fit"  # restored as it was before the comparison


def test_a_sigkilled_hollow_host_resumes_its_running_task_after_up(hcfg: Config, hstore: Store) -> None:
    import signal

    job_id = _submit(hcfg, "hollow-resume", ["sleep", "4"])
    running = _wait_state(hstore, job_id, {"RUNNING"})
    began = running["tasks"]["t0"]["state_times"]["RUNNING"]
    procs = Management.Processes(hcfg)
    pid = procs.alive("hollow-0")
    os.kill(pid, signal.SIGKILL)  # a real crash of the process hosting every hollow node
    deadline = time.monotonic() + 10
    while procs.alive("hollow-0") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs.alive("hollow-0") is None
    Management.up(hcfg, with_worker=False, quiet=True, hollow=f"{NODES}:1:1g")  # starts only what is not running
    assert procs.alive("hollow-0") not in (None, pid)
    job = _wait_state(hstore, job_id, {"COMPLETED", "FAILED", "CANCELLED"})
    t = job["tasks"]["t0"]
    assert job["state"] == "COMPLETED" and t["attempt"] == 0  # resumed, not restarted elsewhere
    assert t["state_times"]["RUNNING"] == began and t["state_times"]["COMPLETED"] >= began + 4
    _all_free(hstore)


def test_down_stops_the_hollow_processes(hcfg: Config) -> None:
    procs = Management.Processes(hcfg)
    pid = procs.alive("hollow-0")
    assert pid is not None
    Management.down(hcfg, quiet=True)
    assert procs.alive("hollow-0") is None and not Path(f"/proc/{pid}").exists()
    assert Management.hollow_names(procs) == []
