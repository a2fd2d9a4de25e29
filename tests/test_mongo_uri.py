"""MONGO_URI is a tested path: the end-to-end subset against a separate, authenticated MongoDB-wire deployment.

The test is the operator here: it starts a second SecantusDB server as its own process (its own port and
data directory, ``--auth``), creates an application user the way one does on any MongoDB (``createUser``
with ``readWrite`` + ``dbAdmin`` on the database, before auth is turned on), and hands the deployment only
``MONGO_URI`` with the credentials in it and retryable writes on. The system (its own run directory,
ports and cluster id, started by ``Management.py up`` in a clean environment) must then submit, place,
run, complete and cancel jobs, recover from a SIGKILLed Worker, and live through the server being
unreachable (SIGSTOP) for 30 s with every actor's pid unchanged. This deployment also runs with a short
job retention, to show a finished job's records removed after the configured time.

Select it alone with ``pytest -m mongo_uri``; the plain ``pytest`` of the README runs it too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pymongo
import pytest

import Management
from Common.config import Config
from Common.config import load as load_config
from tests.conftest import SLOT, remove_leftovers
from tests.helpers import Api, sleeper, task_job, wait_for

pytestmark = [pytest.mark.system, pytest.mark.mongo_uri]

ROOT = Path(__file__).resolve().parent.parent
BASE = 15000 + 100 * SLOT + 20  # clear of the session deployment's ports (tests/conftest.py)
MONGO_PORT = 28317 + SLOT
CLUSTER = f"rswuri{SLOT}"
DB = "rswarm_uri"
RETENTION_SECONDS = 20.0
STOP_SECONDS = 30


@dataclass
class UriSystem:
    cfg: Config = field(repr=False)
    env: dict[str, str] = field(repr=False)
    api: Api
    server: subprocess.Popen
    uri: str = field(repr=False)  # never in a test report
    password: str = field(repr=False)


def _start_server(data: Path, auth: bool, log: Path) -> subprocess.Popen:
    daemon = Path(sys.executable).parent / "secantusd-py"
    argv = [str(daemon), "--host", "127.0.0.1", "--port", str(MONGO_PORT), "--storage-path", str(data),
            "--log-level", "WARNING", *(["--auth"] if auth else [])]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    client = pymongo.MongoClient(f"mongodb://127.0.0.1:{MONGO_PORT}/", serverSelectionTimeoutMS=500)
    try:
        wait_for("the separate MongoDB server to answer", lambda: _pings(client), 60)
    finally:
        client.close()
    return proc


def _pings(client: pymongo.MongoClient) -> bool:
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGCONT)  # in case a test left it stopped
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _mgmt(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "Management.py"), *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def uri_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UriSystem]:
    base = tmp_path_factory.mktemp("mongo-uri")
    data, run_dir = base / "mongo-data", base / "run"
    password = os.urandom(12).hex()
    # The operator's setup: create the user before auth is on, then restart the server with --auth.
    setup = _start_server(data, auth=False, log=base / "mongo.log")
    try:
        client = pymongo.MongoClient(f"mongodb://127.0.0.1:{MONGO_PORT}/")
        client.admin.command("createUser", "rsw", pwd=password,
                             roles=[{"role": "readWrite", "db": DB}, {"role": "dbAdmin", "db": DB}])
        client.close()
    finally:
        _stop(setup)
    server = _start_server(data, auth=True, log=base / "mongo.log")
    uri = (f"mongodb://rsw:{quote(password)}@127.0.0.1:{MONGO_PORT}/?authSource=admin&retryWrites=true")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSWARM_") and k != "MONGO_URI"}
    env.update({
        "MONGO_URI": uri, "RSWARM_MONGO_DATABASE": DB, "RSWARM_RUN_DIR": str(run_dir),
        "RSWARM_CLUSTER_ID": CLUSTER, "RSWARM_API_TOKEN": "uri-token-" + os.urandom(8).hex(),
        "RSWARM_FRONTEND_PORT": str(BASE + 1), "RSWARM_GLOBALMANAGER_PORT": str(BASE),
        "RSWARM_GLOBALMANAGER_PUB_PORT": str(BASE + 7), "RSWARM_JOBMANAGER_HINT_PORT": str(BASE + 5),
        "RSWARM_DISCOVERY_PORT": str(BASE + 6), "RSWARM_GLOBALMANAGER_METRICS_PORT": str(BASE + 10),
        "RSWARM_JOBMANAGER_METRICS_PORT": str(BASE + 11), "RSWARM_DISCOVERY_METRICS_PORT": str(BASE + 12),
        "RSWARM_WORKER_METRICS_PORT": str(BASE + 13), "RSWARM_GLOBALMANAGER_NETWORK_POOL": f"10.{220 + SLOT}.0.0/16",
        "RSWARM_WORKER_SWEEP_SECONDS": "2", "RSWARM_WORKER_HEARTBEAT_SECONDS": "1",
        "RSWARM_GLOBALMANAGER_SWEEP_SECONDS": "1", "RSWARM_STORAGE_SWEEP_SECONDS": "1",
        "RSWARM_STORAGE_JOB_RETENTION_SECONDS": str(RETENTION_SECONDS),
        # A Worker is DOWN (and its jobs restarted) after this much silence; longer than the outage below,
        # so that the outage tests survival rather than failover.
        "RSWARM_DISCOVERY_HEARTBEAT_TIMEOUT_SECONDS": str(STOP_SECONDS + 30),
    })
    cfg = load_config(env=env)
    remove_leftovers(CLUSTER)
    try:
        r = _mgmt(["up"], env)
        assert r.returncode == 0, r.stdout + r.stderr
        yield UriSystem(cfg, env, Api(cfg.frontend_url, env["RSWARM_API_TOKEN"]), server, uri, password)
    finally:
        _mgmt(["down"], env)
        remove_leftovers(CLUSTER)
        _stop(server)
        shutil.rmtree(data, ignore_errors=True)  # the logs stay, in pytest's kept temporary directory


def _db(s: UriSystem):
    return pymongo.MongoClient(s.uri, serverSelectionTimeoutMS=5000)[DB]


def test_no_embedded_server_and_the_password_in_no_log_argv_or_environment(uri_system: UriSystem) -> None:
    procs = Management.Processes(uri_system.cfg)
    assert procs.record("mongo") is None  # the system uses the given server only
    pw = uri_system.password.encode()
    for actor in Management.ACTORS:
        pid = procs.alive(actor)
        assert pid, actor
        for what in ("cmdline", "environ"):
            assert pw not in Path(f"/proc/{pid}/{what}").read_bytes(), f"the password is in {actor}'s {what}"
        assert b"MONGO_URI=mongodb://127.0.0.1:" in Path(f"/proc/{pid}/environ").read_bytes()
    for role in ("control", "worker"):  # where the children read it from instead
        f = uri_system.cfg.run_path / "secrets" / f"mongo-{role}.json"
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert json.loads(f.read_text()) == {"user": "rsw", "password": uri_system.password}
    out = _mgmt(["status", "--json"], uri_system.env)
    assert out.returncode == 0 and uri_system.password not in out.stdout
    assert json.loads(out.stdout)["mongo_uri"].startswith("mongodb://rsw:***@127.0.0.1")
    for log in procs.log_dir.glob("*.log"):
        assert uri_system.password not in log.read_text(errors="replace"), log


def test_a_job_is_placed_runs_and_completes_with_its_records_in_the_given_server(uri_system: UriSystem) -> None:
    api = uri_system.api
    job_id = api.submit(task_job({"a": sleeper(1), "b": sleeper(1)}))
    job = api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    assert job["state"] == "COMPLETED", job
    assert all(t["state"] == "COMPLETED" and t["node"] and t["cpuset"] for t in job["tasks"].values())
    assert _db(uri_system)["jobs"].find_one({"_id": job_id})["state"] == "COMPLETED"


def test_cancel_stops_a_running_job(uri_system: UriSystem) -> None:
    api = uri_system.api
    job_id = api.submit(task_job({"t": sleeper(600)}))
    api.wait_tasks(job_id, "RUNNING")
    assert api.delete(f"/jobs/{job_id}").status_code == 202
    job = api.wait_state(job_id, "CANCELLED")
    assert job["tasks"]["t"]["state"] == "CANCELLED"


def test_a_sigkilled_worker_is_restarted_by_its_supervisor_and_its_job_completes(uri_system: UriSystem) -> None:
    api = uri_system.api
    procs = Management.Processes(uri_system.cfg)
    job_id = api.submit(task_job({"t": sleeper(4)}))
    api.wait_tasks(job_id, "RUNNING")
    pid = procs.alive("worker")
    os.killpg(pid, signal.SIGKILL)
    # supervisord brings it back: nobody runs `up`
    wait_for("a new Worker process", lambda: procs.alive("worker") not in (None, pid), 60)
    job = api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    assert job["state"] == "COMPLETED", job


def test_actors_survive_the_server_unreachable_for_30s(uri_system: UriSystem) -> None:
    procs = Management.Processes(uri_system.cfg)
    before = {a: procs.alive(a) for a in Management.ACTORS}
    assert all(before.values()), before
    os.killpg(uri_system.server.pid, signal.SIGSTOP)
    try:
        time.sleep(STOP_SECONDS)  # the outage itself: every actor's MongoDB calls time out meanwhile
    finally:
        os.killpg(uri_system.server.pid, signal.SIGCONT)
    after = {a: procs.alive(a) for a in Management.ACTORS}
    assert after == before, (before, after)
    job_id = uri_system.api.submit(task_job({"t": sleeper(1)}))
    job = uri_system.api.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)
    assert job["state"] == "COMPLETED", job
    assert {a: procs.alive(a) for a in Management.ACTORS} == before


def test_retention_removes_a_finished_jobs_records_after_the_configured_time(uri_system: UriSystem) -> None:
    api = uri_system.api
    job_id = api.submit(task_job({"t": sleeper(0.5)}))
    job = api.wait_state(job_id, "COMPLETED")
    ended = job["state_times"]["COMPLETED"]
    db = _db(uri_system)
    assert db["jobs"].find_one({"_id": job_id}) is not None
    wait_for("the finished job's records to be deleted", lambda: db["jobs"].find_one({"_id": job_id}) is None,
             RETENTION_SECONDS + 60)
    assert time.time() - ended >= RETENTION_SECONDS  # not before its time
    assert api.get(f"/jobs/{job_id}").status_code == 404
