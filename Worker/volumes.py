"""A task's binds, resolved on the Worker's own host without following a symbolic link.

A job's volume is stored as a path relative to the job's own directory (``Common.jobspec``: the user's
host path ``<volume_root>/<rel>`` is stored as ``<rel>``); on the node that runs the task it is mounted
from ``<volume_root>/<job_id>/<rel>``, where ``volume_root`` is this Worker's configured root.

The FrontEnd checks the path lexically only: what a path resolves to can only be known on the host that
mounts it, at the moment it mounts it. So just before a container is created, ``resolve`` walks every
component from the root down with ``openat(O_PATH | O_NOFOLLOW)`` (each step relative to the
descriptor of the previous directory, so no component is ever looked up through a symlink), creates
the missing ones, and refuses the bind if any component is a symbolic link or not a directory, or if
the directory it reaches is not the path it names (a bind mount underneath, say). A container of the
job can plant a symlink in its own directory (the directory is its to write); the next container that
would bind through it is refused with the reason.

Python's ``os.open(..., dir_fd=)`` is openat(2); no library offers this walk (``pathlib``/``os.path``
resolve through symlinks by design), hence this small module. What remains (docs/security.md): between
this check and dockerd's mount, a running container of the same job could swap a checked directory for
a symlink; containers of other jobs cannot, as they never see this job's directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from Common.jobspec import volume_contains

_DIR_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class VolumeRefused(Exception):
    """A bind cannot be mounted safely; the message says why, for a person."""


def job_dir_parts(job_id: str, rel: str) -> list[str]:
    """The components below the volume root: the job's directory, then the volume's relative path."""
    parts = [job_id, *[p for p in rel.split("/") if p not in ("", ".")]]
    for p in parts:
        if p == ".." or "/" in p or "\x00" in p:
            raise VolumeRefused(f"volume path {rel!r} of job {job_id} leaves the job's directory")
    return parts


def _open_or_make(parent: int, name: str, shown: str) -> int:
    """An O_PATH descriptor of directory ``name`` under ``parent``, created if missing; never a symlink."""
    for _ in range(2):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # made meanwhile (a sibling task): open it next round
                os.mkdir(name, 0o755, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise VolumeRefused(f"volume path {shown}: {exc.strerror}") from None
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=parent)
                raise VolumeRefused(f"volume path {shown} is a symbolic link (to {target!r}); binds are never "
                                    "followed through symbolic links") from None
            raise VolumeRefused(f"volume path {shown} is not a directory") from None
    raise VolumeRefused(f"volume path {shown} could not be created")


def resolve(root: Path, job_id: str, rel: str) -> str:
    """The host directory to bind for volume ``rel`` of job ``job_id``; created, and checked component by
    component without following symlinks. Raises ``VolumeRefused``."""
    real_root = os.path.realpath(root)  # the operator's root itself may sit behind a symlink (e.g. /tmp)
    os.makedirs(real_root, mode=0o755, exist_ok=True)
    parts = job_dir_parts(job_id, rel)
    fd = os.open(real_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        shown = real_root
        for name in parts:
            shown = f"{shown}/{name}"
            nxt = _open_or_make(fd, name, shown)
            os.close(fd)
            fd = nxt
        reached = os.readlink(f"/proc/self/fd/{fd}")
        if reached != shown:
            raise VolumeRefused(f"volume path {shown} resolves to {reached}, outside where it was named")
        return shown
    finally:
        os.close(fd)


def job_paths(job: dict[str, Any]) -> list[str]:
    """Every job-relative volume path the job's document gives its ordinary tasks (EPMs mount none)."""
    return [v["path"] for t in job.get("tasks", {}).values() if not t.get("evms")
            for v in t.get("volumes") or [] if isinstance(v, dict) and isinstance(v.get("path"), str)]


def _check_not_inside(root: Path, job_id: str, rel: str, job_rels: Iterable[str], mounted: Iterable[str]) -> None:
    """Refuse ``rel`` when another volume of the job (by its document) or a bind of one of its containers
    (as the engine reports it) is a directory above it: a container writing there could swap a component of
    ``rel`` for a symlink between this check and dockerd's mount. The FrontEnd refuses such jobs; this is
    the re-check against an altered document."""
    job_dir = f"{os.path.realpath(root)}/{job_id}"
    norm = "/".join(job_dir_parts(job_id, rel)[1:]) or "."
    others = {"/".join(job_dir_parts(job_id, r)[1:]) or "." for r in job_rels}
    others |= {os.path.relpath(m, job_dir) for m in mounted if m == job_dir or m.startswith(job_dir + "/")}
    for outer in sorted(others):
        if volume_contains(outer, norm):
            raise VolumeRefused(f"volume path {job_dir}/{norm} lies inside {job_dir}/{outer}, another volume of "
                                "the job: a container writing there could swap a directory on this path")


def binds_for(root: Path, job_id: str, volumes: list[dict[str, Any]], job_rels: Iterable[str] = (),
              mounted: Iterable[str] = ()) -> dict[str, dict[str, str]]:
    """docker-py's ``binds`` for a task's stored volumes (``[{path, bind, mode}]``). ``job_rels``: every volume
    path of the job's document; ``mounted``: the bind sources of the job's containers on this engine.
    Raises ``VolumeRefused``."""
    job_rels, mounted = list(job_rels), list(mounted)
    out: dict[str, dict[str, str]] = {}
    for v in volumes:
        rel = v.get("path")
        if not isinstance(rel, str) or rel.startswith("/"):
            raise VolumeRefused(f"volume {v.get('bind')!r} of job {job_id} has no path relative to the job's "
                                "directory (stored by an older version or altered); refusing it")
        _check_not_inside(root, job_id, rel, job_rels, mounted)
        out[resolve(root, job_id, rel)] = {"bind": str(v["bind"]), "mode": "ro" if v.get("mode") == "ro" else "rw"}
    return out
