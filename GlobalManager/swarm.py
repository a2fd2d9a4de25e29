"""The GlobalManager's Docker side: the Swarm itself, its nodes, and each job's overlay network.

The join tokens are read here and nowhere else, and never leave this process over any API.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
from typing import Any

import docker
import requests
from docker.types import IPAMConfig, IPAMPool
from pymongo.errors import DuplicateKeyError

from Common.store import Store
from Common.store.jobs import network_name

log = logging.getLogger(__name__)

SWARM_ADDR_POOL = "10.90.0.0/16"
NODE_ENGINE_TIMEOUT = 5  # seconds a worker's engine has to answer before it counts as dead


class SubnetConflict(Exception):
    """The subnet a job asked for overlaps another active job network."""


class Swarm:
    def __init__(self, docker_url: str, store: Store, cluster: str, pool: str, prefix: int) -> None:
        self.client = docker.DockerClient(base_url=docker_url, timeout=30)
        self.store = store
        self.cluster = cluster
        self.pool = ipaddress.IPv4Network(pool)
        self.prefix = prefix
        self._lock = threading.Lock()

    # ---- the swarm ----------------------------------------------------------------------------
    def ensure(self, advertise_addr: str) -> dict[str, Any]:
        info = self.client.info()["Swarm"]
        if info.get("LocalNodeState") != "active":
            log.info("initialising a Swarm advertising %s", advertise_addr)
            self.client.swarm.init(advertise_addr=advertise_addr, default_addr_pool=[SWARM_ADDR_POOL])
        elif not info.get("ControlAvailable"):
            raise RuntimeError("this engine is in a Swarm but is not a manager")
        return self.describe()

    def describe(self) -> dict[str, Any]:
        info = self.client.info()["Swarm"]
        return {
            "state": info.get("LocalNodeState"),
            "node_id": info.get("NodeID"),
            "node_addr": info.get("NodeAddr"),
            "managers": info.get("Managers", 0),
            "nodes": info.get("Nodes", 0),
            "cluster_id": (info.get("Cluster") or {}).get("ID"),
        }

    def nodes(self) -> list[dict[str, Any]]:
        out = []
        for n in self.client.nodes.list():
            a = n.attrs
            out.append({
                "id": a["ID"],
                "hostname": a["Description"]["Hostname"],
                "role": a["Spec"].get("Role"),
                "availability": a["Spec"].get("Availability"),
                "state": a["Status"].get("State"),
                "addr": a["Status"].get("Addr"),
                "engine_labels": a["Description"].get("Engine", {}).get("Labels", {}) or {},
                "ncpu": a["Description"].get("Resources", {}).get("NanoCPUs", 0) // 10**9,
                "memory": a["Description"].get("Resources", {}).get("MemoryBytes", 0),
            })
        return out

    def remove_node(self, worker: dict[str, Any]) -> str:
        """Have the worker's engine leave the Swarm (its address is in its registration), then remove the
        node from the manager's list. When the node's engine does not answer (dead, hung), the node is
        removed on the manager's side alone (a forced removal): nothing waits for a dead engine.
        Returns how it went ("left", "forced"); ValueError when it cannot be done by construction."""
        url = (worker.get("info") or {}).get("docker_url")
        if not url:
            raise ValueError(f"worker {worker['_id']} registered no engine address")
        how = "left"
        try:
            node_engine = docker.DockerClient(base_url=url, timeout=NODE_ENGINE_TIMEOUT)
            try:
                swarm = node_engine.info()["Swarm"]
                if swarm.get("ControlAvailable"):
                    raise ValueError(f"worker {worker['_id']} runs on a Swarm manager; it cannot leave")
                node_id = swarm.get("NodeID")
                if swarm.get("LocalNodeState") == "active":
                    node_engine.swarm.leave(force=False)
            finally:
                node_engine.close()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            log.warning("the engine of %s does not answer (%s): removing the node on the manager's side",
                        worker["_id"], exc)
            node_id = self._node_id_of(worker)
            how = "forced"
        if node_id:
            # It has left (or its engine is gone): take it off the manager's list at once.
            with contextlib.suppress(docker.errors.NotFound):
                self.client.nodes.get(node_id).remove(force=True)
            log.info("node %s (%s) removed from the Swarm (%s)", worker["_id"], node_id, how)
        return how

    def _node_id_of(self, worker: dict[str, Any]) -> str | None:
        """The Swarm node id a worker registered, else the node whose hostname is its engine's name."""
        info = worker.get("info") or {}
        if info.get("swarm_node_id"):
            return str(info["swarm_node_id"])
        names = {worker["_id"], info.get("engine")} - {None, ""}
        for n in self.client.nodes.list():
            if n.attrs["Description"].get("Hostname") in names and n.attrs["Spec"].get("Role") != "manager":
                return str(n.id)
        return None

    # ---- job networks -------------------------------------------------------------------------
    def _allocate_subnet(self, taken: list[ipaddress.IPv4Network]) -> str:
        for candidate in self.pool.subnets(new_prefix=self.prefix):
            if not any(candidate.overlaps(t) for t in taken):
                return str(candidate)
        raise SubnetConflict(f"the network pool {self.pool} is exhausted")

    def ensure_network(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job's attachable overlay network, created once; a subnet never overlaps another job's."""
        job_id = job["_id"]
        name = network_name(job_id)
        with self._lock:
            rec = self.store.networks.get(job_id)
            if rec is None:
                taken = [ipaddress.IPv4Network(r["subnet"]) for r in self.store.networks.active()]
                # ... and the explicit subnets of other placed jobs whose networks are not made yet (the
                # JobManager let them through counting on them), so a pool subnet never takes theirs.
                taken += [ipaddress.IPv4Network(j["network"]["subnet"]) for j in self.store.jobs.placed_networks()
                          if j["_id"] != job_id and j["network"].get("subnet")]
                wanted = job["network"].get("subnet")
                if wanted:
                    net = ipaddress.IPv4Network(wanted)
                    clash = next((t for t in taken if t.overlaps(net)), None)
                    if clash is not None:
                        raise SubnetConflict(f"subnet {wanted} overlaps {clash}, held by another job's network")
                    subnet = wanted
                else:
                    subnet = self._allocate_subnet(taken)
                try:
                    self.store.networks.reserve(job_id, subnet, name)
                except DuplicateKeyError:
                    raise SubnetConflict(f"subnet {subnet} is held by another job's network") from None
                rec = self.store.networks.get(job_id)
            assert rec is not None
            existing = self.client.networks.list(names=[name])
            existing = [n for n in existing if n.name == name]
            if existing:
                net_id = existing[0].id
            else:
                net = self.client.networks.create(
                    name,
                    driver="overlay",
                    attachable=True,
                    check_duplicate=True,
                    ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=rec["subnet"])]),
                    labels={"rswarm.cluster": self.cluster, "rswarm.job": job_id},
                )
                net_id = net.id
                log.info("created network %s (%s) for %s", name, rec["subnet"], job_id)
            if rec.get("docker_id") != net_id:
                self.store.networks.mark_created(job_id, net_id)
            return {"name": name, "id": net_id, "subnet": rec["subnet"]}

    def remove_network(self, job_id: str) -> bool:
        """Remove the job's network if nothing is attached to it any more. True when it is gone."""
        name = network_name(job_id)
        with self._lock:
            for net in self.client.networks.list(names=[name]):
                if net.name != name:
                    continue
                net.reload()
                if net.attrs.get("Containers"):
                    return False
                try:
                    net.remove()
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as exc:
                    log.info("network %s not removed yet: %s", name, exc)
                    return False
                log.info("removed network %s", name)
            self.store.networks.forget(job_id)
            return True
