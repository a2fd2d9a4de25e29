"""Fixtures that bring up the real system once per test session.

The session's deployment is isolated from any other on the machine: its own run directory, ports,
MongoDB database and cluster id (which labels every container and network it creates), so leftovers
of a crashed earlier run are found by label and removed at start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import Management  # noqa: E402
from Common.config import Config  # noqa: E402
from Common.config import load as load_config  # noqa: E402
from Common.store import Store  # noqa: E402
from tests.helpers import Api  # noqa: E402

# Several test sessions may share this machine's engine (e.g. parallel runs by developers): each picks
# its own RSWARM_TEST_SLOT (0-9), which shifts every port, the cluster id and the network pool.
SLOT = int(os.environ.get("RSWARM_TEST_SLOT", "0"))
TEST_CLUSTER = "rswtest" if SLOT == 0 else f"rswtest{SLOT}"
_BASE = 15000 + 100 * SLOT
TEST_PORTS = {
    "RSWARM_FRONTEND_PORT": str(_BASE + 1),
    "RSWARM_GLOBALMANAGER_PORT": str(_BASE),
    "RSWARM_GLOBALMANAGER_PUB_PORT": str(_BASE + 57),
    "RSWARM_JOBMANAGER_HINT_PORT": str(_BASE + 55),
    "RSWARM_DISCOVERY_PORT": str(_BASE + 56),
    "RSWARM_MONGO_EMBEDDED_PORT": str(28117 + SLOT),
    "RSWARM_GLOBALMANAGER_NETWORK_POOL": f"10.{210 + SLOT}.0.0/16",
    "RSWARM_GLOBALMANAGER_METRICS_PORT": str(_BASE + 10),
    "RSWARM_JOBMANAGER_METRICS_PORT": str(_BASE + 11),
    "RSWARM_DISCOVERY_METRICS_PORT": str(_BASE + 12),
    "RSWARM_WORKER_METRICS_PORT": str(_BASE + 13),
}


def remove_leftovers(cluster: str) -> None:
    """Containers and networks of an earlier, crashed run of the same test cluster."""
    label = f"label=rswarm.cluster={cluster}"
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    nets = subprocess.run(["docker", "network", "ls", "-q", "--filter", label], capture_output=True,
                          text=True).stdout.split()
    if nets:
        subprocess.run(["docker", "network", "rm", *nets], capture_output=True)


@pytest.fixture(scope="session")
def test_env() -> dict[str, str]:
    run_dir = Path(os.environ.get("RSWARM_TEST_RUN_DIR", f"/tmp/rswarm-test{SLOT or ''}"))
    return {
        **TEST_PORTS,
        "RSWARM_RUN_DIR": str(run_dir),
        "RSWARM_CLUSTER_ID": TEST_CLUSTER,
        "RSWARM_API_TOKEN": "test-token-" + os.urandom(8).hex(),
        "RSWARM_MONGO_DATABASE": "rswarm_test",
        # The JobManager's safety-net sweep is made slow so that a test can tell a placement
        # triggered by a hint (a release, a submission) from one found by polling.
        "RSWARM_JOBMANAGER_SWEEP_SECONDS": "3600",
        # Likewise the Worker's periodic rewrite of every EPM's desired file: the files must follow MongoDB
        # through the EPMs' versions (tests/test_evm_e2e.py), not through the safety net.
        "RSWARM_WORKER_EVM_REFRESH_SECONDS": "3600",
        "RSWARM_WORKER_SWEEP_SECONDS": "2",
        "RSWARM_WORKER_HEARTBEAT_SECONDS": "1",
        "RSWARM_GLOBALMANAGER_SWEEP_SECONDS": "2",
        # Storage bounds (tests/test_checkpoints.py): the retention sweep runs with the GM's, and the quota is
        # small enough that a 512m task's checkpoint is refused while 64m tasks' are taken.
        "RSWARM_STORAGE_SWEEP_SECONDS": "2",
        "RSWARM_STORAGE_CHECKPOINT_QUOTA_BYTES": str(300 * 2**20),
    }


@pytest.fixture(scope="session")
def cfg(test_env: dict[str, str]) -> Iterator[Config]:
    saved = dict(os.environ)
    os.environ.update(test_env)
    config = load_config()
    yield config
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def system(cfg: Config) -> Iterator[Config]:
    """The whole system, up: dockerd, embedded MongoDB, GM, Discovery, JM, FE and a local Worker."""
    Management.down(cfg, quiet=True)
    remove_leftovers(TEST_CLUSTER)
    shutil.rmtree(cfg.run_path, ignore_errors=True)  # the embedded MongoDB's data lives here
    if cfg.mongo.uri:  # a real mongod given through MONGO_URI: start from an empty database
        store = Store.connect(cfg)
        store.db.client.drop_database(cfg.mongo.database)
        store.close()
    Management.up(cfg, quiet=True)
    yield cfg
    Management.down(cfg, quiet=True)
    remove_leftovers(TEST_CLUSTER)


@pytest.fixture(scope="session")
def api(system: Config) -> Api:
    return Api(system.frontend_url, system.token())


@pytest.fixture()
def store(system: Config) -> Iterator[Store]:
    s = Store.connect(system)
    yield s
    s.close()


@pytest.fixture()
def idle_cluster(api: Api, store: Store) -> Iterator[None]:
    """Start and end with no unfinished job, so tests do not compete for the node's cores."""
    _cancel_all(api, store)
    yield
    _cancel_all(api, store)


def _cancel_all(api: Api, store: Store) -> None:
    active = store.jobs.in_states(["QUEUED", "SCHEDULED", "RUNNING", "CANCELLING"])
    for job in active:
        api.delete(f"/jobs/{job['_id']}")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and store.jobs.in_states(["QUEUED", "SCHEDULED", "RUNNING", "CANCELLING"]):
        time.sleep(0.2)
