"""Worker.volumes on a real filesystem: the no-symlink walk from the volume root to a job's bind."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from Worker.volumes import VolumeRefused, binds_for, resolve


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "volumes"
    r.mkdir()
    return r


def test_missing_directories_are_created_under_the_jobs_directory(root: Path) -> None:
    got = resolve(root, "job-a", "data/in")
    assert got == f"{os.path.realpath(root)}/job-a/data/in"
    assert Path(got).is_dir() and not Path(got).is_symlink()


def test_the_job_directory_itself_is_the_bind_for_the_root_path(root: Path) -> None:
    assert resolve(root, "job-a", ".") == f"{os.path.realpath(root)}/job-a"


@pytest.mark.parametrize("target", ["/", "..", "../job-b", "/etc"], ids=["root", "parent", "other-job", "etc"])
def test_a_symlink_anywhere_on_the_path_is_refused_with_its_target(root: Path, target: str) -> None:
    (root / "job-a" / "data").mkdir(parents=True)
    (root / "job-b").mkdir()
    (root / "job-a" / "data" / "escape").symlink_to(target)
    with pytest.raises(VolumeRefused, match=re.escape(f"escape is a symbolic link (to {target!r})")):
        resolve(root, "job-a", "data/escape/etc")
    assert not (root / "job-b" / "etc").exists()  # nothing made through the link


def test_a_job_directory_that_is_itself_a_symlink_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (root / "job-a").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(VolumeRefused, match="job-a is a symbolic link"):
        resolve(root, "job-a", "x")
    assert not (tmp_path / "elsewhere" / "x").exists()


def test_a_dangling_symlink_is_refused_and_nothing_is_created_at_its_target(root: Path, tmp_path: Path) -> None:
    (root / "job-a").mkdir()
    (root / "job-a" / "d").symlink_to(tmp_path / "not-yet")
    with pytest.raises(VolumeRefused, match="symbolic link"):
        resolve(root, "job-a", "d/x")
    assert not (tmp_path / "not-yet").exists()


def test_a_regular_file_on_the_path_is_refused(root: Path) -> None:
    (root / "job-a").mkdir()
    (root / "job-a" / "f").write_text("x")
    with pytest.raises(VolumeRefused, match="not a directory"):
        resolve(root, "job-a", "f")


@pytest.mark.parametrize(("job", "rel"), [("job-a", "../job-b"), ("job-a", "x/../../job-b"), ("a/b", "x"),
                                          ("..", "x")])
def test_a_path_leaving_the_jobs_directory_is_refused(root: Path, job: str, rel: str) -> None:
    with pytest.raises(VolumeRefused, match="leaves the job's directory"):
        resolve(root, job, rel)


def test_binds_refuses_a_stored_absolute_host_path(root: Path) -> None:
    with pytest.raises(VolumeRefused, match="no path relative"):
        binds_for(root, "job-a", [{"path": "/etc", "bind": "/x", "mode": "rw"}])
    with pytest.raises(VolumeRefused, match="no path relative"):
        binds_for(root, "job-a", [{"host": "/etc", "bind": "/x", "mode": "rw"}])


def test_binds_maps_each_volume_and_only_allows_ro_or_rw(root: Path) -> None:
    got = binds_for(root, "job-a", [{"path": "in", "bind": "/in", "mode": "ro"},
                                    {"path": "out", "bind": "/out", "mode": "rshared"}])
    real = os.path.realpath(root)
    assert got == {f"{real}/job-a/in": {"bind": "/in", "mode": "ro"},
                   f"{real}/job-a/out": {"bind": "/out", "mode": "rw"}}


def test_a_volume_inside_another_of_the_jobs_document_is_refused(root: Path) -> None:
    with pytest.raises(VolumeRefused, match=r"lies inside .*/job-a/data, another volume"):
        binds_for(root, "job-a", [{"path": "data/sub", "bind": "/x"}], job_rels=["data", "data/sub"])
    with pytest.raises(VolumeRefused, match="lies inside"):
        binds_for(root, "job-a", [{"path": "x", "bind": "/x"}], job_rels=[".", "x"])
    assert not (root / "job-a").exists()  # refused before anything was made


def test_a_volume_inside_a_bind_of_one_of_the_jobs_containers_is_refused(root: Path) -> None:
    real = os.path.realpath(root)
    with pytest.raises(VolumeRefused, match="lies inside"):
        binds_for(root, "job-a", [{"path": "data/sub", "bind": "/x"}], job_rels=["data/sub"],
                  mounted=[f"{real}/job-a/data", "/var/lib/other"])


def test_the_same_directory_and_other_jobs_binds_are_not_nesting(root: Path) -> None:
    real = os.path.realpath(root)
    got = binds_for(root, "job-a", [{"path": "data", "bind": "/d"}], job_rels=["data", "data", "xdata"],
                    mounted=[f"{real}/job-a/data", f"{real}/job-b", f"{real}/job-a-2/data"])
    assert list(got) == [f"{real}/job-a/data"]
