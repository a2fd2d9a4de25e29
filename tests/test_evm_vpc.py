"""VPC connectivity between EVMs of two real EPM containers on one node (Worker/epm/vpc.py), driven through
the desired file as the Worker writes it (Worker/vpcs.py's plan): pings between real namespaces across a
real VXLAN, per-VPC isolation, the MTU, a VPC change, and a SIGKILLed agent rebuilding its VXLAN state.
The multi-node version through the whole system is in tests/test_cluster.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import docker
import pytest

from tests.conftest import SLOT
from tests.evm_harness import LABEL, EpmContainer, _owner, addresses, client, remove_leftovers
from Worker import vpcs

NET = f"rswevmtest-vpc{SLOT}"
pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    remove_leftovers()
    c = client()
    for old in c.networks.list(names=[NET]):
        old.remove()
    net = c.networks.create(NET, driver="bridge", internal=True, labels={LABEL: _owner()})
    yield NET
    with contextlib.suppress(docker.errors.APIError):
        net.remove()


def _plan(epms: dict[str, EpmContainer], macs: dict[int, str]) -> None:
    """Write each EPM's desired file with its VPC part, computed as the Worker does (every EVM of ``vpc_of``)."""
    members = [{"mac": macs[seq], "epm": name, "vpc": vpc} for name, e in epms.items() for seq, vpc in e.vpc_of.items()]
    plan = vpcs.plan("harness", members, {name: e.ip(NET) for name, e in epms.items()})
    for name, e in epms.items():
        e.vpc = plan.get(name)
        e.write()


def _reach(e: EpmContainer, src: int, dst_ip: str) -> bool:
    return e.ping(src, dst_ip) > 0


def _vxlan(e: EpmContainer, vni: int) -> tuple[int, set[tuple[str, str]]] | None:
    """The EPM's VXLAN device of ``vni``: its ifindex and forwarding entries, or None while it does not exist
    (an agent starting removes every VXLAN device and makes them again)."""
    code = (f"import json, subprocess\ndev = 'rswx{vni}'\n"
            "link = subprocess.run(['ip', '-j', 'link', 'show', 'dev', dev], capture_output=True, text=True)\n"
            "fdb = subprocess.run(['bridge', '-j', 'fdb', 'show', 'dev', dev], capture_output=True, text=True)\n"
            "ok = link.returncode == 0 and fdb.returncode == 0\n"
            "print(json.dumps([json.loads(link.stdout)[0]['ifindex'], json.loads(fdb.stdout)] if ok else None))")
    got = json.loads(e.py(code))
    return None if got is None else (got[0], {(r["mac"], r["dst"]) for r in got[1] if "dst" in r})


def _fdb(e: EpmContainer, vni: int) -> set[tuple[str, str]]:
    """The forwarding entries of the EPM's VXLAN device of ``vni`` (none while the device does not exist)."""
    got = _vxlan(e, vni)
    return set() if got is None else got[1]


@pytest.mark.parametrize("devices", ["lean", "full"])
def test_evms_of_one_vpc_talk_across_epms_and_other_vpcs_get_no_reply(network: str, devices: str) -> None:
    ev = addresses(6, subnet="10.78.0.0/24")
    with EpmContainer(devices, network=network, subnet="10.78.0.0/24") as a, \
            EpmContainer(devices, network=network, subnet="10.78.0.0/24") as b:
        epms = {"a": a, "b": b}
        a.vpc_of.update({ev[0][0]: "red", ev[1][0]: "red", ev[2][0]: "blue"})
        b.vpc_of.update({ev[3][0]: "red", ev[4][0]: "blue", ev[5][0]: "red"})
        _plan(epms, {s: m for s, _, m in ev})  # the VPC part is there from the EVMs' first desired file on
        a.want(ev[:3])
        b.want(ev[3:])
        a.wait_states([s for s, _, _ in ev[:3]], "READY")
        b.wait_states([s for s, _, _ in ev[3:]], "READY")
        ip = {s: addr for s, addr, _ in ev}
        red_a, red_a2, blue_a = (s for s, _, _ in ev[:3])
        red_b, blue_b, red_b2 = (s for s, _, _ in ev[3:])
        # Same VPC: across the two EPMs both ways, and within one EPM.
        assert _reach(a, red_a, ip[red_b]) and _reach(b, red_b2, ip[red_a2]) and _reach(a, red_a, ip[red_a2])
        assert _reach(a, blue_a, ip[blue_b]) and _reach(b, blue_b, ip[blue_a])
        # Other VPC: no reply, neither across EPMs nor within one.
        assert not _reach(a, red_a, ip[blue_b]) and not _reach(b, blue_b, ip[red_a])
        assert not _reach(a, blue_a, ip[red_a]) and not _reach(b, red_b, ip[blue_b])
        # The EVM's MTU leaves room for VXLAN over the EPM's network.
        underlay = a.py("from pyroute2 import IPRoute\n"
                        "print(IPRoute().link('get', ifname='eth0')[0].get_attr('IFLA_MTU'))").strip()
        mtu = a.in_evm(red_a, "from pyroute2 import IPRoute\n"
                              "print(IPRoute().link('get', ifname='eth0')[0].get_attr('IFLA_MTU'))").strip()
        assert int(mtu) == int(underlay) - 50


def test_a_killed_agent_rebuilds_the_vxlan_state_and_a_vpc_change_moves_the_evm(network: str) -> None:
    ev = addresses(3, subnet="10.79.0.0/24")
    with EpmContainer("lean", network=network, subnet="10.79.0.0/24") as a, \
            EpmContainer("full", network=network, subnet="10.79.0.0/24") as b:
        epms = {"a": a, "b": b}
        (s1, ip1, _), (s2, ip2, _), (s3, ip3, mac3) = ev
        a.vpc_of.update({s1: "red"})
        b.vpc_of.update({s2: "red", s3: "blue"})
        _plan(epms, {s: m for s, _, m in ev})
        a.want([ev[0]])
        b.want(ev[1:])
        a.wait_states([s1], "READY")
        b.wait_states([s2, s3], "READY")
        assert _reach(b, s2, ip1)
        vni = a.vpc["vpcs"]["red"]["vni"]
        killed_device, before = _vxlan(a, vni) or (0, set())
        assert before == {("00:00:00:00:00:00", b.ip(NET)), (b.evms[s2][1], b.ip(NET))}
        old = a.kill_agent()
        a.wait("a new agent", lambda: (p := a.agent_pid()) is not None and p != old)
        # The killed agent's device stays until the new one removes it at start and makes it again: wait for
        # a device that is not the killed agent's, with the same entries.
        a.wait("its VXLAN device made again with the same entries",
               lambda: (v := _vxlan(a, vni)) is not None and v[0] != killed_device and v[1] == before)
        assert _reach(a, s1, ip2)
        # EVM 3 joins red (a label change): it now reaches EVM 1, and blue is gone from b.
        b.vpc_of[s3] = "red"
        _plan(epms, {s: m for s, _, m in ev})
        a.wait("a's entries for EVM 3", lambda: (mac3, b.ip(NET)) in _fdb(a, vni))
        b.wait("EVM 3 on red", lambda: _reach(b, s3, ip1))
        assert _reach(a, s1, ip3)
        links = b.py("from pyroute2 import IPRoute\n"
                     "print(' '.join(sorted(m.get_attr('IFLA_IFNAME') for m in IPRoute().get_links())))").split()
        assert [n for n in links if n.startswith(("rswx", "rswp"))] == [f"rswp{vni}", f"rswx{vni}"]
