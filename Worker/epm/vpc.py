"""VPC connectivity inside one EPM: a bridge and a VXLAN device per VPC, and each EVM plugged into its VPC.

Per VPC the EPM holds (the VNI is chosen by the Worker, unique within the job, see Worker/evms.py):

  rswp<vni>  the VPC's bridge (MTU: the underlay's minus VXLAN's 50 bytes)
  rswx<vni>  a VXLAN device, VNI <vni>, UDP 4789, underlay the EPM's job-network interface, a port of
             rswp<vni>; learning off: its forwarding table holds exactly what the desired file says,
             00:00:00:00:00:00 -> every peer EPM holding the VPC (broadcast, ARP) and each remote EVM's
             MAC -> its EPM's address

and each EVM is plugged into its VPC's bridge:

  lean  rswv<n> (the EPM end of the EVM's veth) is a port of rswp<vni> (instead of the shared rswbr0)
  full  a veth pair rswu<n> (a port of the EVM's own bridge rswb<n>) <-> rswo<n> (a port of rswp<vni>),
        OpenStack's qvb/qvo: the EVM keeps its own bridge and tap, and its bridge has an uplink

EVMs of different VPCs are on different bridges and VNIs; EVMs of different jobs are on different EPMs
whose underlays are different overlay networks, so their VXLAN packets cannot meet.

Kill-safety: the VXLAN devices are made afresh when an agent starts (their forwarding tables are then
exactly the desired file's); bridges and plugs are kernel objects found by name and corrected. Every call
is pyroute2 netlink in the current network namespace, so this works wherever the agent runs.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from . import names

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
DEFAULT_UNDERLAY_MTU = 1450  # a Docker overlay's own MTU
NUD_PERMANENT = 0x80
NTF_SELF = 0x02  # the VXLAN device's own table, not that of the bridge it is a port of
FLOOD_MAC = "00:00:00:00:00:00"
BRIDGE_PORTS = 1022  # EVMs per VPC bridge: a Linux bridge numbers ports 1..1023, and the VXLAN device takes one


@dataclass
class VpcWant:
    vni: int
    peers: frozenset[str] = frozenset()  # the other EPMs holding this VPC (their job-network addresses)
    macs: dict[str, str] = field(default_factory=dict)  # remote EVM MAC -> its EPM's address

    def entries(self) -> set[tuple[str, str]]:
        return {(FLOOD_MAC, p) for p in self.peers} | set(self.macs.items())


def bridge_name(vni: int) -> str:
    return f"{names.VPC_BRIDGE_PREFIX}{vni}"


def vxlan_name(vni: int) -> str:
    return f"{names.VXLAN_PREFIX}{vni}"


def _ignore(exc: NetlinkError, *codes: int) -> None:
    if exc.code not in codes:
        raise exc


class VpcNet:
    """The VPC devices of one EPM and which VPC each EVM is plugged into.

    Works on the Kernel's netlink socket (``ipr``) and brackets its calls with the Kernel's ``_op``, so
    the agent's watchdog bounds them like every other kernel call.
    """

    def __init__(self, kernel: Any) -> None:
        self.k = kernel
        self.ipr = kernel.ipr
        self.underlay: int | None = None
        self.mtu: int | None = None
        self.bridges: dict[int, int] = {}  # vni -> bridge ifindex
        self.vxlans: dict[int, int] = {}  # vni -> vxlan ifindex
        self.fdb: dict[int, set[tuple[str, str]]] = {}  # vni -> entries written
        self.plugged: dict[int, int] = {}  # EVM number -> vni of the bridge it is plugged into
        self.ports: dict[int, int] = {}  # vni -> EVMs plugged into its bridge

    # ---- start-up: what is there ----------------------------------------------------------------
    def start(self, local_ip: str | None) -> None:
        """Find the underlay, and take over our bridges; remove every VXLAN device (made again with
        exactly the desired forwarding entries by the first ``apply``) and record each EVM's plug."""
        with self.k._op("VPC scan"):
            self._find_underlay(local_ip)
            by_name: dict[str, Any] = {}
            for msg in self.ipr.get_links():
                by_name[msg.get_attr("IFLA_IFNAME")] = msg
            index_vni: dict[int, int] = {}
            for name, msg in by_name.items():
                vni = names.seq_of(name, names.VPC_BRIDGE_PREFIX)
                if vni is not None:
                    self.bridges[vni] = msg["index"]
                    index_vni[msg["index"]] = vni
                elif names.seq_of(name, names.VXLAN_PREFIX) is not None:
                    try:
                        self.ipr.link("del", index=msg["index"])
                    except NetlinkError as exc:
                        _ignore(exc, errno.ENODEV)
            for name, msg in by_name.items():
                master = msg.get_attr("IFLA_MASTER") or 0
                for prefix in (names.VETH_PREFIX, names.VPC_PORT_PREFIX):
                    seq = names.seq_of(name, prefix)
                    if seq is not None and master in index_vni:
                        self.record(seq, index_vni[master])

    def _find_underlay(self, local_ip: str | None) -> None:
        """The EPM's interface on the job network: the one holding ``local_ip``, else eth0."""
        index = None
        if local_ip:
            for a in self.ipr.get_addr(family=socket.AF_INET):
                if a.get_attr("IFA_ADDRESS") == local_ip:
                    index = a["index"]
                    break
        if index is None:
            found = self.ipr.link_lookup(ifname="eth0")
            index = found[0] if found else None
        self.underlay = index
        mtu = DEFAULT_UNDERLAY_MTU
        if index is not None:
            mtu = self.ipr.get_links(index)[0].get_attr("IFLA_MTU") or mtu
        self.mtu = mtu - VXLAN_OVERHEAD

    # ---- the VPC devices ------------------------------------------------------------------------
    def bridge(self, vni: int) -> int:
        """The VPC's bridge (made if missing), its index."""
        index = self.bridges.get(vni)
        if index is None:
            try:
                self.ipr.link("add", ifname=bridge_name(vni), kind="bridge", mtu=self.mtu, state="up")
            except NetlinkError as exc:
                _ignore(exc, errno.EEXIST)
            index = self.ipr.link_lookup(ifname=bridge_name(vni))[0]
            self.bridges[vni] = index
        return index

    def _vxlan(self, vni: int) -> int:
        index = self.vxlans.get(vni)
        if index is None:
            br = self.bridge(vni)
            spec: dict[str, Any] = {"vxlan_id": vni, "vxlan_port": VXLAN_PORT, "vxlan_learning": 0}
            if self.underlay is not None:
                spec["vxlan_link"] = self.underlay
            try:
                self.ipr.link("add", ifname=vxlan_name(vni), kind="vxlan", mtu=self.mtu, master=br, state="up",
                              **spec)
            except NetlinkError as exc:  # one left by a start that failed half-way: start afresh
                _ignore(exc, errno.EEXIST)
                self.ipr.link("del", ifname=vxlan_name(vni))
                self.ipr.link("add", ifname=vxlan_name(vni), kind="vxlan", mtu=self.mtu, master=br, state="up",
                              **spec)
            index = self.ipr.link_lookup(ifname=vxlan_name(vni))[0]
            self.vxlans[vni] = index
            self.fdb[vni] = set()
        return index

    def _sync_fdb(self, vni: int, want: set[tuple[str, str]]) -> None:
        vx = self._vxlan(vni)
        have = self.fdb[vni]
        for mac, dst in sorted(have - want):
            try:
                self.ipr.fdb("del", ifindex=vx, lladdr=mac, dst=dst, state=NUD_PERMANENT, flags=NTF_SELF)
            except NetlinkError as exc:
                _ignore(exc, errno.ENOENT)
            have.discard((mac, dst))
        # Flooding entries before the others: a MAC moved to another EPM was deleted above.
        for mac, dst in sorted(want - have, key=lambda e: (e[0] != FLOOD_MAC, e)):
            try:
                self.ipr.fdb("append" if mac == FLOOD_MAC else "add", ifindex=vx, lladdr=mac, dst=dst,
                             state=NUD_PERMANENT, flags=NTF_SELF)
            except NetlinkError as exc:
                _ignore(exc, errno.EEXIST)
            have.add((mac, dst))

    def apply(self, vpcs: dict[str, VpcWant], wanted: dict[int, str | None], present: set[int],
              devices: str) -> None:
        """Make the EPM's VPC devices and plugs what the desired file says.

        ``vpcs``: the VPCs this EPM holds; ``wanted``: EVM number -> its VPC for every EVM the EPM should
        hold; ``present``: the EVMs that exist now (those are re-plugged when their VPC changed).
        """
        with self.k._op("VPC devices"):
            for vpc in sorted(vpcs):
                self._sync_fdb(vpcs[vpc].vni, vpcs[vpc].entries())
            for seq in sorted(present):
                vpc = wanted.get(seq)
                if vpc in vpcs and self.plugged.get(seq) != vpcs[vpc].vni and not self.full(vpcs[vpc].vni):
                    self.plug(seq, vpcs[vpc].vni, devices)
            live = {v.vni for v in vpcs.values()} | set(self.plugged.values())
            for vni in sorted((set(self.vxlans) | set(self.bridges)) - live):
                self._drop(vni)

    def _drop(self, vni: int) -> None:
        for table, name in ((self.vxlans, vxlan_name(vni)), (self.bridges, bridge_name(vni))):
            try:
                self.ipr.link("del", ifname=name)
            except NetlinkError as exc:
                _ignore(exc, errno.ENODEV)
            table.pop(vni, None)
        self.fdb.pop(vni, None)

    # ---- plugging EVMs --------------------------------------------------------------------------
    def plug(self, seq: int, vni: int, devices: str) -> None:
        """Plug an existing EVM into its VPC's bridge (or move it there from another)."""
        br = self.bridge(vni)
        if devices == "lean":
            self.ipr.link("set", ifname=names.veth_name(seq), master=br, state="up")
        else:
            port = names.vpc_port_name(seq)
            try:
                self.ipr.link("add", ifname=names.uplink_name(seq), kind="veth", mtu=self.mtu,
                              master=names.bridge_index(seq), state="up",
                              peer={"ifname": port, "mtu": self.mtu})
            except NetlinkError as exc:  # already there (it is moving to another VPC)
                _ignore(exc, errno.EEXIST)
            self.ipr.link("set", ifname=port, master=br, state="up")
        self.record(seq, vni)

    def record(self, seq: int, vni: int) -> None:
        """EVM ``seq`` is plugged into VNI ``vni``'s bridge (made there, or plugged)."""
        self.forget([seq])
        self.plugged[seq] = vni
        self.ports[vni] = self.ports.get(vni, 0) + 1

    def full(self, vni: int) -> bool:
        """The VPC's bridge has no port left for another EVM (further EVMs of it stay unplugged)."""
        return self.ports.get(vni, 0) >= BRIDGE_PORTS

    def forget(self, seqs: list[int]) -> None:
        """These EVMs were deleted (their plugs went with them)."""
        for seq in seqs:
            vni = self.plugged.pop(seq, None)
            if vni is not None:
                self.ports[vni] -= 1
