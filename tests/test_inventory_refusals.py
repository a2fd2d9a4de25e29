"""`up --inventory` refuses what could never work, before it starts or changes anything: a loopback manager or
control address while the inventory lists hosts, a malformed manager_address, and a manager engine whose
Swarm advertises another address (this machine's root engine, whose single-node Swarm advertises 127.0.0.1,
is only *read* here: the refusal must leave it untouched)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from Common.config import load as load_config
from Common.ops import inventory
from Common.ops.remote import RemoteError, load_inventory

ROOT = Path(__file__).resolve().parent.parent


def _inventory(tmp_path: Path, manager_address: str | None) -> Path:
    f = tmp_path / "hosts.toml"
    top = [f'known_hosts = "{tmp_path / "known_hosts"}"']
    if manager_address is not None:
        top.append(f'manager_address = "{manager_address}"')
    f.write_text("\n".join([*top, "", "[[host]]", 'name = "node-a"', 'address = "192.0.2.21"', 'user = "root"',
                            f'key = "{tmp_path / "id"}"', 'repo = "/opt/rswarm"', 'run_dir = "/var/lib/rswarm"', ""]))
    return f


def _cfg(tmp_path: Path, **env: str):
    return load_config(env={"RSWARM_RUN_DIR": str(tmp_path / "run"), **env})


def test_a_loopback_manager_address_with_remote_hosts_is_refused_naming_the_fix(tmp_path: Path) -> None:
    inv = load_inventory(_inventory(tmp_path, None))  # falls back to globalmanager.advertise_addr = 127.0.0.1
    with pytest.raises(inventory.InventoryError, match=r"manager_address is 127\.0\.0\.1 \(loopback\) but .* lists 1"):
        inventory.resolve_addresses(_cfg(tmp_path), inv)
    inv = load_inventory(_inventory(tmp_path, "10.0.0.10"))
    with pytest.raises(inventory.InventoryError, match=r"control_address is 127\.0\.0\.1"):
        inventory.resolve_addresses(_cfg(tmp_path, RSWARM_CONTROL_ADDRESS="127.0.0.1"), inv)
    assert inventory.resolve_addresses(_cfg(tmp_path), inv) == ("10.0.0.10", "10.0.0.10")
    inv.hosts = []  # no remote host: loopback is fine (one machine)
    inv.manager_address = "127.0.0.1"
    assert inventory.resolve_addresses(_cfg(tmp_path), inv) == ("127.0.0.1", "127.0.0.1")


def test_a_malformed_manager_address_or_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="manager_address"):
        load_inventory(_inventory(tmp_path, "not-an-address"))
    f = _inventory(tmp_path, "10.0.0.10")
    f.write_text("managr_address = 1\n" + f.read_text())
    with pytest.raises(RemoteError, match="unknown top-level key 'managr_address'"):
        load_inventory(f)


def test_up_with_a_loopback_manager_refuses_before_starting_anything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSWARM_") and k != "MONGO_URI"}
    env["RSWARM_RUN_DIR"] = str(tmp_path / "run")
    r = subprocess.run([sys.executable, str(ROOT / "Management.py"), "up", "--inventory",
                        str(_inventory(tmp_path, "127.0.0.1"))], env=env, capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "manager_address is 127.0.0.1 (loopback)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "pids").exists()  # nothing was started


def test_a_swarm_advertising_loopback_is_refused_with_the_command_that_fixes_it_and_left_alone(tmp_path: Path) -> None:
    root = docker.APIClient(base_url="unix:///var/run/docker.sock", timeout=30)
    before = root.info()["Swarm"]
    if before.get("LocalNodeState") != "active" or before.get("NodeAddr") != "127.0.0.1":
        pytest.skip("this machine's engine is not a single-node Swarm advertising 127.0.0.1")
    cfg = _cfg(tmp_path, RSWARM_GLOBALMANAGER_DOCKER_URL="unix:///var/run/docker.sock")
    with pytest.raises(inventory.InventoryError) as exc:
        inventory.ensure_manager(cfg, "10.0.0.10", "", 3, say=lambda _m: None)
    assert "advertises 127.0.0.1, a loopback address" in str(exc.value)
    assert "docker swarm leave --force && docker swarm init --advertise-addr 10.0.0.10" in str(exc.value)
    after = root.info()["Swarm"]
    assert (after["NodeID"], after["NodeAddr"], after["LocalNodeState"]) == \
        (before["NodeID"], before["NodeAddr"], before["LocalNodeState"])
