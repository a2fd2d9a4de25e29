"""The Worker's desired-EVM file, read and checked (a malformed file is refused, never acted on).

    {"format": 1, "job_id": "...", "epm": "t1", "attempt": 0, "container": "rsw-...", "devices": "full",
     "prefix": 24, "gateway": "10.60.0.1", "drain": false, "op_timeout": 20,
     "rates": {"b0": {"kind": "rps", "rps": 50.0, "burst": 1}},
     "evms": [[seq, ip, mac, batch, recorded_state, delete_requested, vpc], ...],
     "local_ip": "10.0.1.3", "vpcs": {"vpc-1": {"vni": 4711, "peers": ["10.0.1.4"], "macs": [[mac, ip]]}}}

``evms`` lists the EPM's live EVMs as MongoDB records them: those to hold, and (delete_requested) those
to remove; ``vpc`` (optional) is the EVM's VPC. ``vpcs`` (optional) gives each VPC of the EPM its VNI,
the peer EPMs holding it and the remote EVMs' MACs with their EPM's address; ``local_ip`` is the EPM's
own address on the job network (Worker/epm/vpc.py). ``drain`` asks for everything to be removed before
the Worker removes the container.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from . import names
from .vpc import VpcWant

MAX_VNI = 2**24 - 1

MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
STATES = {"PENDING", "DEPLOYING", "READY", "ERROR", "DELETED"}


@dataclass(frozen=True)
class Want:
    seq: int
    ip: str
    mac: str
    batch: str
    recorded: str
    delete: bool
    vpc: str | None = None


@dataclass
class Desired:
    job_id: str
    epm: str
    attempt: int
    container: str
    devices: str
    prefix: int
    gateway: str
    drain: bool = False
    op_timeout: float = 20.0
    rates: dict[str, dict[str, Any]] = field(default_factory=dict)
    evms: dict[int, Want] = field(default_factory=dict)
    vpcs: dict[str, VpcWant] = field(default_factory=dict)
    local_ip: str | None = None

    # keep() and deleting() are asked on every pass of the agent and the file only changes when it is
    # loaded again: computed once per load (sorting 15,000 EVMs four times a second was O(n) per pass).
    _keep: dict[int, Want] | None = field(default=None, init=False, repr=False, compare=False)
    _deleting: set[int] | None = field(default=None, init=False, repr=False, compare=False)

    def keep(self) -> dict[int, Want]:
        """The EVMs this EPM should hold, in creation order (batch by batch, then by number)."""
        if self._keep is None:
            wanted = [] if self.drain else [w for w in self.evms.values() if not w.delete and w.recorded != "ERROR"]
            wanted.sort(key=lambda w: (int(w.batch[1:]) if w.batch[1:].isdigit() else 0, w.seq))
            self._keep = {w.seq: w for w in wanted}
        return self._keep

    def deleting(self) -> set[int]:
        if self._deleting is None:
            self._deleting = {w.seq for w in self.evms.values() if w.delete}
        return self._deleting

    def vni(self, seq: int) -> int | None:
        """The VNI of the VPC this EVM belongs to (None: no VPC connectivity for it)."""
        w = self.evms.get(seq)
        v = self.vpcs.get(w.vpc) if w is not None and w.vpc is not None else None
        return None if v is None else v.vni


class BadDesired(ValueError):
    pass


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise BadDesired(what)


def _ipv4(value: Any) -> bool:
    """A dotted-quad IPv4 address (inet_pton is strict, unlike inet_aton, and ten times faster than
    ipaddress: the file is parsed again on every rewrite, with up to 25,000 EVMs in it)."""
    if not isinstance(value, str):
        return False
    try:
        socket.inet_pton(socket.AF_INET, value)
    except OSError:
        return False
    return True


def parse(doc: Any) -> Desired:
    _need(isinstance(doc, dict) and doc.get("format") == names.FORMAT, "not a desired-EVM file of format 1")
    for key, kind in (("job_id", str), ("epm", str), ("container", str), ("devices", str), ("gateway", str)):
        _need(isinstance(doc.get(key), kind), f"{key} missing or not a {kind.__name__}")
    _need(doc["devices"] in ("full", "lean"), "devices must be full or lean")
    _need(isinstance(doc.get("attempt"), int) and doc["attempt"] >= 0, "attempt must be an integer >= 0")
    _need(isinstance(doc.get("prefix"), int) and 8 <= doc["prefix"] <= 30, "prefix must be 8..30")
    ipaddress.IPv4Address(doc["gateway"])
    rates = doc.get("rates") or {}
    _need(isinstance(rates, dict) and all(isinstance(v, dict) for v in rates.values()), "rates must map to objects")
    timeout = doc.get("op_timeout", 20.0)
    _need(isinstance(timeout, int | float) and timeout > 0, "op_timeout must be > 0")
    evms: dict[int, Want] = {}
    raw = doc.get("evms")
    _need(isinstance(raw, list), "evms must be a list")
    for item in raw:
        _need(isinstance(item, list) and len(item) in (6, 7), "each EVM is [seq, ip, mac, batch, state, delete, vpc?]")
        seq, ip, mac, batch, state, delete = item[:6]
        vpc = item[6] if len(item) == 7 else None
        _need(vpc is None or isinstance(vpc, str), f"bad VPC for {seq}")
        _need(isinstance(seq, int) and 1 <= seq <= names.MAX_SEQ, f"bad EVM number {seq!r}")
        _need(_ipv4(ip), f"bad address {ip!r} for {seq}")
        _need(isinstance(mac, str) and bool(MAC.match(mac)), f"bad MAC {mac!r}")
        _need(isinstance(batch, str) and isinstance(state, str) and state in STATES, f"bad batch/state for {seq}")
        _need(isinstance(delete, bool), f"bad delete flag for {seq}")
        evms[seq] = Want(seq, ip, mac, batch, state, delete, vpc)
    vpcs = _parse_vpcs(doc.get("vpcs") or {})
    local_ip = doc.get("local_ip")
    if local_ip is not None:
        ipaddress.IPv4Address(local_ip)
    return Desired(job_id=doc["job_id"], epm=doc["epm"], attempt=doc["attempt"], container=doc["container"],
                   devices=doc["devices"], prefix=doc["prefix"], gateway=doc["gateway"], drain=bool(doc.get("drain")),
                   op_timeout=float(timeout), rates=rates, evms=evms, vpcs=vpcs, local_ip=local_ip)


def _parse_vpcs(raw: Any) -> dict[str, VpcWant]:
    _need(isinstance(raw, dict), "vpcs must be an object")
    out: dict[str, VpcWant] = {}
    vnis: set[int] = set()
    for name, v in raw.items():
        _need(isinstance(v, dict), f"vpcs.{name} must be an object")
        vni = v.get("vni")
        _need(isinstance(vni, int) and not isinstance(vni, bool) and 1 <= vni <= MAX_VNI and vni not in vnis,
              f"vpcs.{name}.vni must be a distinct integer 1..{MAX_VNI}")
        vnis.add(vni)
        peers, macs = v.get("peers") or [], v.get("macs") or []
        _need(isinstance(peers, list) and isinstance(macs, list), f"vpcs.{name}: peers and macs must be lists")
        for p in peers:
            ipaddress.IPv4Address(p)
        for m in macs:
            _need(isinstance(m, list) and len(m) == 2 and isinstance(m[0], str) and bool(MAC.match(m[0])),
                  f"vpcs.{name}.macs: each is [mac, ip]")
            ipaddress.IPv4Address(m[1])
        out[name] = VpcWant(vni, frozenset(peers), {m[0]: m[1] for m in macs})
    return out


def load(path: str) -> Desired:
    try:
        with open(path, "rb") as f:
            return parse(json.load(f))
    except (OSError, ValueError) as exc:
        raise BadDesired(f"{path}: {exc}") from None


def stamp(path: str) -> tuple[int, int, int] | None:
    """Changes whenever the Worker replaces the file (it writes a new file and renames it over)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
