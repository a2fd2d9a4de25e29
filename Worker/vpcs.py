"""What each EPM of a job needs for VPC connectivity, from the EVM records (the agent side is Worker/epm/vpc.py).

For one job: each VPC's VNI, and per EPM, for every VPC it holds, the other EPMs holding that VPC (their
addresses on the job's overlay network, the VXLAN underlay) and the remote EVMs' MAC -> EPM address.

VNI: derived from the job and the VPC's name, ``sha256("<job>|<vpc>") mod (2^24 - 1) + 1``, so it is the
same in every EPM without being stored. VNIs only need to differ within a job (a job's EPMs are the only
ones on its overlay network); two of a job's VPCs hashing to the same VNI are told apart by taking the
VPCs in (hash, name) order and giving a taken VNI's VPC the next free one. Every EPM computes this from
the same set of names, so they agree.
"""

from __future__ import annotations

import hashlib
from typing import Any

from Common.store.jobs import network_name

MAX_VNI = 2**24 - 1


def _hash_vni(job_id: str, vpc: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{job_id}|{vpc}".encode()).digest()[:8], "big") % MAX_VNI + 1


def vnis(job_id: str, vpcs: set[str]) -> dict[str, int]:
    """A distinct VNI (1..2^24-1) for each of the job's VPCs."""
    taken: set[int] = set()
    out: dict[str, int] = {}
    for vpc in sorted(vpcs, key=lambda v: (_hash_vni(job_id, v), v)):
        vni = _hash_vni(job_id, vpc)
        while vni in taken:
            vni = vni % MAX_VNI + 1
        taken.add(vni)
        out[vpc] = vni
    return out


def epm_addresses(job: dict[str, Any]) -> dict[str, str]:
    """Each task's address on the job's overlay network, as the engine gave it (recorded once it ran)."""
    net = network_name(job["_id"])
    out: dict[str, str] = {}
    for name, t in (job.get("tasks") or {}).items():
        ip = (t.get("addresses") or {}).get(net) or t.get("ip")
        if ip:
            out[name] = ip
    return out


def plan(job_id: str, members: list[dict[str, Any]], ips: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per EPM: ``{"local_ip": ..., "vpcs": {vpc: {"vni", "peers", "macs"}}}`` (the desired file's part).

    ``members``: the job's live EVMs (``mac``, ``epm``, ``vpc``); ``ips``: each EPM's overlay address.
    """
    by_vpc: dict[str, dict[str, list[str]]] = {}  # vpc -> epm -> macs
    for m in members:
        vpc = m.get("vpc")
        if vpc:
            by_vpc.setdefault(vpc, {}).setdefault(m["epm"], []).append(m["mac"])
    ids = vnis(job_id, set(by_vpc))
    out: dict[str, dict[str, Any]] = {}
    for vpc, epms in by_vpc.items():
        for epm in epms:
            others = {e: macs for e, macs in epms.items() if e != epm and e in ips and ips[e] != ips.get(epm)}
            entry = out.setdefault(epm, {"local_ip": ips.get(epm), "vpcs": {}})
            entry["vpcs"][vpc] = {
                "vni": ids[vpc],
                "peers": sorted({ips[e] for e in others}),
                "macs": sorted([mac, ips[e]] for e, macs in others.items() for mac in macs),
            }
    return out
