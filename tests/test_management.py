"""Management.py: up / status / down on a second, private deployment, and its input validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SLOT

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.system


def _run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "Management.py"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture()
def second_env(tmp_path: Path, system) -> dict[str, str]:
    base = 17000 + 100 * SLOT
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSWARM_") and k != "MONGO_URI"}
    env.update({
        "RSWARM_RUN_DIR": str(tmp_path / "run"),
        "RSWARM_CLUSTER_ID": f"rswmgmt{SLOT}",
        "RSWARM_FRONTEND_PORT": str(base + 1), "RSWARM_GLOBALMANAGER_PORT": str(base),
        "RSWARM_GLOBALMANAGER_PUB_PORT": str(base + 57), "RSWARM_JOBMANAGER_HINT_PORT": str(base + 55),
        "RSWARM_DISCOVERY_PORT": str(base + 56), "RSWARM_GLOBALMANAGER_METRICS_PORT": str(base + 10),
        "RSWARM_JOBMANAGER_METRICS_PORT": str(base + 11), "RSWARM_DISCOVERY_METRICS_PORT": str(base + 12),
        "RSWARM_WORKER_METRICS_PORT": str(base + 13), "RSWARM_MONGO_EMBEDDED_PORT": str(29117 + SLOT),
        "RSWARM_GLOBALMANAGER_NETWORK_POOL": f"10.{230 + SLOT}.0.0/16",
    })
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_up_status_down_on_the_embedded_defaults(second_env: dict[str, str], tmp_path: Path) -> None:
    up = _run(["up"], second_env)
    try:
        logs = "".join(f"--- {f.name}\n{f.read_text()[-1500:]}" for f in (tmp_path / "run" / "logs").glob("*.log"))
        assert up.returncode == 0, up.stdout + up.stderr + logs
        st = json.loads(_run(["status", "--json"], second_env).stdout)
        token_file = Path(st["token_file"])
        assert token_file.exists() and (token_file.stat().st_mode & 0o777) == 0o600
        procs = st["processes"]
        assert set(procs) >= {"mongo", "globalmanager", "discovery", "jobmanager", "frontend", "worker"}
        assert all(p["alive"] and p["pid"] for p in procs.values()), procs
        assert procs["frontend"]["port"] == int(second_env["RSWARM_FRONTEND_PORT"])
        assert st["cluster"]["workers"][0]["state"] == "READY"
        assert st["swagger_ui"].endswith("/api/v1/docs")
        pids = [p["pid"] for p in procs.values()]
        # up is idempotent: nothing is started twice.
        again = _run(["up"], second_env)
        assert again.returncode == 0 and "starting" not in again.stdout
        st2 = json.loads(_run(["status", "--json"], second_env).stdout)
        assert [p["pid"] for p in st2["processes"].values()] == pids
        text = _run(["status"], second_env).stdout
        assert "frontend" in text and "Swagger UI" in text
    finally:
        down = _run(["down"], second_env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(_alive(pid) for pid in pids)
    st = json.loads(_run(["status", "--json"], second_env).stdout)
    assert not any(p["alive"] for p in st["processes"].values())
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "run")], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""


@pytest.mark.parametrize(("env_extra", "args", "needle"), [
    ({"RSWARM_FRONTEND_PORT": "http"}, ["status"], "RSWARM_FRONTEND_PORT"),
    ({"RSWARM_FRONTEND_PORT": "70000"}, ["status"], "frontend.port"),
    ({"RSWARM_JOBMANAGER_SWEEP_SECONDS": "-1"}, ["status"], "jobmanager.sweep_seconds"),
    ({}, ["frobnicate"], "invalid choice"),
])
def test_bad_config_and_flags_are_clear_cli_errors(second_env, env_extra, args, needle) -> None:
    r = _run(args, {**second_env, **env_extra}, timeout=60)
    assert r.returncode == 2
    assert needle in r.stderr


def test_bad_config_file_names_the_key(second_env, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[frontend]\nprot = 5001\n")
    r = _run(["--config", str(bad), "status"], second_env, timeout=60)
    assert r.returncode == 2 and "frontend.prot" in r.stderr
    bad.write_text("api_token = 'secret'\n")
    r = _run(["--config", str(bad), "status"], second_env, timeout=60)
    assert r.returncode == 2 and "RSWARM_API_TOKEN" in r.stderr


def test_demo_runs_its_jobs_to_completed_and_ends_with_the_workers_table(second_env: dict[str, str]) -> None:
    try:
        demo = _run(["demo"], second_env, timeout=420)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        out = demo.stdout
        assert out.count("COMPLETED") >= 3, out
        tail = out[out.rindex("WORKERS"):]
        assert "worker" in tail and "occupancy" in tail and "READY" in tail, tail
        assert "[{" not in tail and "'id':" not in tail  # a table, not a raw Python list of dicts
    finally:
        _run(["down"], second_env)
