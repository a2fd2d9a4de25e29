"""Subnets as a placement condition (pure: plain dicts in, reasons out): a queued job is offered to
placement only if its overlay network can be made when it is deployed. The JobManager applies it before
each plan; GET /api/v1/queue shows the same reasons.

A job that names its subnet (``job_info.network.subnet``) waits while a live job's network overlaps it;
a job that does not waits while the per-job pool (``globalmanager.network_pool`` carved into
``/network_prefix`` subnets) has no free subnet. Checked here, before the plan, rather than where the
GlobalManager allocates the subnet: by then the job holds its cores, and a refusal there could only fail
it. With one JobManager placing, and every placed job counted (networks made, and placed jobs whose
network is not made yet), the GlobalManager's own overlap check never fires for a job this let through.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

Net = ipaddress.IPv4Network


@dataclass(frozen=True)
class Held:
    """A subnet some live job holds (its network exists) or will hold (placed, network not made yet)."""

    net: Net
    job_id: str


class SubnetGate:
    def __init__(self, pool: str, prefix: int) -> None:
        self.pool = ipaddress.IPv4Network(pool)
        self.prefix = prefix
        self.size = 2 ** (32 - prefix)
        self.slots = self.pool.num_addresses // self.size

    def _blocked_slots(self, held: list[Held]) -> set[int]:
        """Indices of the pool's subnets that overlap a held subnet (range arithmetic, no scan)."""
        p0, p1 = int(self.pool.network_address), int(self.pool.broadcast_address)
        out: set[int] = set()
        for h in held:
            a, b = max(int(h.net.network_address), p0), min(int(h.net.broadcast_address), p1)
            if a <= b:
                out.update(range((a - p0) // self.size, (b - p0) // self.size + 1))
        return out

    def check(self, queue: list[dict[str, Any]], held: list[Held], pending_auto: int) -> dict[str, str]:
        """Which queued jobs (in placement order) must wait for a subnet, with the reason.

        ``held``: the subnets of networks that exist and the explicit subnets of placed jobs without one;
        ``pending_auto``: placed jobs whose pool subnet is not allocated yet (each will take one).
        """
        waiting: dict[str, str] = {}
        held = list(held)
        free = self.slots - len(self._blocked_slots(held)) - pending_auto
        for job in queue:
            wanted = (job.get("network") or {}).get("subnet")
            if wanted:
                net = ipaddress.IPv4Network(wanted)
                clash = next((h for h in held if h.net.overlaps(net)), None)
                if clash is not None:
                    waiting[job["_id"]] = (f"its subnet {net} overlaps {clash.net}, held by job {clash.job_id}; "
                                           "it waits until that job's network is removed")
                    continue
                if self.pool.overlaps(net):
                    free -= len(self._blocked_slots([Held(net, job["_id"])]) - self._blocked_slots(held))
                held.append(Held(net, job["_id"]))
            elif free <= 0:
                waiting[job["_id"]] = (f"the per-job subnet pool {self.pool} ({self.slots} subnets of "
                                       f"/{self.prefix}) has none free; it waits until a job's network is "
                                       "removed (globalmanager.network_pool sets its size)")
            else:
                free -= 1
        return waiting


def held_subnets(networks: list[dict[str, Any]], placed: list[dict[str, Any]]) -> tuple[list[Held], int]:
    """From the network records and the placed (unfinished, not queued) jobs: what is held, and how many
    placed jobs will still take a subnet from the pool."""
    held = [Held(ipaddress.IPv4Network(r["subnet"]), r["_id"]) for r in networks]
    with_record = {r["_id"] for r in networks}
    pending_auto = 0
    for job in placed:
        if job["_id"] in with_record:
            continue
        wanted = (job.get("network") or {}).get("subnet")
        if wanted:
            held.append(Held(ipaddress.IPv4Network(wanted), job["_id"]))
        else:
            pending_auto += 1
    return held, pending_auto
