"""The job definition (RESTfulSwarm's, extended): validation and normalisation.

``validate_job(body, limits)`` checks the shape and the meaning of a submitted job and returns the
normalised ``JobSpec``; on the first problem it raises ``Invalid`` naming the field by its JSON path
(``job_info.tasks.t1.req_cores``). Nothing here touches MongoDB or Docker.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from Common import evmspec
from Common.errors import Invalid
from Common.fields import reject_unknown, require_int, require_object
from Common.resources import DOCKER_MIN_MEMORY, parse_cpuset, parse_memory

TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,126}$")
CONTAINER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
IMAGE_REF = re.compile(
    r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
PORT_KEY = re.compile(r"^(\d{1,5})(?:/(tcp|udp|sctp))?$")
NETWORK_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

MAX_PRIORITY = 1000
MAX_CORES_PER_TASK = 1024
MAX_COMMAND_CHARS = 4096
MAX_ENV_ENTRIES = 128
MAX_ENV_VALUE_CHARS = 4096
MAX_PORTS = 64
MAX_VOLUMES = 32
MAX_PATH_CHARS = 1024
MAX_CPUSET_CHARS = 256  # "0-1023" names 1,024 cores in 6 characters; a longer text is not a cpuset anyone means

# Fields of the original RESTfulSwarm definition that are accepted and ignored.
_LEGACY_JOB_FIELDS = {"status", "start_time", "end_time"}
_LEGACY_TASK_FIELDS = {"status"}

_FORBIDDEN_NETS = [
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
]


@dataclass(frozen=True)
class Limits:
    max_tasks: int = 256
    default_mem_limit: str = "128m"
    volume_root: Path = Path("/nonexistent")


@dataclass
class TaskSpec:
    name: str
    image: str
    command: str | list[str] | None
    req_cores: int
    mem_bytes: int
    mem_limit: str
    container_name: str | None = None
    ports: dict[str, int | None] = field(default_factory=dict)
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    node: str | None = None
    cpuset: list[int] | None = None
    evms: dict[str, Any] | None = None  # set on EPM tasks: their EVM configuration (Common.evmspec)


@dataclass
class JobSpec:
    name: str | None
    priority: int
    network_name: str | None
    network_subnet: str | None
    tasks: list[TaskSpec]
    evms: dict[str, Any] | None = None  # the job's EVM plan (Common.evmspec), None without EVMs


def _name(value: Any, where: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise Invalid(f"{where} must be {what}, got {value!r}", field=where)
    return value


def _optional_str(obj: dict[str, Any], key: str) -> Any:
    """Treat a missing key, null and "" alike, as the original definition used "" for unset."""
    value = obj.get(key)
    return None if value is None or value == "" else value


def validate_subnet(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{where} must be an IPv4 CIDR such as '10.30.0.0/24'", field=where)
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise Invalid(f"{where}: {exc}", field=where) from None
    if not 8 <= net.prefixlen <= 29:
        raise Invalid(f"{where}: prefix length must be 8..29, got /{net.prefixlen}", field=where)
    for bad in _FORBIDDEN_NETS:
        if net.overlaps(bad):
            raise Invalid(f"{where}: {net} overlaps reserved range {bad}", field=where)
    return str(net)


def cpuset_field(value: Any, where: str) -> list[int]:
    """A requested cpuset, capped: at most MAX_CPUSET_CHARS characters and MAX_CORES_PER_TASK cores."""
    if not isinstance(value, str):
        raise Invalid(f"{where} must be a cpuset string such as '0-2,5'", field=where)
    if len(value) > MAX_CPUSET_CHARS:
        raise Invalid(f"{where} is {len(value)} characters long; at most {MAX_CPUSET_CHARS}", field=where)
    try:
        cores = parse_cpuset(value)
    except ValueError as exc:
        raise Invalid(f"{where}: {exc}", field=where) from None
    if len(cores) > MAX_CORES_PER_TASK:
        raise Invalid(f"{where} names {len(cores)} cores; a task has at most {MAX_CORES_PER_TASK}", field=where)
    return cores


def _command(value: Any, where: str) -> str | list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if len(value) > MAX_COMMAND_CHARS or "\x00" in value:
            raise Invalid(f"{where} is too long or holds a NUL byte", field=where)
        return value
    if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        if sum(len(a) for a in value) > MAX_COMMAND_CHARS or any("\x00" in a for a in value):
            raise Invalid(f"{where} is too long or holds a NUL byte", field=where)
        return list(value)
    raise Invalid(f"{where} must be a string or a non-empty list of strings", field=where)


def _ports(value: Any, where: str) -> dict[str, int | None]:
    if value is None:
        return {}
    ports = require_object(value, where)
    if len(ports) > MAX_PORTS:
        raise Invalid(f"{where}: at most {MAX_PORTS} ports", field=where)
    out: dict[str, int | None] = {}
    for key, host in ports.items():
        kwhere = f"{where}.{key}"
        m = PORT_KEY.match(key)
        if not m or not 1 <= int(m.group(1)) <= 65535:
            raise Invalid(f"{kwhere}: container port must look like '8080/tcp' (1..65535)", field=kwhere)
        if host is not None:
            require_int(host, kwhere, 1, 65535)
        out[f"{int(m.group(1))}/{m.group(2) or 'tcp'}"] = host
    return out


def _volumes(value: Any, where: str, root: Path) -> dict[str, dict[str, str]]:
    """Volumes keyed by their path relative to the job's own directory.

    The user names a host path under the volume root, ``<root>/<rel>``; the task binds
    ``<root>/<job_id>/<rel>`` on the node that runs it, a directory the Worker creates and checks there
    without following symlinks (Worker.volumes). Only the lexical shape is checked here: what a path
    resolves to is known only on the host that mounts it.
    """
    if value is None or value == "":
        return {}
    vols = require_object(value, where)
    if len(vols) > MAX_VOLUMES:
        raise Invalid(f"{where}: at most {MAX_VOLUMES} volumes", field=where)
    out: dict[str, dict[str, str]] = {}
    roots = {posixpath.normpath(str(root)), os.path.realpath(root)}
    for host_path, spec in vols.items():
        kwhere = f"{where}.{host_path}"
        if (not host_path.startswith("/") or "\x00" in host_path or len(host_path) > MAX_PATH_CHARS
                or posixpath.normpath(host_path) != host_path):
            raise Invalid(f"{kwhere}: host path must be absolute and normalised", field=kwhere)
        rel = next((posixpath.relpath(host_path, r) for r in sorted(roots)
                    if host_path == r or host_path.startswith(r.rstrip("/") + "/")), None)
        if rel is None:
            raise Invalid(f"{kwhere}: host path must be under the allowed volume root {root} (the task binds "
                          f"<root>/<job id>/<the rest of the path>)", field=kwhere)
        spec = require_object(spec, kwhere)
        reject_unknown(spec, {"bind", "mode"}, kwhere)
        bind = spec.get("bind")
        if (not isinstance(bind, str) or not bind.startswith("/") or posixpath.normpath(bind) != bind
                or bind == "/" or len(bind) > MAX_PATH_CHARS):
            raise Invalid(f"{kwhere}.bind must be an absolute container path", field=f"{kwhere}.bind")
        mode = spec.get("mode", "rw")
        if mode not in ("rw", "ro"):
            raise Invalid(f"{kwhere}.mode must be 'rw' or 'ro'", field=f"{kwhere}.mode")
        if rel in out:
            raise Invalid(f"{kwhere}: names the same directory as another volume", field=kwhere)
        out[rel] = {"bind": bind, "mode": mode}
    return out


def _environment(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    env = require_object(value, where)
    if len(env) > MAX_ENV_ENTRIES:
        raise Invalid(f"{where}: at most {MAX_ENV_ENTRIES} variables", field=where)
    for key, val in env.items():
        kwhere = f"{where}.{key}"
        if not ENV_KEY.match(key):
            raise Invalid(f"{kwhere}: not a valid variable name", field=kwhere)
        if not isinstance(val, str) or len(val) > MAX_ENV_VALUE_CHARS or "\x00" in val:
            raise Invalid(f"{kwhere} must be a string of at most {MAX_ENV_VALUE_CHARS} chars", field=kwhere)
    return dict(env)


_TASK_FIELDS = {
    "container_name", "image", "command", "req_cores", "mem_limit", "ports", "volumes",
    "environment", "node", "cpuset_cpus", "detach", "evms",
} | _LEGACY_TASK_FIELDS


def _task(name: str, raw: Any, where: str, limits: Limits) -> TaskSpec:
    _name(name, where, TASK_NAME, "letters, digits, '_' or '-' (1-63 chars, no dots)")
    t = require_object(raw, where)
    reject_unknown(t, _TASK_FIELDS, where)
    if "detach" in t and t["detach"] is not True:
        raise Invalid(f"{where}.detach: tasks always run detached", field=f"{where}.detach")
    image = _name(t.get("image"), f"{where}.image", IMAGE_REF, "an image reference such as 'rswarm/task:1'")
    container_name = _optional_str(t, "container_name")
    if container_name is not None:
        _name(container_name, f"{where}.container_name", CONTAINER_NAME, "a valid container name")

    node = _optional_str(t, "node")
    if node is not None:
        _name(node, f"{where}.node", NODE_NAME, "a node name")
    cpuset = None
    raw_cpuset = _optional_str(t, "cpuset_cpus")
    if raw_cpuset is not None:
        cpuset = cpuset_field(raw_cpuset, f"{where}.cpuset_cpus")
        if node is None:
            raise Invalid(f"{where}.cpuset_cpus needs {where}.node: a cpuset names cores of one node",
                          field=f"{where}.cpuset_cpus")
    if "req_cores" in t and t["req_cores"] is not None:
        req = require_int(t["req_cores"], f"{where}.req_cores", 1, MAX_CORES_PER_TASK)
    elif cpuset is not None:
        req = len(cpuset)
    else:
        raise Invalid(f"{where}.req_cores is required (an integer >= 1)", field=f"{where}.req_cores")
    if cpuset is not None and len(cpuset) != req:
        raise Invalid(f"{where}.cpuset_cpus names {len(cpuset)} cores but req_cores is {req}",
                      field=f"{where}.cpuset_cpus")

    mem_text = t.get("mem_limit", limits.default_mem_limit)
    try:
        mem = parse_memory(mem_text)
    except ValueError as exc:
        raise Invalid(f"{where}.mem_limit: {exc}", field=f"{where}.mem_limit") from None
    if mem < DOCKER_MIN_MEMORY:
        raise Invalid(f"{where}.mem_limit must be at least 6m (Docker's minimum)", field=f"{where}.mem_limit")
    if mem > 2**50:
        raise Invalid(f"{where}.mem_limit is absurdly large", field=f"{where}.mem_limit")

    return TaskSpec(
        name=name,
        image=image,
        command=_command(t.get("command"), f"{where}.command"),
        req_cores=req,
        mem_bytes=mem,
        mem_limit=str(mem_text),
        container_name=container_name,
        ports=_ports(t.get("ports"), f"{where}.ports"),
        volumes=_volumes(t.get("volumes"), f"{where}.volumes", limits.volume_root),
        environment=_environment(t.get("environment"), f"{where}.environment"),
        node=node,
        cpuset=cpuset,
    )


def volume_contains(outer: str, inner: str) -> bool:
    """Whether job-relative volume path ``outer`` is a proper ancestor of ``inner`` ("." holds everything)."""
    if outer == inner:
        return False
    return outer == "." or inner.startswith(outer + "/")


def _check_volumes_not_nested(tasks: list[TaskSpec], raw_tasks: dict[str, Any]) -> None:
    """A job's volumes are each the same directory or separate ones, never one inside another.

    A container that can write in a directory on another bind's path could swap a component for a symlink
    in the moment between the Worker's check and dockerd's mount; with no volume inside another, no
    container of the job can write in any directory above another's bind (docs/security.md).
    """
    seen: list[tuple[str, str]] = []  # (job-relative path, field)
    for t in tasks:
        raw = raw_tasks[t.name].get("volumes") or {}
        for host, rel in zip(raw, t.volumes, strict=True):
            where = f"job_info.tasks.{t.name}.volumes.{host}"
            for other, other_where in seen:
                if volume_contains(other, rel) or volume_contains(rel, other):
                    raise Invalid(f"{where}: one of this job's volumes lies inside another ({other_where}); "
                                  "a job's volumes must be the same directory or separate ones", field=where)
            seen.append((rel, where))


def validate_job(body: Any, limits: Limits) -> JobSpec:
    """Check a submitted job definition; return it normalised or raise ``Invalid``."""
    job = require_object(body, "body")
    reject_unknown(job, {"job_name", "priority", "job_info"} | _LEGACY_JOB_FIELDS, "")
    name = _optional_str(job, "job_name")
    if name is not None:
        _name(name, "job_name", JOB_NAME, "letters, digits, '.', '_' or '-' (1-127 chars)")
    priority = require_int(job.get("priority", 0), "priority", 0, MAX_PRIORITY)

    if "job_info" not in job:
        raise Invalid("job_info is required", field="job_info")
    info = require_object(job["job_info"], "job_info")
    reject_unknown(info, {"network", "tasks", "evms"}, "job_info")

    net = require_object(info.get("network") or {}, "job_info.network")
    reject_unknown(net, {"name", "driver", "subnet"}, "job_info.network")
    net_name = _optional_str(net, "name")
    if net_name is not None:
        _name(net_name, "job_info.network.name", NETWORK_LABEL, "a network name")
    driver = _optional_str(net, "driver") or "overlay"
    if driver != "overlay":
        raise Invalid("job_info.network.driver: only 'overlay' is supported (an attachable Swarm overlay)",
                      field="job_info.network.driver")
    subnet = _optional_str(net, "subnet")
    if subnet is not None:
        subnet = validate_subnet(subnet, "job_info.network.subnet")

    if "tasks" not in info:
        raise Invalid("job_info.tasks is required", field="job_info.tasks")
    raw_tasks = require_object(info["tasks"], "job_info.tasks")
    if not raw_tasks:
        raise Invalid("job_info.tasks must hold at least one task", field="job_info.tasks")
    if len(raw_tasks) > limits.max_tasks:
        raise Invalid(f"job_info.tasks: at most {limits.max_tasks} tasks per job", field="job_info.tasks")
    with_evms = evmspec.has_evms(info, raw_tasks)
    if with_evms:
        raw_tasks = evmspec.with_epm_defaults(info, raw_tasks)
    tasks = [_task(n, t, f"job_info.tasks.{n}", limits) for n, t in raw_tasks.items()]

    _check_volumes_not_nested(tasks, raw_tasks)
    seen: dict[str, str] = {}
    for t in tasks:
        for alias in {t.name, t.container_name} - {None}:
            if alias in seen and seen[alias] != t.name:
                where = f"job_info.tasks.{t.name}.container_name"
                raise Invalid(f"{where}: name {alias!r} is already used by task {seen[alias]!r}", field=where)
            seen[alias] = t.name  # type: ignore[index]
    if subnet is not None:
        hosts = ipaddress.IPv4Network(subnet).num_addresses - 3  # network, gateway, broadcast
        if hosts < len(tasks):
            raise Invalid(f"job_info.network.subnet {subnet} holds {hosts} addresses for {len(tasks)} tasks",
                          field="job_info.network.subnet")
    evms = evmspec.plan_job(info, raw_tasks, tasks, subnet).job_doc() if with_evms else None
    return JobSpec(name=name, priority=priority, network_name=net_name, network_subnet=subnet, tasks=tasks,
                   evms=evms)
