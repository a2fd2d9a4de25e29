"""The node's EVM agent on real namespaces of a real EPM container without privileges (the harness plays
the Worker's part; the kernel is read from the host inside the EPM's network namespace)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest

from tests.evm_harness import EpmContainer, addresses, remove_leftovers

pytestmark = pytest.mark.system

COLLECT = r"""
import ctypes, json, os
from pyroute2 import IPRoute
libc = ctypes.CDLL(None, use_errno=True)
home = os.open('/proc/self/ns/net', os.O_RDONLY)
NS = os.environ['RSWARM_NETNS']
out = {}
for name in sorted(os.listdir(NS)):
    fd = os.open(os.path.join(NS, name), os.O_RDONLY)
    assert libc.setns(fd, 0x40000000) == 0
    os.close(fd)
    with IPRoute() as ipr:
        links = {l.get_attr('IFLA_IFNAME'): (l.get_attr('IFLA_ADDRESS'), l['flags'] & 1) for l in ipr.get_links()}
        addrs = [a.get_attr('IFA_ADDRESS') + '/' + str(a['prefixlen']) for a in ipr.get_addr(family=2)]
        routes = [r.get_attr('RTA_GATEWAY') for r in ipr.get_routes(family=2, table=254) if not r.get_attr('RTA_DST')]
    out[name] = {'links': links, 'addrs': addrs, 'gateways': routes}
    assert libc.setns(home, 0x40000000) == 0
print(json.dumps(out))
"""

HALF_MADE = r"""
import ctypes, os, struct, fcntl
from pyroute2 import IPRoute
libc = ctypes.CDLL(None, use_errno=True)
ipr = IPRoute()
NS = os.environ['RSWARM_NETNS']
os.makedirs(NS, exist_ok=True)
# 5: a namespace and nothing else (killed right after the mount)
home = os.open('/proc/thread-self/ns/net', os.O_RDONLY)
open(NS + '/rswevm-5', 'w').close()
assert libc.unshare(0x40000000) == 0
assert libc.mount(b'/proc/thread-self/ns/net', (NS + '/rswevm-5').encode(), b'none', 4096, None) == 0
assert libc.setns(home, 0x40000000) == 0
# 6: a bridge and a tap, no namespace, no veth (killed before the veth)
ipr.link('add', ifname='rswb6', kind='bridge')
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack('16sH', b'rswt6', 0x1002)); fcntl.ioctl(fd, 0x400454CB, 1); os.close(fd)
# 7: a namespace file that is not even mounted (killed between open and mount)
open(NS + '/rswevm-7', 'w').close()
# 8: a veth left down, its peer not moved (killed before the commit)
ipr.link('add', ifname='rswv8', kind='veth', peer='rswx8')
print('ok')
"""


@pytest.fixture(scope="module", autouse=True)
def _clean() -> Iterator[None]:
    remove_leftovers()
    yield
    remove_leftovers()


def our_links(e: EpmContainer) -> list[str]:
    return sorted(name for name, _up, _master in e.inspect()["links"] if name != "lo")


@pytest.mark.parametrize("devices", ["full", "lean"])
def test_evms_are_complete_namespaces_with_unique_addresses(devices: str) -> None:
    with EpmContainer(devices=devices, subnet="10.78.0.0/24") as e:
        evms = addresses(20, "10.78.0.0/24")
        e.want(evms)
        e.wait_states([s for s, _, _ in evms], "READY")
        inside = json.loads(e.py(COLLECT))
        assert sorted(inside) == sorted(f"rswevm-{s}" for s, _, _ in evms)
        seen_ips, seen_macs = set(), set()
        for seq, ip, mac in evms:
            ns = inside[f"rswevm-{seq}"]
            assert ns["links"]["lo"][1] == 1 and ns["links"]["eth0"] == [mac, 1]
            assert sorted(ns["addrs"]) == sorted(["127.0.0.1/8", f"{ip}/24"])
            assert ns["gateways"] == ["10.78.0.1"]
            seen_ips.add(ip)
            seen_macs.add(ns["links"]["eth0"][0])
        assert len(seen_ips) == len(seen_macs) == 20
        links = {name: (up, master) for name, up, master in e.inspect()["links"]}
        for seq, _, _ in evms:
            assert links[f"rswv{seq}"][0] == 1
            if devices == "full":
                assert f"rswt{seq}" in links and f"rswb{seq}" in links
        if devices == "lean":
            assert "rswbr0" in links and not any(n.startswith(("rswt", "rswb")) and n != "rswbr0" for n in links)


IGMP = r"""
import json
from pyroute2 import IPRoute
snoop = {}
with IPRoute() as ipr:
    for link in ipr.get_links():
        name = link.get_attr('IFLA_IFNAME')
        if name.startswith('rswb'):
            data = link.get_attr('IFLA_LINKINFO').get_attr('IFLA_INFO_DATA')
            snoop[name] = str(data.get_attr('IFLA_BR_MCAST_SNOOPING'))
groups = sorted({line.split()[0] for line in open('/proc/net/igmp') if line.startswith('\t')})
print(json.dumps({'snooping': snoop, 'groups': groups}))
"""

def test_full_set_bridges_do_not_snoop_so_the_epm_joins_no_multicast_group_per_evm() -> None:
    # A snooping bridge joins 224.0.0.106, and every IGMPv3 report for it walked all of the EPM's
    # devices: creation slowed down as the EVM count grew (BENCHMARKS.md, EVMs at scale).
    with EpmContainer(devices="full", subnet="10.78.1.0/24") as e:
        evms = addresses(5, "10.78.1.0/24")
        e.want(evms)
        e.wait_states([s for s, _, _ in evms], "READY")
        seen = json.loads(e.py(IGMP))
        assert seen["snooping"] == {f"rswb{s}": "0" for s, _, _ in evms}
        assert seen["groups"] == ["010000E0"]  # only all-hosts (224.0.0.1), which is never reported


def test_two_evms_of_one_epm_ping_each_other_and_a_deleted_one_stops_answering() -> None:
    with EpmContainer(devices="lean", subnet="10.79.0.0/24") as e:
        evms = addresses(3, "10.79.0.0/24")
        e.want(evms)
        e.wait_states([1, 2, 3], "READY")
        assert e.ping(1, evms[1][1]) == 3
        assert e.ping(2, evms[0][1]) == 3
        e.remove([3])
        e.wait_states([3], "DELETED")
        assert e.ping(1, evms[2][1]) == 0


@pytest.mark.parametrize("devices", ["full", "lean"])
def test_deleting_every_evm_leaves_no_namespace_link_or_bridge(devices: str) -> None:
    with EpmContainer(devices=devices) as e:
        evms = addresses(30)
        e.want(evms)
        e.wait_states([s for s, _, _ in evms], "READY")
        e.remove([s for s, _, _ in evms[:10]])
        e.wait_states([s for s, _, _ in evms[:10]], "DELETED")
        left = e.inspect()
        assert len(left["netns"]) == 20
        e.remove([s for s, _, _ in evms])
        e.wait_states([s for s, _, _ in evms], "DELETED")
        assert e.inspect() == {"links": [["lo", 1, 0]], "netns": []}


def test_a_restarted_agent_rolls_back_half_made_evms_and_converges() -> None:
    with EpmContainer(devices="full") as e:
        e.want(addresses(2))
        e.wait_states([1, 2], "READY")
        assert e.py(HALF_MADE).strip() == "ok"
        e.kill_agent()
        e.wait("the half-made EVMs to be gone",
               lambda: not {"rswb6", "rswt6", "rswv8"} & set(our_links(e)) and
               not {"rswevm-5", "rswevm-7"} & set(e.inspect()["netns"]), timeout=60)
        e.want(addresses(8))
        e.wait_states(list(range(1, 9)), "READY")
        want = sorted(f"{p}{s}" for s in range(1, 9) for p in ("rswv", "rswt", "rswb"))
        assert our_links(e) == want  # rswx8, rswv8's peer, went with it
        assert sorted(e.inspect()["netns"]) == sorted(f"rswevm-{s}" for s in range(1, 9))


def test_an_agent_killed_mid_creation_converges_to_the_desired_count() -> None:
    with EpmContainer(devices="full", mem="512m") as e:
        evms = addresses(150)
        e.want(evms, rate={"kind": "rps", "rps": 60})
        killed = set()
        for threshold in (15, 60):
            e.wait(f"{threshold} EVMs ready", lambda t=threshold: sum(1 for s in e.last_state().values()
                                                                     if s == "READY") >= t)
            killed.add(e.kill_agent())
        e.wait_states([s for s, _, _ in evms], "READY", timeout=180)
        assert len(killed) == 2
        inside = e.inspect()
        assert len(inside["netns"]) == 150
        assert len([n for n in our_links(e) if n.startswith(("rswv", "rswt", "rswb"))]) == 450
        assert not [i for i in e.items() if i[1] == "ERROR"]
        assert "agent exited with -9" in e.logs()


def test_rps_rate_is_honoured() -> None:
    rps = 20.0
    with EpmContainer(devices="lean") as e:
        evms = addresses(60)
        e.want(evms, rate={"kind": "rps", "rps": rps, "burst": 1})
        e.wait_states([s for s, _, _ in evms], "READY")
        starts = sorted(i[2]["READY"] - i[3] / 1000 for i in e.items() if i[1] == "READY")  # creation starts
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        # The bucket never lets starts come closer than 1/rps (wall-clock jitter aside) ...
        assert min(gaps) >= (1 / rps) * 0.9
        # ... and over the run never above the requested rate. How close a loaded machine gets to it is a
        # speed (every netlink call waits for the kernel's one RTNL lock, shared with every other user of
        # the machine), measured by bench/evms.py, not asserted here.
        achieved = (len(starts) - 1) / (starts[-1] - starts[0])
        assert achieved <= rps * 1.1


def test_a_stuck_kernel_call_ends_the_agent_and_a_fresh_one_carries_on() -> None:
    with EpmContainer(devices="full", op_timeout=0.001) as e:
        evms = addresses(3000)
        e.want(evms)
        e.wait("the watchdog to end an agent", lambda: "has taken over 0.001s" in e.logs(), timeout=60)
        e.op_timeout = 20.0
        e.write()
        e.wait("the agent to be running again", lambda: e.agent_pid() is not None, timeout=30)
        e.want(evms[:50])
        assert "agent exited with 75" in e.logs()
        e.forget([s for s, _, _ in evms[50:]])
        e.wait_states([s for s, _, _ in evms[:50]], "READY", timeout=120)
