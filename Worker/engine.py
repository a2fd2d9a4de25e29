"""The Worker's thin layer over its node's Docker engine (docker-py's low-level API).

Containers are named ``rsw-<job>-<task>-<attempt>`` and labelled with the cluster, job, task and
attempt, which is how a restarted Worker finds and reconciles them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from Common.resources import format_cpuset, parse_cpuset
from Common.store.jobs import container_name
from Worker.volumes import VolumeRefused, binds_for

log = logging.getLogger(__name__)

LABEL_CLUSTER = "rswarm.cluster"
LABEL_JOB = "rswarm.job"
LABEL_TASK = "rswarm.task"
LABEL_ATTEMPT = "rswarm.attempt"
LOG_TAIL_BYTES = 2048


class StartFailed(Exception):
    """The task cannot start on this node for a reason that retrying will not fix."""


class StartTimedOut(Exception):
    """The engine gave up waiting inside a start (a 500 saying "context deadline exceeded", e.g. the Swarm's
    network attachment on a busy host): transient, the created container can be started again."""


@dataclass
class Observed:
    """A managed container as the engine reports it."""

    id: str
    job_id: str
    task: str
    attempt: int
    status: str  # created | running | paused | restarting | removing | exited | dead
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""


# Every task container (EPMs included) gets these: a process cannot gain privileges through exec
# (setuid binaries, file capabilities), whatever its image holds.
SECURITY_OPT = ["no-new-privileges"]


class Engine:
    def __init__(self, docker_url: str, cluster: str, volume_root: Path | None = None,
                 pids_limit: int = 1024) -> None:
        self.client = docker.DockerClient(base_url=docker_url, timeout=30)
        self.api = self.client.api
        self.cluster = cluster
        self.volume_root = volume_root  # where this node's job directories live (Worker.volumes)
        self.pids_limit = pids_limit
        self._ncpu: int | None = None

    def physical_cpuset(self, logical: str) -> str:
        """Where logical cores run. A worker may declare more cores than its machine has (emulated
        capacity, for scale experiments): logical core i then runs on physical core i mod ncpu, so
        logical cores that share a physical core share its time. With the real capacity (the default)
        the mapping is the identity."""
        if self._ncpu is None:
            self._ncpu = int(self.client.info()["NCPU"])
        return format_cpuset(sorted({c % self._ncpu for c in parse_cpuset(logical)}))

    def capacity(self) -> tuple[int, int, str]:
        info = self.client.info()
        return int(info["NCPU"]), int(info["MemTotal"]), info.get("Name", "")

    def managed(self) -> dict[tuple[str, str, int], Observed]:
        """Every container of this cluster on this engine, keyed by (job, task, attempt)."""
        out: dict[tuple[str, str, int], Observed] = {}
        for c in self.api.containers(all=True, filters={"label": f"{LABEL_CLUSTER}={self.cluster}"}):
            labels = c.get("Labels") or {}
            try:
                key = (labels[LABEL_JOB], labels[LABEL_TASK], int(labels[LABEL_ATTEMPT]))
            except (KeyError, ValueError):
                continue
            out[key] = Observed(id=c["Id"], job_id=key[0], task=key[1], attempt=key[2], status=c["State"])
        return out

    def refresh_status(self, obs: Observed) -> None:
        try:
            obs.status = self.api.inspect_container(obs.id)["State"]["Status"]
        except NotFound:
            obs.status = "dead"

    def inspect_exit(self, obs: Observed) -> Observed:
        """Fill in the exit code, OOM flag and error of an exited container."""
        try:
            state = self.api.inspect_container(obs.id)["State"]
        except NotFound:
            return obs
        obs.exit_code = state.get("ExitCode")
        obs.oom_killed = bool(state.get("OOMKilled"))
        obs.error = state.get("Error") or ""
        return obs

    def log_tail(self, container_id: str) -> str:
        try:
            raw = self.api.logs(container_id, stdout=True, stderr=True, tail=50)
        except APIError:
            return ""
        return raw[-LOG_TAIL_BYTES:].decode("utf-8", "replace")

    def create(self, job_id: str, task: str, t: dict[str, Any], network: str,
               epm: dict[str, Any] | None = None, job_rels: list[str] | None = None) -> str:
        """Create (not start) the task's container, pinned and limited. Returns its id.

        ``epm`` (Worker.evms) turns it into an EPM: its image and command, sysctls, labels; no privilege.
        ``job_rels``: every volume path of the job's document (Worker.volumes.job_paths), re-checked for nesting.
        """
        name = container_name(job_id, task, t["attempt"])
        if epm:
            # Whatever the task document says, none of the user's ports, volumes or environment reach an
            # EPM (the FrontEnd refuses them; this is the re-check where it takes effect, against a
            # document altered in MongoDB).
            ports: list[str] = []
            port_bindings = None
            binds = dict(epm["binds"])
            image, command, environment = epm["image"], epm["command"], dict(epm["environment"]) or None
        else:
            ports = list(t.get("ports") or {})
            port_bindings = {p: h for p, h in (t.get("ports") or {}).items()} or None
            binds = self._binds(job_id, t.get("volumes") or [], job_rels or [])
            image, command, environment = t["image"], t.get("command"), t.get("environment") or None
        host_config = self.api.create_host_config(
            cpuset_cpus=self.physical_cpuset(t["cpuset"]),
            mem_limit=t["mem_bytes"],
            memswap_limit=t["mem_bytes"],
            network_mode=network,
            port_bindings=port_bindings,
            binds=binds or None,
            init=False,
            pids_limit=self.pids_limit,
            security_opt=SECURITY_OPT,
            cap_add=epm["cap_add"] if epm else None,
            devices=epm["devices"] if epm else None,
            sysctls=epm["sysctls"] if epm else None,
        )
        aliases = [task] + ([t["container_name"]] if t.get("container_name") else [])
        networking = self.api.create_networking_config({network: self.api.create_endpoint_config(aliases=aliases)})
        labels = {LABEL_CLUSTER: self.cluster, LABEL_JOB: job_id, LABEL_TASK: task, LABEL_ATTEMPT: str(t["attempt"])}
        if epm:
            labels.update(epm["labels"])
        try:
            created = self.api.create_container(
                image, command=command, name=name, labels=labels, host_config=host_config,
                networking_config=networking, environment=environment, ports=ports or None,
                detach=True,
            )
        except ImageNotFound:
            raise StartFailed(f"image {t['image']!r} is not on this node (images are built locally; "
                              "there is no registry to pull from)") from None
        except APIError as exc:
            if exc.status_code == 409:  # already created by an earlier pass: find it
                return self.api.inspect_container(name)["Id"]
            if exc.status_code in (400, 404):
                raise StartFailed(f"cannot create the container: {exc.explanation or exc}") from None
            raise
        return created["Id"]

    def _binds(self, job_id: str, volumes: list[dict[str, Any]], job_rels: list[str]) -> dict[str, dict[str, str]]:
        """The task's binds, each resolved here without following symlinks (Worker.volumes)."""
        if not volumes:
            return {}
        if self.volume_root is None:
            raise StartFailed("this Worker has no volume root configured; the task's volumes cannot be mounted")
        mounted = [m.get("Source", "") for c in self.api.containers(all=True, filters={"label": [
            f"{LABEL_CLUSTER}={self.cluster}", f"{LABEL_JOB}={job_id}"]}) for m in c.get("Mounts") or []
            if m.get("Type") == "bind"]
        try:
            return binds_for(self.volume_root, job_id, volumes, job_rels, mounted)
        except VolumeRefused as exc:
            raise StartFailed(f"volume refused: {exc}") from None
        except OSError as exc:  # the root cannot be made, a full disk, …: the task cannot start here
            raise StartFailed(f"volume refused: cannot prepare the job's directory under {self.volume_root}: "
                              f"{exc.strerror or exc}") from None

    # ---- task lifecycle: update, checkpoint, restore ---------------------------------------------
    def host_config(self, container_id: str) -> dict[str, Any]:
        return self.api.inspect_container(container_id)["HostConfig"]

    def update_resources(self, container_id: str, cpuset: str, mem: int) -> None:
        """Apply new cores and memory to a running container (the Docker update API, cgroups in place)."""
        self.api.update_container(container_id, cpuset_cpus=self.physical_cpuset(cpuset), mem_limit=mem,
                                  memswap_limit=mem)

    def checkpoint(self, container_id: str, name: str, directory: str, leave_running: bool) -> None:
        """`docker checkpoint create` (experimental API; docker-py has no wrapper) into ``directory``."""
        url = self.api._url("/containers/{0}/checkpoints", container_id)
        res = self.api._post_json(url, data={"CheckpointID": name, "CheckpointDir": directory,
                                             "Exit": not leave_running})
        self.api._raise_for_status(res)

    def docker_root(self) -> str:
        return self.client.info()["DockerRootDir"]

    def start_from_checkpoint(self, container_id: str, name: str) -> None:
        """Start a created container from a checkpoint already placed in its own checkpoints directory
        (Docker 20.10 cannot restore from a custom checkpoint directory)."""
        res = self.api._post(self.api._url("/containers/{0}/start", container_id), params={"checkpoint": name})
        try:
            self.api._raise_for_status(res)
        except APIError as exc:
            raise StartFailed(f"restore from checkpoint {name} failed: {exc.explanation or exc}") from None

    def start(self, container_id: str) -> None:
        try:
            self.api.start(container_id)
        except APIError as exc:
            if exc.status_code == 500 and "context deadline exceeded" in str(exc.explanation or exc):
                raise StartTimedOut(f"cannot start the container: {exc.explanation or exc}") from None
            if exc.status_code in (400, 404, 500):
                raise StartFailed(f"cannot start the container: {exc.explanation or exc}") from None
            raise

    def addresses(self, container_id: str) -> dict[str, str]:
        """The container's IPv4 address on each network it is attached to (docker inspect
        NetworkSettings.Networks), read after start; {} when the engine cannot say (it is reported again)."""
        try:
            nets = self.api.inspect_container(container_id)["NetworkSettings"].get("Networks") or {}
        except (APIError, KeyError):
            return {}
        return {name: n["IPAddress"] for name, n in nets.items() if isinstance(n, dict) and n.get("IPAddress")}

    def stop_and_remove(self, container_id: str, timeout: int) -> None:
        try:
            self.api.stop(container_id, timeout=timeout)
        except NotFound:
            return
        except APIError as exc:
            log.info("stop %s: %s", container_id[:12], exc)
        self.remove(container_id)

    def remove(self, container_id: str) -> None:
        try:
            self.api.remove_container(container_id, force=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise

    def network_exists(self, name: str) -> bool:
        try:
            self.api.inspect_network(name)
            return True
        except NotFound:
            return False

    def events(self):
        """Container events of this cluster, forever (until the engine goes away)."""
        return self.client.events(decode=True, filters={"type": "container",
                                                        "label": f"{LABEL_CLUSTER}={self.cluster}"})
