"""One EVM's kernel objects, made and removed through pyroute2's netlink calls, in-process.

An EVM is a named network namespace (``<netns_dir>/rswevm-<n>``, a bind mount of the namespace; the node
agent gives each EPM its own directory on the host, Worker/epm/node.py) holding
``lo`` (up) and ``eth0`` (one end of a veth pair: its address and MAC, up, default route via the
gateway). The other end, ``rswv<n>``, is in the EPM's own namespace:

  full  (Merak v0.2's set)  rswv<n> and a tap ``rswt<n>`` are ports of a per-EVM bridge ``rswb<n>``
  lean                      rswv<n> is a port of the EPM's one shared bridge ``rswbr0``

Creation ends with enslaving ``rswv<n>`` and bringing it up, in one call: an EVM whose EPM-side veth is
up and enslaved is complete; anything less found after a crash is a half-made EVM and is rolled back.
Taps are made the way pyroute2 itself makes them (TUNSETIFF + TUNSETPERSIST on /dev/net/tun) but without
its helper thread, whose wait has no timeout; the kernel has no netlink call for taps.

Every call is bracketed by ``busy`` so the agent's watchdog can bound it (see agent.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from . import names, nsfs

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_UP = 0x1
TUN_DEVICE = "/dev/net/tun"
EVM_IFINDEX = 2  # eth0 in the EVM's namespace, where only lo (1) exists before it
BATCH_FULL = 8  # per-EVM bridges: deleting one costs the kernel a whole RCU grace period under RTNL
BATCH_LEAN = 64


class EvmError(Exception):
    """Creating one EVM failed; what it made has been removed."""


class FatalError(Exception):
    """The agent's own state is unsafe (its thread is stuck in a foreign namespace): exit and restart."""


@dataclass
class Link:
    index: int
    up: bool
    master: int
    group: int


@dataclass
class Found:
    """What the kernel holds for one EVM number."""

    ns: bool = False
    veth: Link | None = None
    tap: Link | None = None
    bridge: Link | None = None

    def complete(self, devices: str, shared: int | None, vpc_bridges: frozenset[int] = frozenset()) -> bool:
        v = self.veth
        if not self.ns or v is None or not v.up or v.group == names.DOOMED_GROUP:
            return False
        if devices == "lean":  # a port of the shared bridge or of a VPC's bridge (vpc.py)
            return ((shared is not None and v.master == shared) or v.master in vpc_bridges) and \
                self.tap is None and self.bridge is None
        b, t = self.bridge, self.tap
        return (b is not None and t is not None and v.master == b.index and t.master == b.index
                and b.group != names.DOOMED_GROUP)


@dataclass
class Scan:
    evms: dict[int, Found] = field(default_factory=dict)
    shared_bridge: int | None = None
    vpc_bridges: frozenset[int] = frozenset()
    other_links: int = 0


def _make_tap(name: str) -> None:
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


class Kernel:
    """The EVMs of the network namespace the constructing thread is in (its "home": the EPM's)."""

    def __init__(self, netns_dir: str = names.NETNS_DIR, hostname: str | None = None) -> None:
        self.netns_dir = netns_dir
        self.hostname = hostname or socket.gethostname()
        os.makedirs(netns_dir, exist_ok=True)
        self.home = os.open(nsfs.THREAD_NS, os.O_RDONLY | os.O_CLOEXEC)
        self.ipr = IPRoute()
        self.busy: tuple[str, float] | None = None
        self._shared: int | None = None
        self.evm_mtu: int | None = None  # the EVMs' eth0 MTU, set from the VPC underlay's (vpc.py)

    def close(self) -> None:
        self.ipr.close()
        os.close(self.home)

    @contextlib.contextmanager
    def _op(self, what: str) -> Iterator[None]:
        self.busy = (what, time.monotonic())
        try:
            yield
        finally:
            self.busy = None

    # ---- looking ------------------------------------------------------------------------------
    def scan(self) -> Scan:
        """Every EVM object of ours in the kernel, found by name (one link dump, one directory read)."""
        out = Scan()
        vpc_bridges: set[int] = set()
        with self._op("scan"):
            for entry in os.listdir(self.netns_dir):
                seq = names.seq_of(entry, names.NS_PREFIX)
                if seq is not None:
                    out.evms.setdefault(seq, Found()).ns = True
            for i, msg in enumerate(self._dump_links()):
                if i % 256 == 0:  # the dump is making progress: the watchdog bounds each part of it
                    self.busy = ("scan", time.monotonic())
                name = msg.get_attr("IFLA_IFNAME")
                link = Link(msg["index"], bool(msg["flags"] & IFF_UP), msg.get_attr("IFLA_MASTER") or 0,
                            msg.get_attr("IFLA_GROUP") or 0)
                if name == names.SHARED_BRIDGE:
                    out.shared_bridge = link.index
                    continue
                if names.seq_of(name, names.VPC_BRIDGE_PREFIX) is not None:
                    vpc_bridges.add(link.index)
                for prefix, attr in ((names.VETH_PREFIX, "veth"), (names.TAP_PREFIX, "tap"),
                                     (names.BRIDGE_PREFIX, "bridge")):
                    seq = names.seq_of(name, prefix)
                    if seq is not None:
                        setattr(out.evms.setdefault(seq, Found()), attr, link)
                        break
                else:
                    out.other_links += 1
        self._shared = out.shared_bridge
        out.vpc_bridges = frozenset(vpc_bridges)
        return out

    def _dump_links(self) -> Iterator[ifinfmsg]:
        """Every link of the EPM, parsed as the kernel sends it (not collected first).

        An EPM holding 15,000 EVMs has 45,000 links; each part of the dump takes the RTNL lock, which
        per-EVM bridge deletions (here or in other EPMs) hold for a grace period each: a whole dump took
        longer than the op timeout while it kept making progress, and a restarted agent then died in its
        start-up scan again and again.
        """
        with IPRoute() as dumper:
            # A generator, not a tuple: pyroute2 0.9.7's synchronous nlm_request decides by this socket's
            # status['nlm_generator'], which its constructor no longer sets (a KeyError otherwise).
            dumper.status["nlm_generator"] = True
            msg = ifinfmsg()
            msg["family"] = socket.AF_UNSPEC
            yield from dumper.nlm_request(msg, msg_type=RTM_GETLINK, msg_flags=NLM_F_REQUEST | NLM_F_DUMP)

    def host_info(self) -> dict[str, str]:
        """The EPM's own address and MAC on the job network (its eth0) and its host name."""
        info = {"name": self.hostname}
        with self._op("host info"):
            try:
                link = self.ipr.link("get", ifname="eth0")[0]
                info["mac"] = link.get_attr("IFLA_ADDRESS") or ""
                for a in self.ipr.get_addr(index=link["index"], family=socket.AF_INET):
                    info["ip"] = a.get_attr("IFA_ADDRESS")
                    break
            except NetlinkError:
                pass
        return info

    # ---- creating -----------------------------------------------------------------------------
    def _shared_bridge(self) -> int:
        if self._shared is None:
            try:
                self.ipr.link("add", ifname=names.SHARED_BRIDGE, kind="bridge", state="up")
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            self._shared = self.ipr.link("get", ifname=names.SHARED_BRIDGE)[0]["index"]
        return self._shared

    def create(self, seq: int, ip: str, mac: str, prefix: int, gateway: str, devices: str,
               lean_master: int | None = None) -> None:
        """Make one EVM, completely or not at all (EvmError after rolling back). ``lean_master``: the
        bridge a lean EVM is a port of (its VPC's, vpc.py), instead of the shared one."""
        path = names.ns_path(seq, self.netns_dir)
        try:
            with self._op(f"create EVM {seq}"):
                self._create(seq, path, ip, mac, prefix, gateway, devices, lean_master)
        except FatalError:
            raise
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            try:
                self.destroy([seq])
            except Exception as undo:  # the next scan finds whatever is left and removes it
                detail += f" (rollback incomplete: {undo})"
            raise EvmError(detail) from None

    def _create(self, seq: int, path: str, ip: str, mac: str, prefix: int, gateway: str, devices: str,
                lean_master: int | None = None) -> None:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
        nsipr = None
        nsfs.unshare_net()
        try:
            nsfs.bind_mount(nsfs.THREAD_NS, path)
            nsipr = IPRoute()  # a netlink socket belongs to the namespace it is opened in
        finally:
            try:
                nsfs.setns_net(self.home)
            except OSError as exc:
                raise FatalError(f"cannot return to the EPM's namespace: {exc}") from None
        try:
            if devices == "full":
                master = names.bridge_index(seq)
                # Multicast snooping off: a snooping bridge joins 224.0.0.106 when it comes up, and the
                # IGMPv3 report for it picks a source address by walking every device of the EPM's
                # namespace (inet_select_addr; none of them has an IPv4 address), so the n-th EVM cost
                # O(n) softirq time (profiled: a fifth of the agent's CPU at 5,000 EVMs). Two ports
                # (the veth and the tap) have nothing to snoop.
                self.ipr.link("add", ifname=names.bridge_name(seq), index=master, kind="bridge", state="up",
                              br_mcast_snooping=0)
                _make_tap(names.tap_name(seq))
                self.ipr.link("set", ifname=names.tap_name(seq), master=master, state="up")
            else:
                master = lean_master or self._shared_bridge()
            # The pair is made from inside the EVM: eth0 there (index 2 in a fresh namespace, its MAC, up),
            # its peer straight into the EPM's namespace.
            # One queue each way on both ends: with the kernel's default (a queue per possible CPU) the pair
            # is shrunk to its peer's one real queue after registration, one RCU grace period per EVM
            # (synchronize_net in netif_set_real_num_tx_queues, sampled in /proc/PID/stack).
            mtu = {"mtu": self.evm_mtu} if self.evm_mtu else {}
            nsipr.link("add", ifname=names.EVM_IFNAME, index=EVM_IFINDEX, kind="veth", address=mac, state="up",
                       num_tx_queues=1, num_rx_queues=1,
                       peer={"ifname": names.veth_name(seq), "net_ns_fd": self.home,
                             "num_tx_queues": 1, "num_rx_queues": 1, **mtu}, **mtu)
            nsipr.link("set", index=1, state="up")
            nsipr.addr("add", index=EVM_IFINDEX, address=ip, prefixlen=prefix)
            nsipr.route("add", dst="0.0.0.0/0", gateway=gateway)
        finally:
            nsipr.close()
        self.ipr.link("set", ifname=names.veth_name(seq), master=master, state="up")  # the commit point

    # ---- removing -----------------------------------------------------------------------------
    def destroy(self, seqs: list[int], scan: Scan | None = None) -> None:
        """Remove these EVMs' links and namespaces (whatever part of them exists).

        Links first, in one batch: deleting the EPM-side veth takes eth0 out of the EVM with it, so the
        namespace is empty when it is unmounted and the kernel's asynchronous namespace cleanup never
        races this deletion for the same devices.
        """
        if not seqs:
            return
        with self._op(f"delete {len(seqs)} EVMs"):
            doomed = 0
            for seq in seqs:
                found = scan.evms.get(seq) if scan is not None else None
                for name, link in ((names.veth_name(seq), found.veth if found else True),
                                   (names.tap_name(seq), found.tap if found else True),
                                   (names.bridge_name(seq), found.bridge if found else True),
                                   (names.uplink_name(seq), True)):  # a full EVM's plug into its VPC
                    if not link:
                        continue
                    try:
                        self.ipr.link("set", ifname=name, group=names.DOOMED_GROUP)
                        doomed += 1
                    except NetlinkError as exc:
                        if exc.code != errno.ENODEV:
                            raise
            if doomed:
                # One batch: the kernel waits for the network's RCU grace periods once per batch
                # (plus once per bridge), not once per link.
                try:
                    self.ipr.link("del", index=0, group=names.DOOMED_GROUP)
                except NetlinkError as exc:
                    if exc.code != errno.ENODEV:  # nothing left in the group
                        raise
            for seq in seqs:
                nsfs.detach(names.ns_path(seq, self.netns_dir))

    def drop_shared_bridge(self) -> None:
        if self._shared is None:
            return
        with self._op("delete the shared bridge"):
            try:
                self.ipr.link("del", index=self._shared)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise
        self._shared = None
