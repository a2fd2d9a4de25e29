"""Read a process's cgroup files on either layout: cgroup v1 (one tree per controller, as on the project's
Debian 12 machines) or cgroup v2 (one unified tree, as on most current Linux hosts).

    cgroups.read(pid, "memory_limit")        # the value in the cgroup that holds pid, on this host
    cgroups.inside_path("cpus")              # the file as a process sees its own cgroup (in a container)

A logical name maps to the file of each layout; a name with no v2 file (kernel memory) raises
``Unsupported`` there. The cgroup holding a process is read from /proc/PID/cgroup, so Docker's
``--cgroup-parent`` and the systemd or cgroupfs drivers need no special case.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path("/sys/fs/cgroup")

# logical name -> (v1 controller, v1 file, v2 file or None)
FILES: dict[str, tuple[str, str, str | None]] = {
    "cpus": ("cpuset", "cpuset.cpus", "cpuset.cpus"),
    "memory_limit": ("memory", "memory.limit_in_bytes", "memory.max"),
    "memory_usage": ("memory", "memory.usage_in_bytes", "memory.current"),
    "kmem_usage": ("memory", "memory.kmem.usage_in_bytes", None),
    "pids_max": ("pids", "pids.max", "pids.max"),
    "pids_current": ("pids", "pids.current", "pids.current"),
}


class Unsupported(LookupError):
    """The file does not exist on this cgroup layout."""


def version(root: Path = ROOT) -> int:
    """2 when the unified hierarchy is mounted at the root, else 1."""
    return 2 if (root / "cgroup.controllers").exists() else 1


def _file(name: str, v: int) -> tuple[str, str]:
    try:
        controller, v1_file, v2_file = FILES[name]
    except KeyError:
        raise ValueError(f"unknown cgroup file {name!r}; known: {sorted(FILES)}") from None
    if v == 2:
        if v2_file is None:
            raise Unsupported(f"{name} has no file on cgroup v2")
        return "", v2_file
    return controller, v1_file


def cgroup_of(pid: int | str, controller: str, proc: Path = Path("/proc")) -> str:
    """The cgroup path of ``pid`` in ``controller``'s hierarchy ("" = the v2 unified one)."""
    for line in (proc / str(pid) / "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller == "" and controllers == "") or controller in controllers.split(","):
            return path
    raise Unsupported(f"process {pid} is in no {controller or 'unified'} cgroup")


def path(pid: int | str, name: str, root: Path = ROOT, proc: Path = Path("/proc")) -> Path:
    """The host path of cgroup file ``name`` for the cgroup that holds ``pid``."""
    v = version(root)
    controller, file = _file(name, v)
    rel = cgroup_of(pid, controller, proc).lstrip("/")
    return (root / controller / rel / file) if v == 1 else (root / rel / file)


def read(pid: int | str, name: str, root: Path = ROOT) -> str:
    return path(pid, name, root).read_text().strip()


def inside_path(name: str, root: Path = ROOT) -> str:
    """Where a process inside a container (its own cgroup namespace or mount) reads ``name``."""
    controller, file = _file(name, version(root))
    return str(root / controller / file) if controller else str(root / file)
