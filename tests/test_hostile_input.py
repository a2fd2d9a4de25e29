"""Hostile job definitions and headers, pure: what an EPM may ask for, volume paths, cpuset caps, Host names.

The end-to-end counterparts (the real API, Worker and dockerd) are in tests/test_security.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from Common.api import allowed_hosts
from Common.config import ConfigError, load
from Common.errors import Invalid
from Common.jobspec import MAX_CORES_PER_TASK, MAX_CPUSET_CHARS, Limits, validate_job

ROOT = Path("/srv/rswarm-volumes")
LIMITS = Limits(volume_root=ROOT)
EPM = "job_info.tasks.e0"


def epm_job(**task: Any) -> dict[str, Any]:
    return {"job_info": {"evms": {"count": 2, "subnet": "10.60.0.0/24"},
                         "tasks": {"e0": {"req_cores": 1, **task}}}}


def refused(body: dict[str, Any]) -> Invalid:
    with pytest.raises(Invalid) as info:
        validate_job(copy.deepcopy(body), LIMITS)
    return info.value


# ---- item 1: an EPM runs only the system's code ------------------------------------------------
@pytest.mark.parametrize(("what", "task", "field"), [
    ("a volume over the agent's code", {"volumes": {f"{ROOT}/evil": {"bind": "/opt/rswarm/epm"}}}, f"{EPM}.volumes"),
    ("a PYTHONPATH", {"environment": {"PYTHONPATH": "/run/rswarm"}}, f"{EPM}.environment"),
    ("any environment", {"environment": {"X": "1"}}, f"{EPM}.environment"),
    ("a published port", {"ports": {"8080/tcp": 18080}}, f"{EPM}.ports"),
], ids=["volume-over-agent", "pythonpath", "environment", "ports"])
def test_epm_task_with_user_volumes_environment_or_ports_is_refused_naming_the_field(
        what: str, task: dict[str, Any], field: str) -> None:
    err = refused(epm_job(**task))
    assert err.field == field, what
    assert "EPM" in err.message


def test_epm_task_with_empty_volumes_environment_and_ports_is_accepted() -> None:
    spec = validate_job(epm_job(volumes={}, environment={}, ports={}), LIMITS)
    assert spec.tasks[0].volumes == {} and spec.tasks[0].environment == {} and spec.tasks[0].ports == {}


def test_ordinary_task_of_an_evm_job_keeps_its_environment() -> None:
    body = {"job_info": {"tasks": {"e0": {"req_cores": 1, "evms": {"count": 1, "subnet": "10.60.0.0/24"}},
                                   "app": {"image": "rswarm/task:1", "req_cores": 1,
                                           "environment": {"PYTHONPATH": "/x"}}}}}
    spec = validate_job(body, LIMITS)
    assert {t.name: t.environment for t in spec.tasks} == {"e0": {}, "app": {"PYTHONPATH": "/x"}}


# ---- item 2: volumes are stored relative to the job's own directory -----------------------------
def plain(**task: Any) -> dict[str, Any]:
    return {"job_info": {"tasks": {"t": {"image": "rswarm/task:1", "req_cores": 1, **task}}}}


def test_volume_host_path_is_stored_relative_to_the_jobs_directory() -> None:
    spec = validate_job(plain(volumes={f"{ROOT}/data/in": {"bind": "/in", "mode": "ro"},
                                       f"{ROOT}/out": {"bind": "/out"}}), LIMITS)
    assert spec.tasks[0].volumes == {"data/in": {"bind": "/in", "mode": "ro"}, "out": {"bind": "/out", "mode": "rw"}}
    assert validate_job(plain(volumes={str(ROOT): {"bind": "/all"}}), LIMITS).tasks[0].volumes == {
        ".": {"bind": "/all", "mode": "rw"}}


def test_tasks_of_a_job_may_share_one_volume_directory() -> None:
    body = {"job_info": {"tasks": {n: {"image": "rswarm/task:1", "req_cores": 1,
                                       "volumes": {f"{ROOT}/shared": {"bind": "/s"}}} for n in ("a", "b")}}}
    assert [t.volumes for t in validate_job(body, LIMITS).tasks] == [{"shared": {"bind": "/s", "mode": "rw"}}] * 2


@pytest.mark.parametrize(("a", "b"), [(f"{ROOT}/data", f"{ROOT}/data/sub"), (f"{ROOT}/data/sub", f"{ROOT}/data"),
                                      (str(ROOT), f"{ROOT}/x")], ids=["inner-second", "inner-first", "whole-root"])
def test_a_volume_inside_another_volume_of_the_job_is_refused_naming_the_second(a: str, b: str) -> None:
    body = {"job_info": {"tasks": {"t1": {"image": "rswarm/task:1", "req_cores": 1, "volumes": {a: {"bind": "/a"}}},
                                   "t2": {"image": "rswarm/task:1", "req_cores": 1, "volumes": {b: {"bind": "/b"}}}}}}
    err = refused(body)
    assert err.field == f"job_info.tasks.t2.volumes.{b}" and "inside another" in err.message
    one_task = refused(plain(volumes={a: {"bind": "/a"}, b: {"bind": "/b"}}))
    assert one_task.field == f"job_info.tasks.t.volumes.{b}"


def test_volumes_sharing_a_name_prefix_are_not_nested() -> None:
    spec = validate_job(plain(volumes={f"{ROOT}/x": {"bind": "/x"}, f"{ROOT}/xy": {"bind": "/xy"}}), LIMITS)
    assert set(spec.tasks[0].volumes) == {"x", "xy"}


@pytest.mark.parametrize(("host", "bind", "field"), [
    ("/etc", "/x", "job_info.tasks.t.volumes./etc"),
    (f"{ROOT}-other/x", "/x", f"job_info.tasks.t.volumes.{ROOT}-other/x"),
    (f"{ROOT}/../etc", "/x", f"job_info.tasks.t.volumes.{ROOT}/../etc"),
    (f"{ROOT}/a//b", "/x", f"job_info.tasks.t.volumes.{ROOT}/a//b"),
    (f"{ROOT}/a", "/", f"job_info.tasks.t.volumes.{ROOT}/a.bind"),
    (f"{ROOT}/a", "relative", f"job_info.tasks.t.volumes.{ROOT}/a.bind"),
], ids=["outside", "sibling-prefix", "dotdot", "not-normalised", "bind-root", "bind-relative"])
def test_volume_outside_the_root_or_malformed_is_refused_naming_it(host: str, bind: str, field: str) -> None:
    assert refused(plain(volumes={host: {"bind": bind}})).field == field


# ---- item 5: cpuset strings and counts are capped ------------------------------------------------
def test_cpuset_string_longer_than_the_cap_is_refused_naming_the_field() -> None:
    text = ",".join(["0"] * (MAX_CPUSET_CHARS // 2 + 1))
    err = refused(plain(node="n1", cpuset_cpus=text, req_cores=1))
    assert err.field == "job_info.tasks.t.cpuset_cpus" and "characters" in err.message


def test_cpuset_naming_more_cores_than_a_task_may_hold_is_refused_naming_the_field() -> None:
    err = refused(plain(node="n1", cpuset_cpus=f"0-{MAX_CORES_PER_TASK}", req_cores=None))
    assert err.field == "job_info.tasks.t.cpuset_cpus" and f"{MAX_CORES_PER_TASK + 1} cores" in err.message


def test_cpuset_that_is_not_a_string_is_refused_naming_the_field() -> None:
    assert refused(plain(node="n1", cpuset_cpus=["0"], req_cores=1)).field == "job_info.tasks.t.cpuset_cpus"


# ---- item 7: the names a Host header may carry ---------------------------------------------------
def test_default_allowed_hosts_are_loopback_and_the_configured_addresses_at_the_port() -> None:
    assert allowed_hosts("", 5001, "10.77.0.254", "") == [
        ("localhost", "5001"), ("127.0.0.1", "5001"), ("::1", "5001"), ("10.77.0.254", "5001")]


def test_configured_allowed_hosts_take_a_name_for_any_port_or_name_and_port() -> None:
    assert allowed_hosts(" api.example.org , [::1]:8080,Proxy:443", 5001) == [
        ("api.example.org", None), ("::1", "8080"), ("proxy", "443")]


# ---- the configuration of these bounds --------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "15", "-1", "many"])
def test_pids_limit_that_would_not_bound_a_container_is_a_config_error_naming_the_key(
        tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"(?i)pids_limit"):
        load(tmp_path / "absent.toml", env={"RSWARM_WORKER_PIDS_LIMIT": value})


def test_pids_limit_and_allowed_hosts_are_read_from_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[worker]\npids_limit = 256\n[frontend]\nallowed_hosts = "api.example.org"\n')
    cfg = load(f, env={})
    assert cfg.worker.pids_limit == 256 and cfg.frontend.allowed_hosts == "api.example.org"
