"""Common/cgroups.py: one helper that reads cgroup files on both layouts.

This machine runs cgroup v1, so the v2 cases are laid out as a directory tree the test builds (a
cgroup v2 host cannot be produced here; that fake is the only one in this file). The v1 cases read
this machine's real hierarchy for a real process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from Common import cgroups


def test_reads_the_memory_usage_of_a_real_process_on_this_host() -> None:
    assert cgroups.version() == 1  # the project's machines (ENVIRONMENT.md)
    assert int(cgroups.read(os.getpid(), "memory_usage")) > 0
    assert cgroups.path(os.getpid(), "cpus").name == "cpuset.cpus"
    assert cgroups.inside_path("memory_limit") == "/sys/fs/cgroup/memory/memory.limit_in_bytes"


def _v2_tree(tmp_path: Path) -> tuple[Path, Path]:
    root, proc = tmp_path / "cg", tmp_path / "proc"
    (root / "system.slice" / "docker-abc.scope").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu memory pids\n")
    (root / "system.slice" / "docker-abc.scope" / "memory.max").write_text("67108864\n")
    (root / "system.slice" / "docker-abc.scope" / "pids.max").write_text("256\n")
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cgroup").write_text("0::/system.slice/docker-abc.scope\n")
    return root, proc


def test_on_cgroup_v2_the_unified_file_of_the_process_cgroup_is_read(tmp_path: Path) -> None:
    root, proc = _v2_tree(tmp_path)
    assert cgroups.version(root) == 2
    assert cgroups.path(42, "memory_limit", root, proc).read_text().strip() == "67108864"
    assert cgroups.path(42, "pids_max", root, proc).read_text().strip() == "256"
    assert cgroups.inside_path("cpus", root) == str(root / "cpuset.cpus")


def test_on_cgroup_v2_kernel_memory_is_unsupported_not_a_wrong_file(tmp_path: Path) -> None:
    root, proc = _v2_tree(tmp_path)
    with pytest.raises(cgroups.Unsupported):
        cgroups.path(42, "kmem_usage", root, proc)


def test_an_unknown_name_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="'swap'"):
        cgroups.inside_path("swap")
